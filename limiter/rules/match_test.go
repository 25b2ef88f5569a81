package rules

import (
	"fmt"
	"strings"
	"testing"
)

func mustConfig(t testing.TB, docs ...string) *Config {
	t.Helper()
	var ds []*Domain
	for i, doc := range docs {
		d, err := Parse(fmt.Sprintf("doc%d.yaml", i), []byte(doc))
		if err != nil {
			t.Fatalf("Parse: %v", err)
		}
		ds = append(ds, d)
	}
	c, err := NewConfig(ds...)
	if err != nil {
		t.Fatalf("NewConfig: %v", err)
	}
	return c
}

// e builds entries from "k=v" strings.
func e(kvs ...string) []Entry {
	out := make([]Entry, len(kvs))
	for i, kv := range kvs {
		k, v, _ := strings.Cut(kv, "=")
		out[i] = Entry{k, v}
	}
	return out
}

// The README examples of envoyproxy/ratelimit, and the corner cases of its
// GetLimit.
const (
	example1 = `
domain: mongo_cps
descriptors:
  - key: database
    value: users
    rate_limit:
      unit: second
      requests_per_unit: 500
  - key: database
    value: default
    rate_limit:
      unit: second
      requests_per_unit: 500
`
	example2 = `
domain: messaging
descriptors:
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit:
          unit: day
          requests_per_unit: 5
  - key: to_number
    rate_limit:
      unit: day
      requests_per_unit: 100
`
	example3 = `
domain: edge_proxy_per_ip
descriptors:
  - key: remote_address
    rate_limit:
      unit: second
      requests_per_unit: 10
  # Black list IP
  - key: remote_address
    value: 50.0.0.5
    rate_limit:
      unit: second
      requests_per_unit: 0
`
	example4a = `
domain: example4
descriptors:
  - key: key
    value: value
    rate_limit:
      requests_per_unit: 300
      unit: second
`
	example4b = `
domain: example4b
descriptors:
  - key: key
    value: value
    descriptors:
      - key: subkey
        rate_limit:
          requests_per_unit: 300
          unit: second
`
	example5 = `
domain: internal
descriptors:
  - key: ldap
    rate_limit:
      unlimited: true
  - key: azure
    rate_limit:
      unit: minute
      requests_per_unit: 100
`
	example9 = `
domain: example9
descriptors:
  - key: key1
    value: value*
    rate_limit:
      unit: minute
      requests_per_unit: 20
`
	precedence = `
domain: prec
descriptors:
  - key: k
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: k
    value: "a*"
    rate_limit: {unit: second, requests_per_unit: 2}
  - key: k
    value: "ab*"
    rate_limit: {unit: second, requests_per_unit: 3}
  - key: k
    value: abc
    rate_limit: {unit: second, requests_per_unit: 4}
  - key: k
    value: "*"
    rate_limit: {unit: second, requests_per_unit: 5}
  - key: other
    value: "x*"
    rate_limit: {unit: second, requests_per_unit: 6}
  - key: parent
    rate_limit: {unit: second, requests_per_unit: 7}
    descriptors:
      - key: child
        rate_limit: {unit: second, requests_per_unit: 8}
        descriptors:
          - key: grandchild
            value: "g*"
            descriptors:
              - key: leaf
                rate_limit: {unit: second, requests_per_unit: 9}
  - key: allow
    value: me
  - key: mid
    descriptors:
      - key: end
`
)

