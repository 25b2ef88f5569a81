// Package peer makes a set of levee nodes act as one rate limiter. Every
// bucket has exactly one owner, chosen by the ring (limiter/ring) from the
// live members (limiter/cluster); Router sends each bucket operation to its
// owner and Server answers operations sent here.
//
// # Batching
//
// Operations for the same owner are micro-batched: the first operation for
// an idle peer opens a batch, and the batch is sent when it has been open for
// the batch window (500 µs by default) or holds the batch cap, whichever
// comes first. Under load one RPC carries many callers' operations, so the
// peer path costs a fraction of an RPC per decision.
//
// # Failure
//
// An owner that fails or is slow must not turn into errors for callers. A
// batch that fails (error, or no answer within the timeout or the callers'
// deadline) is decided by each operation's fallback: FallbackLocal decides
// on this node with a fair share of the limit (limit ÷ live nodes), open
// admits, closed reports the operation undecidable. After a few consecutive
// failures a per-peer circuit breaker opens: operations for that peer go
// straight to their fallback, costing no timeouts, and one probe batch per
// cool-down tests whether the peer is back. A Take stream that answers
// nothing for a whole peer timeout (an owner's handler wedged while the
// process lives on), or an open or send stuck on it as long, is cancelled,
// and the next batch opens a new one. Membership (a lease in etcd)
// removes a dead node from the ring within its TTL; its keys then have live
// owners again.
//
// # Hand-off
//
// When ownership moves — a node joins, or leaves gracefully — the buckets
// this node holds but no longer owns are sent to their new owners, so a
// rolling restart of the fleet does not reset anybody's quota.
package peer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/ring"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
)

// Config configures a Router.
type Config struct {
	// Self is this node; operations it owns are decided on Store.
	Self  ring.Member
	Store *limiter.Store
	// Dial opens a connection to a peer (nil: gRPC with Creds).
	Dial func(addr string) (*grpc.ClientConn, error)
	// Creds secure the connections the default Dial opens (nil:
	// plaintext), e.g. TLS with a client certificate the peers' servers
	// verify.
	Creds credentials.TransportCredentials
	// BatchWindow is how long a batch stays open (default 500 µs).
	BatchWindow time.Duration
	// BatchMax is the most operations in one batch (default 512).
	BatchMax int
	// Timeout bounds one forwarded batch (default 100 ms); callers'
	// deadlines shorten it.
	Timeout time.Duration
	// BreakerFailures consecutive failed batches open a peer's breaker
	// (default 3); BreakerCooldown is how long it stays open (default 1 s).
	BreakerFailures int
	BreakerCooldown time.Duration
	// HotThreshold is how many tokens one key must be forwarded within two
	// lease periods before this node leases tokens for it (default 64;
	// negative turns hot-key handling off). LeasePeriod is how long a lease
	// lasts (default 100 ms). See hot.go.
	HotThreshold int
	LeasePeriod  time.Duration
	// Now is the clock (nil: time.Now).
	Now    func() time.Time
	Logger *slog.Logger
}

// WindowSize is the HTTP/2 flow-control window of peer connections (and
// of the node's server, see cmd/levee): 1 MiB holds thousands of batches.
const WindowSize = 1 << 20

// Router implements engine.Buckets across the cluster.
type Router struct {
	cfg  Config
	ring atomic.Pointer[ring.Ring]

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	peers map[string]*peerConn

	// handoffMu serialises hand-offs. A graceful leave starts two: the
	// membership publishes the ring without this node (SetRing hands off
	// in the background) just before Leave hands off itself. Leave must
	// not return while the background one is still sending, or Close
	// cancels it and the buckets it carries are lost.
	handoffMu sync.Mutex

	hot   hotKeys
	stats Stats
}

