package configstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"gopkg.in/yaml.v3"

	"github.com/levee-dev/levee/limiter/cluster/clustertest"
	"github.com/levee-dev/levee/limiter/rules"
	"github.com/levee-dev/levee/shed/shedtest"
)

// testShed is a stand-in for the shedding policy loader, which lives in
// another package: a YAML map with a list of resources.
func testShed(data []byte) ([]string, error) {
	if len(data) == 0 {
		return nil, nil
	}
	var p struct {
		Resources []string `yaml:"resources"`
	}
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)
	if err := dec.Decode(&p); err != nil {
		return nil, err
	}
	if len(p.Resources) == 0 {
		return nil, errors.New("resources: at least one resource is required")
	}
	return p.Resources, nil
}

func ruleFile(domain string, rpu int) []byte {
	return fmt.Appendf(nil, `domain: %s
descriptors:
  - key: user
    rate_limit:
      unit: second
      requests_per_unit: %d
`, domain, rpu)
}

func bundle(rpu int) Bundle {
	return Bundle{
		Rules: map[string][]byte{"api.yaml": ruleFile("api", rpu), "team/login.yaml": ruleFile("login", 5)},
		Shed:  []byte("resources: [login, timeline]\n"),
	}
}

// newStore returns a Store on its own prefix of a shared etcd.
func newStore(t *testing.T, c *clientv3.Client, opts Options) *Store {
	t.Helper()
	opts.Client = c
	if opts.Prefix == "" {
		opts.Prefix = "/" + t.Name() + "/"
	}
	if opts.ValidateShed == nil {
		opts.ValidateShed = testShed
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func testClient(t *testing.T) *clientv3.Client {
	t.Helper()
	e := clustertest.StartEtcd(t)
	return clustertest.Client(t, e.Endpoints())
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustApply(t *testing.T, s *Store, b Bundle, expected int64, reason string) ApplyResult {
	t.Helper()
	res, err := s.Apply(ctxT(t), b, expected, "alice", reason)
	if err != nil {
		t.Fatalf("Apply(expected %d): %v", expected, err)
	}
	return res
}

func TestApplyGetHistory(t *testing.T) {
	c := testClient(t)
	s := newStore(t, c, Options{})
	ctx := ctxT(t)

	rec, err := s.Get(ctx)
	if err != nil || rec.Version != 0 || len(rec.Bundle.Rules) != 0 {
		t.Fatalf("Get on empty store = %+v, %v; want version 0", rec, err)
	}
	r1 := mustApply(t, s, bundle(10), 0, "first")
	if r1.Meta.Version != 1 || !r1.Changed || r1.Meta.Author != "alice" || r1.Meta.Reason != "first" {
		t.Fatalf("first Apply = %+v", r1)
	}
	r2 := mustApply(t, s, bundle(20), 1, "raise api limit")
	if r2.Meta.Version != 2 || !strings.Contains(r2.Diff, "-      requests_per_unit: 10\n+      requests_per_unit: 20\n") {
		t.Fatalf("second Apply = %+v", r2)
	}
	rec, err = s.Get(ctx)
	if err != nil || rec.Version != 2 || !rec.Bundle.Equal(bundle(20)) || rec.Reason != "raise api limit" {
		t.Fatalf("Get = %+v, %v", rec, err)
	}

	// The same content again stores nothing.
	r3 := mustApply(t, s, bundle(20), 2, "again")
	if r3.Changed || r3.Meta.Version != 2 || r3.Diff != "" {
		t.Fatalf("unchanged Apply = %+v", r3)
	}

	h, err := s.History(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(h) != 2 || h[0].Version != 2 || h[1].Version != 1 || h[1].Reason != "first" {
		t.Fatalf("History = %+v", h)
	}
	if h, _ := s.History(ctx, 1); len(h) != 1 || h[0].Version != 2 {
		t.Fatalf("History(1) = %+v", h)
	}
	d, err := s.Diff(ctx, 1, 2)
	if err != nil || d != r2.Diff {
		t.Fatalf("Diff(1, 2) = %q, %v; want the Apply diff %q", d, err, r2.Diff)
	}
	if _, err := s.Version(ctx, 9); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "newest is 2") {
		t.Fatalf("Version(9) error = %v", err)
	}
	// Missing reason or author: refused before anything is read.
	for _, who := range [][2]string{{"alice", ""}, {"", "why"}} {
		_, err := s.Apply(ctx, bundle(30), 2, who[0], who[1])
		var ve *ValidationError
		if !errors.As(err, &ve) {
			t.Errorf("Apply(author %q, reason %q) error = %v; want a ValidationError", who[0], who[1], err)
		}
	}
}

func TestRacingWritersExactlyOneWins(t *testing.T) {
	c := testClient(t)
	// A second client, as a second operator would have.
	c2 := clustertest.Client(t, c.Endpoints())
	s1 := newStore(t, c, Options{Prefix: "/race/"})
	s2 := newStore(t, c2, Options{Prefix: "/race/"})
	ctx := ctxT(t)
	mustApply(t, s1, bundle(1), 0, "start")

	for round := int64(1); round <= 20; round++ {
		var wg sync.WaitGroup
		start := make(chan struct{})
		results := make([]ApplyResult, 2)
		errs := make([]error, 2)
		for i, s := range []*Store{s1, s2} {
			wg.Go(func() {
				<-start
				results[i], errs[i] = s.Apply(ctx, bundle(int(100*round)+i), round, fmt.Sprintf("op%d", i), "race")
			})
		}
		close(start)
		wg.Wait()

		won := -1
		for i, err := range errs {
			if err == nil {
				if won >= 0 {
					t.Fatalf("round %d: both writers succeeded: %+v", round, results)
				}
				won = i
			}
		}
		if won < 0 {
			t.Fatalf("round %d: both writers failed: %v; %v", round, errs[0], errs[1])
		}
		lost := 1 - won
		var ce *ConflictError
		if !errors.As(errs[lost], &ce) {
			t.Fatalf("round %d: loser error = %v; want a ConflictError", round, errs[lost])
		}
		want := round + 1
		if ce.Current != want || ce.Expected != round || results[won].Meta.Version != want {
			t.Fatalf("round %d: conflict %+v, winner version %d; want current %d", round, ce, results[won].Meta.Version, want)
		}
		if msg := errs[lost].Error(); !strings.Contains(msg, fmt.Sprintf("the current version is %d", want)) {
			t.Fatalf("round %d: conflict message %q does not name the current version", round, msg)
		}
		rec, err := s1.Get(ctx)
		if err != nil || rec.Version != want || !rec.Bundle.Equal(bundle(int(100*round)+won)) || rec.Author != fmt.Sprintf("op%d", won) {
			t.Fatalf("round %d: stored %+v, %v; want the winner's bundle", round, rec.Meta, err)
		}
	}
	if h, _ := s1.History(ctx, 0); len(h) != 21 {
		t.Fatalf("history has %d versions, want 21 (one per round plus the first)", len(h))
	}
}

func TestInvalidRuleSetRefused(t *testing.T) {
	c := testClient(t)
	s := newStore(t, c, Options{})
	ctx := ctxT(t)
	good := mustApply(t, s, bundle(10), 0, "good")

	bad := bundle(99)
	bad.Rules["bad.yaml"] = []byte(`domain: bad
descriptors:
  - key: user
    rate_limit:
      unit: fortnight
      requests_per_unit: 5
`)
	bad.Rules["dup.yaml"] = ruleFile("api", 1) // the domain of api.yaml again
	bad.Shed = []byte("resources: [login]\ncapacity: 7\n")
	_, err := s.Apply(ctx, bad, 1, "alice", "oops")
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("Apply(bad) error = %v; want a ValidationError", err)
	}
	var pe *rules.ParseError
	if !errors.As(err, &pe) || pe.File != "bad.yaml" || pe.Line != 5 {
		t.Fatalf("first ParseError = %+v; want bad.yaml line 5", pe)
	}
	msg := err.Error()
	for _, want := range []string{"bad.yaml:5: rate_limit.unit:", "fortnight", "shed.yaml:", "capacity"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not contain %q", msg, want)
		}
	}
	// Fix the unit: the duplicate domain is the remaining problem.
	delete(bad.Rules, "bad.yaml")
	bad.Shed = nil
	_, err = s.Apply(ctx, bad, 1, "alice", "oops")
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), "duplicate domain 'api'") {
		t.Fatalf("duplicate domain error = %v", err)
	}
	// A bad file name.
	_, err = s.Apply(ctx, Bundle{Rules: map[string][]byte{"../etc/x.yaml": ruleFile("x", 1)}}, 1, "alice", "oops")
	if !errors.As(err, &ve) || !strings.Contains(err.Error(), "../etc/x.yaml:1: file name must not contain") {
		t.Fatalf("bad name error = %v", err)
	}

	rec, err := s.Get(ctx)
	if err != nil || rec.Version != good.Meta.Version || !rec.Bundle.Equal(bundle(10)) {
		t.Fatalf("after refused applies Get = %+v, %v; want version 1 unchanged", rec.Meta, err)
	}
	if h, _ := s.History(ctx, 0); len(h) != 1 {
		t.Fatalf("history has %d versions, want 1", len(h))
	}
	// Validation comes before the version check: the reason is reported
	// even when the expected version is also stale.
	if _, err := s.Apply(ctx, Bundle{Rules: map[string][]byte{"x.yaml": []byte("domain: [")}}, 0, "a", "r"); !errors.As(err, &ve) {
		t.Fatalf("bad YAML with stale version: %v; want a ValidationError", err)
	}
}

