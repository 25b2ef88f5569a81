package shed

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/levee-dev/levee/shed/shedtest"
)

// sim drives a Resource in fake time with the shape of a service that
// imports shed and sees nothing but Acquire and Release: open-loop Poisson
// arrivals per priority, drawn up front from a seed, each with a user id
// hashed into a cohort and a deadline simDeadline after its arrival;
// Acquire at arrival; an unbounded FIFO queue in front of one worker with
// exponential service at rate mu; a request whose deadline passed while it
// queued is dropped when the worker dequeues it; Release with the latency
// since arrival and Success (finished by the deadline) or Dropped; Tick
// every simTickEvery. It is event driven: arrivals, completions and ticks in
// time order.
//
// Disturbances: during a worker stall the worker completes nothing (the
// rest runs); during a freeze nothing runs at all, as when the process is
// descheduled or stopped by the collector: what was due in it happens at
// its end, at once (the arrivals with their scheduled times and deadlines,
// one tick for all the ticks it swallowed).
type sim struct {
	tb       testing.TB
	r        *Resource
	clk      *shedtest.Clock
	seed     uint64
	mu       float64
	salt     uint64
	stalls   []span // the worker completes nothing
	freezes  []span // nothing runs
	reqs     []*simReq
	ticks    []simTick
	onTick   func(now time.Time)
	duration time.Duration
	// permits, when set, takes every request through the table the
	// sidecar serves (Acquire and Release by id, Sweep on every tick)
	// instead of the resource directly.
	permits *PermitTable
	// startLag and wakeLag, when set, draw how late a request's goroutine
	// starts after its scheduled arrival, and how long after the worker
	// finished with it (or dropped it) it wakes to see so and Release:
	// the scheduling delays of a process whose requests are goroutines.
	startLag, wakeLag func(*rand.Rand) time.Duration
	// slow, when set, stretches the service time of a request arriving at
	// offset d by slow(d): a host whose speed moves under the service.
	slow func(d time.Duration) float64
	// longEvery, when set, gives one user in longEvery a context deadline
	// an hour away (the worker still drops their requests at
	// simDeadline): callers whose budgets say nothing about the queue.
	longEvery uint32
}

// slowing is a host that stretches the service by factor for on of every
// period, starting at from into each: a sim's slow.
func slowing(factor float64, from, on, every time.Duration) func(time.Duration) float64 {
	return func(d time.Duration) float64 {
		if r := d % every; r >= from && r < from+on {
			return factor
		}
		return 1
	}
}

func (s *sim) slowAt(d time.Duration) float64 {
	if s.slow == nil {
		return 1
	}
	return s.slow(d)
}

type span struct{ from, to time.Duration }

// simReq is one request and what became of it.
type simReq struct {
	at       time.Time // scheduled arrival
	start    time.Time // when its goroutine calls Acquire
	acq      time.Time // when it did (start, or the end of a freeze)
	prio     Priority
	user     uint32
	svc      time.Duration
	permit   Permit
	id       uint64 // with permits
	reason   Reason // ReasonNone: admitted
	done     time.Time
	ok       bool // served by its deadline
	dropped  bool // dequeued past its deadline
	admitted bool
}

// simTick is the resource's state after one tick.
type simTick struct {
	at time.Duration
	rd Reading
	st Status
}

// simPhase is a stretch of constant offered load, per priority in
// requests per second (index 0 critical).
type simPhase struct {
	dur   time.Duration
	rates [NumPriorities]float64
}

const (
	simMu        = 1000.0 // service rate: exponential service, 1 ms mean
	simDeadline  = 100 * time.Millisecond
	simTickEvery = 100 * time.Millisecond
	simUsers     = 20000 // per priority
)

func newSim(t testing.TB, seed uint64, cfg Config) *sim {
	clk := shedtest.NewClock(t0)
	cfg.Clock = clk.Now
	return &sim{tb: t, r: mustResource(t, cfg), clk: clk, seed: seed, mu: simMu, salt: CohortSalter{Seed: 1}.Salt(t0)}
}

// frozen returns the end of the freeze at offset d, or d.
func (s *sim) frozen(d time.Duration) time.Duration {
	for _, f := range s.freezes {
		if d >= f.from && d < f.to {
			return f.to
		}
	}
	return d
}

