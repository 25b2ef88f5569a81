package shedtest

import (
	"errors"
	"fmt"
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