func TestSeed(t *testing.T) {
	c := testClient(t)
	s := newStore(t, c, Options{})
	ctx := ctxT(t)
	res, seeded, err := s.Seed(ctx, bundle(1), "node-a", "seed from --config")
	if err != nil || !seeded || res.Meta.Version != 1 {
		t.Fatalf("first Seed = %+v, %v, %v", res, seeded, err)
	}
	res, seeded, err = s.Seed(ctx, bundle(2), "node-b", "seed from --config")
	if err != nil || seeded || res.Meta.Version != 1 || res.Meta.Author != "node-a" {
		t.Fatalf("second Seed = %+v, %v, %v; want version 1 left alone", res, seeded, err)
	}
	if _, _, err := s.Seed(ctx, Bundle{Rules: map[string][]byte{"x": []byte("nope")}}, "n", "r"); err == nil {
		t.Fatal("Seed with an invalid bundle succeeded")
	}
}

// TestSeedLeavesHistoryAlone: with the current key deleted but the history
// kept, a starting node must not seed its own files over the cluster's
// configuration; NewestLoadable finds the version to serve, skipping one
// that does not load.
func TestSeedLeavesHistoryAlone(t *testing.T) {
	c := testClient(t)
	s := newStore(t, c, Options{})
	ctx := ctxT(t)
	mustApply(t, s, bundle(500), 0, "a")
	mustApply(t, s, bundle(501), 1, "b")
	if _, err := c.Delete(ctx, s.keys.configCurrent()); err != nil {
		t.Fatal(err)
	}
	res, seeded, err := s.Seed(ctx, bundle(7), "node-b", "seed from --config")
	if err != nil || seeded || res.Meta.Version != 0 {
		t.Fatalf("Seed with the current key deleted = %+v, %v, %v; want nothing stored", res, seeded, err)
	}
	if resp, err := c.Get(ctx, s.keys.configCurrent()); err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("current key after Seed: %v, %v; want still missing", resp, err)
	}
	if h, err := s.History(ctx, 0); err != nil || len(h) != 2 {
		t.Fatalf("history after Seed: %d versions, %v; want 2", len(h), err)
	}
	rec, cfg, err := s.NewestLoadable(ctx)
	if err != nil || rec.Version != 2 || !rec.Bundle.Equal(bundle(501)) || cfg.Domain("api") == nil {
		t.Fatalf("NewestLoadable = v%d, %v; want version 2", rec.Version, err)
	}
	// A newer record that does not load (hand-written) is skipped.
	if _, err := c.Put(ctx, s.keys.historyKey(3), `{"version":3,"rules":{"api.yaml":"domain: [unclosed"}}`); err != nil {
		t.Fatal(err)
	}
	if rec, _, err := s.NewestLoadable(ctx); err != nil || rec.Version != 2 {
		t.Fatalf("NewestLoadable with a bad newest record = v%d, %v; want version 2", rec.Version, err)
	}
	// An empty store has nothing to serve.
	empty := newStore(t, c, Options{Prefix: "/" + t.Name() + "-empty/"})
	if _, _, err := empty.NewestLoadable(ctx); !errors.Is(err, ErrNotFound) {
		t.Fatalf("NewestLoadable on an empty store: %v, want ErrNotFound", err)
	}
}

