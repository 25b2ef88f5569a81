package shed

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// GradientConfig tunes a GradientLimit. The zero value gives the defaults.
type GradientConfig struct {
	InitialLimit int // starting limit (20)
	// MinLimit is the floor of the limit (4). It bounds the queue the gate
	// lets the marginal priority build in front of a service with few
	// workers: at the floor, a one-worker service queues about four service
	// times of it (slots taken past the gate by more important traffic come
	// on top until the threshold sheds into that traffic), which keeps the
	// latency of what remains close to unloaded while the worker stays
	// busy.
	MinLimit int
	MaxLimit int // cap of the limit (1000)
	// Tolerance is how much latency above the baseline is accepted before
	// the limit shrinks (1.25: up to 25% more than the uncongested p90).
	Tolerance float64
	// Smoothing is the weight of a new window in the limit's moving average
	// (0.2).
	Smoothing float64
	// Window is the shortest measurement window (100 ms); a window closes
	// on the first Read after it that has MinSamples samples (20).
	Window     time.Duration
	MinSamples int
	// LatencyCeiling, if set, is an absolute p90 above which the limit is
	// cut as hard as the gradient allows, whatever the baseline says.
	LatencyCeiling time.Duration
	// FloorWindows is how many windows the limit may sit at MinLimit before
	// the baseline is re-measured (5), if latency did not fall with the
	// limit: the service itself got slower.
	FloorWindows int
	// CorrelationWindows is how many utilised windows are compared to see
	// whether more concurrency still buys throughput (50); a negative value
	// turns the check off.
	CorrelationWindows int
}

func (c GradientConfig) withDefaults() (GradientConfig, error) {
	if c.InitialLimit == 0 {
		c.InitialLimit = 20
	}
	if c.MinLimit == 0 {
		c.MinLimit = 4
	}
	if c.MaxLimit == 0 {
		c.MaxLimit = 1000
	}
	if c.Tolerance == 0 {
		c.Tolerance = 1.25
	}
	if c.Smoothing == 0 {
		c.Smoothing = 0.2
	}
	if c.Window == 0 {
		c.Window = 100 * time.Millisecond
	}
	if c.MinSamples == 0 {
		c.MinSamples = 20
	}
	if c.FloorWindows == 0 {
		c.FloorWindows = 5
	}
	if c.CorrelationWindows == 0 {
		c.CorrelationWindows = 50
	}
	var errs []error
	if c.MinLimit < 1 || c.MaxLimit < c.MinLimit || c.InitialLimit < c.MinLimit || c.InitialLimit > c.MaxLimit {
		errs = append(errs, fmt.Errorf("limits %d ≤ %d ≤ %d: want 1 ≤ MinLimit ≤ InitialLimit ≤ MaxLimit", c.MinLimit, c.InitialLimit, c.MaxLimit))
	}
	if c.Tolerance < 1 {
		errs = append(errs, fmt.Errorf("field Tolerance %v: want at least 1", c.Tolerance))
	}
	if !(c.Smoothing > 0 && c.Smoothing <= 1) {
		errs = append(errs, fmt.Errorf("field Smoothing %v: want a fraction in (0, 1]", c.Smoothing))
	}
	if c.Window < 0 || c.MinSamples < 1 || c.FloorWindows < 1 || c.LatencyCeiling < 0 {
		errs = append(errs, errors.New("fields Window, MinSamples, FloorWindows and LatencyCeiling must be positive"))
	}
	if c.CorrelationWindows > 0 && c.CorrelationWindows < 4 {
		errs = append(errs, fmt.Errorf("field CorrelationWindows %d: want at least 4, or negative for off", c.CorrelationWindows))
	}
	if err := errors.Join(errs...); err != nil {
		return c, fmt.Errorf("shed: gradient config: %w", err)
	}
	return c, nil
}

// paddedInt64 keeps hot counters on their own cache lines.
type paddedInt64 struct {
	atomic.Int64
	_ [56]byte
}

