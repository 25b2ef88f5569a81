package backoff

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	b := Backoff{Min: 100 * time.Millisecond, Max: time.Second}
	if b.Failing() {
		t.Fatalf("fresh backoff reports failing")
	}
	// With r = 0 the wait is exactly half the cap of each step; with r
	// close to 1 it approaches the cap.
	wantCaps := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, c := range wantCaps {
		c *= time.Millisecond
		lo := b
		if got := lo.Next(0); got != c/2 {
			t.Errorf("attempt %d: Next(0) = %v, want %v", i, got, c/2)
		}
		if got := b.Next(0.999999); got < c/2 || got >= c {
			t.Errorf("attempt %d: Next(~1) = %v, want in [%v, %v)", i, got, c/2, c)
		}
		if !b.Failing() {
			t.Errorf("attempt %d: not failing after Next", i)
		}
	}
	for range 100 { // no overflow however long etcd stays down
		if got := b.Next(0.5); got < b.Max/2 || got > b.Max {
			t.Fatalf("after %d attempts: Next = %v, want in [%v, %v]", b.Attempts(), got, b.Max/2, b.Max)
		}
	}
	b.Reset()
	if b.Failing() {
		t.Errorf("failing after Reset")
	}
	if got := b.Next(0); got != 50*time.Millisecond {
		t.Errorf("after Reset: Next(0) = %v, want 50ms", got)
	}
}
