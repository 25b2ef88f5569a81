package shed

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Config describes a protected resource. The zero value is usable: an
// adaptive concurrency limit, a queueing delay signal (fed through
// ObserveQueueDelay), deadline awareness and the default control law.
type Config struct {
	Controller  ControllerConfig
	Concurrency GradientConfig
	// NoConcurrencyLimit turns the adaptive concurrency gate off; overload
	// must then come from the queueing delay or the extra Signals.
	NoConcurrencyLimit bool
	QueueDelay         CoDelConfig
	Deadline           DeadlineConfig
	// NoDeadline turns deadline awareness off: no request is refused for
	// its deadline, and a standing queue counts as overload whether or
	// not the admitted requests keep their deadlines.
	NoDeadline bool
	// GateTolerance is the share of the traffic that the concurrency gate
	// may refuse between two ticks (and over the last few) without that
	// counting as overload (0.1, and at least 2/(limit+1); negative: only
	// the latter). The gate refuses only the marginal priority, the least
	// important one still admitted, and trims its bursts itself; the
	// threshold moves only for a larger excess, so it does not shed the
	// traffic that keeps the service busy. Fewer than minGateRefusals
	// refusals never count.
	GateTolerance float64
	// Headroom is the share of the measured capacity kept free (0.1;
	// negative: no throughput target). With the concurrency gate on, the
	// resource learns the throughput it sustains while the gate is full
	// and steers the rate it admits to (1 − Headroom) × that throughput:
	// past it (by more than the noise of the count, 3% at least) is
	// overload, and the threshold does not readmit traffic that would
	// pass it. (A one-worker queue at 90% of its capacity keeps its p99
	// near 45 service times; at 96%, over 100.) See throughputTarget.
	Headroom float64
	// CapacityMemory is how long a measured throughput is trusted without
	// a new measurement (30 s); after it the threshold probes upward
	// freely, so a resource that grew is not held at its old capacity.
	CapacityMemory time.Duration
	// Signals are further overload signals (CPU, memory, a downstream's
	// health), read on every Tick and combined with the built-in ones.
	Signals []Signal
	// RetryAfter is the retry delay suggested with threshold refusals (1 s).
	RetryAfter time.Duration
	// MaxRetryAfter caps the delay suggested under a pin, which is the time
	// left on the pin (1 min).
	MaxRetryAfter time.Duration
	// Shadow starts the resource in shadow mode (see SetShadow).
	Shadow bool
	// Clock reads the time for Acquire (time.Now when nil). Only the
	// composition reads it; the state machines take time as an argument.
	Clock func() time.Time
}

// minGateRefusals is the fewest concurrency refusals between two ticks that
// can count as overload: one or two stray refusals of a thin marginal
// priority are noise, not a reason to shed whole cohorts.
const minGateRefusals = 3

// gateDecay is the weight of the past in the gate's decayed counts, per
// tick.
const gateDecay = 0.7

// raiseSettle is how many ticks after a raise the gate's refusals, or a
// standing excess, do not count as overload: the queue a surge built
// before the raise drains in that time, and shedding again for it would
// overshoot.
const raiseSettle = 3

// lateShare and minTimed: a tick whose releases (at least minTimed of
// them with a deadline) took over half their deadline no more often than
// lateShare kept its deadlines, the admitted p99 within half of them.
// waitShare: and the queue left at the tick, drained at the tick's rate
// of completions, takes at most this share of the releases' budgets (what
// was left of their deadlines at Acquire; their harmonic mean):
// the releases tell what the queue was, not what it becomes, and a queue
// that grows by half again within the next tick still keeps half of the
// budget. (A host that slows under the service builds the queue a tick
// before any release is late.)
const (
	lateShare = 0.01
	minTimed  = 20
	waitShare = 1.0 / 3
)

// Outcome says how an admitted request ended, which decides whether its
// latency is a sample of the service's speed.
type Outcome uint8

// Outcomes.
const (
	// OutcomeSuccess: served; the latency is a sample.
	OutcomeSuccess Outcome = iota
	// OutcomeDropped: timed out or refused downstream for overload; the
	// latency is a sample (it is what the caller saw).
	OutcomeDropped
	// OutcomeIgnored: cancelled by the caller, failed fast, or long-lived
	// (a stream); the latency is not a sample.
	OutcomeIgnored
	// OutcomeExpired: the permit was never released and expired; not a
	// sample.
	OutcomeExpired
)

