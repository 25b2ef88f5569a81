package peer

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/ring"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
)

// call is one Take call's operations for one peer, waiting in a batch.
type call struct {
	reqs     []limiter.Request
	index    []int // positions in the caller's request
	deadline time.Time
	results  []limiter.Result
	err      error
	done     chan struct{}

	// The first operation, its position and its result, in place: most
	// calls carry one operation for a peer, and reqs, index and results
	// then need no allocation of their own (see newCall).
	req1    [1]limiter.Request
	index1  [1]int
	result1 [1]limiter.Result

	// leases are the leases the same Take call asks of this peer. Warm
	// ones ride in their check's take; hot ones go out after the batch's
	// checks, and the caller does not wait for them. Their answers go to
	// the hot-key state.
	leases []lease
	// renewals marks the call of warm lease renewals that rides in a
	// batch with no caller waiting for it (see peerConn.renew).
	renewals bool

	callTrace // the caller's span (trace.go)
}

// newCall returns an empty call whose first operation needs no
// allocation.
func newCall() *call {
	c := new(call)
	c.reqs, c.index = c.req1[:0], c.index1[:0]
	return c
}

// lease is a lease request for one key, waiting in a batch.
type lease struct {
	key   uint64
	limit limiter.Limit
	leaseAsk
	take int // a warm lease's check: its position in the call's reqs
}

// abandon completes c with err without sending it, and gives its leases up
// so that their keys may ask again.
func (r *Router) abandon(c *call, err error) {
	for i := range c.leases {
		r.settle(&c.leases[i], leaseGrant{}, err)
	}
	c.err = err
	close(c.done)
}

