package main

// Process tests of the rate limit quota service (issue 15): three `levee
// serve` processes sharing one rule directory and the embedded etcd of the
// first, driven by quotasim's simulated Envoys at small scale (a few
// Envoys, a report every second instead of Envoy's fixed 5 s, seconds of
// run), checked against the simulation's own max-min model.
//
// They hold levee to ciBounds, not to the acceptance bounds
// (quotasim.IssueBounds), which deploy/quota-results/run.sh judges at
// Envoy's 5 s reports: a 5 s phase of 1 s reports measures an Envoy's
// demand from a handful of Poisson counts, and the node's 1 s sync with
// the owners is not compressed with the reports, so the issue's ±5 %, 98 %
// and two-interval bounds sit inside this test's own noise (seen: totals
// 0.96-1.00 L, least share 0.93-0.985, settle 2.9-3.9 s, in one quiet
// sitting). ciBounds still fail the server before Envoy's full-bucket
// resets were handled (1.13-1.39 L).

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/levee-dev/levee/cmd/levee/internal/quotasim"
)

// ciBounds: see the file's comment. Settled assignments are judged within 20% of
// the limit of the fair shares, not 10%: at 1 s reports the demands the
// fair shares are computed from move by several percent every second.
var ciBounds = quotasim.Bounds{Total: 0.10, Below: 0.90, Settle: 6, Near: 0.20}

// quotaLimit is the global limit of the bucket the fleet shares: large
// enough that a token is well under 2% of an Envoy's share, as it is at
// Envoy scale (a change of one token is then not a reassignment).
const quotaLimit = 2000

// startQuotaCluster starts three nodes enforcing a rule file that gives
// the bucket {name: quota-sim} of domain quota-sim a global limit of
// quotaLimit a second. p1 carries the etcd.
func startQuotaCluster(t *testing.T) []*proc {
	t.Helper()
	bin := buildLevee(t)
	dir := t.TempDir()
	writeRuleFile(t, filepath.Join(dir, "quota.yaml"), fmt.Sprintf(`domain: quota-sim
descriptors:
  - key: name
    value: quota-sim
    rate_limit:
      unit: second
      requests_per_unit: %d
`, quotaLimit))
	p1 := startProc(t, bin, "q1", append([]string{"--config", dir, "--data-dir", filepath.Join(t.TempDir(), "etcd")}, embeddedEtcd...)...)
	if p1.etcd == "" {
		t.Fatalf("q1 did not log its embedded etcd's address\n%s", p1.logText())
	}
	p2 := startProc(t, bin, "q2", "--config", dir, "--etcd-endpoints", p1.etcd)
	p3 := startProc(t, bin, "q3", "--config", dir, "--etcd-endpoints", p1.etcd)
	ps := []*proc{p1, p2, p3}
	waitMembers(t, 3, ps...)
	return ps
}

func quotaOptions(ps []*proc) quotasim.Options {
	o := quotasim.Options{
		Envoys: 8, Limit: quotaLimit, Demand: 3, Zipf: 1.5,
		ReportInterval: time.Second, Seed: 15, Bounds: ciBounds,
		// Envoys stay in check while they wait for their first assignment.
		Settings: quotasim.Settings{NoAssignment: quotasim.DenyAll},
	}
	for _, p := range ps {
		o.Nodes = append(o.Nodes, p.grpc)
	}
	return o
}

func logResult(t *testing.T, res *quotasim.Result) {
	t.Helper()
	var b strings.Builder
	_ = res.Write(&b)
	if t.Failed() || testing.Verbose() {
		b.WriteString("\nassignments:\n")
		_ = res.WriteTimeline(&b)
	}
	t.Log("\n" + b.String())
}

// requireChecks fails the test on every check of the simulation's report
// that failed.
func requireChecks(t *testing.T, res *quotasim.Result) {
	t.Helper()
	for _, c := range res.Checks() {
		if !c.Passed {
			t.Errorf("%s: %s, bound %s", c.Name, c.Value, c.Bound)
		}
	}
}

// TestProcessQuotaFleet: eight Envoys over three nodes, Zipf demand of 3× the
// limit, then a step down to 1.5×: in each phase (after two report
// intervals) the total admitted is within ciBounds of the limit, every
// Envoy under the fair-share level gets ciBounds' share of its fair share,
// the assignments settle within ciBounds' report intervals of the step,
// and nothing a real Envoy would trip over is sent.
func TestProcessQuotaFleet(t *testing.T) {
	ps := startQuotaCluster(t)
	o := quotaOptions(ps)
	o.Duration = 14 * time.Second
	o.Steps = []quotasim.Step{{At: 7 * time.Second, Demand: 1.5}}
	res, err := quotasim.Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	logResult(t, res)
	requireChecks(t, res)
	if len(res.Phases) != 2 || !res.Phases[1].Stepped {
		t.Fatalf("phases %+v: want two, the second after the step", res.Phases)
	}
	if res.Phases[0].Below == 0 {
		t.Errorf("no Envoy under the fair-share level in the first phase: the demand does not test fairness")
	}
	for _, p := range ps {
		p.stop(t)
	}
}

// TestProcessQuotaFleetKill: the node some Envoys stream to is killed with
// SIGKILL mid-run. They reopen their streams on another node and get
// assignments there, the total admitted stays within ciBounds of the limit, and
// no Envoy is left on an assignment past its TTL.
func TestProcessQuotaFleetKill(t *testing.T) {
	ps := startQuotaCluster(t)
	o := quotaOptions(ps)
	o.Duration = 12 * time.Second
	// q3 holds no etcd: Envoys 2 and 5 stream to it.
	killed := make(chan struct{})
	go func() {
		defer close(killed)
		time.Sleep(5 * time.Second)
		ps[2].signal(t, syscall.SIGKILL)
	}()
	res, err := quotasim.Run(context.Background(), o)
	<-killed
	if err != nil {
		t.Fatal(err)
	}
	logResult(t, res)
	requireChecks(t, res)
	moved := map[int]bool{}
	for _, rc := range res.Reconnects {
		if rc.From == ps[2].grpc && rc.To != "" && rc.To != ps[2].grpc {
			moved[rc.Envoy] = true
		}
	}
	if !moved[2] || !moved[5] {
		t.Errorf("reconnects %+v: want Envoys 2 and 5 moved off the killed node", res.Reconnects)
	}
	ps[1].stop(t)
	ps[0].stop(t)
}
