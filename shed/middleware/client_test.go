package middleware

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/levee-dev/levee/shed"
	"github.com/levee-dev/levee/shed/throttle"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

// sleeps records the delays the client asked to wait, without waiting.
type sleeps struct {
	mu     sync.Mutex
	delays []time.Duration
	hook   func(n int)
}

func (s *sleeps) sleep(_ context.Context, d time.Duration) error {
	s.mu.Lock()
	s.delays = append(s.delays, d)
	n := len(s.delays)
	hook := s.hook
	s.mu.Unlock()
	if hook != nil {
		hook(n)
	}
	return nil
}

func (s *sleeps) get() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Duration(nil), s.delays...)
}

func newClientHarness(t *testing.T, cfg shed.Config, o ClientOptions) (*harness, *Client) {
	t.Helper()
	c, err := NewClient(o)
	if err != nil {
		t.Fatal(err)
	}
	return newHarness(t, cfg, true, grpc.WithUnaryInterceptor(c.Unary)), c
}

func TestClientRetriesHonouringRetryInfo(t *testing.T) {
	sl := &sleeps{}
	h, _ := newClientHarness(t, shed.Config{RetryAfter: 40 * time.Millisecond, MaxRetryAfter: 40 * time.Millisecond},
		ClientOptions{Sleep: sl.sleep, Rand: func() float64 { return 0.99 }})
	if err := h.res.Pin(shed.CriticalOnly, time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	_, err := h.cl.UnaryCall(withLabels(context.Background(), shed.HeaderPriority, "low"), &testpb.SimpleRequest{})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("call under a pin: %v, want ResourceExhausted", err)
	}
	if n := h.res.Counts(shed.Low).Refused[shed.ReasonOverride]; n != 3 {
		t.Fatalf("server saw %d attempts, want 3 (MaxAttempts)", n)
	}
	d := sl.get()
	if len(d) != 2 {
		t.Fatalf("client waited %d times, want 2", len(d))
	}
	for _, w := range d {
		if w < 40*time.Millisecond || w > 48*time.Millisecond {
			t.Fatalf("client waited %v, want the server's 40 ms plus at most 20%% jitter", w)
		}
	}

	// A retry that finds the pin gone succeeds.
	sl.hook = func(int) { h.res.Unpin() }
	if _, err := h.cl.UnaryCall(withLabels(context.Background(), shed.HeaderPriority, "low"), &testpb.SimpleRequest{}); err != nil {
		t.Fatalf("retry after the pin was lifted: %v", err)
	}
}

