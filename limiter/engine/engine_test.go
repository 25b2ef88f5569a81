package engine

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/rules"
	"github.com/levee-dev/levee/shed"
)

var t0 = time.Date(2026, 11, 21, 6, 0, 0, 0, time.UTC).UnixNano()

const testRules = `
domain: d
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 2, name: per_user}
  - key: tenant
    rate_limit: {unit: minute, requests_per_unit: 100, replaces: [{name: per_user}]}
  - key: shadow
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: quota_a
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: quota_b
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: free
    rate_limit: {unlimited: true}
  - key: closed
    failure_mode: closed
    rate_limit: {unit: minute, requests_per_unit: 1}
`

// mustConfig parses one rule file into a Config.
func mustConfig(t testing.TB, file, yaml string) *rules.Config {
	t.Helper()
	d, err := rules.Parse(file, []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := rules.NewConfig(d)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func newEngine(t testing.TB, b Buckets) *Engine {
	t.Helper()
	cfg := mustConfig(t, "test.yaml", testRules)
	if b == nil {
		b = LocalBuckets{Store: limiter.NewStore(1000)}
	}
	return New(b, cfg, nil)
}

func item(key, value string) Item {
	return Item{Domain: "d", Entries: []rules.Entry{{Key: key, Value: value}}, Hits: 1}
}

func check(t *testing.T, e *Engine, items ...Item) (Code, []Status) {
	t.Helper()
	if err := Validate(items, Fields{Items: "items"}); err != nil {
		t.Fatal(err)
	}
	sts := make([]Status, len(items))
	code, err := e.Check(context.Background(), items, sts, t0)
	if err != nil {
		t.Fatal(err)
	}
	return code, sts
}

func TestCheckLimitsAndOverall(t *testing.T) {
	e := newEngine(t, nil)
	for i := range 2 {
		code, sts := check(t, e, item("user", "a"))
		if code != OK || !sts[0].Limited || sts[0].Result.Remaining != uint64(1-i) {
			t.Fatalf("take %d: %v %+v", i, code, sts[0])
		}
	}
	code, sts := check(t, e, item("user", "b"), item("user", "a"), item("nope", "x"))
	if code != OverLimit || sts[0].Code != OK || sts[1].Code != OverLimit || sts[2].Code != OK || sts[2].Limited {
		t.Fatalf("overall %v, statuses %+v", code, sts)
	}
}

func TestReplacesLeavesBucketAlone(t *testing.T) {
	e := newEngine(t, nil)
	for range 5 {
		code, sts := check(t, e, item("user", "a"), item("tenant", "t"))
		if code != OK || !sts[0].Replaced || sts[0].Limited || !sts[1].Limited {
			t.Fatalf("%v %+v", code, sts)
		}
	}
	// user=a was never charged: its full burst of 2 is still there.
	_, sts := check(t, e, item("user", "a"))
	if sts[0].Result.Remaining != 1 {
		t.Fatalf("replaced bucket was charged: %+v", sts[0])
	}
}

func TestShadowModeAnswersOK(t *testing.T) {
	e := newEngine(t, nil)
	check(t, e, item("shadow", "s"))
	code, sts := check(t, e, item("shadow", "s"))
	if code != OK || sts[0].Code != OK || !sts[0].ShadowOverLimit {
		t.Fatalf("%v %+v", code, sts[0])
	}
}

func TestQuotaModeOverallNeedsAllOver(t *testing.T) {
	e := newEngine(t, nil)
	check(t, e, item("quota_a", "x"))
	code, sts := check(t, e, item("quota_a", "x"), item("quota_b", "x"))
	if code != OK || sts[0].Code != OverLimit || sts[1].Code != OK {
		t.Fatalf("one of two quota items over: %v %+v", code, sts)
	}
	code, _ = check(t, e, item("quota_a", "x"), item("quota_b", "x"))
	if code != OverLimit {
		t.Fatalf("both quota items over, overall %v", code)
	}
}

func TestUnlimitedAndInlineAndOverride(t *testing.T) {
	e := newEngine(t, nil)
	_, sts := check(t, e, item("free", "x"))
	if !sts[0].Unlimited || sts[0].Limited || sts[0].Result.Remaining != 1<<32-1 {
		t.Fatalf("unlimited: %+v", sts[0])
	}
	in := Item{Inline: true, InlineKey: "k", InlineLimit: limiter.Limit{Rate: 1, Period: time.Second}, Hits: 1}
	if _, sts := check(t, e, in, in); sts[0].Code != OK || sts[1].Code != OverLimit {
		t.Fatalf("inline: %+v", sts)
	}
	ov := item("user", "z")
	ov.Override, ov.OverrideLimit = true, limiter.Limit{Rate: 1, Period: time.Hour}
	if _, sts := check(t, e, ov, ov); !sts[0].Overridden || sts[0].Code != OK || sts[1].Code != OverLimit {
		t.Fatalf("override: %+v", sts)
	}
	ov.Domain = "unknown"
	if _, sts := check(t, e, ov); sts[0].Limited {
		t.Fatalf("override on an unknown domain applied: %+v", sts[0])
	}
}

type failing struct{}

func (failing) Take(context.Context, int64, []limiter.Request, []limiter.Result) error {
	return limiter.ErrUndecided
}

func TestBucketsErrorIsReturned(t *testing.T) {
	e := newEngine(t, failing{})
	_, err := e.Check(context.Background(), []Item{item("closed", "x")}, make([]Status, 1), t0)
	if !errors.Is(err, limiter.ErrUndecided) {
		t.Fatalf("err = %v", err)
	}
}

func TestValidateNamesFields(t *testing.T) {
	long := string(make([]byte, MaxStringBytes+1))
	f := Fields{Items: "descriptors", Domain: "domain", Hits: ".hits_addend"}
	for _, tc := range []struct {
		items []Item
		want  string
	}{
		{nil, "descriptors"},
		{make([]Item, MaxItems+1), "descriptors"},
		{[]Item{{Domain: "d"}}, "descriptors[0].entries"},
		{[]Item{item("user", "a"), {Domain: "d", Entries: []rules.Entry{{Key: ""}}}}, "descriptors[1].entries[0].key"},
		{[]Item{{Domain: "d", Entries: []rules.Entry{{Key: long}}}}, "descriptors[0].entries[0].key"},
		{[]Item{{Domain: "d", Entries: []rules.Entry{{Key: "k", Value: long}}}}, "descriptors[0].entries[0].value"},
		{[]Item{{Domain: "d", Entries: make([]rules.Entry, MaxEntries+1)}}, "descriptors[0].entries"},
		{[]Item{{Domain: "d", Entries: []rules.Entry{{Key: "k"}}, Hits: MaxHits + 1}}, "descriptors[0].hits_addend"},
		{[]Item{{Inline: true}}, "descriptors[0].key"},
		{[]Item{{Inline: true, InlineKey: "k"}}, "descriptors[0].period"},
	} {
		err := Validate(tc.items, f)
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.want {
			t.Errorf("Validate: got %v, want field %q", err, tc.want)
		}
	}
}

func TestCheckAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are checked without -race (sync.Pool drops items under it)")
	}
	e := newEngine(t, nil)
	items := []Item{item("user", "a"), item("tenant", "t"), item("nope", "x")}
	sts := make([]Status, len(items))
	ctx := context.Background()
	now := t0
	if n := testing.AllocsPerRun(500, func() {
		now += int64(time.Minute)
		_, _ = e.Check(ctx, items, sts, now)
	}); n != 0 {
		t.Fatalf("Check allocates %v times", n)
	}
}