func TestBundleHash(t *testing.T) {
	b := bundle(1)
	h := b.Hash()
	if len(h) != 16 || strings.Trim(h, "0123456789abcdef") != "" {
		t.Fatalf("Hash = %q, want 16 hexadecimal digits", h)
	}
	same := Bundle{Rules: map[string][]byte{}, Shed: slices.Clone(b.Shed)}
	for n, d := range b.Rules {
		same.Rules[n] = slices.Clone(d)
	}
	if same.Hash() != h {
		t.Fatal("equal bundles hash differently")
	}
	for name, o := range map[string]Bundle{
		"other content":   bundle(2),
		"other shed":      {Rules: b.Rules, Shed: []byte("resources: [login]\n")},
		"no shed":         {Rules: b.Rules},
		"renamed":         {Rules: map[string][]byte{"api2.yaml": b.Rules["api.yaml"], "team/login.yaml": b.Rules["team/login.yaml"]}, Shed: b.Shed},
		"name runs on":    {Rules: map[string][]byte{"a": []byte("bc")}},
		"content runs on": {Rules: map[string][]byte{"ab": []byte("c")}},
		"rule as shed":    {Rules: map[string][]byte{}, Shed: []byte("bc")},
	} {
		if o.Hash() == h {
			t.Errorf("%s: same hash as the original", name)
		}
	}
	if (Bundle{Rules: map[string][]byte{"a": []byte("bc")}}).Hash() == (Bundle{Rules: map[string][]byte{"ab": []byte("c")}}).Hash() {
		t.Error("name and content run together")
	}
}

