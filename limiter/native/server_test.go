package native_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/engine"
	"github.com/levee-dev/levee/limiter/native"
	"github.com/levee-dev/levee/limiter/rules"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
)

// testRules exercise every rule feature; the fuzz test and the tests here
// share them. Every burst is at most its rate.
const testRules = `
domain: app
descriptors:
  - key: user
    rate_limit: {unit: second, requests_per_unit: 5, name: per_user}
    descriptors:
      - key: action
        value: post
        rate_limit: {unit: hour, requests_per_unit: 60, burst: 5}
      - key: action
        value: "get*"
        share_threshold: true
        rate_limit: {unit: minute, requests_per_unit: 100}
  - key: ip
    rate_limit: {unit: day, requests_per_unit: 1000, replaces: [{name: per_user}]}
  - key: blocked
    rate_limit: {unit: week, requests_per_unit: 0}
  - key: free
    rate_limit: {unlimited: true}
  - key: shadow
    shadow_mode: true
    rate_limit: {unit: month, requests_per_unit: 1}
  - key: quota
    quota_mode: true
    rate_limit: {unit: year, requests_per_unit: 2}
  - key: allow
    value: me
  - key: many
    rate_limit: {unit: second, requests_per_unit: 1000000}
  - key: windows
    rate_limits:
      - {name: burst, unit: second, requests_per_unit: 2}
      - {name: five_minutes, unit: minute, unit_multiplier: 5, requests_per_unit: 3}
`

func newEngine(tb testing.TB, b engine.Buckets) *engine.Engine {
	tb.Helper()
	dom, err := rules.Parse("rules.yaml", []byte(testRules))
	if err != nil {
		tb.Fatal(err)
	}
	cfg, err := rules.NewConfig(dom)
	if err != nil {
		tb.Fatal(err)
	}
	if b == nil {
		b = engine.LocalBuckets{Store: limiter.NewStore(100_000)}
	}
	return engine.New(b, cfg, nil)
}

func fixedNow() time.Time { return time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC) }

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

// failingBuckets cannot decide anything.
type failingBuckets struct{ err error }

func (f failingBuckets) Take(context.Context, int64, []limiter.Request, []limiter.Result) error {
	return f.err
}

func TestCheckBucketErrors(t *testing.T) {
	for _, c := range []struct {
		err  error
		want codes.Code
	}{
		{limiter.ErrUndecided, codes.Unavailable},
		{fmt.Errorf("owner unreachable: %w", limiter.ErrUndecided), codes.Unavailable},
		{context.Canceled, codes.Canceled},
		{fmt.Errorf("forwarding: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
	} {
		s := native.NewServer(newEngine(t, failingBuckets{c.err}), fixedNow)
		_, err := s.Check(context.Background(), &leveev1.CheckRequest{Items: []*leveev1.CheckItem{inlineItem("k", 1, time.Second, 0)}})
		if status.Code(err) != c.want {
			t.Errorf("buckets failing with %v: got %v, want %v", c.err, err, c.want)
		}
		// Items that need no bucket are answered without one.
		resp, err := s.Check(context.Background(), &leveev1.CheckRequest{Items: []*leveev1.CheckItem{ruleItem("app", "free", "x"), ruleItem("app", "nomatch", "x")}})
		if err != nil || resp.OverallCode != leveev1.Code_CODE_OK || len(resp.Statuses) != 2 {
			t.Errorf("unlimited and unmatched items with failing buckets: %v, %v", resp, err)
		}
	}
}

// TestCheckConcurrentRequestsOfManySizes runs requests of different sizes
// at once, so the server's reused scratch space is shared between calls
// (run with -race); every item has a fresh bucket, so every answer is known.
func TestCheckConcurrentRequestsOfManySizes(t *testing.T) {
	s := native.NewServer(newEngine(t, nil), fixedNow)
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
						it = ruleItem("app", "many", fmt.Sprintf("%d-%d-%d", g, i, j))
					case 1:
						it = inlineItem(fmt.Sprintf("%d-%d-%d", g, i, j), 10, time.Second, 20)
					default:
						it = ruleItem("app", "nomatch", "x")
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

// errorsIsInvalidArgument reports whether err is a gRPC InvalidArgument.
func errorsIsInvalidArgument(err error) bool {
	var se interface{ GRPCStatus() *status.Status }
	return errors.As(err, &se) && se.GRPCStatus().Code() == codes.InvalidArgument
}

// TestSeveralLimitsReportTheTightest: levee.v1 reports the tightest limit
// of a rule with several, by its name, with its own window, and marks
// quota-mode items.
func TestSeveralLimitsReportTheTightest(t *testing.T) {
	now := fixedNow()
	srv := native.NewServer(newEngine(t, nil), func() time.Time { return now })
	ask := func(items ...*leveev1.CheckItem) *leveev1.CheckResponse {
		t.Helper()
		resp, err := srv.Check(t.Context(), &leveev1.CheckRequest{Items: items})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	for range 3 {
		ask(ruleItem("app", "windows", "w"))
	}
	now = now.Add(time.Second)
	st := ask(ruleItem("app", "windows", "w")).Statuses[0]
	if st.Code != leveev1.Code_CODE_OVER_LIMIT || st.Rule != "five_minutes" || st.Limit != 3 || st.Period.AsDuration() != 5*time.Minute ||
		st.Remaining != 0 || st.RetryAfter.AsDuration() != 99*time.Second || st.ResetAfter.AsDuration() != 299*time.Second || st.QuotaMode {
		t.Fatalf("status %v", st)
	}
	if st := ask(ruleItem("app", "quota", "q")).Statuses[0]; !st.QuotaMode {
		t.Fatalf("quota-mode status %v", st)
	}
}
