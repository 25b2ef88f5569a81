package cluster

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	b := backoff{min: 100 * time.Millisecond, max: time.Second}
	if b.failing() {
		t.Fatalf("fresh backoff reports failing")
	}
	// With r = 0 the wait is exactly half the cap of each step; with r
	// close to 1 it approaches the cap.
	wantCaps := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, c := range wantCaps {
		c *= time.Millisecond
		lo := b
		if got := lo.next(0); got != c/2 {
			t.Errorf("attempt %d: next(0) = %v, want %v", i, got, c/2)
		}
		if got := b.next(0.999999); got < c/2 || got >= c {
			t.Errorf("attempt %d: next(~1) = %v, want in [%v, %v)", i, got, c/2, c)
		}
		if !b.failing() {
			t.Errorf("attempt %d: not failing after next", i)
		}
	}
	for range 100 { // no overflow however long etcd stays down
		if got := b.next(0.5); got < b.max/2 || got > b.max {
			t.Fatalf("after %d attempts: next = %v, want in [%v, %v]", b.attempt, got, b.max/2, b.max)
		}
	}
	b.reset()
	if b.failing() {
		t.Errorf("failing after reset")
	}
	if got := b.next(0); got != 50*time.Millisecond {
		t.Errorf("after reset: next(0) = %v, want 50ms", got)
	}
}