// stalled returns the end of the worker stall at offset d, or d.
func (s *sim) stalled(d time.Duration) time.Duration {
	for _, f := range s.stalls {
		if d >= f.from && d < f.to {
			return f.to
		}
	}
	return d
}

// run offers the phases, one after the other, and returns the requests.
func (s *sim) run(phases ...simPhase) []*simReq {
	rng := rand.New(rand.NewPCG(s.seed, 0x51))
	var start time.Duration
	for _, ph := range phases {
		for p, rate := range ph.rates {
			if rate <= 0 {
				continue
			}
			for at := start; ; {
				at += time.Duration(rng.ExpFloat64() / rate * float64(time.Second))
				if at >= start+ph.dur {
					break
				}
				s.reqs = append(s.reqs, &simReq{at: t0.Add(at), prio: Priority(p + 1), user: uint32(rng.IntN(simUsers)),
					svc: time.Duration(rng.ExpFloat64() / s.mu * s.slowAt(at) * float64(time.Second))})
			}
		}
		start += ph.dur
	}
	s.duration = start
	lag := rand.New(rand.NewPCG(s.seed, 0x1a9))
	for _, q := range s.reqs {
		q.start = q.at
		if s.startLag != nil {
			q.start = q.at.Add(s.startLag(lag))
		}
	}
	slices.SortStableFunc(s.reqs, func(a, b *simReq) int { return a.start.Compare(b.start) })

	var (
		queue    []*simReq
		serving  *simReq
		busyTill time.Duration
		nextTick = simTickEvery
		next     int
		waking   []*simReq // served or dropped, waking up to Release, by done
	)
	finish := func(q *simReq, now time.Time) {
		q.done = now
		if s.wakeLag != nil {
			q.done = now.Add(s.wakeLag(lag))
		}
		i, _ := slices.BinarySearchFunc(waking, q.done, func(w *simReq, t time.Time) int { return w.done.Compare(t) })
		waking = slices.Insert(waking, i, q)
	}
	end := start + simDeadline + simTickEvery
	for {
		// The next event: a tick, an arrival or a completion, whichever
		// is due first (ticks first on a tie, then completions), each
		// moved to the end of a freeze it falls in.
		now, kind := s.frozen(nextTick), 0
		if next < len(s.reqs) {
			if d := s.frozen(s.reqs[next].start.Sub(t0)); d < now {
				now, kind = d, 1
			}
		}
		if len(waking) > 0 {
			if d := s.frozen(waking[0].done.Sub(t0)); d < now {
				now, kind = d, 3
			}
		}
		if serving != nil || len(queue) > 0 {
			// A completion, or the end of a stall that left work queued.
			if d := s.frozen(s.stalled(busyTill)); d < now || d == now && kind == 1 {
				now, kind = d, 2
			}
		}
		if now > end {
			break
		}
		tnow := t0.Add(now)
		s.clk.Set(tnow)
		switch kind {
		case 0:
			rd := s.r.Tick(tnow)
			s.ticks = append(s.ticks, simTick{at: now, rd: rd, st: s.r.Status(tnow)})
			if s.permits != nil {
				s.permits.Sweep(tnow)
			}
			if s.onTick != nil {
				s.onTick(tnow)
			}
			for nextTick <= now {
				nextTick += simTickEvery
			}
		case 1:
			q := s.reqs[next]
			next++
			q.acq = tnow
			l := LevelOf(q.prio, Cohort(fmt.Sprintf("u%d", q.user), s.salt))
			ctx := deadlineCtx{context.Background(), q.at.Add(simDeadline)}
			if s.longEvery > 0 && q.user%s.longEvery == 0 {
				ctx.d = q.at.Add(time.Hour)
			}
			var err error
			if s.permits != nil {
				q.id, err = s.permits.Acquire(ctx, l, tnow, 30*time.Second)
			} else {
				q.permit, err = s.r.Acquire(ctx, l)
			}
			if err != nil {
				q.reason, q.done = err.(*Refusal).Reason, tnow
				break
			}
			q.admitted = true
			queue = append(queue, q)
		case 2:
			if serving != nil {
				finish(serving, tnow)
				serving = nil
			}
		case 3:
			q := waking[0]
			waking = waking[1:]
			s.release(q, tnow)
		}
		for serving == nil && len(queue) > 0 && s.stalled(now) == now {
			q := queue[0]
			queue = queue[1:]
			if !tnow.Before(q.at.Add(simDeadline)) {
				q.dropped = true
				finish(q, tnow)
				continue
			}
			serving, busyTill = q, now+q.svc
		}
		if serving == nil {
			busyTill = now // the queue, if any, waits for the stall's end
		}
	}
	return s.reqs
}