// ErrRefused is the error every Refusal wraps: errors.Is(err, ErrRefused)
// tells a shed request from other failures.
var ErrRefused = errors.New("shed: request refused")

// Refusal is the error returned for a refused request. The values are
// shared between requests (so that refusing allocates nothing) and must not
// be modified.
type Refusal struct {
	Resource   string
	Reason     Reason
	RetryAfter time.Duration // suggested delay before a retry; 0: do not retry
	msg        string
}

// Error implements error.
func (e *Refusal) Error() string { return e.msg }

// Unwrap returns ErrRefused.
func (e *Refusal) Unwrap() error { return ErrRefused }

var reasonText = [NumReasons]string{
	ReasonNone:        "admitted",
	ReasonThreshold:   "below the admission threshold",
	ReasonOverride:    "below the operator's pinned threshold",
	ReasonConcurrency: "concurrency limit reached for its priority",
	ReasonDeadline:    "deadline shorter than the expected service time",
}

func newRefusal(resource string, reason Reason, retry time.Duration) *Refusal {
	msg := "shed: resource " + strconv.Quote(resource) + " refused request: " + reasonText[reason]
	if retry > 0 {
		msg += "; retry after " + retry.String()
	} else {
		msg += "; do not retry"
	}
	return &Refusal{Resource: resource, Reason: reason, RetryAfter: retry, msg: msg}
}

// Permit is an admitted request's claim on a resource. Release it exactly
// once with Resource.Release. The zero Permit is invalid and releasing it
// does nothing.
type Permit struct {
	r    *Resource
	prio Priority
	// timed says the caller had a deadline at Acquire, and budget is what
	// it left then: a release that took over half of it, or did not
	// finish, was late.
	timed  bool
	budget time.Duration
}

// Valid reports whether the permit came from a successful Acquire.
func (p Permit) Valid() bool { return p.r != nil }

// Priority returns the priority the permit was acquired at.
func (p Permit) Priority() Priority { return p.prio }

// PriorityCounts are a resource's cumulative counters for one priority.
type PriorityCounts struct {
	Admitted  uint64
	Refused   [NumReasons]uint64 // indexed by Reason
	WouldShed [NumReasons]uint64 // shadow mode: refused by Reason, but admitted
}

type prioStats struct {
	admitted  atomic.Uint64
	refused   [NumReasons]atomic.Uint64
	wouldShed [NumReasons]atomic.Uint64
	_         [64]byte
}

// Resource is one protected resource: a Controller, its overload signals and
// gates, and their counters, for in-process use. Acquire and Release are
// safe for concurrent use; Tick (or Run) is driven by one owner.
type Resource struct {
	name     string
	clock    func() time.Time
	ctrl     *Controller
	conc     *GradientLimit // nil when off
	codel    *CoDel
	dl       *DeadlineGate // nil when off
	signals  []Signal
	shadow   atomic.Bool
	inflight atomic.Int64 // only when conc is nil; the gate counts its own
	stats    [NumPriorities]prioStats
	refusals [NumReasons]atomic.Pointer[Refusal]

	retryAfter, maxRetryAfter time.Duration
	gateTolerance             float64

	tickMu               sync.Mutex
	last                 Reading
	gateAll, gateRefused float64 // decayed gate counts, under tickMu
	sinceRaise           int     // ticks since the threshold last rose, up to raiseSettle
	tput                 throughputTarget
	lastCritical         uint64 // critical demand counted at the last tick
	moves                [NumCauses]uint64
	// Releases of requests that had a deadline, and of those the ones
	// that took over half of it (late); the counts at the last tick.
	timed, late atomic.Uint64
	// The timed releases' budgets as rates, 1/budget in 1/s scaled by
	// invBudgetUnit, summed: their mean is the reciprocal of the
	// harmonic mean, which a few callers with long deadlines do not
	// swamp as they would an arithmetic one.
	invBudgets                   atomic.Uint64
	lastTimed, lastLate, lastInv uint64
}