func BenchmarkCheck(b *testing.B) {
	for _, n := range []int{1, 5} {
		b.Run(map[int]string{1: "1desc", 5: "5desc"}[n], func(b *testing.B) {
			e := newEngine(b, LocalBuckets{Store: limiter.NewStore(1 << 20)})
			items := make([]Item, n)
			for i := range items {
				items[i] = item("user", string(rune('a'+i)))
			}
			sts := make([]Status, n)
			ctx := context.Background()
			now := t0
			b.ReportAllocs()
			for b.Loop() {
				now += int64(time.Minute)
				_, _ = e.Check(ctx, items, sts, now)
			}
		})
	}
}

func TestCapacityBudgetReserves(t *testing.T) {
	cfg := mustConfig(t, "budget.yaml", `
domain: capacity
descriptors:
  - key: resource
    value: timeline
    descriptors:
      - key: priority
        value: "*"
        share_threshold: true
        rate_limit:
          unit: hour
          requests_per_unit: 10
          reserve: {default: 20%, sheddable: 0.5}
`)
	e := New(LocalBuckets{Store: limiter.NewStore(100)}, cfg, nil)
	at := func(p string) Item {
		return Item{Domain: "capacity", Entries: []rules.Entry{{Key: "resource", Value: "timeline"}, {Key: "priority", Value: p}}, Hits: 1}
	}
	admitted := map[string]int{}
	// Sheddable runs dry at 5 left, default (and low, which inherits it) at
	// 2, high and critical may take the last tokens.
	for _, p := range []string{"sheddable", "low", "default", "high", "critical"} {
		for range 10 {
			if _, sts := check(t, e, at(p)); sts[0].Code == OK {
				admitted[p]++
			}
		}
	}
	want := map[string]int{"sheddable": 5, "low": 3, "default": 0, "high": 2, "critical": 0}
	for p, n := range want {
		if admitted[p] != n {
			t.Errorf("%s admitted %d, want %d (all: %v)", p, admitted[p], n, admitted)
		}
	}
	// The request-level priority wins over the entry.
	it := at("sheddable")
	it.Priority = shed.Critical
	e2 := New(LocalBuckets{Store: limiter.NewStore(100)}, cfg, nil)
	for range 10 {
		if _, sts := check(t, e2, it); sts[0].Code != OK {
			t.Fatal("critical request refused while tokens remained")
		}
	}
}

