package client

import (
	"testing"
	"time"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/rules"
	"github.com/levee-dev/levee/shed"
)

// TestRefusalsBounded: a flood of distinct refused keys never holds more
// than the bound, and live refusals win room over expired ones.
func TestRefusalsBounded(t *testing.T) {
	c := newRefusals(160) // 10 a shard
	now := int64(1e18)
	for k := range uint64(10_000) {
		c.add(k, refusal{until: now + int64(time.Hour), hits: 1}, now)
		if n := c.len(); n > 160 {
			t.Fatalf("%d refusals held after %d adds", n, k+1)
		}
	}
	// After they expire, new ones replace them and are found.
	now += int64(2 * time.Hour)
	for k := uint64(20_000); k < 20_160; k++ {
		c.add(k, refusal{until: now + int64(time.Minute), hits: 1}, now)
	}
	found := 0
	for k := uint64(20_000); k < 20_160; k++ {
		if _, ok := c.lookup(k, 1, now); ok {
			found++
		}
	}
	if found < 150 {
		t.Fatalf("only %d of 160 fresh refusals kept over expired ones", found)
	}
	if _, ok := c.lookup(20_000, 1, now+int64(time.Minute)); ok {
		t.Fatal("a refusal held at its expiry")
	}
	if newRefusals(0) != nil || newRefusals(-1) != nil {
		t.Fatal("a cache of size < 1")
	}
}

// TestItemKey: items differ in the cache exactly when the sidecar would
// count them apart, and a key allocates nothing.
func TestItemKey(t *testing.T) {
	e := func(kv ...string) []rules.Entry {
		var out []rules.Entry
		for i := 0; i+1 < len(kv); i += 2 {
			out = append(out, rules.Entry{Key: kv[i], Value: kv[i+1]})
		}
		return out
	}
	l := limiter.Limit{Rate: 1, Period: time.Second}
	items := []Item{
		{Domain: "d", Entries: e("a", "b")},
		{Domain: "d", Entries: e("ab", "")},
		{Domain: "d", Entries: e("a", "b", "c", "d")},
		{Domain: "e", Entries: e("a", "b")},
		{Key: "d", Limit: l},
		{Key: "d", Limit: limiter.Limit{Rate: 2, Period: time.Second}},
		{Key: "d", Limit: limiter.Limit{Rate: 1, Period: time.Second, Burst: 3}},
	}
	seen := map[uint64]int{}
	for i := range items {
		for _, p := range []shed.Priority{shed.Critical, shed.Default, shed.Sheddable} {
			k := itemKey(&items[i], p)
			if j, dup := seen[k]; dup {
				t.Errorf("item %d at %v has item %d's key", i, p, j)
			}
			seen[k] = i
		}
	}
	if itemKey(&items[0], shed.Unspecified) != itemKey(&items[0], shed.Default) {
		t.Error("unspecified and default priorities differ")
	}
	if itemKey(&Item{Key: "d", Limit: l, Hits: 5}, shed.Default) != itemKey(&items[4], shed.Default) {
		t.Error("hits are part of the key")
	}
	if a := testing.AllocsPerRun(100, func() { itemKey(&items[2], shed.Low) }); a != 0 {
		t.Errorf("itemKey allocates %v times", a)
	}
}

// TestEncodeAllocatesNothing: once a pooled request has grown to a check's
// size, encoding the check into it allocates nothing.
func TestEncodeAllocatesNothing(t *testing.T) {
	items := []Item{
		Rule("api", rules.Entry{Key: "user", Value: "u"}, rules.Entry{Key: "route", Value: "/r"}),
		Inline("k", limiter.Limit{Rate: 5, Period: 1500 * time.Millisecond, Burst: 9}),
	}
	var r request
	r.fill(items, shed.Low)
	if a := testing.AllocsPerRun(100, func() { r.fill(items, shed.Low) }); a != 0 {
		t.Errorf("encoding allocates %v times", a)
	}
	in := r.msg.Items[1].GetInline()
	if d := r.msg.Items[0].GetDescriptor_(); d.Domain != "api" || len(d.Entries) != 2 || d.Entries[1].Value != "/r" ||
		in.Key != "k" || in.Limit != 5 || in.Burst != 9 || in.Period.AsDuration() != 1500*time.Millisecond ||
		r.msg.Items[0].GetHits() != 1 || r.msg.Priority != 4 {
		t.Errorf("encoded %v", &r.msg)
	}
}
