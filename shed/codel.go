package shed

import (
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// CoDelConfig tunes a CoDel signal. The zero value gives the defaults.
type CoDelConfig struct {
	Target   time.Duration // acceptable standing queueing delay (5 ms)
	Interval time.Duration // how long the delay must stay above Target (100 ms)
}

func (c CoDelConfig) withDefaults() (CoDelConfig, error) {
	if c.Target == 0 {
		c.Target = 5 * time.Millisecond
	}
	if c.Interval == 0 {
		c.Interval = 100 * time.Millisecond
	}
	if c.Target < 0 || c.Interval < 0 {
		return c, fmt.Errorf("shed: codel config: Target %v, Interval %v: must be positive", c.Target, c.Interval)
	}
	return c, nil
}

// CoDel is an overload signal from queueing delay, after Nichols and
// Jacobson's controlled delay: a queue is "good" if it drains (some request
// waits less than Target) at least once per Interval, and "bad", a standing
// queue, if the minimum delay over a whole Interval stays above Target.
// Bursts that drain quickly are ignored; only a standing queue reports
// overload.
//
// Observe is called for each request with the time it waited (from arrival
// to the start of its handling) and is safe for concurrent use. Read closes
// an interval once at least Interval has passed since the last one and
// reports the verdict of the last closed interval. An interval with no
// samples reads as healthy: an owner whose queue can stall completely
// should also Observe the age of the oldest waiting request on its tick.
type CoDel struct {
	cfg      CoDelConfig
	minDelay atomic.Int64 // minimum delay in the open interval; MaxInt64 if none
	lastMin  atomic.Int64 // minimum delay of the last closed interval, -1 if empty

	mu         sync.Mutex
	start      time.Time
	overloaded bool
}

// NewCoDel returns a CoDel signal.
func NewCoDel(cfg CoDelConfig) (*CoDel, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	c := &CoDel{cfg: cfg}
	c.minDelay.Store(math.MaxInt64)
	c.lastMin.Store(-1)
	return c, nil
}

// Observe records one request's queueing delay.
func (c *CoDel) Observe(delay time.Duration) {
	d := int64(delay)
	for {
		cur := c.minDelay.Load()
		if d >= cur || c.minDelay.CompareAndSwap(cur, d) {
			return
		}
	}
}

// Read implements Signal.
func (c *CoDel) Read(now time.Time) Reading {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.start.IsZero() {
		c.start = now
	}
	if now.Sub(c.start) >= c.cfg.Interval {
		m := c.minDelay.Swap(math.MaxInt64)
		if m == math.MaxInt64 {
			c.overloaded = false
			c.lastMin.Store(-1)
		} else {
			c.overloaded = m > int64(c.cfg.Target)
			c.lastMin.Store(m)
		}
		c.start = now
	}
	return Reading{Overloaded: c.overloaded}
}

// Delay returns the minimum queueing delay of the last closed interval, and
// false when that interval had no samples.
func (c *CoDel) Delay() (time.Duration, bool) {
	m := c.lastMin.Load()
	return time.Duration(m), m >= 0
}
