package shed

import (
	"math"
	"time"
)

// rateTolerance is the least share by which the admitted rate must pass the
// throughput target to count as overload; the tolerance is wider when the
// count the rate is taken from is small (two standard deviations of a
// Poisson count), so that noise alone rarely moves the threshold.
const rateTolerance = 0.03

// rateDecay is the weight of the past in the decayed admitted count, per
// tick: a time constant of about twenty ticks. The count starts afresh at
// every move of the threshold, so it is a plain sum over the ticks since
// the move (the tolerance narrowing as it grows) until it reaches about
// two seconds of traffic.
const rateDecay = 0.95

// minFull is the least full time in a tick for the tick to count in the
// capacity: a shorter one is a request or two.
const minFull = 5 * time.Millisecond

// minFullDone is how many requests served while the gate was full the
// capacity must rest on to be trusted (counted since it was last
// forgotten, without decay, so that a slow resource gets there too): a
// rate from a few, a gate that filled for a moment, is off by half or
// more, and read as the capacity it would shed traffic that fits.
const minFullDone = 100

// stallShare: a tick whose gate was full while it served at under this
// share of the measured capacity is a stall, left out of the measure.
const stallShare = 0.25

// fitFullDone is how many requests served while full a capacity must rest
// on before a surge is shed by it in one move (Reading.Fit): more than it
// takes to be trusted, since a capacity measured low would shed at once
// traffic that fits, critical included.
const fitFullDone = 3 * minFullDone

// fullDecay is the weight of the past in the capacity's sums, per tick
// that had full time: the capacity rests on the last fifty or so of them.
// On ten it strays by ±5% (p5–p95 for a one-worker
// service), as far as the headroom between the target and a queue that
// misses deadlines, and the threshold then hunts across a priority's edge
// on the noise: whether the traffic past the gate fits the target (see
// exemptFits) cannot be told. A capacity that changed is followed more
// slowly: half-way in about 35 full ticks (3.5 s at 100 ms), 90% in about
// 115; one not measured for memory is forgotten.
const fullDecay = 0.98

// minRateTicks is how many ticks after a reset (a move of the threshold)
// the admitted rate is first read; until then a known capacity holds the
// threshold, so that it moves only on what the last move brought.
const minRateTicks = 3

// throughputTarget learns the throughput a resource sustains when it is
// pressed — the completions while its concurrency gate is full, over the
// time it was full, which is what the resource can do, not what it was
// offered — and holds the traffic the threshold lets through to a share of
// it when the gate cannot.
//
// The concurrency gate bounds the queue by refusing the marginal priority
// (within a tolerance, beyond which the threshold sheds its cohorts), but
// more important traffic takes its slots past the gate. When that traffic
// alone passes (1 − headroom) × the measured throughput, the gate cannot
// hold the queue, and a queue served near 100% of its capacity has no bound
// on its delay: a one-worker service at 96% shows a p99 of over a hundred
// service times. The threshold must then shed into the next priority, and
// by how much is measured, not probed: enough that what it lets through
// fits the target. The same measure says when there is room, so after a
// surge the threshold comes down at once by most of it instead of probing
// a few percent per hold. A capacity measured longer ago than memory is
// forgotten, so a resource that grew is not held at its old size.
//
// It is a state machine: observe takes one tick's counts, read gives the
// verdict; time is passed in.
type throughputTarget struct {
	headroom float64
	memory   time.Duration

	capacity float64   // completions per second while the gate is full; 0: unknown
	measured time.Time // when it was last measured
	fullDone float64   // requests served while the gate was full, decayed per tick that had full time
	fullSec  float64   // the full time they took, decayed alike
	fullSeen uint64    // requests served while full since the capacity was last forgotten
	adm, dur float64   // arrivals at the gate and seconds since the last reset, decayed per tick
	exempt   float64   // of the arrivals, those taken past the gate, decayed alike
	ticks    int       // ticks observed since the last reset

	// The last recentTicks ticks' arrivals (all, those taken past the
	// gate, and the critical demand) and seconds, undecayed: a surge or a
	// fall in demand shows here long before the decayed rate follows it.
	recentAll, recentEx, recentCrit, recentSec [recentTicks]float64
	recentServed, recentRef                    [recentTicks]float64
	lastSec, prevSec                           float64 // the last tick's length and the one's before it, resets or not
}

// surgeTicks is how many of the last ticks (since the last move) a surge
// is read over: the last one, and the last two, so that a surge is shed
// within a tick or two of its start, on a count large enough to size it.
const surgeTicks = 2

// surgeSigmas and surgeMargin: the traffic taken past the gate over the
// last tick, or the last two, must pass what the target would bring over
// them by this many standard deviations of that count and by this share
// to read as a surge. Smaller excesses are the decayed rate's, and the
// gate's.
const (
	surgeSigmas = 4
	surgeMargin = 0.25
)

