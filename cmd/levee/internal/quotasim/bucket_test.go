package quotasim

import (
	"slices"
	"testing"
	"time"

	rlqsv3 "github.com/envoyproxy/go-control-plane/envoy/service/rate_limit_quota/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

var t0 = time.Unix(1_700_000_000, 0)

func TestTokenBucket(t *testing.T) {
	b := NewTokenBucket(t0, 3, 2) // 3 tokens, 2 a second
	for i := range 3 {
		if !b.Take(t0) {
			t.Fatalf("take %d of a full bucket of 3 refused", i)
		}
	}
	if b.Take(t0) {
		t.Fatal("a fourth take at once admitted")
	}
	if b.Take(t0.Add(499 * time.Millisecond)) {
		t.Fatal("admitted before a whole token refilled (0.998 tokens)")
	}
	if !b.Take(t0.Add(500 * time.Millisecond)) {
		t.Fatal("refused with one token refilled after 0.5 s at 2/s")
	}
	// Ten seconds idle refill to the cap of 3, not 20.
	now := t0.Add(10 * time.Second)
	n := 0
	for b.Take(now) {
		n++
	}
	if n != 3 {
		t.Fatalf("after a long idle spell admitted %d at once, want the cap 3", n)
	}
	// A clock that goes back refills nothing and does not move the bucket's time.
	if b.Take(t0) {
		t.Fatal("a clock gone back refilled")
	}
	if !b.Take(now.Add(500 * time.Millisecond)) {
		t.Fatal("refill after the clock came back lost")
	}
	if z := NewTokenBucket(t0, 0, 100); z.Take(t0.Add(time.Hour)) {
		t.Fatal("max_tokens 0 admitted a request")
	}
}

// TestTokenBucketRate: over a long run the bucket admits rate × time plus
// its initial burst.
func TestTokenBucketRate(t *testing.T) {
	b := NewTokenBucket(t0, 10, 50)
	n := 0
	for i := range 100_000 { // 100 s at 1000 requests a second
		if b.Take(t0.Add(time.Duration(i) * time.Millisecond)) {
			n++
		}
	}
	if n < 5000 || n > 5010 {
		t.Fatalf("admitted %d over 100 s at 50/s with a burst of 10, want 5000..5010", n)
	}
}

func tokenBucket(max, perFill uint32, fill, ttl *durationpb.Duration) *rlqsv3.RateLimitQuotaResponse_BucketAction_QuotaAssignmentAction {
	return &rlqsv3.RateLimitQuotaResponse_BucketAction_QuotaAssignmentAction{
		AssignmentTimeToLive: ttl,
		RateLimitStrategy: &typev3.RateLimitStrategy{Strategy: &typev3.RateLimitStrategy_TokenBucket{
			TokenBucket: &typev3.TokenBucket{MaxTokens: max, TokensPerFill: wrapperspb.UInt32(perFill), FillInterval: fill}}},
	}
}

func blanket(rule typev3.RateLimitStrategy_BlanketRule, ttl *durationpb.Duration) *rlqsv3.RateLimitQuotaResponse_BucketAction_QuotaAssignmentAction {
	return &rlqsv3.RateLimitQuotaResponse_BucketAction_QuotaAssignmentAction{
		AssignmentTimeToLive: ttl,
		RateLimitStrategy:    &typev3.RateLimitStrategy{Strategy: &typev3.RateLimitStrategy_BlanketRule_{BlanketRule: rule}},
	}
}

func sec(s float64) *durationpb.Duration {
	return durationpb.New(time.Duration(s * float64(time.Second)))
}

func decideN(b *Bucket, now time.Time, n int) (admitted int) {
	for range n {
		if ok, _ := b.Decide(now); ok {
			admitted++
		}
	}
	return admitted
}

func TestBucketSubscribeAndReport(t *testing.T) {
	b := NewBucket(Settings{})
	if b.Tracked() {
		t.Fatal("a bucket with no request is tracked")
	}
	if ok, first := b.Decide(t0); !ok || !first {
		t.Fatalf("first request: admitted %v, first %v; want allowed (no assignment: allow all) and first", ok, first)
	}
	if _, first := b.Decide(t0); first {
		t.Fatal("second request also subscribes")
	}
	id := &rlqsv3.BucketId{Bucket: map[string]string{"name": "x"}}
	r := b.Report(t0, id)
	if r.GetTimeElapsed().AsDuration() != 0 || r.GetNumRequestsAllowed() != 2 || r.GetNumRequestsDenied() != 0 {
		t.Fatalf("first report %v: want 0 s elapsed (as Envoy sends), 2 allowed", r)
	}
	// The next reports carry whole seconds, truncated, and only what came since.
	b.Decide(t0.Add(time.Second))
	r = b.Report(t0.Add(5900*time.Millisecond), id)
	if r.GetTimeElapsed().AsDuration() != 5*time.Second || r.GetNumRequestsAllowed() != 1 {
		t.Fatalf("second report %v: want 5 s (5.9 s truncated), 1 allowed", r)
	}
	r = b.Report(t0.Add(6500*time.Millisecond), id)
	if r.GetTimeElapsed().AsDuration() != 0 || r.GetNumRequestsAllowed() != 0 {
		t.Fatalf("report 0.6 s later %v: want 0 s (truncated), nothing", r)
	}
}

func TestBucketNoAssignmentDeny(t *testing.T) {
	b := NewBucket(Settings{NoAssignment: DenyAll})
	if ok, _ := b.Decide(t0); ok {
		t.Fatal("no assignment, deny all: admitted")
	}
	if r := b.Report(t0, nil); r.GetNumRequestsDenied() != 1 {
		t.Fatalf("report %v: want 1 denied", r)
	}
}

func TestBucketAssignmentTTL(t *testing.T) {
	cases := []struct {
		name   string
		ttl    *durationpb.Duration
		live   time.Duration // how long the assignment governs
		fails  []Failure
		server bool
	}{
		{"whole seconds", sec(3), 3 * time.Second, nil, false},
		{"fraction dropped", sec(2.7), 2 * time.Second, []Failure{FailTTLFraction}, false},
		{"sub-second expires at once", sec(0.9), 0, []Failure{FailTTLFraction}, false},
		{"unset expires at once", nil, 0, []Failure{FailTTLUnset}, false},
		{"explicit zero (a draining node)", sec(0), 0, nil, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := NewBucket(Settings{NoAssignment: AllowAll, Expired: ExpiredDenyAll})
			b.Decide(t0)
			fails := b.Apply(t0, blanket(typev3.RateLimitStrategy_ALLOW_ALL, c.ttl))
			if !slices.Equal(fails, c.fails) {
				t.Fatalf("failures %v, want %v", fails, c.fails)
			}
			if c.live > 0 {
				if s := b.State(t0.Add(c.live - time.Nanosecond)); s != StateActive {
					t.Fatalf("just before %v: %v, want active", c.live, s)
				}
			}
			if s := b.State(t0.Add(c.live)); s != StateExpired {
				t.Fatalf("at %v: %v, want expired", c.live, s)
			}
			if ok, _ := b.Decide(t0.Add(c.live)); ok {
				t.Fatal("expired with expired behaviour deny all: admitted")
			}
			from, zero := b.ExpiredSince(t0.Add(c.live + time.Second))
			if !from.Equal(t0.Add(c.live)) || zero != c.server {
				t.Fatalf("ExpiredSince = %v, %v; want %v, %v", from, zero, t0.Add(c.live), c.server)
			}
		})
	}
}

