package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCtlApplyTooLarge: a configuration larger than one stored version may
// be (1 MiB) is refused as invalid, exit code 4, whether one file or the
// whole is too large, and nothing is stored. A shedding policy file that
// does not exist is an error, not an invalid configuration.
func TestCtlApplyTooLarge(t *testing.T) {
	env := startCtlEnv(t)
	dir := t.TempDir()
	writeRules(t, dir, 1)
	env.ok(t, "apply", "-f", dir, "--reason", "good")

	// Three files of 400 KiB: each fits, together they do not (and are more
	// than the admin API accepts in one message).
	many := t.TempDir()
	for _, d := range []string{"a", "b", "c"} {
		must(t, os.WriteFile(filepath.Join(many, d+".yaml"), []byte("domain: "+d+"\n# "+strings.Repeat("x", 400<<10)+"\n"), 0o644))
	}
	if stderr := env.fails(t, 4, "apply", "-f", many, "--reason", "too much"); !strings.Contains(stderr, "more than the limit of 1048576") {
		t.Errorf("stderr %q does not give the limit", stderr)
	}
	env.fails(t, 4, "apply", "-f", many, "--dry-run")
	env.fails(t, 4, "diff", "-f", many)

	big := filepath.Join(t.TempDir(), "big.yaml")
	must(t, os.WriteFile(big, []byte("domain: big\n# "+strings.Repeat("x", 3<<19)+"\n"), 0o644))
	if stderr := env.fails(t, 4, "apply", "-f", big, "--reason", "one big file"); !strings.Contains(stderr, big+" is larger than the 1048576 bytes") {
		t.Errorf("stderr %q does not name the file and the limit", stderr)
	}
	if stderr := env.fails(t, 4, "apply", "--shed", big, "--reason", "big policy"); !strings.Contains(stderr, "larger than") {
		t.Errorf("big policy: stderr %q", stderr)
	}
	if stderr := env.fails(t, 1, "apply", "--shed", filepath.Join(dir, "missing.yaml"), "--reason", "typo"); !strings.Contains(stderr, "no such file") {
		t.Errorf("missing policy: stderr %q", stderr)
	}
	if out := env.ok(t, "get"); !strings.Contains(out, "version 1 by alice") {
		t.Fatalf("after refusals get shows:\n%s", out)
	}
}