// gateSigmas, gateMargin, gateShare and gateRise: all the traffic that
// came to the gate over the last recentTicks ticks must pass what the
// target would bring over them by gateSigmas standard deviations of that
// count and by gateMargin, the gate must have refused at least gateShare
// of the difference, and the rate must pass the decayed rate by gateRise,
// for it to read as a surge the gate absorbs: a step in demand, not a
// threshold standing a few percent over a target measured a few percent
// low. The gate's refusals corroborate the count, so the bar is lower
// than a surge's past the gate alone.
const (
	gateSigmas = 3
	gateMargin = 0.1
	gateShare  = 0.5
	gateRise   = 0.25
)

// gateQuietTicks is how many ticks the threshold must have stood still
// for a surge the gate absorbs to move it: the reading is for a step in
// demand that the threshold has not answered yet; once it moved, what is
// left is the gate's and the decayed rate's, and answering it again at
// once would hunt on the noise of the capacity measured.
const gateQuietTicks = 10

// recentTicks is how many of the last ticks the recent rate is taken over.
const recentTicks = 3

// recentSigmas is how many standard deviations of the count expected at
// the target the recent count must fall short by to read as room: more
// than the decayed rate's two, as it is read every tick over a short
// window.
const recentSigmas = 3

// recentFall is the least share by which the recent rate must fall short
// of the target as well: the recent rate is there for the end of a surge,
// a fall by a third or more, and real traffic varies from tick to tick by
// more than a Poisson count does.
const recentFall = 0.3

// observe records one tick of the gate: the requests that came to it (the
// demand the threshold let through, whether the gate then admitted them or
// not) and of those the ones more important than the margin, which the gate
// does not refuse; those that completed; and how long the gate was full and
// what completed meanwhile.
//
// critical is the critical demand of the tick, refused or not.
func (t *throughputTarget) observe(now time.Time, g gateReading, critical uint64) {
	sec := g.interval.Seconds()
	if sec <= 0 {
		return
	}
	// The full time cannot exceed the tick; a clock that stepped could
	// make it seem to.
	full := min(g.full, g.interval)
	stalled := t.fullSeen >= minFullDone && float64(g.fullDone) < stallShare*t.capacity*full.Seconds()
	if full >= minFull && g.fullDone > 0 && !stalled {
		// The requests served while the gate was full, over that time:
		// for as long as it is full the resource works flat out. Summed
		// with a decay, so that a resource whose capacity changed is
		// followed. A tick in which nothing was served, or in which it
		// was served at a small share of the rate measured, is a stall (a
		// pause of the process, a dependency that hung), which says
		// nothing about what the resource does when it works.
		if now.Sub(t.measured) > t.memory {
			t.fullDone, t.fullSec, t.fullSeen = 0, 0, 0 // forgotten: start afresh
		}
		t.fullDone = fullDecay*t.fullDone + float64(g.fullDone)
		t.fullSec = fullDecay*t.fullSec + full.Seconds()
		t.fullSeen += g.fullDone
		t.capacity, t.measured = t.fullDone/t.fullSec, now
	} else if x := float64(g.completed) / sec; g.refused > 0 && t.known(now) > 0 && x >= 0.8*t.capacity {
		// Hardly full, but full enough to refuse, and serving about what
		// was measured: the measurement still holds. Without this a long
		// surge that the gate trims would outlive the capacity it was
		// measured at.
		t.measured = now
	}
	t.adm = rateDecay*t.adm + float64(g.all)
	t.exempt = rateDecay*t.exempt + float64(g.exempt)
	t.dur = rateDecay*t.dur + sec
	i := t.ticks % recentTicks
	t.recentAll[i], t.recentEx[i], t.recentCrit[i], t.recentSec[i] = float64(g.all), float64(g.exempt), float64(critical), sec
	t.recentServed[i], t.recentRef[i] = float64(g.served), float64(g.refused)
	t.prevSec, t.lastSec = t.lastSec, sec
	t.ticks++
}

// known returns the measured capacity while it is trusted (measured
// within memory, from at least minFullDone requests), else 0.
func (t *throughputTarget) known(now time.Time) float64 {
	if now.Sub(t.measured) > t.memory || t.fullSeen < minFullDone {
		return 0
	}
	return t.capacity
}

// exemptFits reports whether the traffic taken past the gate since the
// last reset (the priorities more important than the margin) comes within
// the target, on the point estimate: the capacity is known and that
// traffic alone would keep the resource at or under (1 − headroom) of it.
// Then a standing queue past the gate is what a resource kept near its
// target shows at times, not a sign that the margin does not fit.
func (t *throughputTarget) exemptFits(now time.Time) bool {
	c := t.known(now)
	return c > 0 && t.headroom >= 0 && t.dur > 0 && t.exempt/t.dur <= (1-t.headroom)*c
}

// reset forgets the admitted rate: after the threshold moved, the traffic
// admitted before says nothing about what is admitted now.
func (t *throughputTarget) reset() { t.adm, t.exempt, t.dur, t.ticks = 0, 0, 0, 0 }

