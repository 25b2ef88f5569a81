package envoy_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc/status"

	"github.com/levee-dev/levee/limiter/engine/enginetest"
	"github.com/levee-dev/levee/limiter/envoy"
)

// benchRules is a realistic Envoy setup: per client address, and per client
// and path prefix, with limits high enough that a benchmark measures
// admitted requests.
const benchRules = `
domain: bench
descriptors:
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 1000000000}
    descriptors:
      - key: path
        value: "/api/*"
        rate_limit: {unit: second, requests_per_unit: 1000000000}
`

// desc builds a descriptor from alternating keys and values.
func desc(kv ...string) *ratelimitv3.RateLimitDescriptor {
	d := &ratelimitv3.RateLimitDescriptor{}
	for i := 0; i+1 < len(kv); i += 2 {
		d.Entries = append(d.Entries, &ratelimitv3.RateLimitDescriptor_Entry{Key: kv[i], Value: kv[i+1]})
	}
	return d
}

func TestShouldRateLimitBucketErrors(t *testing.T) {
	for _, c := range enginetest.BucketErrors {
		s := envoy.NewServer(enginetest.New(t, enginetest.Rules, enginetest.FailingBuckets{Err: c.Err}), enginetest.Now)
		_, err := s.ShouldRateLimit(context.Background(), &rlsv3.RateLimitRequest{
			Domain: enginetest.Domain, Descriptors: []*ratelimitv3.RateLimitDescriptor{desc("user", "a")},
		})
		if status.Code(err) != c.Code {
			t.Errorf("buckets failing with %v: got %v, want %v", c.Err, err, c.Code)
		}
		// Descriptors that need no bucket are answered without one.
		resp, err := s.ShouldRateLimit(context.Background(), &rlsv3.RateLimitRequest{
			Domain: enginetest.Domain, Descriptors: []*ratelimitv3.RateLimitDescriptor{desc("free", "x"), desc("nomatch", "x")},
		})
		if err != nil || resp.OverallCode != rlsv3.RateLimitResponse_OK || len(resp.Statuses) != 2 {
			t.Errorf("unlimited and unmatched descriptors with failing buckets: %v, %v", resp, err)
		}
	}
}

// TestShouldRateLimitConcurrentRequestsOfManySizes runs requests of
// different sizes at once, so the server's reused scratch space is shared
// between calls (run with -race); each descriptor has a fresh bucket, so
// every answer is known.
func TestShouldRateLimitConcurrentRequestsOfManySizes(t *testing.T) {
	s := envoy.NewServer(enginetest.New(t, enginetest.Rules, nil), enginetest.Now)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for i := range 200 {
				n := 1 + rng.IntN(30)
				req := &rlsv3.RateLimitRequest{Domain: enginetest.Domain, HitsAddend: uint32(1 + rng.IntN(3))}
				for j := range n {
					if j%3 == 2 {
						req.Descriptors = append(req.Descriptors, desc("nomatch", "x"))
						continue
					}
					req.Descriptors = append(req.Descriptors, desc("many", fmt.Sprintf("%d-%d-%d", g, i, j)))
				}
				resp, err := s.ShouldRateLimit(context.Background(), req)
				if err != nil {
					t.Error(err)
					return
				}
				if len(resp.Statuses) != n {
					t.Errorf("%d statuses for %d descriptors", len(resp.Statuses), n)
					return
				}
				for j, st := range resp.Statuses {
					if j%3 == 2 {
						if st.CurrentLimit != nil || st.Code != rlsv3.RateLimitResponse_OK {
							t.Errorf("unmatched descriptor %d: %v", j, st)
						}
						continue
					}
					if want := 1000000 - req.HitsAddend; st.LimitRemaining != want || st.CurrentLimit.GetRequestsPerUnit() != 1000000 {
						t.Errorf("descriptor %d: remaining %d, want %d (%v)", j, st.LimitRemaining, want, st)
						return
					}
				}
			}
		})
	}
	wg.Wait()
}