// GradientLimit is an adaptive concurrency limit driven by the latency
// gradient, in the manner of Netflix's Gradient2 and Envoy's adaptive
// concurrency filter, and the gate that enforces it.
//
// Each window it compares the window's p90 latency with a baseline, the p90
// the service shows when it is not queueing:
//
//	gradient = clamp(Tolerance × baseline / p90, 0.5, 1.5)
//	limit    = (1−s)·limit + s·(limit·gradient + √limit)
//
// The √limit term is headroom so the limit can probe upward when latency is
// flat. Three rules keep the limit from ratcheting upward under sustained
// overload, the failure mode of a baseline that is a moving average of
// recent latency: the baseline follows latency down at once but never
// drifts up, so queueing latency never becomes the new normal; the limit
// may not grow while inflight stays under 80% of it, so it stays close
// enough to what is used to bind when more is admitted; and when more
// concurrency stopped buying throughput (the correlation of inflight and
// throughput over the last CorrelationWindows utilised windows is ≤ 0) the
// limit is cut by 10%. Nor does the limit shrink while inflight stays under
// 70% of it (unless p90 passes LatencyCeiling): then the limit does not
// bind, and latency that moves is a queue's own randomness or a
// dependency's, which tightening would only turn into refused bursts. The
// baseline rises only by being re-measured, when the service itself got
// slower (a slow dependency rather than our own queueing): then latency
// stops following inflight as the limit shrinks, so when the correlation of
// inflight and p90 over those windows is ≤ 0, or the limit sat at MinLimit
// for FloorWindows with latency that did not fall with it (p90 at 90% or
// more of the highest recent p90), the current p90 becomes the baseline.
// (Latency that fell with the limit was a queue in front of few workers,
// which the floor holds: re-measuring it would let the queue grow back.)
// A step in latency (beyond twice or under half the windows' mean)
// restarts the correlation windows.
//
// A request that leaves a full gate with a latency beyond twice what the
// limit tolerates, while the gate refuses as many as it holds, takes a
// slot off the limit at once (see shrink). Once a window's latency is past
// the tolerance and the gate refused requests in it, the √limit headroom
// is withheld: the limit settles where latency is tolerated, not a
// quarter beyond it.
//
// The gate is priority-aware: a request of priority p is admitted while the
// requests in flight at p or more important number fewer than the limit.
// Less important traffic therefore never blocks more important traffic, and
// critical requests are refused only when critical requests alone fill the
// limit. The total may overshoot the limit while the threshold catches up;
// refusals are reported by Read as excess so it does.
//
// Acquire and Release are safe for concurrent use and lock-free; Read is
// called by the owner once per tick.
type GradientLimit struct {
	cfg      GradientConfig
	limit    atomic.Int64
	inflight [NumPriorities]paddedInt64

	admitted, refused, refusedCritical atomic.Uint64
	completed                          atomic.Uint64 // Releases
	served                             atomic.Uint64 // of them, requests served
	exempt                             atomic.Uint64 // slots taken past the gate (take)
	maxInflight                        atomic.Int64  // max total inflight seen at Release this window
	minInflight                        atomic.Int64  // min total inflight left by a Release since the last Read
	// The time the gate was full (at least limit−1 in flight) and the
	// requests served in that time (not dropped or timed out, which say
	// nothing of the rate it serves at): the resource's capacity, measured without
	// choosing ticks by how fast the service happened to be in them. The
	// clock is read only when the gate fills or stops being full.
	clock     func() time.Time
	base      time.Time    // clock() at construction: stamps are offsets from it, on the monotonic clock
	fullSince atomic.Int64 // stamp when the gate last became full; 0 while it is not
	fullNanos atomic.Int64 // full time closed since the last Read
	fullDone  atomic.Uint64
	lat       latencyHistogram
	// far is the latency (ns) beyond which a request leaving a full gate
	// takes a slot off the limit at once (twice Tolerance × baseline; 0
	// before the first window).
	far    atomic.Int64
	winRef atomic.Uint64 // refusals counted when the last window closed

	mu                       sync.Mutex // owner state below
	est, baseline            float64    // limit estimate; baseline p90 in ns
	windowStart              time.Time
	lastAdm, lastRef, lastCr uint64
	lastEx, lastDone         uint64
	lastServed               uint64
	lastRead                 time.Time
	lastIn                   int64 // inflight at the last Read
	floorRun                 int
	peak                     float64 // the highest recent window's p90 (ns), decayed
	corr                     corrRing
	scratch                  [latBuckets]uint32
}