// read compares what the threshold lets through with the target. When the
// traffic the gate does not refuse alone passes the target by more than
// the tolerance, that is overload, with the excess of all of it to shed.
// Otherwise the gate holds the queue: all of it short of the target by
// more than the tolerance is room (the share that could be added), and
// anything else holds the threshold (saturated). It says nothing while the
// capacity is unknown or forgotten, and holds until minRateTicks ticks were
// observed since the last reset.
func (t *throughputTarget) read(now time.Time) Reading {
	if t.known(now) == 0 {
		return Reading{}
	}
	if r, ok := t.surge(); ok && t.fullSeen >= fitFullDone {
		return r
	}
	if t.ticks < minRateTicks || t.dur == 0 {
		return Reading{Saturated: true} // measuring what the last move did
	}
	rate, exempt := t.adm/t.dur, t.exempt/t.dur
	target := (1 - t.headroom) * t.capacity
	if exempt > target*(1+tolerance(t.exempt)) {
		return Reading{Overloaded: true, Excess: 1 - target/rate}
	}
	// The decayed rate has a time constant of about two seconds: when
	// demand falls (a surge ended) the last few ticks show it long before
	// it does, and waiting for the decay would keep refusing traffic that
	// fits. Read over a few ticks only, the count must fall short of what
	// the target would bring by more standard deviations, and by a third.
	var n, sec float64
	for i := range min(t.ticks, recentTicks) {
		n += t.recentAll[i]
		sec += t.recentSec[i]
	}
	recent := math.Inf(1)
	expect := target * sec
	if sec > 0 && n < expect-recentSigmas*math.Sqrt(expect) && n < (1-recentFall)*expect {
		recent = n / sec
	}
	// The decayed rate lags a rise as much as a fall: no room while the
	// last few ticks brought the target or more.
	if rate < target*(1-tolerance(t.adm)) && n < expect || recent < math.Inf(1) {
		return room(min(rate, recent), target)
	}
	return Reading{Saturated: true}
}

// surge reads the last one or two ticks since the last move: when the
// traffic taken past the gate alone outruns the target by far, a surge is
// under way, and the queue grows by the difference every tick the
// threshold waits. It is shed at once (Fit), sized on those ticks; the
// critical band is opened when critical demand alone outruns the target
// as clearly. So is a step in demand that the gate absorbs, read over the
// last three ticks once the threshold stood still for a second: all the
// traffic at the gate outrunning the target, with the gate refusing the
// difference (see gateSigmas).
func (t *throughputTarget) surge() (Reading, bool) {
	var all, ex, crit, served, ref, sec float64
	for k := range min(t.ticks, recentTicks) {
		i := (t.ticks - 1 - k) % recentTicks
		all += t.recentAll[i]
		ex += t.recentEx[i]
		crit += t.recentCrit[i]
		served += t.recentServed[i]
		ref += t.recentRef[i]
		sec += t.recentSec[i]
		// The last tick alone shows a large surge one tick sooner; the
		// last two show a smaller one. Not the last alone after a long
		// tick (a pause of the process, whose tick came late): what
		// arrived in the pause reaches the gate in the tick after it.
		if k == 0 && t.prevSec > 1.5*sec {
			continue
		}
		// While a surge queues, the resource serves flat out: what it
		// served is its capacity too, should the measure (taken while a
		// gate of a few is full, some of them on their way out) fall
		// short of it.
		expect := (1 - t.headroom) * max(t.capacity*sec, served)
		outruns := func(n float64) bool {
			return n > expect+surgeSigmas*math.Sqrt(expect) && n > (1+surgeMargin)*expect
		}
		if sec <= 0 {
			continue
		}
		if k < surgeTicks && outruns(ex) {
			return Reading{Overloaded: true, Fit: true, Excess: 1 - expect/all, Critical: outruns(crit)}, true
		}
		// A surge the gate absorbs: the traffic past the gate fits the
		// target, but all of it does not, and the gate refuses the
		// difference, from the marginal priority at random. Left to the
		// gate, it reads as the gate trimming bursts within its tolerance
		// (which at a small limit is a large share), the threshold does
		// not move until the decayed rate catches up seconds later, and
		// the acceptance changes again when it does. Shed it by cohorts
		// now, sized on the target, all of it (the excess is measured
		// against what the resource served meanwhile, not only against a
		// capacity that errs low, and the gate's refusals bear it out):
		// the gate keeps the bursts.
		if k == recentTicks-1 && t.ticks >= gateQuietTicks && all/sec > (1+gateRise)*t.adm/t.dur && all > expect+gateSigmas*math.Sqrt(expect) && all > (1+gateMargin)*expect && ref >= gateShare*(all-expect) {
			return Reading{Overloaded: true, Fit: true, Excess: min((1-expect/all)/fitGain, 1), Critical: outruns(crit)}, true
		}
	}
	return Reading{}, false
}

// room is the reading for a rate below the target: the share that could be
// added, at most all of it again.
func room(rate, target float64) Reading {
	if rate == 0 {
		return Reading{Room: 1}
	}
	return Reading{Room: min(target/rate-1, 1)}
}

// tolerance is how far a rate taken from a count of n may be off the
// target before it counts: two standard deviations of a Poisson count, and
// at least rateTolerance.
func tolerance(n float64) float64 { return max(rateTolerance, 2/math.Sqrt(max(n, 1))) }
