package surge

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/levee-dev/levee/shed"
)

// Check is one row of a scenario's targets table: a target with levee's
// measured figure, or (Info) a baseline's figure shown beside them.
type Check struct {
	Target   string
	Measured string
	Pass     bool
	Info     bool
}

// comparison is how a target holds its metric's value against its bound.
type comparison uint8

const (
	atMost  comparison = iota + 1 // value ≤ bound × ref
	atLeast                       // value ≥ bound × ref
)

// reading is what a target's metric found in a scenario's result.
type reading struct {
	// value is held against the target's bound times ref: ref is what
	// the bound is a multiple of (C, the peak, an unloaded p99), 1 for
	// an absolute bound.
	value, ref float64
	// shown is the measured column of the report: the value and the
	// figures that explain it.
	shown string
}

func absolute(value float64, format string, args ...any) reading {
	return reading{value: value, ref: 1, shown: fmt.Sprintf(format, args...)}
}

func relative(value, ref float64, format string, args ...any) reading {
	return reading{value: value, ref: ref, shown: fmt.Sprintf(format, args...)}
}

// target is one pass/fail criterion of a scenario: the result passes when
// metric's value compares with bound (times the reading's ref) as cmp says.
// desc is the target as the report states it.
type target struct {
	scenario string
	desc     string
	metric   func(*ScenarioResult) (reading, bool) // false: the run cannot measure it (no levee run, no probe)
	cmp      comparison
	bound    float64
}

func (t target) pass(r reading) bool {
	limit := t.bound * r.ref
	switch t.cmp {
	case atMost:
		return r.value <= limit
	case atLeast:
		return r.value >= limit
	}
	return false
}

// baseline is a figure of every policy but levee's, shown beside a
// scenario's targets for comparison; it passes or fails nothing.
type baseline struct {
	scenario string
	desc     string
	figure   func(res *ScenarioResult, r *PolicyRun) string
}

// checks evaluates the targets and baselines of res's scenario, in table
// order: the targets first, then the baselines for each other policy.
func checks(res *ScenarioResult) []Check {
	var out []Check
	for _, t := range targets {
		if t.scenario != res.Scenario.Name {
			continue
		}
		if r, ok := t.metric(res); ok {
			out = append(out, Check{Target: t.desc, Measured: r.shown, Pass: t.pass(r)})
		}
	}
	for _, b := range baselines {
		if b.scenario != res.Scenario.Name {
			continue
		}
		for _, r := range res.Runs {
			if r.Policy != PolicyLevee {
				out = append(out, Check{Target: fmt.Sprintf("baseline %s: %s", r.Policy, b.desc), Measured: b.figure(res, r), Info: true})
			}
		}
	}
	return out
}

