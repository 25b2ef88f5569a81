package throttle

import (
	"math"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func TestAdaptiveProbabilityFormula(t *testing.T) {
	a, err := NewAdaptive(AdaptiveConfig{})
	if err != nil {
		t.Fatal(err)
	}
	now := t0
	if p := a.RejectProbability(now); p != 0 {
		t.Fatalf("empty throttle rejects with p=%v", p)
	}
	// 100 requests, 20 accepted: p = (100 − 2·20) / (100 + 1).
	for i := range 100 {
		if !a.Allow(now, 0.999999) {
			t.Fatalf("request %d rejected by a draw near 1", i)
		}
		if i < 20 {
			a.Accepted(now)
		}
	}
	want := (100.0 - 2*20) / 101
	if p := a.RejectProbability(now); math.Abs(p-want) > 1e-12 {
		t.Fatalf("p = %v, want %v", p, want)
	}
	// A draw below p is rejected locally and still counts as a request.
	if a.Allow(now, want/2) {
		t.Fatal("draw below p admitted")
	}
	if req, acc := a.Counts(now); req != 101 || acc != 20 {
		t.Fatalf("counts %d/%d, want 101/20", req, acc)
	}
	if !a.Allow(now, want+0.01) {
		t.Fatal("draw above p rejected")
	}
	// Accepting at least half of the requests (K = 2) means no local
	// rejection at all.
	b, _ := NewAdaptive(AdaptiveConfig{})
	for range 100 {
		b.Allow(now, 0.5)
		b.Accepted(now)
	}
	for range 100 {
		b.Allow(now, 0.5)
	}
	if p := b.RejectProbability(now); p != 0 {
		t.Fatalf("p = %v with requests = 2 × accepts, want 0", p)
	}
}

func TestAdaptiveWindowForgets(t *testing.T) {
	a, _ := NewAdaptive(AdaptiveConfig{})
	for range 1000 {
		a.Allow(t0, 0.9999)
	}
	if p := a.RejectProbability(t0); p < 0.99 {
		t.Fatalf("p = %v after 1000 unaccepted requests, want ≈ 1", p)
	}
	if p := a.RejectProbability(t0.Add(119 * time.Second)); p < 0.99 {
		t.Fatalf("p = %v inside the 2-minute window, want unchanged", p)
	}
	if p := a.RejectProbability(t0.Add(2*time.Minute + 2*time.Second)); p != 0 {
		t.Fatalf("p = %v after the window passed, want 0", p)
	}
	if req, _ := a.Counts(t0.Add(time.Hour)); req != 0 {
		t.Fatalf("%d requests left an hour later", req)
	}
}

func TestAdaptiveSteadyRejectionRate(t *testing.T) {
	// A backend that accepts only 10 requests per second, offered 100 per
	// second: in steady state the client sends about K × 10 and rejects
	// the rest locally.
	a, _ := NewAdaptive(AdaptiveConfig{})
	var sent, rejected int
	u := 0.0
	for s := range 600 {
		acceptedThisSecond := 0
		for i := range 100 {
			now := t0.Add(time.Duration(s)*time.Second + time.Duration(i)*10*time.Millisecond)
			u = math.Mod(u+0.6180339887, 1) // low-discrepancy draws
			if !a.Allow(now, u) {
				if s >= 300 {
					rejected++
				}
				continue
			}
			if s >= 300 {
				sent++
			}
			if acceptedThisSecond < 10 {
				acceptedThisSecond++
				a.Accepted(now)
			}
		}
	}
	perSecond := float64(sent) / 300
	if perSecond < 15 || perSecond > 25 {
		t.Fatalf("sent %.1f/s to a backend accepting 10/s, want about K×10 = 20/s", perSecond)
	}
	if rejected == 0 {
		t.Fatal("nothing rejected locally")
	}
}

func TestRetryBudget(t *testing.T) {
	b, err := NewRetryBudget(RetryBudgetConfig{Ratio: 0.1, MinPerSecond: 0.5, Window: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	now := t0
	// The floor alone: 0.5/s × 10 s = 5 retries with no traffic.
	got := 0
	for range 20 {
		if b.TryRetry(now) {
			got++
		}
	}
	if got != 5 {
		t.Fatalf("%d retries from the floor, want 5", got)
	}
	// 100 first attempts add 10 more.
	for range 100 {
		b.Request(now)
	}
	got = 0
	for range 50 {
		if b.TryRetry(now) {
			got++
		}
	}
	if got != 10 {
		t.Fatalf("%d retries after 100 requests, want 10", got)
	}
	// The window slides: later everything is forgotten.
	later := now.Add(11 * time.Second)
	got = 0
	for range 20 {
		if b.TryRetry(later) {
			got++
		}
	}
	if got != 5 {
		t.Fatalf("%d retries after the window slid, want the floor of 5", got)
	}
}

func TestRetryBudgetBoundsAmplification(t *testing.T) {
	// Every attempt fails and the client would retry each request twice:
	// the budget keeps retries within 10% of requests plus the floor.
	b, _ := NewRetryBudget(RetryBudgetConfig{})
	var requests, retries int
	for ms := range 60_000 {
		now := t0.Add(time.Duration(ms) * time.Millisecond)
		b.Request(now)
		requests++
		for range 2 {
			if b.TryRetry(now) {
				retries++
			}
		}
	}
	amp := float64(requests+retries) / float64(requests)
	if amp > 1.1+10.0*60/float64(requests)+0.01 {
		t.Fatalf("attempts/requests = %.3f, want ≤ 1.1 plus the floor", amp)
	}
	if amp < 1.09 {
		t.Fatalf("attempts/requests = %.3f: the budget should allow about 10%% retries", amp)
	}
}

func TestConfigValidation(t *testing.T) {
	if _, err := NewAdaptive(AdaptiveConfig{K: 0.5}); err == nil {
		t.Error("K < 1 accepted")
	}
	if _, err := NewAdaptive(AdaptiveConfig{Window: time.Nanosecond, Buckets: 10}); err == nil {
		t.Error("sub-nanosecond buckets accepted")
	}
	if _, err := NewRetryBudget(RetryBudgetConfig{Ratio: -1}); err == nil {
		t.Error("negative ratio accepted")
	}
}

func TestConcurrentUse(t *testing.T) {
	a, _ := NewAdaptive(AdaptiveConfig{})
	b, _ := NewRetryBudget(RetryBudgetConfig{})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 5000 {
				now := t0.Add(time.Duration(i) * time.Millisecond)
				if a.Allow(now, float64(g)/4) && i%3 == 0 {
					a.Accepted(now)
				}
				b.Request(now)
				b.TryRetry(now)
			}
		}()
	}
	wg.Wait()
	if req, _ := a.Counts(t0.Add(5 * time.Second)); req != 20000 {
		t.Fatalf("%d requests counted, want 20000", req)
	}
}
