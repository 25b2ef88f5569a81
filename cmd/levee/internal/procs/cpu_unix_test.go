//go:build unix

package procs

import (
	"testing"
	"time"
)

func TestProcessCPU(t *testing.T) {
	a, err := processCPU()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(50 * time.Millisecond)
	for time.Now().Before(deadline) { // burn some CPU
	}
	b, err := processCPU()
	if err != nil || b <= a {
		t.Fatalf("CPU time %v then %v (%v), want it to grow", a, b, err)
	}
}

func TestWaitsReadsTheRuntimeHistogram(t *testing.T) {
	var w waits
	w.read()
	// Goroutines that are made runnable: some latencies are recorded,
	// and a share is a fraction.
	done := make(chan struct{})
	for range 100 {
		go func() { done <- struct{}{} }()
		<-done
	}
	if got := w.read(); got < 0 || got > 1 {
		t.Fatalf("share waiting %v, want a fraction", got)
	}
	if len(w.last) == 0 {
		t.Fatal("no histogram read from /sched/latencies:seconds")
	}
}