// NewGradientLimit returns a limit at cfg.InitialLimit.
func NewGradientLimit(cfg GradientConfig) (*GradientLimit, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	g := &GradientLimit{cfg: cfg, est: float64(cfg.InitialLimit)}
	g.setClock(time.Now)
	g.limit.Store(int64(cfg.InitialLimit))
	if cfg.CorrelationWindows > 0 {
		g.corr = newCorrRing(cfg.CorrelationWindows)
	}
	return g, nil
}

// Acquire asks the gate for a slot at priority p. With force (shadow mode)
// the slot is taken even when the gate would refuse; the return value says
// whether it would have admitted. Every successful or forced Acquire must be
// matched by one Release with the same priority.
func (g *GradientLimit) Acquire(p Priority, force bool) bool {
	i := p.index()
	n := g.inflight[i].Add(1)
	for j := range i {
		n += g.inflight[j].Load()
	}
	if n <= g.limit.Load() {
		g.admitted.Add(1)
		g.filled()
		return true
	}
	if !force {
		g.inflight[i].Add(-1)
	} else {
		g.filled()
	}
	g.refused.Add(1)
	if i == 0 {
		g.refusedCritical.Add(1)
	}
	return false
}

// setClock sets the clock the full time is measured with.
func (g *GradientLimit) setClock(clock func() time.Time) {
	g.clock, g.base = clock, clock()
}

// stamp is the clock's reading as an offset from base, never 0 (which
// means "not full").
func (g *GradientLimit) stamp() int64 {
	if s := int64(g.clock().Sub(g.base)); s != 0 {
		return s
	}
	return 1
}

// filled starts the gate's full time if a slot just taken filled it.
// Racing Acquires and Releases may blur a boundary by a request; the
// measurement is a sum over thousands of them.
func (g *GradientLimit) filled() {
	if g.fullSince.Load() == 0 && int64(g.Inflight()) >= g.full() {
		g.fullSince.CompareAndSwap(0, g.stamp())
	}
}

// full is the number in flight at which the gate counts as full: a full
// gate drops to one below its limit at each release, until the next
// admission.
func (g *GradientLimit) full() int64 { return max(g.limit.Load()-1, 1) }

// Release returns a slot taken at priority p. With sample, rtt is recorded
// as a latency sample (pass false for requests whose latency says nothing
// about the service: cancelled, failed fast, health checks, streams); only
// such requests count towards the capacity while the gate is full.
func (g *GradientLimit) Release(p Priority, rtt time.Duration, sample bool) {
	g.release(p, rtt, sample, sample)
}

// release is Release where served says whether the request was served
// (not dropped or timed out): only those count towards the capacity.
func (g *GradientLimit) release(p Priority, rtt time.Duration, sample, served bool) {
	i := p.index()
	if served {
		g.served.Add(1)
		if g.fullSince.Load() != 0 {
			g.fullDone.Add(1)
		}
	}
	if sample && g.fullSince.Load() != 0 {
		if far := g.far.Load(); far > 0 && int64(rtt) > far && g.refused.Load()-g.winRef.Load() >= uint64(g.limit.Load()) {
			g.shrink()
		}
	}
	if sample {
		total := g.Inflight()
		g.lat.observe(rtt)
		for {
			cur := g.maxInflight.Load()
			if int64(total) <= cur || g.maxInflight.CompareAndSwap(cur, int64(total)) {
				break
			}
		}
	}
	g.inflight[i].Add(-1)
	g.completed.Add(1)
	left := int64(g.Inflight())
	if left < g.full() && g.fullSince.Load() != 0 {
		if since := g.fullSince.Swap(0); since != 0 {
			g.fullNanos.Add(g.stamp() - since)
		}
	}
	if left < g.minInflight.Load() {
		for {
			cur := g.minInflight.Load()
			if left >= cur || g.minInflight.CompareAndSwap(cur, left) {
				break
			}
		}
	}
}