// release ends q, woken at now: served by its deadline, or not.
func (s *sim) release(q *simReq, now time.Time) {
	q.done, q.ok = now, !q.dropped && !now.After(q.at.Add(simDeadline))
	o := OutcomeSuccess
	if !q.ok {
		o = OutcomeDropped
	}
	if s.permits != nil {
		if err := s.permits.Release(q.id, now.Sub(q.at), o); err != nil {
			s.tb.Errorf("release of a permit held %v: %v", now.Sub(q.at), err)
		}
		return
	}
	s.r.Release(q.permit, now.Sub(q.at), o)
}

// simStats are what happened to the requests of one priority (or all)
// that arrived in a stretch of time.
type simStats struct {
	offered, ok, refused, dropped int
	lat                           []time.Duration // admitted requests', from arrival to their end
	okLat                         []time.Duration // served requests'
}

func (st simStats) lost() int { return st.refused + st.dropped }

// stats returns the figures of priority p (0: all) over [from, to).
func (s *sim) stats(p Priority, from, to time.Duration) simStats {
	var st simStats
	for _, q := range s.reqs {
		d := q.at.Sub(t0)
		if d < from || d >= to || p != 0 && q.prio != p {
			continue
		}
		st.offered++
		switch {
		case !q.admitted:
			st.refused++
			continue
		case q.ok:
			st.ok++
			st.okLat = append(st.okLat, q.done.Sub(q.at))
		default:
			st.dropped++
		}
		st.lat = append(st.lat, q.done.Sub(q.at))
	}
	return st
}

// fifths spreads total (a multiple of simMu) over the five priorities.
func fifths(total float64) [NumPriorities]float64 {
	f := total * simMu / 5
	return [NumPriorities]float64{f, f, f, f, f}
}

// quarters spreads total over critical, high, low and sheddable.
func quarters(total float64) [NumPriorities]float64 {
	q := total * simMu / 4
	return [NumPriorities]float64{q, q, 0, q, q}
}

// orderViolations lists, from the second second of each phase on, the
// control intervals (between two ticks, while the threshold stands still)
// in which a priority lost a request that called Acquire in it (refused,
// or admitted and dropped) while a less important one had a request
// admitted in it. A request admitted before a move of the threshold and
// still in flight after it is the move's, not a violation.
func (s *sim) orderViolations(phases []simPhase) []string {
	// Per control interval k (from tick k-1 to tick k), the requests lost
	// and admitted by priority, of those that called Acquire in it.
	type counts struct{ lost, admitted [NumPriorities + 1]int }
	per := make([]counts, len(s.ticks))
	for _, q := range s.reqs {
		d := q.acq.Sub(t0)
		k, _ := slices.BinarySearchFunc(s.ticks, d, func(tk simTick, d time.Duration) int { return cmp.Compare(tk.at, d+1) })
		if k == 0 || k == len(s.ticks) {
			continue
		}
		if q.admitted {
			per[k].admitted[q.prio]++
		}
		if !q.ok {
			per[k].lost[q.prio]++
		}
	}
	var out []string
	var start time.Duration
	for i, ph := range phases {
		from, to := start+time.Second, start+ph.dur
		start = to
		for k := 1; k < len(s.ticks); k++ {
			a, b := s.ticks[k-1].at, s.ticks[k].at
			if a < from || b > to {
				continue
			}
			c := &per[k]
			for p := Critical; p < Sheddable; p++ {
				for q := p + 1; q <= Sheddable; q++ {
					if c.lost[p] > 0 && c.admitted[q] > 0 {
						out = append(out, fmt.Sprintf("phase %d, %v–%v: %v lost %d while %v had %d admitted", i, a, b, p, c.lost[p], q, c.admitted[q]))
						break
					}
				}
			}
		}
	}
	return out
}

