package quotasim

import (
	"context"
	"errors"
	"io"
	"maps"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	rlqsv3 "github.com/envoyproxy/go-control-plane/envoy/service/rate_limit_quota/v3"
)

// envoy is one simulated Envoy: one stream per domain to one node at a
// time, a usage report of every tracked bucket on a fixed timer, the
// filter's bucket state per bucket id, and open-loop demand. Its run
// goroutine is the only one that sends; each stream has a receiving
// goroutine that run waits for before opening the next.
type envoy struct {
	id   int
	fl   *fleet
	rng  *rand.Rand
	node int // index into fl.nodes of the current or next stream

	mu      sync.Mutex
	buckets []*Bucket
	st      *stream // nil: no stream
	broken  bool    // st's receive side ended; replace it at the next send
	expired []expiry
	rec     *envoyRecord
}

// stream is one StreamRateLimitQuotas call.
type stream struct {
	cli    rlqsv3.RateLimitQuotaService_StreamRateLimitQuotasClient
	ctx    context.Context // ended by closeStream or the run's end
	cancel context.CancelFunc
	node   int
	done   chan struct{}
	opened time.Time
	// closing is set before this Envoy ends the stream, whose receiver
	// may then see the server's clean end before the context's.
	closing atomic.Bool
}

// expiry is a time one of the Envoy's buckets spent with an expired
// assignment.
type expiry struct {
	bucket     int
	from, to   time.Time
	serverZero bool // the server sent TTL 0 (a draining node)
}

func (e *envoy) run(ctx context.Context) {
	defer e.closeStream()
	tick := time.NewTicker(e.fl.o.Tick)
	defer tick.Stop()
	report := time.NewTicker(e.fl.o.ReportInterval)
	defer report.Stop()
	last := e.fl.now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			now := e.fl.now()
			e.offer(ctx, last, now)
			last = now
		case <-report.C:
			e.sendReports(ctx, e.fl.now(), -1)
		}
	}
}

// offer draws the requests that arrived in (last, now] and decides them.
func (e *envoy) offer(ctx context.Context, last, now time.Time) {
	dt := now.Sub(last).Seconds()
	if dt <= 0 {
		return
	}
	rate := e.fl.demand(e.id, now.Sub(e.fl.start))
	var firsts []int
	e.mu.Lock()
	for bi, b := range e.buckets {
		n := poisson(e.rng, rate*dt)
		admitted := 0
		for range n {
			ok, first := b.Decide(now)
			if ok {
				admitted++
			}
			if first {
				firsts = append(firsts, bi)
			}
		}
		e.rec.add(bi, now.Sub(e.fl.start), n, admitted)
		e.noteExpiry(bi, now)
	}
	e.mu.Unlock()
	for _, bi := range firsts {
		// A request into a new bucket subscribes it with a report at once.
		e.sendReports(ctx, now, bi)
	}
}

// noteExpiry records the bucket's time with an expired assignment. Called
// with mu held.
func (e *envoy) noteExpiry(bi int, now time.Time) {
	from, zero := e.buckets[bi].ExpiredSince(now)
	if from.IsZero() {
		return
	}
	for i := len(e.expired) - 1; i >= 0; i-- {
		if x := &e.expired[i]; x.bucket == bi && x.from.Equal(from) {
			x.to = now
			return
		}
	}
	e.expired = append(e.expired, expiry{bucket: bi, from: from, to: now, serverZero: zero})
}

// sendReports reports every tracked bucket (only bucket only, if >= 0),
// opening a stream first if there is none. Reports that cannot be sent
// are lost, as in Envoy.
func (e *envoy) sendReports(ctx context.Context, now time.Time, only int) {
	e.mu.Lock()
	msg := &rlqsv3.RateLimitQuotaUsageReports{Domain: e.fl.o.Domain}
	for bi, b := range e.buckets {
		if (only >= 0 && bi != only) || !b.Tracked() {
			continue
		}
		last := b.lastReport
		u := b.Report(now, e.fl.ids[bi])
		if bi == 0 && !last.IsZero() && now.After(last) {
			// The demand the server can measure from this report.
			e.rec.reported(now.Sub(e.fl.start), float64(u.GetNumRequestsAllowed()+u.GetNumRequestsDenied())/now.Sub(last).Seconds())
		}
		msg.BucketQuotaUsages = append(msg.BucketQuotaUsages, u)
	}
	broken := e.broken
	e.mu.Unlock()
	n := len(msg.BucketQuotaUsages)
	if n == 0 || ctx.Err() != nil {
		return // nothing to send, or the run is over
	}
	if broken {
		e.closeStream()
		e.node = (e.node + 1) % len(e.fl.nodes)
	}
	if e.st == nil {
		if err := e.openStream(ctx, now); err != nil {
			if ctx.Err() != nil {
				return
			}
			e.rec.countReports(0, n)
			e.node = (e.node + 1) % len(e.fl.nodes)
			return
		}
	}
	if err := e.st.cli.Send(msg); err != nil {
		if ctx.Err() != nil {
			return
		}
		e.rec.countReports(0, n)
		e.mu.Lock()
		e.broken = true
		e.mu.Unlock()
		return
	}
	e.rec.countReports(n, 0)
}

