package admin

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/levee-dev/levee/limiter/rules"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
)

// TestFileModeRefusesWrites: a node enforcing its own files refuses apply
// and rollback, naming the files, and stores nothing; it refuses to show
// the current stored version as if it were in force (get, diff), while a
// stored version asked for by number is still read.
func TestFileModeRefusesWrites(t *testing.T) {
	store := newStore(t)
	files := []string{"/etc/levee/rules", "/etc/levee/shed.yaml"}
	d, err := rules.Parse("api.yaml", []byte("domain: api\ndescriptors:\n  - key: user\n    rate_limit: {unit: second, requests_per_unit: 42}\n"))
	if err != nil {
		t.Fatal(err)
	}
	enforced, err := rules.NewConfig(d)
	if err != nil {
		t.Fatal(err)
	}
	addr := start(t, Config{Addr: "127.0.0.1:0", Store: store, ConfigSource: SourceFile, ConfigFiles: files,
		EnforcedRules: func() *rules.Config { return enforced }})
	c := dial(t, addr, nil)
	for name, call := range map[string]func() error{
		"apply": func() error {
			_, err := c.ApplyConfig(withToken(""), &leveev1.ApplyConfigRequest{Bundle: rulesBundle("10"), Reason: "test"})
			return err
		},
		"dry-run apply": func() error {
			_, err := c.ApplyConfig(withToken(""), &leveev1.ApplyConfigRequest{Bundle: rulesBundle("10"), Reason: "test", DryRun: true})
			return err
		},
		"rollback": func() error {
			_, err := c.Rollback(withToken(""), &leveev1.RollbackRequest{Version: 1, Reason: "test"})
			return err
		},
	} {
		err := call()
		if status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("%s in file mode: %v; want FailedPrecondition", name, err)
		}
		for _, want := range append([]string{"files are authoritative", "edit the files on every node"}, files...) {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s in file mode: %q lacks %q", name, err, want)
			}
		}
	}
	if rec, err := store.Get(withToken("")); err != nil || rec.Version != 0 {
		t.Fatalf("store after refused writes: v%d, %v; want nothing stored", rec.Version, err)
	}
	for name, call := range map[string]func() error{
		"get": func() error {
			_, err := c.GetConfig(withToken(""), &leveev1.GetConfigRequest{})
			return err
		},
		"diff from the current version": func() error {
			_, err := c.DiffConfig(withToken(""), &leveev1.DiffConfigRequest{To: &leveev1.DiffConfigRequest_Bundle{Bundle: rulesBundle("10")}})
			return err
		},
	} {
		err := call()
		if status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("%s in file mode: %v; want FailedPrecondition", name, err)
		}
		for _, want := range append([]string{"not a stored version", "levee ctl explain"}, files...) {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s in file mode: %q lacks %q", name, err, want)
			}
		}
	}
	// A stored version asked for by number is read: one written while the
	// node ran from etcd, say.
	stored, err := bundleFromProto(rulesBundle("7"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Apply(withToken(""), stored, 0, "test", "before file mode"); err != nil {
		t.Fatal(err)
	}
	if got, err := c.GetConfig(withToken(""), &leveev1.GetConfigRequest{Version: 1}); err != nil || got.GetVersion().GetVersion() != 1 {
		t.Fatalf("get of stored version 1 in file mode: %v, %v", got, err)
	}
	st, err := c.Status(withToken(""), &leveev1.StatusRequest{})
	if err != nil || st.GetConfigSource() != SourceFile {
		t.Fatalf("Status: %v, source %q; want %q", err, st.GetConfigSource(), SourceFile)
	}
	// Explain explains against the rules the node enforces.
	ex, err := c.Explain(withToken(""), &leveev1.ExplainRequest{Domain: "api", Entries: []*leveev1.Entry{{Key: "user", Value: "alice"}}})
	if err != nil || !ex.GetMatched() || ex.GetRule().GetRequestsPerUnit() != 42 {
		t.Fatalf("Explain in file mode: %v, %v; want the enforced rule (42 per second)", ex, err)
	}
	if _, err := New(Config{Addr: "127.0.0.1:0", Store: store, ConfigSource: "files"}); err == nil {
		t.Fatal("New accepted an unknown config source")
	}
}

func TestFlagDivergent(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	at := func(min float64) time.Time { return t0.Add(time.Duration(min * float64(time.Minute))) }
	m := func(id, hash string, applied float64) MemberStatus {
		return MemberStatus{ID: id, Reachable: true, ConfigHash: hash, ConfigAppliedAt: at(applied)}
	}
	for _, c := range []struct {
		name    string
		members []MemberStatus
		now     float64
		want    map[string]float64 // flagged members and their start
	}{
		{"all agree", []MemberStatus{m("a", "h1", 0), m("b", "h1", 1), m("c", "h1", 2)}, 60, nil},
		{"left behind, recently", []MemberStatus{m("a", "h2", 10), m("b", "h2", 10.5), m("c", "h1", 0)}, 12, nil},
		// c kept h1 while the majority moved to h2 at minute 10.
		{"left behind", []MemberStatus{m("a", "h2", 10), m("b", "h2", 10.5), m("c", "h1", 0)}, 12.5, map[string]float64{"c": 10}},
		// c changed alone at minute 20.
		{"changed alone", []MemberStatus{m("a", "h1", 0), m("b", "h1", 1), m("c", "h3", 20)}, 21, nil},
		{"changed alone, long", []MemberStatus{m("a", "h1", 0), m("b", "h1", 1), m("c", "h3", 20)}, 23, map[string]float64{"c": 20}},
		// No majority: everyone differs since the last change.
		{"no majority", []MemberStatus{m("a", "h1", 0), m("b", "h2", 5)}, 8, map[string]float64{"a": 5, "b": 5}},
		// Members without a hash do not count.
		{"unknown hash", []MemberStatus{m("a", "h1", 0), m("b", "h1", 0), {ID: "c", Error: "no status published"}, m("d", "h2", 0)}, 10, map[string]float64{"d": 0}},
	} {
		ms := append([]MemberStatus(nil), c.members...)
		ms[0].ConfigDivergedSince = at(-1) // stale flags are cleared
		FlagDivergent(ms, at(c.now))
		for _, got := range ms {
			start, flagged := c.want[got.ID]
			switch {
			case flagged && !got.ConfigDivergedSince.Equal(at(start)):
				t.Errorf("%s: %s diverged since %v, want %v", c.name, got.ID, got.ConfigDivergedSince, at(start))
			case !flagged && !got.ConfigDivergedSince.IsZero():
				t.Errorf("%s: %s flagged since %v, want not flagged", c.name, got.ID, got.ConfigDivergedSince)
			}
		}
	}
}