// simC is the capacity the scenarios are expressed in, as levee surge
// calibrates it: 90% of the worker's service rate.
const simC = 0.9

// rampPhases are the ramp of the overload harness: five priorities at 20%
// each, 0.5C to 6C, step long a step (levee surge runs 11 s).
func rampPhases(step time.Duration) []simPhase {
	var out []simPhase
	for _, x := range []float64{0.5, 1, 2, 4, 6} {
		out = append(out, simPhase{step, fifths(simC * x)})
	}
	return out
}

// stepP99s returns, for each phase, the admitted requests' p99 from its
// second second to its end: what the ramp's latency target judges.
func (s *sim) stepP99s(phases []simPhase) []time.Duration {
	var out []time.Duration
	var start time.Duration
	for _, ph := range phases {
		out = append(out, pct(s.stats(0, start+time.Second, start+ph.dur).lat, 0.99))
		start += ph.dur
	}
	return out
}

// TestSimulationRampStrictOrder drives a Resource with its default
// configuration through the ramp (five priorities at 20% each, 0.5C → 1C →
// 2C → 4C → 6C, 4 s a step) for ten seeds, and holds it to the overload
// targets from the second second of each step on: priorities are shed in
// strict order (in no control interval does a priority lose a request,
// refused or admitted and dropped, while a less important one has requests
// admitted; see orderViolations); what is admitted waits at most half its
// deadline (p99); the
// worker serves at least 0.8C; and critical loses nothing while its own
// demand fits.
func TestSimulationRampStrictOrder(t *testing.T) {
	for seed := range uint64(10) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			phases := rampPhases(4 * time.Second)
			s := newSim(t, seed, Config{})
			s.run(phases...)
			for _, v := range s.orderViolations(phases) {
				t.Error("order: ", v)
			}
			var start time.Duration
			for i, ph := range phases {
				from, to := start+time.Second, start+ph.dur
				all, crit := s.stats(0, from, to), s.stats(Critical, from, to)
				p99 := pct(all.lat, 0.99)
				served := float64(all.ok) / (to - from).Seconds()
				t.Logf("step %d: admitted p99 %v, served %.0f/s, critical %d of %d", i, p99, served, crit.ok, crit.offered)
				if p99 > simDeadline/2 {
					t.Errorf("step %d: admitted p99 %v, want at most %v", i, p99, simDeadline/2)
				}
				if want := 0.8 * simC * simMu; served < min(want, 0.95*float64(all.offered)/(to-from).Seconds()) {
					t.Errorf("step %d: served %.0f/s, want at least %.0f/s", i, served, want)
				}
				if ph.rates[0] < simC*simMu && crit.ok != crit.offered {
					t.Errorf("step %d: critical lost %d of %d while its demand fits", i, crit.offered-crit.ok, crit.offered)
				}
				start += ph.dur
			}
		})
	}
}

// TestSimulationRampThroughPermits: the ramp holds its order and latency
// when every request goes through the permit table the sidecar serves
// (Admit and Release by id, with the latency the caller reports).
func TestSimulationRampThroughPermits(t *testing.T) {
	for seed := range uint64(3) {
		phases := rampPhases(4 * time.Second)
		s := newSim(t, seed, Config{})
		s.permits = NewPermitTable(s.r)
		s.run(phases...)
		for _, v := range s.orderViolations(phases) {
			t.Errorf("seed %d: order: %s", seed, v)
		}
		for i, p99 := range s.stepP99s(phases) {
			if p99 > simDeadline/2 {
				t.Errorf("seed %d step %d: admitted p99 %v, want at most %v", seed, i, p99, simDeadline/2)
			}
		}
		if n := s.permits.Len(); n != 0 {
			t.Errorf("seed %d: %d permits left in the table", seed, n)
		}
	}
}

