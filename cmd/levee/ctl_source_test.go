package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/levee-dev/levee/cmd/levee/internal/admin"
	"github.com/levee-dev/levee/cmd/levee/internal/configstore"
	"github.com/levee-dev/levee/limiter/cluster/clustertest"
)

// TestCtlFileMode: against a node whose config source is its files, apply
// and rollback fail with the files named and store nothing; status shows
// each node's source, hash, warning and divergence, in the table and in
// JSON.
func TestCtlFileMode(t *testing.T) {
	e := clustertest.StartEtcd(t)
	store, err := configstore.New(configstore.Options{Client: clustertest.Client(t, e.Endpoints()), Prefix: "/ctl-file/", ValidateShed: ctlShed})
	must(t, err)
	applied := time.Now().Add(-10 * time.Minute).Truncate(time.Second)
	status := admin.StatusFunc(func(context.Context) (admin.ClusterStatus, error) {
		ms := []admin.MemberStatus{
			{ID: "node-a", Addr: "127.0.0.1:8082", Reachable: true, ConfigSource: "file", ConfigHash: "00000000000000aa", ConfigAppliedAt: applied, ConfigPaths: []string{"/etc/levee/rules"}},
			{ID: "node-b", Addr: "127.0.0.1:8083", Reachable: true, ConfigSource: "file", ConfigHash: "00000000000000aa", ConfigAppliedAt: applied},
			{ID: "node-c", Addr: "127.0.0.1:8084", Reachable: true, ConfigSource: "etcd", ConfigVersion: 4, ConfigHash: "00000000000000bb", ConfigAppliedAt: applied,
				ConfigWarning: "--config /x (hash 00000000000000aa) differs from the stored version 4 (hash 00000000000000bb), which is enforced"},
		}
		admin.FlagDivergent(ms, time.Now())
		return admin.ClusterStatus{Self: "node-a", Members: ms}, nil
	})
	rulesDir := "/etc/levee/rules"
	srv, err := admin.New(admin.Config{Addr: "127.0.0.1:0", Store: store, Status: status, ConfigSource: admin.SourceFile, ConfigFiles: []string{rulesDir}})
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	dir := filepath.Join(t.TempDir(), "rules")
	writeRules(t, dir, 7)
	for _, args := range [][]string{
		{"apply", "-f", dir, "--reason", "r"},
		{"rollback", "1", "--reason", "r"},
	} {
		_, stderr, code := runCtl(append([]string{"--addr", srv.Addr()}, args...)...)
		if code != ctlExitError || !strings.Contains(stderr, "the files are authoritative: "+rulesDir) || !strings.Contains(stderr, "edit the files on every node") {
			t.Errorf("ctl %s in file mode: exit %d, %q", args[0], code, stderr)
		}
	}
	if rec, err := store.Get(context.Background()); err != nil || rec.Version != 0 {
		t.Fatalf("stored after refused writes: v%d, %v", rec.Version, err)
	}
	// The current stored version is not what the node enforces: get and
	// diff refuse to show it as if it were.
	for _, args := range [][]string{{"get"}, {"diff", "-f", dir}} {
		_, stderr, code := runCtl(append([]string{"--addr", srv.Addr()}, args...)...)
		if code != ctlExitError || !strings.Contains(stderr, "not a stored version") || !strings.Contains(stderr, rulesDir) {
			t.Errorf("ctl %s in file mode: exit %d, %q", args[0], code, stderr)
		}
	}

	out, stderr, code := runCtl("--addr", srv.Addr(), "status")
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, stderr)
	}
	for _, want := range []string{
		"config source: file", "SOURCE", "node-a*", "file    00000000000000aa", "etcd    v4 (differs from the majority since", "(warning)",
		"warning: node-c: --config /x (hash 00000000000000aa) differs from the stored version 4",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "(behind)") {
		t.Errorf("status flags a node as behind in file mode:\n%s", out)
	}
	out, _, _ = runCtl("--addr", srv.Addr(), "status", "-o", "json")
	var st struct {
		ConfigSource string `json:"config_source"`
		Members      []struct {
			ID             string     `json:"id"`
			ConfigSource   string     `json:"config_source"`
			ConfigVersion  int64      `json:"config_version"`
			ConfigHash     string     `json:"config_hash"`
			ConfigApplied  *time.Time `json:"config_applied_at"`
			ConfigPaths    []string   `json:"config_paths"`
			ConfigWarning  string     `json:"config_warning"`
			ConfigDiverged *time.Time `json:"config_diverged_since"`
		} `json:"members"`
	}
	must(t, json.Unmarshal([]byte(out), &st))
	if st.ConfigSource != "file" || len(st.Members) != 3 {
		t.Fatalf("status -o json: %s", out)
	}
	a, c := st.Members[0], st.Members[2]
	if a.ConfigSource != "file" || a.ConfigHash != "00000000000000aa" || a.ConfigApplied == nil || !a.ConfigApplied.Equal(applied) ||
		len(a.ConfigPaths) != 1 || a.ConfigDiverged != nil {
		t.Errorf("node-a in JSON: %+v", a)
	}
	if c.ConfigSource != "etcd" || c.ConfigVersion != 4 || c.ConfigWarning == "" || c.ConfigDiverged == nil || !c.ConfigDiverged.Equal(applied) {
		t.Errorf("node-c in JSON: %+v", c)
	}
}