// New returns a resource named name (the metrics label and the name in
// refusals).
func New(name string, cfg Config) (*Resource, error) {
	if name == "" {
		return nil, &FieldError{Field: "name", Value: name, Reason: "a resource needs a name"}
	}
	ctrl, err := NewController(cfg.Controller)
	if err != nil {
		return nil, fmt.Errorf("resource %q: %w", name, err)
	}
	codel, err := NewCoDel(cfg.QueueDelay)
	if err != nil {
		return nil, fmt.Errorf("resource %q: %w", name, err)
	}
	r := &Resource{
		name:          name,
		clock:         cfg.Clock,
		ctrl:          ctrl,
		codel:         codel,
		signals:       append([]Signal(nil), cfg.Signals...),
		retryAfter:    cfg.RetryAfter,
		maxRetryAfter: cfg.MaxRetryAfter,
		gateTolerance: cfg.GateTolerance,
	}
	switch {
	case r.gateTolerance == 0:
		r.gateTolerance = 0.1
	case r.gateTolerance < 0:
		r.gateTolerance = 0
	case r.gateTolerance >= 1:
		return nil, fmt.Errorf("resource %q: GateTolerance %v: want a fraction below 1", name, r.gateTolerance)
	}
	if r.clock == nil {
		r.clock = time.Now
	}
	switch {
	case cfg.Headroom == 0:
		r.tput.headroom = 0.1
	case cfg.Headroom < 0:
		r.tput.headroom = -1 // off
	case cfg.Headroom >= 1:
		return nil, fmt.Errorf("resource %q: Headroom %v: want a fraction below 1", name, cfg.Headroom)
	default:
		r.tput.headroom = cfg.Headroom
	}
	r.tput.memory = cfg.CapacityMemory
	if r.tput.memory == 0 {
		r.tput.memory = 30 * time.Second
	}
	if r.tput.memory < 0 {
		return nil, fmt.Errorf("resource %q: CapacityMemory %v: must be positive", name, cfg.CapacityMemory)
	}
	if r.retryAfter == 0 {
		r.retryAfter = time.Second
	}
	if r.maxRetryAfter == 0 {
		r.maxRetryAfter = time.Minute
	}
	if r.retryAfter < 0 || r.maxRetryAfter < r.retryAfter {
		return nil, fmt.Errorf("resource %q: RetryAfter %v, MaxRetryAfter %v: want 0 < RetryAfter ≤ MaxRetryAfter", name, r.retryAfter, r.maxRetryAfter)
	}
	if !cfg.NoConcurrencyLimit {
		if r.conc, err = NewGradientLimit(cfg.Concurrency); err != nil {
			return nil, fmt.Errorf("resource %q: %w", name, err)
		}
		r.conc.setClock(r.clock)
	}
	if !cfg.NoDeadline {
		if r.dl, err = NewDeadlineGate(cfg.Deadline); err != nil {
			return nil, fmt.Errorf("resource %q: %w", name, err)
		}
	}
	r.shadow.Store(cfg.Shadow)
	r.refreshRefusals(r.clock())
	return r, nil
}

// Name returns the resource's name.
func (r *Resource) Name() string { return r.name }