func TestClientDoesNotRetryWhatCannotSucceed(t *testing.T) {
	sl := &sleeps{}
	h, _ := newClientHarness(t, shed.Config{}, ClientOptions{Sleep: sl.sleep, Rand: func() float64 { return 0.99 }})
	// A deadline refusal has no RetryInfo: no retry.
	dl := h.res.Deadlines()
	now := time.Now()
	dl.Update(now)
	for range 20 {
		dl.Observe(time.Second)
	}
	dl.Update(now.Add(time.Second))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := h.cl.UnaryCall(ctx, &testpb.SimpleRequest{}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("call: %v", err)
	}
	if len(sl.get()) != 0 {
		t.Fatal("client retried a deadline refusal")
	}
	// A retry delay past the caller's deadline: no retry either.
	if err := h.res.Pin(shed.CriticalOnly, time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := h.cl.UnaryCall(ctx, &testpb.SimpleRequest{}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("call: %v", err)
	}
	if len(sl.get()) != 0 {
		t.Fatal("client scheduled a retry after its own deadline")
	}
	// An application error is not retried.
	h.res.Unpin()
	h.svc.onUnary = func(context.Context) error { return status.Error(codes.NotFound, "no") }
	if _, err := h.cl.UnaryCall(context.Background(), &testpb.SimpleRequest{}); status.Code(err) != codes.NotFound {
		t.Fatalf("call: %v", err)
	}
	if len(sl.get()) != 0 || h.svc.calls.Load() != 1 {
		t.Fatal("client retried an application error")
	}
}

func TestClientRetriesUnavailableWithBackoff(t *testing.T) {
	sl := &sleeps{}
	h, _ := newClientHarness(t, shed.Config{}, ClientOptions{Sleep: sl.sleep, Backoff: 10 * time.Millisecond, Rand: func() float64 { return 0.99 }})
	var n int
	h.svc.onUnary = func(context.Context) error {
		if n++; n < 3 {
			return status.Error(codes.Unavailable, "overloaded")
		}
		return nil
	}
	if _, err := h.cl.UnaryCall(context.Background(), &testpb.SimpleRequest{}); err != nil {
		t.Fatalf("third attempt should succeed: %v", err)
	}
	if d := sl.get(); len(d) != 2 || d[0] < 10*time.Millisecond || d[0] > 12*time.Millisecond {
		t.Fatalf("waits %v, want two of the 10 ms backoff plus jitter", d)
	}
}

func TestClientRetryBudget(t *testing.T) {
	sl := &sleeps{}
	h, _ := newClientHarness(t, shed.Config{RetryAfter: time.Millisecond, MaxRetryAfter: time.Millisecond}, ClientOptions{
		Sleep:    sl.sleep,
		Rand:     func() float64 { return 0.99 },
		Budget:   throttle.RetryBudgetConfig{Ratio: 0.1, MinPerSecond: -1},
		Throttle: throttle.AdaptiveConfig{K: 1000}, // keep the throttle out of this test
	})
	if err := h.res.Pin(shed.CriticalOnly, time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	const calls = 50
	for range calls {
		if _, err := h.cl.UnaryCall(withLabels(context.Background(), shed.HeaderPriority, "low"), &testpb.SimpleRequest{}); status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("call: %v", err)
		}
	}
	attempts := h.res.Counts(shed.Low).Refused[shed.ReasonOverride]
	retries := attempts - calls
	if retries > calls/10 || retries == 0 {
		t.Fatalf("%d retries for %d calls, want 1–%d (10%% budget, no floor)", retries, calls, calls/10)
	}
}

func TestClientAdaptiveThrottle(t *testing.T) {
	h, c := newClientHarness(t, shed.Config{RetryAfter: time.Millisecond, MaxRetryAfter: time.Millisecond}, ClientOptions{
		Sleep:       func(context.Context, time.Duration) error { return nil },
		Rand:        func() float64 { return 0.5 },
		MaxAttempts: 1,
	})
	if err := h.res.Pin(shed.CriticalOnly, time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	ctx := withLabels(context.Background(), shed.HeaderPriority, "sheddable")
	var local, remote int
	for range 100 {
		_, err := h.cl.UnaryCall(ctx, &testpb.SimpleRequest{})
		switch {
		case errors.Is(err, ErrThrottled):
			local++
		case status.Code(err) == codes.ResourceExhausted:
			remote++
		default:
			t.Fatalf("call: %v", err)
		}
	}
	// With no accepts, p = n/(n+1) after n requests: 0 for the first, 1/2
	// for the second (a draw of 0.5 is not below it), then ≥ 2/3 > 0.5:
	// two reach the server, the rest are rejected locally.
	if remote != 2 || local != 98 {
		t.Fatalf("%d reached the server, %d rejected locally; want 2 and 98", remote, local)
	}
	if n := h.res.Counts(shed.Sheddable).Refused[shed.ReasonOverride]; n != 2 {
		t.Fatalf("server refused %d, want 2", n)
	}
	// The throttle is per priority: critical traffic is not held back.
	if _, err := h.cl.UnaryCall(withLabels(context.Background(), shed.HeaderPriority, "critical"), &testpb.SimpleRequest{}); err != nil {
		t.Fatalf("critical call: %v", err)
	}
	if p := c.Throttle(shed.Critical).RejectProbability(time.Now()); p != 0 {
		t.Fatalf("critical throttle p = %v, want 0", p)
	}
}

func TestClientOptionsValidation(t *testing.T) {
	if _, err := NewClient(ClientOptions{MaxAttempts: -1}); err == nil {
		t.Error("negative MaxAttempts accepted")
	}
	if _, err := NewClient(ClientOptions{Throttle: throttle.AdaptiveConfig{K: 0.1}}); err == nil {
		t.Error("K < 1 accepted")
	}
}
