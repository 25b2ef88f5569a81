// Package throttle is the client half of levee's load shedding: it keeps
// clients from feeding a surge.
//
// Adaptive is the adaptive throttle of the Google SRE book (ch. 21): each
// client counts, over a sliding window (2 minutes), the requests it
// attempted and the requests the backend accepted, and rejects new requests
// locally with probability
//
//	max(0, (requests − K·accepts) / (requests + 1))
//
// With K = 2 a backend that refuses half its traffic still sees about twice
// what it accepts, so it keeps enough signal to notice recovery, while the
// rest of the excess never leaves the client.
//
// RetryBudget bounds retries to a fraction of first attempts (10%) plus a
// small floor per second, over a sliding window, as Finagle's RetryBudget
// and the SRE book do: without it, three attempts per request can triple the
// load on a backend that is already refusing.
//
// Both are state machines with time passed in, safe for concurrent use (a
// short critical section per call).
package throttle

import (
	"fmt"
	"sync"
	"time"
)

// window is a sliding window of two counters kept in n buckets.
type window struct {
	width   int64 // bucket width, ns
	cur     int64 // index of the current bucket since the epoch, in widths
	buckets [][2]uint64
	sums    [2]uint64
}

func newWindow(span time.Duration, n int) window {
	return window{width: int64(span) / int64(n), buckets: make([][2]uint64, n)}
}

// advance moves the window to now, dropping buckets that fell out of it.
func (w *window) advance(now time.Time) {
	idx := now.UnixNano() / w.width
	if idx <= w.cur {
		return // same bucket, or the clock went back: keep counting here
	}
	steps := min(idx-w.cur, int64(len(w.buckets)))
	for i := int64(1); i <= steps; i++ {
		b := &w.buckets[(w.cur+i)%int64(len(w.buckets))]
		w.sums[0] -= b[0]
		w.sums[1] -= b[1]
		*b = [2]uint64{}
	}
	w.cur = idx
}

func (w *window) add(i int, now time.Time) {
	w.advance(now)
	w.buckets[w.cur%int64(len(w.buckets))][i]++
	w.sums[i]++
}

// AdaptiveConfig tunes an Adaptive throttle. The zero value gives the
// defaults.
type AdaptiveConfig struct {
	K       float64       // accepts multiplier (2)
	Window  time.Duration // span of the counts (2 min)
	Buckets int           // granularity of the window (60)
}

func (c AdaptiveConfig) withDefaults() (AdaptiveConfig, error) {
	if c.K == 0 {
		c.K = 2
	}
	if c.Window == 0 {
		c.Window = 2 * time.Minute
	}
	if c.Buckets == 0 {
		c.Buckets = 60
	}
	if c.K < 1 || c.Window <= 0 || c.Buckets < 1 || c.Window/time.Duration(c.Buckets) <= 0 {
		return c, fmt.Errorf("throttle: adaptive config K %v, Window %v, Buckets %d: want K ≥ 1 and a positive window of positive buckets", c.K, c.Window, c.Buckets)
	}
	return c, nil
}

// Adaptive is the SRE adaptive throttle for one backend (or one priority
// class towards it).
type Adaptive struct {
	k  float64
	mu sync.Mutex
	w  window // [0] requests, [1] accepts
}

// NewAdaptive returns a throttle with empty counts (it rejects nothing).
func NewAdaptive(cfg AdaptiveConfig) (*Adaptive, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Adaptive{k: cfg.K, w: newWindow(cfg.Window, cfg.Buckets)}, nil
}

// RejectProbability returns the current local rejection probability.
func (a *Adaptive) RejectProbability(now time.Time) float64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.w.advance(now)
	return a.prob()
}

func (a *Adaptive) prob() float64 {
	req, acc := float64(a.w.sums[0]), float64(a.w.sums[1])
	return max(0, (req-a.k*acc)/(req+1))
}

// Allow counts a request and decides whether to send it: u is a uniform
// random draw in [0, 1) (passed in, so tests are deterministic), and the
// request is rejected locally when u < RejectProbability. Locally rejected
// requests count as requests, as the SRE formula requires.
func (a *Adaptive) Allow(now time.Time, u float64) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.w.advance(now)
	p := a.prob()
	a.w.add(0, now)
	return u >= p
}

// Accepted counts a request the backend accepted (any answer other than an
// overload refusal).
func (a *Adaptive) Accepted(now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.w.add(1, now)
}

// Counts returns the requests and accepts in the window.
func (a *Adaptive) Counts(now time.Time) (requests, accepts uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.w.advance(now)
	return a.w.sums[0], a.w.sums[1]
}

// RetryBudgetConfig tunes a RetryBudget. The zero value gives the defaults.
type RetryBudgetConfig struct {
	Ratio        float64       // retries allowed per first attempt (0.1)
	MinPerSecond float64       // floor of retries per second, for quiet clients (10; negative: none)
	Window       time.Duration // span of the counts (10 s)
	Buckets      int           // granularity of the window (10)
}

func (c RetryBudgetConfig) withDefaults() (RetryBudgetConfig, error) {
	if c.Ratio == 0 {
		c.Ratio = 0.1
	}
	switch {
	case c.MinPerSecond == 0:
		c.MinPerSecond = 10
	case c.MinPerSecond < 0:
		c.MinPerSecond = 0
	}
	if c.Window == 0 {
		c.Window = 10 * time.Second
	}
	if c.Buckets == 0 {
		c.Buckets = 10
	}
	if c.Ratio < 0 || c.Window <= 0 || c.Buckets < 1 || c.Window/time.Duration(c.Buckets) <= 0 {
		return c, fmt.Errorf("throttle: retry budget config Ratio %v, MinPerSecond %v, Window %v, Buckets %d: want non-negative rates and a positive window",
			c.Ratio, c.MinPerSecond, c.Window, c.Buckets)
	}
	return c, nil
}

// RetryBudget allows a retry while retries in the window stay within
// Ratio × first attempts + MinPerSecond × window seconds.
type RetryBudget struct {
	ratio, floor float64
	mu           sync.Mutex
	w            window // [0] first attempts, [1] retries
}

// NewRetryBudget returns an empty budget (only the floor is available).
func NewRetryBudget(cfg RetryBudgetConfig) (*RetryBudget, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &RetryBudget{ratio: cfg.Ratio, floor: cfg.MinPerSecond * cfg.Window.Seconds(), w: newWindow(cfg.Window, cfg.Buckets)}, nil
}

// Request counts a first attempt, which adds Ratio to the budget.
func (b *RetryBudget) Request(now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.w.add(0, now)
}

// TryRetry takes one retry from the budget if there is one, and reports
// whether it did.
func (b *RetryBudget) TryRetry(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.w.advance(now)
	if float64(b.w.sums[1]+1) > b.ratio*float64(b.w.sums[0])+b.floor {
		return false
	}
	b.w.add(1, now)
	return true
}