// Stats counts the router's work, for metrics and tests.
type Stats struct {
	Forwarded   atomic.Uint64 // operations sent to owners
	Batches     atomic.Uint64 // RPCs carrying them
	Fallbacks   atomic.Uint64 // operations decided by their fallback
	HandedOff   atomic.Uint64 // buckets sent to new owners
	BatchErrors atomic.Uint64 // batches that failed
	Leases      atomic.Uint64 // lease requests sent
	Leased      atomic.Uint64 // tokens granted by leases
	Local       atomic.Uint64 // remote-owned operations decided here from a lease or cached refusal
}

// NewRouter returns a Router. Until SetRing is called it decides everything
// locally.
func NewRouter(cfg Config) *Router {
	if cfg.BatchWindow <= 0 {
		cfg.BatchWindow = 500 * time.Microsecond
	}
	if cfg.BatchMax <= 0 {
		cfg.BatchMax = 512
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 100 * time.Millisecond
	}
	if cfg.BreakerFailures <= 0 {
		cfg.BreakerFailures = 3
	}
	if cfg.BreakerCooldown <= 0 {
		cfg.BreakerCooldown = time.Second
	}
	if cfg.HotThreshold == 0 {
		cfg.HotThreshold = 64
	}
	if cfg.LeasePeriod <= 0 {
		cfg.LeasePeriod = 100 * time.Millisecond
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Creds == nil {
		cfg.Creds = insecure.NewCredentials()
	}
	if cfg.Dial == nil {
		cfg.Dial = func(addr string) (*grpc.ClientConn, error) {
			return grpc.NewClient(addr, grpc.WithTransportCredentials(cfg.Creds),
				// Fixed flow-control windows turn off gRPC's bandwidth
				// estimation, which answers data with a ping: for small
				// batches that was a write, a read and a wake-up more per
				// batch on both nodes.
				grpc.WithInitialWindowSize(WindowSize), grpc.WithInitialConnWindowSize(WindowSize))
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Router{cfg: cfg, ctx: ctx, cancel: cancel, peers: make(map[string]*peerConn)}
}

// Stats returns the router's counters.
func (r *Router) Stats() *Stats { return &r.stats }

// Ring returns the ring in use (nil before the first SetRing).
func (r *Router) Ring() *ring.Ring { return r.ring.Load() }

// SetRing switches to a new ring, closes connections to members that left,
// and hands the buckets whose owner changed to their new owners in the
// background.
func (r *Router) SetRing(rg *ring.Ring) {
	old := r.ring.Swap(rg)
	r.mu.Lock()
	for id, p := range r.peers {
		if !rg.Contains(id) {
			delete(r.peers, id)
			p.close()
		}
	}
	r.mu.Unlock()
	if old == nil || old.Equal(rg) {
		return
	}
	r.wg.Go(func() {
		ctx, cancel := context.WithTimeout(r.ctx, 10*time.Second)
		defer cancel()
		if err := r.handoff(ctx, rg); err != nil {
			r.cfg.Logger.Warn("bucket hand-off incomplete", "err", err)
		}
	})
}

// Leave hands every bucket this node holds to its owner in the ring without
// this node. A node leaving gracefully calls it after deregistering and
// before it stops serving.
func (r *Router) Leave(ctx context.Context) error {
	rg := r.ring.Load()
	if rg == nil {
		return nil
	}
	var rest []ring.Member
	for _, m := range rg.Members() {
		if m.ID != r.cfg.Self.ID {
			rest = append(rest, m)
		}
	}
	if len(rest) == 0 {
		return nil
	}
	next := ring.New(rest)
	r.ring.Store(next)
	return r.handoff(ctx, next)
}

// Close stops the router: pending batches fail over to their fallbacks and
// connections close.
func (r *Router) Close() {
	r.cancel()
	r.mu.Lock()
	for id, p := range r.peers {
		delete(r.peers, id)
		p.close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// group is the operations of one Take call bound for one peer.
type group struct {
	peer *peerConn
	call *call
}

// Take implements engine.Buckets.
func (r *Router) Take(ctx context.Context, now int64, reqs []limiter.Request, results []limiter.Result) error {
	rg := r.ring.Load()
	if rg == nil || rg.Len() == 0 || rg.Len() == 1 && rg.Contains(r.cfg.Self.ID) {
		r.cfg.Store.TakeBatch(reqs, results, now)
		return nil
	}
	var groups []group
	for i := range reqs {
		owner, _ := rg.Owner(reqs[i].Key)
		if owner.ID == r.cfg.Self.ID {
			results[i] = r.cfg.Store.Do(&reqs[i], now)
			continue
		}
		if res, ok := r.local(&reqs[i], owner, rg.Len(), now); ok {
			r.stats.Local.Add(1)
			results[i] = res
			continue
		}
		g := -1
		for k := range groups {
			if groups[k].peer.member.ID == owner.ID {
				g = k
				break
			}
		}
		if g < 0 {
			groups = append(groups, group{peer: r.peer(owner), call: new(call)})
			g = len(groups) - 1
		}
		c := groups[g].call
		c.reqs = append(c.reqs, reqs[i])
		c.index = append(c.index, i)
	}
	if len(groups) == 0 {
		return nil
	}
	deadline, _ := ctx.Deadline()
	for _, g := range groups {
		g.call.deadline = deadline
		g.call.done = make(chan struct{})
		if !g.peer.breaker.allow(r.cfg.Now()) {
			g.call.err = errBreakerOpen
			close(g.call.done)
			continue
		}
		r.stats.Forwarded.Add(uint64(len(g.call.reqs)))
		g.peer.enqueue(g.call)
	}
	var undecided error
	for _, g := range groups {
		select {
		case <-g.call.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		c := g.call
		if c.err == nil {
			for k, i := range c.index {
				results[i] = c.results[k]
				r.refused(&c.reqs[k], c.results[k], now)
			}
			continue
		}
		for k, i := range c.index {
			if err := r.fallback(&c.reqs[k], &results[i], rg.Len(), now); err != nil {
				undecided = fmt.Errorf("owner %s: %w: %w", g.peer.member.ID, c.err, err)
			}
		}
	}
	return undecided
}

var errBreakerOpen = errors.New("circuit breaker open")

// fallback decides an operation whose owner could not be reached.
func (r *Router) fallback(req *limiter.Request, res *limiter.Result, nodes int, now int64) error {
	r.stats.Fallbacks.Add(1)
	switch req.Fallback {
	case limiter.FallbackOpen:
		*res = limiter.Result{Allowed: true, Remaining: req.Limit.Burst}
		if req.Limit.Burst == 0 {
			res.Remaining = req.Limit.Rate
		}
		return nil
	case limiter.FallbackClosed:
		*res = limiter.Result{RetryAfter: limiter.Never}
		return limiter.ErrUndecided
	}
	if req.Refund {
		// The owner's bucket is out of reach: nothing to give back here.
		*res = limiter.Result{Allowed: true}
		return nil
	}
	share := FairShare(req.Limit, nodes)
	if full, ok := r.ownerFullAt(req.Key, req.Limit, now); ok {
		// The owner last said its bucket was spent until full: start the
		// fair share there too rather than full, or each node would admit
		// a share of a burst the owner already gave out.
		r.cfg.Store.Seed(req.Key, share, full, now)
	}
	reserve := req.Reserve / uint64(max(nodes, 1))
	*res = r.cfg.Store.TakeReserve(req.Key, share, req.Hits, reserve, now)
	return nil
}

// FairShare is the part of l one of nodes nodes may admit on its own while
// the bucket's owner is unreachable: the rate and burst divided by nodes,
// rounded down but at least 1 (unless the limit is 0).
func FairShare(l limiter.Limit, nodes int) limiter.Limit {
	if nodes <= 1 {
		return l
	}
	n := uint64(nodes)
	burst := l.Burst
	if burst == 0 {
		burst = l.Rate
	}
	share := func(x uint64) uint64 {
		if x == 0 {
			return 0
		}
		return max(1, x/n)
	}
	return limiter.Limit{Rate: share(l.Rate), Period: l.Period, Burst: share(burst)}
}

// peer returns the connection to m, creating it on first use.
func (r *Router) peer(m ring.Member) *peerConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rg := r.ring.Load(); rg == nil || !rg.Contains(m.ID) {
		// The member left the ring since the caller looked it up: do not
		// open a connection nothing would close.
		return &peerConn{router: r, member: m, closed: true, dialErr: errors.New("member left the ring")}
	}
	p := r.peers[m.ID]
	if p == nil || p.member.Addr != m.Addr {
		if p != nil {
			p.close()
		}
		p = &peerConn{router: r, member: m, breaker: breaker{threshold: r.cfg.BreakerFailures, cooldown: r.cfg.BreakerCooldown}}
		conn, err := r.cfg.Dial(m.Addr)
		if err != nil {
			p.dialErr = err
		} else {
			p.conn = conn
			p.client = leveev1.NewPeerServiceClient(conn)
		}
		r.peers[m.ID] = p
	}
	return p
}

// handoff sends every bucket this node holds but does not own in rg to its
// owner. Buckets whose owner cannot take them are kept here.
func (r *Router) handoff(ctx context.Context, rg *ring.Ring) error {
	r.handoffMu.Lock()
	defer r.handoffMu.Unlock()
	if rg != r.ring.Load() {
		return nil // a newer ring arrived; its own hand-off moves the buckets
	}
	now := r.cfg.Now().UnixNano()
	owners := make(map[string][]limiter.Bucket)
	moved := r.cfg.Store.Extract(now, func(key uint64) bool {
		o, ok := rg.Owner(key)
		return ok && o.ID != r.cfg.Self.ID
	})
	for _, b := range moved {
		o, _ := rg.Owner(b.Key)
		owners[o.ID] = append(owners[o.ID], b)
	}
	var errs []error
	for id, bs := range owners {
		m, _ := rg.Member(id)
		if err := r.sendHandoff(ctx, r.peer(m), bs); err != nil {
			r.cfg.Store.Adopt(bs, now)
			errs = append(errs, fmt.Errorf("to %s: %w", id, err))
			continue
		}
		r.stats.HandedOff.Add(uint64(len(bs)))
	}
	return errors.Join(errs...)
}

func (r *Router) sendHandoff(ctx context.Context, p *peerConn, bs []limiter.Bucket) error {
	if !p.acquire() {
		return errors.Join(errors.New("peer connection closed"), p.dialErr)
	}
	defer p.release()
	for len(bs) > 0 {
		n := min(len(bs), 10_000)
		req := &leveev1.HandoffRequest{From: r.cfg.Self.ID, Buckets: make([]*leveev1.BucketState, n)}
		for i, b := range bs[:n] {
			req.Buckets[i] = &leveev1.BucketState{Key: b.Key, Tat: b.TAT, FullUnixNanos: b.Full, LimitFingerprint: b.Fingerprint}
		}
		if _, err := p.client.Handoff(ctx, req); err != nil {
			return err
		}
		bs = bs[n:]
	}
	return nil
}

// call is one Take call's operations for one peer, waiting in a batch.
type call struct {
	reqs     []limiter.Request
	index    []int // positions in the caller's request
	deadline time.Time
	results  []limiter.Result
	err      error
	done     chan struct{}
}

// peerConn is the connection and the open batch for one peer.
type peerConn struct {
	router  *Router
	member  ring.Member
	conn    *grpc.ClientConn
	client  leveev1.PeerServiceClient
	dialErr error
	breaker breaker

	mu     sync.Mutex
	batch  []*call
	size   int
	timer  *time.Timer
	closed bool

	// inflight counts batches and calls using conn, so close can wait for
	// them.
	inflight sync.WaitGroup

	// streamMu serialises opening the Take stream and sending on it.
	streamMu sync.Mutex
	stream   *takeStream
	// blocked is the open or send in progress under streamMu, if any: a
	// timeout that finds it stuck for a whole peer timeout cancels it.
	blocked atomic.Pointer[streamOp]

	flightMu sync.Mutex
	flights  map[uint64]*flight // batches sent, by id
	nextID   uint64
}

func (p *peerConn) enqueue(c *call) {
	p.mu.Lock()
	if p.closed || p.client == nil {
		p.mu.Unlock()
		c.err = errors.Join(errors.New("peer connection closed"), p.dialErr)
		close(c.done)
		return
	}
	p.batch = append(p.batch, c)
	p.size += len(c.reqs)
	if p.size >= p.router.cfg.BatchMax {
		b := p.takeBatch()
		p.inflight.Add(1)
		p.mu.Unlock()
		p.router.wg.Go(func() { p.send(b) })
		return
	}
	if len(p.batch) == 1 {
		p.timer = time.AfterFunc(p.router.cfg.BatchWindow, p.flush)
	}
	p.mu.Unlock()
}

// acquire registers a use of the connection outside a batch (a lease or a
// hand-off); it fails once the peer is closed. release ends it.
func (p *peerConn) acquire() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.client == nil {
		return false
	}
	p.inflight.Add(1)
	return true
}

func (p *peerConn) release() { p.inflight.Done() }

// takeBatch detaches the open batch. The caller holds p.mu.
func (p *peerConn) takeBatch() []*call {
	b := p.batch
	p.batch, p.size = nil, 0
	if p.timer != nil {
		p.timer.Stop()
		p.timer = nil
	}
	return b
}

// flush sends the open batch when its window ends.
func (p *peerConn) flush() {
	p.mu.Lock()
	b := p.takeBatch()
	if len(b) == 0 {
		p.mu.Unlock()
		return
	}
	p.inflight.Add(1)
	p.mu.Unlock()
	// The timer already runs flush in a goroutine of its own: sending from
	// it saves starting (and growing the stack of) another per batch. The
	// router's WaitGroup counts it through inflight, which close waits on.
	p.send(b)
}

// send forwards one batch on the peer's Take stream. The answer (or the
// batch's timeout, or the stream's failure) completes it.
func (p *peerConn) send(b []*call) {
	r := p.router
	total := 0
	// The batch lives as long as its most patient caller (so one caller's
	// short deadline does not fail the others), and never past the peer
	// timeout. Each caller stops waiting at its own deadline.
	limit := time.Now().Add(r.cfg.Timeout)
	var latest time.Time
	for _, c := range b {
		total += len(c.reqs)
		if c.deadline.IsZero() || c.deadline.After(limit) {
			latest = limit
		} else if c.deadline.After(latest) {
			latest = c.deadline
		}
	}
	req := &leveev1.TakeRequest{From: r.cfg.Self.ID, Takes: make([]*leveev1.BucketTake, 0, total)}
	takes := make([]leveev1.BucketTake, total)
	limits := make([]leveev1.BucketLimit, total)
	k := 0
	for _, c := range b {
		for _, q := range c.reqs {
			limits[k] = leveev1.BucketLimit{Rate: q.Limit.Rate, PeriodNanos: int64(q.Limit.Period), Burst: q.Limit.Burst}
			takes[k] = leveev1.BucketTake{Key: q.Key, Limit: &limits[k], Hits: q.Hits, Reserve: q.Reserve, Refund: q.Refund}
			req.Takes = append(req.Takes, &takes[k])
			k++
		}
	}
	f := &flight{calls: b, total: total, byCallers: latest.Before(limit)}
	p.flightMu.Lock()
	p.nextID++
	req.Id = p.nextID
	if p.flights == nil {
		p.flights = make(map[uint64]*flight)
	}
	p.flights[req.Id] = f
	id := req.Id
	f.timer = time.AfterFunc(time.Until(latest), func() { p.finish(id, nil, errPeerTimeout) })
	p.flightMu.Unlock()
	r.stats.Batches.Add(1)
	if err := p.transmit(req, f); err != nil {
		p.finish(id, nil, err)
	}
}

var errPeerTimeout = status.Error(codes.DeadlineExceeded, "peer did not answer the batch in time")

// flight is a batch sent and waiting for its answer.
type flight struct {
	calls     []*call
	total     int
	stream    *takeStream // the stream it went out on; under flightMu
	timer     *time.Timer
	byCallers bool // the timeout is the callers' deadline, not the peer timeout
}

// takeStream is an open Take stream to a peer.
type takeStream struct {
	s      grpc.BidiStreamingClient[leveev1.TakeRequest, leveev1.TakeResponse]
	cancel context.CancelFunc
	// heard is when the stream last answered a batch, or opened (unix
	// nanoseconds).
	heard atomic.Int64
}

// silent says ts, on which a batch just timed out, has answered nothing
// for a whole peer timeout: an owner whose handler is wedged on this
// stream (alive, answering other streams, perhaps still accepting data).
// A stream that answers late but answers is not silent.
func (p *peerConn) silent(ts *takeStream) bool {
	return time.Since(time.Unix(0, ts.heard.Load())) >= p.router.cfg.Timeout
}

// streamOp is an open or a send on the Take stream, with the cancel that
// ends it.
type streamOp struct {
	cancel context.CancelFunc
	start  time.Time
}

// watch records an open or a send, which cancel ends, as the operation in
// progress under streamMu until done is called.
func (p *peerConn) watch(cancel context.CancelFunc) (done func()) {
	op := &streamOp{cancel: cancel, start: time.Now()}
	p.blocked.Store(op)
	return func() { p.blocked.CompareAndSwap(op, nil) }
}

// unblock cancels the stream operation in progress if it has been stuck
// for a whole peer timeout. An owner that stopped reading its stream (a
// wedged handler) leaves a send blocked on flow control, and a peer that
// never finishes connecting leaves the open blocked; either holds
// streamMu, and every later batch would queue behind it and fall back for
// as long as the owner's process lives. Cancelling fails the blocked
// operation, which drops the stream; the next batch opens a new one. A
// stream that merely answers late is left alone: its other batches may
// still be answered.
func (p *peerConn) unblock() {
	if op := p.blocked.Load(); op != nil && time.Since(op.start) >= p.router.cfg.Timeout {
		op.cancel()
	}
}

// transmit sends req on the peer's Take stream, opening one if none is
// open.
func (p *peerConn) transmit(req *leveev1.TakeRequest, f *flight) error {
	p.streamMu.Lock()
	defer p.streamMu.Unlock()
	if p.stream == nil {
		ctx, cancel := context.WithCancel(p.router.ctx)
		done := p.watch(cancel)
		s, err := p.client.Take(ctx)
		done()
		if err != nil {
			cancel()
			return err
		}
		ts := &takeStream{s: s, cancel: cancel}
		ts.heard.Store(time.Now().UnixNano())
		p.stream = ts
		p.router.wg.Go(func() { p.receive(ts) })
	}
	ts := p.stream
	p.flightMu.Lock()
	f.stream = ts
	p.flightMu.Unlock()

	done := p.watch(ts.cancel)
	err := ts.s.Send(req)
	done()
	if err != nil {
		// The receiver sees the stream end too and fails what it carried.
		ts.cancel()
		p.stream = nil
		return err
	}
	return nil
}

// receive completes the batches answered on ts until the stream ends, then
// fails the ones still waiting on it.
func (p *peerConn) receive(ts *takeStream) {
	for {
		resp, err := ts.s.Recv()
		if err != nil {
			// Cancelling first unblocks a Send waiting on flow control, so
			// that streamMu is free.
			ts.cancel()
			p.dropStream(ts)
			if errors.Is(err, io.EOF) {
				err = status.Error(codes.Unavailable, "peer closed the stream")
			}
			p.flightMu.Lock()
			var lost []uint64
			for id, f := range p.flights {
				if f.stream == ts {
					lost = append(lost, id)
				}
			}
			p.flightMu.Unlock()
			for _, id := range lost {
				p.finish(id, nil, err)
			}
			return
		}
		ts.heard.Store(time.Now().UnixNano())
		var berr error
		if e := resp.GetError(); e != "" {
			berr = errors.New(e)
		}
		p.finish(resp.GetId(), resp, berr)
	}
}

// dropStream forgets ts, if it is still the open stream, so that the next
// batch opens a new one. The caller has cancelled ts, which unblocks a Send
// holding streamMu.
func (p *peerConn) dropStream(ts *takeStream) {
	p.streamMu.Lock()
	if p.stream == ts {
		p.stream = nil
	}
	p.streamMu.Unlock()
}

// finish completes flight id with the answer or the error, once: the
// answer, the timeout and the stream's failure race, and the first wins.
func (p *peerConn) finish(id uint64, resp *leveev1.TakeResponse, err error) {
	p.flightMu.Lock()
	f := p.flights[id]
	delete(p.flights, id)
	var ts *takeStream
	if f != nil {
		ts = f.stream
	}
	p.flightMu.Unlock()
	if f == nil {
		return
	}
	defer p.inflight.Done()
	f.timer.Stop()
	r := p.router
	if err == errPeerTimeout {
		// Give up a stream that went silent, or a send or open stuck
		// behind one; the next batch opens a new stream.
		if ts != nil && p.silent(ts) {
			ts.cancel()
		}
		p.unblock()
	}
	if err == nil && len(resp.GetResults()) != f.total {
		err = status.Errorf(codes.Internal, "peer answered %d results for %d takes", len(resp.GetResults()), f.total)
	}
	// A batch cut short by its callers' own deadlines says nothing about
	// the peer's health.
	if err == nil || !f.byCallers || err != errPeerTimeout {
		p.breaker.record(err == nil, r.cfg.Now())
	}
	if err != nil {
		r.stats.BatchErrors.Add(1)
		r.cfg.Logger.Debug("forwarded batch failed", "peer", p.member.ID, "takes", f.total, "err", err)
	}
	k := 0
	for _, c := range f.calls {
		if err != nil {
			c.err = err
		} else {
			c.results = make([]limiter.Result, len(c.reqs))
			for j := range c.results {
				w := resp.Results[k+j]
				c.results[j] = limiter.Result{
					Allowed:    w.GetAllowed(),
					Remaining:  w.GetRemaining(),
					ResetAfter: time.Duration(w.GetResetAfterNanos()),
					RetryAfter: time.Duration(w.GetRetryAfterNanos()),
				}
			}
		}
		k += len(c.reqs)
		close(c.done)
	}
}

// close fails the open batch over to its fallbacks and closes the
// connection once no batch can use it.
func (p *peerConn) close() {
	p.mu.Lock()
	p.closed = true
	b := p.takeBatch()
	p.mu.Unlock()
	for _, c := range b {
		c.err = errors.New("peer left the ring")
		close(c.done)
	}
	if p.conn != nil {
		// In-flight sends finish (or time out) on their own; close after.
		p.router.wg.Go(func() {
			p.inflight.Wait()
			p.conn.Close()
		})
	}
}

// breaker is a per-peer circuit breaker: after threshold consecutive
// failures it opens for cooldown, then lets one probe batch through.
type breaker struct {
	threshold int
	cooldown  time.Duration

	mu        sync.Mutex
	failures  int
	openUntil time.Time
	probing   bool
}

func (b *breaker) allow(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.failures < b.threshold {
		return true
	}
	if now.Before(b.openUntil) || b.probing {
		return false
	}
	b.probing = true
	return true
}

func (b *breaker) record(ok bool, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.probing = false
	if ok {
		b.failures = 0
		return
	}
	b.failures++
	if b.failures >= b.threshold {
		b.openUntil = now.Add(b.cooldown)
	}
}
