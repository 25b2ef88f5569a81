package admin

import (
	"strings"
	"testing"

	"github.com/levee-dev/levee/limiter/engine/enginetest"
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
  - key: token
    rate_limits:
      - {name: per_second, unit: second, requests_per_unit: 10}
      - {unit: minute, unit_multiplier: 5, requests_per_unit: 5, burst: 8}
      - {name: daily, period: 24h, requests_per_unit: 0}
  - key: export
    rate_limit: {period: 90s, requests_per_unit: 3}
`

func explainCfg(t *testing.T) *rules.Config {
	t.Helper()
	return enginetest.Config(t, "example.yaml", explainRules)
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
		kinds   []rules.MatchKind
		ruleID  string // "" for no match
		summary string
	}{
		{"default then exact", "example", entries("user", "u1", "action", "post"), []rules.MatchKind{rules.MatchDefault, rules.MatchExact},
			"example.user.action_post", "example.yaml:8): 60 per hour, burst 5"},
		{"default only", "example", entries("user", "u1"), []rules.MatchKind{rules.MatchDefault},
			"example.user", "10 per second"},
		{"wildcard beats default", "example", entries("remote_address", "203.0.113.7"), []rules.MatchKind{rules.MatchWildcard},
			"example.remote_address_203.0.113.*", "every request refused"},
		{"default when the wildcard does not match", "example", entries("remote_address", "198.51.100.1"), []rules.MatchKind{rules.MatchDefault},
			"example.remote_address", "5 per minute"},
		{"allow-list leaf", "example", entries("client", "batch-exporter"), []rules.MatchKind{rules.MatchExact},
			"example.client_batch-exporter", "allow-list entry"},
		{"unknown key", "example", entries("colour", "red"), []rules.MatchKind{rules.MatchNone},
			"", "no descriptor at the top of domain example matches colour=red"},
		{"unknown value of a key with no default", "example", entries("client", "other"), []rules.MatchKind{rules.MatchNone},
			"", "matches client=other"},
		{"deeper than a leaf", "example", entries("remote_address", "1.2.3.4", "x", "y"), []rules.MatchKind{rules.MatchDefault},
			"", "is a leaf at level 1"},
		{"stops at a node without a limit", "example", entries("tenant", "t1"), []rules.MatchKind{rules.MatchDefault},
			"", "example.tenant has no rate_limit of its own; only its children (route) have limits"},
		{"underscore in a key", "example", entries("key_with_underscore", "v"), []rules.MatchKind{rules.MatchExact},
			"example.key_with_underscore_v", "7 per day"},
		{"several limits", "example", entries("token", "t"), []rules.MatchKind{rules.MatchDefault},
			"example.token", "3 limits, all apply: 10 per second (per_second); 5 per 5 minutes, burst 8; every request refused (requests_per_unit: 0) (daily)"},
		{"a period", "example", entries("export", "e"), []rules.MatchKind{rules.MatchDefault},
			"example.export", "3 per 90 seconds"},
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
			var kinds []rules.MatchKind
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

// An entry whose key and value run together into a rule's "key_value" form
// does not match that rule: matching compares keys and values apart, and
// Explain reports the walk Match takes.
func TestExplainKeyValueCollision(t *testing.T) {
	cfg := enginetest.Config(t, "collide.yaml", `domain: collide
descriptors:
  - key: a
    value: b_c
    rate_limit:
      unit: second
      requests_per_unit: 1
`)
	ex := Explain(cfg, "collide", entries("a_b", "c"))
	if ex.Rule != nil || cfg.Match("collide", entries("a_b", "c")).Rule != nil {
		t.Fatalf("a_b=c matched %v", ex.Rule)
	}
	if len(ex.Steps) != 1 || ex.Steps[0].Kind != rules.MatchNone || ex.Steps[0].Rule != nil {
		t.Fatalf("steps %+v, want one step matching nothing", ex.Steps)
	}
	if want := "no descriptor at the top of domain collide matches a_b=c"; !strings.Contains(ex.Summary, want) {
		t.Errorf("summary %q does not contain %q", ex.Summary, want)
	}
	if want := "available here: a_b_c"; ex.Steps[0].Note != want {
		t.Errorf("note %q, want %q", ex.Steps[0].Note, want)
	}
	// The rule's own entry matches it exactly.
	ex = Explain(cfg, "collide", entries("a", "b_c"))
	if ex.Rule == nil || ex.Rule.ID != "collide.a_b_c" || len(ex.Steps) != 1 || ex.Steps[0].Kind != rules.MatchExact {
		t.Fatalf("a=b_c: rule %v, steps %+v", ex.Rule, ex.Steps)
	}
}

// TestExplainedRuleListsEveryLimit: the admin API's explained rule carries
// every limit, the first also in the single-limit fields older clients read.
func TestExplainedRuleListsEveryLimit(t *testing.T) {
	r := explainCfg(t).Match("example", entries("token", "t")).Rule
	er := ruleToProto(r)
	if er.Unit != "SECOND" || er.RequestsPerUnit != 10 || er.Burst != 10 || len(er.Limits) != 3 {
		t.Fatalf("explained rule %v", er)
	}
	l := er.Limits[1]
	if l.Name != "" || l.Unit != "MINUTE" || l.UnitMultiplier != 5 || l.RequestsPerUnit != 5 || l.Burst != 8 || l.Text != "5 per 5 minutes, burst 8" {
		t.Errorf("second limit %v", l)
	}
	if l := er.Limits[2]; l.Name != "daily" || l.Unit != "DAY" || l.UnitMultiplier != 1 || l.RequestsPerUnit != 0 {
		t.Errorf("third limit %v", l)
	}
	if er := ruleToProto(explainCfg(t).Match("example", entries("client", "batch-exporter")).Rule); len(er.Limits) != 0 || er.Unit != "" {
		t.Errorf("allow-list entry %v", er)
	}
}
