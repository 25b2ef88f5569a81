package peer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/levee-dev/levee/limiter"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
)

// Server answers other nodes' forwarded checks and hand-offs from this
// node's store. It decides whatever it is sent, without consulting its own
// ring: while membership changes propagate two nodes may briefly disagree on
// an owner, and deciding here (rather than forwarding again) rules out loops.
type Server struct {
	leveev1.UnimplementedPeerServiceServer
	store *limiter.Store
	now   func() time.Time
	trace *tracer      // nil: no spans (WithTracing)
	quota QuotaHandler // nil: Quota is unimplemented (WithQuota)

	drained   chan struct{} // closed by Drain
	drainOnce sync.Once
}

// NewServer returns a Server on store; now is the clock (nil: time.Now).
func NewServer(store *limiter.Store, now func() time.Time) *Server {
	if now == nil {
		now = time.Now
	}
	return &Server{store: store, now: now, drained: make(chan struct{})}
}

// Drain ends every Take stream, open or opened later, with Unavailable once
// the batch it is deciding (if any) is answered. A node calls it when it has
// left the ring and handed its buckets off, before its gRPC server's
// GracefulStop: peers keep a Take stream open for as long as their rings
// name this node, so while they have not seen it leave (etcd unreachable)
// GracefulStop would wait for them until its grace ran out. A peer whose
// stream ends decides its pending batches by their fallback and dials again
// for the next.
func (s *Server) Drain() { s.drainOnce.Do(func() { close(s.drained) }) }

// MaxBatch is the most takes or buckets one peer call may carry.
const MaxBatch = 100_000

