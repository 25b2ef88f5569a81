// Package backoff is capped exponential backoff with jitter, shared by the
// etcd membership's sessions, the peer router's hand-off retries and the
// node's etcd configuration watches.
package backoff

import "time"

// Backoff is capped exponential backoff with jitter, as a pure state
// machine: the caller supplies the random number, so tests get exact
// schedules. The zero value of its state is "not failing"; Min and Max
// bound the waits.
type Backoff struct {
	Min, Max time.Duration
	attempt  int // failures since the last reset
}

// Next returns the wait before the next attempt and counts a failure. The
// wait is drawn from [d/2, d), d = min(Max, Min*2^attempt), with r in
// [0, 1): half of it random so that nodes that failed together (restarted
// by one etcd outage, cut off by one partition) do not all retry in step,
// and half fixed so that no node retries in a tight loop.
func (b *Backoff) Next(r float64) time.Duration {
	d := b.Max
	if b.attempt < 32 { // beyond that the shift overflows; d is Max anyway
		if e := b.Min << b.attempt; e > 0 && e < b.Max {
			d = e
		}
	}
	b.attempt++
	half := d / 2
	return half + time.Duration(r*float64(d-half))
}

// Failing reports whether the last attempt failed.
func (b *Backoff) Failing() bool { return b.attempt > 0 }

// Attempts is the number of failures since the last reset.
func (b *Backoff) Attempts() int { return b.attempt }

// Reset records a success: the next failure waits about Min again.
func (b *Backoff) Reset() { b.attempt = 0 }