func (e *envoy) openStream(ctx context.Context, now time.Time) error {
	sctx, cancel := context.WithCancel(ctx)
	cli, err := rlqsv3.NewRateLimitQuotaServiceClient(e.fl.conns[e.node]).StreamRateLimitQuotas(sctx)
	if err != nil {
		cancel()
		e.rec.event(Event{At: now.Sub(e.fl.start), Envoy: e.id, Kind: EventOpenFailed, Node: e.fl.nodes[e.node], Err: err.Error()})
		return err
	}
	st := &stream{cli: cli, ctx: sctx, cancel: cancel, node: e.node, done: make(chan struct{}), opened: now}
	e.mu.Lock()
	e.st, e.broken = st, false
	e.mu.Unlock()
	e.rec.event(Event{At: now.Sub(e.fl.start), Envoy: e.id, Kind: EventOpened, Node: e.fl.nodes[e.node]})
	go e.receive(st)
	return nil
}

// closeStream ends the current stream and waits for its receiver.
func (e *envoy) closeStream() {
	e.mu.Lock()
	st := e.st
	e.st = nil
	e.mu.Unlock()
	if st == nil {
		return
	}
	st.closing.Store(true)
	_ = st.cli.CloseSend()
	st.cancel()
	<-st.done
}

// receive applies the server's actions until the stream ends.
func (e *envoy) receive(st *stream) {
	defer close(st.done)
	for {
		resp, err := st.cli.Recv()
		now := e.fl.now()
		if err != nil {
			if st.closing.Load() || st.ctx.Err() != nil {
				return // closed by this Envoy, or the run ended
			}
			e.mu.Lock()
			if e.st == st {
				e.broken = true
			}
			e.mu.Unlock()
			msg := ""
			if !errors.Is(err, io.EOF) {
				msg = err.Error()
			}
			e.rec.event(Event{At: now.Sub(e.fl.start), Envoy: e.id, Kind: EventBroken, Node: e.fl.nodes[st.node], Err: msg})
			return
		}
		e.apply(now, st, resp)
	}
}

func (e *envoy) apply(now time.Time, st *stream, resp *rlqsv3.RateLimitQuotaResponse) {
	e.mu.Lock()
	defer e.mu.Unlock()
	at := now.Sub(e.fl.start)
	for _, a := range resp.GetBucketAction() {
		bi := e.fl.bucketIndex(a.GetBucketId())
		if bi < 0 || !e.buckets[bi].Tracked() {
			e.rec.fail(FailUnknownBucket)
			continue
		}
		b := e.buckets[bi]
		switch {
		case a.GetQuotaAssignmentAction() != nil:
			qa := a.GetQuotaAssignmentAction()
			e.noteExpiry(bi, now)
			for _, f := range b.Apply(now, qa) {
				e.rec.fail(f)
			}
			rate, live := b.Rate(now)
			e.rec.assigned(Assignment{At: at, Envoy: e.id, Bucket: bi, Rate: rate, Live: live,
				TTL: qa.GetAssignmentTimeToLive().AsDuration(), Node: e.fl.nodes[st.node]})
		case a.GetAbandonAction() != nil:
			b.Abandon()
			e.rec.event(Event{At: at, Envoy: e.id, Kind: EventAbandoned, Node: e.fl.nodes[st.node]})
		default:
			e.rec.fail(FailEmptyAction)
		}
	}
}

// bucketIndex finds the bucket id among the fleet's, -1 if it is none of
// them. Bucket ids are unordered maps: equal maps are the same id.
func (f *fleet) bucketIndex(id *rlqsv3.BucketId) int {
	for i, x := range f.ids {
		if maps.Equal(x.GetBucket(), id.GetBucket()) {
			return i
		}
	}
	return -1
}

// poisson draws from a Poisson distribution of the given mean: Knuth's
// product of uniforms for small means, a rounded normal for large ones.
func poisson(r *rand.Rand, mean float64) int {
	switch {
	case mean <= 0:
		return 0
	case mean < 30:
		l, k, p := math.Exp(-mean), 0, 1.0
		for {
			p *= r.Float64()
			if p <= l {
				return k
			}
			k++
		}
	default:
		return max(0, int(math.Round(mean+math.Sqrt(mean)*r.NormFloat64())))
	}
}
