package peer

import (
	"sync"
	"time"
)

// breaker is a per-peer circuit breaker: after threshold consecutive
// failures it opens for cooldown, then lets one probe batch through. It
// reads no clock: callers pass the injected one (see the package doc).
type breaker struct {
	threshold int
	cooldown  time.Duration

	mu        sync.Mutex
	failures  int
	openUntil time.Time
	probing   bool
}

// allow reports whether a batch may be sent at now. When the breaker is
// open and its cool-down is over, the first caller gets the probe and the
// others are refused until record hears how the probe went.
func (b *breaker) allow(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.failures < b.threshold {
		return true
	}
	if now.Before(b.openUntil) || b.probing {
		return false
	}
	b.probing = true
	return true
}

// record counts a batch's outcome at now.
func (b *breaker) record(ok bool, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.probing = false
	if ok {
		b.failures = 0
		return
	}
	b.failures++
	if b.failures >= b.threshold {
		b.openUntil = now.Add(b.cooldown)
	}
}
