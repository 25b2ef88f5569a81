package rlqs

import (
	"context"
	"sync"
	"time"

	rlqsv3 "github.com/envoyproxy/go-control-plane/envoy/service/rate_limit_quota/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/peer"
	"github.com/levee-dev/levee/limiter/quota"
	"github.com/levee-dev/levee/limiter/ring"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
	"github.com/levee-dev/levee/shed"
)

// group is this node's clients of one bucket.
type group struct {
	key     uint64
	limit   limiter.Limit
	clients []*client
	demands []quota.Demand
	grant   quota.Grant
	ok      bool
}

// owned is the groups one owner divides.
type owned struct {
	member ring.Member
	self   bool
	groups []*group
}

// Sync forgets idle clients, sends every bucket's demand to its owner,
// applies the grants and queues the assignments that changed. Run calls
// it; tests call it to step the service.
func (s *Server) Sync(ctx context.Context) {
	now := s.cfg.Now()
	owners := s.collect(now)
	var wg sync.WaitGroup
	for _, o := range owners {
		// Owners are asked in parallel: a slow one must not delay the
		// others' shares.
		wg.Go(func() { s.divide(ctx, now, o) })
	}
	wg.Wait()
	threshold := shed.Level(0)
	if s.cfg.Threshold != nil {
		threshold = s.cfg.Threshold(now)
	}
	s.mu.Lock()
	for _, o := range owners {
		for _, g := range o.groups {
			if !g.ok {
				continue
			}
			for i, c := range g.clients {
				if c.kind != kindLimited || c.key != g.key {
					continue // the rules changed meanwhile
				}
				c.granted, c.fill, c.pool, c.tokens = true, g.grant.FillInterval, g.grant.Pool, g.grant.Tokens[i]
			}
		}
	}
	for ss := range s.streams {
		if s.draining {
			break
		}
		for canon, c := range ss.clients {
			s.decide(ss, canon, c, now, threshold)
		}
	}
	s.mu.Unlock()
	s.allocMu.Lock()
	s.alloc.Expire(now)
	s.allocMu.Unlock()
}

// collect forgets idle clients and groups the others by bucket and owner.
func (s *Server) collect(now time.Time) []*owned {
	s.mu.Lock()
	defer s.mu.Unlock()
	groups := make(map[uint64]*group)
	byOwner := make(map[string]*owned)
	var out []*owned
	for ss := range s.streams {
		for canon, c := range ss.clients {
			if now.Sub(c.last) > s.cfg.Idle {
				delete(ss.clients, canon)
				delete(ss.pending, canon)
				continue
			}
			if now.Sub(c.used) > s.cfg.Abandon && !s.draining {
				delete(ss.clients, canon)
				ss.pending[canon] = &rlqsv3.RateLimitQuotaResponse_BucketAction{BucketId: c.bucketID,
					BucketAction: &rlqsv3.RateLimitQuotaResponse_BucketAction_AbandonAction_{AbandonAction: &rlqsv3.RateLimitQuotaResponse_BucketAction_AbandonAction{}}}
				select {
				case ss.wake <- struct{}{}:
				default:
				}
				continue
			}
			if c.kind != kindLimited {
				continue
			}
			g := groups[c.key]
			if g == nil {
				g = &group{key: c.key, limit: c.limit}
				groups[c.key] = g
				m, self := ring.Member{ID: s.cfg.Self}, true
				if s.cfg.Peers != nil {
					m, self = s.cfg.Peers.Owner(c.key)
				}
				o := byOwner[m.ID]
				if o == nil {
					o = &owned{member: m, self: self}
					byOwner[m.ID] = o
					out = append(out, o)
				}
				o.groups = append(o.groups, g)
			}
			g.clients = append(g.clients, c)
			g.demands = append(g.demands, quota.Demand{ID: c.id, Rate: c.meter.Demand(), Noise: c.meter.Noise()})
		}
	}
	return out
}

