package client

import (
	"time"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/rules"
)

// Item is one quota a check draws on: a rule, found by Domain and Entries,
// or, when Key is set, an inline limit of the caller's own.
type Item struct {
	// Domain and Entries name a rule as an Envoy descriptor does: the
	// domain of the rule file and the (key, value) entries, outermost
	// first.
	Domain  string
	Entries []rules.Entry
	// Key and Limit define an inline limit: Limit.Rate tokens every
	// Limit.Period in a bucket of Limit.Burst (0: Rate), kept under Key.
	// Callers namespace their own keys.
	Key   string
	Limit limiter.Limit
	// Hits is the number of tokens to take; 0 takes one.
	Hits uint64
}

// Rule returns an item drawing one token from the rule that domain and
// entries match.
func Rule(domain string, entries ...rules.Entry) Item {
	return Item{Domain: domain, Entries: entries}
}

// Inline returns an item drawing one token from the caller's own limit l,
// kept under key.
func Inline(key string, l limiter.Limit) Item {
	return Item{Key: key, Limit: l}
}

// hits is the number of tokens the item takes.
func (it *Item) hits() uint64 { return max(it.Hits, 1) }

// Decision is the answer to one check.
type Decision struct {
	// Allowed says whether the work may proceed.
	Allowed bool
	// Items holds one status per item, in order. It is nil when levee did
	// not decide (Err is set). On a refusal from the cache only the
	// refused item's status is known; the others are zero.
	Items []Status
	// RetryAfter is, on a refusal, the time until the same check could
	// pass: the furthest retry among the refusing items. It is zero when
	// no item says (a request no wait will admit, or a failure).
	RetryAfter time.Duration
	// Cached reports a refusal from the refusal cache: no call was made.
	Cached bool
	// Err says why levee did not decide: the sidecar was unreachable, too
	// slow for the budget, or refused the request as invalid. The failure
	// mode decided Allowed.
	Err error
}

// Status is levee's decision on one item.
type Status struct {
	// OverLimit reports that the item exceeds its quota.
	OverLimit bool
	// Limited reports that a limit applied; the fields below are set. An
	// item no rule limits, or an unlimited rule, is OK and not limited.
	// With several limits on a rule they describe the tightest.
	Limited bool
	// Rate tokens are added every Period by the limit that applied.
	Rate   uint64
	Period time.Duration
	// Remaining is the tokens left after this decision.
	Remaining uint64
	// ResetAfter is the time until the bucket is full again.
	ResetAfter time.Duration
	// RetryAfter is, when OverLimit, the time until the item could pass,
	// or limiter.Never when no wait will admit it.
	RetryAfter time.Duration
	// Policy names the limit: its name in the rule file, or else the
	// rule's path, or "inline" for an inline limit.
	Policy string
	// Shadow reports a shadow-mode rule, answered OK even over its limit;
	// OverLimitInShadow says whether it was.
	Shadow, OverLimitInShadow bool
	// QuotaMode reports a quota-mode rule: its refusal refuses the check
	// only when every quota-mode item is over.
	QuotaMode bool
}