// The targets levee's run of each scenario is held to.
var targets = []target{
	// flood: critical 0.5C throughout, sheddable 0.25C then 3C.
	{
		scenario: "flood", desc: "critical success during the flood ≥ 99.9%", cmp: atLeast, bound: 0.999,
		metric: ofLevee(func(res *ScenarioResult, lv *PolicyRun) reading {
			fs, fe := phaseRange(res.Scenario, 1)
			crit := lv.Agg(fs, fe, 0)
			return absolute(crit.Success(), "%s (%d of %d)", pct(crit.Success()), crit.OK, crit.Offered)
		}),
	},
	{
		scenario: "flood", desc: "critical requests refused by levee = 0", cmp: atMost, bound: 0,
		metric: ofLevee(func(res *ScenarioResult, lv *PolicyRun) reading {
			fs, fe := phaseRange(res.Scenario, 1)
			n := max(lv.serverRefused(0), uint64(lv.Agg(fs, fe, 0).Refused))
			if n == 0 || len(lv.stats) == 0 {
				return absolute(float64(n), "%d", n)
			}
			var by []string
			for reason, k := range lv.stats[len(lv.stats)-1].CriticalBy {
				if k > 0 {
					by = append(by, fmt.Sprintf("%s %d", shed.Reason(reason), k))
				}
			}
			return absolute(float64(n), "%d (%s)", n, strings.Join(by, ", "))
		}),
	},
	{
		scenario: "flood", desc: "critical p99 during the flood ≤ 1.5× its unloaded p99", cmp: atMost, bound: 1.5,
		metric: ofLevee(func(res *ScenarioResult, lv *PolicyRun) reading {
			fs, fe := phaseRange(res.Scenario, 1)
			bs, be := phaseRange(res.Scenario, 0)
			bs += min(time.Second, (be-bs)/4)
			crit, unloaded := lv.Agg(fs, fe, 0).P99, lv.Agg(bs, be, 0).P99
			return relative(float64(crit), float64(unloaded), "%s vs %s before the flood (%.2f×)",
				ms(crit), ms(unloaded), ratio(crit, unloaded))
		}),
	},
	{
		scenario: "flood", desc: "total goodput during the flood ≥ 0.9C", cmp: atLeast, bound: 0.9,
		metric: ofLevee(func(res *ScenarioResult, lv *PolicyRun) reading {
			fs, fe := phaseRange(res.Scenario, 1)
			g := lv.Agg(fs, fe, allPriorities).Goodput()
			return relative(g, res.C, "%.0f/s = %.2fC", g, g/res.C)
		}),
	},

	// ramp: four priorities at 25% each, 0.5C to 6C in steps.
	{
		scenario: "ramp", desc: "goodput at 6C ≥ 0.95 × peak", cmp: atLeast, bound: 0.95,
		metric: ofLevee(func(res *ScenarioResult, lv *PolicyRun) reading {
			var gp []float64
			for i := range res.Scenario.Phases {
				from, to := steady(res.Scenario, i)
				gp = append(gp, lv.Agg(from, to, allPriorities).Goodput())
			}
			peak, last := slices.Max(gp), gp[len(gp)-1]
			return relative(last, peak, "%.0f/s vs peak %.0f/s (%.2f×); by step %s", last, peak, last/peak, joinRates(gp, res.C))
		}),
	},
	{
		scenario: "ramp", desc: "priorities shed in strict order (from the second second of each step, between two moves of the threshold: a priority loses no call while a less important one has calls admitted)", cmp: atMost, bound: 0,
		metric: ofLevee(func(res *ScenarioResult, lv *PolicyRun) reading {
			viol := orderViolations(res.Scenario, lv)
			return absolute(float64(len(viol)), "%s", orNone(viol))
		}),
	},
	{
		scenario: "ramp", desc: "admitted calls' p99 ≤ 50 ms from the second second of each step (all calls not refused, timed-out ones included)", cmp: atMost, bound: float64(50 * time.Millisecond),
		metric: ofLevee(func(res *ScenarioResult, lv *PolicyRun) reading {
			var worst time.Duration
			var each []string
			for i := range res.Scenario.Phases {
				from, to := phaseRange(res.Scenario, i)
				p99 := lv.admittedP99(min(from+time.Second, to), to)
				worst = max(worst, p99)
				each = append(each, ms(p99))
			}
			return absolute(float64(worst), "worst %s (steps: %s)", ms(worst), strings.Join(each, ", "))
		}),
	},
	{
		scenario: "ramp", desc: "goroutines flat (each step's steady max ≤ 2× the 1C step's + 20)", cmp: atMost, bound: 20,
		metric: ofLevee(func(res *ScenarioResult, lv *PolicyRun) reading {
			at1C, most, peak := rampState(res.Scenario, lv)
			return absolute(float64(most.goroutines)-2*float64(at1C.goroutines),
				"%d at 1C, %d at most (peak in the first seconds of a step: %d)", at1C.goroutines, most.goroutines, peak.goroutines)
		}),
	},
	{
		scenario: "ramp", desc: "heap flat (each step's steady max ≤ 2× the 1C step's + 4 MiB)", cmp: atMost, bound: 4 << 20,
		metric: ofLevee(func(res *ScenarioResult, lv *PolicyRun) reading {
			at1C, most, peak := rampState(res.Scenario, lv)
			return absolute(float64(most.heap)-2*float64(at1C.heap),
				"%s at 1C, %s at most (peak in the first seconds of a step: %s)", mib(at1C.heap), mib(most.heap), mib(peak.heap))
		}),
	},

	// step: 0.7C to 1.4C, four times.
	{
		scenario: "step", desc: "threshold settles within 2 s of each step (the acceptance it implies holds within ±5 points of its final value for 1 s)",
		cmp: atMost, bound: float64(2 * time.Second),
		metric: ofLevee(func(res *ScenarioResult, lv *PolicyRun) reading {
			var worst time.Duration
			var each []string
			for _, i := range highPhases(res.Scenario) {
				hs, he := phaseRange(res.Scenario, i)
				st := settleTime(lv, hs, he, res.salt)
				worst = max(worst, st)
				each = append(each, fmt.Sprintf("%.1f s", st.Seconds()))
			}
			return absolute(float64(worst), "worst %.1f s (steps: %s)", worst.Seconds(), strings.Join(each, ", "))
		}),
	},
	{
		scenario: "step", desc: "acceptance converges within 2 s of each step (admitted share within ±5% of its final value and admitted p99 ≤ 50 ms, holding for 1 s)",
		cmp: atMost, bound: float64(2 * time.Second),
		metric: ofLevee(func(res *ScenarioResult, lv *PolicyRun) reading {
			var worst time.Duration
			var each []string
			swing := 0.0
			for _, i := range highPhases(res.Scenario) {
				hs, he := phaseRange(res.Scenario, i)
				at, osc := acceptanceSettle(lv, hs, he)
				worst, swing = max(worst, at), max(swing, osc)
				each = append(each, fmt.Sprintf("%.1f s", at.Seconds()))
			}
			return absolute(float64(worst), "worst %.1f s (steps: %s); largest swing of acceptance after convergence ±%.0f%%",
				worst.Seconds(), strings.Join(each, ", "), 100*swing)
		}),
	},
	{
		scenario: "step", desc: "goodput never below 0.8C during the change (per second, from each step to its end)", cmp: atLeast, bound: 0.8,
		metric: ofLevee(func(res *ScenarioResult, lv *PolicyRun) reading {
			least := -1.0
			bins := lv.Bins(time.Second, res.Scenario.Duration())
			for _, i := range highPhases(res.Scenario) {
				hs, he := phaseRange(res.Scenario, i)
				for _, b := range bins {
					if b.Start >= hs && b.Start+time.Second <= he {
						if g := b.All.Goodput(); least < 0 || g < least {
							least = g
						}
					}
				}
			}
			return relative(least, res.C, "minimum %.0f/s = %.2fC", least, least/res.C)
		}),
	},

	// retry: 2C offered by clients that retry.
	{
		scenario: "retry", desc: "retry amplification with levee's client ≤ 1.1×", cmp: atMost, bound: 1.1,
		metric: ofLevee(func(res *ScenarioResult, lv *PolicyRun) reading {
			a := lv.Agg(stormRange(res.Scenario))
			return absolute(a.Amplification(), "%.3f× (%d attempts for %d calls; %d throttled locally)",
				a.Amplification(), a.Attempts, a.Offered, a.Throttled)
		}),
	},
	{
		scenario: "retry", desc: "p99 (calls answered OK, as clients saw them) well below the no-shedding baseline (≤ 0.5×)", cmp: atMost, bound: 0.5,
		metric: func(res *ScenarioResult) (reading, bool) {
			lv, none := res.Run(PolicyLevee), res.Run(PolicyNone)
			if lv == nil || none == nil {
				return reading{}, false
			}
			a, b := lv.Agg(stormRange(res.Scenario)), none.Agg(stormRange(res.Scenario))
			return relative(float64(a.P99), float64(b.P99), "%s vs %s (%.2f×); goodput %.2fC vs %.2fC",
				ms(a.P99), ms(b.P99), ratio(a.P99, b.P99), a.Goodput()/res.C, b.Goodput()/res.C), true
		},
	},

	// calm: 0.5C, no overload; the sidecar probe and the refusal benchmark.
	{
		scenario: "calm", desc: "zero refusals at 0.5C", cmp: atMost, bound: 0,
		metric: ofLevee(func(res *ScenarioResult, lv *PolicyRun) reading {
			a := lv.Agg(0, res.Scenario.Duration(), allPriorities)
			var srv uint64
			for p := range shed.NumPriorities {
				srv += lv.serverRefused(p)
			}
			n := a.Refused + a.Throttled
			return absolute(float64(n)+float64(srv), "%d refused (%d counted by the backend); success %s", n, srv, pct(a.Success()))
		}),
	},
	{
		scenario: "calm", desc: "sidecar Admit and Release round trips p99 ≤ 1 ms on loopback", cmp: atMost, bound: float64(time.Millisecond),
		metric: func(res *ScenarioResult) (reading, bool) {
			lv := res.Run(PolicyLevee)
			if lv == nil || len(lv.sidecar[0]) == 0 {
				return reading{}, false
			}
			_, adm := quantiles(slices.Clone(lv.sidecar[0]))
			_, rel := quantiles(slices.Clone(lv.sidecar[1]))
			_, pair := quantiles(slices.Clone(lv.sidecar[2]))
			floor := "n/a"
			if len(lv.sidecar[3]) > 0 {
				_, f := quantiles(slices.Clone(lv.sidecar[3]))
				floor = msPrec(f)
			}
			return absolute(float64(max(adm, rel)),
				"Admit %s, Release %s (both: %s; %d probes); a health check of the same server after the same idle time, which does nothing: %s",
				msPrec(adm), msPrec(rel), msPrec(pair), len(lv.sidecar[0]), floor), true
		},
	},
	{
		scenario: "calm", desc: "a refusal costs ≤ 200 ns in process", cmp: atMost, bound: 200,
		metric: func(res *ScenarioResult) (reading, bool) {
			if res.Bench == nil {
				return reading{}, false
			}
			b := res.Bench
			return absolute(b.RefuseNs, "%.0f ns (gRPC tap handle refusing from metadata: %.0f ns)", b.RefuseNs, b.TapNs), true
		},
	},
	{
		scenario: "calm", desc: "a refusal allocates nothing in process", cmp: atMost, bound: 0,
		metric: func(res *ScenarioResult) (reading, bool) {
			if res.Bench == nil {
				return reading{}, false
			}
			b := res.Bench
			return absolute(float64(b.RefuseAllocs), "%d allocs (gRPC tap handle refusing from metadata: %d allocs)", b.RefuseAllocs, b.TapAllocs), true
		},
	},
}

