package shedtest

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestClock(t *testing.T) {
	start := time.Date(2026, 11, 21, 6, 0, 0, 0, time.UTC)
	c := NewClock(start)
	if got := c.Now(); got != start {
		t.Fatalf("Now = %v, want %v", got, start)
	}
	c.Add(90 * time.Second)
	if got, want := c.Now(), start.Add(90*time.Second); got != want {
		t.Fatalf("after Add: %v, want %v", got, want)
	}
	later := start.Add(time.Hour)
	c.Set(later)
	if got := c.Now(); got != later {
		t.Fatalf("after Set: %v, want %v", got, later)
	}

	// Readers on other goroutines see every move (run with -race).
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 1000 {
				if c.Now().Before(later) {
					t.Error("the clock went back")
					return
				}
			}
		})
	}
	for range 1000 {
		c.Add(time.Millisecond)
	}
	wg.Wait()
	if got, want := c.Now(), later.Add(time.Second); got != want {
		t.Fatalf("after 1000 concurrent-read moves of 1 ms: %v, want %v", got, want)
	}
}

// fatalTB records Fatalf and ends its goroutine, as testing.T does.
type fatalTB struct {
	testing.TB
	msg atomic.Pointer[string]
}

func (f *fatalTB) Helper() {}

func (f *fatalTB) Fatalf(format string, args ...any) {
	m := fmt.Sprintf(format, args...)
	f.msg.Store(&m)
	runtime.Goexit()
}

func TestEventually(t *testing.T) {
	var n atomic.Int64
	go func() {
		for range 3 {
			n.Add(1)
		}
	}()
	calls := 0
	Eventually(t, 10*time.Second, "three", func() error {
		calls++
		if n.Load() != 3 {
			return fmt.Errorf("n = %d", n.Load())
		}
		return nil
	})
	if calls == 0 {
		t.Fatal("check never called")
	}

	// A condition that never holds fails the test with what, the bound and
	// the last error.
	f := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		Eventually(f, 20*time.Millisecond, "the impossible", func() error { return errors.New("still false") })
	}()
	<-done
	m := f.msg.Load()
	if m == nil || !strings.Contains(*m, "the impossible") || !strings.Contains(*m, "20ms") || !strings.Contains(*m, "still false") {
		t.Fatalf("failure message %v; want what, the bound and the last error", m)
	}
}

func TestSettle(t *testing.T) {
	const tick = 100 * time.Millisecond
	// series returns samples every tick over [0, 10 s): first until
	// settle, then final, with one excursion of 0.1 at blip if blip ≥ 0.
	series := func(first, final float64, settle, blip time.Duration) ([]time.Duration, []float64) {
		var at []time.Duration
		var v []float64
		for d := time.Duration(0); d < 10*time.Second; d += tick {
			x := final
			if d < settle {
				x = first
			}
			if d == blip {
				x += 0.1
			}
			at, v = append(at, d), append(v, x)
		}
		return at, v
	}
	for _, c := range []struct {
		name         string
		settle, blip time.Duration
		from, to     time.Duration
		want         time.Duration
	}{
		{"at once", 0, -1, 0, 10 * time.Second, 0},
		{"after 1.5 s", 1500 * time.Millisecond, -1, 0, 10 * time.Second, 1500 * time.Millisecond},
		{"measured from from", 1500 * time.Millisecond, -1, time.Second, 10 * time.Second, 500 * time.Millisecond},
		{"an excursion restarts the hold", 1500 * time.Millisecond, 2 * time.Second, 0, 10 * time.Second, 2100 * time.Millisecond},
		{"an excursion after the hold does not", 1500 * time.Millisecond, 3 * time.Second, 0, 10 * time.Second, 1500 * time.Millisecond},
		{"late, against the median of the last 3 s", 7900 * time.Millisecond, -1, 0, 10 * time.Second, 7900 * time.Millisecond},
		{"no sample in the last 3 s", 0, -1, 20 * time.Second, 30 * time.Second, 10 * time.Second},
	} {
		at, v := series(0.9, 0.6, c.settle, c.blip)
		if got := Settle(at, v, c.from, c.to); got != c.want {
			t.Errorf("%s: Settle = %v, want %v", c.name, got, c.want)
		}
	}
	// A series that alternates 0.2 apart never holds within ±0.05.
	at, v := series(0.6, 0.6, 0, -1)
	for i := range v {
		v[i] += 0.2 * float64(i%2)
	}
	if got := Settle(at, v, 0, 10*time.Second); got != 10*time.Second {
		t.Errorf("alternating: Settle = %v, want 10s", got)
	}
	// Within ±0.05 of the final value counts as there.
	at, v = series(0.64, 0.6, 2*time.Second, -1)
	if got := Settle(at, v, 0, 10*time.Second); got != 0 {
		t.Errorf("within the band from the start: Settle = %v, want 0", got)
	}
}

