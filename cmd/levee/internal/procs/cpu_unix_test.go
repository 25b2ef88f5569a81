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
