package rlqs

import (
	"maps"
	"testing"
	"time"

	rlqsv3 "github.com/envoyproxy/go-control-plane/envoy/service/rate_limit_quota/v3"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/levee-dev/levee/limiter/rules"
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