func TestConverged(t *testing.T) {
	// bins returns 10 s of bins: acceptance first until settle, then
	// final, and a p99 of 80 ms in the bin starting at slow (if ≥ 0).
	bins := func(first, final float64, settle, slow time.Duration) []Bin {
		var out []Bin
		for at := time.Duration(0); at < 10*time.Second; at += ConvergeBin {
			b := Bin{At: at, Acceptance: final, P99: 10 * time.Millisecond}
			if at < settle {
				b.Acceptance = first
			}
			if at == slow {
				b.P99 = 80 * time.Millisecond
			}
			out = append(out, b)
		}
		return out
	}
	for _, c := range []struct {
		name         string
		settle, slow time.Duration
		want         time.Duration
		swing        float64
	}{
		{"at once", 0, -1, 0, 0},
		{"after 1.5 s", 1500 * time.Millisecond, -1, 1500 * time.Millisecond, 0},
		{"a slow bin restarts the hold", 1500 * time.Millisecond, 2 * time.Second, 2250 * time.Millisecond, 0},
	} {
		got, swing := Converged(bins(0.9, 0.6, c.settle, c.slow), 50*time.Millisecond, 0, 10*time.Second)
		if got != c.want || swing != c.swing {
			t.Errorf("%s: Converged = %v, swing %v; want %v, %v", c.name, got, swing, c.want, c.swing)
		}
	}
	// Within ±5% of the final value counts; the swing after is reported.
	b := bins(0.62, 0.6, time.Second, -1)
	b[20].Acceptance = 0.69
	got, swing := Converged(b, 50*time.Millisecond, 0, 10*time.Second)
	if got != 0 || swing < 0.149 || swing > 0.151 {
		t.Errorf("within 5%%, one swing to 0.69: Converged = %v, swing %v; want 0, 0.15", got, swing)
	}
	// Alternating 0.2 apart, it never holds.
	b = bins(0.6, 0.6, 0, -1)
	for i := range b {
		b[i].Acceptance += 0.2 * float64(i%2)
	}
	if got, _ := Converged(b, 50*time.Millisecond, 0, 10*time.Second); got != 10*time.Second {
		t.Errorf("alternating: Converged = %v, want 10s", got)
	}
	if got, _ := Converged(nil, 50*time.Millisecond, 0, 10*time.Second); got != 10*time.Second {
		t.Errorf("no bins: Converged = %v, want 10s", got)
	}
}

func TestLog(t *testing.T) {
	var l Log
	logger := slog.New(slog.NewTextHandler(&l, nil))
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				logger.Info("moved", "by", "test")
			}
		})
	}
	// Read while the writers write: the race detector checks the lock.
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for reading := true; reading; {
		select {
		case <-done:
			reading = false
		default:
			_ = l.Count("moved")
		}
	}
	if n := l.Count("msg=moved"); n != 800 {
		t.Errorf("Count = %d, want 800", n)
	}
	if got := strings.Count(l.String(), "\n"); got != 800 {
		t.Errorf("%d lines, want 800", got)
	}
}