// Acquire decides whether a request at level l may proceed. Refused requests
// get a *Refusal (wrapping ErrRefused) saying why and when to retry; the
// refusal path takes no lock and allocates nothing. The context supplies the
// deadline for deadline awareness. An admitted request must be released
// with Release.
func (r *Resource) Acquire(ctx context.Context, l Level) (Permit, error) {
	if l > MaxLevel {
		l = MaxLevel
	}
	p := l.Priority()
	st := &r.stats[p.index()]
	shadow := r.shadow.Load()

	// The clock is read only when needed (a pin's expiry, a deadline):
	// on some machines reading it costs more than the rest of a refusal.
	var now time.Time
	r.ctrl.Record(l)
	reason, pinned := r.ctrl.checkUnpinned(l)
	if pinned {
		now = r.clock()
		reason = r.ctrl.Check(l, now)
	}
	if reason != ReasonNone && !shadow {
		return r.refuse(st, reason)
	}
	marginal := r.ctrl.Marginal()
	if reason == ReasonNone && r.dl != nil && p >= marginal {
		// Only the marginal priority and below: a request more important
		// than what is being shed is never refused while less important
		// ones are admitted, even if it may be served late.
		if d, ok := ctx.Deadline(); ok {
			if now.IsZero() {
				now = r.clock()
			}
			if !r.dl.Allow(d, now) {
				reason = ReasonDeadline
				if !shadow {
					return r.refuse(st, reason)
				}
			}
		}
	}
	if r.conc != nil {
		if p < marginal {
			// More important than the priority being shed at the margin:
			// the gate takes its slot but does not refuse it, so a
			// priority never loses a request to the gate while less
			// important traffic is still admitted. In shadow mode too:
			// the counts are enforcement's, and the controller reads
			// this traffic as taken past the gate (the throughput
			// target's, the standing queue's).
			r.conc.take(p)
		} else if !r.conc.Acquire(p, shadow) && reason == ReasonNone {
			reason = ReasonConcurrency
			if !shadow {
				return r.refuse(st, reason)
			}
		}
	} else {
		r.inflight.Add(1)
	}
	if reason != ReasonNone {
		st.wouldShed[reason].Add(1)
	}
	st.admitted.Add(1)
	pm := Permit{r: r, prio: p}
	if r.dl != nil {
		if d, ok := ctx.Deadline(); ok {
			if now.IsZero() {
				now = r.clock()
			}
			pm.timed, pm.budget = true, d.Sub(now)
		}
	}
	return pm, nil
}

func (r *Resource) refuse(st *prioStats, reason Reason) (Permit, error) {
	st.refused[reason].Add(1)
	return Permit{}, r.refusals[reason].Load()
}

// Precheck refuses a request at level l if the threshold (or a pin) already
// excludes it, before any work is spent on it: a gRPC tap handle calls it
// with labels from the headers, before the request is decoded. It returns
// nil when the request should go on to Acquire, which records it; a refused
// request is recorded and counted here. In shadow mode it never refuses.
// The caller passes the time it already read, so the pre-decode path reads
// the clock once.
func (r *Resource) Precheck(l Level, now time.Time) error {
	if l > MaxLevel {
		l = MaxLevel
	}
	reason := r.ctrl.Check(l, now)
	if reason == ReasonNone || r.shadow.Load() {
		return nil
	}
	r.ctrl.Record(l)
	_, err := r.refuse(&r.stats[l.Priority().index()], reason)
	return err
}

// Release ends an admitted request: latency is its service time and o says
// how it ended. Releasing the zero Permit does nothing.
func (r *Resource) Release(p Permit, latency time.Duration, o Outcome) {
	if p.r != r {
		return
	}
	sample := o == OutcomeSuccess || o == OutcomeDropped
	if r.conc != nil {
		r.conc.release(p.prio, latency, sample, o == OutcomeSuccess)
	} else {
		r.inflight.Add(-1)
	}
	if o == OutcomeSuccess && r.dl != nil {
		r.dl.Observe(latency)
	}
	if p.timed && o != OutcomeIgnored {
		// Dropped (timed out, or refused downstream) and Expired (never
		// released) did not finish in time whatever the latency says.
		r.timed.Add(1)
		r.invBudgets.Add(invBudget(p.budget))
		if o != OutcomeSuccess || latency > p.budget/2 {
			r.late.Add(1)
		}
	}
}

// invBudgetUnit scales the rate 1/budget to an integer: a budget of b
// adds invBudgetUnit·(1 s/b). Budgets are taken as at least minBudget,
// so that a release adds at most 1e9 and no plausible count of them
// overflows.
const (
	invBudgetUnit = 1e6
	minBudget     = time.Millisecond
)

// invBudget is what a release with budget b adds to Resource.invBudgets.
func invBudget(b time.Duration) uint64 {
	return uint64(invBudgetUnit * float64(time.Second) / float64(max(b, minBudget)))
}

// queueKeeps reports whether the queue at the end of the gate's tick, in
// flight and drained at the tick's rate of completions, keeps within
// waitShare of the budgets whose reciprocals average perSec (1/s): the
// time the last request admitted spends, queued and served, is at most
// that share of its budget, on the harmonic mean. Nothing completed with
// work in flight keeps nothing.
func queueKeeps(gr gateReading, perSec float64) bool {
	if gr.interval <= 0 {
		return false
	}
	return float64(gr.inflight)*gr.interval.Seconds()*perSec <= waitShare*float64(gr.completed)
}