// shrink takes one off the limit, down to MinLimit: a request left a full
// gate with a latency far beyond what the limit tolerates, and the gate
// refused as many as it holds since the last window (a surge, not a
// burst). At the start of a surge the gate fills at once; the windows
// would take the limit down by a few percent per tick while the surge
// queues behind it, whereas one slot per such request brings it down
// within the time the queue takes to drain, since latency in a queue grows
// with what is in it.
func (g *GradientLimit) shrink() {
	for {
		cur := g.limit.Load()
		if cur <= int64(g.cfg.MinLimit) || g.limit.CompareAndSwap(cur, cur-1) {
			return
		}
	}
}

// Limit returns the current limit.
func (g *GradientLimit) Limit() int { return int(g.limit.Load()) }

// Inflight returns the number of slots held, over all priorities.
func (g *GradientLimit) Inflight() int {
	var n int64
	for i := range g.inflight {
		n += g.inflight[i].Load()
	}
	return int(n)
}

// Baseline returns the uncongested p90 latency the gradient compares with,
// 0 before the first window.
func (g *GradientLimit) Baseline() time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	return time.Duration(g.baseline)
}

// Read implements Signal: the resource is overloaded when the gate refused
// requests since the last Read (the excess is the fraction of the requests
// that came to the gate it refused, and Critical is set when it refused
// critical requests), or when more than twice the limit stayed in flight
// through the whole interval (possible only for slots taken past the gate,
// see Resource) and the queue is not draining. Read also closes the
// measurement window when due and moves the limit.
//
// Latency moves the limit but is not itself read as overload: a gate kept
// full by a flood holds its limit where p90 sits a little above Tolerance
// × baseline (the limit's equilibrium, where the √limit headroom balances
// the gradient), and a service whose latency grows with any queue (one
// worker, random service times) shows latency beyond the tolerance long
// before it is full; reading either as overload would shed traffic the
// service can serve. Once latency has pulled the limit in, the gate's
// refusals report the excess.
func (g *GradientLimit) Read(now time.Time) Reading {
	return g.read(now).Reading
}

// gateReading is a Read with the details Resource needs.
type gateReading struct {
	Reading
	all, refused uint64        // requests that came to the gate (taken or not), and those it refused
	standing     bool          // more than twice the limit stayed in flight all interval
	inflight     int64         // in flight at the read
	exempt       uint64        // slots taken past the gate (more important than the margin)
	completed    uint64        // releases
	served       uint64        // of them, requests served
	full         time.Duration // how long the gate was full (at least limit−1 in flight)
	fullDone     uint64        // requests served while it was
	interval     time.Duration
}

func (g *GradientLimit) read(now time.Time) gateReading {
	g.mu.Lock()
	defer g.mu.Unlock()
	adm, ref, cr, ex := g.admitted.Load(), g.refused.Load(), g.refusedCritical.Load(), g.exempt.Load()
	dAdm, dRef, dCr, dEx := adm-g.lastAdm, ref-g.lastRef, cr-g.lastCr, ex-g.lastEx
	g.lastAdm, g.lastRef, g.lastCr, g.lastEx = adm, ref, cr, ex
	done := g.completed.Load()
	srv := g.served.Load()
	r := gateReading{all: dAdm + dEx + dRef, refused: dRef, exempt: dEx, completed: done - g.lastDone, served: srv - g.lastServed}
	g.lastServed = srv
	g.lastDone = done
	if !g.lastRead.IsZero() {
		r.interval = now.Sub(g.lastRead)
	}
	if dRef > 0 {
		r.Reading = Reading{Overloaded: true, Excess: float64(dRef) / float64(dAdm+dEx+dRef), Critical: dCr > 0}
	}
	// A standing excess: slots taken past the gate kept more than twice
	// the limit in flight for the whole interval. Nothing the gate
	// refuses can fix that; the threshold must, unless the queue already
	// drains. (Traffic below capacity queues past the limit now and then;
	// traffic above it queues without end.)
	in := int64(g.Inflight())
	minIn := g.minInflight.Swap(in)
	limit := g.limit.Load()
	// The full time so far, with a period still open closed and reopened
	// (on the gate's own clock, the one its periods were stamped with).
	if since := g.fullSince.Load(); since != 0 {
		if t := g.stamp(); g.fullSince.CompareAndSwap(since, t) {
			g.fullNanos.Add(t - since)
		}
	}
	r.full, r.fullDone = time.Duration(g.fullNanos.Swap(0)), g.fullDone.Swap(0)
	r.inflight = in
	if minIn > 2*limit && !g.lastRead.IsZero() {
		r.standing = true
		if in >= g.lastIn {
			r.Overloaded = true
			// Still growing while the traffic taken past the gate alone
			// arrives faster than the resource completes work: none of
			// the margin fits. A stall (nothing completing) says nothing
			// about the mix, and must not empty whole priorities.
			r.MarginUnfit = r.completed > 0 && dEx > r.completed && in > g.lastIn
		} else {
			r.Saturated = true
		}
	}
	g.lastRead, g.lastIn = now, in
	g.closeWindow(now)
	return r
}

