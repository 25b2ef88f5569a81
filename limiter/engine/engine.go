// Package engine decides rate limit requests. It is the middle of levee's
// data path: a request's items are matched against the rules, the limits that
// apply are taken from the buckets (local, or on their owners across the
// cluster), and the results become one decision per item plus an overall
// code.
//
// The engine works on plain Go types. The gRPC front ends (the Envoy rate
// limit service and levee's own API) translate wire messages to Items and
// Statuses and back; the engine never sees protobuf.
//
// Within one request the engine follows envoyproxy/ratelimit: items are
// decided independently, a matched rule's "replaces" drops the named limits
// from the same request (their buckets are not touched), shadow-mode rules
// are counted but always answer OK, and the overall code is OVER_LIMIT when
// any non-quota item is, or when every quota-mode item is.
//
// A rule with several limits (rate_limits) is decided as if its descriptor
// were sent once per limit, which is what an envoyproxy/ratelimit user does
// today: every limit's bucket is asked, and each takes the hits when they
// fit in it, even if another limit of the rule refuses. The item is over
// the limit when any of them refuses, and its status reports the tightest
// one: among refusals the one whose retry is furthest away (a caller
// retrying sooner would be refused again), otherwise the one with the
// fewest tokens left. replaces drops limits by name, one at a time.
package engine

import (
	"context"
	"math"
	"sync"
	"sync/atomic"

	"github.com/cespare/xxhash/v2"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/rules"
	"github.com/levee-dev/levee/shed"
)

// Buckets is where tokens are taken: a local limiter.Store, or the cluster,
// which sends each request to the node that owns its key.
type Buckets interface {
	// Take decides reqs at now (Unix nanoseconds), writing results[i] for
	// reqs[i]. It returns an error only when some request could not be
	// decided and its Fallback is FallbackClosed.
	Take(ctx context.Context, now int64, reqs []limiter.Request, results []limiter.Result) error
}

// LocalBuckets adapts a Store to Buckets for a single node.
type LocalBuckets struct{ Store *limiter.Store }

// Take implements Buckets.
func (b LocalBuckets) Take(_ context.Context, now int64, reqs []limiter.Request, results []limiter.Result) error {
	b.Store.TakeBatch(reqs, results, now)
	return nil
}

// Item is one quota a request draws from: either a rule, found by Domain and
// Entries, or (when Inline is set) a limit given by the caller.
type Item struct {
	Domain  string
	Entries []rules.Entry

	Inline          bool
	InlineKey       string
	InlineLimit     limiter.Limit
	InlineUnlimited bool

	// Override replaces the matched rule's limit with OverrideLimit, as an
	// Envoy descriptor's limit override does. It applies whenever the
	// domain exists, and the descriptor's full key and values name the
	// bucket.
	Override      bool
	OverrideLimit limiter.Limit

	// Hits is the number of tokens to take; 0 only looks.
	Hits uint64
	// Refund gives Hits tokens back instead of taking them (Envoy's
	// is_negative_hits); the bucket never holds more than its burst.
	Refund bool

	// Priority selects the reserve of a capacity-budget rule (one with
	// rate_limit.reserve). Unspecified falls back to a descriptor entry
	// with key "priority", then to the rule's own priority, then default.
	Priority shed.Priority
}

// Code is the outcome of an item or a request.
type Code uint8

const (
	// OK means the work may proceed.
	OK Code = iota
	// OverLimit means the work exceeds a quota.
	OverLimit
)

// Status is the decision on one Item.
type Status struct {
	Code Code
	// Rule is the matched rule, or nil (no rule, or an inline item).
	Rule *rules.Rule
	// Limited reports that a limit applied and a bucket was consulted;
	// Limit and Result are then set. With several limits they are the
	// tightest one's.
	Limited bool
	Limit   limiter.Limit
	Result  limiter.Result
	// RateLimit is the rule's limit that Limit and Result report (one of
	// Rule.Limits), or nil for an inline or overridden item.
	RateLimit *rules.RateLimit
	// Unlimited reports a rule with rate_limit.unlimited.
	Unlimited bool
	// Replaced reports a limit dropped by another rule's replaces.
	Replaced bool
	// Overridden reports that the item's own override limit applied.
	Overridden bool
	// ShadowOverLimit reports an item over the limit of a shadow-mode rule,
	// answered OK.
	ShadowOverLimit bool
}

// Engine decides requests against the current rules. It is safe for
// concurrent use; SetRules swaps the rules atomically between requests.
type Engine struct {
	rules   atomic.Pointer[rules.Config]
	buckets Buckets
	metrics *Metrics
	scratch sync.Pool
	decided atomic.Uint64
}

// Decided returns how many items the engine has decided, for rates on a
// status page.
func (e *Engine) Decided() uint64 { return e.decided.Load() }