// moveCause is the Cause of a move of the threshold: for a raise, the
// first of the causes that read overload (by); for a fall, measured room
// or a probe.
func moveCause(raised bool, by [NumCauses]bool, rd Reading) Cause {
	if !raised {
		if rd.Room > 0 {
			return CauseRoom
		}
		return CauseProbe
	}
	for c := range CauseRoom {
		if by[c] {
			return c
		}
	}
	return CauseSignal // unreachable: a raise needs one of the above
}

// ObserveQueueDelay feeds the queueing delay signal with the time one
// request waited between arriving and being handled.
func (r *Resource) ObserveQueueDelay(d time.Duration) { r.codel.Observe(d) }

// Tick is the control step, to be called every 100–250 ms by the resource's
// owner: it reads every signal, moves the threshold, refreshes the expected
// service time and the suggested retry delays, and returns the combined
// reading.
func (r *Resource) Tick(now time.Time) Reading {
	r.tickMu.Lock()
	defer r.tickMu.Unlock()
	rd := r.codel.Read(now)
	// What read overload, for the cause of a raise (see Cause).
	var by [NumCauses]bool
	by[CauseQueue] = rd.Overloaded
	if r.conc != nil {
		gr := r.conc.read(now)
		cr := gr.Reading
		// A full gate of limit L refuses about 1/(L+1) of what arrives
		// from the randomness of arrivals and service times alone (an
		// M/M/1/L queue at full load): refusals up to twice that are the
		// gate doing its job at capacity, not an excess.
		tol := max(r.gateTolerance, 2/float64(r.conc.Limit()+1))
		// The gate's refusals decayed over the last few ticks (a time
		// constant of about three ticks): a burst is not a trend.
		r.gateAll = gateDecay*r.gateAll + float64(gr.all)
		r.gateRefused = gateDecay*r.gateRefused + float64(gr.refused)
		share := 0.0
		if r.gateAll > 0 {
			share = r.gateRefused / r.gateAll
		}
		// A stall: with work waiting, the resource completed a small
		// share of what it completes when it works (or, before that is
		// measured, of what came to it) — a pause of the process, a hung
		// dependency. What the gate refuses then, or lets pile up, says
		// nothing about the mix, and shedding for it would empty
		// priorities, critical included, that fit once it ends: hold.
		expect := float64(gr.all)
		if c := r.tput.known(now); c > 0 {
			expect = c * gr.interval.Seconds()
		}
		stalled := gr.inflight >= int64(r.conc.Limit()) && float64(gr.completed) < stallShare*expect
		// A queue past the gate that keeps its deadlines, while the
		// traffic past the gate fits the throughput target: the queue a
		// resource kept near its target shows now and then (a one-worker
		// service at 90% holds nine in flight on average), not a margin
		// that does not fit. Read as overload it sheds the rest of the
		// marginal priority, and the measured room readmits it a second
		// later: the threshold hunts across the priority's edge. Whether
		// the traffic fits is the target's to say, and whether the queue
		// matters is the deadlines': the releases' (few late) and the
		// queue's at the tick (see waitShare).
		if r.tput.headroom >= 0 {
			// This tick's counts first: exemptFits reads them (the rate
			// since a move made last tick is this tick's).
			crit := r.demand(Critical)
			r.tput.observe(now, gr, crit-r.lastCritical)
			r.lastCritical = crit
		}
		// The late releases and the budgets before the releases (Release
		// adds them after), so that neither is counted without its
		// release.
		late := r.late.Load()
		inv := r.invBudgets.Load()
		timed := r.timed.Load()
		dTimed, dLate, dInv := timed-r.lastTimed, late-r.lastLate, inv-r.lastInv
		r.lastTimed, r.lastLate, r.lastInv = timed, late, inv
		keepsDeadlines := dTimed >= minTimed && float64(dLate) <= lateShare*float64(dTimed) &&
			queueKeeps(gr, float64(dInv)/invBudgetUnit/float64(dTimed)) && r.tput.exemptFits(now)
		switch {
		case stalled:
			cr = Reading{Saturated: true}
		case r.sinceRaise < raiseSettle && !gr.MarginUnfit && (gr.standing || gr.refused >= minGateRefusals):
			// Just after a raise the queue the overload built still
			// drains, and the gate refuses (or the exempt traffic
			// overflows) for that alone: wait for the raise to show
			// before shedding more. A queue that still grows while the
			// resource works shows the raise fell short.
			cr = Reading{Saturated: true}
		case gr.standing && keepsDeadlines:
			cr = Reading{Saturated: true}
		case gr.standing:
			// Traffic more important than the margin, which the gate
			// does not refuse, alone held more than twice the limit in
			// flight: the threshold must shed into it.
		case gr.refused < minGateRefusals:
			cr = Reading{} // nothing refused, or a stray refusal or two
		case float64(gr.refused) > tol*float64(gr.all) && share > tol:
			// The gate refuses more than it may trim, this tick and over
			// the last few: shed the difference by cohorts.
			cr.Excess = min(cr.Excess, share-tol)
		case share >= tol/2:
			// The gate trims bursts of the marginal traffic as a full
			// gate does: at capacity, with nothing more to shed and
			// nothing to readmit.
			cr = Reading{Saturated: true}
		default:
			cr = Reading{} // a burst; room to readmit
		}
		by[CauseStanding] = cr.Overloaded && (gr.standing || cr.MarginUnfit)
		by[CauseGate] = cr.Overloaded && !by[CauseStanding]
		if r.tput.headroom >= 0 {
			tr := r.tput.read(now)
			if tr.Fit || tr.Room > 0 && !cr.Overloaded {
				// A surge measured against the capacity outranks
				// everything the gate says, and measured room outranks
				// a gate that trims within its tolerance: the threshold
				// lets through less than the resource serves, and the
				// gate is there for bursts.
				by[CauseStanding], by[CauseGate] = false, false
				cr = tr
			} else {
				cr = cr.Or(tr)
			}
			by[CauseSurge] = tr.Overloaded && tr.Fit
			by[CauseThroughput] = tr.Overloaded && !tr.Fit
		}
		rd = rd.Or(cr)
	}
	for _, s := range r.signals {
		sr := s.Read(now)
		by[CauseSignal] = by[CauseSignal] || sr.Overloaded
		rd = rd.Or(sr)
	}
	before := r.ctrl.Threshold()
	after := r.ctrl.Update(now, rd)
	if after != before {
		r.tput.reset()
		r.moves[moveCause(after > before, by, rd)]++
	}
	if after > before {
		r.sinceRaise = 0
	} else if r.sinceRaise < raiseSettle {
		r.sinceRaise++
	}
	if r.dl != nil {
		r.dl.Update(now)
	}
	r.refreshRefusals(now)
	r.last = rd
	return rd
}

