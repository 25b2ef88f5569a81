package surge

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/tap"

	"github.com/levee-dev/levee/shed"
	"github.com/levee-dev/levee/shed/middleware"
)

// BenchResult is the in-process cost of a refusal, measured with
// testing.Benchmark.
type BenchResult struct {
	// Refuse is shed.Resource.Acquire refusing a request below the
	// threshold; Tap is the gRPC tap handle refusing one from its
	// metadata (label parsing and cohort hashing included).
	RefuseNs, TapNs         float64
	RefuseAllocs, TapAllocs int64
}

// benchRefusal measures levee's refusal path on a resource whose threshold
// was raised by real control ticks (an always-overloaded signal and
// recorded sheddable traffic), so it needs no access to internals.
func benchRefusal() BenchResult {
	overloaded := shed.SignalFunc(func(time.Time) shed.Reading { return shed.Reading{Overloaded: true} })
	r, err := shed.New("bench", shed.Config{Signals: []shed.Signal{overloaded}, NoConcurrencyLimit: true})
	if err != nil {
		return BenchResult{}
	}
	ctx := context.Background()
	now := time.Now()
	for i := range 4 * shed.NumCohorts {
		if p, err := r.Acquire(ctx, shed.LevelOf(shed.Sheddable, uint8(i))); err == nil {
			r.Release(p, time.Millisecond, shed.OutcomeSuccess)
		}
	}
	for i := range 3 {
		r.Tick(now.Add(time.Duration(i) * 100 * time.Millisecond))
	}
	low := shed.LevelOf(shed.Sheddable, 0)
	if _, err := r.Acquire(ctx, low); err == nil {
		return BenchResult{} // the threshold did not rise: nothing to measure
	}
	refuse := testing.Benchmark(func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = r.Acquire(ctx, low)
		}
	})
	g := middleware.NewGuard(r, middleware.GuardOptions{})
	info := &tap.Info{FullMethodName: MethodWork, Header: metadata.Pairs(shed.HeaderPriority, "sheddable", shed.HeaderCohort, "0")}
	tapRes := testing.Benchmark(func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = g.Tap(ctx, info)
		}
	})
	return BenchResult{
		RefuseNs: nsPerOp(refuse), RefuseAllocs: refuse.AllocsPerOp(),
		TapNs: nsPerOp(tapRes), TapAllocs: tapRes.AllocsPerOp(),
	}
}

func nsPerOp(r testing.BenchmarkResult) float64 {
	if r.N == 0 {
		return 0
	}
	return float64(r.T.Nanoseconds()) / float64(r.N)
}
