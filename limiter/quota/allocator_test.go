package quota

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/shed"
)

var perSecond = limiter.Limit{Rate: 100, Period: time.Second, Burst: 100}

func TestAllocatorTwoNodes(t *testing.T) {
	a := NewAllocator(10 * time.Second)
	t0 := time.Unix(1000, 0)
	// Node a's client asks 10/s, node b's 1000/s: 11 (10 with 5% headroom,
	// rounded up) and 90 (the limit less a's demand).
	a.Report(t0, 1, perSecond, "a", []Demand{{ID: 1, Rate: 10}}, nil)
	g := a.Report(t0, 1, perSecond, "b", []Demand{{ID: 1, Rate: 1000}}, nil)
	if g.FillInterval != time.Second || g.Pool != 100 || g.Tokens[0] != 90 {
		t.Fatalf("b's grant %+v, want 90 of 100 every 1 s", g)
	}
	g = a.Report(t0.Add(time.Second), 1, perSecond, "a", []Demand{{ID: 1, Rate: 10}}, nil)
	if g.Tokens[0] != 11 {
		t.Fatalf("a's grant %+v, want 11", g)
	}
	// A demand that jitters around 10/s leaves its grant as it is.
	for _, r := range []float64{9.6, 10.1, 10.4} {
		if g = a.Report(t0.Add(time.Second), 1, perSecond, "a", []Demand{{ID: 1, Rate: r}}, nil); g.Tokens[0] != 11 {
			t.Fatalf("a's grant %+v at %v/s, want 11 still", g, r)
		}
	}
	a.Report(t0.Add(time.Second), 1, perSecond, "a", []Demand{{ID: 1, Rate: 10}}, nil)
	// a's client leaves (a reports none): b gets everything.
	a.Report(t0.Add(2*time.Second), 1, perSecond, "a", nil, nil)
	g = a.Report(t0.Add(2*time.Second), 1, perSecond, "b", []Demand{{ID: 1, Rate: 1000}}, nil)
	if g.Tokens[0] != 100 {
		t.Fatalf("b's grant %+v after a left, want 100", g)
	}
	// b falls silent: after the idle time, the bucket is gone.
	a.Expire(t0.Add(13 * time.Second))
	if b, p := a.Len(); b != 0 || p != 0 {
		t.Fatalf("Len = %d buckets, %d pairs after idle, want none", b, p)
	}
}

func TestAllocatorLimitChange(t *testing.T) {
	a := NewAllocator(10 * time.Second)
	t0 := time.Unix(1000, 0)
	ds := []Demand{{ID: 1, Rate: 1000}, {ID: 2, Rate: 1000}}
	g := a.Report(t0, 7, perSecond, "a", ds, nil)
	if g.Tokens[0]+g.Tokens[1] != 100 {
		t.Fatalf("grant %+v, want 100 in all", g)
	}
	g = a.Report(t0.Add(time.Second), 7, limiter.Limit{Rate: 10, Period: time.Second}, "a", ds, g.Tokens)
	if g.Tokens[0] != 5 || g.Tokens[1] != 5 {
		t.Fatalf("grant %+v after the limit fell to 10/s, want 5 and 5", g)
	}
	var st []BucketStats
	a.Each(func(s BucketStats) { st = append(st, s) })
	if len(st) != 1 || st[0].Demand != 2000 || st[0].Assigned != 10 || st[0].Clients != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestAdmitted(t *testing.T) {
	for _, c := range []struct {
		p    shed.Priority
		th   shed.Level
		want float64
	}{
		{shed.Sheddable, 0, 1},
		{shed.Sheddable, 64, 0.5},
		{shed.Sheddable, shed.NumCohorts, 0},
		{shed.Default, shed.NumCohorts, 1}, // sheddable gone, default untouched
		{shed.Low, shed.LevelOf(shed.Low, 96), 0.25},
		{shed.Critical, shed.CriticalOnly, 1},
		{shed.Critical, shed.NumLevels, 0},
	} {
		if got := Admitted(c.p, c.th); got != c.want {
			t.Errorf("Admitted(%v, %d) = %v, want %v", c.p, c.th, got, c.want)
		}
	}
	if Shrink(90, 0.5) != 45 || Shrink(90, 1) != 90 || Shrink(90, 0) != 0 {
		t.Error("Shrink")
	}
}

// BenchmarkReport is the owner's cost of one node's report for one bucket
// that n clients share, each node reporting one of them.
func BenchmarkReport(b *testing.B) {
	for _, n := range []int{3, 20, 200} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			a := NewAllocator(time.Minute)
			now := time.Unix(1000, 0)
			nodes := make([]string, n)
			for i := range nodes {
				nodes[i] = fmt.Sprint("node-", i)
				a.Report(now, 1, perSecond, nodes[i], []Demand{{ID: 1, Rate: float64(i)}}, nil)
			}
			ds := []Demand{{ID: 1}}
			var tok []uint64
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				ds[0].Rate = float64(i % 100)
				tok = a.Report(now, 1, perSecond, nodes[i%n], ds, tok).Tokens
			}
		})
	}
}

// BenchmarkPairMemory reports the owner's memory per tracked (bucket,
// client) pair: 10,000 buckets with 20 clients each.
func BenchmarkPairMemory(b *testing.B) {
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		a := NewAllocator(time.Minute)
		now := time.Unix(1000, 0)
		ds := make([]Demand, 20)
		for i := range ds {
			ds[i] = Demand{ID: uint64(i), Rate: float64(i)}
		}
		var tok []uint64
		for k := range uint64(10_000) {
			tok = a.Report(now, k, perSecond, "node-1", ds, tok).Tokens
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		_, pairs := a.Len()
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(pairs), "B/pair")
		runtime.KeepAlive(a)
	}
}
