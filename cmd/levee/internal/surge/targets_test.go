package surge

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/levee-dev/levee/shed"
)

// The synthetic results below are built on C = 200/s at scale 1, so every
// steady window and per-second bin holds enough calls.
const synthC = 200

// synthRun returns a run of policy p over sc's schedule in which every call
// is answered OK after lat in one attempt, and the backend, polled every
// 100 ms, admits every level with 30 goroutines and 8 MiB of heap.
func synthRun(sc *Scenario, p Policy, lat time.Duration) *PolicyRun {
	r := &PolicyRun{Policy: p, arrivals: schedule(sc, synthC, time.Millisecond, 1)}
	r.calls = make([]callResult, len(r.arrivals))
	for i, a := range r.arrivals {
		r.calls[i] = callResult{sent: a.at, end: a.at + lat, attempts: 1, out: outOK}
	}
	for at := time.Duration(0); at < sc.Duration(); at += 100 * time.Millisecond {
		r.stats = append(r.stats, statSample{at: at, BackendStats: BackendStats{Goroutines: 30, HeapBytes: 8 << 20}})
	}
	return r
}

// passing returns a result of the named scenario that meets every target:
// levee answers everything in 1 ms, no shedding in 20 ms; the sidecar's
// round trips take 0.5 ms and a refusal 100 ns without allocating.
func passing(t *testing.T, name string) *ScenarioResult {
	t.Helper()
	sc, err := NewScenario(name, 1)
	if err != nil {
		t.Fatal(err)
	}
	res := &ScenarioResult{Scenario: sc, C: synthC, Runs: []*PolicyRun{
		synthRun(sc, PolicyNone, 20*time.Millisecond),
		synthRun(sc, PolicyLevee, time.Millisecond),
	}}
	if sc.Sidecar {
		lv := res.Run(PolicyLevee)
		for i := range lv.sidecar {
			lv.sidecar[i] = slices.Repeat([]time.Duration{500 * time.Microsecond}, 200)
		}
	}
	if sc.Bench {
		res.Bench = &BenchResult{RefuseNs: 100, TapNs: 300}
	}
	return res
}

// calls applies f to levee's calls of priority prio (or allPriorities)
// scheduled in [from, to).
func calls(res *ScenarioResult, from, to time.Duration, prio int, f func(*callResult)) {
	lv := res.Run(PolicyLevee)
	for i, a := range lv.arrivals {
		if a.at >= from && a.at < to && (prio == allPriorities || int(a.prio) == prio) {
			f(&lv.calls[i])
		}
	}
}

// samples applies f to levee's stats samples taken in [from, to).
func samples(res *ScenarioResult, from, to time.Duration, f func(*BackendStats)) {
	lv := res.Run(PolicyLevee)
	for i := range lv.stats {
		if s := &lv.stats[i]; s.at >= from && s.at < to {
			f(&s.BackendStats)
		}
	}
}

func refuse(c *callResult) { c.out = outRefused }

