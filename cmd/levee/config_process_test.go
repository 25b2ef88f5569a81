package main

// Process tests of where a node's configuration comes from (issue 13):
// `levee serve` processes built from this package, their embedded etcd or
// one the test runs, driven through Envoy's API, levee.v1 and levee ctl.
// Waits poll until a deadline (procWait) far above what any step needs;
// the times the tests measure are logged (go test -v), not asserted.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/levee-dev/levee/cmd/levee/internal/configstore"
	"github.com/levee-dev/levee/deploy/examples"
	"github.com/levee-dev/levee/limiter/cluster/clustertest"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
	"github.com/levee-dev/levee/shed/shedtest"
)

// procRules is a rule file limiting domain proc, key k, to limit a minute.
func procRules(limit int) string {
	return fmt.Sprintf("domain: proc\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: %d}\n", limit)
}

// ruleDir writes a rule directory holding proc.yaml with limit.
func ruleDir(t *testing.T, limit int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "rules")
	must(t, os.MkdirAll(dir, 0o755))
	writeRuleFile(t, filepath.Join(dir, "proc.yaml"), procRules(limit))
	return dir
}

// nativeLimit asks p, through levee.v1, which limit applies to proc k=x,
// taking nothing.
func (p *proc) nativeLimit() (int64, error) {
	zero := int64(0)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := p.client.Check(ctx, &leveev1.CheckRequest{Items: []*leveev1.CheckItem{{
		Target: &leveev1.CheckItem_Descriptor_{Descriptor_: &leveev1.RuleDescriptor{Domain: "proc", Entries: []*leveev1.Entry{{Key: "k", Value: "x"}}}},
		Hits:   &zero,
	}}})
	if err != nil {
		return 0, fmt.Errorf("%s: Check: %w", p.id, err)
	}
	return resp.GetStatuses()[0].GetLimit(), nil
}

// envoyLimit asks p, through Envoy's API, which limit applies to proc
// k=value (one hit on that value's bucket).
func (p *proc) envoyLimit(value string) (uint32, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := rlsv3.NewRateLimitServiceClient(p.conn).ShouldRateLimit(ctx, &rlsv3.RateLimitRequest{
		Domain:      "proc",
		Descriptors: []*ratelimitv3.RateLimitDescriptor{{Entries: []*ratelimitv3.RateLimitDescriptor_Entry{{Key: "k", Value: value}}}},
	})
	if err != nil {
		return 0, fmt.Errorf("%s: ShouldRateLimit: %w", p.id, err)
	}
	return resp.GetStatuses()[0].GetCurrentLimit().GetRequestsPerUnit(), nil
}

// waitLimit polls p until it enforces limit through levee.v1.
func (p *proc) waitLimit(t *testing.T, limit int64) {
	t.Helper()
	shedtest.Eventually(t, procWait, fmt.Sprintf("%s enforcing %d", p.id, limit), func() error {
		if got, err := p.nativeLimit(); err != nil || got != limit {
			return fmt.Errorf("enforces %d (err %v)", got, err)
		}
		return nil
	})
}

// servingRecord is p's "levee serving" log record.
func (p *proc) servingRecord(t *testing.T) map[string]any {
	t.Helper()
	recs := p.logRecords("levee serving")
	if len(recs) != 1 {
		t.Fatalf("%s logged %d 'levee serving' records", p.id, len(recs))
	}
	return recs[0]
}

// embeddedEtcd are the flags of a process whose embedded etcd listens on
// free ports.
var embeddedEtcd = []string{"--embedded-etcd-client-url", "http://127.0.0.1:0", "--embedded-etcd-peer-url", "http://127.0.0.1:0"}

