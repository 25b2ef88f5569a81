package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	"gopkg.in/yaml.v3"

	"github.com/levee-dev/levee/cmd/levee/internal/admin"
	"github.com/levee-dev/levee/cmd/levee/internal/configstore"
	"github.com/levee-dev/levee/limiter/cluster/clustertest"
	"github.com/levee-dev/levee/shed/policy"
	"github.com/levee-dev/levee/shed/shedtest"
)

const ctlAliceToken = "alice-token-0123456789"

// ctlEnv is an admin API on loopback backed by a real embedded etcd.
type ctlEnv struct {
	addr      string
	tokenFile string // alice's token, as levee ctl reads it
	store     *configstore.Store
	etcd      *clientv3.Client
}

// ctlShed validates a shedding policy with the node's own parser, as
// levee serve should configure configstore.Options.ValidateShed. An empty
// policy reports no resource list, so overrides are not checked against it.
func ctlShed(data []byte) ([]string, error) {
	if len(data) == 0 {
		return nil, nil
	}
	p, err := policy.Parse(configstore.ShedName, data)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(p.Resources))
	for _, r := range p.Resources {
		names = append(names, r.Name)
	}
	return names, nil
}

const ctlPolicy = "resources:\n  - name: login\n  - name: timeline\n    retry_after: 1s\n"

func startCtlEnv(t *testing.T) *ctlEnv {
	t.Helper()
	e := clustertest.StartEtcd(t)
	cli := clustertest.Client(t, e.Endpoints())
	store, err := configstore.New(configstore.Options{
		Client: cli, Prefix: "/ctl/", ValidateShed: ctlShed,
	})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	serverTokens := filepath.Join(dir, "tokens")
	must(t, os.WriteFile(serverTokens, []byte("alice:"+ctlAliceToken+"\nbob:bob-token-0123456789ab\n"), 0o600))
	clientToken := filepath.Join(dir, "alice.token")
	must(t, os.WriteFile(clientToken, []byte(ctlAliceToken+"\n"), 0o600))

	status := admin.StatusFunc(func(ctx context.Context) (admin.ClusterStatus, error) {
		rec, err := store.Get(ctx)
		if err != nil {
			return admin.ClusterStatus{}, err
		}
		return admin.ClusterStatus{Self: "node-a", Members: []admin.MemberStatus{
			{ID: "node-a", Addr: "127.0.0.1:8082", Reachable: true, RingShare: 0.5, ConfigVersion: rec.Version, DecisionsPerSecond: 1500,
				RefusalsPerSecond: map[string]float64{"sheddable": 42},
				Thresholds:        []admin.Threshold{{Resource: "timeline", Priority: "low", Cohort: 32}}},
			{ID: "node-b", Addr: "127.0.0.1:8083", Reachable: true, RingShare: 0.5, ConfigVersion: rec.Version - 1, DecisionsPerSecond: 1400},
		}}, nil
	})
	srv, err := admin.New(admin.Config{Addr: "127.0.0.1:0", Store: store, TokenFile: serverTokens, Status: status})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("admin Run: %v", err)
		}
	})
	return &ctlEnv{addr: srv.Addr(), tokenFile: clientToken, store: store, etcd: cli}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// run runs `levee ctl args...` in process, as main does, and returns its
// output and exit code.
func runCtl(args ...string) (stdout, stderr string, code int) {
	root := &cobra.Command{Use: "levee", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(ctlCommand())
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(append([]string{"ctl"}, args...))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := root.ExecuteContext(ctx)
	if err != nil {
		fmt.Fprintln(&errb, "levee:", err)
	}
	return out.String(), errb.String(), ctlExitCode(err)
}

// ctl runs a command against env as alice.
func (e *ctlEnv) ctl(args ...string) (string, string, int) {
	return runCtl(append([]string{"--addr", e.addr, "--token-file", e.tokenFile}, args...)...)
}

// ok runs a command that must succeed and returns its output.
func (e *ctlEnv) ok(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := e.ctl(args...)
	if code != 0 {
		t.Fatalf("levee ctl %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// fails runs a command that must exit with code, and returns its stderr.
func (e *ctlEnv) fails(t *testing.T, code int, args ...string) string {
	t.Helper()
	out, errOut, got := e.ctl(args...)
	if got != code {
		t.Fatalf("levee ctl %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), got, code, out, errOut)
	}
	return errOut
}

func rulesYAML(domain string, rpu int) string {
	return fmt.Sprintf("domain: %s\ndescriptors:\n  - key: user\n    rate_limit:\n      unit: second\n      requests_per_unit: %d\n", domain, rpu)
}

// writeRules writes a rule directory: api.yaml and team/login.yaml.
func writeRules(t *testing.T, dir string, apiRPU int) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Join(dir, "team"), 0o755))
	must(t, os.WriteFile(filepath.Join(dir, "api.yaml"), []byte(rulesYAML("api", apiRPU)), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "team", "login.yaml"), []byte(rulesYAML("login", 5)), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, ".hidden.yaml"), []byte("not: rules"), 0o644))
}

