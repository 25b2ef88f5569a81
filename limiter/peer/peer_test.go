package peer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/ring"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
	"github.com/levee-dev/levee/shed/shedtest"
)

type testNode struct {
	member ring.Member
	store  *limiter.Store
	router *Router
	srv    *grpc.Server
	peer   *Server
}

// startNodes runs n nodes with real gRPC servers on loopback and a shared
// static ring.
func startNodes(t testing.TB, n int, tweak func(*Config)) []*testNode {
	t.Helper()
	nodes := make([]*testNode, n)
	var members []ring.Member
	for i := range nodes {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		nd := &testNode{member: ring.Member{ID: fmt.Sprintf("node-%d", i), Addr: lis.Addr().String()}, store: limiter.NewStore(1 << 16)}
		nd.srv = grpc.NewServer(grpc.InitialWindowSize(WindowSize), grpc.InitialConnWindowSize(WindowSize))
		nd.peer = NewServer(nd.store, nil)
		leveev1.RegisterPeerServiceServer(nd.srv, nd.peer)
		go nd.srv.Serve(lis)
		cfg := Config{Self: nd.member, Store: nd.store, BreakerCooldown: time.Hour}
		if tweak != nil {
			tweak(&cfg)
		}
		nd.router = NewRouter(cfg)
		nodes[i] = nd
		members = append(members, nd.member)
		t.Cleanup(func() { nd.router.Close(); nd.srv.Stop() })
	}
	rg := ring.New(members)
	for _, nd := range nodes {
		nd.router.SetRing(rg)
	}
	return nodes
}

// keyOwnedBy returns a key that rg assigns to id.
func keyOwnedBy(t testing.TB, rg *ring.Ring, id string, salt int) uint64 {
	t.Helper()
	for i := range 10_000 {
		k := xxhash.Sum64String(fmt.Sprintf("key-%d-%d", salt, i))
		if o, _ := rg.Owner(k); o.ID == id {
			return k
		}
	}
	t.Fatalf("no key owned by %s", id)
	return 0
}

func take(t testing.TB, r *Router, req limiter.Request) (limiter.Result, error) {
	t.Helper()
	res := make([]limiter.Result, 1)
	err := r.Take(context.Background(), time.Now().UnixNano(), []limiter.Request{req}, res)
	return res[0], err
}

func TestForwardingEnforcesOneLimit(t *testing.T) {
	nodes := startNodes(t, 3, nil)
	rg := nodes[0].router.Ring()
	l := limiter.Limit{Rate: 100, Period: time.Hour}
	key := keyOwnedBy(t, rg, "node-2", 0)
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for _, nd := range nodes {
		for range 4 {
			wg.Go(func() {
				for range 60 {
					r, err := take(t, nd.router, limiter.Request{Key: key, Limit: l, Hits: 1})
					if err != nil {
						t.Error(err)
						return
					}
					if r.Allowed {
						admitted.Add(1)
					}
				}
			})
		}
	}
	wg.Wait()
	if got := admitted.Load(); got != 100 {
		t.Fatalf("admitted %d across 3 nodes, want exactly the burst of 100", got)
	}
	// The owner holds the bucket; the others hold nothing.
	if nodes[2].store.Len() != 1 || nodes[0].store.Len() != 0 || nodes[1].store.Len() != 0 {
		t.Fatalf("store sizes %d %d %d", nodes[0].store.Len(), nodes[1].store.Len(), nodes[2].store.Len())
	}
	// Once the owner refused on an empty bucket, node-0 refused locally
	// until the next token instead of forwarding.
	st := nodes[0].router.Stats()
	if st.Forwarded.Load()+st.Local.Load() != 240 || st.Local.Load() == 0 || st.Fallbacks.Load() != 0 {
		t.Fatalf("node-0 forwarded %d, decided locally %d, fallbacks %d", st.Forwarded.Load(), st.Local.Load(), st.Fallbacks.Load())
	}
}

// TestHotKeyLeasesNeverOverAdmit hammers one key owned by node-2 from the
// other nodes: they lease tokens and admit locally, and the cluster still
// admits no more than the bucket holds.
func TestHotKeyLeasesNeverOverAdmit(t *testing.T) {
	// A generous timeout: a batch timing out under -race would fall back to
	// a local fair share, which is the failure path, not this test's.
	nodes := startNodes(t, 3, func(c *Config) { c.HotThreshold = 16; c.Timeout = 5 * time.Second })
	rg := nodes[0].router.Ring()
	// No refill during the test, however slow the machine: at 4,000 an
	// hour a test that took over a second under -race on a busy machine
	// saw a token come back and admitted 4,001.
	l := limiter.Limit{Rate: 4000, Period: 30 * 24 * time.Hour}
	key := keyOwnedBy(t, rg, "node-2", 7)
	got := drain(t, nodes[:2], key, l)
	leased := nodes[0].router.Stats().Leased.Load() + nodes[1].router.Stats().Leased.Load()
	local := nodes[0].router.Stats().Local.Load() + nodes[1].router.Stats().Local.Load()
	t.Logf("admitted %d of 4000; %d tokens leased, %d checks decided from leases or cached refusals", got, leased, local)
	if fb := nodes[0].router.Stats().Fallbacks.Load() + nodes[1].router.Stats().Fallbacks.Load(); fb != 0 {
		t.Fatalf("%d fallbacks", fb)
	}
	if got > 4000 {
		t.Fatalf("admitted %d, more than the bucket's 4000", got)
	}
	if leased == 0 || local == 0 {
		t.Fatalf("hot key was not leased: leased %d, local %d", leased, local)
	}
	// Unused leased tokens may lapse, but never more than the lease bound.
	if got < 4000-4000/4 {
		t.Fatalf("admitted %d: lost more than the lease bound", got)
	}
}

