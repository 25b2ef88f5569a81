package peer

import (
	"testing"
	"time"
)

// TestBreaker drives a breaker on a clock of the test's own: it opens
// after threshold consecutive failures, stays open for the cool-down, then
// lets exactly one probe through; a failed probe opens it again and a
// successful one closes it.
func TestBreaker(t *testing.T) {
	b := &breaker{threshold: 3, cooldown: time.Second}
	t0 := time.Unix(1_700_000_000, 0)
	b.record(false, t0)
	b.record(false, t0)
	b.record(true, t0) // a success resets the count
	for range 2 {
		b.record(false, t0)
	}
	if !b.allow(t0) {
		t.Fatal("open after 2 consecutive failures, threshold 3")
	}
	b.record(false, t0)
	if b.allow(t0.Add(999 * time.Millisecond)) {
		t.Fatal("allowed a batch during the cool-down")
	}
	at := t0.Add(time.Second)
	if !b.allow(at) {
		t.Fatal("no probe after the cool-down")
	}
	if b.allow(at) {
		t.Fatal("a second probe while the first is out")
	}
	b.record(false, at)
	if b.allow(at.Add(999 * time.Millisecond)) {
		t.Fatal("a failed probe did not reopen the breaker for a cool-down")
	}
	at = at.Add(time.Second)
	if !b.allow(at) {
		t.Fatal("no probe after the second cool-down")
	}
	b.record(true, at)
	for range 5 {
		if !b.allow(at) {
			t.Fatal("a successful probe did not close the breaker")
		}
	}
}