// Take implements leveev1.PeerServiceServer: it answers each batch on the
// stream as it reads it, in the stream's goroutine (a batch costs
// microseconds and never blocks). An invalid batch is answered with its
// error; the stream goes on. A reader goroutine receives, so that Drain can
// end a stream that waits for its next batch; it ends with the stream.
func (s *Server) Take(stream leveev1.PeerService_TakeServer) error {
	reqs := make(chan *leveev1.TakeRequest)
	errc := make(chan error, 1)
	ctx := stream.Context()
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				errc <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				errc <- ctx.Err()
				return
			}
		}
	}()
	for {
		var req *leveev1.TakeRequest
		select {
		case <-s.drained:
			return status.Error(codes.Unavailable, "peer: this node is leaving the cluster")
		case err := <-errc:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case req = <-reqs:
		}
		span := s.trace.take(req.GetTraceparent(), req.GetFrom(), len(req.GetTakes()))
		resp, err := s.take(req)
		endTake(span, err)
		if err != nil {
			resp = &leveev1.TakeResponse{Error: err.Error()}
		}
		resp.Id = req.GetId()
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// take decides one batch.
func (s *Server) take(req *leveev1.TakeRequest) (*leveev1.TakeResponse, error) {
	if len(req.Takes) > MaxBatch {
		return nil, invalid("takes", fmt.Sprintf("%d takes, at most %d allowed", len(req.Takes), MaxBatch))
	}
	now := s.now().UnixNano()
	results := make([]leveev1.BucketResult, len(req.Takes))
	resp := &leveev1.TakeResponse{Results: make([]*leveev1.BucketResult, len(req.Takes))}
	for i, t := range req.Takes {
		l := limitFromWire(t.GetLimit())
		if !l.Valid() {
			return nil, invalid(fmt.Sprintf("takes[%d].limit", i), "invalid limit")
		}
		if n := t.GetReturned(); n > 0 {
			s.store.Give(t.GetKey(), l, n, now)
		}
		r := s.store.Do(&limiter.Request{Key: t.GetKey(), Limit: l, Hits: t.GetHits(), Reserve: t.GetReserve(), Refund: t.GetRefund()}, now)
		results[i] = leveev1.BucketResult{
			Allowed:         r.Allowed,
			Remaining:       r.Remaining,
			ResetAfterNanos: int64(r.ResetAfter),
			RetryAfterNanos: int64(r.RetryAfter),
		}
		if want := t.GetLease(); want > 0 && r.Allowed && !t.GetRefund() && t.GetReserve() == 0 {
			results[i].Leased, results[i].ResetAfterNanos = s.warmLease(t.GetKey(), l, want, r.Remaining, r.ResetAfter, now)
		}
		resp.Results[i] = &results[i]
	}
	return resp, nil
}

// warmLease takes up to want tokens from the bucket of key, which holds
// remaining, for a warm lease, keeping at least half its capacity in the
// bucket. It returns how many it took and when the bucket is full again
// (reset, the check's, when it took none). A bucket far from its limit
// loses nothing to tokens parked on other nodes: whoever comes next still
// finds half of it. One near its limit is left to forwarded checks (and,
// if it is hot, to the hot-key leases).
func (s *Server) warmLease(key uint64, l limiter.Limit, want, remaining uint64, reset time.Duration, now int64) (uint64, int64) {
	floor := l.Capacity() / 2
	if remaining <= floor {
		return 0, int64(reset)
	}
	grant := min(want, remaining-floor)
	r := s.store.Do(&limiter.Request{Key: key, Limit: l, Hits: grant, Reserve: floor}, now)
	if !r.Allowed {
		return 0, int64(reset) // lost a race with a concurrent take
	}
	return grant, int64(r.ResetAfter)
}

// Handoff implements leveev1.PeerServiceServer.
func (s *Server) Handoff(_ context.Context, req *leveev1.HandoffRequest) (*leveev1.HandoffResponse, error) {
	if len(req.Buckets) > MaxBatch {
		return nil, invalid("buckets", fmt.Sprintf("%d buckets, at most %d allowed", len(req.Buckets), MaxBatch))
	}
	bs := make([]limiter.Bucket, len(req.Buckets))
	for i, b := range req.Buckets {
		bs[i] = limiter.Bucket{Key: b.GetKey(), TAT: b.GetTat(), Full: b.GetFullUnixNanos(), Fingerprint: b.GetLimitFingerprint()}
	}
	n := s.store.Adopt(bs, s.now().UnixNano())
	return &leveev1.HandoffResponse{Adopted: uint32(n)}, nil
}

func limitFromWire(l *leveev1.BucketLimit) limiter.Limit {
	return limiter.Limit{Rate: l.GetRate(), Period: time.Duration(l.GetPeriodNanos()), Burst: l.GetBurst()}
}

func invalid(field, reason string) error {
	return status.Error(codes.InvalidArgument, field+": "+reason)
}

// Lease implements leveev1.PeerServiceServer: it takes as many of the
// tokens asked for as the bucket holds, after taking back the caller's
// unused ones.
func (s *Server) Lease(_ context.Context, req *leveev1.LeaseRequest) (*leveev1.LeaseResponse, error) {
	l := limitFromWire(req.GetLimit())
	if !l.Valid() {
		return nil, invalid("limit", "invalid limit")
	}
	now := s.now().UnixNano()
	if n := req.GetReturned(); n > 0 {
		s.store.Give(req.GetKey(), l, n, now)
	}
	look := s.store.Take(req.GetKey(), l, 0, now)
	if look.Remaining == 0 {
		// Nothing left, so this take is normally refused and changes
		// nothing; it tells when the next token comes.
		next := s.store.Take(req.GetKey(), l, 1, now)
		if next.Allowed { // a token was given back meanwhile: it is granted
			return &leveev1.LeaseResponse{Granted: 1, Remaining: next.Remaining, ResetAfterNanos: int64(next.ResetAfter)}, nil
		}
		return &leveev1.LeaseResponse{ResetAfterNanos: int64(next.ResetAfter), RetryAfterNanos: int64(next.RetryAfter)}, nil
	}
	grant := min(req.GetTokens(), look.Remaining)
	if grant == 0 {
		return &leveev1.LeaseResponse{Remaining: look.Remaining, ResetAfterNanos: int64(look.ResetAfter)}, nil
	}
	r := s.store.Take(req.GetKey(), l, grant, now)
	if !r.Allowed { // lost a race with a concurrent take
		return &leveev1.LeaseResponse{Remaining: r.Remaining, ResetAfterNanos: int64(r.ResetAfter)}, nil
	}
	return &leveev1.LeaseResponse{Granted: grant, Remaining: r.Remaining, ResetAfterNanos: int64(r.ResetAfter)}, nil
}