// A rule's own priority, parsed when the rule loads, picks the reserve for
// items that name none; an item's priority still wins over it.
func TestRulePriorityPicksReserve(t *testing.T) {
	cfg := mustConfig(t, "prio.yaml", `
domain: capacity
descriptors:
  - key: batch
    priority: sheddable
    rate_limit:
      unit: hour
      requests_per_unit: 10
      reserve: {sheddable: 50%}
  - key: plain
    rate_limit:
      unit: hour
      requests_per_unit: 10
      reserve: {sheddable: 50%}
`)
	e := New(LocalBuckets{Store: limiter.NewStore(100)}, cfg, nil)
	admitted := func(key string, p shed.Priority) int {
		n := 0
		for range 10 {
			it := Item{Domain: "capacity", Entries: []rules.Entry{{Key: key, Value: "x"}}, Hits: 1, Priority: p}
			if _, sts := check(t, e, it); sts[0].Code == OK {
				n++
			}
		}
		return n
	}
	if n := admitted("batch", shed.Unspecified); n != 5 {
		t.Errorf("sheddable rule admitted %d, want 5 (half kept back)", n)
	}
	if n := admitted("batch", shed.High); n != 5 {
		t.Errorf("high item on the sheddable rule admitted %d of the 5 left, want 5", n)
	}
	if n := admitted("plain", shed.Unspecified); n != 10 {
		t.Errorf("rule without a priority admitted %d, want 10 (default keeps nothing)", n)
	}
}

func TestOverrideIsAPlainLimit(t *testing.T) {
	e := newEngine(t, nil)
	// An override on a named rule is not dropped by that name's replacer,
	// and an override on a quota-mode rule is not a quota item.
	ov := item("user", "o")
	ov.Override, ov.OverrideLimit = true, limiter.Limit{Rate: 1, Period: time.Hour}
	_, sts := check(t, e, ov, item("tenant", "t"))
	if sts[0].Replaced || !sts[0].Limited || sts[0].Rule != nil {
		t.Fatalf("override dropped by replaces: %+v", sts[0])
	}
	q := item("quota_a", "z")
	q.Override, q.OverrideLimit = true, limiter.Limit{Rate: 1, Period: time.Hour}
	check(t, e, q)
	code, _ := check(t, e, q, item("quota_b", "fresh"))
	if code != OverLimit {
		t.Fatalf("an over-limit override next to a quota item: overall %v, want OverLimit", code)
	}
}

func TestUnlimitedRuleStillReplaces(t *testing.T) {
	cfg := mustConfig(t, "u.yaml", `domain: d
descriptors:
  - key: vip
    rate_limit: {unlimited: true, replaces: [{name: plain}]}
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 1, name: plain}
`)
	e := New(LocalBuckets{Store: limiter.NewStore(10)}, cfg, nil)
	for range 3 {
		if code, sts := check(t, e, item("vip", "1"), item("user", "2")); code != OK || !sts[1].Replaced {
			t.Fatalf("%v %+v", code, sts)
		}
	}
}

func TestRefundGivesTokensBack(t *testing.T) {
	e := newEngine(t, nil)
	check(t, e, item("user", "r"))
	check(t, e, item("user", "r"))
	refund := item("user", "r")
	refund.Refund = true
	_, sts := check(t, e, refund)
	if sts[0].Code != OK || sts[0].Result.Remaining != 1 {
		t.Fatalf("after a refund of 1: %+v", sts[0])
	}
	if _, sts := check(t, e, item("user", "r")); sts[0].Code != OK {
		t.Fatalf("refunded token not available: %+v", sts[0])
	}
}