// TestProcessRestartWithOtherConfig (issue 13, a): in the default mode, a
// node started with --config A, stopped, then started with --config B
// enforces B from its first call, through both APIs. Once with the
// default source (file, as --config is given) and once with etcd as the
// source: a fresh embedded etcd per run keeps nothing from the first.
func TestProcessRestartWithOtherConfig(t *testing.T) {
	bin := buildLevee(t)
	a, b := ruleDir(t, 11), ruleDir(t, 22)
	for _, c := range []struct {
		name   string
		flags  []string
		source string
	}{
		{"default", nil, "file"},
		{"etcd source", []string{"--config-source", "etcd"}, "etcd"},
	} {
		t.Run(c.name, func(t *testing.T) {
			for i, run := range []struct {
				dir   string
				limit int64
			}{{a, 11}, {b, 22}} {
				p := startProc(t, bin, fmt.Sprintf("run%d", i+1), append(append([]string{"--config", run.dir}, embeddedEtcd...), c.flags...)...)
				// The first calls, before anything else.
				el, err := p.envoyLimit("first")
				if err != nil || el != uint32(run.limit) {
					t.Errorf("run %d, --config limit %d: Envoy's first call saw %d (%v)", i+1, run.limit, el, err)
				}
				nl, err := p.nativeLimit()
				if err != nil || nl != run.limit {
					t.Errorf("run %d, --config limit %d: levee.v1's first call saw %d (%v)", i+1, run.limit, nl, err)
				}
				rec := p.servingRecord(t)
				if rec["config_source"] != c.source {
					t.Errorf("run %d: start log says config_source %v, want %s", i+1, rec["config_source"], c.source)
				}
				if p.dataDir == "" {
					t.Fatalf("run %d: no embedded etcd data directory logged", i+1)
				}
				p.stop(t)
				if _, err := os.Stat(p.dataDir); !os.IsNotExist(err) {
					t.Errorf("run %d: the embedded etcd's data %s outlived the node (stat: %v)", i+1, p.dataDir, err)
				}
			}
		})
	}
}