// spoils breaks each target, and only it, in a passing result: the key is
// the start of the target's description.
var spoils = map[string]func(*ScenarioResult){
	"critical success during the flood": func(res *ScenarioResult) {
		fs, fe := phaseRange(res.Scenario, 1)
		n := 0
		calls(res, fs, fe, 0, func(c *callResult) {
			if n++; n%50 == 0 { // 2% time out
				c.out = outTimeout
			}
		})
	},
	"critical requests refused by levee": func(res *ScenarioResult) {
		lv := res.Run(PolicyLevee)
		lv.stats[len(lv.stats)-1].Refused[0] = 1
	},
	"critical p99 during the flood": func(res *ScenarioResult) {
		fs, fe := phaseRange(res.Scenario, 1)
		calls(res, fs, fe, 0, func(c *callResult) { c.end = c.sent + 2*time.Millisecond })
	},
	"total goodput during the flood": func(res *ScenarioResult) {
		fs, fe := phaseRange(res.Scenario, 1)
		calls(res, fs, fe, 4, refuse) // 0.5C of critical calls is all that is left
	},
	"goodput at 6C": func(res *ScenarioResult) {
		from, to := phaseRange(res.Scenario, len(res.Scenario.Phases)-1)
		calls(res, from, to, 3, refuse) // low and sheddable: 3C left of a 4C peak
		calls(res, from, to, 4, refuse)
	},
	"priorities shed in strict order": func(res *ScenarioResult) {
		from, _ := phaseRange(res.Scenario, 2)
		n := 0
		calls(res, from+2*time.Second, from+3*time.Second, 1, func(c *callResult) {
			if n++; n == 1 {
				c.out = outTimeout // one high call lost while default, low and sheddable were admitted
				c.end = c.sent + 100*time.Millisecond
			}
		})
	},
	"admitted calls' p99": func(res *ScenarioResult) {
		from, _ := phaseRange(res.Scenario, 3)
		calls(res, from+time.Second, from+2*time.Second, 4, func(c *callResult) { c.end = c.sent + 60*time.Millisecond })
	},
	"goroutines flat": func(res *ScenarioResult) {
		from, to := steady(res.Scenario, len(res.Scenario.Phases)-1)
		samples(res, from, to, func(s *BackendStats) { s.Goroutines = 2*30 + 21 })
	},
	"heap flat": func(res *ScenarioResult) {
		from, to := steady(res.Scenario, len(res.Scenario.Phases)-1)
		samples(res, from, to, func(s *BackendStats) { s.HeapBytes = 2*(8<<20) + 4<<20 + 1 })
	},
	"threshold settles within 2 s": func(res *ScenarioResult) {
		hs, _ := phaseRange(res.Scenario, highPhases(res.Scenario)[0])
		samples(res, hs, hs+3*time.Second, func(s *BackendStats) { s.Threshold = shed.NumLevels })
	},
	"acceptance converges within 2 s": func(res *ScenarioResult) {
		hs, _ := phaseRange(res.Scenario, highPhases(res.Scenario)[0])
		calls(res, hs, hs+3*time.Second, allPriorities, func(c *callResult) { c.end = c.sent + 60*time.Millisecond })
	},
	"goodput never below 0.8C": func(res *ScenarioResult) {
		// After the acceptance has converged and before the last 3 s its
		// final value is read from.
		hs, _ := phaseRange(res.Scenario, highPhases(res.Scenario)[1])
		calls(res, hs+4*time.Second, hs+5500*time.Millisecond, allPriorities, refuse)
	},
	"retry amplification": func(res *ScenarioResult) {
		calls(res, 0, res.Scenario.Duration(), allPriorities, func(c *callResult) { c.attempts = 2 })
	},
	"p99 (calls answered OK": func(res *ScenarioResult) {
		calls(res, 0, res.Scenario.Duration(), allPriorities, func(c *callResult) { c.end = c.sent + 15*time.Millisecond })
	},
	"zero refusals": func(res *ScenarioResult) {
		n := 0
		calls(res, 0, res.Scenario.Duration(), allPriorities, func(c *callResult) {
			if n++; n == 1 {
				refuse(c)
			}
		})
	},
	"sidecar Admit and Release": func(res *ScenarioResult) {
		lv := res.Run(PolicyLevee)
		lv.sidecar[1] = slices.Repeat([]time.Duration{1500 * time.Microsecond}, 200)
	},
	"a refusal costs":     func(res *ScenarioResult) { res.Bench.RefuseNs = 250 },
	"a refusal allocates": func(res *ScenarioResult) { res.Bench.RefuseAllocs = 1 },
}

func spoilFor(t *testing.T, desc string) func(*ScenarioResult) {
	t.Helper()
	var found []string
	for k := range spoils {
		if strings.HasPrefix(desc, k) {
			found = append(found, k)
		}
	}
	if len(found) != 1 {
		t.Fatalf("target %q: spoils %q match it; want exactly one", desc, found)
	}
	return spoils[found[0]]
}

func TestTargetTable(t *testing.T) {
	seen := map[string]bool{}
	for _, tg := range targets {
		if !slices.Contains(ScenarioNames, tg.scenario) {
			t.Errorf("target %q: unknown scenario %q", tg.desc, tg.scenario)
		}
		if tg.desc == "" || tg.metric == nil || (tg.cmp != atMost && tg.cmp != atLeast) {
			t.Errorf("target %+v: want a description, a metric and a comparison", tg)
		}
		if seen[tg.desc] {
			t.Errorf("target %q listed twice", tg.desc)
		}
		seen[tg.desc] = true
	}
	for _, b := range baselines {
		if !slices.Contains(ScenarioNames, b.scenario) || b.desc == "" || b.figure == nil {
			t.Errorf("baseline %+v: want a known scenario, a description and a figure", b)
		}
	}
	for k := range spoils {
		n := 0
		for _, tg := range targets {
			if strings.HasPrefix(tg.desc, k) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("spoil %q matches %d targets, want 1", k, n)
		}
	}
}

// TestTargetBounds: a reading exactly at the bound passes, one just
// beyond it fails, for absolute and relative bounds alike.
func TestTargetBounds(t *testing.T) {
	for _, tc := range []struct {
		cmp         comparison
		bound, ref  float64
		value, over float64
	}{
		{atMost, 1.5, 2, 3, 3.001},
		{atMost, 0, 1, 0, 1},
		{atMost, 0.5, 0, 0, 1}, // a zero reference admits only zero
		{atLeast, 0.9, 200, 180, 179.9},
		{atLeast, 0.999, 1, 0.999, 0.998},
	} {
		tg := target{cmp: tc.cmp, bound: tc.bound}
		if !tg.pass(reading{value: tc.value, ref: tc.ref}) {
			t.Errorf("%+v: value %v at the bound fails", tc, tc.value)
		}
		if tg.pass(reading{value: tc.over, ref: tc.ref}) {
			t.Errorf("%+v: value %v beyond the bound passes", tc, tc.over)
		}
	}
}