type scratch struct {
	reqs    []limiter.Request
	results []limiter.Result
	index   []int   // the item of each request
	limit   []uint8 // the rule limit of each request (an index into Rule.Limits)
	active  []uint8 // per item, bit k set when limit k of its rule applies
}

// New returns an engine taking tokens from b under cfg (nil: no rules),
// counting decisions in m (nil: not counted).
func New(b Buckets, cfg *rules.Config, m *Metrics) *Engine {
	e := &Engine{buckets: b, metrics: m}
	e.scratch.New = func() any { return new(scratch) }
	e.SetRules(cfg)
	return e
}

// SetRules replaces the rules (nil: none). Requests in flight finish under
// the old ones.
func (e *Engine) SetRules(cfg *rules.Config) { e.rules.Store(cfg) }

// Rules returns the rules in force.
func (e *Engine) Rules() *rules.Config { return e.rules.Load() }

// inlineSeed keeps inline keys apart from rule descriptors in the key space.
const inlineSeed = 0x1eeec0de

// InlineKeyHash returns the bucket key of an inline limit's key.
func InlineKeyHash(key string) uint64 {
	d := xxhash.NewWithSeed(inlineSeed)
	rules.WriteField(d, key)
	return d.Sum64()
}

// overrideSeed keeps override buckets apart from rule buckets.
const overrideSeed = 0x0e1e1de

// descriptorHash names the bucket of a descriptor with a limit override: the
// domain and every entry's key and value.
func descriptorHash(domain string, entries []rules.Entry) uint64 {
	d := xxhash.NewWithSeed(overrideSeed)
	rules.WriteField(d, domain)
	for _, e := range entries {
		rules.WriteField(d, e.Key)
		rules.WriteField(d, e.Value)
	}
	return d.Sum64()
}

// Check decides items at now (Unix nanoseconds) and writes statuses[i] for
// items[i]; statuses must be as long as items. It returns the overall code.
// The items must have passed Validate. Check allocates nothing once its
// scratch space has grown to the request size.
func (e *Engine) Check(ctx context.Context, items []Item, statuses []Status, now int64) (Code, error) {
	cfg := e.rules.Load()
	sc := e.scratch.Get().(*scratch)
	defer e.scratch.Put(sc)
	sc.reqs, sc.results, sc.index, sc.limit = sc.reqs[:0], sc.results[:0], sc.index[:0], sc.limit[:0]
	sc.active = resize(sc.active, len(items))

	replacing := false
	for i := range items {
		it := &items[i]
		st := &statuses[i]
		*st = Status{}
		sc.active[i] = 0
		if it.Inline {
			if it.InlineUnlimited {
				st.Unlimited = true
				st.Result.Remaining = math.MaxUint32
				continue
			}
			st.Limited, st.Limit = true, it.InlineLimit
			continue
		}
		m := cfg.Match(it.Domain, it.Entries)
		r := m.Rule
		if it.Override && m.DomainFound {
			// An override is a plain limit: the matched rule's name,
			// replaces, shadow and quota modes do not apply to it.
			st.Limited, st.Limit, st.Overridden = true, it.OverrideLimit, true
			continue
		}
		if r == nil || !r.HasLimit {
			continue
		}
		st.Rule = r
		replacing = replacing || len(r.Replaces) > 0
		if r.Unlimited {
			st.Unlimited = true
			st.Result.Remaining = math.MaxUint32
			continue
		}
		st.Limited = true
		sc.active[i] = uint8(1<<len(r.Limits) - 1)
	}
	if replacing {
		dropReplaced(statuses, sc.active)
	}
	for i := range items {
		st := &statuses[i]
		it := &items[i]
		switch {
		case !st.Limited:
		case it.Inline:
			sc.add(i, 0, limiter.Request{Key: InlineKeyHash(it.InlineKey), Limit: st.Limit, Hits: it.Hits, Refund: it.Refund})
		case st.Overridden:
			sc.add(i, 0, limiter.Request{Key: descriptorHash(it.Domain, it.Entries), Limit: st.Limit, Hits: it.Hits, Refund: it.Refund})
		default:
			r := st.Rule
			p := priorityOf(it, r)
			for k := range r.Limits {
				if sc.active[i]&(1<<k) == 0 {
					continue
				}
				sc.add(i, k, limiter.Request{
					Key:      r.LimitKeyHash(it.Domain, it.Entries, k),
					Limit:    r.Limits[k].Limit,
					Hits:     it.Hits,
					Refund:   it.Refund,
					Reserve:  r.Limits[k].Reserve[p],
					Fallback: fallbackOf(r.FailureMode),
				})
			}
		}
	}
	sc.results = growResults(sc.results, len(sc.reqs))
	if len(sc.reqs) > 0 {
		if err := e.buckets.Take(ctx, now, sc.reqs, sc.results); err != nil {
			return OK, err
		}
	}
	// A rule's requests are adjacent: the first sets the item's status,
	// the others replace it when tighter.
	for k, i := range sc.index {
		st := &statuses[i]
		if k > 0 && sc.index[k-1] == i && !tighter(sc.results[k], st.Result) {
			continue
		}
		st.Result = sc.results[k]
		if st.Rule != nil && !st.Overridden {
			st.RateLimit = &st.Rule.Limits[sc.limit[k]]
			st.Limit = st.RateLimit.Limit
		}
	}
	for k, i := range sc.index {
		if k > 0 && sc.index[k-1] == i {
			continue
		}
		st := &statuses[i]
		if st.Result.Allowed {
			continue
		}
		if st.Rule != nil && st.Rule.ShadowMode {
			st.ShadowOverLimit = true
			continue
		}
		st.Code = OverLimit
	}
	e.metrics.Record(ctx, items, statuses)
	e.decided.Add(uint64(len(items)))
	return overall(statuses), nil
}

