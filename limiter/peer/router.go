package peer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/backoff"
	"github.com/levee-dev/levee/limiter/ring"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
)

// Config configures a Router.
type Config struct {
	// Self is this node; operations it owns are decided on Store, and
	// Store's buckets are handed off when their owner changes. Fallbacks
	// decide on a store of the router's own (see Router.FallbackStore),
	// which whoever sweeps Store must sweep too.
	Self  ring.Member
	Store *limiter.Store
	// Dial opens a connection to a peer (nil: gRPC with Creds).
	Dial func(addr string) (*grpc.ClientConn, error)
	// Creds secure the connections the default Dial opens (nil:
	// plaintext), e.g. TLS with a client certificate the peers' servers
	// verify.
	Creds credentials.TransportCredentials
	// BatchWindow is the longest a batch waits for more operations
	// (default 500 µs): it waits only when it has company, and never past
	// what its callers' deadlines allow (see the package doc).
	BatchWindow time.Duration
	// BatchMax is the most operations in one batch (default 512).
	BatchMax int
	// Timeout bounds one forwarded batch and its lease requests (default
	// 100 ms); callers' deadlines shorten a batch.
	Timeout time.Duration
	// BreakerFailures consecutive failed batches open a peer's breaker
	// (default 3); BreakerCooldown is how long it stays open (default 1 s).
	BreakerFailures int
	BreakerCooldown time.Duration
	// HotThreshold is how many tokens one key must be forwarded within two
	// lease periods before this node leases tokens for it (default 64;
	// negative turns hot-key handling off). LeasePeriod is how long a lease
	// lasts (default 100 ms). See hotKeys.
	HotThreshold int
	LeasePeriod  time.Duration
	// WarmLease is how long a warm lease lasts: tokens of a key far from
	// its limit that a forwarded check asks for in the same take, to admit
	// its next checks here (0: no warm leases; off with hot-key handling
	// too). See hotKeys.
	WarmLease time.Duration
	// HandoffRetryMin and HandoffRetryMax bound the wait before a failed
	// hand-off is tried again (defaults 200 ms and 5 s): it starts near
	// the first and doubles on each failure up to the second, half of it
	// random (Rand). See SetRing.
	HandoffRetryMin, HandoffRetryMax time.Duration
	// Rand returns a random number in [0, 1) for the retries' jitter (nil:
	// math/rand/v2's Float64).
	Rand func() float64
	// Now is the clock of every decision (nil: time.Now); see the package
	// doc for the timers that read the wall clock.
	Now    func() time.Time
	Logger *slog.Logger
	// TracerProvider traces batches, fallbacks, leases and hand-offs (nil:
	// no spans; see trace.go). DialOptions are added to the default Dial's,
	// e.g. a gRPC stats handler.
	TracerProvider trace.TracerProvider
	DialOptions    []grpc.DialOption
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
	// handoffGen counts the hand-offs SetRing started: a retrying one
	// whose number is no longer the last gives way to the newer, even when
	// the ring came back to one Equal to its own (a node that bounced).
	handoffGen atomic.Uint64

	// fallbacks holds the fair-share buckets FallbackLocal decides on,
	// apart from Store's owner buckets under the same keys. A bucket read
	// under a limit other than its own is converted, rounding the missing
	// time down: sharing one key space, a fair share (say 1/hour) reading
	// a drained owner bucket (5/hour) found it full, and the owner later
	// read or adopted a fallback take as 0 to 4 of its tokens, depending
	// on the minute. Kept apart, owner buckets stay exact, and fallback
	// buckets are never handed off: they are this node's share only.
	fallbacks *limiter.Store

	hot   hotKeys
	stats Stats
	trace *tracer // nil: no spans
}

