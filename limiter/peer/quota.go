package peer

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/levee-dev/levee/limiter/ring"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
)

// QuotaHandler answers the Quota calls other nodes send to a bucket's
// owner: the quota service's fair share (limiter/rlqs).
type QuotaHandler interface {
	Quota(ctx context.Context, req *leveev1.QuotaRequest) (*leveev1.QuotaResponse, error)
}

// WithQuota makes s answer Quota calls with h; without it they are
// Unimplemented.
func (s *Server) WithQuota(h QuotaHandler) *Server {
	s.quota = h
	return s
}

// Quota implements leveev1.PeerServiceServer.
func (s *Server) Quota(ctx context.Context, req *leveev1.QuotaRequest) (*leveev1.QuotaResponse, error) {
	if s.quota == nil {
		return nil, status.Error(codes.Unimplemented, "this node serves no quota service")
	}
	n := len(req.GetBuckets())
	for _, b := range req.GetBuckets() {
		n += len(b.GetDemands())
	}
	if n > MaxBatch {
		return nil, invalid("buckets", "too many buckets and demands")
	}
	return s.quota.Quota(ctx, req)
}

// Owner returns the owner of key in the ring in use and whether it is this
// node; before the first ring, this node owns everything.
func (r *Router) Owner(key uint64) (m ring.Member, self bool) {
	rg := r.ring.Load()
	if rg == nil {
		return r.cfg.Self, true
	}
	m, ok := rg.Owner(key)
	if !ok {
		return r.cfg.Self, true
	}
	return m, m.ID == r.cfg.Self.ID
}

// Live returns the number of members in the ring (1 before the first).
func (r *Router) Live() int {
	if rg := r.ring.Load(); rg != nil && rg.Len() > 0 {
		return rg.Len()
	}
	return 1
}

// Quota sends req to owner m on its connection. It does not use the
// batches, the breaker or the timeouts of Take: quota calls are few (one
// per owner each second) and bounded by ctx.
func (r *Router) Quota(ctx context.Context, m ring.Member, req *leveev1.QuotaRequest) (*leveev1.QuotaResponse, error) {
	p := r.peer(m)
	if !p.acquire() {
		return nil, errors.Join(errors.New("peer connection closed"), p.dialErr)
	}
	defer p.release()
	return p.client.Quota(ctx, req)
}
