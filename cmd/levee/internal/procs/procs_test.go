package procs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/levee-dev/levee/shed/shedtest"
)

var t0 = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

// feed drives a tuner in 250 ms ticks.
type feed struct {
	tu  *Tuner
	now time.Time
	cpu time.Duration
}

func newFeed(most int) *feed {
	f := &feed{tu: NewTuner(most, 10*time.Second), now: t0}
	f.tu.Observe(f.now, Reading{})
	return f
}

// run feeds ticks of a process using cores CPU cores for d and returns the
// count after the last.
func (f *feed) run(cores float64, d time.Duration) int { return f.runWaiting(cores, 0, d) }

// runWaiting is run with a share of scheduling latencies over 1 ms.
func (f *feed) runWaiting(cores, waited float64, d time.Duration) int {
	tick := 250 * time.Millisecond
	n := f.tu.Procs()
	for el := time.Duration(0); el < d; el += tick {
		f.now = f.now.Add(tick)
		f.cpu += time.Duration(cores * float64(tick))
		n = f.tu.Observe(f.now, Reading{CPU: f.cpu, Waited: waited})
	}
	return n
}

func TestTunerFollowsTheLoad(t *testing.T) {
	f := newFeed(8)
	if n := f.tu.Procs(); n != 1 {
		t.Fatalf("starts at %d Ps, want 1", n)
	}
	// A light node stays at one P.
	if n := f.run(0.4, time.Minute); n != 1 {
		t.Fatalf("at 0.4 cores: %d Ps, want 1", n)
	}
	// Using most of its one P: doubles at once.
	if n := f.run(0.9, 250*time.Millisecond); n != 2 {
		t.Fatalf("one tick at 0.9 cores: %d Ps, want 2", n)
	}
	// A node that needs five cores gets there in a few ticks (it uses
	// what it has, so each tick shows the Ps it has saturated), and no
	// further than the most allowed.
	for range 5 {
		f.run(0.95*float64(f.tu.Procs()), 250*time.Millisecond)
	}
	if n := f.tu.Procs(); n != 8 {
		t.Fatalf("saturating every count it was given: %d Ps, want the most, 8", n)
	}
	// Between the thresholds it holds, however long.
	if n := f.run(4, time.Minute); n != 8 {
		t.Fatalf("at 4 cores of 8: %d Ps, want 8 held", n)
	}
	// Under 30% of its Ps it halves, but only after the calm period, and
	// a busy tick in between starts the period again.
	if n := f.run(1, 9*time.Second); n != 8 {
		t.Fatalf("9 s at 1 core of 8: %d Ps, want 8 still", n)
	}
	f.run(4, 250*time.Millisecond)
	if n := f.run(1, 9*time.Second); n != 8 {
		t.Fatalf("a busy tick, then 9 s at 1 core: %d Ps, want 8 still", n)
	}
	if n := f.run(1, 2*time.Second); n != 4 {
		t.Fatalf("over 10 s at 1 core of 8: %d Ps, want 4", n)
	}
	// Idle: down to one, and never below.
	if n := f.run(0, time.Minute); n != 1 {
		t.Fatalf("idle for a minute: %d Ps, want 1", n)
	}
	// A clock that did not move, or went back, changes nothing.
	for _, at := range []time.Time{f.now, f.now.Add(-time.Second)} {
		if n := f.tu.Observe(at, Reading{CPU: f.cpu + time.Hour}); n != 1 {
			t.Fatalf("after a reading without elapsed time: %d Ps, want 1", n)
		}
	}
}

func TestTunerRaisesWhenGoroutinesWaitForAP(t *testing.T) {
	f := newFeed(4)
	// A node whose one thread the machine keeps preempting: it gets 0.6
	// of a core, and 5% of its goroutines wait over a millisecond.
	if n := f.runWaiting(0.6, 0.05, 250*time.Millisecond); n != 2 {
		t.Fatalf("0.6 cores with 5%% waiting: %d Ps, want 2", n)
	}
	// Waiting keeps it from halving, however little it uses of two Ps...
	if n := f.runWaiting(0.5, 0.05, time.Minute); n != 2 {
		t.Fatalf("a minute at 0.5 of 2 cores, waiting: %d Ps, want 2", n)
	}
	// ... without raising it further while it uses little of them.
	if n := f.runWaiting(0.5, 0.05, time.Second); n != 2 {
		t.Fatalf("0.5 of 2 cores, waiting: %d Ps, want 2 held", n)
	}
	// An idle node on a busy machine waits too; more Ps would not help.
	g := newFeed(4)
	if n := g.runWaiting(0.1, 0.5, time.Minute); n != 1 {
		t.Fatalf("idle with half its goroutines waiting: %d Ps, want 1", n)
	}
}

func TestTunerWithOneCore(t *testing.T) {
	f := newFeed(1)
	if n := f.run(1, time.Second); n != 1 {
		t.Fatalf("saturated with at most 1: %d Ps, want 1", n)
	}
	if n := NewTuner(0, time.Second).Procs(); n != 1 {
		t.Fatalf("NewTuner(0): %d Ps, want 1", n)
	}
}

func TestRunAppliesTheCount(t *testing.T) {
	var (
		mu     sync.Mutex
		cpu    time.Duration
		start  = time.Now()
		counts []int
	)
	busy := func() (Reading, error) {
		mu.Lock()
		defer mu.Unlock()
		// A process using 1.9 cores whatever its Ps: the count climbs
		// from 1 to 2 to the most allowed, 4.
		cpu = time.Duration(1.9 * float64(time.Since(start)))
		return Reading{CPU: cpu}, nil
	}
	set := func(n int) {
		mu.Lock()
		defer mu.Unlock()
		counts = append(counts, n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, NewTuner(4, time.Second), 5*time.Millisecond, busy, set, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	shedtest.Eventually(t, 10*time.Second, "counts reaching 4", func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(counts) == 0 || counts[len(counts)-1] != 4 {
			return fmt.Errorf("counts applied %v", counts)
		}
		return nil
	})
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("run returned %v, want context.Canceled", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if counts[0] != 1 || counts[1] != 2 || counts[2] != 4 {
		t.Fatalf("counts applied %v, want 1, 2, 4", counts)
	}
}

func TestRunWithoutCPUTime(t *testing.T) {
	set := func(int) { t.Fatal("GOMAXPROCS set although the CPU time cannot be read") }
	broken := func() (Reading, error) { return Reading{}, errors.New("no rusage here") }
	err := run(context.Background(), NewTuner(4, time.Second), time.Millisecond, broken, set, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err == nil {
		t.Fatal("run with no CPU time returned nil, want an error")
	}
}
