package rlqs

import (
	"maps"
	"math"
	"testing"
	"time"

	rlqsv3 "github.com/envoyproxy/go-control-plane/envoy/service/rate_limit_quota/v3"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/levee-dev/levee/limiter/quota"
	"github.com/levee-dev/levee/limiter/rules"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
	"github.com/levee-dev/levee/shed/shedtest"
)

// FuzzReport feeds arbitrary usage report messages to a stream: the
// server never panics, refuses what it refuses with a status naming a
// field, and every assignment it queues is one Envoy can apply.
func FuzzReport(f *testing.F) {
	seed := func(m *rlqsv3.RateLimitQuotaUsageReports) {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, b)
	}
	seed(&rlqsv3.RateLimitQuotaUsageReports{Domain: "rlqs", BucketQuotaUsages: []*rlqsv3.RateLimitQuotaUsageReports_BucketQuotaUsage{
		{BucketId: &rlqsv3.BucketId{Bucket: map[string]string{"name": "api"}}, TimeElapsed: durationpb.New(0), NumRequestsAllowed: 1},
		{BucketId: &rlqsv3.BucketId{Bucket: map[string]string{"name": "tenant", "tenant": "a"}}, NumRequestsDenied: 1 << 63},
		{BucketId: &rlqsv3.BucketId{Bucket: map[string]string{"name": "free"}}},
	}})
	seed(&rlqsv3.RateLimitQuotaUsageReports{})
	rc := exampleRules(f)
	f.Fuzz(func(t *testing.T, first, second []byte) {
		clock := shedtest.NewClock(time.Unix(1_000_000, 0))
		s := New(Config{Now: clock.Now})
		s.cfg.Rules = func() *rulesConfig { return rc }
		ss := &stream{clients: map[string]*client{}, pending: map[string]*rlqsv3.RateLimitQuotaResponse_BucketAction{}, wake: make(chan struct{}, 1), done: make(chan struct{})}
		s.streams[ss] = struct{}{}
		for _, data := range [][]byte{first, second} {
			var m rlqsv3.RateLimitQuotaUsageReports
			if proto.Unmarshal(data, &m) != nil {
				continue
			}
			if err := s.report(ss, &m); err != nil {
				if st, ok := statusOf(err); !ok || st == "" {
					t.Fatalf("report error %v is not a status naming a field", err)
				}
				return
			}
			clock.Add(5 * time.Second)
			s.Sync(t.Context())
		}
		for _, a := range ss.pending {
			if err := a.ValidateAll(); err != nil {
				t.Fatalf("queued action %v: %v", a, err)
			}
			q := a.GetQuotaAssignmentAction()
			if q.GetAssignmentTimeToLive().AsDuration() < time.Second || q.GetRateLimitStrategy().GetRequestsPerTimeUnit() != nil {
				t.Fatalf("queued action %v: not one Envoy applies", a)
			}
		}
	})
}

// FuzzCanonical: two bucket ids have the same canonical form exactly when
// they are the same map.
func FuzzCanonical(f *testing.F) {
	f.Add("a", "b", "c", "d", "a", "b")
	f.Add("a", "b_c", "a_b", "c", "", "")
	f.Add("1:a", "", "1", "a", "x", "y")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2, k3, v3 string) {
		a := map[string]string{k1: v1, k2: v2}
		b := map[string]string{k1: v1, k3: v3}
		if (canonical(a) == canonical(b)) != maps.Equal(a, b) {
			t.Fatalf("canonical(%q) = %q, canonical(%q) = %q", a, canonical(a), b, canonical(b))
		}
	})
}

type rulesConfig = rules.Config

// statusOf returns a gRPC status error's message.
func statusOf(err error) (string, bool) {
	st, ok := status.FromError(err)
	if !ok {
		return "", false
	}
	return st.Message(), true
}

// FuzzQuota feeds arbitrary peer Quota requests to an owner: it never
// panics, answers one grant per bucket with one token count per demand, and
// never grants more tokens than a fill adds and the headroom of the
// clients below their share (quota.MaxHeadroom of the pool, their 5% and
// the standard errors of their demands together, and a token each for
// rounding up).
func FuzzQuota(f *testing.F) {
	seed := func(r *leveev1.QuotaRequest) {
		b, err := proto.Marshal(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	seed(&leveev1.QuotaRequest{From: "n2", Buckets: []*leveev1.QuotaBucket{{
		Key: 7, Limit: &leveev1.BucketLimit{Rate: 100, PeriodNanos: int64(time.Second)},
		Demands: []*leveev1.QuotaDemand{{Id: 1, Rate: 10, Known: true}, {Id: 2}, {Id: 3, Rate: math.NaN(), Known: true}},
	}}})
	seed(&leveev1.QuotaRequest{From: "n2", Buckets: []*leveev1.QuotaBucket{{Limit: &leveev1.BucketLimit{Rate: 7, PeriodNanos: int64(time.Hour), Burst: 1 << 40}}}})
	f.Fuzz(func(t *testing.T, data []byte) {
		var req leveev1.QuotaRequest
		if proto.Unmarshal(data, &req) != nil {
			return
		}
		s := New(Config{Now: shedtest.NewClock(time.Unix(1_000_000, 0)).Now})
		resp, err := s.Quota(t.Context(), &req)
		if err != nil {
			if _, ok := status.FromError(err); !ok {
				t.Fatalf("error %v is not a status", err)
			}
			return
		}
		if len(resp.GetGrants()) != len(req.GetBuckets()) {
			t.Fatalf("%d grants for %d buckets", len(resp.GetGrants()), len(req.GetBuckets()))
		}
		for i, g := range resp.GetGrants() {
			if len(g.GetTokens()) != len(req.GetBuckets()[i].GetDemands()) {
				t.Fatalf("bucket %d: %d token counts for %d demands", i, len(g.GetTokens()), len(req.GetBuckets()[i].GetDemands()))
			}
			sum := uint64(0)
			for _, n := range g.GetTokens() {
				sum += n
			}
			// Demands of one bucket sent twice (the same id) share one
			// client: each gets that client's tokens.
			bound := g.GetPool() + uint64(math.Ceil(float64(g.GetPool())*quota.MaxHeadroom)) + uint64(len(g.GetTokens()))
			if sum > bound && !duplicateIDs(req.GetBuckets()[i]) {
				t.Fatalf("bucket %d: %d tokens granted of a pool of %d", i, sum, g.GetPool())
			}
		}
	})
}

func duplicateIDs(b *leveev1.QuotaBucket) bool {
	seen := map[uint64]bool{}
	for _, d := range b.GetDemands() {
		if seen[d.GetId()] {
			return true
		}
		seen[d.GetId()] = true
	}
	return false
}