// Run calls Tick every interval until ctx is done, and returns ctx's error.
// It is a convenience for owners without a control loop of their own; it
// runs in the caller's goroutine.
func (r *Resource) Run(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		return fmt.Errorf("shed: resource %q: tick interval %v must be positive", r.name, interval)
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			r.Tick(r.clock())
		}
	}
}

// refreshRefusals rebuilds the shared refusal values whose retry delay
// changed. Keeping the old pointer when nothing changed lets adapters cache
// their encoding of a refusal by identity.
func (r *Resource) refreshRefusals(now time.Time) {
	var delays [NumReasons]time.Duration
	delays[ReasonThreshold] = r.retryAfter
	delays[ReasonOverride] = r.retryAfter
	if _, until, ok := r.ctrl.Pinned(now); ok {
		delays[ReasonOverride] = min(max(until.Sub(now), r.retryAfter), r.maxRetryAfter)
	}
	// A full concurrency gate frees up within a few service times.
	delays[ReasonConcurrency] = 10 * time.Millisecond
	if r.conc != nil {
		delays[ReasonConcurrency] = min(max(2*r.conc.Baseline(), 10*time.Millisecond), r.retryAfter)
	}
	delays[ReasonDeadline] = 0 // the caller's deadline cannot be met
	for reason := ReasonThreshold; reason < NumReasons; reason++ {
		if cur := r.refusals[reason].Load(); cur == nil || cur.RetryAfter != delays[reason] {
			r.refusals[reason].Store(newRefusal(r.name, reason, delays[reason]))
		}
	}
}

