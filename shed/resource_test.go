package shed

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/levee-dev/levee/shed/shedtest"
)

// deadlineCtx is a context with a deadline in fake time and no timer.
type deadlineCtx struct {
	context.Context
	d time.Time
}

func (c deadlineCtx) Deadline() (time.Time, bool) { return c.d, true }

func mustResource(t testing.TB, cfg Config) *Resource {
	t.Helper()
	r, err := New("api", cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRefusalCarriesReasonAndRetry(t *testing.T) {
	clk := shedtest.NewClock(t0)
	r := mustResource(t, Config{Clock: clk.Now})
	r.Controller().threshold.Store(uint32(LevelOf(Default, 0)))
	_, err := r.Acquire(context.Background(), LevelOf(Low, 127))
	var ref *Refusal
	if !errors.As(err, &ref) || !errors.Is(err, ErrRefused) {
		t.Fatalf("Acquire below threshold: %v; want a *Refusal wrapping ErrRefused", err)
	}
	if ref.Reason != ReasonThreshold || ref.RetryAfter != time.Second || ref.Resource != "api" {
		t.Fatalf("refusal %+v; want threshold, 1s, api", ref)
	}
	p, err := r.Acquire(context.Background(), LevelOf(Default, 0))
	if err != nil || !p.Valid() || p.Priority() != Default {
		t.Fatalf("Acquire at threshold: %v, %v", p, err)
	}
	r.Release(p, time.Millisecond, OutcomeSuccess)
	if c := r.Counts(Low); c.Refused[ReasonThreshold] != 1 || c.Admitted != 0 {
		t.Fatalf("low counts %+v; want one threshold refusal", c)
	}
	if c := r.Counts(Default); c.Admitted != 1 {
		t.Fatalf("default counts %+v; want one admitted", c)
	}
	if r.Inflight() != 0 {
		t.Fatalf("inflight %d after release, want 0", r.Inflight())
	}

	// Under a pin the retry delay is the time left, capped.
	if err := r.Pin(CriticalOnly, t0.Add(20*time.Second)); err != nil {
		t.Fatal(err)
	}
	_, err = r.Acquire(context.Background(), LevelOf(High, 127))
	if !errors.As(err, &ref) || ref.Reason != ReasonOverride || ref.RetryAfter != 20*time.Second {
		t.Fatalf("under a 20 s pin: %v; want override with retry 20s", err)
	}
	if err := r.Pin(CriticalOnly, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	_, err = r.Acquire(context.Background(), LevelOf(High, 127))
	if !errors.As(err, &ref) || ref.RetryAfter != time.Minute {
		t.Fatalf("under a 1 h pin: %v; want retry capped at 1m", err)
	}
	clk.Set(t0.Add(time.Hour))
	r.Tick(clk.Now())
	if _, err := r.Acquire(context.Background(), LevelOf(High, 127)); err != nil {
		t.Fatalf("after the pin expired: %v", err)
	}
}

func TestShadowModeAdmitsButCounts(t *testing.T) {
	clk := shedtest.NewClock(t0)
	r := mustResource(t, Config{Clock: clk.Now, Shadow: true, Concurrency: GradientConfig{InitialLimit: 5, MinLimit: 1}})
	r.Controller().threshold.Store(uint32(LevelOf(Default, 0)))
	r.Controller().marginal.Store(uint32(Default)) // as an Update with Default traffic would set it
	var permits []Permit
	for range 10 {
		p, err := r.Acquire(context.Background(), LevelOf(Low, 3))
		if err != nil {
			t.Fatalf("shadow mode refused: %v", err)
		}
		permits = append(permits, p)
	}
	if err := r.Precheck(LevelOf(Low, 3), clk.Now()); err != nil {
		t.Fatalf("shadow mode precheck refused: %v", err)
	}
	c := r.Counts(Low)
	if c.Admitted != 10 || c.WouldShed[ReasonThreshold] != 10 || c.Refused[ReasonThreshold] != 0 {
		t.Fatalf("counts %+v; want 10 admitted, 10 would-shed by threshold, none refused", c)
	}
	// At the marginal priority the concurrency gate (limit 5) would
	// refuse 5 of 10; above it the gate takes the slots and refuses
	// nothing, as enforcement does, and counts them as taken past it.
	for _, prio := range []Priority{Default, High} {
		for range 10 {
			p, err := r.Acquire(context.Background(), LevelOf(prio, 3))
			if err != nil {
				t.Fatalf("shadow mode refused: %v", err)
			}
			permits = append(permits, p)
		}
	}
	if c := r.Counts(Default); c.WouldShed[ReasonConcurrency] != 5 || c.Admitted != 10 {
		t.Fatalf("default counts %+v; want 10 admitted, 5 would-shed by concurrency", c)
	}
	if c := r.Counts(High); c.WouldShed[ReasonConcurrency] != 0 || c.Admitted != 10 {
		t.Fatalf("high counts %+v; want 10 admitted, none would-shed by concurrency", c)
	}
	if n := r.conc.exempt.Load(); n != 10 {
		t.Fatalf("%d slots taken past the gate, want the 10 of High", n)
	}
	ctx := deadlineCtx{context.Background(), clk.Now().Add(time.Microsecond)}
	r.Deadlines().expected.Store(int64(time.Millisecond))
	for _, prio := range []Priority{Default, High} {
		p, err := r.Acquire(ctx, LevelOf(prio, 3))
		if err != nil {
			t.Fatalf("shadow mode refused on deadline: %v", err)
		}
		permits = append(permits, p)
	}
	// The deadline gate, like the concurrency gate, holds the marginal
	// priority only.
	if c := r.Counts(Default); c.WouldShed[ReasonDeadline] != 1 {
		t.Fatalf("default counts %+v; want one would-shed by deadline", c)
	}
	if c := r.Counts(High); c.WouldShed[ReasonDeadline] != 0 {
		t.Fatalf("high counts %+v; want none would-shed by deadline", c)
	}
	for _, p := range permits {
		r.Release(p, time.Millisecond, OutcomeSuccess)
	}
	if r.Inflight() != 0 {
		t.Fatalf("inflight %d after releasing everything", r.Inflight())
	}
	// Turning shadow off enforces.
	r.SetShadow(false)
	if _, err := r.Acquire(context.Background(), LevelOf(Low, 3)); !errors.Is(err, ErrRefused) {
		t.Fatalf("enforcing mode admitted below the threshold: %v", err)
	}
	if err := r.Precheck(LevelOf(Low, 3), clk.Now()); !errors.Is(err, ErrRefused) {
		t.Fatalf("enforcing precheck admitted below the threshold: %v", err)
	}
}

func TestDeadlineRefusal(t *testing.T) {
	clk := shedtest.NewClock(t0)
	r := mustResource(t, Config{Clock: clk.Now})
	r.Tick(clk.Now())
	for range 20 {
		p, err := r.Acquire(context.Background(), LevelOf(Default, 1))
		if err != nil {
			t.Fatal(err)
		}
		r.Release(p, 30*time.Millisecond, OutcomeSuccess)
	}
	clk.Add(time.Second)
	r.Tick(clk.Now())
	if e := r.Status(clk.Now()).ExpectedService; e < 25*time.Millisecond || e > 35*time.Millisecond {
		t.Fatalf("expected service %v, want about 30 ms", e)
	}
	_, err := r.Acquire(deadlineCtx{context.Background(), clk.Now().Add(10 * time.Millisecond)}, LevelOf(Critical, 1))
	var ref *Refusal
	if !errors.As(err, &ref) || ref.Reason != ReasonDeadline || ref.RetryAfter != 0 {
		t.Fatalf("10 ms left against 30 ms service: %v; want a deadline refusal with no retry", err)
	}
	p, err := r.Acquire(deadlineCtx{context.Background(), clk.Now().Add(100 * time.Millisecond)}, LevelOf(Critical, 1))
	if err != nil {
		t.Fatalf("100 ms left: %v", err)
	}
	r.Release(p, 0, OutcomeIgnored)
	// With default traffic the marginal priority, the gate refuses it
	// and anything less important, and never a more important request.
	for range 20 {
		p, err := r.Acquire(context.Background(), LevelOf(Default, 1))
		if err != nil {
			t.Fatal(err)
		}
		r.Release(p, 30*time.Millisecond, OutcomeSuccess)
	}
	clk.Add(100 * time.Millisecond)
	r.Tick(clk.Now())
	if m := r.Controller().Marginal(); m != Default {
		t.Fatalf("marginal %v, want default", m)
	}
	short := deadlineCtx{context.Background(), clk.Now().Add(10 * time.Millisecond)}
	if _, err := r.Acquire(short, LevelOf(Default, 1)); !errors.As(err, &ref) || ref.Reason != ReasonDeadline {
		t.Fatalf("default with 10 ms left: %v; want a deadline refusal", err)
	}
	p, err = r.Acquire(short, LevelOf(High, 1))
	if err != nil {
		t.Fatalf("high, more important than the margin, with 10 ms left: %v; want it admitted", err)
	}
	r.Release(p, 0, OutcomeIgnored)
}

func TestResourceWithoutConcurrencyLimit(t *testing.T) {
	var overloaded atomic.Bool
	clk := shedtest.NewClock(t0)
	r := mustResource(t, Config{
		Clock: clk.Now, NoConcurrencyLimit: true, NoDeadline: true,
		Signals: []Signal{SignalFunc(func(time.Time) Reading { return Reading{Overloaded: overloaded.Load()} })},
	})
	if r.Concurrency() != nil || r.Deadlines() != nil {
		t.Fatal("disabled parts still present")
	}
	var ps []Permit
	for i := range 128 {
		p, err := r.Acquire(context.Background(), LevelOf(Sheddable, uint8(i)))
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	if r.Inflight() != 128 {
		t.Fatalf("inflight %d, want 128", r.Inflight())
	}
	overloaded.Store(true)
	r.Tick(clk.Now())
	if th := r.Status(clk.Now()).Threshold; th == 0 {
		t.Fatal("an extra signal's overload did not raise the threshold")
	}
	// The raise is put down to the signal; once the hold runs out with
	// nothing overloaded, the fall is a probe.
	overloaded.Store(false)
	clk.Add(1100 * time.Millisecond)
	r.Tick(clk.Now())
	var want [NumCauses]uint64
	want[CauseSignal], want[CauseProbe] = 1, 1
	if got := r.Status(clk.Now()).Moves; got != want {
		t.Fatalf("moves by cause %v, want %v (one signal raise, one probe)", got, want)
	}
	for _, p := range ps {
		r.Release(p, time.Millisecond, OutcomeSuccess)
	}
	if r.Inflight() != 0 {
		t.Fatalf("inflight %d after release", r.Inflight())
	}
	r.Release(Permit{}, 0, OutcomeSuccess) // the zero permit is a no-op
	if r.Inflight() != 0 {
		t.Fatal("releasing the zero permit changed inflight")
	}
}

func TestConfigValidation(t *testing.T) {
	for _, cfg := range []Config{
		{Controller: ControllerConfig{RaiseStep: 2}},
		{Concurrency: GradientConfig{MinLimit: -1}},
		{QueueDelay: CoDelConfig{Target: -1}},
		{Deadline: DeadlineConfig{Quantile: 2}},
		{RetryAfter: time.Minute, MaxRetryAfter: time.Second},
	} {
		if _, err := New("x", cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
	if _, err := New("", Config{}); err == nil {
		t.Error("New with an empty name accepted")
	}
}

func TestPermitTableExpiry(t *testing.T) {
	clk := shedtest.NewClock(t0)
	r := mustResource(t, Config{Clock: clk.Now, Concurrency: GradientConfig{InitialLimit: 3, MinLimit: 1}})
	pt := NewPermitTable(r)
	ctx := context.Background()
	var ids []uint64
	for range 3 {
		id, err := pt.Acquire(ctx, LevelOf(Default, 1), clk.Now(), 5*time.Second)
		if err != nil || id == 0 {
			t.Fatalf("Acquire = %d, %v", id, err)
		}
		ids = append(ids, id)
	}
	if _, err := pt.Acquire(ctx, LevelOf(Default, 1), clk.Now(), 5*time.Second); !errors.Is(err, ErrRefused) {
		t.Fatalf("fourth permit over a limit of 3: %v, want refused", err)
	}
	if err := pt.Release(ids[0], time.Millisecond, OutcomeSuccess); err != nil {
		t.Fatal(err)
	}
	if err := pt.Release(ids[0], time.Millisecond, OutcomeSuccess); !errors.Is(err, ErrUnknownPermit) {
		t.Fatalf("double release: %v, want ErrUnknownPermit", err)
	}
	if n := pt.Sweep(t0.Add(5*time.Second - 1)); n != 0 {
		t.Fatalf("swept %d before expiry", n)
	}
	if n := pt.Sweep(t0.Add(5 * time.Second)); n != 2 || pt.Len() != 0 || r.Inflight() != 0 {
		t.Fatalf("swept %d at expiry, %d left, inflight %d; want 2, 0, 0", n, pt.Len(), r.Inflight())
	}
	if err := pt.Release(ids[1], 0, OutcomeSuccess); !errors.Is(err, ErrUnknownPermit) {
		t.Fatalf("release after expiry: %v, want ErrUnknownPermit", err)
	}
	if _, err := pt.Acquire(ctx, LevelOf(Default, 1), clk.Now(), 0); err == nil {
		t.Fatal("zero ttl accepted")
	}
}

func TestResourceConcurrentUse(t *testing.T) {
	// Acquire/Release from many goroutines, permits through the table, and
	// the owner's tick, all at once; run with -race.
	r := mustResource(t, Config{})
	pt := NewPermitTable(r)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var admitted, refused atomic.Int64
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				l := Level((i*13 + g*7) % NumLevels)
				if g == 0 {
					id, err := pt.Acquire(ctx, l, time.Now(), time.Second)
					if err == nil {
						admitted.Add(1)
						_ = pt.Release(id, time.Microsecond, OutcomeSuccess)
					} else {
						refused.Add(1)
					}
					continue
				}
				p, err := r.Acquire(ctx, l)
				if err != nil {
					refused.Add(1)
					continue
				}
				admitted.Add(1)
				r.Release(p, time.Duration(i%50)*time.Microsecond, OutcomeSuccess)
			}
		}()
	}
	for i := range 40 {
		r.Tick(time.Now())
		pt.Sweep(time.Now())
		_ = r.Status(time.Now())
		if i == 20 {
			r.SetShadow(true)
		}
		time.Sleep(5 * time.Millisecond) // lets the load run between ticks; nothing is awaited
	}
	cancel()
	wg.Wait()
	if admitted.Load() == 0 {
		t.Fatal("nothing admitted")
	}
	if r.Inflight() != 0 || pt.Len() != 0 {
		t.Fatalf("inflight %d, permits %d after all goroutines finished; want 0, 0", r.Inflight(), pt.Len())
	}
}

func TestRunStopsWithContext(t *testing.T) {
	r := mustResource(t, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, time.Millisecond) }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v, want context.Canceled", err)
	}
	if err := r.Run(context.Background(), 0); err == nil {
		t.Fatal("Run accepted a zero interval")
	}
}

func TestMetrics(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer func() { _ = mp.Shutdown(context.Background()) }()
	m, err := NewMetrics(mp.Meter("levee/shed"))
	if err != nil {
		t.Fatal(err)
	}
	clk := shedtest.NewClock(t0)
	r := mustResource(t, Config{Clock: clk.Now})
	reg, err := m.Register(r)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = reg.Unregister() }()
	r.Controller().threshold.Store(uint32(LevelOf(Default, 0)))
	for range 3 {
		p, err := r.Acquire(context.Background(), LevelOf(High, 1))
		if err != nil {
			t.Fatal(err)
		}
		r.Release(p, time.Millisecond, OutcomeSuccess)
	}
	for range 2 {
		if _, err := r.Acquire(context.Background(), LevelOf(Low, 1)); err == nil {
			t.Fatal("admitted below the threshold")
		}
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, mt := range sm.Metrics {
			switch d := mt.Data.(type) {
			case metricdata.Sum[int64]:
				for _, dp := range d.DataPoints {
					got[mt.Name+labels(dp.Attributes)] = dp.Value
				}
			case metricdata.Gauge[int64]:
				for _, dp := range d.DataPoints {
					got[mt.Name+labels(dp.Attributes)] = dp.Value
				}
			}
		}
	}
	want := map[string]int64{
		"levee.shed.admitted{priority=high,resource=api}":                   3,
		"levee.shed.admitted{priority=low,resource=api}":                    0,
		"levee.shed.refused{priority=low,reason=threshold,resource=api}":    2,
		"levee.shed.refused{priority=high,reason=threshold,resource=api}":   0,
		"levee.shed.threshold{resource=api}":                                int64(LevelOf(Default, 0)),
		"levee.shed.concurrency_limit{resource=api}":                        20,
		"levee.shed.inflight{resource=api}":                                 0,
		"levee.shed.would_shed{priority=low,reason=threshold,resource=api}": 0,
		"levee.shed.threshold_moves{cause=surge,resource=api}":              0,
		"levee.shed.threshold_moves{cause=probe,resource=api}":              0,
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %d (present %v), want %d", k, g, ok, v)
		}
	}
}

