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

// minRateTicks is how many ticks after a reset (a move of the threshold)
// the admitted rate is first read; until then a known capacity holds the
// threshold, so that it moves only on what the last move brought.
const minRateTicks = 3

// throughputTarget learns the throughput a resource sustains when it is
// pressed — its concurrency gate full through a whole tick, so that the
// completions of the tick are what the resource can do, not what it was
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

	capacity float64   // completions per second while pressed (moving average); 0: unknown
	measured time.Time // when it was last measured
	adm, dur float64   // arrivals at the gate and seconds since the last reset, decayed per tick
	exempt   float64   // of the arrivals, those taken past the gate, decayed alike
	ticks    int       // ticks observed since the last reset
}

// observe records one tick of the gate: the requests that came to it (the
// demand the threshold let through, whether the gate then admitted them or
// not) and of those the ones more important than the margin, which the gate
// does not refuse; those that completed; and whether the gate stayed full
// all through the tick, or refused requests.
func (t *throughputTarget) observe(now time.Time, g gateReading) {
	sec := g.interval.Seconds()
	if sec <= 0 {
		return
	}
	x := float64(g.completed) / sec
	switch {
	case g.pressed && g.completed > 0:
		if t.known(now) == 0 {
			t.capacity = x
		} else {
			t.capacity = 0.7*t.capacity + 0.3*x
		}
		t.measured = now
	case g.refused > 0 && t.known(now) > 0 && x >= 0.8*t.capacity:
		// Not full all tick, but full enough to refuse, and serving about
		// what was measured: the measurement still holds. Without this a
		// long surge that the gate trims, rarely full for a whole tick,
		// would outlive the capacity it was measured at.
		t.measured = now
	}
	t.adm = rateDecay*t.adm + float64(g.all)
	t.exempt = rateDecay*t.exempt + float64(g.exempt)
	t.dur = rateDecay*t.dur + sec
	t.ticks++
}

// known returns the measured capacity while it is trusted (measured
// within memory), else 0.
func (t *throughputTarget) known(now time.Time) float64 {
	if now.Sub(t.measured) > t.memory {
		return 0
	}
	return t.capacity
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
	if t.ticks < minRateTicks || t.dur == 0 {
		return Reading{Saturated: true} // measuring what the last move did
	}
	rate, exempt := t.adm/t.dur, t.exempt/t.dur
	target := (1 - t.headroom) * t.capacity
	switch {
	case exempt > target*(1+tolerance(t.exempt)):
		return Reading{Overloaded: true, Excess: 1 - target/rate}
	case rate >= target*(1-tolerance(t.adm)):
		return Reading{Saturated: true}
	case rate == 0:
		return Reading{Room: 1}
	}
	return Reading{Room: min(target/rate-1, 1)}
}

// tolerance is how far a rate taken from a count of n may be off the
// target before it counts: two standard deviations of a Poisson count, and
// at least rateTolerance.
func tolerance(n float64) float64 { return max(rateTolerance, 2/math.Sqrt(max(n, 1))) }
