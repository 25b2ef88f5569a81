package cluster

import "time"

// backoff is capped exponential backoff with jitter, as a pure state
// machine: the caller supplies the random number, so tests get exact
// schedules.
type backoff struct {
	min, max time.Duration
	attempt  int // failures since the last reset
}

// next returns the wait before the next attempt and counts a failure. The
// wait is drawn from [d/2, d), d = min(max, min*2^attempt), with r in [0, 1):
// half of it random so that nodes restarted together by one etcd outage do
// not all retry in step, and half fixed so that no node retries in a tight
// loop.
func (b *backoff) next(r float64) time.Duration {
	d := b.max
	if b.attempt < 32 { // beyond that the shift overflows; d is max anyway
		if e := b.min << b.attempt; e > 0 && e < b.max {
			d = e
		}
	}
	b.attempt++
	half := d / 2
	return half + time.Duration(r*float64(d-half))
}

// failing reports whether the last attempt failed.
func (b *backoff) failing() bool { return b.attempt > 0 }

// reset records a success: the next failure waits about min again.
func (b *backoff) reset() { b.attempt = 0 }