// tighter reports whether a constrains the caller more than b: a refusal
// more than an admission; of two refusals the one whose retry is further
// away (Never furthest); of two admissions the one with fewer tokens left,
// then the one full again later.
func tighter(a, b limiter.Result) bool {
	if a.Allowed != b.Allowed {
		return !a.Allowed
	}
	if !a.Allowed {
		return b.RetryAfter != limiter.Never && (a.RetryAfter == limiter.Never || a.RetryAfter > b.RetryAfter)
	}
	if a.Remaining != b.Remaining {
		return a.Remaining < b.Remaining
	}
	return a.ResetAfter > b.ResetAfter
}

// PriorityKey is the descriptor entry key that carries a request's priority
// to a capacity budget, for callers (Envoy) that have no other way to say it.
const PriorityKey = "priority"

// priorityOf is the priority an item draws on r's budget with.
func priorityOf(it *Item, r *rules.Rule) shed.Priority {
	if it.Priority != shed.Unspecified {
		return it.Priority.Normalize()
	}
	for i := len(it.Entries) - 1; i >= 0; i-- {
		if it.Entries[i].Key == PriorityKey {
			if p, err := shed.ParsePriority(it.Entries[i].Value); err == nil {
				return p
			}
		}
	}
	return r.Priority.Normalize()
}

// fallbackOf maps a rule's failure_mode to the bucket layer's fallback.
func fallbackOf(m rules.FailureMode) limiter.Fallback {
	switch m {
	case rules.FailureOpen:
		return limiter.FallbackOpen
	case rules.FailureClosed:
		return limiter.FallbackClosed
	}
	return limiter.FallbackLocal
}

func (sc *scratch) add(i, limit int, r limiter.Request) {
	sc.reqs = append(sc.reqs, r)
	sc.index = append(sc.index, i)
	sc.limit = append(sc.limit, uint8(limit))
}

func growResults(r []limiter.Result, n int) []limiter.Result {
	if cap(r) < n {
		return make([]limiter.Result, n)
	}
	return r[:n]
}

// dropReplaced applies rules' replaces: a limit whose name another matched
// rule of the request replaces is dropped, and its bucket left alone
// (envoyproxy/ratelimit's semantics). active holds each item's applying
// limits; an item whose limits are all dropped is answered OK with no limit.
func dropReplaced(statuses []Status, active []uint8) {
	for i := range statuses {
		ri := statuses[i].Rule
		if ri == nil || !statuses[i].Limited {
			continue
		}
		for k := range ri.Limits {
			if name := ri.Limits[k].Name; name != "" && replacedBy(statuses, i, name) {
				active[i] &^= 1 << k
			}
		}
		if active[i] == 0 {
			statuses[i] = Status{Rule: ri, Replaced: true}
		}
	}
}

// replacedBy reports whether a rule matched by an item other than i
// replaces the limit named name.
func replacedBy(statuses []Status, i int, name string) bool {
	for j := range statuses {
		rj := statuses[j].Rule
		if j == i || rj == nil {
			continue
		}
		for _, n := range rj.Replaces {
			if n == name {
				return true
			}
		}
	}
	return false
}

// overall combines item codes: OVER_LIMIT if any non-quota item is over, or
// if there are quota-mode items and all of them are over.
func overall(statuses []Status) Code {
	quota, quotaOver := 0, 0
	for i := range statuses {
		st := &statuses[i]
		if st.Rule != nil && st.Rule.QuotaMode && st.Limited {
			quota++
			if st.Code == OverLimit {
				quotaOver++
			}
			continue
		}
		if st.Code == OverLimit {
			return OverLimit
		}
	}
	if quota > 0 && quota == quotaOver {
		return OverLimit
	}
	return OK
}