// configWrites counts the writes (puts and deletes) under the cluster's
// config/ prefix from now on, with an etcd watch.
func configWrites(t *testing.T, c *clientv3.Client, prefix string) *atomic.Int64 {
	t.Helper()
	var n atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	wch := c.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	// Count from the moment the watch is in place.
	select {
	case wr := <-wch:
		if !wr.Created {
			t.Fatalf("etcd watch on %s: %v", prefix, wr.Err())
		}
	case <-time.After(procWait):
		t.Fatalf("etcd watch on %s not created", prefix)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for wr := range wch {
			for _, ev := range wr.Events {
				if ev.Type == mvccpb.PUT || ev.Type == mvccpb.DELETE {
					n.Add(1)
				}
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return &n
}

// TestProcessFileModeCluster (issue 13, c): three nodes in file mode
// sharing one etcd, each with its own copy of the rule directory. One
// node's copy changes, the others' a few seconds later, as a ConfigMap
// reaches pods at different times. Every node is polled all along: none
// may ever enforce a limit that no file holds, none may take another's
// change before its own files have it, all converge, and nothing is
// written under config/ in etcd.
//
// The others change lag seconds after the first, not the 10: a
// node polls its files every second, so lag covers a poll and the apply
// several times over, and the window in which the nodes disagree is
// observed by hundreds of checks; 10 s would only make the test longer.
func TestProcessFileModeCluster(t *testing.T) {
	const lag = 3 * time.Second
	bin := buildLevee(t)
	etcd := clustertest.StartEtcd(t)
	client := clustertest.Client(t, etcd.Endpoints())
	writes := configWrites(t, client, configstore.DefaultPrefix+"config/")

	const before, after = 100, 200
	var ps []*proc
	var ruleFiles []string
	for i := range 3 {
		dir := filepath.Join(t.TempDir(), "config")
		must(t, os.MkdirAll(filepath.Join(dir, "rules"), 0o755))
		ruleFiles = append(ruleFiles, filepath.Join(dir, "rules", "proc.yaml"))
		writeRuleFile(t, ruleFiles[i], procRules(before))
		writeRuleFile(t, filepath.Join(dir, "shed.yaml"), string(examples.ShedPolicy))
		flags := []string{"--etcd-endpoints", etcd.Endpoints()[0], "--config", filepath.Join(dir, "rules"), "--shed-policy", filepath.Join(dir, "shed.yaml")}
		if i == 0 {
			flags = append(flags, "--admin-addr", "127.0.0.1:0")
		}
		ps = append(ps, startProc(t, bin, fmt.Sprintf("f%d", i+1), flags...))
	}
	waitMembers(t, 3, ps...)
	for _, p := range ps {
		if src := p.servingRecord(t)["config_source"]; src != "file" {
			t.Fatalf("%s: config_source %v, want file (--config given)", p.id, src)
		}
	}

	// Poll every node's enforced limit until the end.
	type seen struct {
		samples, bad int64
		badValue     int64
		firstNew     time.Time
	}
	var (
		mu    sync.Mutex
		views = make([]seen, len(ps))
		stop  atomic.Bool
		wg    sync.WaitGroup
	)
	for i, p := range ps {
		wg.Go(func() {
			for !stop.Load() {
				l, err := p.nativeLimit()
				now := time.Now()
				mu.Lock()
				v := &views[i]
				switch {
				case err != nil:
					v.bad++
					v.badValue = -1
				case l != before && l != after:
					v.bad++
					v.badValue = l
				case l == after && v.firstNew.IsZero():
					v.firstNew = now
				}
				v.samples++
				mu.Unlock()
				time.Sleep(5 * time.Millisecond) // paces the samplers; nothing is awaited
			}
		})
	}
	defer func() { stop.Store(true); wg.Wait() }()

	time.Sleep(500 * time.Millisecond) // samples of the old rules first; nothing is awaited
	t0 := time.Now()
	writeRuleFile(t, ruleFiles[0], procRules(after))
	ps[0].waitLimit(t, after)
	time.Sleep(lag - time.Since(t0)) // lets the others' lag pass on purpose
	// Until their own files change, the others keep theirs.
	mu.Lock()
	for i := 1; i < len(ps); i++ {
		if !views[i].firstNew.IsZero() {
			t.Errorf("%s enforced %d before its own files held it", ps[i].id, after)
		}
	}
	mu.Unlock()

	// Status meanwhile: two hashes, nobody flagged yet (under two minutes).
	out, stderr, code := runCtl("--addr", ps[0].admin, "status", "-o", "json")
	if code != 0 {
		t.Fatalf("ctl status: exit %d: %s", code, stderr)
	}
	var st struct {
		ConfigSource string `json:"config_source"`
		Members      []struct {
			ID             string     `json:"id"`
			ConfigSource   string     `json:"config_source"`
			ConfigHash     string     `json:"config_hash"`
			ConfigPaths    []string   `json:"config_paths"`
			ConfigDiverged *time.Time `json:"config_diverged_since"`
		} `json:"members"`
	}
	must(t, json.Unmarshal([]byte(out), &st))
	hashes := map[string]int{}
	for _, m := range st.Members {
		hashes[m.ConfigHash]++
		if m.ConfigSource != "file" || len(m.ConfigPaths) != 2 || m.ConfigDiverged != nil {
			t.Errorf("status of %s during the change: %+v", m.ID, m)
		}
	}
	if st.ConfigSource != "file" || len(st.Members) != 3 || len(hashes) != 2 {
		t.Errorf("status during the change: source %q, %d members, hashes %v; want file, 3, two hashes", st.ConfigSource, len(st.Members), hashes)
	}

	t1 := time.Now()
	for _, f := range ruleFiles[1:] {
		writeRuleFile(t, f, procRules(after))
	}
	for _, p := range ps[1:] {
		p.waitLimit(t, after)
	}
	converged := time.Since(t1)
	time.Sleep(300 * time.Millisecond) // a few more samples of the final state
	stop.Store(true)
	wg.Wait()

	mu.Lock()
	for i, v := range views {
		if v.bad != 0 {
			t.Errorf("%s: %d of %d checks saw a limit no file held or failed (last %d)", ps[i].id, v.bad, v.samples, v.badValue)
		}
		if i > 0 && v.firstNew.Before(t1) {
			t.Errorf("%s enforced %d at %v, before its files changed at %v", ps[i].id, after, v.firstNew.Sub(t0), t1.Sub(t0))
		}
	}
	first := views[0].firstNew.Sub(t0)
	var samples int64
	for _, v := range views {
		samples += v.samples
	}
	mu.Unlock()

	// All agree, by hash, on /metrics too.
	var infoHash string
	for _, p := range ps {
		h, err := p.configInfo()
		if err != nil {
			t.Fatal(err)
		}
		if infoHash == "" {
			infoHash = h
		} else if h != infoHash {
			t.Errorf("%s: levee_config_info hash %s, %s has %s", p.id, h, ps[0].id, infoHash)
		}
	}
	files, err := configstore.ReadRules(filepath.Dir(ruleFiles[0]))
	must(t, err)
	if want := (configstore.Bundle{Rules: files, Shed: examples.ShedPolicy}).Hash(); infoHash != want {
		t.Errorf("levee_config_info hash %s, the files hash to %s", infoHash, want)
	}

	// levee ctl apply is refused, naming the files.
	_, stderr, code = runCtl("--addr", ps[0].admin, "apply", "-f", filepath.Dir(ruleFiles[0]), "--reason", "try")
	if code != ctlExitError || !strings.Contains(stderr, "files are authoritative") || !strings.Contains(stderr, filepath.Dir(ruleFiles[0])) {
		t.Errorf("ctl apply in file mode: exit %d, %s", code, stderr)
	}

	// A broken file is refused, with its path and line, and the last
	// good rules keep serving.
	writeRuleFile(t, ruleFiles[2], "domain: proc\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 3}\n")
	shedtest.Eventually(t, procWait, ps[2].id+" reporting the broken file", func() error {
		if len(ps[2].logRecords("rules not reloaded; keeping the last good rules")) == 0 {
			return errors.New("not in its log")
		}
		return nil
	})
	rec := ps[2].logRecords("rules not reloaded; keeping the last good rules")[0]
	if rec["path"] != ruleFiles[2] || rec["line"] != float64(4) {
		t.Errorf("refusal logged as %v", rec)
	}
	if l, err := ps[2].nativeLimit(); err != nil || l != after {
		t.Errorf("%s with a broken file enforces %d (%v), want the last good %d", ps[2].id, l, err, after)
	}

	n := writes.Load()
	t.Logf("first node enforced its change %v after its file changed; the other two %v after theirs (changed %v later); %d checks, none saw a limit no file held",
		first.Round(time.Millisecond), converged.Round(time.Millisecond), lag, samples)
	t.Logf("etcd writes under config/ in file mode: %d", n)
	if n != 0 {
		t.Errorf("%d writes under config/ in file mode, want 0", n)
	}
	for _, p := range ps {
		p.stop(t)
	}
}

// configInfo reads the hash label of p's levee_config_info.
func (p *proc) configInfo() (string, error) {
	body, err := p.metricsText()
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, "levee_config_info{") {
			continue
		}
		_, rest, _ := strings.Cut(line, `hash="`)
		h, _, _ := strings.Cut(rest, `"`)
		return h, nil
	}
	return "", fmt.Errorf("%s: no levee_config_info", p.id)
}

// TestProcessEtcdMode (issue 13, e): with etcd as the source, levee ctl
// apply changes what the node enforces as before; restarted on the same
// --data-dir with its old --config, the node enforces the stored version
// from its first call and says, in one warning line, that its --config
// differs, which levee ctl status shows too.
func TestProcessEtcdMode(t *testing.T) {
	bin := buildLevee(t)
	a, b := ruleDir(t, 31), ruleDir(t, 32)
	data := filepath.Join(t.TempDir(), "etcd")
	flags := append([]string{"--config-source", "etcd", "--config", a, "--data-dir", data, "--admin-addr", "127.0.0.1:0"}, embeddedEtcd...)
	p := startProc(t, bin, "e1", flags...)
	if l, err := p.nativeLimit(); err != nil || l != 31 {
		t.Fatalf("seeded from --config: enforces %d (%v), want 31", l, err)
	}
	if len(p.logRecords("configuration seeded in etcd")) != 1 {
		t.Errorf("no seeding logged:\n%s", p.logText())
	}
	out, stderr, code := runCtl("--addr", p.admin, "apply", "-f", b, "--reason", "raise")
	if code != 0 || !strings.Contains(out, "applied version 2") {
		t.Fatalf("ctl apply: exit %d\n%s\n%s", code, out, stderr)
	}
	p.waitLimit(t, 32)
	if len(p.logRecords("the files given differ from the stored configuration, which this node enforces (config source etcd): apply them with levee ctl apply, or run with --config-source file")) != 0 {
		t.Error("the warning was logged on the first run, whose --config seeded the store")
	}
	p.stop(t)

	p = startProc(t, bin, "e1", flags...)
	if l, err := p.nativeLimit(); err != nil || l != 32 {
		t.Errorf("restarted on the same data: first call enforces %d (%v), want the stored 32", l, err)
	}
	if el, err := p.envoyLimit("first"); err != nil || el != 32 {
		t.Errorf("restarted on the same data: Envoy sees %d (%v), want the stored 32", el, err)
	}
	warns := p.logRecords("the files given differ from the stored configuration, which this node enforces (config source etcd): apply them with levee ctl apply, or run with --config-source file")
	aFiles, err := configstore.ReadRules(a)
	must(t, err)
	bFiles, err := configstore.ReadRules(b)
	must(t, err)
	aHash := configstore.Bundle{Rules: aFiles, Shed: examples.ShedPolicy}.Hash()
	bHash := configstore.Bundle{Rules: bFiles, Shed: examples.ShedPolicy}.Hash() // ctl apply -f keeps the stored policy
	if len(warns) != 1 {
		t.Fatalf("%d warning lines about --config, want 1:\n%s", len(warns), p.logText())
	}
	w := warns[0]
	if w["level"] != "WARN" || w["config"] != a || w["files_hash"] != aHash || w["stored_version"] != float64(2) || w["stored_hash"] != bHash {
		t.Errorf("warning line %v; want config %s, files_hash %s, stored_version 2, stored_hash %s", w, a, aHash, bHash)
	}
	out, stderr, code = runCtl("--addr", p.admin, "status")
	if code != 0 || !strings.Contains(out, "v2 (warning)") || !strings.Contains(out, "warning: e1: --config "+a+" (hash "+aHash+") differs from the stored version 2 (hash "+bHash+")") {
		t.Errorf("ctl status: exit %d\n%s\n%s", code, out, stderr)
	}
	p.stop(t)
}

// TestProcessCurrentKeyDeletedNoReseed: with the current-version key
// deleted, or holding a malformed value, a node starting with other files
// must not seed them: it serves the newest stored version, like the
// running nodes, says the key is gone or unreadable, and a rollback
// repairs it.
func TestProcessCurrentKeyDeletedNoReseed(t *testing.T) {
	bin := buildLevee(t)
	flags1 := append([]string{"--config-source", "etcd", "--config", ruleDir(t, 500), "--admin-addr", "127.0.0.1:0"}, embeddedEtcd...)
	p1 := startProc(t, bin, "d1", flags1...)
	out, stderr, code := runCtl("--addr", p1.admin, "apply", "-f", ruleDir(t, 501), "--reason", "tune")
	if code != 0 {
		t.Fatalf("ctl apply: exit %d\n%s\n%s", code, out, stderr)
	}
	p1.waitLimit(t, 501)

	c := clustertest.Client(t, []string{p1.etcd})
	current := configstore.DefaultPrefix + "config/current"
	if _, err := c.Delete(context.Background(), current); err != nil {
		t.Fatal(err)
	}
	p2 := startProc(t, bin, "d2", "--config-source", "etcd", "--config", ruleDir(t, 7), "--etcd-endpoints", p1.etcd)
	waitMembers(t, 2, p1, p2)
	for _, p := range []*proc{p2, p1} {
		if l, err := p.nativeLimit(); err != nil || l != 501 {
			t.Errorf("%s enforces %d (%v) after the current key was deleted and d2 started with 7; want 501", p.id, l, err)
		}
	}
	if resp, err := c.Get(context.Background(), current); err != nil || len(resp.Kvs) != 0 {
		t.Errorf("current key after d2 started: %v, %v; want still missing (no seeding)", resp, err)
	}
	if resp, err := c.Get(context.Background(), configstore.DefaultPrefix+"config/history/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || resp.Count != 2 {
		t.Errorf("history after d2 started: %v, %v; want the 2 versions", resp, err)
	}
	if len(p2.logRecords("configuration store damaged: the current-version key is missing; serving version 2, the newest in the history that loads; nothing was seeded; repair with levee ctl rollback 2 (or levee ctl apply)")) != 1 {
		t.Errorf("d2 did not log the missing current key:\n%s", p2.logText())
	}
	out, _, _ = runCtl("--addr", p1.admin, "status")
	if !strings.Contains(out, "warning: d2: the current-version key is missing") {
		t.Errorf("ctl status does not show d2's warning:\n%s", out)
	}

	// A malformed current value is damage too, not an empty store.
	if _, err := c.Put(context.Background(), current, "{garbage"); err != nil {
		t.Fatal(err)
	}
	p3 := startProc(t, bin, "d3", "--config-source", "etcd", "--config", ruleDir(t, 8), "--etcd-endpoints", p1.etcd)
	waitMembers(t, 3, p1, p2, p3)
	if l, err := p3.nativeLimit(); err != nil || l != 501 {
		t.Errorf("d3 enforces %d (%v) with the current key malformed; want 501", l, err)
	}
	if resp, err := c.Get(context.Background(), current); err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "{garbage" {
		t.Errorf("current key after d3 started: %v, %v; want the malformed value left alone", resp, err)
	}
	if !strings.Contains(p3.logText(), "configuration store damaged: the current-version key is unreadable") {
		t.Errorf("d3 did not log the malformed current key:\n%s", p3.logText())
	}

	out, stderr, code = runCtl("--addr", p1.admin, "rollback", "2", "--reason", "restore the current key")
	if code != 0 || !strings.Contains(out, "applied version 3") {
		t.Fatalf("ctl rollback: exit %d\n%s\n%s", code, out, stderr)
	}
	shedtest.Eventually(t, procWait, "status after the rollback", func() error {
		out, _, _ = runCtl("--addr", p1.admin, "status")
		// Their --config still differs from what is stored, and they
		// say so; the missing key is no longer reported.
		if strings.Count(out, "v3 (warning)") != 3 || strings.Contains(out, "current-version key") {
			return fmt.Errorf("status is\n%s", out)
		}
		return nil
	})
	for _, p := range []*proc{p3, p2, p1} {
		if l, err := p.nativeLimit(); err != nil || l != 501 {
			t.Errorf("%s enforces %d (%v) after the rollback; want 501", p.id, l, err)
		}
	}
	p3.stop(t)
	p2.stop(t)
	p1.stop(t)
}

// metricsText is p's /metrics page.
func (p *proc) metricsText() (string, error) {
	resp, err := http.Get("http://" + p.metrics + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}