func TestRollbackRestoresContent(t *testing.T) {
	c := testClient(t)
	s := newStore(t, c, Options{})
	ctx := ctxT(t)
	mustApply(t, s, bundle(10), 0, "v1")
	b2 := bundle(20)
	b2.Rules["extra.yaml"] = ruleFile("extra", 3)
	b2.Shed = []byte("resources: [login]\n")
	mustApply(t, s, b2, 1, "v2")

	if _, err := s.Rollback(ctx, 1, 1, "bob", "stale"); !isConflict(err, 2) {
		t.Fatalf("Rollback with a stale version: %v; want a conflict naming 2", err)
	}
	res, err := s.Rollback(ctx, 1, 2, "bob", "v2 broke logins")
	if err != nil {
		t.Fatal(err)
	}
	if res.Meta.Version != 3 || res.Meta.RollbackOf != 1 || !res.Changed ||
		!strings.Contains(res.Diff, "--- v2/rules/extra.yaml\n+++ /dev/null\n") {
		t.Fatalf("Rollback = %+v", res)
	}
	rec, _ := s.Get(ctx)
	if !rec.Bundle.Equal(bundle(10)) || rec.Author != "bob" || rec.RollbackOf != 1 {
		t.Fatalf("after rollback: %+v", rec.Meta)
	}
	if d, _ := s.Diff(ctx, 1, 3); d != "" {
		t.Fatalf("diff between v1 and its rollback = %q, want empty", d)
	}
	if _, err := s.Rollback(ctx, 7, 3, "bob", "x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Rollback to a missing version: %v", err)
	}
	// Rolling back to what is current stores nothing.
	if res, err := s.Rollback(ctx, 3, 3, "bob", "noop"); err != nil || res.Changed {
		t.Fatalf("Rollback to current = %+v, %v", res, err)
	}
}

func isConflict(err error, current int64) bool {
	var ce *ConflictError
	return errors.As(err, &ce) && ce.Current == current
}

func TestHistorySurvivesCompaction(t *testing.T) {
	c := testClient(t)
	s := newStore(t, c, Options{})
	ctx := ctxT(t)
	for v := int64(0); v < 5; v++ {
		mustApply(t, s, bundle(int(v)+1), v, fmt.Sprintf("change %d", v+1))
	}
	resp, err := c.Get(ctx, "any")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	// Reading at an old revision now fails, so the history must not rely
	// on it.
	if _, err := c.Get(ctx, "any", clientv3.WithRev(2)); err == nil {
		t.Fatal("reading a compacted revision succeeded; the test proves nothing")
	}
	h, err := s.History(ctx, 0)
	if err != nil || len(h) != 5 {
		t.Fatalf("History after compaction = %d versions, %v", len(h), err)
	}
	for i, m := range h {
		if m.Version != int64(5-i) || m.Reason != fmt.Sprintf("change %d", 5-i) {
			t.Fatalf("History[%d] = %+v", i, m)
		}
	}
	rec, err := s.Version(ctx, 1)
	if err != nil || !rec.Bundle.Equal(bundle(1)) {
		t.Fatalf("Version(1) after compaction = %+v, %v", rec.Meta, err)
	}
	if res, err := s.Rollback(ctx, 2, 5, "carol", "back to 2"); err != nil || res.Meta.Version != 6 {
		t.Fatalf("Rollback after compaction = %+v, %v", res, err)
	}
}