func TestMatch(t *testing.T) {
	c := mustConfig(t, example1, example2, example3, example4a, example4b, example5, example9, precedence)
	tests := []struct {
		name    string
		domain  string
		entries []Entry
		want    string // the matched rule's ID, or "" for none
		rpu     uint32
	}{
		{"ex1 users", "mongo_cps", e("database=users"), "mongo_cps.database_users", 500},
		{"ex1 default", "mongo_cps", e("database=default"), "mongo_cps.database_default", 500},
		{"ex1 other value", "mongo_cps", e("database=other"), "", 0},
		{"ex1 empty value", "mongo_cps", e("database="), "", 0},

		{"ex2 marketing per number", "messaging", e("message_type=marketing", "to_number=2061111111"), "messaging.message_type_marketing.to_number", 5},
		{"ex2 per number", "messaging", e("to_number=2061111111"), "messaging.to_number", 100},
		{"ex2 other type", "messaging", e("message_type=transactional", "to_number=2061111111"), "", 0},
		{"ex2 shorter than config", "messaging", e("message_type=marketing"), "", 0},
		{"ex2 deeper than config", "messaging", e("to_number=1", "x=y"), "", 0},

		{"ex3 any ip", "edge_proxy_per_ip", e("remote_address=50.0.0.1"), "edge_proxy_per_ip.remote_address", 10},
		{"ex3 exact beats default", "edge_proxy_per_ip", e("remote_address=50.0.0.5"), "edge_proxy_per_ip.remote_address_50.0.0.5", 0},
		{"ex3 empty value falls back to key", "edge_proxy_per_ip", e("remote_address="), "edge_proxy_per_ip.remote_address", 10},

		{"ex4a deeper request does not match", "example4", e("key=value", "subkey=subvalue"), "", 0},
		{"ex4a exact depth", "example4", e("key=value"), "example4.key_value", 300},
		{"ex4b matches", "example4b", e("key=value", "subkey=subvalue"), "example4b.key_value.subkey", 300},
		{"ex4b shorter request, no limit on node", "example4b", e("key=value"), "", 0},

		{"ex5 unlimited", "internal", e("ldap=x"), "internal.ldap", 0},
		{"ex5 limited", "internal", e("azure=x"), "internal.azure", 100},

		{"ex9 wildcard", "example9", e("key1=value_1"), "example9.key1_value*", 20},
		{"ex9 wildcard empty rest", "example9", e("key1=value"), "example9.key1_value*", 20},
		{"ex9 no match", "example9", e("key1=valu"), "", 0},
		{"ex9 other key", "example9", e("key2=value_1"), "", 0},

		{"exact beats wildcard", "prec", e("k=abc"), "prec.k_abc", 4},
		{"first wildcard in file order", "prec", e("k=abd"), "prec.k_a*", 2},
		{"catch-all wildcard before default", "prec", e("k=zzz"), "prec.k_*", 5},
		{"star matches empty value", "prec", e("k="), "prec.k_*", 5},
		{"literal pattern is an exact match", "prec", e("k=ab*"), "prec.k_ab*", 3},
		{"wildcard of another key", "prec", e("other=xyz"), "prec.other_x*", 6},
		{"wildcard needs its key", "prec", e("k2=xyz"), "", 0},
		{"limit on intermediate node ignored", "prec", e("parent=p", "child=c", "grandchild=g1"), "", 0},
		{"intermediate node alone has its limit", "prec", e("parent=p"), "prec.parent", 7},
		{"second level", "prec", e("parent=p", "child=c"), "prec.parent.child", 8},
		{"nested wildcard", "prec", e("parent=p", "child=c", "grandchild=gx", "leaf=l"), "prec.parent.child.grandchild_g*.leaf", 9},
		{"nested wildcard miss", "prec", e("parent=p", "child=c", "grandchild=x", "leaf=l"), "", 0},
		{"too deep", "prec", e("parent=p", "child=c", "grandchild=gx", "leaf=l", "more=x"), "", 0},
		{"allow list", "prec", e("allow=me"), "prec.allow_me", 0},
		{"allow list deeper", "prec", e("allow=me", "x=y"), "", 0},
		{"intermediate node without limit", "prec", e("mid=m"), "", 0},
		{"allow list leaf under node", "prec", e("mid=m", "end=e"), "prec.mid.end", 0},

		{"unknown domain", "nope", e("database=users"), "", 0},
		{"empty descriptor", "mongo_cps", nil, "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := c.Match(tt.domain, tt.entries)
			if m.DomainFound != (tt.domain != "nope") {
				t.Errorf("DomainFound = %v", m.DomainFound)
			}
			got := ""
			if m.Rule != nil {
				got = m.Rule.ID
			}
			if got != tt.want {
				t.Fatalf("Match(%s, %v) = %q, want %q", tt.domain, tt.entries, got, tt.want)
			}
			if m.Rule != nil && limit0(m.Rule).RequestsPerUnit != tt.rpu {
				t.Errorf("requests_per_unit = %d, want %d", limit0(m.Rule).RequestsPerUnit, tt.rpu)
			}
			if tr := c.Trace(tt.domain, tt.entries); tr.Match != m {
				t.Errorf("Trace gives %+v, Match %+v", tr.Match, m)
			}
		})
	}

	if r := c.Match("prec", e("allow=me")).Rule; r.HasLimit {
		t.Error("allow-list rule has a limit")
	}
	if r := c.Match("internal", e("ldap=x")).Rule; !r.HasLimit || !r.Unlimited {
		t.Error("unlimited rule")
	}
	var nilConfig *Config
	if m := nilConfig.Match("prec", e("k=a")); m.Rule != nil || m.DomainFound {
		t.Error("nil Config matched")
	}
}