// drain checks key under l through each of nodes from 4 callers, 1,500
// one-token checks each, and returns how many were admitted.
func drain(t *testing.T, nodes []*testNode, key uint64, l limiter.Limit) int64 {
	t.Helper()
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for _, nd := range nodes {
		for range 4 {
			wg.Go(func() {
				for range 1500 {
					r, err := take(t, nd.router, limiter.Request{Key: key, Limit: l, Hits: 1})
					if err != nil {
						t.Error(err)
						return
					}
					if r.Allowed {
						admitted.Add(1)
					}
				}
			})
		}
	}
	wg.Wait()
	return admitted.Load()
}

func TestBatchingSharesRPCs(t *testing.T) {
	nodes := startNodes(t, 2, func(c *Config) { c.BatchWindow = 2 * time.Millisecond })
	rg := nodes[0].router.Ring()
	l := limiter.Limit{Rate: 1e6, Period: time.Second}
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Go(func() {
			for i := range 50 {
				key := keyOwnedBy(t, rg, "node-1", g*1000+i)
				if _, err := take(t, nodes[0].router, limiter.Request{Key: key, Limit: l, Hits: 1}); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	st := nodes[0].router.Stats()
	fwd, batches := st.Forwarded.Load(), st.Batches.Load()
	if fwd != 32*50 {
		t.Fatalf("forwarded %d", fwd)
	}
	if batches*4 > fwd {
		t.Fatalf("%d batches for %d forwarded operations: batching is not sharing RPCs", batches, fwd)
	}
	t.Logf("%d operations in %d batches (%.1f per RPC)", fwd, batches, float64(fwd)/float64(batches))
}

func TestDeadOwnerFallsBack(t *testing.T) {
	nodes := startNodes(t, 3, func(c *Config) { c.Timeout = 50 * time.Millisecond })
	rg := nodes[0].router.Ring()
	nodes[2].srv.Stop() // node-2 dies; the ring does not know yet
	l := limiter.Limit{Rate: 30, Period: time.Hour}
	local := keyOwnedBy(t, rg, "node-2", 1)
	for i := range 20 {
		r, err := take(t, nodes[0].router, limiter.Request{Key: local, Limit: l, Hits: 1})
		if err != nil {
			t.Fatalf("take %d: caller saw error %v", i, err)
		}
		// Fair share: 30 / 3 nodes = 10.
		if want := i < 10; r.Allowed != want {
			t.Fatalf("take %d: allowed %v, want %v", i, r.Allowed, want)
		}
	}
	st := nodes[0].router.Stats()
	// The breaker opened after 3 failed batches; the rest cost no RPC.
	if b := st.Batches.Load(); b != 3 {
		t.Fatalf("%d batches sent to a dead peer, want 3 before the breaker opened", b)
	}
	open := keyOwnedBy(t, rg, "node-2", 2)
	if r, err := take(t, nodes[0].router, limiter.Request{Key: open, Limit: limiter.Limit{Rate: 0, Period: time.Hour}, Hits: 1, Fallback: limiter.FallbackOpen}); err != nil || !r.Allowed {
		t.Fatalf("fail-open: %+v %v", r, err)
	}
	if _, err := take(t, nodes[0].router, limiter.Request{Key: open, Limit: l, Hits: 1, Fallback: limiter.FallbackClosed}); !errors.Is(err, limiter.ErrUndecided) {
		t.Fatalf("fail-closed: err = %v", err)
	}
}

func TestHandoffOnJoinAndLeave(t *testing.T) {
	nodes := startNodes(t, 3, nil)
	l := limiter.Limit{Rate: 10, Period: time.Hour}
	two := ring.New([]ring.Member{nodes[0].member, nodes[1].member})
	three := nodes[0].router.Ring()
	// Start with a 2-node cluster; spend 7 of 10 on keys that node-2 will own.
	for _, nd := range nodes {
		nd.router.SetRing(two)
	}
	var keys []uint64
	for i := range 20 {
		k := keyOwnedBy(t, three, "node-2", 100+i)
		keys = append(keys, k)
		for range 7 {
			if _, err := take(t, nodes[i%2].router, limiter.Request{Key: k, Limit: l, Hits: 1}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// node-2 joins: the others hand its keys over.
	for _, nd := range nodes {
		nd.router.SetRing(three)
	}
	shedtest.Eventually(t, 10*time.Second, "node-2 handed its keys", func() error {
		if n := nodes[2].store.Len(); n != len(keys) {
			return fmt.Errorf("node-2 holds %d buckets, want %d", n, len(keys))
		}
		return nil
	})
	for _, k := range keys {
		r, err := take(t, nodes[0].router, limiter.Request{Key: k, Limit: l, Hits: 0})
		if err != nil || r.Remaining != 3 {
			t.Fatalf("after join: remaining %d (err %v), want 3", r.Remaining, err)
		}
	}
	// node-2 leaves gracefully: its buckets go back.
	if err := nodes[2].router.Leave(context.Background()); err != nil {
		t.Fatal(err)
	}
	if nodes[2].store.Len() != 0 {
		t.Fatalf("leaving node kept %d buckets", nodes[2].store.Len())
	}
	for _, nd := range nodes[:2] {
		nd.router.SetRing(two)
	}
	for _, k := range keys {
		r, err := take(t, nodes[1].router, limiter.Request{Key: k, Limit: l, Hits: 0})
		if err != nil || r.Remaining != 3 {
			t.Fatalf("after leave: remaining %d (err %v), want 3", r.Remaining, err)
		}
	}
}

func TestFairShare(t *testing.T) {
	for _, tc := range []struct {
		l     limiter.Limit
		nodes int
		want  limiter.Limit
	}{
		{limiter.Limit{Rate: 1000, Period: time.Minute}, 3, limiter.Limit{Rate: 333, Period: time.Minute, Burst: 333}},
		{limiter.Limit{Rate: 2, Period: time.Minute, Burst: 10}, 4, limiter.Limit{Rate: 1, Period: time.Minute, Burst: 2}},
		{limiter.Limit{Rate: 0, Period: time.Minute}, 3, limiter.Limit{Rate: 0, Period: time.Minute, Burst: 0}},
		{limiter.Limit{Rate: 5, Period: time.Second}, 1, limiter.Limit{Rate: 5, Period: time.Second}},
	} {
		if got := FairShare(tc.l, tc.nodes); got != tc.want {
			t.Errorf("FairShare(%+v, %d) = %+v, want %+v", tc.l, tc.nodes, got, tc.want)
		}
	}
}

// TestOneCallerDeadlineDoesNotFailTheBatch: a caller with a deadline too
// short for the round trip shares a batch with patient callers; they are
// answered by the owner, and the peer's breaker stays closed. The
// impatient caller itself is answered by its fallback.
func TestOneCallerDeadlineDoesNotFailTheBatch(t *testing.T) {
	nodes := startNodes(t, 2, func(c *Config) { c.BatchWindow = 5 * time.Millisecond; c.Timeout = 5 * time.Second })
	rg := nodes[0].router.Ring()
	l := limiter.Limit{Rate: 1000, Period: time.Hour}
	var wg sync.WaitGroup
	for round := range 5 {
		for g := range 4 {
			wg.Go(func() {
				ctx := context.Background()
				if g == 0 {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, time.Microsecond)
					defer cancel()
				}
				key := keyOwnedBy(t, rg, "node-1", round*10+g)
				res := make([]limiter.Result, 1)
				_ = nodes[0].router.Take(ctx, time.Now().UnixNano(), []limiter.Request{{Key: key, Limit: l, Hits: 1}}, res)
			})
		}
		wg.Wait()
	}
	st := nodes[0].router.Stats()
	if st.Fallbacks.Load() > 5 || st.BatchErrors.Load() != 0 {
		t.Fatalf("fallbacks %d (want at most the 5 impatient callers'), batch errors %d: one impatient caller failed the batch", st.Fallbacks.Load(), st.BatchErrors.Load())
	}
}

// TestAloneInAnotherNodesRing: a node whose ring holds only another member
// (it is leaving a 2-node cluster) forwards instead of deciding locally.
func TestAloneInAnotherNodesRing(t *testing.T) {
	nodes := startNodes(t, 2, nil)
	nodes[0].router.SetRing(ring.New([]ring.Member{nodes[1].member}))
	l := limiter.Limit{Rate: 1, Period: time.Hour}
	if _, err := take(t, nodes[0].router, limiter.Request{Key: 42, Limit: l, Hits: 1}); err != nil {
		t.Fatal(err)
	}
	if nodes[0].store.Len() != 0 || nodes[1].store.Len() != 1 {
		t.Fatalf("store sizes %d, %d: the leaving node decided locally", nodes[0].store.Len(), nodes[1].store.Len())
	}
}

// TestOldTrafficDoesNotMakeAKeyHot: forwarding counts from long ago do not
// count toward hotness (no lease is taken for a key seen once an hour).
func TestOldTrafficDoesNotMakeAKeyHot(t *testing.T) {
	nodes := startNodes(t, 2, func(c *Config) { c.HotThreshold = 64 })
	r := nodes[0].router
	req := limiter.Request{Key: 99, Limit: limiter.Limit{Rate: 1000, Period: time.Hour}, Hits: 1}
	now := time.Now().UnixNano()
	for range 63 {
		r.local(&req, 2, now)
	}
	r.local(&req, 2, now+int64(time.Hour))
	if n := r.Stats().Leases.Load(); n != 0 {
		t.Fatalf("%d leases for a key forwarded 63 times an hour ago and once now", n)
	}
}

// TestTakeStreamAnswersEachBatch drives the owner's Take stream directly: an
// invalid batch is answered with its error under its id, and the stream
// goes on answering the next one.
func TestTakeStreamAnswersEachBatch(t *testing.T) {
	nodes := startNodes(t, 1, nil)
	conn, err := grpc.NewClient(nodes[0].member.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := leveev1.NewPeerServiceClient(conn).Take(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bad := &leveev1.TakeRequest{Id: 7, Takes: []*leveev1.BucketTake{{Key: 1, Limit: &leveev1.BucketLimit{Rate: 1}, Hits: 1}}}
	good := &leveev1.TakeRequest{Id: 8, Takes: []*leveev1.BucketTake{
		{Key: 1, Limit: &leveev1.BucketLimit{Rate: 2, PeriodNanos: int64(time.Hour)}, Hits: 1},
		{Key: 1, Limit: &leveev1.BucketLimit{Rate: 2, PeriodNanos: int64(time.Hour)}, Hits: 2},
	}}
	for _, req := range []*leveev1.TakeRequest{bad, good} {
		if err := s.Send(req); err != nil {
			t.Fatal(err)
		}
	}
	r1, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if r1.GetId() != 7 || !strings.Contains(r1.GetError(), "takes[0].limit") || len(r1.GetResults()) != 0 {
		t.Fatalf("invalid batch answered %v", r1)
	}
	r2, err := s.Recv()
	if err != nil {
		t.Fatalf("stream ended after an invalid batch: %v", err)
	}
	if r2.GetId() != 8 || r2.GetError() != "" || len(r2.GetResults()) != 2 ||
		!r2.Results[0].GetAllowed() || r2.Results[1].GetAllowed() || r2.Results[1].GetRemaining() != 1 {
		t.Fatalf("valid batch answered %v", r2)
	}
}

// silentPeer accepts Take streams and reads them but never answers, like an
// owner stalled in a long pause.
type silentPeer struct {
	leveev1.UnimplementedPeerServiceServer
	got atomic.Int64
}

func (p *silentPeer) Take(s leveev1.PeerService_TakeServer) error {
	for {
		if _, err := s.Recv(); err != nil {
			return err
		}
		p.got.Add(1)
	}
}

// startSilentPeer serves a silentPeer on loopback until the test ends.
func startSilentPeer(t *testing.T) (*silentPeer, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	silent := &silentPeer{}
	srv := grpc.NewServer()
	leveev1.RegisterPeerServiceServer(srv, silent)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return silent, lis.Addr().String()
}

// TestSilentOwnerTimesOut: batches on a stream that is open but never
// answered fail over to their fallback at the peer timeout, and the
// breaker stops sending after three.
func TestSilentOwnerTimesOut(t *testing.T) {
	silent, addr := startSilentPeer(t)
	self := ring.Member{ID: "self", Addr: "127.0.0.1:1"}
	store := limiter.NewStore(1 << 10)
	r := NewRouter(Config{Self: self, Store: store, Timeout: 30 * time.Millisecond, BreakerCooldown: time.Hour})
	defer r.Close()
	rg := ring.New([]ring.Member{self, {ID: "silent", Addr: addr}})
	r.SetRing(rg)
	key := keyOwnedBy(t, rg, "silent", 0)
	l := limiter.Limit{Rate: 20, Period: time.Hour}
	for i := range 12 {
		start := time.Now()
		res, err := take(t, r, limiter.Request{Key: key, Limit: l, Hits: 1})
		if err != nil {
			t.Fatalf("take %d: caller saw %v", i, err)
		}
		if want := i < 10; res.Allowed != want { // fair share: 20 / 2 nodes
			t.Fatalf("take %d: allowed %v, want %v", i, res.Allowed, want)
		}
		if el := time.Since(start); el > 5*time.Second {
			t.Fatalf("take %d waited %v", i, el)
		}
	}
	st := r.Stats()
	if b, e := st.Batches.Load(), st.BatchErrors.Load(); b != 3 || e != 3 {
		t.Fatalf("batches %d, errors %d: want 3 timed out before the breaker opened", b, e)
	}
	// The owner reads each batch in its own time, perhaps after the
	// caller gave up on it.
	shedtest.Eventually(t, 10*time.Second, "the silent owner reading 3 batches", func() error {
		if got := silent.got.Load(); got < 3 {
			return fmt.Errorf("read %d", got)
		}
		return nil
	})
	if got := silent.got.Load(); got != 3 {
		t.Fatalf("the silent owner read %d batches, want 3", got)
	}
}

// stuckOnce is an owner whose first Take stream is never read — a handler
// wedged without dying — while later streams are served by a real Server.
type stuckOnce struct {
	leveev1.UnimplementedPeerServiceServer
	real    *Server
	streams atomic.Int64
}

func (p *stuckOnce) Take(s leveev1.PeerService_TakeServer) error {
	if p.streams.Add(1) == 1 {
		<-s.Context().Done()
		return s.Context().Err()
	}
	return p.real.Take(s)
}

// TestStuckStreamIsReplaced: a batch too large for the flow-control window
// of a stream its owner never reads blocks the sender; once that send has
// been stuck for a peer timeout it must be given up, or every later batch
// would queue behind it and fall back for as long as the owner's process
// lives — also when the callers' own deadlines, shorter than the peer
// timeout, are what end each batch.
func TestStuckStreamIsReplaced(t *testing.T) {
	for _, callerDeadline := range []time.Duration{0, 50 * time.Millisecond} {
		t.Run(fmt.Sprint("caller deadline ", callerDeadline), func(t *testing.T) {
			testStuckStreamIsReplaced(t, callerDeadline)
		})
	}
}

func testStuckStreamIsReplaced(t *testing.T, callerDeadline time.Duration) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	owner := &stuckOnce{real: NewServer(limiter.NewStore(1<<16), nil)}
	srv := grpc.NewServer(grpc.InitialWindowSize(WindowSize), grpc.InitialConnWindowSize(WindowSize))
	leveev1.RegisterPeerServiceServer(srv, owner)
	go srv.Serve(lis)
	defer srv.Stop()
	self := ring.Member{ID: "self", Addr: "127.0.0.1:1"}
	r := NewRouter(Config{Self: self, Store: limiter.NewStore(1 << 16), Timeout: 100 * time.Millisecond, BreakerCooldown: 10 * time.Millisecond})
	defer r.Close()
	rg := ring.New([]ring.Member{self, {ID: "owner", Addr: lis.Addr().String()}})
	r.SetRing(rg)
	l := limiter.Limit{Rate: 1 << 20, Period: time.Hour}
	takeCtx := func(reqs []limiter.Request, res []limiter.Result) error {
		ctx := context.Background()
		if callerDeadline > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, callerDeadline)
			defer cancel()
		}
		return r.Take(ctx, time.Now().UnixNano(), reqs, res)
	}
	// About 40,000 operations: more than the 1 MiB window holds.
	big := make([]limiter.Request, 40000)
	for i := range big {
		big[i] = limiter.Request{Key: uint64(i) + 1, Limit: l, Hits: 1}
	}
	_ = takeCtx(big, make([]limiter.Result, len(big))) // falls back, or ends at the caller's deadline
	key := keyOwnedBy(t, rg, "owner", 1<<30)
	deadline := time.Now().Add(5 * time.Second)
	for {
		fb := r.Stats().Fallbacks.Load()
		err := takeCtx([]limiter.Request{{Key: key, Limit: l, Hits: 1}}, make([]limiter.Result, 1))
		if err == nil && r.Stats().Fallbacks.Load() == fb {
			break // decided at the owner, on a new stream
		}
		if time.Now().After(deadline) {
			t.Fatalf("no operation reached the owner in 5 s after a stuck stream (%d streams opened; last error %v)", owner.streams.Load(), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestOwnerRestartOpensANewStream: when the owner's server goes away the
// stream's waiting batches fail over, and once it is back on the same
// address the next batch opens a new stream and is decided there.
// TestDrainEndsTakeStreams: a peer whose ring still names a stopping node
// (it has not seen it leave: etcd is down) keeps its Take stream open, and
// the node's GracefulStop waited for it until its grace ran out. Drain ends
// the stream, so GracefulStop returns while the peer still runs, and the
// peer decides by its fallback.
func TestDrainEndsTakeStreams(t *testing.T) {
	nodes := startNodes(t, 2, func(c *Config) {
		c.Timeout = time.Second
		c.HotThreshold = -1
	})
	key := keyOwnedBy(t, nodes[0].router.Ring(), "node-1", 0)
	l := limiter.Limit{Rate: 1000, Period: 1000 * time.Hour}
	if res, err := take(t, nodes[0].router, limiter.Request{Key: key, Limit: l, Hits: 1}); err != nil || !res.Allowed {
		t.Fatalf("forwarded take: %+v %v", res, err)
	}
	nodes[1].peer.Drain()
	stopped := make(chan struct{})
	go func() { nodes[1].srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("GracefulStop still waits for the peer's Take stream 10 s after Drain")
	}
	fb := nodes[0].router.Stats().Fallbacks.Load()
	if res, err := take(t, nodes[0].router, limiter.Request{Key: key, Limit: l, Hits: 1}); err != nil || !res.Allowed {
		t.Fatalf("take after the owner drained: %+v %v (want the fair-share fallback)", res, err)
	}
	if nodes[0].router.Stats().Fallbacks.Load() == fb {
		t.Fatal("a take for a drained owner was not decided by its fallback")
	}
}

func TestOwnerRestartOpensANewStream(t *testing.T) {
	nodes := startNodes(t, 2, func(c *Config) {
		c.Timeout = time.Second
		c.BreakerCooldown = 10 * time.Millisecond
		c.HotThreshold = -1
	})
	rg := nodes[0].router.Ring()
	key := keyOwnedBy(t, rg, "node-1", 0)
	// A token every 3,600 s: none arrives during the test.
	l := limiter.Limit{Rate: 1000, Period: 1000 * time.Hour}
	if res, err := take(t, nodes[0].router, limiter.Request{Key: key, Limit: l, Hits: 1}); err != nil || !res.Allowed {
		t.Fatalf("first take: %+v %v", res, err)
	}
	nodes[1].srv.Stop()
	res, err := take(t, nodes[0].router, limiter.Request{Key: key, Limit: l, Hits: 1})
	if err != nil || !res.Allowed {
		t.Fatalf("take with the owner down: %+v %v (want the fair-share fallback)", res, err)
	}
	if nodes[0].router.Stats().Fallbacks.Load() == 0 {
		t.Fatal("no fallback while the owner was down")
	}
	lis, err := net.Listen("tcp", nodes[1].member.Addr)
	if err != nil {
		t.Fatalf("listening on %s again: %v", nodes[1].member.Addr, err)
	}
	srv := grpc.NewServer()
	leveev1.RegisterPeerServiceServer(srv, NewServer(nodes[1].store, nil))
	go srv.Serve(lis)
	defer srv.Stop()
	deadline := time.Now().Add(10 * time.Second)
	for {
		fb := nodes[0].router.Stats().Fallbacks.Load()
		if _, err := take(t, nodes[0].router, limiter.Request{Key: key, Limit: l, Hits: 1}); err != nil {
			t.Fatal(err)
		}
		if nodes[0].router.Stats().Fallbacks.Load() == fb {
			break // decided by the owner
		}
		if time.Now().After(deadline) {
			t.Fatal("the owner is back but batches still fall back after 10 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := nodes[1].store.Take(key, l, 0, time.Now().UnixNano()); got.Remaining != l.Rate-2 {
		t.Fatalf("owner's bucket has %d left, want %d (its first take and the one after the restart)", got.Remaining, l.Rate-2)
	}
}

// TestFallbackStartsFromOwnersLastState: a key whose owner refused it from an
// empty bucket, then died, is not given a fresh fair share on the caller's
// node: the fallback bucket starts where the owner said its bucket stood.
func TestFallbackStartsFromOwnersLastState(t *testing.T) {
	nodes := startNodes(t, 2, func(c *Config) { c.Timeout = 50 * time.Millisecond })
	rg := nodes[0].router.Ring()
	key := keyOwnedBy(t, rg, "node-1", 3)
	// A token every 100 s, burst 10: none arrives while the owner (which
	// reads its own clock) decides the first takes.
	l := limiter.Limit{Rate: 10, Period: 1000 * time.Second}
	now := time.Now().UnixNano()
	at := func(d time.Duration) (limiter.Result, error) {
		res := make([]limiter.Result, 1)
		err := nodes[0].router.Take(context.Background(), now+int64(d), []limiter.Request{{Key: key, Limit: l, Hits: 1}}, res)
		return res[0], err
	}
	for i := range 11 {
		r, err := at(0)
		if err != nil || r.Allowed != (i < 10) {
			t.Fatalf("take %d at the owner: %+v %v", i, r, err)
		}
	}
	nodes[1].srv.Stop() // the owner dies with its bucket empty
	// 250 s on, the owner's bucket would hold 2.5 tokens' worth; the fair
	// share (rate and burst ÷ 2 nodes) started from the same state holds
	// 1.25, which re-expressing the state in the share's token time may
	// round up to 2. A fresh fair share would hold 5.
	admitted := 0
	for range 10 {
		r, err := at(250 * time.Second)
		if err != nil {
			t.Fatalf("caller saw %v", err)
		}
		if r.Allowed {
			admitted++
		}
	}
	if nodes[0].router.Stats().Fallbacks.Load() == 0 {
		t.Fatal("no fallback with the owner down")
	}
	if admitted < 1 || admitted > 2 {
		t.Fatalf("fallback admitted %d right after the owner spent its burst, want 1 or 2 (a fresh fair share would admit 5)", admitted)
	}
}

// TestSlowOwnerAnswersByTheDeadline: a caller whose owner does not answer
// is answered by its operations' fallbacks before its deadline, not with
// the deadline's error, even though the peer timeout is far longer: a
// fail-open operation is admitted, a local one decided on a fair share, a
// fail-closed one reported undecided.
func TestSlowOwnerAnswersByTheDeadline(t *testing.T) {
	_, addr := startSilentPeer(t)
	self := ring.Member{ID: "self", Addr: "127.0.0.1:1"}
	r := NewRouter(Config{Self: self, Store: limiter.NewStore(1 << 10), Timeout: time.Hour, BreakerCooldown: time.Hour})
	defer r.Close()
	rg := ring.New([]ring.Member{self, {ID: "silent", Addr: addr}})
	r.SetRing(rg)
	l := limiter.Limit{Rate: 20, Period: time.Hour}
	reqs := []limiter.Request{
		{Key: keyOwnedBy(t, rg, "silent", 0), Limit: limiter.Limit{Period: time.Hour}, Hits: 1, Fallback: limiter.FallbackOpen},
		{Key: keyOwnedBy(t, rg, "silent", 1), Limit: l, Hits: 1},
	}
	for range 2 {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		res := make([]limiter.Result, len(reqs))
		err := r.Take(ctx, time.Now().UnixNano(), reqs, res)
		cancel()
		if err != nil {
			t.Fatalf("caller saw %v, want its fallbacks' answers", err)
		}
		if !res[0].Allowed || !res[1].Allowed || res[1].Remaining >= 10 {
			t.Fatalf("fail-open %+v, local %+v: want admitted, the local one from a fair share of 10", res[0], res[1])
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	closed := []limiter.Request{{Key: reqs[1].Key, Limit: l, Hits: 1, Fallback: limiter.FallbackClosed}}
	if err := r.Take(ctx, time.Now().UnixNano(), closed, make([]limiter.Result, 1)); !errors.Is(err, limiter.ErrUndecided) {
		t.Fatalf("fail-closed: %v, want undecided", err)
	}
	if n := r.Stats().Fallbacks.Load(); n != 5 {
		t.Fatalf("%d fallbacks, want 5", n)
	}
}

// TestWarmLeaseKeepsHalf: the owner grants a warm lease only from the
// bucket's upper half, and takes back the tokens a lease returns.
func TestWarmLeaseKeepsHalf(t *testing.T) {
	store := limiter.NewStore(16)
	s := NewServer(store, nil)
	lim := &leveev1.BucketLimit{Rate: 100, PeriodNanos: int64(30 * 24 * time.Hour)}
	do := func(tk *leveev1.BucketTake) *leveev1.BucketResult {
		t.Helper()
		tk.Key, tk.Limit = 9, lim
		resp, err := s.take(&leveev1.TakeRequest{Takes: []*leveev1.BucketTake{tk}})
		if err != nil {
			t.Fatal(err)
		}
		return resp.Results[0]
	}
	// 99 left after the check; half of 100 stays: 49 granted.
	if r := do(&leveev1.BucketTake{Hits: 1, Lease: 80}); !r.Allowed || r.Remaining != 99 || r.Leased != 49 {
		t.Fatalf("first warm ask: %+v, want allowed, 99 remaining, 49 leased", r)
	}
	if r := do(&leveev1.BucketTake{Hits: 1, Lease: 80}); !r.Allowed || r.Remaining != 49 || r.Leased != 0 {
		t.Fatalf("ask at half: %+v, want allowed, 49 remaining, none leased", r)
	}
	// 40 of the 49 come back before the check: 88 left, 38 granted.
	if r := do(&leveev1.BucketTake{Hits: 1, Lease: 80, Returned: 40}); !r.Allowed || r.Remaining != 88 || r.Leased != 38 {
		t.Fatalf("ask with 40 returned: %+v, want 88 remaining, 38 leased", r)
	}
	// A refund, a reserve or a refused check never leases.
	if r := do(&leveev1.BucketTake{Hits: 1, Reserve: 10, Lease: 80}); r.Leased != 0 {
		t.Fatalf("a check with a reserve leased %d", r.Leased)
	}
	if r := do(&leveev1.BucketTake{Hits: 1000, Lease: 80}); r.Allowed || r.Leased != 0 {
		t.Fatalf("a refused check: %+v", r)
	}
	if r := do(&leveev1.BucketTake{Hits: 1, Refund: true, Lease: 80}); r.Leased != 0 {
		t.Fatalf("a refund leased %d", r.Leased)
	}
}

// queuedRenewal leases key (owned by node-1) to node-0 and uses it until a
// renewal waits in node-0's queue for node-1, and returns the key's state.
func queuedRenewal(t *testing.T, nodes []*testNode, key uint64) *keyState {
	t.Helper()
	roomy := limiter.Limit{Rate: 1_000_000, Period: time.Hour}
	for range 5 { // two forwarded (the second leases 4), three from the lease
		if r, err := take(t, nodes[0].router, limiter.Request{Key: key, Limit: roomy, Hits: 1}); err != nil || !r.Allowed {
			t.Fatalf("check: %+v, %v", r, err)
		}
	}
	sh := nodes[0].router.hot.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	st := sh.m[key]
	if st == nil || !st.renewing || st.lease != 1 {
		t.Fatalf("key state %+v, want a renewal out and one token left", st)
	}
	return st
}

func renewing(r *Router, key uint64, st *keyState) bool {
	sh := r.hot.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return st.renewing
}

// TestRingChangeDropsRenewals: a renewal queued for a peer is dropped when
// the ring changes, even if the peer stays (the key may have moved: its
// old owner would grant from a bucket it no longer holds), so the key may
// ask again.
func TestRingChangeDropsRenewals(t *testing.T) {
	nodes := startNodes(t, 3, func(c *Config) { c.WarmLease = 10 * time.Second; c.Timeout = 5 * time.Second })
	rg := nodes[0].router.Ring()
	key := keyOwnedBy(t, rg, "node-1", 500)
	st := queuedRenewal(t, nodes, key)
	batches := nodes[0].router.Stats().Batches.Load()
	nodes[0].router.SetRing(rg) // the same ring: nothing moves
	if !renewing(nodes[0].router, key, st) {
		t.Fatal("an unchanged ring dropped the renewal")
	}
	nodes[0].router.SetRing(ring.New([]ring.Member{nodes[0].member, nodes[1].member}))
	if renewing(nodes[0].router, key, st) {
		t.Fatal("the renewal is still out after the ring changed")
	}
	// A renewal asked under the old ring that reaches the queue only
	// after SetRing (a Take that loaded the ring before the swap) is
	// given up too.
	sh := nodes[0].router.hot.shard(key)
	sh.mu.Lock()
	st.renewing = true
	sh.mu.Unlock()
	owner, _ := rg.Owner(key)
	nodes[0].router.peer(owner).renew(rg, limiter.Request{Key: key, Limit: st.limit, Hits: 1}, leaseAsk{want: 1, warm: true, gen: st.gen})
	if renewing(nodes[0].router, key, st) {
		t.Fatal("a renewal asked under the old ring was queued after the ring changed")
	}
	if got := nodes[0].router.Stats().Batches.Load() - batches; got != 0 {
		t.Fatalf("%d batches sent for a dropped renewal", got)
	}
}

// TestRenewalsWaitForTheBreaker: a batch's worth of renewals is not sent
// to a peer whose breaker is open; they are given up, so the keys may ask
// again.
func TestRenewalsWaitForTheBreaker(t *testing.T) {
	nodes := startNodes(t, 2, func(c *Config) { c.WarmLease = 10 * time.Second; c.BatchMax = 1; c.Timeout = 5 * time.Second })
	rg := nodes[0].router.Ring()
	key := keyOwnedBy(t, rg, "node-1", 600)
	owner, _ := rg.Owner(key)
	p := nodes[0].router.peer(owner)
	roomy := limiter.Limit{Rate: 1_000_000, Period: time.Hour}
	for range 4 {
		if _, err := take(t, nodes[0].router, limiter.Request{Key: key, Limit: roomy, Hits: 1}); err != nil {
			t.Fatal(err)
		}
	}
	// Lease of 4, two used: open the breaker before the third asks.
	p.breaker.mu.Lock()
	p.breaker.failures, p.breaker.openUntil = p.breaker.threshold, time.Now().Add(time.Hour)
	p.breaker.mu.Unlock()
	batches := nodes[0].router.Stats().Batches.Load()
	if r, err := take(t, nodes[0].router, limiter.Request{Key: key, Limit: roomy, Hits: 1}); err != nil || !r.Allowed {
		t.Fatalf("check from the lease: %+v, %v", r, err)
	}
	sh := nodes[0].router.hot.shard(key)
	sh.mu.Lock()
	st := *sh.m[key]
	sh.mu.Unlock()
	if st.renewing || !st.norenew || st.lease != 1 {
		t.Fatalf("key state %+v, want the renewal given up and one token left", st)
	}
	if got := nodes[0].router.Stats().Batches.Load() - batches; got != 0 {
		t.Fatalf("%d batches sent through an open breaker", got)
	}
}

// TestWarmLeasesDecideLocallyAndNeverOverAdmit: with warm leases, a node
// checking many keys far from their limits decides most of them itself;
// and however hard two nodes drain one key, the cluster admits no more
// than its bucket holds, and loses at most the lease bound.
func TestWarmLeasesDecideLocallyAndNeverOverAdmit(t *testing.T) {
	nodes := startNodes(t, 3, func(c *Config) { c.WarmLease = 10 * time.Second; c.Timeout = 5 * time.Second })
	rg := nodes[0].router.Ring()
	roomy := limiter.Limit{Rate: 1_000_000, Period: time.Hour}
	var keys []uint64
	for k := range 20 {
		keys = append(keys, keyOwnedBy(t, rg, "node-1", 100+k))
	}
	// Round after round over the keys, so that one key's renewal rides in
	// the batch of another's forwarded check.
	for range 25 {
		for _, key := range keys {
			if r, err := take(t, nodes[0].router, limiter.Request{Key: key, Limit: roomy, Hits: 1}); err != nil || !r.Allowed {
				t.Fatalf("check of a roomy key: %+v, %v", r, err)
			}
		}
	}
	st := nodes[0].router.Stats()
	t.Logf("roomy keys: %d forwarded, %d decided here, %d tokens leased", st.Forwarded.Load(), st.Local.Load(), st.Leased.Load())
	// Without renewals each key is forwarded four times (asking for
	// nothing the first time, then 4, 8 and 16); renewed before they run
	// out, leases leave about two forwarded checks a key.
	if fwd := st.Forwarded.Load(); fwd+st.Local.Load() != 500 || fwd > 60 {
		t.Fatalf("forwarded %d and decided here %d of 500, want at most 60 forwarded", fwd, st.Local.Load())
	}

	l := limiter.Limit{Rate: 4000, Period: 30 * 24 * time.Hour}
	key := keyOwnedBy(t, rg, "node-2", 7)
	got := drain(t, nodes[:2], key, l)
	t.Logf("drained key: admitted %d of 4000", got)
	if got > 4000 {
		t.Fatalf("admitted %d, more than the bucket's 4000", got)
	}
	if got < 4000-4000/4 {
		t.Fatalf("admitted %d: lost more than the lease bound", got)
	}
}

// TestWarmRenewalsSendThemselves: renewals that pile up with no forwarded
// check to ride on are sent as a batch of their own once a batch's worth
// waits, and their grants extend the leases.
func TestWarmRenewalsSendThemselves(t *testing.T) {
	nodes := startNodes(t, 2, func(c *Config) { c.WarmLease = 10 * time.Second; c.BatchMax = 8; c.Timeout = 5 * time.Second })
	rg := nodes[0].router.Ring()
	roomy := limiter.Limit{Rate: 1_000_000, Period: time.Hour}
	var keys []uint64
	for k := range 16 {
		keys = append(keys, keyOwnedBy(t, rg, "node-1", 300+k))
	}
	check := func(key uint64) {
		t.Helper()
		if r, err := take(t, nodes[0].router, limiter.Request{Key: key, Limit: roomy, Hits: 1}); err != nil || !r.Allowed {
			t.Fatalf("check: %+v, %v", r, err)
		}
	}
	for range 2 {
		for _, key := range keys {
			check(key) // forwarded; the second leases 4
		}
	}
	st := nodes[0].router.Stats()
	fwd, batches, leased := st.Forwarded.Load(), st.Batches.Load(), st.Leased.Load()
	// Three checks from each lease: the third asks for a renewal. Sixteen
	// renewals wait, two batches of eight, with nothing forwarded.
	for range 3 {
		for _, key := range keys {
			check(key)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for st.Leased.Load() < leased+16*5 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := st.Forwarded.Load() - fwd; got != 0 {
		t.Fatalf("%d checks forwarded while every key held a lease", got)
	}
	if got := st.Batches.Load() - batches; got != 2 {
		t.Fatalf("%d batches sent for 16 renewals at 8 a batch, want 2", got)
	}
	if got := st.Leased.Load() - leased; got != 16*5 {
		t.Fatalf("renewals granted %d tokens, want 16 x 5 (up to twice the three used)", got)
	}
	// Each key now holds 1 + 5: six more checks are its own.
	for range 6 {
		for _, key := range keys {
			check(key)
		}
	}
	if got := st.Forwarded.Load() - fwd; got != 0 {
		t.Fatalf("%d checks forwarded after the renewals", got)
	}
}