// The figures of the other policies shown beside the targets.
var baselines = []baseline{
	{
		scenario: "flood", desc: "critical success / goodput / critical p99 in the flood",
		figure: func(res *ScenarioResult, r *PolicyRun) string {
			fs, fe := phaseRange(res.Scenario, 1)
			crit, all := r.Agg(fs, fe, 0), r.Agg(fs, fe, allPriorities)
			return fmt.Sprintf("%s / %.2fC / %s", pct(crit.Success()), all.Goodput()/res.C, ms(crit.P99))
		},
	},
	{
		scenario: "ramp", desc: "goodput at 6C / max goroutines / max heap",
		figure: func(res *ScenarioResult, r *PolicyRun) string {
			from, to := steady(res.Scenario, len(res.Scenario.Phases)-1)
			g, h := r.maxState(0, res.Scenario.Duration())
			return fmt.Sprintf("%.2fC / %d / %s", r.Agg(from, to, allPriorities).Goodput()/res.C, g, mib(h))
		},
	},
	{
		scenario: "step", desc: "goodput at 1.4C / p99",
		figure: func(res *ScenarioResult, r *PolicyRun) string {
			from, to := steady(res.Scenario, 1)
			a := r.Agg(from, to, allPriorities)
			return fmt.Sprintf("%.2fC / %s", a.Goodput()/res.C, ms(a.P99))
		},
	},
	{
		scenario: "retry", desc: "amplification / p99 / goodput with the naive 3-attempt client",
		figure: func(res *ScenarioResult, r *PolicyRun) string {
			b := r.Agg(stormRange(res.Scenario))
			return fmt.Sprintf("%.2f× / %s / %.2fC", b.Amplification(), ms(b.P99), b.Goodput()/res.C)
		},
	},
	{
		scenario: "calm", desc: "refusals / p99",
		figure: func(res *ScenarioResult, r *PolicyRun) string {
			a := r.Agg(0, res.Scenario.Duration(), allPriorities)
			return fmt.Sprintf("%d / %s", a.Refused, ms(a.P99))
		},
	},
}