// Stats counts the router's work, for metrics and tests.
type Stats struct {
	Forwarded   atomic.Uint64 // operations sent to owners
	Batches     atomic.Uint64 // RPCs carrying them
	Fallbacks   atomic.Uint64 // operations decided by their fallback
	HandedOff   atomic.Uint64 // buckets sent to new owners
	BatchErrors atomic.Uint64 // batches that failed
	Leases      atomic.Uint64 // leases asked for (sent unless the owner is out of reach)
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
	if cfg.HandoffRetryMin <= 0 {
		cfg.HandoffRetryMin = 200 * time.Millisecond
	}
	if cfg.HandoffRetryMax <= 0 {
		cfg.HandoffRetryMax = max(5*time.Second, cfg.HandoffRetryMin)
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Float64
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
			return grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(cfg.Creds),
				// Fixed flow-control windows turn off gRPC's bandwidth
				// estimation, which answers data with a ping: for small
				// batches that was a write, a read and a wake-up more per
				// batch on both nodes.
				grpc.WithInitialWindowSize(WindowSize), grpc.WithInitialConnWindowSize(WindowSize)}, cfg.DialOptions...)...)
		}
	}
	// Bounded like Store: while an owner is unreachable this node may
	// hold a fallback bucket for every key it would forward to it.
	maxKeys := 1
	if cfg.Store != nil {
		maxKeys = cfg.Store.MaxKeys()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Router{cfg: cfg, ctx: ctx, cancel: cancel, peers: make(map[string]*peerConn), fallbacks: limiter.NewStore(maxKeys), trace: newTracer(cfg.TracerProvider)}
}

// Stats returns the router's counters.
func (r *Router) Stats() *Stats { return &r.stats }

// FallbackStore returns the store of the fair-share buckets fallbacks
// decide on, for its owner to sweep and count like Config.Store. Nothing
// else should take from it or adopt into it: its buckets are this node's
// share of keys other nodes own, in the share's limit.
func (r *Router) FallbackStore() *limiter.Store { return r.fallbacks }

// Ring returns the ring in use (nil before the first SetRing).
func (r *Router) Ring() *ring.Ring { return r.ring.Load() }

// SetRing switches to a new ring, closes connections to members that left,
// and hands the buckets whose owner changed to their new owners in the
// background. A hand-off that fails (the new owner is not reachable yet:
// after a partition heals, etcd may tell the others a node is back before
// their connections to it work) is tried again, with backoff, until it
// succeeds, a newer ring replaces rg, or the router closes; meanwhile the
// buckets stay here.
func (r *Router) SetRing(rg *ring.Ring) {
	old := r.ring.Swap(rg)
	changed := old != nil && !old.Equal(rg)
	var stay []*peerConn
	r.mu.Lock()
	for id, p := range r.peers {
		if !rg.Contains(id) {
			delete(r.peers, id)
			p.close()
		} else if changed {
			stay = append(stay, p)
		}
	}
	r.mu.Unlock()
	for _, p := range stay {
		// A renewal queued for a key that moved would be granted from
		// a bucket its old owner no longer holds.
		p.dropRenewals()
	}
	if !changed {
		return
	}
	gen := r.handoffGen.Add(1)
	r.wg.Go(func() { r.handoffUntilDone(rg, gen) })
}

// errSuperseded is why a hand-off did not run: a newer ring arrived, and
// its own hand-off moves the buckets.
var errSuperseded = errors.New("superseded by a newer ring")

// handoffTimeout bounds one attempt of a hand-off.
const handoffTimeout = 10 * time.Second

// handoffUntilDone hands off the buckets rg moves, trying again after
// failures (see SetRing), until a newer hand-off than gen starts. It runs
// on the router's wait group, so Close waits for it.
func (r *Router) handoffUntilDone(rg *ring.Ring, gen uint64) {
	b := backoff.Backoff{Min: r.cfg.HandoffRetryMin, Max: r.cfg.HandoffRetryMax}
	for {
		err := errSuperseded
		if r.handoffGen.Load() == gen {
			ctx, cancel := context.WithTimeout(r.ctx, handoffTimeout)
			err = r.handoff(ctx, rg)
			cancel()
		}
		if errors.Is(err, errSuperseded) {
			if b.Failing() {
				r.cfg.Logger.Info("bucket hand-off left to a newer ring's", "failed_attempts", b.Attempts())
			}
			return
		}
		if err == nil {
			if b.Failing() {
				r.cfg.Logger.Info("bucket hand-off complete after retrying", "failed_attempts", b.Attempts())
			}
			return
		}
		if r.ctx.Err() != nil {
			return // closing
		}
		d := b.Next(r.cfg.Rand())
		level := slog.LevelWarn
		if b.Attempts() > 1 {
			level = slog.LevelDebug // already reported
		}
		r.cfg.Logger.Log(r.ctx, level, "bucket hand-off incomplete; retrying", "err", err, "retry_in", d)
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-r.ctx.Done():
			t.Stop()
			return
		}
	}
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
	if err := r.handoff(ctx, next); !errors.Is(err, errSuperseded) {
		return err
	}
	return nil // a newer ring's own hand-off moves the buckets
}