// divide has o's owner divide its groups' limits: this node's allocator,
// or the owner over the network; when the owner fails, this node divides a
// fair share of each limit among its own clients.
func (s *Server) divide(ctx context.Context, now time.Time, o *owned) {
	if o.self {
		s.allocMu.Lock()
		for _, g := range o.groups {
			g.grant = s.alloc.Report(now, g.key, g.limit, s.cfg.Self, g.demands, nil)
			g.ok = len(g.grant.Tokens) == len(g.clients)
		}
		s.allocMu.Unlock()
		return
	}
	req := &leveev1.QuotaRequest{From: s.cfg.Self, Buckets: make([]*leveev1.QuotaBucket, len(o.groups))}
	for i, g := range o.groups {
		b := &leveev1.QuotaBucket{Key: g.key, Limit: &leveev1.BucketLimit{Rate: g.limit.Rate, PeriodNanos: int64(g.limit.Period), Burst: g.limit.Burst},
			Demands: make([]*leveev1.QuotaDemand, len(g.demands))}
		for j, d := range g.demands {
			b.Demands[j] = &leveev1.QuotaDemand{Id: d.ID}
			if d.Rate != quota.Unknown {
				b.Demands[j].Rate, b.Demands[j].Noise, b.Demands[j].Known = d.Rate, d.Noise, true
			}
		}
		req.Buckets[i] = b
	}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.Sync)
	resp, err := s.cfg.Peers.Quota(cctx, o.member, req)
	cancel()
	if err == nil && len(resp.GetGrants()) != len(o.groups) {
		err = status.Errorf(codes.Internal, "owner answered %d grants for %d buckets", len(resp.GetGrants()), len(o.groups))
	}
	if err != nil {
		s.cfg.Logger.Debug("quota owner unreachable; dividing a fair share locally", "owner", o.member.ID, "err", err)
		s.cfg.Metrics.fallback()
		s.fallback(o.groups)
		return
	}
	for i, g := range o.groups {
		gr := resp.GetGrants()[i]
		if len(gr.GetTokens()) != len(g.clients) {
			s.fallback([]*group{g})
			continue
		}
		g.grant = quota.Grant{FillInterval: time.Duration(gr.GetFillIntervalNanos()), Pool: gr.GetPool(), Tokens: gr.GetTokens()}
		g.ok = g.grant.FillInterval >= time.Second && g.grant.FillInterval%time.Second == 0
	}
}

// fallback divides among each group's clients the share of its limit one
// node has when the owner cannot be asked: the limit over the live nodes.
func (s *Server) fallback(gs []*group) {
	live := 1
	if s.cfg.Peers != nil {
		live = s.cfg.Peers.Live()
	}
	var div quota.Divider
	for _, g := range gs {
		l := peer.FairShare(g.limit, live)
		fill, pool := quota.FillInterval(l)
		ds, noise := make([]float64, len(g.demands)), make([]float64, len(g.demands))
		for i, d := range g.demands {
			ds[i], noise[i] = d.Rate, d.Noise
		}
		g.grant = quota.Grant{FillInterval: fill, Pool: pool, Tokens: div.Divide(pool, fill, ds, noise, nil)}
		g.ok = true
	}
}

// Quota implements peer.QuotaHandler: this node owns the buckets and
// divides their limits among the clients of every node that reports them.
func (s *Server) Quota(_ context.Context, req *leveev1.QuotaRequest) (*leveev1.QuotaResponse, error) {
	from := req.GetFrom()
	if from == "" {
		return nil, status.Error(codes.InvalidArgument, "from: must name the sending node")
	}
	now := s.cfg.Now()
	resp := &leveev1.QuotaResponse{Grants: make([]*leveev1.QuotaGrant, len(req.GetBuckets()))}
	var ds []quota.Demand
	s.allocMu.Lock()
	defer s.allocMu.Unlock()
	for i, b := range req.GetBuckets() {
		wl := b.GetLimit()
		l := limiter.Limit{Rate: wl.GetRate(), Period: time.Duration(wl.GetPeriodNanos()), Burst: wl.GetBurst()}
		if !l.Valid() {
			return nil, status.Errorf(codes.InvalidArgument, "buckets[%d].limit: invalid limit", i)
		}
		ds = ds[:0]
		for _, d := range b.GetDemands() {
			r, noise := quota.Unknown, 0.0
			if d.GetKnown() {
				r, noise = d.GetRate(), d.GetNoise()
			}
			ds = append(ds, quota.Demand{ID: d.GetId(), Rate: r, Noise: noise})
		}
		g := s.alloc.Report(now, b.GetKey(), l, from, ds, nil)
		resp.Grants[i] = &leveev1.QuotaGrant{FillIntervalNanos: int64(g.FillInterval), Pool: g.Pool, Tokens: g.Tokens}
	}
	return resp, nil
}

// Drain sends every assignment again with a TTL of 0 s, so that Envoys
// expire it at once and apply their expired_assignment_behavior, and ends
// the streams (UNAVAILABLE), so that they reconnect to another node. The
// Server takes no new stream afterwards. A node calls it as it stops.
func (s *Server) Drain() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return
	}
	s.draining, s.closing = true, true
	for ss := range s.streams {
		for canon, c := range ss.clients {
			if !c.hasSent {
				continue
			}
			// A TTL set to 0 s expires the assignment at once.
			ss.pending[canon] = action(c.bucketID, c.sent, 0)
		}
		close(ss.done)
	}
}

// Stats is what the service holds, for metrics and tests.
type Stats struct {
	Streams int    // open streams
	Clients int    // (stream, bucket id) pairs on this node
	Owned   int    // buckets this node owns
	Pairs   int    // (node, client) pairs in the owned buckets
	Reports uint64 // bucket usage reports received, ever
}

// Stats returns what the service holds.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	st := Stats{Streams: len(s.streams), Reports: s.reports}
	for ss := range s.streams {
		st.Clients += len(ss.clients)
	}
	s.mu.Unlock()
	s.allocMu.Lock()
	st.Owned, st.Pairs = s.alloc.Len()
	s.allocMu.Unlock()
	return st
}

var _ rlqsv3.RateLimitQuotaServiceServer = (*Server)(nil)
var _ peer.QuotaHandler = (*Server)(nil)
