package shed

import (
	"context"
	"testing"
	"time"
)

func benchResource(b *testing.B) *Resource {
	b.Helper()
	r, err := New("bench", Config{})
	if err != nil {
		b.Fatal(err)
	}
	r.Controller().threshold.Store(uint32(LevelOf(Default, 0)))
	return r
}

// BenchmarkRefuse is the refusal path: a request below the threshold, its
// arrival recorded and the refusal counted.
func BenchmarkRefuse(b *testing.B) {
	r := benchResource(b)
	ctx := context.Background()
	l := LevelOf(Low, 9)
	if _, err := r.Acquire(ctx, l); err == nil {
		b.Fatal("not refused")
	}
	b.ReportAllocs()
	for b.Loop() {
		_, _ = r.Acquire(ctx, l)
	}
}

// BenchmarkRefusePinned refuses under an operator's pin, which reads the
// clock for the pin's expiry.
func BenchmarkRefusePinned(b *testing.B) {
	r := benchResource(b)
	if err := r.Pin(CriticalOnly, time.Now().Add(time.Hour)); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		_, _ = r.Acquire(ctx, LevelOf(Low, 9))
	}
}

// BenchmarkRefuseParallel refuses from every P at once (cache-line
// contention on the shared counters).
func BenchmarkRefuseParallel(b *testing.B) {
	r := benchResource(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			_, _ = r.Acquire(ctx, LevelOf(Low, uint8(i)))
			i++
		}
	})
}

// BenchmarkAdmit is an admitted request: threshold, deadline, concurrency
// gate, then Release with a latency sample.
func BenchmarkAdmit(b *testing.B) {
	r := benchResource(b)
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	l := LevelOf(High, 9)
	b.ReportAllocs()
	for b.Loop() {
		p, err := r.Acquire(ctx, l)
		if err != nil {
			b.Fatal(err)
		}
		r.Release(p, time.Millisecond, OutcomeSuccess)
	}
}

func BenchmarkAdmitParallel(b *testing.B) {
	r := benchResource(b)
	r.Concurrency().limit.Store(1 << 30)
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			p, err := r.Acquire(ctx, LevelOf(High, uint8(i)))
			if err != nil {
				b.Error(err)
				return
			}
			r.Release(p, time.Millisecond, OutcomeSuccess)
			i++
		}
	})
}

// BenchmarkHistogramRecord is the histogram update alone.
func BenchmarkHistogramRecord(b *testing.B) {
	c, err := NewController(ControllerConfig{})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		c.Record(Level(i % NumLevels))
		i++
	}
}

// BenchmarkControllerUpdate is one control tick over a full histogram.
func BenchmarkControllerUpdate(b *testing.B) {
	c, err := NewController(ControllerConfig{})
	if err != nil {
		b.Fatal(err)
	}
	for l := range NumLevels {
		for range 10 {
			c.Record(Level(l))
		}
	}
	now := t0
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		c.Update(now, Reading{Overloaded: i%2 == 0})
		now = now.Add(tick)
		i++
	}
}

func BenchmarkCohort(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = Cohort("user-1234567", 0x1234)
	}
}