func TestPattern(t *testing.T) {
	tests := []struct {
		pat  string
		in   string
		want bool
	}{
		{"*", "", true},
		{"*", "anything", true},
		{"**", "", true},
		{"a*", "a", true},
		{"a*", "abc", true},
		{"a*", "ba", false},
		{"*a", "a", true},
		{"*a", "bca", true},
		{"*a", "ab", false},
		{"a*b", "ab", true},
		{"a*b", "axxb", true},
		{"a*b", "axxbc", false},
		{"a*b", "a", false},
		{"a*a", "a", false}, // prefix and suffix must not overlap
		{"a*a", "aa", true},
		{"*.example.com", "foo.example.com", true},
		{"*.example.com", "example.com", false},
		{"/api/*/users/*", "/api/v1/users/42", true},
		{"/api/*/users/*", "/api/v1/groups/42", false},
		{"/api/*/users/*", "/api/users/", false},
		{"a*b*c", "abc", true},
		{"a*b*c", "aXbYc", true},
		{"a*b*c", "acb", false},
		{"a*bc*bc", "abcbc", true},
		{"a*bc*bc", "abcxbc", true},
		{"a*bc*bc", "abc", false},
		{"*ab*ab*", "ab", false},
		{"*ab*ab*", "abab", true},
		{"***x***", "yyxyy", true},
		{"a.b", "axb", false}, // no regex
		{"[a]*", "a1", false},
		{"[a]*", "[a]1", true},
		{"ä*ö", "äüö", true},
		{"*c", "abc", true},
		{"a*c", "ac", true},
		{"a*b*c", "axbyc", true},
		{"ab*ba", "aba", false},
	}
	for _, tt := range tests {
		if got := newPattern(tt.pat).match(tt.in); got != tt.want {
			t.Errorf("%q matches %q = %v, want %v", tt.pat, tt.in, got, tt.want)
		}
	}
}