// TestSimulationFloodKeepsCriticalFast drives a Resource with its default
// configuration through a low-priority flood (critical 0.5C throughout,
// sheddable 0.25C, then 3C for 8 s, then 0.25C) for ten seeds: critical
// loses nothing, its p99 in the flood stays within 1.5× its p99 before it,
// and the worker serves at least 0.9C in the flood.
func TestSimulationFloodKeepsCriticalFast(t *testing.T) {
	c := simC * simMu
	for seed := range uint64(10) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			s := newSim(t, seed, Config{})
			s.run(
				simPhase{8 * time.Second, [NumPriorities]float64{0.5 * c, 0, 0, 0, 0.25 * c}},
				simPhase{8 * time.Second, [NumPriorities]float64{0.5 * c, 0, 0, 0, 3 * c}},
				simPhase{4 * time.Second, [NumPriorities]float64{0.5 * c, 0, 0, 0, 0.25 * c}},
			)
			before, flood := s.stats(Critical, time.Second, 8*time.Second), s.stats(Critical, 8*time.Second, 16*time.Second)
			p99, base := pct(flood.okLat, 0.99), pct(before.okLat, 0.99)
			served := float64(s.stats(0, 8*time.Second, 16*time.Second).ok) / 8
			t.Logf("critical p99 %v in the flood, %v before (%.2f×); served %.0f/s", p99, base, float64(p99)/float64(base), served)
			if lost := s.stats(Critical, 0, s.duration); lost.ok != lost.offered {
				t.Errorf("critical lost %d of %d", lost.offered-lost.ok, lost.offered)
			}
			if float64(p99) > 1.5*float64(base) {
				t.Errorf("critical p99 %v in the flood, want at most 1.5 × %v", p99, base)
			}
			if served < 0.9*c {
				t.Errorf("served %.0f/s in the flood, want at least 0.9C = %.0f/s", served, 0.9*c)
			}
		})
	}
}

// TestSimulationCalmRefusesNothing: at 0.5C, five priorities at 20% each,
// nothing is refused.
func TestSimulationCalmRefusesNothing(t *testing.T) {
	for seed := range uint64(5) {
		s := newSim(t, seed, Config{})
		s.run(simPhase{30 * time.Second, fifths(simC * 0.5)})
		if st := s.stats(0, 0, s.duration); st.refused > 0 {
			t.Errorf("seed %d: %d of %d refused at 0.5C", seed, st.refused, st.offered)
		}
	}
}

// TestSimulationPausesKeepOrder runs the ramp through the pauses a
// process sees (a collector or the scheduler stopping it for 30 ms every
// 700 ms): what was due in a pause arrives at its end, at once. Order
// still holds, and what is admitted waits at most half its deadline
// beyond the pause itself.
func TestSimulationPausesKeepOrder(t *testing.T) {
	const pause = 30 * time.Millisecond
	for seed := range uint64(5) {
		phases := rampPhases(4 * time.Second)
		s := newSim(t, seed, Config{})
		for f := 500 * time.Millisecond; f < 20*time.Second; f += 700 * time.Millisecond {
			s.freezes = append(s.freezes, span{f, f + pause})
		}
		s.run(phases...)
		for _, v := range s.orderViolations(phases) {
			t.Errorf("seed %d: order: %s", seed, v)
		}
		for i, p99 := range s.stepP99s(phases) {
			if p99 > simDeadline/2+pause {
				t.Errorf("seed %d step %d: admitted p99 %v, want at most %v", seed, i, p99, simDeadline/2+pause)
			}
		}
	}
}

// TestSimulationLongPausesDoNotShedCritical: a flood with the process
// stopped for 200 ms at its start and 300 ms in the middle (what was due
// in a pause arrives at its end, at once): what waited past its deadline
// is lost, but no pause is taken for critical demand beyond capacity.
func TestSimulationLongPausesDoNotShedCritical(t *testing.T) {
	c := simC * simMu
	for seed := range uint64(5) {
		s := newSim(t, seed, Config{})
		s.freezes = []span{{50 * time.Millisecond, 250 * time.Millisecond}, {6 * time.Second, 6300 * time.Millisecond}}
		s.run(
			simPhase{4 * time.Second, [NumPriorities]float64{0.5 * c, 0, 0, 0, 0.25 * c}},
			simPhase{8 * time.Second, [NumPriorities]float64{0.5 * c, 0, 0, 0, 3 * c}},
		)
		maxTh := Level(0)
		for _, tk := range s.ticks {
			maxTh = max(maxTh, tk.st.Threshold)
		}
		if st := s.stats(Critical, 0, s.duration); st.refused > 0 || maxTh >= CriticalOnly {
			t.Errorf("seed %d: %d critical requests refused, threshold up to %v", seed, st.refused, maxTh)
		}
	}
}