func labels(s attribute.Set) string {
	out := "{"
	for i, kv := range s.ToSlice() {
		if i > 0 {
			out += ","
		}
		out += string(kv.Key) + "=" + kv.Value.String()
	}
	return out + "}"
}

const debugSim = false

func pct(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[int(q*float64(len(s)-1))]
}

// job is a request being served in the simulation.
type job struct {
	done time.Time
	p    Permit
	lat  time.Duration
}

type jobHeap []job

func (h jobHeap) Len() int           { return len(h) }
func (h jobHeap) Less(i, j int) bool { return h[i].done.Before(h[j].done) }
func (h jobHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *jobHeap) Push(x any)        { *h = append(*h, x.(job)) }
func (h *jobHeap) Pop() any {
	old := *h
	j := old[len(old)-1]
	*h = old[:len(old)-1]
	return j
}

// TestSimulationLowPriorityFlood drives a whole Resource with a synthetic,
// deterministic load model in fake time (the R1 shape): a service with 20
// slots and a 10 ms service time (capacity C = 2,000 requests/s, time
// shared beyond 20 in flight) takes critical traffic at 0.5C and sheddable
// at 0.25C, then a 12× sheddable flood (3C) for 20 s. Every request carries
// a 100 ms deadline and a user id hashed into a cohort.
func TestSimulationLowPriorityFlood(t *testing.T) {
	clk := shedtest.NewClock(t0)
	r := mustResource(t, Config{Clock: clk.Now})
	const (
		slots  = 20
		s0     = 10 * time.Millisecond
		floodA = 5 * time.Second
		floodB = 25 * time.Second
		end    = 45 * time.Second
	)
	salt := CohortSalter{Seed: 1}.Salt(t0)
	var (
		jobs                 jobHeap
		critAcc, shedAcc     float64
		critN, shedN         int
		offered, refused     [NumPriorities]int
		served               [NumPriorities]int
		critLat, critLatBase []time.Duration
		floodServed          int
		floodShedOffered     int
		floodShedRefused     int
		maxThreshold         Level
	)
	ctx := context.Background()
	try := func(p Priority, user string, now time.Time, inFlood bool) {
		i := p.index()
		offered[i]++
		l := LevelOf(p, Cohort(user, salt))
		permit, err := r.Acquire(deadlineCtx{ctx, now.Add(100 * time.Millisecond)}, l)
		if inFlood && p == Sheddable {
			floodShedOffered++
		}
		if err != nil {
			refused[i]++
			if p == Critical {
				t.Fatalf("%v: critical request refused: %v", now.Sub(t0), err)
			}
			if inFlood && p == Sheddable {
				floodShedRefused++
			}
			return
		}
		n := r.Inflight()
		lat := s0 * time.Duration(max(n, slots)) / slots
		heap.Push(&jobs, job{done: now.Add(lat), p: permit, lat: lat})
	}
	for ms := time.Duration(0); ms < end; ms += time.Millisecond {
		now := t0.Add(ms)
		clk.Set(now)
		for jobs.Len() > 0 && !jobs[0].done.After(now) {
			j := heap.Pop(&jobs).(job)
			r.Release(j.p, j.lat, OutcomeSuccess)
			served[j.p.prio.index()]++
			if j.p.prio == Critical {
				switch {
				case ms < floodA:
					critLatBase = append(critLatBase, j.lat)
				case ms > floodA+2*time.Second && ms < floodB:
					critLat = append(critLat, j.lat)
				}
			}
			if ms >= floodA+2*time.Second && ms < floodB {
				floodServed++
			}
		}
		inFlood := ms >= floodA && ms < floodB
		shedRate := 0.5 // per ms: 0.25C
		if inFlood {
			shedRate = 6 // 3C
		}
		for critAcc += 1.0; critAcc >= 1; critAcc-- { // 0.5C
			try(Critical, fmt.Sprintf("c%d", critN%5000), now, inFlood)
			critN++
		}
		for shedAcc += shedRate; shedAcc >= 1; shedAcc-- {
			try(Sheddable, fmt.Sprintf("s%d", shedN%50000), now, inFlood)
			shedN++
		}
		if ms%(100*time.Millisecond) == 0 {
			if debugSim && ms%(500*time.Millisecond) == 0 {
				st := r.Status(now)
				t.Logf("%v th=%v L=%d in=%d base=%v", ms, st.Threshold, st.Limit, st.Inflight, r.Concurrency().Baseline())
			}
			r.Tick(now)
			maxThreshold = max(maxThreshold, r.Status(now).Threshold)
		}
	}
	ci, si := Critical.index(), Sheddable.index()
	p99, p99Base := pct(critLat, 0.99), pct(critLatBase, 0.99)
	t.Logf("critical offered %d refused %d; p99 latency %v in the flood, %v before it", offered[ci], refused[ci], p99, p99Base)
	t.Logf("sheddable offered %d refused %d; in flood %d of %d refused", offered[si], refused[si], floodShedRefused, floodShedOffered)
	floodSecs := (floodB - floodA - 2*time.Second).Seconds()
	t.Logf("goodput in flood %.0f/s (C = 2000/s); max threshold %v; final %v", float64(floodServed)/floodSecs, maxThreshold, r.Status(clk.Now()).Threshold)

	if refused[ci] != 0 {
		t.Fatalf("%d critical requests refused", refused[ci])
	}
	if frac := float64(floodShedRefused) / float64(floodShedOffered); frac < 0.5 {
		t.Errorf("only %.0f%% of the sheddable flood was shed", 100*frac)
	}
	if gp := float64(floodServed) / floodSecs; gp < 0.8*2000 {
		t.Errorf("goodput during the flood %.0f/s, want ≥ 0.8C = 1600/s (no congestive collapse)", gp)
	}
	if p99 > 2*p99Base {
		t.Errorf("critical p99 %v during the flood, want ≤ 2× its unloaded p99 %v", p99, p99Base)
	}
	if maxThreshold.Priority() != Sheddable {
		t.Errorf("threshold reached %v; the flood is all sheddable, nothing else should be shed", maxThreshold)
	}
	if final := r.Status(clk.Now()).Threshold; final >= maxThreshold {
		t.Errorf("threshold %v did not fall in the 20 s after the flood (peak %v)", final, maxThreshold)
	}
}

