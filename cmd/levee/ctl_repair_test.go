package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// TestCtlRepairsMalformedCurrent: with a malformed value in the current
// key (real etcd), get fails and says how to repair; apply (given the
// whole configuration) and rollback replace the value and say what they
// replaced, by size, hash and first bytes.
func TestCtlRepairsMalformedCurrent(t *testing.T) {
	env := startCtlEnv(t)
	dir := t.TempDir()
	writeRules(t, dir, 1)
	env.ok(t, "apply", "-f", dir, "--reason", "first")
	writeRules(t, dir, 2)
	env.ok(t, "apply", "-f", dir, "--reason", "second")
	shed := filepath.Join(t.TempDir(), "shed.yaml")
	must(t, os.WriteFile(shed, []byte(ctlPolicy), 0o644))

	const key = "/ctl/config/current"
	corrupt := func(value string) (desc string) {
		t.Helper()
		put, err := env.etcd.Put(context.Background(), key, value)
		must(t, err)
		return fmt.Sprintf("%s at revision %d: %d bytes, xxhash64 %016x, starting %q", key, put.Header.Revision, len(value), xxhash.Sum64String(value), value)
	}

	desc := corrupt(`{"version": "two"}`)
	if stderr := env.fails(t, 1, "get"); !strings.Contains(stderr, desc) || !strings.Contains(stderr, "levee ctl rollback VERSION") {
		t.Fatalf("get: stderr %q lacks %q or the repair hint", stderr, desc)
	}
	if stderr := env.fails(t, 2, "apply", "-f", dir, "--reason", "rules only"); !strings.Contains(stderr, "give both -f and --shed") {
		t.Fatalf("apply without --shed: stderr %q", stderr)
	}
	if out := env.ok(t, "apply", "-f", dir, "--shed", shed, "--dry-run"); !strings.Contains(out, "would replace the unreadable current configuration ("+desc+")") {
		t.Fatalf("dry run output:\n%s", out)
	}
	out, stderr, code := env.ctl("apply", "-f", dir, "--shed", shed, "--reason", "repair")
	if code != 0 || !strings.Contains(out, "replaced the unreadable current configuration ("+desc+")") ||
		!strings.Contains(out, "applied version 3 by alice") || !strings.Contains(stderr, "warning: the current configuration is unreadable") {
		t.Fatalf("repairing apply: exit %d\nstdout: %s\nstderr: %s", code, out, stderr)
	}
	t.Logf("levee ctl apply over a malformed current value:\n%s%s", stderr, out)
	if out := env.ok(t, "get"); !strings.Contains(out, `version 3 by alice`) {
		t.Fatalf("get after the repair:\n%s", out)
	}

	// rollback repairs too, and -o json carries what it replaced.
	value := "\x00\xffnot json at all, and longer than the sixty-four bytes that are quoted"
	desc = corrupt(value)
	out = env.ok(t, "rollback", "1", "--reason", "repair by rollback", "-o", "json")
	var ch ctlChange
	must(t, json.Unmarshal([]byte(out), &ch))
	m := ch.ReplacedMalformed
	if ch.Version.Version != 4 || ch.Version.RollbackOf != 1 || m == nil || m.Key != key || m.Size != len(value) ||
		m.XXHash64 != fmt.Sprintf("%016x", xxhash.Sum64String(value)) || m.Head != fmt.Sprintf("%q", value[:64]) {
		t.Fatalf("rollback -o json: %s", out)
	}
	if want := strings.TrimSuffix(desc, fmt.Sprintf("%q", value)) + fmt.Sprintf("%q...", value[:64]); m.String() != want {
		t.Errorf("described as %q, want %q", m.String(), want)
	}
	if out := env.ok(t, "get"); !strings.Contains(out, "version 4 by alice") || !strings.Contains(out, "(rollback to version 1)") {
		t.Fatalf("get after the rollback:\n%s", out)
	}
}