// stepPhases are the step of the overload harness: critical, high, low
// and sheddable at 25% each, 0.7C for 4 s and 1.4C for 9 s, four times,
// then 0.7C again; c is C in requests per second.
func stepPhases(c float64) []simPhase {
	var out []simPhase
	for range 4 {
		out = append(out, simPhase{4 * time.Second, quarters(0.7 * c / simMu)}, simPhase{9 * time.Second, quarters(1.4 * c / simMu)})
	}
	return append(out, simPhase{4 * time.Second, quarters(0.7 * c / simMu)})
}

// thresholdSettle is how long after from the acceptance the threshold
// implies (the share of the requests offered in [from, to) at a level it
// admits) settled, as levee surge judges it (shedtest.Settle); to − from
// if it never did.
func (s *sim) thresholdSettle(from, to time.Duration) time.Duration {
	acc := s.impliedAcceptance(from, to)
	at, v := make([]time.Duration, len(s.ticks)), make([]float64, len(s.ticks))
	for i, tk := range s.ticks {
		at[i], v[i] = tk.at, acc(tk)
	}
	return shedtest.Settle(at, v, from, to)
}

// moveTrace lists the threshold's moves in [from, to): when (since from),
// the acceptance it implies (as in thresholdSettle) and the cause.
func (s *sim) moveTrace(from, to time.Duration) string {
	acc := s.impliedAcceptance(from, to)
	var out []string
	for k := 1; k < len(s.ticks); k++ {
		tk, prev := s.ticks[k], s.ticks[k-1]
		if tk.at < from || tk.at >= to || tk.st.Moves == prev.st.Moves {
			continue
		}
		for c := range tk.st.Moves {
			if tk.st.Moves[c] != prev.st.Moves[c] {
				out = append(out, fmt.Sprintf("%.1fs %.2f %v", (tk.at-from).Seconds(), acc(tk), Cause(c)))
			}
		}
	}
	return strings.Join(out, ", ")
}

// thresholdReaction is how long after from the threshold first shed, by
// the acceptance it implies (as in thresholdSettle), at least share of the
// requests offered in [from, to); to − from if it never did.
func (s *sim) thresholdReaction(from, to time.Duration, share float64) time.Duration {
	acc := s.impliedAcceptance(from, to)
	for _, tk := range s.ticks {
		if tk.at >= from && tk.at < to && acc(tk) <= 1-share {
			return tk.at - from
		}
	}
	return to - from
}

// impliedAcceptance returns the share of the requests offered in [from,
// to) at a level a tick's threshold admits.
func (s *sim) impliedAcceptance(from, to time.Duration) func(simTick) float64 {
	var hist [NumLevels + 1]int
	total := 0
	for _, q := range s.reqs {
		if d := q.at.Sub(t0); d >= from && d < to {
			hist[LevelOf(q.prio, Cohort(fmt.Sprintf("u%d", q.user), s.salt))]++
			total++
		}
	}
	for l := NumLevels - 1; l >= 0; l-- {
		hist[l] += hist[l+1] // now: requests at level ≥ l
	}
	return func(tk simTick) float64 { return float64(hist[min(tk.st.Threshold, NumLevels)]) / float64(total) }
}

// acceptanceSettle is how long after from the share of the offered
// requests admitted converged with the admitted requests' p99 at most half
// the deadline, as levee surge judges it (shedtest.Converged); to − from
// if it never did.
func (s *sim) acceptanceSettle(from, to time.Duration) time.Duration {
	var bins []shedtest.Bin
	for t := from; t+shedtest.ConvergeBin <= to; t += shedtest.ConvergeBin {
		st := s.stats(0, t, t+shedtest.ConvergeBin)
		if st.offered > 0 {
			bins = append(bins, shedtest.Bin{At: t, Acceptance: 1 - float64(st.refused)/float64(st.offered), P99: pct(st.lat, 0.99)})
		}
	}
	d, _ := shedtest.Converged(bins, simDeadline/2, from, to)
	return d
}