func TestHistoryKeep(t *testing.T) {
	c := testClient(t)
	s := newStore(t, c, Options{HistoryKeep: 3})
	ctx := ctxT(t)
	for v := int64(0); v < 6; v++ {
		mustApply(t, s, bundle(int(v)+1), v, "x")
	}
	h, err := s.History(ctx, 0)
	if err != nil || len(h) != 3 || h[2].Version != 4 {
		t.Fatalf("History = %+v, %v; want versions 6, 5, 4", h, err)
	}
	_, err = s.Version(ctx, 2)
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "oldest kept is 4") {
		t.Fatalf("Version(2) = %v", err)
	}
}

// TestNumberingContinuesAfterCurrentDeleted: a current key deleted by hand
// must not make the next write reuse a version number.
func TestNumberingContinuesAfterCurrentDeleted(t *testing.T) {
	c := testClient(t)
	s := newStore(t, c, Options{})
	ctx := ctxT(t)
	mustApply(t, s, bundle(1), 0, "a")
	mustApply(t, s, bundle(2), 1, "b")
	if _, err := c.Delete(ctx, s.keys.configCurrent()); err != nil {
		t.Fatal(err)
	}
	res := mustApply(t, s, bundle(3), 0, "c")
	if res.Meta.Version != 3 {
		t.Fatalf("version after deleting current = %d, want 3", res.Meta.Version)
	}
	if rec, _ := s.Version(ctx, 2); !rec.Bundle.Equal(bundle(2)) {
		t.Fatal("version 2 was overwritten")
	}
}

func TestCheckName(t *testing.T) {
	for name, ok := range map[string]bool{
		"api.yaml": true, "team/login.yaml": true, "a-b_c.d.yaml": true,
		"": false, "/abs.yaml": false, "a//b": false, "a/": false, "../x": false, "a/./b": false,
		".hidden": false, "dir/.x": false, "a\\b": false, "a\nb": false, strings.Repeat("x", 300): false,
	} {
		if got := checkName(name) == ""; got != ok {
			t.Errorf("checkName(%q) ok = %v, want %v (%s)", name, got, ok, checkName(name))
		}
	}
}

func TestBundleTooLargeOrNotUTF8(t *testing.T) {
	b := Bundle{Rules: map[string][]byte{"big.yaml": []byte("domain: big\n# " + strings.Repeat("x", MaxBundleSize) + "\n")}}
	if _, _, err := compile(b, nil); err == nil || !strings.Contains(err.Error(), "more than the limit") {
		t.Fatalf("oversized bundle: %v", err)
	}
	b = Bundle{Rules: map[string][]byte{"l1.yaml": []byte("domain: x\n# \xff\n")}}
	if _, _, err := compile(b, nil); err == nil || !strings.Contains(err.Error(), "l1.yaml:2: file is not valid UTF-8") {
		t.Fatalf("bad UTF-8: %v", err)
	}
}

func TestOverrides(t *testing.T) {
	c := testClient(t)
	s := newStore(t, c, Options{})
	ctx := ctxT(t)
	mustApply(t, s, bundle(1), 0, "policy with login and timeline")
	now := time.Now()

	bad := []struct {
		o    Override
		want string
	}{
		{Override{Resource: "login", MinPriority: "urgent", Until: now.Add(time.Minute), Author: "a", Reason: "r"}, `invalid priority "urgent"`},
		{Override{Resource: "logn", MinPriority: "critical", Until: now.Add(time.Minute), Author: "a", Reason: "r"}, `unknown resource "logn"; the shedding policy of version 1 defines: login, timeline`},
		{Override{Resource: "login", MinPriority: "critical", Until: now.Add(-time.Second), Author: "a", Reason: "r"}, "not in the future"},
		{Override{Resource: "login", MinPriority: "critical", Until: now.Add(48 * time.Hour), Author: "a", Reason: "r"}, "more than the maximum of 24h0m0s"},
		{Override{Resource: "login", MinPriority: "critical", Until: now.Add(time.Minute), Author: "a"}, "reason is required"},
		{Override{Resource: "a b", MinPriority: "critical", Until: now.Add(time.Minute), Author: "a", Reason: "r"}, "contains a space"},
	}
	for _, tc := range bad {
		_, _, err := s.SetOverride(ctx, tc.o)
		var ve *ValidationError
		if !errors.As(err, &ve) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("SetOverride(%+v) error = %v; want a ValidationError with %q", tc.o, err, tc.want)
		}
	}

	set, prev, err := s.SetOverride(ctx, Override{Resource: "login", MinPriority: "High", Until: now.Add(time.Hour), Author: "alice", Reason: "incident 42"})
	if err != nil || prev != nil || set.MinPriority != "high" || set.SetAt.IsZero() || set.Author != "alice" {
		t.Fatalf("SetOverride = %+v, %v, %v", set, prev, err)
	}
	_, prev, err = s.SetOverride(ctx, Override{Resource: "login", MinPriority: "critical", Until: now.Add(time.Hour), Author: "bob", Reason: "worse"})
	if err != nil || prev == nil || prev.MinPriority != "high" || prev.Author != "alice" {
		t.Fatalf("replacing SetOverride = %+v, %v", prev, err)
	}
	list, err := s.ListOverrides(ctx)
	if err != nil || len(list) != 1 || list[0].MinPriority != "critical" || list[0].Author != "bob" || list[0].SetAt.IsZero() {
		t.Fatalf("ListOverrides = %+v, %v", list, err)
	}
	cleared, err := s.ClearOverride(ctx, "login", "carol", "incident over")
	if err != nil || cleared.Author != "bob" {
		t.Fatalf("ClearOverride = %+v, %v", cleared, err)
	}
	if _, err := s.ClearOverride(ctx, "login", "carol", "again"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second ClearOverride = %v; want ErrNotFound", err)
	}
	if list, _ := s.ListOverrides(ctx); len(list) != 0 {
		t.Fatalf("after clear: %+v", list)
	}
}

