package peer

import (
	"fmt"
	"log/slog"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/ring"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
	"github.com/levee-dev/levee/shed/shedtest"
)

// unreachableMember is a member whose address nothing listens on yet:
// serve starts its peer server there on store.
func unreachableMember(t *testing.T, id string) (ring.Member, func(store *limiter.Store)) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := ring.Member{ID: id, Addr: lis.Addr().String()}
	lis.Close()
	return m, func(store *limiter.Store) {
		lis, err := net.Listen("tcp", m.Addr)
		if err != nil {
			t.Fatalf("listening on %s: %v", m.Addr, err)
		}
		srv := grpc.NewServer()
		leveev1.RegisterPeerServiceServer(srv, NewServer(store, nil))
		go srv.Serve(lis)
		t.Cleanup(srv.Stop)
	}
}

// spendOn takes 7 of 10 tokens from 20 keys that id owns in rg, on store.
func spendOn(t *testing.T, store *limiter.Store, rg *ring.Ring, id string, l limiter.Limit) []uint64 {
	t.Helper()
	now := time.Now().UnixNano()
	var keys []uint64
	for i := range 20 {
		k := keyOwnedBy(t, rg, id, 300+i)
		if r := store.Take(k, l, 7, now); !r.Allowed {
			t.Fatalf("spending on key %d: %+v", i, r)
		}
		keys = append(keys, k)
	}
	return keys
}

