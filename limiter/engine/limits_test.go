package engine

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/rules"
)

const multiRules = `
domain: m
descriptors:
  - key: user
    rate_limits:
      - {name: fast, unit: second, requests_per_unit: 3}
      - {name: slow, unit: minute, unit_multiplier: 2, requests_per_unit: 10, burst: 5}
      - {period: 7s, requests_per_unit: 2}
  - key: tenant
    rate_limit: {unit: hour, requests_per_unit: 1000, replaces: [{name: fast}]}
  - key: both
    rate_limit: {unit: hour, requests_per_unit: 1000, replaces: [{name: fast}, {name: slow}]}
  - key: pair
    rate_limits: [{name: p1, unit: second, requests_per_unit: 1}, {name: p2, unit: day, requests_per_unit: 1}]
`

// TestSeveralLimitsAgainstModel: a rule with several limits decides like a
// model that asks every limit on its own (each limit one bucket, checked
// with limiter.Limit.Take, which is tested against its own model), refuses
// when any refuses, and reports the tightest by the documented order.
func TestSeveralLimitsAgainstModel(t *testing.T) {
	cfg := mustConfig(t, "m.yaml", multiRules)
	e := New(LocalBuckets{Store: limiter.NewStore(1000)}, cfg, nil)
	limits := cfg.Match("m", []rules.Entry{{Key: "user", Value: "u"}}).Rule.Limits
	tats := make([]int64, len(limits))
	rng := rand.New(rand.NewPCG(18, 4))
	now := t0
	refusals, partial := 0, 0
	for step := range 3000 {
		now += rng.Int64N(int64(700 * time.Millisecond))
		hits := uint64(rng.IntN(3))
		// The model: every limit takes on its own.
		results := make([]limiter.Result, len(limits))
		over := false
		for k, l := range limits {
			tats[k], results[k] = l.Limit.Take(tats[k], hits, now)
			over = over || !results[k].Allowed
		}
		best := modelTightest(results)
		for k := range results {
			if over && results[k].Allowed && hits > 0 {
				partial++ // a limit took while another refused
				break
			}
		}

		it := Item{Domain: "m", Entries: []rules.Entry{{Key: "user", Value: "u"}}, Hits: hits}
		sts := make([]Status, 1)
		code, err := e.Check(t.Context(), []Item{it}, sts, now)
		if err != nil {
			t.Fatal(err)
		}
		st := sts[0]
		if want := map[bool]Code{false: OK, true: OverLimit}[over]; code != want || st.Code != want {
			t.Fatalf("step %d: code %v/%v, model %v (results %+v)", step, code, st.Code, want, results)
		}
		if over {
			refusals++
		}
		if !st.Limited || st.Result != results[best] || st.RateLimit != &limits[best] || st.Limit != limits[best].Limit {
			t.Fatalf("step %d: reported %+v (limit %+v), model limit %d %+v of %+v", step, st.Result, st.RateLimit, best, results[best], results)
		}
	}
	if refusals == 0 || partial == 0 {
		t.Fatalf("the sequence never exercised refusals (%d) or partial takes (%d)", refusals, partial)
	}
}

// modelTightest picks the limit to report, written out from the documented
// order rather than from the engine's comparison: refusals first, the
// longest retry among them (never being longest); otherwise the fewest
// tokens left, then the latest reset; the first limit on a tie.
func modelTightest(rs []limiter.Result) int {
	score := func(r limiter.Result) [3]int64 {
		if !r.Allowed {
			retry := int64(r.RetryAfter)
			if r.RetryAfter == limiter.Never {
				retry = 1 << 62
			}
			return [3]int64{1, retry, 0}
		}
		return [3]int64{0, -int64(r.Remaining), int64(r.ResetAfter)}
	}
	best := 0
	for k := 1; k < len(rs); k++ {
		a, b := score(rs[k]), score(rs[best])
		for i := range a {
			if a[i] != b[i] {
				if a[i] > b[i] {
					best = k
				}
				break
			}
		}
	}
	return best
}

// TestReplacesDropsOneLimit: replaces drops limits by name; the rule's other
// limits still apply and only theirs are charged.
func TestReplacesDropsOneLimit(t *testing.T) {
	cfg := mustConfig(t, "m.yaml", multiRules)
	e := New(LocalBuckets{Store: limiter.NewStore(1000)}, cfg, nil)
	user := Item{Domain: "m", Entries: []rules.Entry{{Key: "user", Value: "u"}}, Hits: 1}
	tenant := Item{Domain: "m", Entries: []rules.Entry{{Key: "tenant", Value: "t"}}, Hits: 1}
	both := Item{Domain: "m", Entries: []rules.Entry{{Key: "both", Value: "b"}}, Hits: 1}
	sts := make([]Status, 2)
	// Without "fast" the 7 s limit (2 tokens) is the tightest, and the third
	// request refused; with "fast" it would have been the first at 3.
	for i := range 3 {
		code, err := e.Check(t.Context(), []Item{user, tenant}, sts, t0)
		if err != nil {
			t.Fatal(err)
		}
		if sts[0].Replaced || !sts[0].Limited || sts[0].RateLimit == nil || sts[0].RateLimit.Name == "fast" {
			t.Fatalf("request %d: %+v", i, sts[0])
		}
		if over := i == 2; (code == OverLimit) != over {
			t.Fatalf("request %d: %v %+v", i, code, sts[0])
		}
	}
	// "fast" was never charged: alone, user=u still has its 3 per second
	// there, and the 7 s limit is what refuses.
	code, err := e.Check(t.Context(), []Item{user}, sts[:1], t0)
	if err != nil || code != OverLimit || sts[0].RateLimit.Window() != 7*time.Second {
		t.Fatalf("alone: %v %v %+v", code, err, sts[0])
	}
	// Dropping two limits of three leaves the third.
	if _, err := e.Check(t.Context(), []Item{user, both}, sts, t0); err != nil {
		t.Fatal(err)
	}
	if sts[0].Replaced || sts[0].Code != OverLimit || sts[0].RateLimit.Window() != 7*time.Second {
		t.Fatalf("fast and slow replaced: %+v", sts[0])
	}
	// Dropping every limit answers OK with no limit, as envoyproxy/ratelimit
	// does, and charges nothing: a rule replacing both of pair's limits.
	pair := Item{Domain: "m", Entries: []rules.Entry{{Key: "pair", Value: "p"}}, Hits: 1}
	cfg2 := mustConfig(t, "m.yaml", multiRules+`  - key: drop
    rate_limit: {unit: hour, requests_per_unit: 1000, replaces: [{name: p1}, {name: p2}]}
`)
	e.SetRules(cfg2)
	drop := Item{Domain: "m", Entries: []rules.Entry{{Key: "drop", Value: "d"}}, Hits: 1}
	for range 3 {
		code, err := e.Check(t.Context(), []Item{pair, drop}, sts, t0)
		if err != nil || code != OK || !sts[0].Replaced || sts[0].Limited {
			t.Fatalf("%v %v %+v", code, err, sts[0])
		}
	}
	code, err = e.Check(t.Context(), []Item{pair}, sts[:1], t0)
	if err != nil || code != OK || sts[0].Result.Remaining != 0 {
		t.Fatalf("pair was charged while replaced, or not after: %v %v %+v", code, err, sts[0])
	}
}
