package peer

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/shed/shedtest"
)

// TestWatchdog: the stream watchdog's judgements, at times the test
// chooses. A stream is silent once it has answered nothing for a whole
// peer timeout; a stream operation is cancelled once it has been stuck as
// long, and not before.
func TestWatchdog(t *testing.T) {
	const timeout = 100 * time.Millisecond
	t0 := time.Unix(1_700_000_000, 0)
	ts := &takeStream{}
	ts.heard.Store(t0.UnixNano())
	if ts.silent(t0.Add(timeout-1), timeout) {
		t.Fatal("silent before a whole timeout without an answer")
	}
	if !ts.silent(t0.Add(timeout), timeout) {
		t.Fatal("not silent after a whole timeout without an answer")
	}

	p := &peerConn{router: &Router{cfg: Config{Timeout: timeout}}}
	ctx, cancel := context.WithCancel(context.Background())
	p.blocked.Store(&streamOp{cancel: cancel, start: t0})
	p.unblock(t0.Add(timeout - 1))
	if ctx.Err() != nil {
		t.Fatal("cancelled an operation stuck for less than the timeout")
	}
	p.unblock(t0.Add(timeout))
	if ctx.Err() == nil {
		t.Fatal("an operation stuck for the whole timeout was not cancelled")
	}
}

// TestLeasesRideTheBatch: the leases one Take call asks for travel with
// its forwarded checks — no batch of their own — and once granted the
// next checks are decided here.
func TestLeasesRideTheBatch(t *testing.T) {
	nodes := startNodes(t, 2, func(c *Config) { c.HotThreshold = 1; c.LeasePeriod = time.Minute; c.Timeout = 5 * time.Second })
	r := nodes[0].router
	l := limiter.Limit{Rate: 1000, Period: time.Hour}
	reqs := make([]limiter.Request, 10)
	for i := range reqs {
		reqs[i] = limiter.Request{Key: keyOwnedBy(t, r.Ring(), "node-1", i), Limit: l, Hits: 1}
	}
	res := make([]limiter.Result, len(reqs))
	if err := r.Take(context.Background(), time.Now().UnixNano(), reqs, res); err != nil {
		t.Fatal(err)
	}
	st := r.Stats()
	if b, n := st.Batches.Load(), st.Leases.Load(); b != 1 || n != 10 {
		t.Fatalf("%d batches and %d leases for one call of 10 hot keys, want 1 and 10", b, n)
	}
	shedtest.Eventually(t, 10*time.Second, "10 leases granted", func() error {
		if n := st.Leased.Load(); n != 10 {
			return fmt.Errorf("%d leased", n)
		}
		return nil
	})
	if err := r.Take(context.Background(), time.Now().UnixNano(), reqs, res); err != nil {
		t.Fatal(err)
	}
	for i, x := range res {
		if !x.Allowed {
			t.Fatalf("check %d refused on its lease: %+v", i, x)
		}
	}
	if b, local := st.Batches.Load(), st.Local.Load(); b != 1 || local != 10 {
		t.Fatalf("second call: %d batches in all, %d checks decided here; want 1 and 10", b, local)
	}
	if fb := st.Fallbacks.Load(); fb != 0 {
		t.Fatalf("%d fallbacks", fb)
	}
}

// TestWindow: a batch waits for company only when it has some: a batch to
// the same peer in flight, or a last batch that carried several callers.
func TestWindow(t *testing.T) {
	const ceiling = time.Millisecond
	for _, c := range []struct {
		inFlight, last int
		want           time.Duration
	}{
		{0, 0, 0},       // the first operation for a peer
		{0, 1, 0},       // a lone caller
		{1, 1, ceiling}, // a second caller overlaps the first
		{0, 8, ceiling}, // a herd released by one answer
		{2, 0, ceiling},
	} {
		if got := window(ceiling, c.inFlight, c.last); got != c.want {
			t.Errorf("window(in flight %d, last batch %d callers) = %v, want %v", c.inFlight, c.last, got, c.want)
		}
	}
}

// TestLoneCallerDoesNotWait: a caller alone is sent at once, however long
// the batch window (TestBatchingSharesRPCs has callers that overlap).
func TestLoneCallerDoesNotWait(t *testing.T) {
	nodes := startNodes(t, 2, func(c *Config) { c.BatchWindow = time.Hour; c.Timeout = time.Hour; c.HotThreshold = -1 })
	r := nodes[0].router
	l := limiter.Limit{Rate: 1e6, Period: time.Second}
	done := make(chan error, 1)
	go func() {
		for i := range 20 {
			if _, err := take(t, r, limiter.Request{Key: keyOwnedBy(t, r.Ring(), "node-1", i), Limit: l, Hits: 1}); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute): // a hang guard: each take waits milliseconds
		t.Fatal("a lone caller waited an hour-long batch window")
	}
	if b := r.Stats().Batches.Load(); b != 20 {
		t.Fatalf("%d batches for 20 sequential takes, want 20", b)
	}
}