func TestCtlConfigLifecycle(t *testing.T) {
	env := startCtlEnv(t)
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules")
	writeRules(t, rules, 10)
	shed := filepath.Join(dir, "shed.yaml")
	must(t, os.WriteFile(shed, []byte(ctlPolicy), 0o644))

	out := env.ok(t, "apply", "-f", rules, "--shed", shed, "--reason", "initial rules")
	if !strings.Contains(out, `applied version 1 by alice`) || !strings.Contains(out, "+++ v1/rules/team/login.yaml") {
		t.Fatalf("apply output:\n%s", out)
	}
	out = env.ok(t, "get")
	for _, want := range []string{`version 1 by alice`, `"initial rules"`, "rules/api.yaml", "rules/team/login.yaml", "shed.yaml"} {
		if !strings.Contains(out, want) {
			t.Errorf("get output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "hidden") {
		t.Errorf("a dot file was applied:\n%s", out)
	}

	// -o json for scripts.
	var cfg struct {
		Version int64             `json:"version"`
		Author  string            `json:"author"`
		Rules   map[string]string `json:"rules"`
		Shed    string            `json:"shed"`
	}
	must(t, json.Unmarshal([]byte(env.ok(t, "get", "-o", "json")), &cfg))
	if cfg.Version != 1 || cfg.Author != "alice" || cfg.Rules["api.yaml"] != rulesYAML("api", 10) || cfg.Shed == "" {
		t.Fatalf("get -o json = %+v", cfg)
	}

	// get --out writes files that apply reads back.
	outDir := filepath.Join(t.TempDir(), "cfg")
	out = env.ok(t, "get", "-o", "yaml", "--out", outDir)
	var y map[string]any
	must(t, yaml.Unmarshal([]byte(out), &y))
	if y["version"] != 1 || y["written_to"] != outDir {
		t.Fatalf("get -o yaml = %v", y)
	}
	got, err := os.ReadFile(filepath.Join(outDir, "rules", "team", "login.yaml"))
	if err != nil || string(got) != rulesYAML("login", 5) {
		t.Fatalf("written login.yaml = %q, %v", got, err)
	}
	if _, _, code := env.ctl("get", "--out", outDir); code != 1 {
		t.Fatalf("get --out into a non-empty directory: exit %d, want 1", code)
	}

	// The whole --out directory is not a rule directory: apply says what to give.
	if stderr := env.fails(t, 2, "apply", "-f", outDir, "--reason", "x"); !strings.Contains(stderr, "give -f "+filepath.Join(outDir, "rules")+" --shed ") {
		t.Fatalf("apply -f on a get --out directory: %q", stderr)
	}

	// Edit, diff, apply: the shedding policy is kept when --shed is not given.
	must(t, os.WriteFile(filepath.Join(outDir, "rules", "api.yaml"), []byte(rulesYAML("api", 20)), 0o644))
	out = env.ok(t, "diff", "-f", filepath.Join(outDir, "rules"))
	if !strings.Contains(out, "-      requests_per_unit: 10\n+      requests_per_unit: 20\n") || strings.Contains(out, "shed.yaml") {
		t.Fatalf("diff output:\n%s", out)
	}
	out = env.ok(t, "apply", "-f", filepath.Join(outDir, "rules"), "--reason", "raise api", "--dry-run")
	if !strings.Contains(out, "dry run: version 1 would become version 2; nothing stored") {
		t.Fatalf("dry run output:\n%s", out)
	}
	env.ok(t, "apply", "-f", filepath.Join(outDir, "rules"), "--reason", "raise api")
	if rec, _ := env.store.Get(context.Background()); rec.Version != 2 || string(rec.Bundle.Shed) != ctlPolicy {
		t.Fatalf("stored %+v shed %q; want version 2 with the policy kept", rec.Meta, rec.Bundle.Shed)
	}
	out = env.ok(t, "apply", "-f", filepath.Join(outDir, "rules"), "--reason", "again")
	if !strings.Contains(out, "no change: version 2 already has this content") {
		t.Fatalf("unchanged apply output:\n%s", out)
	}

	// History, rollback, diff between versions.
	var hist []struct {
		Version    int64  `json:"version"`
		Reason     string `json:"reason"`
		RollbackOf int64  `json:"rollback_of"`
	}
	must(t, json.Unmarshal([]byte(env.ok(t, "history", "-o", "json")), &hist))
	if len(hist) != 2 || hist[0].Version != 2 || hist[0].Reason != "raise api" {
		t.Fatalf("history = %+v", hist)
	}
	out = env.ok(t, "rollback", "1", "--reason", "api limit too high")
	if !strings.Contains(out, "applied version 3 by alice") || !strings.Contains(out, "(rollback to version 1)") {
		t.Fatalf("rollback output:\n%s", out)
	}
	if out := env.ok(t, "diff", "--from", "1", "--to", "3"); out != "no differences\n" {
		t.Fatalf("diff v1 v3 = %q", out)
	}
	out = env.ok(t, "history")
	if !strings.Contains(out, "[rollback to 1] api limit too high") {
		t.Fatalf("history table:\n%s", out)
	}
	var d struct {
		Changed bool   `json:"changed"`
		Diff    string `json:"diff"`
	}
	must(t, json.Unmarshal([]byte(env.ok(t, "diff", "--from", "2", "-o", "json")), &d))
	if !d.Changed || !strings.Contains(d.Diff, "+      requests_per_unit: 10") {
		t.Fatalf("diff --from 2 -o json = %+v", d)
	}
}

func TestCtlRacingAppliesExactlyOneWins(t *testing.T) {
	env := startCtlEnv(t)
	dir := t.TempDir()
	writeRules(t, filepath.Join(dir, "a"), 1)
	env.ok(t, "apply", "-f", filepath.Join(dir, "a"), "--reason", "base")
	writeRules(t, filepath.Join(dir, "b"), 2)
	writeRules(t, filepath.Join(dir, "c"), 3)

	type result struct {
		stderr string
		code   int
	}
	results := make([]result, 2)
	var wg sync.WaitGroup
	for i, sub := range []string{"b", "c"} {
		wg.Go(func() {
			_, errOut, code := env.ctl("apply", "-f", filepath.Join(dir, sub), "--expected-version", "1", "--reason", "race "+sub)
			results[i] = result{errOut, code}
		})
	}
	wg.Wait()
	codes := []int{results[0].code, results[1].code}
	if !(codes[0] == 0 && codes[1] == 3) && !(codes[0] == 3 && codes[1] == 0) {
		t.Fatalf("exit codes %v, want one 0 and one 3; stderr: %q %q", codes, results[0].stderr, results[1].stderr)
	}
	loser := results[0]
	if codes[0] == 0 {
		loser = results[1]
	}
	if !strings.Contains(loser.stderr, "conflict") || !strings.Contains(loser.stderr, "the current version is 2") {
		t.Fatalf("loser stderr %q does not name the current version", loser.stderr)
	}
	if rec, _ := env.store.Get(context.Background()); rec.Version != 2 {
		t.Fatalf("stored version %d, want 2", rec.Version)
	}
	// Without --expected-version apply reads the current version first, so
	// a plain retry succeeds.
	env.ok(t, "apply", "-f", filepath.Join(dir, "a"), "--reason", "retry")
}

func TestCtlInvalidRefused(t *testing.T) {
	env := startCtlEnv(t)
	dir := t.TempDir()
	writeRules(t, dir, 1)
	env.ok(t, "apply", "-f", dir, "--reason", "good")
	must(t, os.WriteFile(filepath.Join(dir, "bad.yaml"), []byte("domain: bad\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: fortnight\n      requests_per_unit: 1\n"), 0o644))
	stderr := env.fails(t, 4, "apply", "-f", dir, "--reason", "typo")
	if !strings.Contains(stderr, "refused") || !strings.Contains(stderr, "bad.yaml:5: rate_limit.unit: invalid rate limit unit 'fortnight'") {
		t.Fatalf("stderr %q does not give file:line: reason", stderr)
	}
	env.fails(t, 4, "diff", "-f", dir)
	shed := filepath.Join(t.TempDir(), "shed.yaml")
	must(t, os.WriteFile(shed, []byte("resources:\n  - name: login\n    retry_afterr: 1s\n"), 0o644))
	must(t, os.Remove(filepath.Join(dir, "bad.yaml")))
	if stderr := env.fails(t, 4, "apply", "-f", dir, "--shed", shed, "--reason", "typo"); !strings.Contains(stderr, "shed.yaml:3: resources[0].retry_afterr: unknown key 'retry_afterr'") {
		t.Fatalf("bad policy stderr: %q", stderr)
	}
	if out := env.ok(t, "get"); !strings.Contains(out, "version 1 by alice") {
		t.Fatalf("after refusals get shows:\n%s", out)
	}
}

func TestCtlUsageErrors(t *testing.T) {
	env := startCtlEnv(t)
	for _, args := range [][]string{
		{"apply", "--reason", "x"},
		{"apply", "-f", "somewhere"},
		{"bogus"},
		{"history", "--limit", "abc"},
		{"history", "--nope"},
		{"rollback", "--reason", "x"},
		{"rollback", "zero", "--reason", "x"},
		{"override", "set", "timeline", "--min-priority", "urgent", "--for", "1m", "--reason", "x"},
		{"override", "set", "timeline", "--min-priority", "critical", "--reason", "x"},
		{"override", "clear", "timeline"},
		{"explain", "user=a"},
		{"diff"},
		{"diff", "--to", "2", "-f", "x"},
		{"get", "-o", "xml"},
	} {
		out, stderr, code := env.ctl(args...)
		if code != 2 {
			t.Errorf("levee ctl %s: exit %d, want 2\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, stderr)
		}
	}
	// Nothing was stored.
	if rec, _ := env.store.Get(context.Background()); rec.Version != 0 {
		t.Fatalf("a usage error stored version %d", rec.Version)
	}
}

func TestCtlAuthAndReachability(t *testing.T) {
	env := startCtlEnv(t)
	dir := t.TempDir()
	writeRules(t, dir, 1)
	_, stderr, code := runCtl("--addr", env.addr, "apply", "-f", dir, "--reason", "no token")
	if code != 1 || !strings.Contains(stderr, "not authenticated") {
		t.Fatalf("apply without a token: exit %d, stderr %q", code, stderr)
	}
	wrong := filepath.Join(t.TempDir(), "wrong")
	must(t, os.WriteFile(wrong, []byte("wrong-token-0123456789\n"), 0o600))
	_, stderr, code = runCtl("--addr", env.addr, "--token-file", wrong, "history")
	if code != 1 || !strings.Contains(stderr, "invalid bearer token") {
		t.Fatalf("history with a wrong token: exit %d, stderr %q", code, stderr)
	}
	// Reads on loopback need no token.
	if _, stderr, code := runCtl("--addr", env.addr, "history"); code != 0 {
		t.Fatalf("history without a token on loopback: exit %d, %s", code, stderr)
	}
	// The environment supplies connection flags.
	t.Setenv("LEVEE_ADDR", env.addr)
	t.Setenv("LEVEE_TOKEN_FILE", env.tokenFile)
	if _, stderr, code := runCtl("apply", "-f", dir, "--reason", "from env"); code != 0 {
		t.Fatalf("apply with LEVEE_ADDR and LEVEE_TOKEN_FILE: exit %d, %s", code, stderr)
	}
	t.Setenv("LEVEE_ADDR", "")
	_, stderr, code = runCtl("--addr", "127.0.0.1:1", "--timeout", "2s", "history")
	if code != 1 || !strings.Contains(stderr, "cannot reach the admin API at 127.0.0.1:1") {
		t.Fatalf("unreachable: exit %d, stderr %q", code, stderr)
	}
}

func TestCtlOverrideExpiresByItself(t *testing.T) {
	env := startCtlEnv(t)
	dir := t.TempDir()
	writeRules(t, filepath.Join(dir, "rules"), 1)
	shed := filepath.Join(dir, "shed.yaml")
	must(t, os.WriteFile(shed, []byte(ctlPolicy), 0o644))
	env.ok(t, "apply", "-f", filepath.Join(dir, "rules"), "--shed", shed, "--reason", "policy")

	if stderr := env.fails(t, 4, "override", "set", "timelin", "--min-priority", "critical", "--for", "2s", "--reason", "typo"); !strings.Contains(stderr, `unknown resource "timelin"`) {
		t.Fatalf("unknown resource stderr: %q", stderr)
	}
	out := env.ok(t, "override", "set", "timeline", "--min-priority", "critical", "--for", "2s", "--reason", "drill")
	if !strings.Contains(out, "override set: timeline: critical only until") || !strings.Contains(out, `set by alice: "drill"`) {
		t.Fatalf("override set output:\n%s", out)
	}
	var list []struct {
		Resource    string `json:"resource"`
		MinPriority string `json:"min_priority"`
	}
	must(t, json.Unmarshal([]byte(env.ok(t, "override", "list", "-o", "json")), &list))
	if len(list) != 1 || list[0].Resource != "timeline" || list[0].MinPriority != "critical" {
		t.Fatalf("override list = %+v", list)
	}
	if out := env.ok(t, "status"); !strings.Contains(out, "timeline  critical") {
		t.Fatalf("status does not show the override:\n%s", out)
	}
	shedtest.Eventually(t, 15*time.Second, "the 2 s override gone from the list", func() error {
		must(t, json.Unmarshal([]byte(env.ok(t, "override", "list", "-o", "json")), &list))
		if len(list) != 0 {
			return fmt.Errorf("still listed: %+v", list)
		}
		return nil
	})
	// Clearing it now finds nothing in force.
	_, stderr, code := env.ctl("override", "clear", "timeline", "--reason", "late")
	if code != 1 || !strings.Contains(stderr, `no override on resource "timeline"`) {
		t.Fatalf("override clear after expiry: exit %d, %q", code, stderr)
	}
}

func TestCtlStatusAndExplain(t *testing.T) {
	env := startCtlEnv(t)
	dir := t.TempDir()
	writeRules(t, dir, 7)
	env.ok(t, "apply", "-f", dir, "--reason", "one")
	writeRules(t, dir, 8)
	env.ok(t, "apply", "-f", dir, "--reason", "two")

	out := env.ok(t, "status")
	for _, want := range []string{"stored config version: 2", "node-a*", "v2", "node-b", "v1 (behind)", "0/0/0/0/42", "timeline>=low/32", "no overrides"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	var st struct {
		ConfigVersion int64 `json:"config_version"`
		Members       []struct {
			ID            string  `json:"id"`
			RingShare     float64 `json:"ring_share"`
			ConfigVersion int64   `json:"config_version"`
		} `json:"members"`
	}
	must(t, json.Unmarshal([]byte(env.ok(t, "status", "-o", "json")), &st))
	if st.ConfigVersion != 2 || len(st.Members) != 2 || st.Members[1].ConfigVersion != 1 || st.Members[0].RingShare != 0.5 {
		t.Fatalf("status -o json = %+v", st)
	}

	// A quota bucket id is matched sorted by key, whatever the order given.
	out = env.ok(t, "explain", "--domain", "api", "--bucket-id", "user=alice", "action=post")
	if !strings.Contains(out, "1. action=post") {
		t.Fatalf("explain --bucket-id did not sort the entries by key:\n%s", out)
	}
	out = env.ok(t, "explain", "--domain", "api", "user=alice")
	if !strings.Contains(out, "1. user=alice  default  api.user") || !strings.Contains(out, "=> rule api.user (api.yaml:3): 8 per second") {
		t.Fatalf("explain output:\n%s", out)
	}
	var full struct {
		Rule struct {
			Limits []struct {
				Text string `json:"text"`
			} `json:"limits"`
		} `json:"rule"`
	}
	must(t, json.Unmarshal([]byte(env.ok(t, "explain", "--domain", "api", "-o", "json", "user=alice")), &full))
	if len(full.Rule.Limits) != 1 || full.Rule.Limits[0].Text != "8 per second" {
		t.Fatalf("explain -o json limits = %+v", full.Rule.Limits)
	}
	out = env.ok(t, "explain", "--domain", "api", "--version", "1", "user=alice")
	if !strings.Contains(out, "7 per second") {
		t.Fatalf("explain --version 1:\n%s", out)
	}
	var ex struct {
		Matched bool           `json:"matched"`
		Rule    map[string]any `json:"rule"`
		Summary string         `json:"summary"`
	}
	must(t, json.Unmarshal([]byte(env.ok(t, "explain", "--domain", "api", "-o", "json", "ip=1.2.3.4")), &ex))
	if ex.Matched || ex.Rule != nil || !strings.Contains(ex.Summary, "no descriptor at the top of domain api matches ip=1.2.3.4") {
		t.Fatalf("explain -o json = %+v", ex)
	}
}

func TestCtlExitCode(t *testing.T) {
	if ctlExitCode(nil) != 0 || ctlExitCode(errors.New("x")) != 1 ||
		ctlExitCode(fmt.Errorf("wrapped: %w", &ctlError{code: ctlExitConflict, err: errors.New("c")})) != 3 {
		t.Fatal("ctlExitCode mapping is wrong")
	}
}