// Close stops the router: pending batches fail over to their fallbacks,
// hand-offs still being tried give up (their buckets stay in the Store) and
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
	// Room for the usual number of owners a call reaches, on the stack.
	var groupBuf [4]group
	groups := groupBuf[:0]
	for i := range reqs {
		owner, _ := rg.Owner(reqs[i].Key)
		if owner.ID == r.cfg.Self.ID {
			results[i] = r.cfg.Store.Do(&reqs[i], now)
			continue
		}
		res, ok, ask := r.local(&reqs[i], rg.Len(), now)
		if ok {
			r.stats.Local.Add(1)
			results[i] = res
			if ask.want > 0 {
				r.peer(owner).renew(rg, reqs[i], ask)
			}
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
			groups = append(groups, group{peer: r.peer(owner), call: newCall()})
			g = len(groups) - 1
		}
		c := groups[g].call
		c.reqs = append(c.reqs, reqs[i])
		c.index = append(c.index, i)
		if ask.want > 0 {
			// The lease travels with the check that asked for it: a warm
			// one in its take, a hot one after the batch.
			c.leases = append(c.leases, lease{key: reqs[i].Key, limit: reqs[i].Limit, leaseAsk: ask, take: len(c.reqs) - 1})
		}
	}
	if len(groups) == 0 {
		return nil
	}
	deadline, _ := ctx.Deadline()
	wall := time.Now() // batch windows and deadlines bound I/O: wall clock
	var leads []lead
	for _, g := range groups {
		c := g.call
		c.deadline = deadline
		c.callTrace = r.trace.callerOf(ctx)
		c.done = make(chan struct{})
		if !deadline.IsZero() && answerBy(deadline, wall) < max(time.Duration(g.peer.rtt.Load()), minRTT) {
			// No answer could come back in time: decided by the
			// fallback now, at no cost to the owner. (Before the
			// breaker, whose probe must be sent once allowed.)
			r.abandon(c, errAnswerBy)
			continue
		}
		if !g.peer.breaker.allow(r.cfg.Now()) {
			r.abandon(c, errBreakerOpen)
			continue
		}
		r.stats.Forwarded.Add(uint64(len(c.reqs)))
		b, l, ok := g.peer.join(c, wall)
		if !ok {
			continue
		}
		if b != nil {
			g.peer.send(b)
		}
		if l.peer != nil {
			leads = append(leads, l)
		}
	}
	// This caller opened the batches in leads: it sends them when their
	// window ends, or when it stops waiting, whichever comes first.
	var flush <-chan time.Time
	if len(leads) > 0 {
		at := leads[0].at
		for _, l := range leads[1:] {
			if l.at.Before(at) {
				at = l.at
			}
		}
		t := time.NewTimer(at.Sub(wall))
		defer t.Stop()
		flush = t.C
		defer func() {
			if flush != nil {
				for _, l := range leads {
					l.flush()
				}
			}
		}()
	}
	// A caller with a deadline gets an answer before it: operations whose
	// owner has not answered by then are decided by their fallback, the
	// rule's failure mode, rather than left to expire. (A caller woken
	// late, past the deadline itself, is answered the same way.)
	var late <-chan time.Time
	if !deadline.IsZero() {
		t := time.NewTimer(answerBy(deadline, wall))
		defer t.Stop()
		late = t.C
	}
	expired := false
	var undecided error
	for _, g := range groups {
		c := g.call
		err := errAnswerBy
	wait:
		for {
			if expired {
				select {
				case <-c.done:
					err = c.err
				default:
				}
				break wait
			}
			select {
			case <-c.done:
				err = c.err
				break wait
			case <-flush:
				flush = nil
				for _, l := range leads {
					l.flush()
				}
			case <-late:
				expired = true
			case <-ctx.Done():
				if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
					return ctx.Err() // the caller cancelled: nobody waits
				}
				expired = true // late wakes at the same time
			}
		}
		if err == nil {
			for k, i := range c.index {
				results[i] = c.results[k]
				r.refused(&c.reqs[k], c.results[k], now)
			}
			continue
		}
		r.trace.fallback(ctx, g.peer.member.ID, len(c.index), err)
		// A call not done is still in its batch: only its requests, which
		// the batch reads too, are read here.
		for k, i := range c.index {
			if ferr := r.fallback(&c.reqs[k], &results[i], rg.Len(), now); ferr != nil {
				undecided = fmt.Errorf("owner %s: %w: %w", g.peer.member.ID, err, ferr)
			}
		}
	}
	return undecided
}