// ofLevee is a metric read from levee's run, which a result without one
// cannot measure.
func ofLevee(read func(res *ScenarioResult, lv *PolicyRun) reading) func(*ScenarioResult) (reading, bool) {
	return func(res *ScenarioResult) (reading, bool) {
		lv := res.Run(PolicyLevee)
		if lv == nil {
			return reading{}, false
		}
		return read(res, lv), true
	}
}

// stormRange is the retry storm's phase, for Agg: its range and every
// priority.
func stormRange(sc *Scenario) (from, to time.Duration, prio int) {
	from, to = phaseRange(sc, 1)
	return from, to, allPriorities
}

// highPhases returns the indexes of the step scenario's 1.4C phases.
func highPhases(sc *Scenario) []int {
	var out []int
	for i, ph := range sc.Phases {
		if strings.HasPrefix(ph.Name, "high") {
			out = append(out, i)
		}
	}
	return out
}

// orderViolations lists, from the second second of each phase, the
// intervals between two polls of the backend (100 ms) in which levee's
// threshold stood still and a priority lost a call sent in the interval
// (refused, throttled, timed out or failed) while a less important one
// had a call sent in it admitted (not refused or throttled). An interval
// in which the threshold moved is the move's: the calls already in flight
// when it moves are allowed. One line per phase with violations.
func orderViolations(sc *Scenario, r *PolicyRun) []string {
	var viol []string
	for i, ph := range sc.Phases {
		from, to := phaseRange(sc, i)
		from += time.Second
		n, first := 0, ""
		for k := 1; k < len(r.stats); k++ {
			a, b := r.stats[k-1], r.stats[k]
			if a.at < from || b.at > to || a.Threshold != b.Threshold {
				continue
			}
			var agg [shed.NumPriorities]Agg
			for p := range shed.NumPriorities {
				agg[p] = r.Agg(a.at, b.at, p)
			}
			if v := lostWhileLessAdmitted(&agg); v != "" {
				if n++; n == 1 {
					first = fmt.Sprintf("%s at %.1f s", v, a.at.Seconds())
				}
			}
		}
		if n > 0 {
			viol = append(viol, fmt.Sprintf("at %s %d interval(s), first: %s", ph.Name, n, first))
		}
	}
	return viol
}

