package shed

import "time"

// Reading is one control tick's verdict on a resource's load.
type Reading struct {
	// Overloaded says the resource is past its capacity and the threshold
	// should rise.
	Overloaded bool
	// Excess estimates the fraction (0–1) of the currently admitted traffic
	// that must go for the resource to fit its capacity, when the signal can
	// measure it; 0 means unknown. The controller sheds at least its raise
	// step and at most its maximum step per tick whatever Excess says.
	Excess float64
	// Critical says critical demand alone exceeds capacity. Only then may
	// the controller's threshold enter the critical band.
	Critical bool
	// Saturated says the resource is at its capacity without being past
	// it (a gate trimming bursts, latency at its limit): there is no room
	// to readmit shed traffic, and no need to shed more. The controller
	// holds its threshold.
	Saturated bool
	// MarginUnfit says the traffic more important than the marginal
	// priority (the least important one still admitted) alone overloads
	// the resource: none of the marginal priority fits, so a raise sheds
	// all that is left of it at once, however large a share of the
	// traffic that is.
	MarginUnfit bool
	// Fit says Excess was measured against the resource's capacity on the
	// traffic of the last tick or two (a surge, see throughputTarget):
	// the controller sheds it in one raise, computed on the demand of the
	// last two ticks, across priorities if that is where it falls, rather
	// than a bounded step per tick and one priority per raise. The
	// critical band still needs Critical.
	Fit bool
	// Room is the fraction of the currently admitted traffic that could be
	// added before the resource reaches its target load, when a signal
	// measured it beyond its noise (the throughput target); 0 means
	// unknown. The controller then lowers at once, without waiting out its
	// hold, by most of the room.
	Room float64
}

// Or combines two readings: overloaded if either is, the larger excess (and
// room), and critical (or saturated) if either says so. Or is the OR/max combinator for signals.
func (r Reading) Or(o Reading) Reading {
	r.Overloaded = r.Overloaded || o.Overloaded
	r.Critical = r.Critical || o.Critical
	r.Saturated = r.Saturated || o.Saturated
	r.MarginUnfit = r.MarginUnfit || o.MarginUnfit
	r.Fit = r.Fit || o.Fit
	if o.Excess > r.Excess {
		r.Excess = o.Excess
	}
	if o.Room > r.Room {
		r.Room = o.Room
	}
	return r
}

// Signal is a pluggable overload detector, read once per control tick by
// the owner of a resource. Read may advance the signal's own state (close a
// measurement window), so a signal must be read by one owner only.
type Signal interface {
	Read(now time.Time) Reading
}

// SignalFunc adapts a function to Signal (e.g. a CPU or heap check).
type SignalFunc func(now time.Time) Reading

// Read calls f.
func (f SignalFunc) Read(now time.Time) Reading { return f(now) }

// AnyOf is a Signal that reads every signal in it and combines the readings
// with Reading.Or: overloaded when any of them is.
type AnyOf []Signal

// Read reads all signals in order.
func (a AnyOf) Read(now time.Time) Reading {
	var r Reading
	for _, s := range a {
		r = r.Or(s.Read(now))
	}
	return r
}

// Reason says why a request was refused.
type Reason uint8

// Reasons for refusal. ReasonNone means admitted.
const (
	ReasonNone        Reason = iota
	ReasonThreshold          // below the controller's threshold
	ReasonOverride           // below an operator's pinned threshold
	ReasonConcurrency        // the adaptive concurrency limit is full for this priority
	ReasonDeadline           // the remaining deadline is shorter than the expected service time
)

// NumReasons bounds the Reason values, for tables indexed by reason.
const NumReasons = 5

var reasonNames = [NumReasons]string{"none", "threshold", "override", "concurrency", "deadline"}

// String returns the reason's metric label.
func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return "unknown"
}