// peerConn is the connection and the open batch for one peer.
type peerConn struct {
	router  *Router
	member  ring.Member
	conn    *grpc.ClientConn
	client  leveev1.PeerServiceClient
	dialErr error
	breaker breaker

	mu    sync.Mutex
	batch []*call
	size  int
	// renewals is a call of warm lease renewals (looks that ask for
	// tokens) no caller waits for: it rides in the next batch sent to the
	// peer.
	renewals *call
	opened   uint64    // batches opened, so that a leader knows its batch from a later one
	due      time.Time // when the open batch must be sent (wall clock)
	closed   bool
	// last is how many callers the last batch sent carried; with flying,
	// the batches in flight, it chooses the next batch's window.
	last   int
	flying atomic.Int32

	// rtt is a moving average of how long the peer takes to answer a
	// batch (nanoseconds): a batch must leave that long before its most
	// urgent caller must be answered.
	rtt atomic.Int64

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

// lead is a batch a caller opened and sends when its window ends (at),
// unless the batch left earlier.
type lead struct {
	peer  *peerConn
	batch uint64
	at    time.Time
}

// join adds c to the peer's open batch at now (wall clock). No goroutine
// sends batches: callers do, from their own goroutines. join returns the
// batch for the caller to send at once when c completes it (BatchMax) or
// when the batch may not wait (its window is zero, or c must be answered
// before the window would end). Otherwise, when c opened the batch, join
// returns the lead: the caller sends the batch when its window ends,
// unless another caller sent it first. It reports false when the peer is
// closed; c is then abandoned.
func (p *peerConn) join(c *call, now time.Time) (send []*call, l lead, ok bool) {
	p.mu.Lock()
	if p.closed || p.client == nil {
		p.mu.Unlock()
		p.router.abandon(c, errors.Join(errors.New("peer connection closed"), p.dialErr))
		return nil, lead{}, false
	}
	p.batch = append(p.batch, c)
	p.size += len(c.reqs)
	by := p.sendBy(c, now)
	if len(p.batch) == 1 {
		p.opened++
		p.due = now.Add(window(p.router.cfg.BatchWindow, int(p.flying.Load()), p.last))
		if by.Before(p.due) {
			p.due = by
		}
	}
	if p.size >= p.router.cfg.BatchMax || !p.due.After(now) || by.Before(p.due) {
		b := p.takeBatch()
		p.mu.Unlock()
		return b, lead{}, true
	}
	if len(p.batch) == 1 {
		l = lead{peer: p, batch: p.opened, at: p.due}
	}
	p.mu.Unlock()
	return nil, l, true
}

// maxRenewals is the most warm lease renewals that wait for a batch to
// one peer: the renewal that fills them sends them (see renew).
const maxRenewals = 256

// renew queues a renewal of a warm lease, asked by a check its lease
// admitted, to ride in the next batch sent to the peer; no caller waits
// for it. The peer's next forwarded check carries it — at the latest the
// key's own, once its lease runs out, while the peer owns the key (a new
// ring drops the renewals queued: see SetRing) — or, when maxRenewals (or
// BatchMax) are waiting, this caller sends them as a batch of their own
// without waiting for the answer, if the peer's breaker lets a batch go.
//
// rg is the ring the caller found the owner in: a renewal asked under a
// ring SetRing has replaced since is given up, as SetRing gives up those
// queued before it (SetRing stores the ring before it takes p.mu).
func (p *peerConn) renew(rg *ring.Ring, req limiter.Request, ask leaseAsk) {
	l := lease{key: req.Key, limit: req.Limit, leaseAsk: ask}
	p.mu.Lock()
	if p.closed || p.client == nil || p.router.ring.Load() != rg {
		p.mu.Unlock()
		p.router.settle(&l, leaseGrant{}, errRingChanged)
		return
	}
	if p.renewals == nil {
		p.renewals = newCall()
		p.renewals.done = make(chan struct{})
		p.renewals.renewals = true
	}
	c := p.renewals
	l.take = len(c.reqs)
	c.reqs = append(c.reqs, limiter.Request{Key: req.Key, Limit: req.Limit})
	c.index = append(c.index, -1)
	c.leases = append(c.leases, l)
	if len(c.reqs) < min(maxRenewals, p.router.cfg.BatchMax) {
		p.mu.Unlock()
		return
	}
	p.renewals = nil
	if !p.breaker.allow(p.router.cfg.Now()) {
		p.mu.Unlock()
		p.router.abandon(c, errBreakerOpen)
		return
	}
	p.inflight.Add(1)
	// Sent from a goroutine of the router's: this caller was answered
	// from its lease and must not wait for a stream to open. Counted
	// under p.mu, so that Close (which closes p under it first) waits.
	p.router.wg.Add(1)
	p.mu.Unlock()
	go func() {
		defer p.router.wg.Done()
		p.forward([]*call{c})
	}()
}

// dropRenewals fails the renewals waiting for a batch to the peer: their
// keys may have other owners now.
func (p *peerConn) dropRenewals() {
	p.mu.Lock()
	c := p.renewals
	p.renewals = nil
	p.mu.Unlock()
	if c != nil {
		p.router.abandon(c, errRingChanged)
	}
}

var errRingChanged = errors.New("the peer left, or the ring changed, before the lease renewal was sent")

// sendBy is when a batch holding c must leave for c to be answered in
// time: its answer-by time less the peer's usual answer time.
func (p *peerConn) sendBy(c *call, now time.Time) time.Time {
	if c.deadline.IsZero() {
		return now.Add(p.router.cfg.Timeout)
	}
	return now.Add(answerBy(c.deadline, now) - time.Duration(p.rtt.Load()))
}

// flush sends the batch l opened, if it is still open. It runs in the
// leader's goroutine.
func (l lead) flush() {
	p := l.peer
	p.mu.Lock()
	if p.opened != l.batch || len(p.batch) == 0 {
		p.mu.Unlock()
		return
	}
	b := p.takeBatch()
	p.mu.Unlock()
	p.send(b)
}

// acquire registers a use of the connection outside a batch (a hand-off);
// it fails once the peer is closed. release ends it.
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

// takeBatch detaches the open batch and counts it in p.inflight. The
// caller holds p.mu.
func (p *peerConn) takeBatch() []*call {
	b, size := p.batch, p.size
	p.batch, p.size = nil, 0
	if len(b) > 0 {
		p.inflight.Add(1)
		p.last = len(b)
		if r := p.renewals; r != nil && size+len(r.reqs) <= p.router.cfg.BatchMax {
			// First, so that its grants are in place before the callers
			// wake; not a caller, so the next window does not wait for it.
			b = append([]*call{r}, b...)
			p.renewals = nil
		}
	}
	return b
}

// send sends one batch: its checks on the peer's Take stream, then, in a
// goroutine of their own (a key asks at most once per lease period, so
// few batches carry any), its leases. The caller has counted the batch in
// p.inflight.
func (p *peerConn) send(b []*call) {
	var leases []lease
	for _, c := range b {
		for _, l := range c.leases {
			if !l.warm {
				leases = append(leases, l)
			}
		}
	}
	if len(leases) > 0 {
		// The checks' count ends when they are answered, perhaps before
		// the leases are: the leases hold a count of their own.
		p.inflight.Add(1)
	}
	p.forward(b)
	if len(leases) > 0 {
		p.router.wg.Go(func() {
			defer p.inflight.Done()
			p.askLeases(leases)
		})
	}
}

// forward sends a batch's checks on the peer's Take stream. The answer (or
// the batch's timeout, or the stream's failure) completes them.
func (p *peerConn) forward(b []*call) {
	r := p.router
	total := 0
	// The batch lives as long as its most patient caller (so one caller's
	// short deadline does not fail the others), and never past the peer
	// timeout. Each caller stops waiting at its own deadline. Wall clock:
	// this bounds I/O and meets the callers' context deadlines.
	sent := time.Now()
	limit := sent.Add(r.cfg.Timeout)
	var latest time.Time
	for _, c := range b {
		total += len(c.reqs)
		if c.renewals {
			continue // nobody waits for it
		}
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
		for _, l := range c.leases {
			if l.warm {
				takes[k+l.take].Lease, takes[k+l.take].Returned = l.want, l.returned
			}
		}
		for _, q := range c.reqs {
			limits[k] = leveev1.BucketLimit{Rate: q.Limit.Rate, PeriodNanos: int64(q.Limit.Period), Burst: q.Limit.Burst}
			t := &takes[k]
			t.Key, t.Limit, t.Hits, t.Reserve, t.Refund = q.Key, &limits[k], q.Hits, q.Reserve, q.Refund
			req.Takes = append(req.Takes, t)
			k++
		}
	}
	if latest.IsZero() {
		latest = limit // renewals alone
	}
	f := &flight{calls: b, total: total, sent: sent, byCallers: latest.Before(limit)}
	f.flightTrace = r.trace.batch(b, p.member.ID, req)
	p.flightMu.Lock()
	p.nextID++
	req.Id = p.nextID
	if p.flights == nil {
		p.flights = make(map[uint64]*flight)
	}
	p.flights[req.Id] = f
	p.flying.Add(1)
	id := req.Id
	f.timer = time.AfterFunc(time.Until(latest), func() { p.finish(id, nil, errPeerTimeout) })
	p.flightMu.Unlock()
	r.stats.Batches.Add(1)
	if err := p.transmit(req, f); err != nil {
		p.finish(id, nil, err)
	}
}

// askLeases asks the peer for a batch's leases, one call after another under
// one peer timeout, and settles each. The first failure fails the rest
// unsent, like a failed batch, and the batch counts once on the breaker.
// Lease is a unary call, so calls in parallel would each need a goroutine;
// a key asks at most once per lease period, so a batch holds few.
func (p *peerConn) askLeases(ls []lease) {
	r := p.router
	ctx, cancel := context.WithTimeout(r.ctx, r.cfg.Timeout)
	defer cancel()
	ctx, endSpan := r.trace.lease(ctx, p.member.ID, len(ls))
	var err error
	for i := range ls {
		l := &ls[i]
		var g leaseGrant
		if err == nil {
			var resp *leveev1.LeaseResponse
			resp, err = p.client.Lease(ctx, &leveev1.LeaseRequest{
				Key:      l.key,
				Limit:    &leveev1.BucketLimit{Rate: l.limit.Rate, PeriodNanos: int64(l.limit.Period), Burst: l.limit.Burst},
				Tokens:   l.want,
				Returned: l.returned,
				From:     r.cfg.Self.ID,
			})
			g = leaseGrant{
				granted:    resp.GetGranted(),
				remaining:  resp.GetRemaining(),
				resetAfter: time.Duration(resp.GetResetAfterNanos()),
				retryAfter: time.Duration(resp.GetRetryAfterNanos()),
			}
		}
		r.settle(l, g, err)
	}
	p.breaker.record(err == nil, r.cfg.Now())
	endSpan(err)
	if err != nil {
		r.cfg.Logger.Debug("lease request failed", "peer", p.member.ID, "leases", len(ls), "err", err)
	}
}

var errPeerTimeout = status.Error(codes.DeadlineExceeded, "peer did not answer the batch in time")

// flight is a batch sent and waiting for its answer.
type flight struct {
	calls     []*call
	total     int
	stream    *takeStream // the stream it went out on; under flightMu
	timer     *time.Timer
	sent      time.Time
	byCallers bool // the timeout is the callers' deadline, not the peer timeout

	flightTrace // the batch's span (trace.go)
}

// takeStream is an open Take stream to a peer.
type takeStream struct {
	s      grpc.BidiStreamingClient[leveev1.TakeRequest, leveev1.TakeResponse]
	ctx    context.Context
	cancel context.CancelFunc
	// heard is when the stream last answered a batch, or opened (unix
	// nanoseconds).
	heard atomic.Int64
}

// silent says ts, on which a batch just timed out, has answered nothing
// for timeout up to now: an owner whose handler is wedged on this stream
// (alive, answering other streams, perhaps still accepting data). A stream
// that answers late but answers is not silent.
func (ts *takeStream) silent(now time.Time, timeout time.Duration) bool {
	return now.Sub(time.Unix(0, ts.heard.Load())) >= timeout
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

// unblock cancels the stream operation in progress if at now it has been
// stuck for a whole peer timeout. An owner that stopped reading its stream (a
// wedged handler) leaves a send blocked on flow control, and a peer that
// never finishes connecting leaves the open blocked; either holds
// streamMu, and every later batch would queue behind it and fall back for
// as long as the owner's process lives. Cancelling fails the blocked
// operation, which drops the stream; the next batch opens a new one. A
// stream that merely answers late is left alone: its other batches may
// still be answered.
func (p *peerConn) unblock(now time.Time) {
	if op := p.blocked.Load(); op != nil && now.Sub(op.start) >= p.router.cfg.Timeout {
		op.cancel()
	}
}

// transmit sends req on the peer's Take stream, opening one if none is
// open.
func (p *peerConn) transmit(req *leveev1.TakeRequest, f *flight) error {
	p.streamMu.Lock()
	defer p.streamMu.Unlock()
	if p.stream != nil && p.stream.ctx.Err() != nil {
		// Cancelled (a timeout gave it up) and not yet dropped by its
		// receiver: a batch sent on it would be lost.
		p.stream = nil
	}
	if p.stream == nil {
		ctx, cancel := context.WithCancel(p.router.ctx)
		done := p.watch(cancel)
		s, err := p.client.Take(ctx)
		done()
		if err != nil {
			cancel()
			return err
		}
		ts := &takeStream{s: s, ctx: ctx, cancel: cancel}
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
	p.flying.Add(-1)
	defer p.inflight.Done()
	f.timer.Stop()
	r := p.router
	if err == errPeerTimeout {
		// Give up a stream that went silent, or a send or open stuck
		// behind one; the next batch opens a new stream. The watchdog
		// judges I/O progress: wall clock.
		wall := time.Now()
		if ts != nil && ts.silent(wall, r.cfg.Timeout) {
			ts.cancel()
		}
		p.unblock(wall)
	}
	if err == nil && len(resp.GetResults()) != f.total {
		err = status.Errorf(codes.Internal, "peer answered %d results for %d takes", len(resp.GetResults()), f.total)
	}
	f.end(err)
	if err == nil {
		// A moving average over about 8 batches; a lost update between
		// two batches answered at once is harmless.
		rtt := p.rtt.Load()
		p.rtt.Store(rtt + (int64(time.Since(f.sent))-rtt)/8)
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
			c.results = c.result1[:0]
			if len(c.reqs) > len(c.result1) {
				c.results = make([]limiter.Result, 0, len(c.reqs))
			}
			c.results = c.results[:len(c.reqs)]
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
		r.settleWarm(c, resp.GetResults()[min(k, len(resp.GetResults())):], err)
		k += len(c.reqs)
		close(c.done)
	}
}

// settleWarm settles the warm leases of c, whose checks' answers are
// results (or which failed with err). A failed batch's returned tokens are
// lost to this node, as a failed hot lease's are: whether the owner took
// them back is unknown, and keeping them could admit them twice.
func (r *Router) settleWarm(c *call, results []*leveev1.BucketResult, err error) {
	for i := range c.leases {
		l := &c.leases[i]
		if !l.warm {
			continue
		}
		if err != nil {
			r.settle(l, leaseGrant{}, err)
			continue
		}
		w := results[l.take]
		r.settle(l, leaseGrant{
			granted:    w.GetLeased(),
			remaining:  w.GetRemaining() - min(w.GetLeased(), w.GetRemaining()),
			resetAfter: time.Duration(w.GetResetAfterNanos()),
		}, nil)
	}
}

// close fails the open batch over to its fallbacks and closes the
// connection once no batch can use it.
func (p *peerConn) close() {
	p.mu.Lock()
	p.closed = true
	b := p.batch
	p.batch, p.size = nil, 0
	if p.renewals != nil {
		b = append(b, p.renewals)
		p.renewals = nil
	}
	p.mu.Unlock()
	for _, c := range b {
		p.router.abandon(c, errors.New("peer left the ring"))
	}
	if p.conn != nil {
		// In-flight sends finish (or time out) on their own; close after.
		p.router.wg.Go(func() {
			p.inflight.Wait()
			p.conn.Close()
		})
	}
}
