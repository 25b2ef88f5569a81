// Package shedtest has the helpers levee's tests share: a hand-moved clock
// for the Clock and Now fields that shed's types and levee's servers take,
// a wait for a condition that another goroutine makes true, a log sink
// that a test reads while the code under test writes it, and the rules
// by which a threshold counts as settled (Settle) and the acceptance as
// converged (Converged) after a step, which levee surge and shed's
// simulations must judge alike.
//
// It imports nothing from levee, so the tests of every package can use it.
// It sits under shed, the bottom of levee's import graph, because shed must
// not import limiter: a helper placed anywhere else could not serve shed's
// own tests.
package shedtest

import (
	"bytes"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Log is a sink for a logger (slog's handlers, log.Logger) that a test
// reads while the code under test still writes to it from its own
// goroutines. The zero value is ready to use.
type Log struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write implements io.Writer.
func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// String returns everything written so far.
func (l *Log) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// Count returns how many times s was written so far.
func (l *Log) Count(s string) int { return strings.Count(l.String(), s) }

// Clock is a clock that moves only when told. It is safe for concurrent use:
// the code under test may read it from its own goroutines while the test
// moves it.
type Clock struct {
	ns  atomic.Int64
	loc *time.Location
}

// NewClock returns a Clock reading start.
func NewClock(start time.Time) *Clock {
	c := &Clock{loc: start.Location()}
	c.ns.Store(start.UnixNano())
	return c
}

// Now returns the clock's time, in the location of the time it started at.
func (c *Clock) Now() time.Time { return time.Unix(0, c.ns.Load()).In(c.loc) }

// Add moves the clock by d.
func (c *Clock) Add(d time.Duration) { c.ns.Add(int64(d)) }

// Set moves the clock to t.
func (c *Clock) Set(t time.Time) { c.ns.Store(t.UnixNano()) }

// Pauses between two checks of a condition: a tenth of the time waited so
// far, within these bounds.
const (
	minPoll = time.Millisecond
	maxPoll = 50 * time.Millisecond
)

// Eventually calls check until it returns nil, and fails the test with what
// and check's last error if that has not happened within the given time.
// Between calls it pauses for a tenth of the time waited so far (1 ms at
// least, 50 ms at most): a test that logs how long a condition took to hold
// reads it to about a tenth, and a slow condition is not polled hard. The
// bound guards against hangs: tests do not assert how fast anything
// happens.
func Eventually(t testing.TB, within time.Duration, what string, check func() error) {
	t.Helper()
	start := time.Now()
	for {
		err := check()
		if err == nil {
			return
		}
		waited := time.Since(start)
		if waited > within {
			t.Fatalf("%s: not so after %v: %v", what, within, err)
		}
		time.Sleep(min(max(waited/10, minPoll), maxPoll))
	}
}

// Settle is how long after from a series came within ±0.05 of its final
// value (the median of its samples in the last 3 s before to) and held
// there for 1 s: the rule by which levee surge, and the simulations in
// shed's tests, judge a threshold settled after a step. at[i] is when
// sample v[i] was taken, in order; samples outside [from, to) are
// ignored. It returns to − from if the series never settled, or has no
// sample in its last 3 s.
func Settle(at []time.Duration, v []float64, from, to time.Duration) time.Duration {
	const band, tail, hold = 0.05, 3 * time.Second, time.Second
	var last []float64
	for i, t := range at {
		if t >= to-tail && t >= from && t < to {
			last = append(last, v[i])
		}
	}
	if len(last) == 0 {
		return to - from
	}
	slices.Sort(last)
	final := last[len(last)/2]
	since := time.Duration(-1)
	for i, t := range at {
		if t < from || t >= to {
			continue
		}
		if d := v[i] - final; d > band || d < -band {
			since = -1
			continue
		}
		if since < 0 {
			since = t
		}
		if t-since >= hold {
			return since - from
		}
	}
	return to - from
}

// ConvergeBin is the width of the bins Converged reads.
const ConvergeBin = 250 * time.Millisecond

// Bin is one ConvergeBin of traffic: when it starts, the share of the
// offered requests admitted in it, and the p99 latency of those admitted.
type Bin struct {
	At         time.Duration
	Acceptance float64
	P99        time.Duration
}

// Converged is how long after from the acceptance, in consecutive bins of
// ConvergeBin starting at from, came within ±5% of its final value (the
// median of the bins starting in the last 3 s before to) with every bin's
// p99 at most maxP99, and held so for 1 s: the rule by which levee surge,
// and the simulations in shed's tests, judge the acceptance converged
// after a step. It also returns the largest relative swing of the
// acceptance from its final value from then on. It returns to − from (and
// no swing) if the acceptance never converged, or has no bin in its last
// 3 s.
func Converged(bins []Bin, maxP99 time.Duration, from, to time.Duration) (time.Duration, float64) {
	const tail, hold = 3 * time.Second, time.Second
	var last []float64
	for _, b := range bins {
		if b.At >= to-tail {
			last = append(last, b.Acceptance)
		}
	}
	if len(last) == 0 {
		return to - from, 0
	}
	slices.Sort(last)
	final := last[len(last)/2]
	ok := func(b Bin) bool {
		d := b.Acceptance - final
		return d <= 0.05*final && d >= -0.05*final && b.P99 <= maxP99
	}
	need := int(hold / ConvergeBin)
	for i := range bins {
		n := 0
		for n < need && i+n < len(bins) && ok(bins[i+n]) {
			n++
		}
		if n == need {
			swing := 0.0
			for _, b := range bins[i:] {
				swing = max(swing, math.Abs(b.Acceptance-final)/final)
			}
			return bins[i].At - from, swing
		}
	}
	return to - from, 0
}