func TestBucketStrategyQuirks(t *testing.T) {
	b := NewBucket(Settings{NoAssignment: DenyAll})
	b.Decide(t0)
	if fails := b.Apply(t0, tokenBucket(5, 5, sec(0.5), sec(10))); !slices.Equal(fails, []Failure{FailFillSubSecond}) {
		t.Fatalf("fill 0.5 s: failures %v", fails)
	}
	if s := b.State(t0); s != StateNoAssignment {
		t.Fatalf("after an assignment Envoy cannot apply: %v, want still no-assignment", s)
	}
	rptu := &rlqsv3.RateLimitQuotaResponse_BucketAction_QuotaAssignmentAction{
		AssignmentTimeToLive: sec(10),
		RateLimitStrategy: &typev3.RateLimitStrategy{Strategy: &typev3.RateLimitStrategy_RequestsPerTimeUnit_{
			RequestsPerTimeUnit: &typev3.RateLimitStrategy_RequestsPerTimeUnit{RequestsPerTimeUnit: 10, TimeUnit: typev3.RateLimitUnit_SECOND}}},
	}
	if fails := b.Apply(t0, rptu); !slices.Equal(fails, []Failure{FailRequestsPerTimeUnit}) {
		t.Fatalf("requests_per_time_unit: failures %v", fails)
	}
	if s := b.State(t0); s != StateNoAssignment {
		t.Fatalf("after requests_per_time_unit: %v, want still no-assignment (ignored)", s)
	}
	// 1.5 s is read as 1 s: 3 tokens a fill, 3 a second, not 2.
	if fails := b.Apply(t0, tokenBucket(3, 3, sec(1.5), sec(10))); !slices.Equal(fails, []Failure{FailFillFraction}) {
		t.Fatalf("fill 1.5 s: failures %v", fails)
	}
	if r, live := b.Rate(t0); !live || r != 3 {
		t.Fatalf("rate %v (live %v), want 3/s from a fill truncated to 1 s", r, live)
	}
	// tokens_per_fill unset: the proto says one a fill, Envoy reads 0.
	fails := b.Apply(t0, &rlqsv3.RateLimitQuotaResponse_BucketAction_QuotaAssignmentAction{
		AssignmentTimeToLive: sec(10),
		RateLimitStrategy: &typev3.RateLimitStrategy{Strategy: &typev3.RateLimitStrategy_TokenBucket{
			TokenBucket: &typev3.TokenBucket{MaxTokens: 4, FillInterval: sec(2)}}}})
	if r, _ := b.Rate(t0); r != 0 || !slices.Equal(fails, []Failure{FailTokensPerFillUnset}) {
		t.Fatalf("tokens_per_fill unset: rate %v, failures %v; want 0/s, as Envoy reads it", r, fails)
	}
	if n := decideN(b, t0.Add(9*time.Second), 10); n != 4 {
		t.Fatalf("admitted %d 9 s later, want only the 4 tokens it started with", n)
	}
	// A strategy with none set is ignored: the last one stays.
	fails = b.Apply(t0, &rlqsv3.RateLimitQuotaResponse_BucketAction_QuotaAssignmentAction{AssignmentTimeToLive: sec(10)})
	if r, _ := b.Rate(t0); r != 0 || !slices.Equal(fails, []Failure{FailStrategyUnset}) {
		t.Fatalf("no strategy: rate %v, failures %v; want it ignored", r, fails)
	}
}