func TestOverrideExpiresByItself(t *testing.T) {
	c := testClient(t)
	s := newStore(t, c, Options{})
	ctx := ctxT(t)
	mustApply(t, s, bundle(1), 0, "policy")

	var mu sync.Mutex
	var seen [][]Override
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- s.WatchOverrides(wctx, func(o []Override) {
			mu.Lock()
			seen = append(seen, o)
			mu.Unlock()
		})
	}()
	defer func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("WatchOverrides returned %v", err)
		}
	}()

	// Wait for the watcher's first (empty) delivery, so that it sees the
	// override arrive rather than find it on its first read.
	shedtest.Eventually(t, 10*time.Second, "WatchOverrides' first delivery", func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(seen) == 0 {
			return errors.New("nothing delivered")
		}
		return nil
	})
	set := time.Now()
	if _, _, err := s.SetOverride(ctx, Override{Resource: "timeline", MinPriority: "critical", Until: set.Add(2 * time.Second), Author: "alice", Reason: "drill"}); err != nil {
		t.Fatal(err)
	}
	if list, _ := s.ListOverrides(ctx); len(list) != 1 {
		t.Fatalf("ListOverrides right after set = %+v", list)
	}
	// Poll the key itself: etcd must delete it when the lease runs out,
	// with nobody clearing it.
	key := s.keys.overrides() + "timeline"
	shedtest.Eventually(t, 15*time.Second, "etcd deleting the key of a 2 s override", func() error {
		resp, err := c.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) != 0 {
			return errors.New("override key still present")
		}
		return nil
	})
	gone := time.Since(set)
	if gone < 2*time.Second {
		t.Fatalf("override key gone after %v, before its 2 s expiry", gone)
	}
	t.Logf("override key deleted by etcd %v after a 2 s override was set", gone.Round(10*time.Millisecond))

	// The watcher saw it come and go.
	shedtest.Eventually(t, 10*time.Second, "the watcher seeing the override come and go", func() error {
		mu.Lock()
		defer mu.Unlock()
		n := len(seen)
		if n >= 3 && len(seen[0]) == 0 && len(seen[n-1]) == 0 &&
			slices.ContainsFunc(seen, func(o []Override) bool { return len(o) == 1 && o[0].Resource == "timeline" }) {
			return nil
		}
		return fmt.Errorf("watcher saw %+v; want empty, the override, then empty", seen)
	})
}