func TestTrace(t *testing.T) {
	c := mustConfig(t, precedence, `
domain: collide
descriptors:
  - key: a
    value: b_c
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: x
    value: "y*"
    rate_limit: {unit: second, requests_per_unit: 2}
`)
	tests := []struct {
		name    string
		domain  string
		entries []Entry
		kinds   []MatchKind
		rules   []string // the ID each step matched, "" for none
		stop    Stop
		below   []string // the IDs under where the walk ended
	}{
		{"exact", "prec", e("k=abc"), []MatchKind{MatchExact}, []string{"prec.k_abc"}, StopMatched, nil},
		{"wildcard", "prec", e("k=abd"), []MatchKind{MatchWildcard}, []string{"prec.k_a*"}, StopMatched, nil},
		{"literal pattern", "prec", e("k=ab*"), []MatchKind{MatchExact}, []string{"prec.k_ab*"}, StopMatched, nil},
		{"star matches empty value", "prec", e("k="), []MatchKind{MatchWildcard}, []string{"prec.k_*"}, StopMatched, nil},
		{"default then default", "prec", e("parent=p", "child=c"), []MatchKind{MatchDefault, MatchDefault},
			[]string{"prec.parent", "prec.parent.child"}, StopMatched, []string{"prec.parent.child.grandchild_g*"}},
		{"no match below", "prec", e("parent=p", "child=c", "grandchild=x"), []MatchKind{MatchDefault, MatchDefault, MatchNone},
			[]string{"prec.parent", "prec.parent.child", ""}, StopNoMatch, []string{"prec.parent.child.grandchild_g*"}},
		{"no match at the top", "prec", e("nope=x"), []MatchKind{MatchNone}, []string{""}, StopNoMatch,
			[]string{"prec.k", "prec.k_a*", "prec.k_ab*", "prec.k_abc", "prec.k_*", "prec.other_x*", "prec.parent", "prec.allow_me", "prec.mid"}},
		{"leaf with entries left", "prec", e("allow=me", "x=y"), []MatchKind{MatchExact}, []string{"prec.allow_me"}, StopLeaf, nil},
		{"deeper than the tree", "prec", e("parent=p", "child=c", "grandchild=g1", "leaf=l", "more=x", "again=y"),
			[]MatchKind{MatchDefault, MatchDefault, MatchWildcard, MatchDefault},
			[]string{"prec.parent", "prec.parent.child", "prec.parent.child.grandchild_g*", "prec.parent.child.grandchild_g*.leaf"}, StopLeaf, nil},
		{"no limit of its own", "prec", e("mid=m"), []MatchKind{MatchDefault}, []string{"prec.mid"}, StopNoLimit, []string{"prec.mid.end"}},
		{"allow-list leaf", "prec", e("mid=m", "end=e"), []MatchKind{MatchDefault, MatchDefault}, []string{"prec.mid", "prec.mid.end"}, StopMatched, nil},
		// Keys and values are compared apart: entry a_b=c is not the rule
		// for key a and value b_c, though envoyproxy/ratelimit's
		// concatenated form "a_b_c" is the same.
		{"key and value do not run together", "collide", e("a_b=c"), []MatchKind{MatchNone}, []string{""}, StopNoMatch,
			[]string{"collide.a_b_c", "collide.x_y*"}},
		{"the rule's own entry", "collide", e("a=b_c"), []MatchKind{MatchExact}, []string{"collide.a_b_c"}, StopMatched, nil},
		{"a wildcard needs its key", "collide", e("x_y=z"), []MatchKind{MatchNone}, []string{""}, StopNoMatch,
			[]string{"collide.a_b_c", "collide.x_y*"}},
		{"no entries", "prec", nil, nil, nil, StopNoEntries, nil},
		{"unknown domain", "nope", e("k=a"), nil, nil, StopNoDomain, nil},
	}
	ids := func(rs []*Rule) []string {
		var out []string
		for _, r := range rs {
			out = append(out, r.ID)
		}
		return out
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := c.Trace(tt.domain, tt.entries)
			if m := c.Match(tt.domain, tt.entries); tr.Match != m {
				t.Errorf("Trace gives %+v, Match %+v", tr.Match, m)
			}
			if (tr.Rule != nil) != (tt.stop == StopMatched) {
				t.Errorf("rule %v with stop %d", tr.Rule, tr.Stop)
			}
			if tr.Stop != tt.stop {
				t.Errorf("stop = %d, want %d", tr.Stop, tt.stop)
			}
			var kinds []MatchKind
			var got []string
			for _, st := range tr.Steps {
				kinds = append(kinds, st.Kind)
				id := ""
				if st.Rule != nil {
					id = st.Rule.ID
				}
				got = append(got, id)
			}
			if fmt.Sprint(kinds) != fmt.Sprint(tt.kinds) || fmt.Sprint(got) != fmt.Sprint(tt.rules) {
				t.Errorf("steps %v %q, want %v %q", kinds, got, tt.kinds, tt.rules)
			}
			for i, st := range tr.Steps {
				if st.Entry != tt.entries[i] {
					t.Errorf("step %d entry %v, want %v", i, st.Entry, tt.entries[i])
				}
			}
			if fmt.Sprint(ids(tr.Below)) != fmt.Sprint(tt.below) {
				t.Errorf("below = %q, want %q", ids(tr.Below), tt.below)
			}
		})
	}
	r := c.Match("collide", e("a=b_c")).Rule
	if r.Key() != "a" || r.Value() != "b_c" {
		t.Errorf("Key, Value = %q, %q", r.Key(), r.Value())
	}
	r = c.Match("prec", e("parent=p", "child=c")).Rule
	if r.Key() != "child" || r.Value() != "" {
		t.Errorf("Key, Value = %q, %q", r.Key(), r.Value())
	}
}