// The seeds TestSimulationStepInSurgeUnits runs: ten by default; more to
// measure a change (go test ./shed -run StepInSurgeUnits -v -args
// -step.seeds=80 -step.from=40), since settling is a distribution.
var (
	stepSeeds    = flag.Uint64("step.seeds", 20, "seeds TestSimulationStepInSurgeUnits runs")
	stepSeedFrom = flag.Uint64("step.from", 0, "first seed TestSimulationStepInSurgeUnits runs")
	stepSlow     = flag.Float64("step.slow", 0, "stretch the service by this factor for 2 s of every 7 s in TestSimulationStepInSurgeUnits (a host whose speed moves); 0: a steady host")
	stepTrace    = flag.Bool("step.trace", false, "log the threshold's moves, with their causes, in each step TestSimulationStepInSurgeUnits saw settle after 2 s")
)

// TestSimulationStepInSurgeUnits drives a Resource with its default
// configuration through the step (four priorities at 25% each, 0.7C ↔
// 1.4C, 9 s high phases) for twenty seeds, with C at 90% of the worker's
// rate (as the simulations here calibrate it), at 85.5% (levee surge's
// seed 3, where all but the marginal priority is the throughput target
// itself) and at 81% (as levee surge measured it on a quiet host, where
// the traffic above the marginal priority fits the target and the
// concurrency gate alone can absorb the step): within 1.5 s of each step
// up (a second or less in all but a few) the threshold sheds at least 10%
// of the offered traffic (half or more of what must go), and the worker
// serves at least 0.8C from the second second on; at each C the threshold
// settles (as levee surge judges it) within 2 s of at least 85% of the steps (over 80 other seeds, 98%,
// 95% and 91%; with -step.slow=1.15, on a host that slows 15% for 2 s of
// every 7, 99%, 95% and 89%). The acceptance's settling times are logged;
// -step.trace logs the threshold's moves in the steps that settled late.
func TestSimulationStepInSurgeUnits(t *testing.T) {
	for _, cal := range []float64{simC, 0.855, 0.81} {
		c := cal * simMu
		var steps, th2, acc2 int
		for seed := *stepSeedFrom; seed < *stepSeedFrom+*stepSeeds; seed++ {
			t.Run(fmt.Sprintf("C=%gμ/seed=%d", cal, seed), func(t *testing.T) {
				phases := stepPhases(c)
				s := newSim(t, seed, Config{})
				if *stepSlow > 0 {
					s.slow = slowing(*stepSlow, 0, 2*time.Second, 7*time.Second)
				}
				s.run(phases...)
				var start time.Duration
				var each []string
				for i, ph := range phases {
					from, to := start, start+ph.dur
					start = to
					if i%2 == 0 {
						continue
					}
					react := s.thresholdReaction(from, to, 0.1)
					th, acc := s.thresholdSettle(from, to), s.acceptanceSettle(from, to)
					steps++
					if th <= 2*time.Second {
						th2++
					} else if *stepTrace {
						t.Logf("step %d settled after %v: %s", i/2+1, th, s.moveTrace(from, to))
					}
					if acc <= 2*time.Second {
						acc2++
					}
					served := float64(s.stats(0, from+time.Second, to).ok) / (to - from - time.Second).Seconds()
					each = append(each, fmt.Sprintf("%.1f/%.1f/%.1f s %.2fC", react.Seconds(), th.Seconds(), acc.Seconds(), served/c))
					if react > 1500*time.Millisecond {
						t.Errorf("step %d: the threshold shed 10%% of the traffic %v after the step, want within 1.5 s", i/2+1, react)
					}
					if served < 0.8*c {
						t.Errorf("step %d: served %.0f/s, want at least 0.8C = %.0f/s", i/2+1, served, 0.8*c)
					}
				}
				t.Logf("per step: threshold moved/settled, acceptance settled; served: %v", each)
				// Every move of the threshold is counted once, by cause.
				moved, last := 0, Level(0)
				for _, tk := range s.ticks {
					if tk.st.AutoThreshold != last {
						moved++
						last = tk.st.AutoThreshold
					}
				}
				var counted uint64
				var causes []string
				for c, n := range s.r.Status(t0).Moves {
					counted += n
					if n > 0 {
						causes = append(causes, fmt.Sprintf("%v %d", Cause(c), n))
					}
				}
				if counted != uint64(moved) {
					t.Errorf("moves counted by cause %d (%v), want %d, as the ticks show", counted, causes, moved)
				}
				t.Logf("moves by cause: %v", causes)
			})
		}
		t.Logf("C = %gμ: threshold settled within 2 s after %d of %d steps, acceptance after %d", cal, th2, steps, acc2)
		if float64(th2) < 0.85*float64(steps) {
			t.Errorf("C = %gμ: threshold settled within 2 s after %d of %d steps, want 85%%", cal, th2, steps)
		}
	}
}