// take takes a slot at priority p without asking the gate: Resource
// admits priorities more important than the one it is shedding this way,
// so that they are never refused while less important traffic is still
// admitted. The slot is released with Release as usual.
func (g *GradientLimit) take(p Priority) {
	g.inflight[p.index()].Add(1)
	g.exempt.Add(1)
	g.filled()
}

// closeWindow closes the measurement window when it is due and moves the
// limit.
func (g *GradientLimit) closeWindow(now time.Time) {
	if g.windowStart.IsZero() {
		g.windowStart = now
		return
	}
	el := now.Sub(g.windowStart)
	if el < g.cfg.Window {
		return
	}
	if g.lat.count() < uint64(g.cfg.MinSamples) {
		if el >= 10*g.cfg.Window { // too quiet to learn from: start afresh
			g.lat.drain(&g.scratch)
			g.maxInflight.Store(0)
			g.windowStart = now
		}
		return
	}
	n := g.lat.drain(&g.scratch)
	maxIn := float64(g.maxInflight.Swap(0))
	g.windowStart = now
	if n == 0 {
		return
	}
	p90 := float64(quantile(&g.scratch, n, 0.9))
	ref := g.refused.Load()
	g.update(p90, maxIn, float64(n)/el.Seconds(), ref > g.winRef.Load())
	g.winRef.Store(ref)
}

// update applies one window: p90 latency (ns), the most requests seen in
// flight, the throughput (samples per second), and whether the gate
// refused requests.
func (g *GradientLimit) update(p90, maxIn, throughput float64, refused bool) {
	if g.baseline == 0 {
		g.baseline = p90
	}
	est := g.est
	if l := g.limit.Load(); l < int64(est) {
		est = float64(l) // shrink took slots since the last window
	}
	utilized := maxIn >= est/2

	grad := min(max(g.cfg.Tolerance*g.baseline/p90, 0.5), 1.5)
	if g.cfg.LatencyCeiling > 0 && p90 > float64(g.cfg.LatencyCeiling) {
		grad = 0.5
	}
	next := est * grad
	if grad >= 1 || !refused {
		next += math.Sqrt(est)
	}
	switch {
	case next > est && maxIn < 0.8*est:
		// No evidence the extra room would be used: the limit grows only
		// while the traffic presses on it, so that it stays close enough
		// to what is in flight to bind as soon as more is admitted.
		next = est
	case maxIn < 0.7*est && (g.cfg.LatencyCeiling == 0 || p90 <= float64(g.cfg.LatencyCeiling)):
		// Too little in flight for the limit to bind: latency that moves
		// now is the queue's own randomness (or a dependency's), not
		// evidence about our concurrency, and tightening on it would
		// refuse the bursts of a lightly loaded service. Only the
		// absolute latency ceiling still cuts the limit.
		next = est
	}
	s := g.cfg.Smoothing
	est = (1-s)*est + s*next
	rebaseline := false
	if g.corr.x != nil && utilized {
		flatThroughput, flatLatency := g.corr.push(maxIn, throughput, p90)
		switch {
		case flatLatency:
			rebaseline = true // our concurrency does not drive the latency
		case flatThroughput:
			est *= 0.9 // more concurrency no longer buys throughput
		}
	}
	est = min(max(est, float64(g.cfg.MinLimit)), float64(g.cfg.MaxLimit))

	if p90 < g.baseline {
		g.baseline = (g.baseline + p90) / 2 // faster service: follow quickly
	}
	g.peak = max(p90, peakDecay*g.peak)
	if est <= float64(g.cfg.MinLimit) {
		g.floorRun++
		if g.floorRun >= g.cfg.FloorWindows {
			// Latency that fell with the limit was our own queue's, and
			// the floor holds it; latency that stayed up (or rose) is
			// the service's.
			rebaseline = rebaseline || p90 >= floorFell*g.peak
			g.floorRun = 0
		}
	} else {
		g.floorRun = 0
	}
	if rebaseline {
		g.baseline, g.floorRun, g.peak = p90, 0, p90
	}
	g.est = est
	g.limit.Store(int64(est))
	g.far.Store(int64(2 * g.cfg.Tolerance * g.baseline))
}