// Pin fixes the threshold until the given time (see Controller.Pin).
func (r *Resource) Pin(l Level, until time.Time) error {
	if err := r.ctrl.Pin(l, until); err != nil {
		return fmt.Errorf("resource %q: %w", r.name, err)
	}
	r.tickMu.Lock()
	defer r.tickMu.Unlock()
	r.refreshRefusals(r.clock())
	return nil
}

// Unpin removes any pin.
func (r *Resource) Unpin() { r.ctrl.Unpin() }

// SetShadow turns shadow (dry-run) mode on or off at runtime. In shadow
// mode every refusal is counted as "would shed" under its reason and the
// request is admitted; the controller keeps running, so the counts show
// what enforcement would do (overstated while overload persists, since
// nothing is actually shed).
func (r *Resource) SetShadow(on bool) { r.shadow.Store(on) }

// Shadow reports whether shadow mode is on.
func (r *Resource) Shadow() bool { return r.shadow.Load() }

// Counts returns the cumulative counters for priority p.
func (r *Resource) Counts(p Priority) PriorityCounts {
	st := &r.stats[p.index()]
	c := PriorityCounts{Admitted: st.admitted.Load()}
	for i := range c.Refused {
		c.Refused[i] = st.refused[i].Load()
		c.WouldShed[i] = st.wouldShed[i].Load()
	}
	return c
}

// demand returns the requests of priority p offered so far, admitted or
// refused.
func (r *Resource) demand(p Priority) uint64 {
	st := &r.stats[p.index()]
	n := st.admitted.Load()
	for i := range st.refused {
		n += st.refused[i].Load()
	}
	return n
}

// Controller returns the resource's admission controller.
func (r *Resource) Controller() *Controller { return r.ctrl }

// Concurrency returns the adaptive concurrency limit, nil when turned off.
func (r *Resource) Concurrency() *GradientLimit { return r.conc }

// QueueDelay returns the queueing delay signal.
func (r *Resource) QueueDelay() *CoDel { return r.codel }

// Inflight returns the number of admitted requests not yet released.
func (r *Resource) Inflight() int {
	if r.conc != nil {
		return r.conc.Inflight()
	}
	return int(r.inflight.Load())
}

// Deadlines returns the deadline gate, nil when turned off.
func (r *Resource) Deadlines() *DeadlineGate { return r.dl }

// Status is a snapshot of a resource's control state, for operators.
type Status struct {
	Name            string
	Threshold       Level     // in force now (the pin, if any)
	AutoThreshold   Level     // the controller's own
	Pinned          bool      // a pin is in force
	PinnedUntil     time.Time // when the pin expires
	Shadow          bool
	Overloaded      bool // the last tick's combined reading
	Limit           int  // adaptive concurrency limit; 0 when off
	Inflight        int
	QueueDelay      time.Duration // min queueing delay of the last CoDel interval
	ExpectedService time.Duration // deadline awareness; 0 when off or unknown
	// Capacity is the throughput, in requests per second, the resource
	// last sustained with its gate full, while it is trusted; 0 unknown.
	Capacity float64
	// Moves counts the automatic threshold's moves since the resource was
	// made, by Cause.
	Moves [NumCauses]uint64
}

// Status returns a snapshot at now.
func (r *Resource) Status(now time.Time) Status {
	s := Status{Name: r.name, Shadow: r.Shadow()}
	// The threshold under the lock Tick moves it under, so that it and
	// Moves are of the same tick.
	r.tickMu.Lock()
	s.AutoThreshold = r.ctrl.Threshold()
	s.Overloaded = r.last.Overloaded
	s.Capacity = r.tput.known(now)
	s.Moves = r.moves
	r.tickMu.Unlock()
	s.Threshold = s.AutoThreshold
	if l, until, ok := r.ctrl.Pinned(now); ok {
		s.Threshold, s.Pinned, s.PinnedUntil = l, true, until
	}
	if r.conc != nil {
		s.Limit, s.Inflight = r.conc.Limit(), r.conc.Inflight()
	} else {
		s.Inflight = int(r.inflight.Load())
	}
	if d, ok := r.codel.Delay(); ok {
		s.QueueDelay = d
	}
	if r.dl != nil {
		s.ExpectedService = r.dl.Expected()
	}
	return s
}
