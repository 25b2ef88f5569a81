package quotasim

import (
	"fmt"
	"math"
	"time"

	rlqsv3 "github.com/envoyproxy/go-control-plane/envoy/service/rate_limit_quota/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Behavior is what a bucket does with a request while it has no live
// assignment: the filter's no_assignment_behavior and the fallback_rate_limit
// of its expired_assignment_behavior, as blanket rules.
type Behavior int

const (
	AllowAll Behavior = iota // the filter's default with no assignment
	DenyAll
)

// Expired is the filter's expired_assignment_behavior.
type Expired int

const (
	// ExpiredAsNoAssignment: none configured; the bucket falls back to its
	// no-assignment behaviour.
	ExpiredAsNoAssignment Expired = iota
	ExpiredAllowAll               // fallback_rate_limit: blanket_rule ALLOW_ALL
	ExpiredDenyAll                // fallback_rate_limit: blanket_rule DENY_ALL
	ExpiredReuseLast
)

// Settings are the filter's bucket settings the simulation models.
type Settings struct {
	NoAssignment Behavior
	Expired      Expired
	// ExpiredTimeout is expired_assignment_behavior_timeout: how long the
	// expired behaviour applies before the bucket is abandoned and
	// subscribed anew. Zero: for as long as no new assignment comes.
	ExpiredTimeout time.Duration
}

// Failure is one way an answer from the quota server breaks on what real
// Envoys do with it (the filter as of 2026).
type Failure string

const (
	// FailFillSubSecond: a token bucket whose fill_interval is under a
	// second; Envoy truncates it to 0 s and divides by it. The simulation
	// records it and keeps the bucket's previous state.
	FailFillSubSecond Failure = "fill_interval under 1 s (division by zero in Envoy)"
	// FailFillFraction: a fill_interval that is not whole seconds; Envoy
	// drops the fraction.
	FailFillFraction Failure = "fill_interval not whole seconds (truncated)"
	// FailTTLUnset: an assignment with no TTL; Envoy expires it at once.
	FailTTLUnset Failure = "assignment_time_to_live unset (expires at once in Envoy)"
	// FailTTLFraction: a TTL that is not whole seconds; Envoy drops the
	// fraction (a TTL under a second expires at once).
	FailTTLFraction Failure = "assignment_time_to_live not whole seconds (truncated)"
	// FailRequestsPerTimeUnit: a requests_per_time_unit strategy, which
	// Envoy ignores.
	FailRequestsPerTimeUnit Failure = "requests_per_time_unit strategy (ignored by Envoy)"
	// FailStrategyUnset: an assignment without a rate_limit_strategy,
	// which Envoy ignores (the proto says allow all).
	FailStrategyUnset Failure = "rate_limit_strategy unset (ignored by Envoy)"
	// FailTokensPerFillUnset: a token bucket without tokens_per_fill; Envoy
	// reads it as 0 (not the proto's default of 1) and never refills.
	FailTokensPerFillUnset Failure = "tokens_per_fill unset (Envoy refills nothing)"
	// FailFillSecondsOnly: a token bucket that differs from the live one
	// only in fill_interval's seconds; Envoy compares max_tokens,
	// tokens_per_fill and fill_interval's nanos only, and keeps the old
	// bucket at the old rate.
	FailFillSecondsOnly Failure = "token bucket changed only in fill_interval seconds (Envoy keeps the old one)"
	// FailUnknownBucket: an action without a bucket id, or for a bucket this
	// Envoy never reported.
	FailUnknownBucket Failure = "action for a bucket the Envoy does not track"
	// FailEmptyAction: a bucket action with neither an assignment nor an
	// abandon.
	FailEmptyAction Failure = "bucket action with no action"
)

// strategy is a parsed rate_limit_strategy.
type strategy struct {
	deny bool                // blanket DENY_ALL
	tb   *typev3.TokenBucket // nil: a blanket rule
	rate float64             // tokens a second Envoy refills at; +Inf for ALLOW_ALL, 0 for DENY_ALL
}

// parseStrategy reads a strategy as Envoy does. ok is false when Envoy
// would not apply it (it ignores it, or fails on it).
func parseStrategy(s *typev3.RateLimitStrategy) (st strategy, fails []Failure, ok bool) {
	switch v := s.GetStrategy().(type) {
	case nil:
		return st, []Failure{FailStrategyUnset}, false
	case *typev3.RateLimitStrategy_BlanketRule_:
		st.deny = v.BlanketRule == typev3.RateLimitStrategy_DENY_ALL
		if !st.deny {
			st.rate = math.Inf(1)
		}
	case *typev3.RateLimitStrategy_RequestsPerTimeUnit_:
		return st, []Failure{FailRequestsPerTimeUnit}, false
	case *typev3.RateLimitStrategy_TokenBucket:
		tb := v.TokenBucket
		fill := tb.GetFillInterval()
		if fill.GetSeconds() <= 0 {
			return st, []Failure{FailFillSubSecond}, false
		}
		if fill.GetNanos() != 0 {
			fails = append(fails, FailFillFraction)
		}
		if tb.GetTokensPerFill() == nil {
			fails = append(fails, FailTokensPerFillUnset)
		}
		st.tb = tb
		st.rate = float64(tb.GetTokensPerFill().GetValue()) / float64(fill.GetSeconds())
	}
	return st, fails, true
}

// sameTokenBucket is Envoy's test for keeping a bucket's tokens across an
// assignment: max_tokens, tokens_per_fill and fill_interval's nanos equal
// (its seconds are not compared).
func sameTokenBucket(a, b *typev3.TokenBucket) bool {
	return a != nil && b != nil && a.GetMaxTokens() == b.GetMaxTokens() &&
		a.GetTokensPerFill().GetValue() == b.GetTokensPerFill().GetValue() &&
		a.GetFillInterval().GetNanos() == b.GetFillInterval().GetNanos()
}

// assignment is a bucket's live or last assignment.
type assignment struct {
	st       strategy
	tb       *TokenBucket // for a token bucket strategy
	expires  time.Time
	received time.Time
}

func (a *assignment) decide(now time.Time) bool {
	switch {
	case a.st.tb != nil:
		return a.tb.Take(now)
	default:
		return !a.st.deny
	}
}

// Bucket is one bucket id in one simulated Envoy: the filter's state for
// it, driven by requests, report ticks and the server's actions. It is a
// pure state machine; time is passed in.
type Bucket struct {
	set Settings

	subscribed bool      // a first report is owed (false) or sent (true)
	lastReport time.Time // when the last report for it was built
	allowed    uint64    // since the last report
	denied     uint64

	active     *assignment // nil: no assignment since subscribing
	expiredAt  time.Time   // when the active assignment expired; zero if it has not
	serverZero bool        // the active assignment came with an explicit TTL of 0
}

// NewBucket returns a bucket that has seen no request.
func NewBucket(set Settings) *Bucket { return &Bucket{set: set} }

// State is what governs a bucket's requests at a moment.
type State int

const (
	StateNoAssignment State = iota
	StateActive
	StateExpired
)

func (s State) String() string {
	return [...]string{"no-assignment", "active", "expired"}[s]
}

// State returns the bucket's state at now, abandoning it first when its
// expired behaviour has run out.
func (b *Bucket) State(now time.Time) State {
	if b.active == nil {
		return StateNoAssignment
	}
	if now.Before(b.active.expires) {
		return StateActive
	}
	if b.expiredAt.IsZero() {
		b.expiredAt = b.active.expires
	}
	if b.set.ExpiredTimeout > 0 && !now.Before(b.expiredAt.Add(b.set.ExpiredTimeout)) {
		// Abandoned: the filter forgets the bucket; the next request
		// subscribes anew.
		*b = Bucket{set: b.set}
		return StateNoAssignment
	}
	return StateExpired
}

// ExpiredSince returns when the active assignment expired, zero if it has
// not (or there is none), and whether the server expired it on purpose
// (TTL 0, as a draining node does).
func (b *Bucket) ExpiredSince(now time.Time) (time.Time, bool) {
	if b.State(now) != StateExpired {
		return time.Time{}, false
	}
	return b.expiredAt, b.serverZero
}

// Decide admits or denies one request at now. first is true when the
// request subscribes the bucket: Envoy then sends a report at once.
func (b *Bucket) Decide(now time.Time) (admit, first bool) {
	switch b.State(now) {
	case StateActive:
		admit = b.active.decide(now)
	case StateExpired:
		switch b.set.Expired {
		case ExpiredAllowAll:
			admit = true
		case ExpiredDenyAll:
			admit = false
		case ExpiredReuseLast:
			admit = b.active.decide(now)
		default:
			admit = b.set.NoAssignment == AllowAll
		}
	default:
		admit = b.set.NoAssignment == AllowAll
	}
	if admit {
		b.allowed++
	} else {
		b.denied++
	}
	if !b.subscribed {
		b.subscribed = true
		first = true
	}
	return admit, first
}

// Tracked reports whether the bucket has been subscribed (and so is
// reported on the timer).
func (b *Bucket) Tracked() bool { return b.subscribed }

// Report builds the bucket's usage report at now and starts a new
// reporting period, whether or not the report reaches a server (reports
// are lost while a stream is down). time_elapsed is whole seconds since
// the last report, truncated, and 0 s on the first: what Envoy sends.
func (b *Bucket) Report(now time.Time, id *rlqsv3.BucketId) *rlqsv3.RateLimitQuotaUsageReports_BucketQuotaUsage {
	var el time.Duration
	if !b.lastReport.IsZero() {
		el = now.Sub(b.lastReport).Truncate(time.Second)
	}
	u := &rlqsv3.RateLimitQuotaUsageReports_BucketQuotaUsage{
		BucketId:           id,
		TimeElapsed:        durationpb.New(el),
		NumRequestsAllowed: b.allowed,
		NumRequestsDenied:  b.denied,
	}
	b.allowed, b.denied, b.lastReport = 0, 0, now
	return u
}

// Apply applies a quota assignment received at now, as Envoy does: every
// assignment it applies restarts the TTL, read in whole seconds (an unset
// one expires at once); a token bucket the same as the live one (by
// Envoy's test, sameTokenBucket) keeps its tokens, any other starts a new,
// full bucket. It returns the ways the assignment breaks on real Envoys.
func (b *Bucket) Apply(now time.Time, qa *rlqsv3.RateLimitQuotaResponse_BucketAction_QuotaAssignmentAction) []Failure {
	st, fails, ok := parseStrategy(qa.GetRateLimitStrategy())
	if !ok {
		return fails
	}
	ttl := qa.GetAssignmentTimeToLive()
	switch {
	case ttl == nil:
		fails = append(fails, FailTTLUnset)
	case ttl.GetNanos() != 0:
		fails = append(fails, FailTTLFraction)
	}
	expires := now.Add(time.Duration(ttl.GetSeconds()) * time.Second)
	zero := ttl != nil && ttl.GetSeconds() == 0 && ttl.GetNanos() == 0
	a := &assignment{st: st, expires: expires, received: now}
	if st.tb != nil {
		if b.State(now) == StateActive && sameTokenBucket(b.active.st.tb, st.tb) {
			a.tb = b.active.tb
			if b.active.st.tb.GetFillInterval().GetSeconds() != st.tb.GetFillInterval().GetSeconds() {
				fails = append(fails, FailFillSecondsOnly)
				a.st = b.active.st // the old rate goes on
			}
		} else {
			a.tb = NewTokenBucket(now, st.tb.GetMaxTokens(), st.rate)
		}
	}
	b.active, b.expiredAt, b.serverZero = a, time.Time{}, zero
	return fails
}

// Abandon forgets the bucket, as on an abandon_action: it is no longer
// reported, and the next request subscribes it anew.
func (b *Bucket) Abandon() { *b = Bucket{set: b.set} }

// Rate returns the rate the bucket's live assignment admits at, in
// requests a second (+Inf for allow-all), and false when there is no
// live assignment at now.
func (b *Bucket) Rate(now time.Time) (float64, bool) {
	if b.State(now) != StateActive {
		return 0, false
	}
	return b.active.st.rate, true
}

// Expires returns when the live assignment expires.
func (b *Bucket) Expires() time.Time {
	if b.active == nil {
		return time.Time{}
	}
	return b.active.expires
}

func (f Failure) String() string { return string(f) }

// ParseBehavior reads "allow" or "deny".
func ParseBehavior(s string) (Behavior, error) {
	switch s {
	case "allow":
		return AllowAll, nil
	case "deny":
		return DenyAll, nil
	}
	return 0, fmt.Errorf("no-assignment behaviour %q: want allow or deny", s)
}

// ParseExpired reads "none", "allow", "deny" or "reuse".
func ParseExpired(s string) (Expired, error) {
	switch s {
	case "none", "":
		return ExpiredAsNoAssignment, nil
	case "allow":
		return ExpiredAllowAll, nil
	case "deny":
		return ExpiredDenyAll, nil
	case "reuse":
		return ExpiredReuseLast, nil
	}
	return 0, fmt.Errorf("expired behaviour %q: want none, allow, deny or reuse", s)
}