// peakDecay is the weight per window of the highest recent p90: it halves
// in about three and a half seconds, so that a spike does not keep the
// floor from re-measuring for long.
const peakDecay = 0.98

// floorFell: at the floor, a p90 under this share of the recent peak fell
// with the limit.
const floorFell = 0.9

// corrRing holds the last utilised windows' inflight, throughput and p90.
type corrRing struct {
	x, y, z []float64
	n, pos  int
}

func newCorrRing(n int) corrRing {
	return corrRing{x: make([]float64, n), y: make([]float64, n), z: make([]float64, n)}
}

// push adds a window and, once the ring is full and inflight actually
// varied, reports whether throughput failed to rise with inflight (more
// concurrency buys nothing: the service is saturated) and whether latency
// failed to rise with it (the latency is not ours: the service or a
// dependency got slower). The ring is emptied after a finding so that one
// finding acts once.
func (c *corrRing) push(inflight, throughput, p90 float64) (flatThroughput, flatLatency bool) {
	if c.n >= 4 {
		// A step in latency (p90 beyond twice or under half the ring's
		// mean) starts the ring afresh: windows from before the step say
		// nothing about the service after it, and mixing them would
		// report a correlation, or its absence, that belongs to neither.
		var mz float64
		for _, z := range c.z[:c.n] {
			mz += z
		}
		mz /= float64(c.n)
		if p90 > 2*mz || p90 < mz/2 {
			c.n, c.pos = 0, 0
		}
	}
	c.x[c.pos], c.y[c.pos], c.z[c.pos] = inflight, throughput, p90
	c.pos = (c.pos + 1) % len(c.x)
	if c.n < len(c.x) {
		c.n++
	}
	if c.n < len(c.x) {
		return false, false
	}
	k := float64(len(c.x))
	var mx, my, mz float64
	for i := range c.x {
		mx += c.x[i]
		my += c.y[i]
		mz += c.z[i]
	}
	mx, my, mz = mx/k, my/k, mz/k
	var sxx, syy, szz, sxy, sxz float64
	for i := range c.x {
		dx, dy, dz := c.x[i]-mx, c.y[i]-my, c.z[i]-mz
		sxx += dx * dx
		syy += dy * dy
		szz += dz * dz
		sxy += dx * dy
		sxz += dx * dz
	}
	// Inflight must have moved by more than noise (a coefficient of
	// variation above 5%) for a correlation to mean anything.
	if mx <= 0 || math.Sqrt(sxx/k)/mx < 0.05 {
		return false, false
	}
	flatThroughput = syy == 0 || sxy/math.Sqrt(sxx*syy) <= 0
	flatLatency = szz == 0 || sxz/math.Sqrt(sxx*szz) <= 0
	if flatThroughput || flatLatency {
		c.n, c.pos = 0, 0
	}
	return flatThroughput, flatLatency
}