// lostWhileLessAdmitted names the first priority that lost calls while a
// less important one had calls admitted, or returns "".
func lostWhileLessAdmitted(agg *[shed.NumPriorities]Agg) string {
	for h := range shed.NumPriorities {
		lost := agg[h].Offered - agg[h].OK
		if lost == 0 {
			continue
		}
		for l := h + 1; l < shed.NumPriorities; l++ {
			if adm := agg[l].Offered - agg[l].Refused - agg[l].Throttled; adm > 0 {
				return fmt.Sprintf("%s lost %d of %d while %s had %d admitted", prioNames[h], lost, agg[h].Offered, prioNames[l], adm)
			}
		}
	}
	return ""
}

type state struct {
	goroutines int
	heap       uint64
}

// rampState returns the backend's most goroutines and heap in the steady
// window of the 1C step, the most over every step's steady window, and
// the most over the whole run (transients included).
func rampState(sc *Scenario, r *PolicyRun) (at1C, most, peak state) {
	f1, t1 := steady(sc, 1)
	at1C.goroutines, at1C.heap = r.maxState(f1, t1)
	for i := range sc.Phases {
		from, to := steady(sc, i)
		g, h := r.maxState(from, to)
		most.goroutines, most.heap = max(most.goroutines, g), max(most.heap, h)
	}
	peak.goroutines, peak.heap = r.maxState(0, sc.Duration())
	return at1C, most, peak
}
