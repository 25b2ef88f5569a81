package shed

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// DeadlineConfig tunes a DeadlineGate. The zero value gives the defaults.
type DeadlineConfig struct {
	// Quantile of recent service times taken as the expected service time
	// (0.5: the median).
	Quantile float64
	// Window is the shortest measurement window (1 s); it closes on the
	// first Update after it that has MinSamples samples (10).
	Window     time.Duration
	MinSamples int
}

func (c DeadlineConfig) withDefaults() (DeadlineConfig, error) {
	if c.Quantile == 0 {
		c.Quantile = 0.5
	}
	if c.Window == 0 {
		c.Window = time.Second
	}
	if c.MinSamples == 0 {
		c.MinSamples = 10
	}
	if !(c.Quantile > 0 && c.Quantile <= 1) || c.Window < 0 || c.MinSamples < 1 {
		return c, fmt.Errorf("shed: deadline config: Quantile %v, Window %v, MinSamples %d: want 0 < Quantile ≤ 1 and positive Window and MinSamples",
			c.Quantile, c.Window, c.MinSamples)
	}
	return c, nil
}

// DeadlineGate drops requests that cannot finish in time: a request whose
// remaining deadline is shorter than the expected service time (a quantile
// of recent service times) would be served late, wasting capacity on an
// answer nobody waits for, so it is refused at admission instead (SRE book
// ch. 22; Finagle's DeadlineFilter).
//
// Observe is safe for concurrent use; Update is called by the owner once per
// tick; Allow is lock-free.
type DeadlineGate struct {
	cfg      DeadlineConfig
	expected atomic.Int64
	lat      latencyHistogram

	mu      sync.Mutex
	start   time.Time
	scratch [latBuckets]uint32
}

// NewDeadlineGate returns a gate that admits everything until it has seen
// its first window of service times.
func NewDeadlineGate(cfg DeadlineConfig) (*DeadlineGate, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &DeadlineGate{cfg: cfg}, nil
}

// Observe records the service time of one completed request.
func (d *DeadlineGate) Observe(service time.Duration) { d.lat.observe(service) }

// Update closes the measurement window when it is due and has enough
// samples, and takes its quantile as the new expected service time.
func (d *DeadlineGate) Update(now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.start.IsZero() {
		d.start = now
		return
	}
	if now.Sub(d.start) < d.cfg.Window || d.lat.count() < uint64(d.cfg.MinSamples) {
		return
	}
	n := d.lat.drain(&d.scratch)
	if n > 0 {
		d.expected.Store(int64(quantile(&d.scratch, n, d.cfg.Quantile)))
	}
	d.start = now
}

// Expected returns the expected service time (0 until the first window).
func (d *DeadlineGate) Expected() time.Duration { return time.Duration(d.expected.Load()) }

// Allow reports whether a request with the given deadline, arriving at now,
// can be served in time.
func (d *DeadlineGate) Allow(deadline, now time.Time) bool {
	return deadline.Sub(now) >= time.Duration(d.expected.Load())
}