// TestTargetsPassAndFail runs every scenario's targets over a synthetic
// result that meets them all, then over copies that each break one.
func TestTargetsPassAndFail(t *testing.T) {
	for _, name := range ScenarioNames {
		t.Run(name, func(t *testing.T) {
			var want []string
			for _, tg := range targets {
				if tg.scenario == name {
					want = append(want, tg.desc)
				}
			}
			if len(want) == 0 {
				t.Fatal("no targets")
			}
			got := checks(passing(t, name))
			var measured []string
			baselineRows := 0
			for _, ch := range got {
				if ch.Info {
					baselineRows++
					if !strings.HasPrefix(ch.Target, "baseline none: ") || ch.Measured == "" {
						t.Errorf("baseline row %+v: want policy none and a figure", ch)
					}
					continue
				}
				measured = append(measured, ch.Target)
				if !ch.Pass || ch.Measured == "" {
					t.Errorf("passing result: %q %s (measured %q)", ch.Target, verdict(ch.Pass), ch.Measured)
				}
			}
			if !slices.Equal(measured, want) {
				t.Errorf("targets reported %q, want %q in table order", measured, want)
			}
			if baselineRows == 0 {
				t.Error("no baseline rows for the no-shedding run")
			}
			for _, desc := range want {
				res := passing(t, name)
				spoilFor(t, desc)(res)
				for _, ch := range checks(res) {
					if ch.Info {
						continue
					}
					if failed := !ch.Pass; failed != (ch.Target == desc) {
						t.Errorf("spoiling %q: %q %s (measured %q)", desc, ch.Target, verdict(ch.Pass), ch.Measured)
					}
				}
			}
		})
	}
}

// TestTargetsNeedLevee: without levee's run there is nothing to hold to a
// target; the other policies' figures are still shown.
func TestTargetsNeedLevee(t *testing.T) {
	for _, name := range ScenarioNames {
		res := passing(t, name)
		res.Runs = res.Runs[:1] // no shedding only
		res.Bench = nil
		got := checks(res)
		if len(got) == 0 {
			t.Errorf("%s: no rows", name)
		}
		for _, ch := range got {
			if !ch.Info {
				t.Errorf("%s: target %q reported without a levee run", name, ch.Target)
			}
		}
	}
}

// TestOrderExcusesTheMove: a call lost in an interval in which levee's
// threshold moved is the move's (what was in flight when it moved), not a
// violation of strict order; the same loss with the threshold standing
// still is one.
func TestOrderExcusesTheMove(t *testing.T) {
	res := passing(t, "ramp")
	from, _ := phaseRange(res.Scenario, 2)
	at := from + 2*time.Second + 50*time.Millisecond
	n := 0
	calls(res, at, at+10*time.Millisecond, 0, func(c *callResult) {
		if n++; n == 1 {
			c.out = outTimeout
		}
	})
	if n == 0 {
		t.Fatal("no critical call to lose")
	}
	if v := orderViolations(res.Scenario, res.Run(PolicyLevee)); len(v) != 1 {
		t.Fatalf("a critical call lost with the threshold standing still: %q, want one violation", v)
	}
	samples(res, at, at+time.Second, func(s *BackendStats) { s.Threshold = 5 })
	if v := orderViolations(res.Scenario, res.Run(PolicyLevee)); len(v) != 0 {
		t.Fatalf("a critical call lost as the threshold moved: %q, want none", v)
	}
}

// TestCSVCarriesCapacity: each second's row carries the capacity levee
// last reported measuring, carried into seconds no poll landed in, so a
// run's target can be read against the harness's C.
func TestCSVCarriesCapacity(t *testing.T) {
	res := passing(t, "step")
	samples(res, 0, 5*time.Second, func(s *BackendStats) { s.Capacity = 0 })
	samples(res, 5*time.Second, res.Scenario.Duration(), func(s *BackendStats) { s.Capacity = 812.4 })
	lv := res.Run(PolicyLevee)
	// No poll lands in second 9: it keeps second 8's figure.
	lv.stats = slices.DeleteFunc(lv.stats, func(s statSample) bool { return s.at >= 9*time.Second && s.at < 10*time.Second })
	var b strings.Builder
	if err := res.WriteCSV(&b); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(b.String(), "\n")
	if !strings.HasSuffix(lines[0], ",moves,capacity") {
		t.Fatalf("header %q, want it to end in the capacity column", lines[0])
	}
	want := map[string]string{"2": "0", "6": "812", "9": "812"}
	for _, l := range lines[1:] {
		f := strings.Split(l, ",")
		if len(f) < 21 || f[1] != PolicyLevee.String() || f[4] != "all" {
			continue
		}
		if w, ok := want[f[2]]; ok {
			if f[20] != w {
				t.Errorf("second %s: capacity %q, want %q", f[2], f[20], w)
			}
			delete(want, f[2])
		}
	}
	if len(want) > 0 {
		t.Errorf("no levee rows for seconds %v", want)
	}
}