// TestQueueKeeps: the queue left at a tick keeps the budgets when, drained
// at the tick's completions, it takes at most a third of their harmonic
// mean; one long budget among short ones does not wave a long queue
// through, and a queue that completed nothing, or a tick of no length,
// keeps nothing.
func TestQueueKeeps(t *testing.T) {
	perSec := func(budgets ...time.Duration) float64 {
		var sum uint64
		for _, b := range budgets {
			sum += invBudget(b)
		}
		return float64(sum) / invBudgetUnit / float64(len(budgets))
	}
	short := make([]time.Duration, 100)
	for i := range short {
		short[i] = 100 * time.Millisecond
	}
	mixed := append(append([]time.Duration(nil), short...), time.Hour)
	tick := func(inflight int64, completed uint64) gateReading {
		return gateReading{inflight: inflight, completed: completed, interval: 100 * time.Millisecond}
	}
	for _, c := range []struct {
		name   string
		gr     gateReading
		perSec float64
		want   bool
	}{
		{"10 ms of queue, 100 ms budgets", tick(10, 100), perSec(short...), true},
		{"33 ms of queue, 100 ms budgets", tick(33, 100), perSec(short...), true},
		{"40 ms of queue, 100 ms budgets", tick(40, 100), perSec(short...), false},
		{"40 ms of queue, one budget of an hour among them", tick(40, 100), perSec(mixed...), false},
		{"10 ms of queue, budgets already spent", tick(10, 100), perSec(0, -time.Second), false},
		{"nothing completed", tick(10, 0), perSec(short...), false},
		{"nothing in flight, nothing completed", tick(0, 0), perSec(short...), true},
		{"a tick of no length", gateReading{inflight: 10, completed: 100}, perSec(short...), false},
	} {
		if got := queueKeeps(c.gr, c.perSec); got != c.want {
			t.Errorf("%s: queueKeeps = %v, want %v", c.name, got, c.want)
		}
	}
	if got, want := invBudget(time.Hour), uint64(277); got != want { // 1e6/3600, truncated
		t.Errorf("invBudget(1h) = %d, want %d", got, want)
	}
}