func TestKeyHash(t *testing.T) {
	c := mustConfig(t, `
domain: d
descriptors:
  - key: user
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: path
    value: "/api/*"
    share_threshold: true
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: host
    value: "*.example.com"
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: tenant
    value: "t-*"
    share_threshold: true
    descriptors:
      - key: user
        rate_limit: {unit: second, requests_per_unit: 1}
  - key: exact
    value: v
    rate_limit: {unit: second, requests_per_unit: 1}
`)
	hash := func(entries ...string) uint64 {
		t.Helper()
		en := e(entries...)
		m := c.Match("d", en)
		if m.Rule == nil {
			t.Fatalf("no match for %v", en)
		}
		return m.Rule.KeyHash("d", en)
	}
	// Key-only and plain wildcard rules: one counter per runtime value.
	if hash("user=a") == hash("user=b") {
		t.Error("key-only rule: two users share a counter")
	}
	if hash("host=a.example.com") == hash("host=b.example.com") {
		t.Error("wildcard without share_threshold: two hosts share a counter")
	}
	// share_threshold: one counter for every matching value.
	if hash("path=/api/a") != hash("path=/api/b") {
		t.Error("share_threshold: values do not share a counter")
	}
	// share_threshold on an intermediate level, per user below it.
	if hash("tenant=t-1", "user=u") != hash("tenant=t-2", "user=u") {
		t.Error("share_threshold on a parent level: tenants do not share")
	}
	if hash("tenant=t-1", "user=u") == hash("tenant=t-1", "user=v") {
		t.Error("users under a shared tenant share a counter")
	}
	// Different descriptors that concatenate the same way stay apart.
	r := c.Match("d", e("user=a")).Rule
	if r.KeyHash("d", e("user=ab")) == r.KeyHash("d", e("usera=b")) ||
		r.KeyHash("d", e("user=a")) == r.KeyHash("dx", e("user=a")) {
		t.Error("length prefixes do not separate fields")
	}
	// The hash is stable across Configs built from the same text.
	c2 := mustConfig(t, "domain: d\ndescriptors:\n  - key: user\n    rate_limit: {unit: hour, requests_per_unit: 9}\n")
	if c2.Match("d", e("user=a")).Rule.KeyHash("d", e("user=a")) != hash("user=a") {
		t.Error("the counter key depends on the limit; it should depend on the descriptor only")
	}
}

func TestMetricKey(t *testing.T) {
	c := mustConfig(t, `
domain: d
descriptors:
  - key: key1
    detailed_metric: true
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: key1
    value: value1
    rate_limit: {unit: minute, requests_per_unit: 20}
  - key: plain
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: wild
    value: "foo*"
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: wildd
    value: "foo*"
    detailed_metric: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: shared
    value: "foo*"
    share_threshold: true
    detailed_metric: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: route
    value_to_metric: true
    descriptors:
      - key: method
        value: "G*"
        rate_limit: {unit: minute, requests_per_unit: 1}
      - key: user
        rate_limit: {unit: minute, requests_per_unit: 1}
        value_to_metric: true
  - key: d1
    descriptors:
      - key: d2
        detailed_metric: true
        rate_limit: {unit: minute, requests_per_unit: 1}
`)
	tests := []struct {
		entries []Entry
		want    string
	}{
		// README example 8.
		{e("key1=unspecified_value"), "d.key1_unspecified_value"},
		{e("key1=value1"), "d.key1_value1"},
		{e("plain=x"), "d.plain"},
		{e("wild=foo1"), "d.wild_foo*"},
		{e("wildd=foo1"), "d.wildd_foo1"},
		{e("shared=foo1"), "d.shared_foo*"},
		{e("route=/a", "method=GET"), "d.route_/a.method_G*"},
		{e("route=/a", "user=u1"), "d.route_/a.user_u1"},
		{e("d1=x", "d2="), "d.d1_x.d2_"},
	}
	for _, tt := range tests {
		m := c.Match("d", tt.entries)
		if m.Rule == nil {
			t.Fatalf("no match for %v", tt.entries)
		}
		if got := m.Rule.MetricKey(tt.entries); got != tt.want {
			t.Errorf("MetricKey(%v) = %q, want %q", tt.entries, got, tt.want)
		}
	}
	r := c.Match("d", e("plain=x")).Rule
	if n := testing.AllocsPerRun(100, func() { _ = r.MetricKey(e2plain) }); n != 0 {
		t.Errorf("MetricKey without detailed_metric allocates %v times", n)
	}
}