// TestSimulationStandingQueueThatKeepsDeadlines holds the traffic of
// TestSimulationStepInSurgeUnits' harder case steady at 1.4C, C = 0.81μ
// (the traffic above sheddable, 0.85μ, fits the 0.9μ target, and the
// queue past the gate stands above twice its limit now and then), for
// ten seeds, once with deadline awareness and once without: with it, the
// standing queue that keeps the deadlines moves the threshold at most
// fifteen times after the first 3 s (170 s of it in all), under half as
// often as without, and the admitted p99 stays within half the deadline.
// (Moves remain where the queue left at a tick would take over a third of
// the budget: see waitShare.)
func TestSimulationStandingQueueThatKeepsDeadlines(t *testing.T) {
	standing := func(cfg Config) (moves int, p99 time.Duration) {
		var lat []time.Duration
		for seed := range uint64(10) {
			s := newSim(t, seed, cfg)
			s.run(simPhase{20 * time.Second, quarters(1.4 * 0.81)})
			var at3 uint64
			for _, tk := range s.ticks {
				if tk.at < 3*time.Second {
					at3 = tk.st.Moves[CauseStanding]
				}
			}
			moves += int(s.r.Status(t0).Moves[CauseStanding] - at3)
			lat = append(lat, s.stats(0, 3*time.Second, 20*time.Second).lat...)
		}
		return moves, pct(lat, 0.99)
	}
	with, p99 := standing(Config{})
	without, _ := standing(Config{NoDeadline: true})
	t.Logf("standing moves after 3 s over 10 seeds: %d with deadlines, %d without; admitted p99 %v", with, without, p99)
	if with > 15 || 2*with >= without {
		t.Errorf("standing moves after 3 s: %d with deadlines kept, want at most 15 and under half of the %d without", with, without)
	}
	if p99 > simDeadline/2 {
		t.Errorf("admitted p99 %v, want at most half the deadline", p99)
	}
}

// TestSimulationRampOnSlowingHost drives the ramp (11 s a step, as levee
// surge runs it) on a host that slows the service by 30% for 2 s of every
// 5, for twenty seeds: the admitted p99, from the second second of each
// step, stays within half the deadline in all but a few steps. A standing
// queue that kept its deadlines so far is held only while the queue
// itself keeps them too: the slowing host builds it a tick before any
// release is late. So it does when one caller in fifty has an hour-long
// deadline (the budgets are averaged harmonically: an arithmetic mean
// of 72 s would let any queue through).
func TestSimulationRampOnSlowingHost(t *testing.T) {
	for _, long := range []uint32{0, 50} {
		var steps, over int
		var worst time.Duration
		for seed := range uint64(20) {
			phases := rampPhases(11 * time.Second)
			s := newSim(t, seed, Config{})
			s.longEvery = long
			s.slow = slowing(1.3, 3*time.Second, 2*time.Second, 5*time.Second)
			s.run(phases...)
			for _, p99 := range s.stepP99s(phases) {
				steps++
				if p99 > simDeadline/2 {
					over++
				}
				worst = max(worst, p99)
			}
		}
		t.Logf("one user in %d with an hour's deadline: admitted p99 over half the deadline in %d of %d steps, worst %v", long, over, steps, worst)
		if float64(over) > 0.1*float64(steps) {
			t.Errorf("one user in %d with an hour's deadline: admitted p99 over half the deadline in %d of %d steps, want at most 10%%", long, over, steps)
		}
	}
}