// TestWatchDeliversToThreeNodes applies 100 versions and checks that three
// watchers, each with its own etcd client as three nodes would have, see
// every version in order. It logs the time from the Apply call to the
// delivery on each node; it asserts nothing about it.
func TestWatchDeliversToThreeNodes(t *testing.T) {
	e := clustertest.StartEtcd(t)
	writer := newStore(t, clustertest.Client(t, e.Endpoints()), Options{Prefix: "/w/"})
	ctx := ctxT(t)
	mustApply(t, writer, bundle(1), 0, "seed")

	const nodes, applies = 3, 100
	type delivery struct {
		node int
		v    int64
		at   time.Time
		cfg  *rules.Config
	}
	ch := make(chan delivery, nodes*(applies+1))
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for i := range nodes {
		s := newStore(t, clustertest.Client(t, e.Endpoints()), Options{Prefix: "/w/"})
		wg.Go(func() {
			err := s.Watch(wctx, func(m Meta, cfg *rules.Config, b Bundle) {
				ch <- delivery{i, m.Version, time.Now(), cfg}
			}, func(v int64, err error) {
				t.Errorf("node %d: version %d refused: %v", i, v, err)
			})
			if !errors.Is(err, context.Canceled) {
				t.Errorf("node %d: Watch returned %v", i, err)
			}
		})
	}
	defer func() { cancel(); wg.Wait() }()

	last := make([]int64, nodes)
	await := func(v int64) []time.Time {
		at := make([]time.Time, nodes)
		timeout := time.After(20 * time.Second)
		for got := 0; got < nodes; {
			select {
			case d := <-ch:
				if d.v != last[d.node]+1 {
					t.Fatalf("node %d got version %d after %d", d.node, d.v, last[d.node])
				}
				last[d.node] = d.v
				if d.v == v {
					at[d.node] = d.at
					got++
					rpu := d.cfg.Match("api", []rules.Entry{{Key: "user", Value: "u"}}).Rule.Limits[0].RequestsPerUnit
					if want := uint32(v); v > 1 && rpu != want {
						t.Fatalf("node %d version %d has limit %d, want %d", d.node, v, rpu, want)
					}
				}
			case <-timeout:
				t.Fatalf("version %d not delivered to all nodes: last = %v", v, last)
			}
		}
		return at
	}
	await(1)

	var lat []time.Duration
	for v := int64(2); v <= applies+1; v++ {
		start := time.Now()
		mustApply(t, writer, bundle(int(v)), v-1, "tune")
		for _, at := range await(v) {
			lat = append(lat, at.Sub(start))
		}
	}
	slices.Sort(lat)
	t.Logf("Apply call -> delivery on each of %d nodes, %d versions: p50 %v, p99 %v, max %v",
		nodes, applies, lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1])
}

// TestWatchRefusesWhatItCannotLoad: a node whose shedding policy loader is
// stricter than the writer's (older code) refuses the version, keeps the
// last good one and reports it, then takes the next good version.
func TestWatchRefusesWhatItCannotLoad(t *testing.T) {
	c := testClient(t)
	lenient := newStore(t, c, Options{Prefix: "/n/", ValidateShed: func([]byte) ([]string, error) { return nil, nil }})
	strict := newStore(t, c, Options{Prefix: "/n/"})
	ctx := ctxT(t)
	mustApply(t, lenient, bundle(1), 0, "good")

	type event struct {
		v   int64
		err error
	}
	ch := make(chan event, 10)
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = strict.Watch(wctx,
			func(m Meta, _ *rules.Config, _ Bundle) { ch <- event{v: m.Version} },
			func(v int64, err error) { ch <- event{v, err} })
	}()
	defer func() { cancel(); <-done }()

	next := func() event {
		select {
		case e := <-ch:
			return e
		case <-time.After(10 * time.Second):
			t.Fatal("no delivery within 10 s")
			return event{}
		}
	}
	if e := next(); e.v != 1 || e.err != nil {
		t.Fatalf("first delivery = %+v", e)
	}
	newer := bundle(2)
	newer.Shed = []byte("resources: [login]\nreserve: 0.2\n") // a field this node does not know
	mustApply(t, lenient, newer, 1, "new field")
	if e := next(); e.v != 2 || e.err == nil || !strings.Contains(e.err.Error(), "reserve") {
		t.Fatalf("second delivery = %+v; want version 2 refused", e)
	}
	mustApply(t, lenient, bundle(3), 2, "back to what everyone reads")
	if e := next(); e.v != 3 || e.err != nil {
		t.Fatalf("third delivery = %+v", e)
	}
}