// TestBucketFillSecondsOnly: Envoy tells token buckets apart by
// max_tokens, tokens_per_fill and fill_interval's nanos; one that differs
// only in fill_interval's seconds keeps the old bucket and its rate.
func TestBucketFillSecondsOnly(t *testing.T) {
	b := NewBucket(Settings{})
	b.Decide(t0)
	b.Apply(t0, tokenBucket(10, 10, sec(1), sec(10)))
	fails := b.Apply(t0.Add(time.Second), tokenBucket(10, 10, sec(2), sec(10)))
	if r, _ := b.Rate(t0.Add(time.Second)); r != 10 || !slices.Equal(fails, []Failure{FailFillSecondsOnly}) {
		t.Fatalf("rate %v, failures %v; want the old 10/s kept and the failure counted", r, fails)
	}
	if s := b.State(t0.Add(10500 * time.Millisecond)); s != StateActive {
		t.Fatalf("TTL not restarted by the assignment Envoy took as the same: %v at 10.5 s", s)
	}
}

func TestBucketRefreshKeepsTokens(t *testing.T) {
	b := NewBucket(Settings{})
	b.Decide(t0)
	b.Apply(t0, tokenBucket(10, 10, sec(1), sec(5)))
	if n := decideN(b, t0, 20); n != 10 {
		t.Fatalf("a new assignment's bucket admitted %d at once, want it full with 10", n)
	}
	// The same strategy again extends the TTL and keeps the (empty) bucket.
	b.Apply(t0.Add(4*time.Second), tokenBucket(10, 10, sec(1), sec(5)))
	if n := decideN(b, t0.Add(4*time.Second), 50); n != 10 {
		t.Fatalf("after a same-strategy refresh admitted %d, want the 10 refilled in 4 s (capped), not a fresh bucket on top", n)
	}
	if s := b.State(t0.Add(8 * time.Second)); s != StateActive {
		t.Fatalf("refreshed at 4 s with TTL 5 s: at 8 s %v, want active", s)
	}
	// A different strategy replaces the bucket with a full one.
	b.Apply(t0.Add(4*time.Second), tokenBucket(7, 7, sec(1), sec(5)))
	if n := decideN(b, t0.Add(4*time.Second), 50); n != 7 {
		t.Fatalf("a changed strategy admitted %d at once, want a new full bucket of 7", n)
	}
}