var e2plain = []Entry{{"plain", "x"}}

const benchConfig = `
domain: bench
descriptors:
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 10}
  - key: remote_address
    value: 50.0.0.5
    rate_limit: {unit: second, requests_per_unit: 0}
  - key: path
    value: "/static/*"
    rate_limit: {unit: second, requests_per_unit: 100}
  - key: tenant
    value: acme
    descriptors:
      - key: user
        rate_limit: {unit: minute, requests_per_unit: 600}
      - key: user
        value: "bot-*"
        share_threshold: true
        rate_limit: {unit: minute, requests_per_unit: 60}
  - key: tenant
    descriptors:
      - key: user
        rate_limit: {unit: minute, requests_per_unit: 60}
`

func TestMatchAllocs(t *testing.T) {
	c := mustConfig(t, benchConfig)
	cases := [][]Entry{
		{{"tenant", "acme"}, {"user", "u-123"}},
		{{"tenant", "acme"}, {"user", "bot-7"}},
		{{"tenant", "other"}, {"user", "u-123"}},
		{{"remote_address", "50.0.0.5"}},
		{{"path", "/static/app.js"}},
		{{"nope", "x"}},
	}
	for _, en := range cases {
		var m Match
		allocs := testing.AllocsPerRun(1000, func() {
			m = c.Match("bench", en)
		})
		if allocs != 0 {
			t.Errorf("Match(%v) allocates %v times", en, allocs)
		}
		if m.Rule == nil {
			if en[0].Key != "nope" {
				t.Errorf("Match(%v) found nothing", en)
			}
			continue
		}
		var h uint64
		allocs = testing.AllocsPerRun(1000, func() {
			h = m.Rule.KeyHash("bench", en)
		})
		if allocs != 0 {
			t.Errorf("KeyHash(%v) allocates %v times", en, allocs)
		}
		if h == 0 {
			t.Errorf("KeyHash(%v) = 0", en)
		}
	}
}

func BenchmarkMatch(b *testing.B) {
	c := mustConfig(b, benchConfig)
	for _, bc := range []struct {
		name    string
		entries []Entry
	}{
		{"1entry-default", []Entry{{"remote_address", "10.1.2.3"}}},
		{"2entries-exact+default", []Entry{{"tenant", "acme"}, {"user", "u-123"}}},
		{"2entries-exact+wildcard", []Entry{{"tenant", "acme"}, {"user", "bot-7"}}},
		{"2entries-default+default", []Entry{{"tenant", "other"}, {"user", "u-123"}}},
		{"1entry-miss", []Entry{{"nope", "x"}}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if m := c.Match("bench", bc.entries); m.Rule == nil && bc.entries[0].Key != "nope" {
					b.Fatal("no match")
				}
			}
		})
	}
}

func BenchmarkMatchAndKeyHash(b *testing.B) {
	c := mustConfig(b, benchConfig)
	entries := []Entry{{"tenant", "acme"}, {"user", "u-123"}}
	b.ReportAllocs()
	for b.Loop() {
		m := c.Match("bench", entries)
		_ = m.Rule.KeyHash("bench", entries)
	}
}