// TestHandoffRetriesUntilTheOwnerAnswers: when the new owner cannot be
// reached at the ring change (a partition heals and etcd tells the others
// a node is back a moment before their connections to it work), the
// hand-off is tried again until the owner takes the buckets, instead of
// leaving them on the old owner until the next ring change while the new
// owner answers from its own, older buckets.
func TestHandoffRetriesUntilTheOwnerAnswers(t *testing.T) {
	logs := new(shedtest.Log)
	nodes := startNodes(t, 1, func(c *Config) {
		c.HandoffRetryMin = 20 * time.Millisecond
		c.HandoffRetryMax = 200 * time.Millisecond
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	late, serve := unreachableMember(t, "node-1")
	two := ring.New([]ring.Member{nodes[0].member, late})
	l := limiter.Limit{Rate: 10, Period: time.Hour}
	keys := spendOn(t, nodes[0].store, two, "node-1", l)

	nodes[0].router.SetRing(two)
	shedtest.Eventually(t, 10*time.Second, "a failed hand-off attempt", func() error {
		if logs.Count("bucket hand-off incomplete") == 0 {
			return fmt.Errorf("no failed attempt logged")
		}
		return nil
	})
	if n := nodes[0].store.Len(); n != len(keys) {
		t.Fatalf("after the failed attempt node-0 holds %d buckets, want %d", n, len(keys))
	}
	// node-1 comes up: its store starts empty, like a node whose own
	// buckets refilled while it was away.
	store1 := limiter.NewStore(1 << 16)
	serve(store1)
	shedtest.Eventually(t, 15*time.Second, "the buckets at node-1", func() error {
		if n := store1.Len(); n != len(keys) {
			return fmt.Errorf("node-1 holds %d buckets, want %d (node-0 %d)", n, len(keys), nodes[0].store.Len())
		}
		return nil
	})
	now := time.Now().UnixNano()
	for i, k := range keys {
		if r := store1.Take(k, l, 0, now); r.Remaining != 3 {
			t.Fatalf("key %d at node-1: %d left, want 3", i, r.Remaining)
		}
	}
	if n := nodes[0].store.Len(); n != 0 {
		t.Fatalf("node-0 still holds %d buckets", n)
	}
	if got := nodes[0].router.Stats().HandedOff.Load(); got != uint64(len(keys)) {
		t.Fatalf("handed off %d, want %d", got, len(keys))
	}
}

// failingHandoff is one node whose router retries, every min to max, a
// hand-off of 20 buckets to node-1 (late), which nothing serves until
// serve is called; one is the ring before node-1 joined.
type failingHandoff struct {
	logs  *shedtest.Log
	nodes []*testNode
	one   *ring.Ring
	late  ring.Member
	serve func(*limiter.Store)
	keys  []uint64
}

func newFailingHandoff(t *testing.T, min, max time.Duration) failingHandoff {
	t.Helper()
	h := failingHandoff{logs: new(shedtest.Log)}
	h.nodes = startNodes(t, 1, func(c *Config) {
		c.HandoffRetryMin, c.HandoffRetryMax = min, max
		c.Logger = slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	h.one = h.nodes[0].router.Ring()
	h.late, h.serve = unreachableMember(t, "node-1")
	two := ring.New([]ring.Member{h.nodes[0].member, h.late})
	h.keys = spendOn(t, h.nodes[0].store, two, "node-1", limiter.Limit{Rate: 10, Period: time.Hour})
	h.nodes[0].router.SetRing(two)
	shedtest.Eventually(t, 10*time.Second, "a failed hand-off attempt", func() error {
		if h.logs.Count("bucket hand-off incomplete") == 0 {
			return fmt.Errorf("no failed attempt logged")
		}
		return nil
	})
	return h
}

// TestHandoffRetryEndsWithANewerRing: a hand-off still being retried stops
// when a newer ring replaces the one it was for (that ring's own hand-off
// moves the buckets), and Close does not wait out its backoff.
func TestHandoffRetryEndsWithANewerRing(t *testing.T) {
	h := newFailingHandoff(t, 20*time.Millisecond, 40*time.Millisecond)
	logs, nodes, one, serve, keys := h.logs, h.nodes, h.one, h.serve, h.keys
	// node-1 leaves again before it was ever reached: node-0 owns every
	// key, and the retries of the hand-off to node-1 end.
	nodes[0].router.SetRing(one)
	time.Sleep(100 * time.Millisecond) // more than one retry's wait
	attempts := logs.Count("bucket hand-off incomplete")
	store1 := limiter.NewStore(1 << 16)
	serve(store1)
	time.Sleep(1500 * time.Millisecond) // past gRPC's first reconnection
	if n := logs.Count("bucket hand-off incomplete"); n != attempts {
		t.Fatalf("%d more failed attempts after the ring changed", n-attempts)
	}
	if n := store1.Len(); n != 0 {
		t.Fatalf("node-1 got %d buckets after it left the ring", n)
	}
	if n := nodes[0].store.Len(); n != len(keys) {
		t.Fatalf("node-0 holds %d buckets, want %d", n, len(keys))
	}

	// Close while a hand-off is being retried returns without waiting
	// for the retries.
	never, _ := unreachableMember(t, "node-2")
	nodes[0].router.SetRing(ring.New([]ring.Member{nodes[0].member, never}))
	shedtest.Eventually(t, 10*time.Second, "a failed hand-off attempt to node-2", func() error {
		if logs.Count("bucket hand-off incomplete") == attempts {
			return fmt.Errorf("no failed attempt logged")
		}
		return nil
	})
	done := make(chan struct{})
	go func() { nodes[0].router.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close still waiting 5 s after it was called")
	}
}

// TestHandoffRetryGivesWayWhenTheRingBounces: a node that leaves and comes
// back while a hand-off to it waits to retry leaves one hand-off retrying,
// the newest, not one per bounce (the rings before and after are Equal).
func TestHandoffRetryGivesWayWhenTheRingBounces(t *testing.T) {
	h := newFailingHandoff(t, 300*time.Millisecond, 600*time.Millisecond)
	logs, nodes, one, late, serve, keys := h.logs, h.nodes, h.one, h.late, h.serve, h.keys
	// node-1 bounces while the hand-off to it waits to retry.
	nodes[0].router.SetRing(one)
	nodes[0].router.SetRing(ring.New([]ring.Member{nodes[0].member, late}))
	shedtest.Eventually(t, 10*time.Second, "the first hand-off giving way", func() error {
		if n := logs.Count("bucket hand-off left to a newer ring's"); n != 1 {
			return fmt.Errorf("%d hand-offs gave way, want 1", n)
		}
		return nil
	})
	store1 := limiter.NewStore(1 << 16)
	serve(store1)
	shedtest.Eventually(t, 15*time.Second, "the buckets at node-1", func() error {
		if n := store1.Len(); n != len(keys) {
			return fmt.Errorf("node-1 holds %d buckets, want %d", n, len(keys))
		}
		return nil
	})
	if n := logs.Count("bucket hand-off left to a newer ring's"); n != 1 {
		t.Fatalf("%d hand-offs gave way, want 1", n)
	}
}

// TestFallbackKeepsOwnerBucketsExact: checks that fall back while a
// hand-off to an unreachable new owner is retried decide on fair-share
// buckets of their own. The owner bucket waiting for the hand-off is only
// read (to start the share where it stood), so the owner gets it exactly
// as the owner's takes left it; and a fair-share bucket is not handed off,
// since the owner would count this node's share as its own tokens. (On one
// key space the fallback converted the owner bucket into the share's
// limit, rounding the missing time down, and the hand-off carried that.)
func TestFallbackKeepsOwnerBucketsExact(t *testing.T) {
	// Retries 2-4 s apart: the checks below run between two attempts.
	h := newFailingHandoff(t, 4*time.Second, 4*time.Second)
	node, two := h.nodes[0], h.nodes[0].router.Ring()
	l := limiter.Limit{Rate: 10, Period: 1000 * time.Hour}
	share := FairShare(l, two.Len()) // 5 per 1000 h
	// Decide at the next boundary of the share's token time (one of l's
	// too), so that converting between the two limits rounds the same way
	// on every run.
	now := time.Now().UnixNano()
	_, next := share.Take(0, 1, now)
	now += int64(next.ResetAfter)

	owned := keyOwnedBy(t, two, "node-1", 500) // an owner bucket held here
	if r := node.store.Take(owned, l, 7, now); !r.Allowed {
		t.Fatalf("spending on the owner bucket: %+v", r)
	}
	full, _ := node.store.FullAt(owned, now)
	fresh := keyOwnedBy(t, two, "node-1", 501) // no bucket here
	before := node.router.Stats().Fallbacks.Load()
	res := make([]limiter.Result, 2)
	reqs := []limiter.Request{{Key: owned, Limit: l, Hits: 1}, {Key: fresh, Limit: l, Hits: 2}}
	if err := node.router.Take(t.Context(), now, reqs, res); err != nil {
		t.Fatal(err)
	}
	if n := node.router.Stats().Fallbacks.Load() - before; n != 2 {
		t.Fatalf("%d fallbacks, want 2 (node-1 is unreachable)", n)
	}
	// The share starts where the owner bucket stands (3 of 10 left: 1.5 of
	// the share's 5, rounded down); a fresh share would leave 4.
	if !res[0].Allowed || res[0].Remaining != 1 {
		t.Fatalf("fallback on the spent key: %+v, want allowed with 1 left", res[0])
	}
	if !res[1].Allowed || res[1].Remaining != 3 {
		t.Fatalf("fallback on the fresh key: %+v, want allowed with 3 left", res[1])
	}
	if n := node.store.Len(); n != len(h.keys)+1 {
		t.Fatalf("node-0's owner buckets: %d, want %d (the fallbacks' are apart)", n, len(h.keys)+1)
	}
	if got, ok := node.store.FullAt(owned, now); !ok || got != full {
		t.Fatalf("the owner bucket is full again %v after now, want %v: the fallback changed it", time.Duration(got-now), time.Duration(full-now))
	}

	store1 := limiter.NewStore(1 << 16)
	h.serve(store1)
	// HandedOff counts once node-1 has answered: it holds what it adopted.
	shedtest.Eventually(t, 15*time.Second, "the hand-off to node-1", func() error {
		if n := node.router.Stats().HandedOff.Load(); n == 0 {
			return fmt.Errorf("nothing handed off; node-0 holds %d owner buckets", node.store.Len())
		}
		return nil
	})
	if n := node.store.Len(); n != 0 {
		t.Fatalf("node-0 still holds %d owner buckets", n)
	}
	if n := store1.Len(); n != len(h.keys)+1 {
		t.Fatalf("node-1 holds %d buckets, want the %d owner buckets handed off", n, len(h.keys)+1)
	}
	if _, ok := store1.FullAt(fresh, now); ok {
		t.Fatal("the fallback's bucket was handed off")
	}
	if r := store1.Take(owned, l, 0, now); r.Remaining != 3 || r.ResetAfter != time.Duration(full-now) {
		t.Fatalf("the owner bucket at node-1: %d left, full in %v; want 3, in %v", r.Remaining, r.ResetAfter, time.Duration(full-now))
	}
	if n := node.router.FallbackStore().Len(); n != 2 {
		t.Fatalf("node-0 holds %d fallback buckets, want 2 (never handed off)", n)
	}
}