func TestBucketExpiredBehaviours(t *testing.T) {
	at := t0.Add(3 * time.Second) // the 2 s assignment has expired
	for _, c := range []struct {
		name string
		set  Settings
		want int // of 10 requests at once, after 5 were taken from a bucket of 5
	}{
		{"none falls back to no-assignment allow", Settings{NoAssignment: AllowAll}, 10},
		{"none falls back to no-assignment deny", Settings{NoAssignment: DenyAll}, 0},
		{"fallback allow all", Settings{NoAssignment: DenyAll, Expired: ExpiredAllowAll}, 10},
		{"fallback deny all", Settings{NoAssignment: AllowAll, Expired: ExpiredDenyAll}, 0},
		{"reuse the last assignment", Settings{NoAssignment: DenyAll, Expired: ExpiredReuseLast}, 5}, // refilled 5/s for 3 s, capped at 5
	} {
		t.Run(c.name, func(t *testing.T) {
			b := NewBucket(c.set)
			b.Decide(t0)
			b.Apply(t0, tokenBucket(5, 5, sec(1), sec(2)))
			decideN(b, t0, 5)
			if n := decideN(b, at, 10); n != c.want {
				t.Fatalf("admitted %d of 10 after expiry, want %d", n, c.want)
			}
		})
	}
}

func TestBucketExpiredTimeoutAbandons(t *testing.T) {
	b := NewBucket(Settings{NoAssignment: DenyAll, Expired: ExpiredAllowAll, ExpiredTimeout: 4 * time.Second})
	b.Decide(t0)
	b.Apply(t0, tokenBucket(5, 5, sec(1), sec(2)))
	if ok, _ := b.Decide(t0.Add(5 * time.Second)); !ok {
		t.Fatal("3 s into a 4 s expired behaviour of allow all: denied")
	}
	ok, first := b.Decide(t0.Add(6 * time.Second))
	if ok || !first {
		t.Fatalf("after the expired behaviour's timeout: admitted %v, first %v; want the bucket abandoned and subscribed anew under deny all", ok, first)
	}
}

func TestBucketAbandon(t *testing.T) {
	b := NewBucket(Settings{})
	b.Decide(t0)
	b.Apply(t0, blanket(typev3.RateLimitStrategy_DENY_ALL, sec(60)))
	b.Abandon()
	if b.Tracked() {
		t.Fatal("an abandoned bucket is still reported")
	}
	if ok, first := b.Decide(t0); !ok || !first {
		t.Fatalf("after abandon: admitted %v, first %v; want no assignment (allow) and a new subscription", ok, first)
	}
}