// BenchmarkShouldRateLimit measures one in-process call (no network) with
// 1 and with 5 descriptors of two entries each, all admitted, with the real
// clock.
func BenchmarkShouldRateLimit(b *testing.B) {
	s := envoy.NewServer(enginetest.New(b, benchRules, nil), nil)
	ctx := context.Background()
	for _, n := range []int{1, 5} {
		b.Run(fmt.Sprintf("descriptors=%d", n), func(b *testing.B) {
			req := &rlsv3.RateLimitRequest{Domain: "bench"}
			for i := range n {
				req.Descriptors = append(req.Descriptors, desc("remote_address", "203.0.113.7", "path", fmt.Sprintf("/api/v1/items/%d", i)))
			}
			b.ReportAllocs()
			for b.Loop() {
				resp, err := s.ShouldRateLimit(ctx, req)
				if err != nil {
					b.Fatal(err)
				}
				if resp.OverallCode != rlsv3.RateLimitResponse_OK {
					b.Fatal(resp)
				}
			}
		})
	}
}

// TestSeveralLimitsAndWindows: a descriptor with several limits answers
// with the tightest as current_limit, a five-minute window as MINUTE with
// unit_multiplier 5, and its remaining and reset in that limit's terms.
func TestSeveralLimitsAndWindows(t *testing.T) {
	now := enginetest.Now()
	srv := envoy.NewServer(enginetest.New(t, enginetest.Rules, nil), func() time.Time { return now })
	ask := func() *rlsv3.RateLimitResponse_DescriptorStatus {
		t.Helper()
		resp, err := srv.ShouldRateLimit(t.Context(), &rlsv3.RateLimitRequest{Domain: enginetest.Domain, Descriptors: []*ratelimitv3.RateLimitDescriptor{desc("windows", "w")}})
		if err != nil {
			t.Fatal(err)
		}
		if resp.OverallCode != resp.Statuses[0].Code {
			t.Fatalf("overall %v, status %v", resp.OverallCode, resp.Statuses[0].Code)
		}
		return resp.Statuses[0]
	}
	type want struct {
		code      rlsv3.RateLimitResponse_Code
		name      string
		unit      rlsv3.RateLimitResponse_RateLimit_Unit
		mult      uint32 // 0: absent
		remaining uint32
		reset     int64
	}
	same := func(st *rlsv3.RateLimitResponse_DescriptorStatus, w want) {
		t.Helper()
		l := st.CurrentLimit
		if st.Code != w.code || l.GetName() != w.name || l.GetUnit() != w.unit || l.GetUnitMultiplier().GetValue() != w.mult ||
			(w.mult == 0) != (l.GetUnitMultiplier() == nil) || st.LimitRemaining != w.remaining || st.DurationUntilReset.GetSeconds() != w.reset {
			t.Fatalf("status %v, want %+v", st, w)
		}
	}
	// burst: 2 per second; five_minutes: 3 per 5 minutes, one token each 100 s.
	same(ask(), want{rlsv3.RateLimitResponse_OK, "burst", rlsv3.RateLimitResponse_RateLimit_SECOND, 0, 1, 1})
	same(ask(), want{rlsv3.RateLimitResponse_OK, "burst", rlsv3.RateLimitResponse_RateLimit_SECOND, 0, 0, 1})
	// burst refuses; five_minutes still took its third token.
	same(ask(), want{rlsv3.RateLimitResponse_OVER_LIMIT, "burst", rlsv3.RateLimitResponse_RateLimit_SECOND, 0, 0, 1})
	now = now.Add(time.Second)
	// burst is full again; five_minutes is empty for 100 s more since its
	// last token left, and full 300 s after it.
	same(ask(), want{rlsv3.RateLimitResponse_OVER_LIMIT, "five_minutes", rlsv3.RateLimitResponse_RateLimit_MINUTE, 5, 0, 299})
}
