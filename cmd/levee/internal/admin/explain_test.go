package admin

import (
	"strings"
	"testing"

	"github.com/levee-dev/levee/limiter/rules"
)

const explainRules = `domain: example
descriptors:
  - key: user
    rate_limit:
      unit: second
      requests_per_unit: 10
    descriptors:
      - key: action
        value: post
        rate_limit:
          name: post
          unit: hour
          requests_per_unit: 60
          burst: 5
  - key: remote_address
    rate_limit:
      unit: minute
      requests_per_unit: 5
  - key: remote_address
    value: "203.0.113.*"
    rate_limit:
      unit: minute
      requests_per_unit: 0
  - key: client
    value: batch-exporter
  - key: tenant
    descriptors:
      - key: route
        rate_limit:
          unit: second
          requests_per_unit: 3
  - key: key_with_underscore
    value: v
    rate_limit:
      unit: day
      requests_per_unit: 7
`

func explainCfg(t *testing.T) *rules.Config {
	t.Helper()
	d, err := rules.Parse("example.yaml", []byte(explainRules))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := rules.NewConfig(d)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func entries(kv ...string) []rules.Entry {
	var out []rules.Entry
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, rules.Entry{Key: kv[i], Value: kv[i+1]})
	}
	return out
}

func TestExplain(t *testing.T) {
	cfg := explainCfg(t)
	for _, tc := range []struct {
		name    string
		domain  string
		entries []rules.Entry
		kinds   []MatchKind
		ruleID  string // "" for no match
		summary string
	}{
		{"default then exact", "example", entries("user", "u1", "action", "post"), []MatchKind{MatchDefault, MatchExact},
			"example.user.action_post", "example.yaml:8): 60 per hour, burst 5"},
		{"default only", "example", entries("user", "u1"), []MatchKind{MatchDefault},
			"example.user", "10 per second"},
		{"wildcard beats default", "example", entries("remote_address", "203.0.113.7"), []MatchKind{MatchWildcard},
			"example.remote_address_203.0.113.*", "every request refused"},
		{"default when the wildcard does not match", "example", entries("remote_address", "198.51.100.1"), []MatchKind{MatchDefault},
			"example.remote_address", "5 per minute"},
		{"allow-list leaf", "example", entries("client", "batch-exporter"), []MatchKind{MatchExact},
			"example.client_batch-exporter", "allow-list entry"},
		{"unknown key", "example", entries("colour", "red"), []MatchKind{MatchNone},
			"", "no descriptor at the top of domain example matches colour=red"},
		{"unknown value of a key with no default", "example", entries("client", "other"), []MatchKind{MatchNone},
			"", "matches client=other"},
		{"deeper than a leaf", "example", entries("remote_address", "1.2.3.4", "x", "y"), []MatchKind{MatchDefault},
			"", "is a leaf at level 1"},
		{"stops at a node without a limit", "example", entries("tenant", "t1"), []MatchKind{MatchDefault},
			"", "example.tenant has no rate_limit of its own; only its children (route) have limits"},
		{"underscore in a key", "example", entries("key_with_underscore", "v"), []MatchKind{MatchExact},
			"example.key_with_underscore_v", "7 per day"},
		{"unknown domain", "nope", entries("user", "u"), nil, "", `domain "nope" is not in the configuration (domains: example)`},
		{"no entries", "example", nil, nil, "", "no entries"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ex := Explain(cfg, tc.domain, tc.entries)
			if want := cfg.Match(tc.domain, tc.entries).Rule; ex.Rule != want {
				t.Fatalf("Rule = %v, Match gives %v", ex.Rule, want)
			}
			gotID := ""
			if ex.Rule != nil {
				gotID = ex.Rule.ID
			}
			if gotID != tc.ruleID {
				t.Errorf("rule = %q, want %q", gotID, tc.ruleID)
			}
			var kinds []MatchKind
			for _, s := range ex.Steps {
				kinds = append(kinds, s.Kind)
			}
			if len(kinds) != len(tc.kinds) {
				t.Fatalf("steps %v, want %v", kinds, tc.kinds)
			}
			for i := range kinds {
				if kinds[i] != tc.kinds[i] {
					t.Errorf("step %d kind %v, want %v", i, kinds[i], tc.kinds[i])
				}
			}
			if !strings.Contains(ex.Summary, tc.summary) {
				t.Errorf("summary %q does not contain %q", ex.Summary, tc.summary)
			}
		})
	}
	// A limit on an intermediate node is noted as not counting.
	ex := Explain(cfg, "example", entries("user", "u", "action", "post"))
	if !strings.Contains(ex.Steps[0].Note, "does not count") {
		t.Errorf("note on user level = %q", ex.Steps[0].Note)
	}
}

func TestWildcard(t *testing.T) {
	for _, tc := range []struct {
		p, s string
		ok   bool
	}{
		{"a*", "abc", true}, {"a*", "a", true}, {"a*", "ba", false},
		{"*c", "abc", true}, {"a*c", "ac", true}, {"a*b*c", "axbyc", true}, {"a*b*c", "acb", false},
		{"*", "", true}, {"ab*ba", "aba", false},
	} {
		if got := wildcard(tc.p, tc.s); got != tc.ok {
			t.Errorf("wildcard(%q, %q) = %v", tc.p, tc.s, got)
		}
	}
}
