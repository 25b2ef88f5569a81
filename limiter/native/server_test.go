package native_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/levee-dev/levee/limiter/engine/enginetest"
	"github.com/levee-dev/levee/limiter/native"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
)

// ruleItem names a rule by domain and alternating keys and values.
func ruleItem(domain string, kv ...string) *leveev1.CheckItem {
	rd := &leveev1.RuleDescriptor{Domain: domain}
	for i := 0; i+1 < len(kv); i += 2 {
		rd.Entries = append(rd.Entries, &leveev1.Entry{Key: kv[i], Value: kv[i+1]})
	}
	return &leveev1.CheckItem{Target: &leveev1.CheckItem_Descriptor_{Descriptor_: rd}}
}

func inlineItem(key string, limit int64, period time.Duration, burst int64) *leveev1.CheckItem {
	return &leveev1.CheckItem{Target: &leveev1.CheckItem_Inline{Inline: &leveev1.InlineLimit{
		Key: key, Limit: limit, Period: durationpb.New(period), Burst: burst,
	}}}
}

func TestCheckBucketErrors(t *testing.T) {
	for _, c := range enginetest.BucketErrors {
		s := native.NewServer(enginetest.New(t, enginetest.Rules, enginetest.FailingBuckets{Err: c.Err}), enginetest.Now)
		_, err := s.Check(context.Background(), &leveev1.CheckRequest{Items: []*leveev1.CheckItem{inlineItem("k", 1, time.Second, 0)}})
		if status.Code(err) != c.Code {
			t.Errorf("buckets failing with %v: got %v, want %v", c.Err, err, c.Code)
		}
		// Items that need no bucket are answered without one.
		resp, err := s.Check(context.Background(), &leveev1.CheckRequest{Items: []*leveev1.CheckItem{ruleItem(enginetest.Domain, "free", "x"), ruleItem(enginetest.Domain, "nomatch", "x")}})
		if err != nil || resp.OverallCode != leveev1.Code_CODE_OK || len(resp.Statuses) != 2 {
			t.Errorf("unlimited and unmatched items with failing buckets: %v, %v", resp, err)
		}
	}
}

// TestCheckConcurrentRequestsOfManySizes runs requests of different sizes
// at once, so the server's reused scratch space is shared between calls
// (run with -race); every item has a fresh bucket, so every answer is known.
func TestCheckConcurrentRequestsOfManySizes(t *testing.T) {
	s := native.NewServer(enginetest.New(t, enginetest.Rules, nil), enginetest.Now)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 2))
			for i := range 200 {
				n := 1 + rng.IntN(30)
				hits := int64(rng.IntN(4))
				req := &leveev1.CheckRequest{}
				for j := range n {
					var it *leveev1.CheckItem
					switch j % 3 {
					case 0:
						it = ruleItem(enginetest.Domain, "many", fmt.Sprintf("%d-%d-%d", g, i, j))
					case 1:
						it = inlineItem(fmt.Sprintf("%d-%d-%d", g, i, j), 10, time.Second, 20)
					default:
						it = ruleItem(enginetest.Domain, "nomatch", "x")
					}
					it.Hits = proto.Int64(hits)
					req.Items = append(req.Items, it)
				}
				resp, err := s.Check(context.Background(), req)
				if err != nil {
					t.Error(err)
					return
				}
				if len(resp.Statuses) != n {
					t.Errorf("%d statuses for %d items", len(resp.Statuses), n)
					return
				}
				for j, st := range resp.Statuses {
					var want int64
					switch j % 3 {
					case 0:
						want = 1000000 - hits
					case 1:
						want = 20 - hits
					default:
						if st.Limited || st.Code != leveev1.Code_CODE_OK {
							t.Errorf("unmatched item %d: %v", j, st)
						}
						continue
					}
					if st.Remaining != want || st.Code != leveev1.Code_CODE_OK {
						t.Errorf("item %d: %v, want %d remaining", j, st, want)
						return
					}
				}
			}
		})
	}
	wg.Wait()
}

// TestSeveralLimitsReportTheTightest: levee.v1 reports the tightest limit
// of a rule with several, by its name, with its own window, and marks
// quota-mode items.
func TestSeveralLimitsReportTheTightest(t *testing.T) {
	now := enginetest.Now()
	srv := native.NewServer(enginetest.New(t, enginetest.Rules, nil), func() time.Time { return now })
	ask := func(items ...*leveev1.CheckItem) *leveev1.CheckResponse {
		t.Helper()
		resp, err := srv.Check(t.Context(), &leveev1.CheckRequest{Items: items})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	for range 3 {
		ask(ruleItem(enginetest.Domain, "windows", "w"))
	}
	now = now.Add(time.Second)
	st := ask(ruleItem(enginetest.Domain, "windows", "w")).Statuses[0]
	if st.Code != leveev1.Code_CODE_OVER_LIMIT || st.Rule != "five_minutes" || st.Limit != 3 || st.Period.AsDuration() != 5*time.Minute ||
		st.Remaining != 0 || st.RetryAfter.AsDuration() != 99*time.Second || st.ResetAfter.AsDuration() != 299*time.Second || st.QuotaMode {
		t.Fatalf("status %v", st)
	}
	if st := ask(ruleItem(enginetest.Domain, "quota", "q")).Statuses[0]; !st.QuotaMode {
		t.Fatalf("quota-mode status %v", st)
	}
}
