package quotasim

import (
	"math"
	"testing"
	"time"

	rlqsv3 "github.com/envoyproxy/go-control-plane/envoy/service/rate_limit_quota/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
)

// FuzzBucketApply feeds arbitrary server answers to a bucket: whatever the
// server sends, the simulated Envoy never panics, never admits from a
// DENY_ALL or a token bucket more than it holds, and reports what it
// decided.
func FuzzBucketApply(f *testing.F) {
	for _, qa := range []*rlqsv3.RateLimitQuotaResponse_BucketAction_QuotaAssignmentAction{
		tokenBucket(10, 10, sec(1), sec(15)),
		tokenBucket(10, 10, sec(0.5), nil),
		blanket(typev3.RateLimitStrategy_DENY_ALL, sec(0)),
	} {
		b, _ := proto.Marshal(&rlqsv3.RateLimitQuotaResponse{BucketAction: []*rlqsv3.RateLimitQuotaResponse_BucketAction{{
			BucketAction: &rlqsv3.RateLimitQuotaResponse_BucketAction_QuotaAssignmentAction_{QuotaAssignmentAction: qa}}}})
		f.Add(b, uint16(100))
	}
	f.Fuzz(func(t *testing.T, data []byte, stepMs uint16) {
		var resp rlqsv3.RateLimitQuotaResponse
		if proto.Unmarshal(data, &resp) != nil {
			return
		}
		b := NewBucket(Settings{NoAssignment: DenyAll, Expired: ExpiredReuseLast, ExpiredTimeout: time.Second})
		now := t0
		b.Decide(now)
		var decided uint64 = 1
		for _, a := range resp.GetBucketAction() {
			if qa := a.GetQuotaAssignmentAction(); qa != nil {
				b.Apply(now, qa)
			} else if a.GetAbandonAction() != nil {
				b.Abandon()
				decided = 0
			}
			rate, live := b.Rate(now)
			if live && (rate < 0 || math.IsNaN(rate)) {
				t.Fatalf("rate %v from %v", rate, qa(a))
			}
			for range 3 {
				ok, _ := b.Decide(now)
				decided++
				if ok && live && rate == 0 && b.active.tb == nil {
					t.Fatalf("admitted under DENY_ALL from %v", qa(a))
				}
			}
			now = now.Add(time.Duration(stepMs) * time.Millisecond)
		}
		if r := b.Report(now, nil); b.Tracked() && r.GetNumRequestsAllowed()+r.GetNumRequestsDenied() > decided {
			t.Fatalf("reported %d requests of %d decided", r.GetNumRequestsAllowed()+r.GetNumRequestsDenied(), decided)
		}
	})
}

func qa(a *rlqsv3.RateLimitQuotaResponse_BucketAction) string { return a.String() }
