package cluster

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/levee-dev/levee/limiter/ring"
	"github.com/levee-dev/levee/shed/shedtest"
)

// testEtcdConfig mirrors clustertest.Config, which this package's internal
// tests cannot import (it imports this package).
func testEtcdConfig(t *testing.T) EmbeddedConfig {
	return EmbeddedConfig{
		Dir:           t.TempDir(),
		ClientURL:     "http://127.0.0.1:0",
		PeerURL:       "http://127.0.0.1:0",
		TickMs:        10,
		ElectionMs:    100,
		UnsafeNoFsync: true,
	}
}

func startTestEtcd(t *testing.T, cfg EmbeddedConfig) *Embedded {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := StartEmbedded(ctx, cfg)
	if err != nil {
		t.Fatalf("StartEmbedded: %v", err)
	}
	t.Cleanup(e.Close)
	return e
}

// TestRunRetriesUntilEtcdAppears starts a node while etcd is down and
// checks, through the wait hook, that Run retries on the backoff schedule,
// serves a self-only ring meanwhile, and registers once etcd is up.
func TestRunRetriesUntilEtcdAppears(t *testing.T) {
	// Reserve an address: start etcd, note where it listened, stop it.
	first := startTestEtcd(t, testEtcdConfig(t))
	cfg := first.Config()
	first.Close()

	client, err := clientv3.New(ClientConfig([]string{cfg.ClientURL}))
	if err != nil {
		t.Fatalf("clientv3.New: %v", err)
	}
	defer client.Close()
	self := ring.Member{ID: "solo", Addr: "solo:1"}
	const key = "/retry/members/solo"
	m, err := New(Config{
		Client:    client,
		KeyPrefix: "/retry/members/",
		Self:      self,
		TTL:       time.Second,
		RetryMin:  10 * time.Millisecond,
		RetryMax:  40 * time.Millisecond,
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	var (
		mu    sync.Mutex
		waits []time.Duration
	)
	waited := make(chan struct{}, 100)
	m.wait = func(ctx context.Context, d time.Duration) error {
		mu.Lock()
		waits = append(waits, d)
		mu.Unlock()
		select {
		case waited <- struct{}{}:
		default: // the test stopped counting
		}
		return sleepCtx(ctx, d)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()

	for i := range 3 {
		select {
		case <-waited:
		case <-time.After(30 * time.Second):
			t.Fatalf("Run did not retry a %d. time while etcd is down", i+1)
		}
	}
	// No session succeeded while etcd was down: one would have reset the
	// backoff, which the schedule check below would catch.
	if !m.Ring().Equal(ring.New([]ring.Member{self})) {
		t.Errorf("Ring() while etcd is down = %v, want only self", m.Ring().Members())
	}

	startTestEtcd(t, cfg)
	kctx, kcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer kcancel()
	shedtest.Eventually(t, 30*time.Second, "the member key after etcd started", func() error {
		resp, err := client.Get(kctx, key)
		if err != nil {
			return err
		}
		if len(resp.Kvs) != 1 || resp.Kvs[0].Lease == 0 {
			return fmt.Errorf("%v; want one key under a lease", resp.Kvs)
		}
		return nil
	})

	mu.Lock()
	got := append([]time.Duration(nil), waits...)
	mu.Unlock()
	// Consecutive failures from a fresh start: wait i lies in [c/2, c) with
	// c = min(RetryMax, RetryMin*2^i).
	for i, w := range got {
		c := min(40*time.Millisecond, (10*time.Millisecond)<<min(i, 10))
		if w < c/2 || w >= c {
			t.Errorf("wait %d = %v, want in [%v, %v); all waits %v", i, w, c/2, c, got)
		}
	}

	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run after cancel: %v", err)
	}
	done <- nil // for the deferred receive
	resp, err := client.Get(kctx, key)
	if err != nil || len(resp.Kvs) != 0 {
		t.Errorf("member key after Run returned: %v, %v; want deleted", resp.Kvs, err)
	}
}