// minRTT is the shortest time a forwarded batch could take to be
// answered, whatever the peer's record: a caller with less time left is
// decided by its fallback without forwarding.
const minRTT = 100 * time.Microsecond

// errAnswerBy is why an operation is decided by its fallback when its
// owner has not answered by the time its caller must be answered.
var errAnswerBy = errors.New("owner did not answer before the caller's deadline")

// answerBy is how long a caller with deadline may wait at now for its
// owners before its operations are decided here: most of the time left,
// keeping a tenth of it, at most 2 ms, to send the answer back.
func answerBy(deadline, now time.Time) time.Duration {
	left := deadline.Sub(now)
	return left - min(left/10, 2*time.Millisecond)
}

var errBreakerOpen = errors.New("circuit breaker open")

// fallback decides an operation whose owner could not be reached.
func (r *Router) fallback(req *limiter.Request, res *limiter.Result, nodes int, now int64) error {
	r.stats.Fallbacks.Add(1)
	switch req.Fallback {
	case limiter.FallbackOpen:
		*res = limiter.Result{Allowed: true, Remaining: req.Limit.Capacity()}
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
	// The owner last said its bucket was spent until full, or this node
	// still holds the owner's bucket (a hand-off to the new owner not
	// through yet): start the fair share there too rather than full, or
	// each node would admit a share of a burst already given out. The
	// owner's bucket itself is only read: it stays exact, to be handed
	// off.
	full, ok := r.ownerFullAt(req.Key, req.Limit, now)
	if held, ok2 := r.cfg.Store.FullAt(req.Key, now); ok2 && (!ok || held > full) {
		full, ok = held, true
	}
	if ok {
		r.fallbacks.Seed(req.Key, share, full, now)
	}
	reserve := req.Reserve / uint64(max(nodes, 1))
	*res = r.fallbacks.TakeReserve(req.Key, share, req.Hits, reserve, now)
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
	share := func(x uint64) uint64 {
		if x == 0 {
			return 0
		}
		return max(1, x/n)
	}
	return limiter.Limit{Rate: share(l.Rate), Period: l.Period, Burst: share(l.Capacity())}
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
	if r.ctx.Err() != nil {
		// Closed (a hand-off still running): Close has closed the
		// connections already, and would not close this one.
		return &peerConn{router: r, member: m, closed: true, dialErr: errors.New("router closed")}
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
// owner. Buckets whose owner cannot take them are kept here. Only Store's
// buckets move: fallback buckets are this node's fair share, which the
// owner does not count (see Router.fallbacks).
func (r *Router) handoff(ctx context.Context, rg *ring.Ring) error {
	r.handoffMu.Lock()
	defer r.handoffMu.Unlock()
	if !rg.Equal(r.ring.Load()) {
		return errSuperseded
	}
	ctx, endSpan := r.trace.handoff(ctx)
	before := r.stats.HandedOff.Load()
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
	err := errors.Join(errs...)
	endSpan(r.stats.HandedOff.Load()-before, err)
	return err
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