// TestWatchSurvivesEtcdRestart: the watcher keeps its version while etcd is
// down and picks up a change made after etcd comes back.
func TestWatchSurvivesEtcdRestart(t *testing.T) {
	e := clustertest.StartEtcd(t)
	cfg := e.Config()
	watcher := newStore(t, clustertest.Client(t, e.Endpoints()), Options{Prefix: "/r/"})
	ctx := ctxT(t)
	mustApply(t, watcher, bundle(1), 0, "one")

	var mu sync.Mutex
	var got []int64
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = watcher.Watch(wctx, func(m Meta, _ *rules.Config, _ Bundle) {
			mu.Lock()
			got = append(got, m.Version)
			mu.Unlock()
		}, nil)
	}()
	defer func() { cancel(); <-done }()
	waitFor := func(v int64) {
		t.Helper()
		shedtest.Eventually(t, 20*time.Second, fmt.Sprintf("version %d delivered", v), func() error {
			mu.Lock()
			defer mu.Unlock()
			if len(got) == 0 || got[len(got)-1] != v {
				return fmt.Errorf("watcher has %v", got)
			}
			return nil
		})
	}
	waitFor(1)
	e.Close()
	e2 := clustertest.StartEtcdWith(t, cfg)
	writer := newStore(t, clustertest.Client(t, e2.Endpoints()), Options{Prefix: "/r/"})
	mustApply(t, writer, bundle(2), 1, "two")
	waitFor(2)
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(got, []int64{1, 2}) {
		t.Fatalf("deliveries = %v, want [1 2]", got)
	}
}

func TestValidationErrorListsAllProblems(t *testing.T) {
	b := Bundle{Rules: map[string][]byte{
		"a.yaml": []byte("domain: a\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: -1}\n"),
		"b.yaml": []byte("descriptors: []\n"),
	}}
	_, _, err := compile(b, nil)
	var ve *ValidationError
	if !errors.As(err, &ve) || len(ve.Problems) != 2 {
		t.Fatalf("compile = %v; want 2 problems", err)
	}
	var files []string
	for _, p := range ve.Problems {
		var pe *rules.ParseError
		if errors.As(p, &pe) {
			files = append(files, pe.File)
		}
	}
	sort.Strings(files)
	if !slices.Equal(files, []string{"a.yaml", "b.yaml"}) {
		t.Fatalf("problems name files %v", files)
	}
}

// TestConflictDetectedAtCommit: a write that lands between another
// writer's read and its commit is caught by the etcd transaction itself.
func TestConflictDetectedAtCommit(t *testing.T) {
	c := testClient(t)
	s1 := newStore(t, c, Options{Prefix: "/cas/"})
	s2 := newStore(t, c, Options{Prefix: "/cas/"})
	ctx := ctxT(t)
	mustApply(t, s1, bundle(1), 0, "one")
	s1.beforeCommit = func() {
		s1.beforeCommit = nil
		mustApply(t, s2, bundle(2), 1, "sneaks in")
	}
	_, err := s1.Apply(ctx, bundle(3), 1, "alice", "late")
	if !isConflict(err, 2) {
		t.Fatalf("Apply = %v; want a conflict naming version 2", err)
	}
	if rec, _ := s1.Get(ctx); rec.Version != 2 || !rec.Bundle.Equal(bundle(2)) {
		t.Fatalf("stored %+v; want the other writer's version 2", rec.Meta)
	}
}

func TestAuditLog(t *testing.T) {
	c := testClient(t)
	var buf shedtest.Log
	s := newStore(t, c, Options{Logger: slog.New(slog.NewJSONHandler(&buf, nil))})
	ctx := ctxT(t)
	mustApply(t, s, bundle(1), 0, "first")
	mustApply(t, s, bundle(2), 1, "raise api")
	if _, err := s.Rollback(ctx, 1, 2, "bob", "undo"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.SetOverride(ctx, Override{Resource: "login", MinPriority: "critical", Until: time.Now().Add(time.Minute), Author: "carol", Reason: "incident"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ClearOverride(ctx, "login", "dave", "over"); err != nil {
		t.Fatal(err)
	}
	// A refused apply is not a change and is not in the audit log.
	_, _ = s.Apply(ctx, bundle(3), 0, "eve", "stale")
	log := buf.String()
	for _, want := range []string{
		`"msg":"config applied","audit":true,"version":2,"previous":1,"author":"alice","reason":"raise api","diff":"--- v1/rules/api.yaml\n+++ v2/rules/api.yaml\n`,
		`"version":3,"previous":2,"author":"bob","reason":"undo","rollback_of":1`,
		`"msg":"override set","audit":true,"resource":"login","min_priority":"critical"`,
		`"author":"carol","reason":"incident"`,
		`"msg":"override cleared","audit":true,"resource":"login"`,
		`"author":"dave","reason":"over","set_by":"carol"`,
	} {
		if !strings.Contains(log, want) {
			t.Errorf("audit log lacks %s\nlog:\n%s", want, log)
		}
	}
	if strings.Contains(log, `"author":"eve"`) {
		t.Errorf("refused apply was logged as a change:\n%s", log)
	}
}
