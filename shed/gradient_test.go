package shed

import (
	"math"
	"testing"
	"time"

	"github.com/levee-dev/levee/shed/shedtest"
)

func mustGradient(t testing.TB, cfg GradientConfig) *GradientLimit {
	t.Helper()
	g, err := NewGradientLimit(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// server is a closed-loop model of a service with k parallel slots and a
// service time s0: with n requests in flight, each takes s0·max(1, n/k), so
// throughput saturates at k/s0. Clients hold up to demand requests in
// flight, as many as the gate lets through.
type server struct {
	k      int
	s0     time.Duration
	demand int
	held   int
	seq    uint64
}

// window runs one 100 ms window against g and reads it at now.
func (s *server) window(g *GradientLimit, now time.Time) Reading {
	for s.held < s.demand && g.Acquire(Default, false) {
		s.held++
	}
	lat := s.s0 * time.Duration(max(s.k, s.held)) / time.Duration(s.k)
	n := min(s.held, s.k) * int(100*time.Millisecond/s.s0)
	for range n {
		s.seq++
		jitter := time.Duration(s.seq%21) - 10 // ±10%, deterministic
		g.Release(Default, lat+lat*jitter/100, true)
		s.held--
		if s.held < s.demand && g.Acquire(Default, false) {
			s.held++
		}
	}
	return g.Read(now)
}

func TestGradientDoesNotRatchetUnderSustainedOverload(t *testing.T) {
	g := mustGradient(t, GradientConfig{})
	srv := &server{k: 10, s0: 10 * time.Millisecond, demand: 1000} // offered far beyond capacity, forever
	now := t0
	var limits []int
	for range 600 { // 60 s
		now = now.Add(100 * time.Millisecond)
		srv.window(g, now)
		limits = append(limits, g.Limit())
	}
	maxMid, maxLate := 0, 0
	for i, l := range limits {
		switch {
		case i >= 50 && i < 300:
			maxMid = max(maxMid, l)
		case i >= 300:
			maxLate = max(maxLate, l)
		}
	}
	// No upward drift: the last 30 s never exceed the first settled 25 s
	// by more than 10%, and the limit stays within a few times the
	// service's real concurrency (10), not at MaxLimit.
	if float64(maxLate) > 1.1*float64(maxMid) {
		t.Errorf("limit drifted up under sustained overload: max %d in 5–30 s, %d in 30–60 s", maxMid, maxLate)
	}
	if maxLate > 60 {
		t.Errorf("limit reached %d under sustained overload of a 10-slot service; want ≤ 60", maxLate)
	}
	if last := limits[len(limits)-1]; last < srv.k {
		t.Errorf("limit collapsed to %d, below the service's 10 slots: capacity wasted", last)
	}
}

func TestGradientGrowsWhenLatencyIsFlat(t *testing.T) {
	g := mustGradient(t, GradientConfig{})
	srv := &server{k: 10000, s0: 10 * time.Millisecond, demand: 300} // no queueing at any concurrency
	now := t0
	for range 300 {
		now = now.Add(100 * time.Millisecond)
		srv.window(g, now)
	}
	l := g.Limit()
	if l < srv.demand {
		t.Fatalf("limit %d with flat latency, want it to grow to the demand of 300", l)
	}
	// It does not grow while inflight stays under half of it.
	if l > 2*srv.demand+int(math.Sqrt(float64(2*srv.demand)))+1 {
		t.Fatalf("limit %d grew past twice the demand (300) with nothing to use it", l)
	}
}

func TestGradientNoGrowthWhenUnderused(t *testing.T) {
	g := mustGradient(t, GradientConfig{InitialLimit: 100})
	srv := &server{k: 10000, s0: 10 * time.Millisecond, demand: 20} // inflight 20 < 100/2
	now := t0
	for range 100 {
		now = now.Add(100 * time.Millisecond)
		srv.window(g, now)
		if g.Limit() > 100 {
			t.Fatalf("limit grew to %d while inflight stayed at 20", g.Limit())
		}
	}
}

func TestGradientRebaselinesAfterFloor(t *testing.T) {
	g := mustGradient(t, GradientConfig{})
	srv := &server{k: 10000, s0: 10 * time.Millisecond, demand: 40}
	now := t0
	for range 50 {
		now = now.Add(100 * time.Millisecond)
		srv.window(g, now)
	}
	if b := g.Baseline(); b < 8*time.Millisecond || b > 13*time.Millisecond {
		t.Fatalf("baseline %v, want about 10 ms", b)
	}
	srv.s0 = 40 * time.Millisecond // the service itself got four times slower
	low := g.Limit()
	for range 200 {
		now = now.Add(100 * time.Millisecond)
		srv.window(g, now)
		low = min(low, g.Limit())
	}
	if low > 20 {
		t.Fatalf("limit only fell to %d after the latency quadrupled", low)
	}
	if b := g.Baseline(); b < 35*time.Millisecond || b > 50*time.Millisecond {
		t.Fatalf("baseline %v after re-baselining, want about 40 ms", b)
	}
	if g.Limit() < 40 {
		t.Fatalf("limit %d did not recover to the demand of 40 after re-baselining", g.Limit())
	}
}

func TestGradientLatencyCeiling(t *testing.T) {
	g := mustGradient(t, GradientConfig{LatencyCeiling: 50 * time.Millisecond, InitialLimit: 100})
	now := t0
	g.Read(now)
	for range 3 {
		for range 50 {
			if !g.Acquire(Default, false) {
				t.Fatal("gate refused below the limit")
			}
		}
		for range 50 {
			g.Release(Default, 80*time.Millisecond, true) // the first window sets the baseline at 80 ms
		}
		now = now.Add(100 * time.Millisecond)
		g.Read(now)
	}
	if g.Limit() >= 100*9/10 {
		t.Fatalf("limit %d: p90 above the absolute ceiling did not cut it", g.Limit())
	}
}

func TestGradientGateIsPriorityAware(t *testing.T) {
	g := mustGradient(t, GradientConfig{InitialLimit: 20})
	for i := range 20 {
		if !g.Acquire(Sheddable, false) {
			t.Fatalf("sheddable %d refused below the limit", i)
		}
	}
	if g.Acquire(Sheddable, false) {
		t.Fatal("gate admitted sheddable beyond the limit")
	}
	// Sheddable traffic filling the limit blocks nothing more important.
	if !g.Acquire(Low, false) {
		t.Fatal("sheddable traffic filling the limit blocked low")
	}
	g.Release(Low, 0, false)
	for i := range 20 {
		if !g.Acquire(Critical, false) {
			t.Fatalf("critical %d refused while critical alone holds %d < 20 slots", i, i)
		}
	}
	r := g.Read(t0)
	if !r.Overloaded || r.Critical {
		t.Fatalf("reading %+v: want overloaded, not critical (no critical refused yet)", r)
	}
	if want := 1.0 / 42.0; math.Abs(r.Excess-want) > 1e-9 {
		t.Fatalf("excess %v, want %v (1 refused of 42)", r.Excess, want)
	}
	// Critical is refused only once critical alone fills the limit, and
	// then everything less important is refused too.
	if g.Acquire(Critical, false) || g.Acquire(High, false) || g.Acquire(Low, false) {
		t.Fatal("gate admitted critical, high or low beyond 20 critical in flight")
	}
	if r := g.Read(t0); !r.Critical {
		t.Fatalf("reading %+v: want Critical after refusing critical", r)
	}
	if got := g.Inflight(); got != 40 {
		t.Fatalf("inflight %d, want 40", got)
	}
	// Forced (shadow) acquires take the slot but report the refusal.
	if g.Acquire(Low, true) {
		t.Fatal("forced acquire reported admission beyond the limit")
	}
	if got := g.Inflight(); got != 41 {
		t.Fatalf("inflight after a forced acquire %d, want 41", got)
	}
	g.Release(Low, 0, false)
	for range 20 {
		g.Release(Critical, 0, false)
		g.Release(Sheddable, 0, false)
	}
	if got := g.Inflight(); got != 0 {
		t.Fatalf("inflight after releasing all %d, want 0", got)
	}
}

func TestGradientOrderingProperty(t *testing.T) {
	// Whatever the slots held, if priority p is refused then every less
	// important priority is refused too.
	g := mustGradient(t, GradientConfig{InitialLimit: 12})
	held := [NumPriorities]int{}
	for a := range 7 {
		for b := range 7 {
			for c := range 7 {
				held = [NumPriorities]int{a, 0, b, 0, c}
				for i, n := range held {
					g.inflight[i].Store(int64(n))
				}
				refused := false
				for p := Critical; p <= Sheddable; p++ {
					ok := g.Acquire(p, false)
					if ok {
						g.inflight[p.index()].Add(-1)
					}
					if refused && ok {
						t.Fatalf("held %v: %v admitted after a more important priority was refused", held, p)
					}
					refused = refused || !ok
				}
			}
		}
	}
}

func TestGradientConfigValidation(t *testing.T) {
	for _, cfg := range []GradientConfig{
		{MinLimit: 10, InitialLimit: 5}, {Tolerance: 0.5}, {Smoothing: 2}, {CorrelationWindows: 2}, {MaxLimit: 3, MinLimit: 4},
	} {
		if _, err := NewGradientLimit(cfg); err == nil {
			t.Errorf("NewGradientLimit(%+v) accepted", cfg)
		}
	}
}

func TestCorrelationFindings(t *testing.T) {
	c := newCorrRing(10)
	// Throughput and latency rising with inflight (queueing in our own
	// concurrency): no finding.
	for i := range 20 {
		x := float64(10 + i%5)
		if ft, fl := c.push(x, 100+10*x, 5*x); ft || fl {
			t.Fatalf("finding (%v, %v) while throughput and latency rose with inflight", ft, fl)
		}
	}
	// Throughput flat: saturated, reported once per refilled ring.
	found := 0
	for i := range 20 {
		x := float64(10 + i%5)
		if ft, fl := c.push(x, 100, 5*x); ft {
			found++
			if fl {
				t.Fatal("latency followed inflight but was reported flat")
			}
		}
	}
	if found == 0 || found > 2 {
		t.Fatalf("%d saturation findings over 20 windows of a 10-window ring, want 1 or 2", found)
	}
	// Latency flat while inflight moves: the latency is not ours.
	c = newCorrRing(10)
	found = 0
	for i := range 10 {
		x := float64(40 - 3*i)
		if _, fl := c.push(x, 10*x, 40e6); fl {
			found++
		}
	}
	if found != 1 {
		t.Fatalf("%d flat-latency findings, want 1", found)
	}
	// Inflight barely moving: no information, no finding.
	c = newCorrRing(10)
	for i := range 30 {
		if ft, fl := c.push(100+float64(i%2)*0.1, float64(100-i), float64(i)); ft || fl {
			t.Fatal("finding on noise-level inflight changes")
		}
	}
}

func TestCoDel(t *testing.T) {
	c, err := NewCoDel(CoDelConfig{})
	if err != nil {
		t.Fatal(err)
	}
	now := t0
	c.Read(now)
	// A burst: delays above target but one request drained quickly.
	for _, d := range []time.Duration{20, 30, 2, 40} {
		c.Observe(d * time.Millisecond)
	}
	now = now.Add(100 * time.Millisecond)
	if r := c.Read(now); r.Overloaded {
		t.Fatal("overloaded after an interval whose minimum delay was 2 ms")
	}
	if d, ok := c.Delay(); !ok || d != 2*time.Millisecond {
		t.Fatalf("Delay = %v, %v; want 2ms", d, ok)
	}
	// A standing queue: every request waited more than 5 ms.
	for _, d := range []time.Duration{6, 9, 12} {
		c.Observe(d * time.Millisecond)
	}
	if r := c.Read(now.Add(50 * time.Millisecond)); r.Overloaded {
		t.Fatal("verdict changed before the interval ended")
	}
	now = now.Add(100 * time.Millisecond)
	if r := c.Read(now); !r.Overloaded {
		t.Fatal("not overloaded after a whole interval above target")
	}
	// The verdict holds until the next interval closes.
	if r := c.Read(now.Add(10 * time.Millisecond)); !r.Overloaded {
		t.Fatal("verdict dropped inside the interval")
	}
	c.Observe(time.Millisecond)
	now = now.Add(100 * time.Millisecond)
	if r := c.Read(now); r.Overloaded {
		t.Fatal("still overloaded after the queue drained")
	}
	// An interval with no samples reads healthy.
	now = now.Add(100 * time.Millisecond)
	if r := c.Read(now); r.Overloaded {
		t.Fatal("overloaded with no samples")
	}
	if _, ok := c.Delay(); ok {
		t.Fatal("Delay reported a value for an empty interval")
	}
}

func TestDeadlineGate(t *testing.T) {
	d, err := NewDeadlineGate(DeadlineConfig{})
	if err != nil {
		t.Fatal(err)
	}
	d.Update(t0)
	if !d.Allow(t0.Add(time.Microsecond), t0) {
		t.Fatal("gate refused before it knew any service time")
	}
	for i := range 11 {
		d.Observe(time.Duration(5+i) * time.Millisecond) // 5–15 ms, median 10 ms
	}
	d.Update(t0.Add(500 * time.Millisecond))
	if d.Expected() != 0 {
		t.Fatal("window closed before its length")
	}
	d.Update(t0.Add(time.Second))
	if e := d.Expected(); e < 9*time.Millisecond || e > 12*time.Millisecond {
		t.Fatalf("expected service %v, want about 10 ms", e)
	}
	now := t0.Add(2 * time.Second)
	if d.Allow(now.Add(5*time.Millisecond), now) {
		t.Fatal("admitted a request with 5 ms left against a 10 ms service time")
	}
	if !d.Allow(now.Add(20*time.Millisecond), now) {
		t.Fatal("refused a request with 20 ms left")
	}
	if d.Allow(now.Add(-time.Millisecond), now) {
		t.Fatal("admitted a request past its deadline")
	}
}

func TestLatencyHistogramQuantiles(t *testing.T) {
	var h latencyHistogram
	for i := 1; i <= 1000; i++ {
		h.observe(time.Duration(i) * time.Microsecond)
	}
	var b [latBuckets]uint32
	n := h.drain(&b)
	if n != 1000 || h.count() != 0 {
		t.Fatalf("drained %d, left %d; want 1000, 0", n, h.count())
	}
	for _, q := range []float64{0.5, 0.9, 0.99} {
		got := quantile(&b, n, q)
		want := time.Duration(q*1000) * time.Microsecond
		if math.Abs(float64(got-want)) > 0.125*float64(want) {
			t.Errorf("q%.2f = %v, want %v ± 12.5%%", q, got, want)
		}
	}
	for _, d := range []time.Duration{-1, 0, 1, 3, 4, 7, 8, 1 << 40, math.MaxInt64} {
		i := latIndex(d)
		if i < 0 || i >= latBuckets {
			t.Fatalf("latIndex(%d) = %d out of range", d, i)
		}
		if d >= 4 && d < 1<<40 {
			if v := latValue(i); math.Abs(float64(v-d)) > 0.125*float64(d)+1 {
				t.Errorf("latValue(latIndex(%d)) = %d, off by more than 12.5%%", d, v)
			}
		}
	}
}

// TestGradientMeasuresFullTime checks the gate's account of the time it was
// full (at least limit−1 in flight, over all priorities) and the sampled
// releases in it, the throughput target's capacity.
func TestGradientMeasuresFullTime(t *testing.T) {
	g := mustGradient(t, GradientConfig{InitialLimit: 4, MinLimit: 1})
	clk := shedtest.NewClock(t0)
	g.setClock(clk.Now)
	at := func(ms int) { clk.Set(t0.Add(time.Duration(ms) * time.Millisecond)) }
	g.Read(t0)
	g.Acquire(Default, false)
	g.Acquire(Default, false) // 2 in flight: not full
	at(10)
	g.take(High) // 3 = limit−1, a slot taken past the gate: full from 10 ms
	at(12)
	g.Acquire(Critical, false)
	at(20)
	g.Release(Default, time.Millisecond, true) // 4 → 3: still full, one served
	at(25)
	g.Release(Default, 0, false) // 3 → 2: full until 25 ms; no sample, not counted
	at(40)
	g.Release(High, time.Millisecond, true) // not full: not counted
	at(50)
	g.Acquire(Default, false)
	at(60)
	g.Acquire(Default, true) // full again from 60 ms
	at(100)
	r := g.read(t0.Add(time.Hour)) // the Tick's time is not the gate's clock
	if r.full != 55*time.Millisecond || r.fullDone != 1 {
		t.Fatalf("full %v with %d served, want 55ms (10–25 ms and 60–100 ms) with 1", r.full, r.fullDone)
	}
	// A period still open at a Read is counted up to it and goes on.
	at(150)
	g.Release(Critical, time.Millisecond, true)
	at(200)
	r = g.read(t0.Add(time.Hour))
	if r.full != 50*time.Millisecond || r.fullDone != 1 {
		t.Fatalf("full %v with %d served, want 50ms with 1", r.full, r.fullDone)
	}
	// Releases while no period is open are not counted: with 6 in flight
	// under a limit of 10 the gate is not full, and when the limit falls
	// to 4 nothing is admitted to open a period.
	g.limit.Store(10)
	for range 4 {
		g.Acquire(Default, false)
	}
	g.limit.Store(4)
	at(300)
	for range 3 {
		g.Release(Default, time.Millisecond, true) // 6 → 3, at or over the full line of 3
	}
	if r = g.read(t0); r.full != 0 || r.fullDone != 0 {
		t.Fatalf("after releases with no full period open: full %v with %d served, want none", r.full, r.fullDone)
	}
}

// TestGradientShrinksAtOnceInASurge: when a surge fills the gate and the
// requests leaving it took far longer than the limit tolerates, each takes
// a slot off the limit at once, down to MinLimit, rather than waiting for
// windows; a burst that the gate does not refuse in numbers does not.
func TestGradientShrinksAtOnceInASurge(t *testing.T) {
	g := mustGradient(t, GradientConfig{InitialLimit: 20})
	now := t0
	for range 3 { // baseline: 1 ms
		for range 30 {
			g.Acquire(Default, false)
			g.Release(Default, time.Millisecond, true)
		}
		now = now.Add(100 * time.Millisecond)
		g.Read(now)
	}
	for g.Acquire(Default, false) { // the gate fills
	}
	// A burst: full, one refusal, slow releases: the limit stays.
	g.Release(Default, 20*time.Millisecond, true)
	g.Acquire(Default, false)
	if l := g.Limit(); l != 20 {
		t.Fatalf("limit %d after a slow release without a surge of refusals, want 20", l)
	}
	// A surge: the gate refuses more than it holds.
	for range 40 {
		g.Acquire(Default, false)
	}
	for i := range 30 {
		g.Release(Default, 20*time.Millisecond, true)
		g.Acquire(Default, false)
		if want := max(20-(i+1), 4); g.Limit() != want {
			t.Fatalf("after %d slow releases from a full gate: limit %d, want %d", i+1, g.Limit(), want)
		}
	}
}

// TestGradientHoldsItsFloorForItsOwnQueue: in front of one worker (latency
// grows with every request in flight) under a flood, the limit comes down
// to its floor and stays there: latency fell with the limit, so the floor
// is not taken for a slower service, and the baseline is not re-measured
// upward.
func TestGradientHoldsItsFloorForItsOwnQueue(t *testing.T) {
	g := mustGradient(t, GradientConfig{})
	srv := &server{k: 1, s0: time.Millisecond, demand: 2}
	now := t0
	for range 20 {
		now = now.Add(100 * time.Millisecond)
		srv.window(g, now)
	}
	base := g.Baseline()
	srv.demand = 1000
	worst := 0
	for i := range 600 { // 60 s
		now = now.Add(100 * time.Millisecond)
		srv.window(g, now)
		if i >= 50 {
			worst = max(worst, g.Limit())
		}
	}
	if worst > 6 {
		t.Errorf("limit up to %d in a one-worker flood after 5 s, want it held near its floor of 4", worst)
	}
	if b := g.Baseline(); b > 2*base {
		t.Errorf("baseline %v after 60 s of flood, was %v: re-measured on the queue's own latency", b, base)
	}
}

// TestGradientCountsOnlyServedWhileFull: requests dropped or timed out
// leave a full gate without counting towards the capacity; their latency
// is still a sample.
func TestGradientCountsOnlyServedWhileFull(t *testing.T) {
	g := mustGradient(t, GradientConfig{InitialLimit: 4, MinLimit: 1})
	for range 4 {
		g.Acquire(Default, false)
	}
	g.release(Default, time.Millisecond, true, false) // dropped
	g.Acquire(Default, false)
	g.release(Default, time.Millisecond, true, true) // served
	if n := g.fullDone.Load(); n != 1 {
		t.Fatalf("%d counted as served while full, want 1", n)
	}
	if n := g.lat.count(); n != 2 {
		t.Fatalf("%d latency samples, want 2", n)
	}
}
