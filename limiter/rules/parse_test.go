package rules

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/shed"
)

// TestParseErrors checks every refusal: envoyproxy/ratelimit's own (with its
// wording, from its test/config/config_test.go) and levee's type checks.
func TestParseErrors(t *testing.T) {
	tests := []struct {
		name   string
		yaml   string
		line   int
		field  string
		reason string
	}{
		// envoyproxy/ratelimit's refusals.
		{"empty domain", "domain: \"\"\ndescriptors: []\n", 1, "domain", "config file cannot have empty domain"},
		{"missing domain", "descriptors:\n  - key: a\n", 1, "domain", "config file cannot have empty domain"},
		{"empty file", "", 1, "domain", "config file cannot have empty domain"},
		{"comments only", "# nothing\n", 1, "domain", "config file cannot have empty domain"},
		{"empty key", "domain: d\ndescriptors:\n  - value: v\n", 3, "key", "descriptor has empty key"},
		{"empty key string", "domain: d\ndescriptors:\n  - key: \"\"\n", 3, "key", "descriptor has empty key"},
		{"duplicate key", "domain: d\ndescriptors:\n  - key: a\n    value: b\n  - key: a\n    value: b\n", 5, "key",
			"duplicate descriptor composite key 'd.a_b'"},
		{"duplicate nested", "domain: d\ndescriptors:\n  - key: a\n    descriptors:\n      - key: b\n      - key: b\n", 6, "key",
			"duplicate descriptor composite key 'd.a.b'"},
		{"duplicate by composite form", "domain: d\ndescriptors:\n  - key: a_b\n    value: c\n  - key: a\n    value: b_c\n", 5, "key",
			"duplicate descriptor composite key 'd.a_b_c'"},
		{"invalid unit", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: minutes\n      requests_per_unit: 1\n", 5,
			"rate_limit.unit", "invalid rate limit unit 'minutes'"},
		{"unit unknown", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: unknown\n", 5,
			"rate_limit.unit", "invalid rate limit unit 'unknown'"},
		{"missing unit", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      requests_per_unit: 1\n", 4,
			"rate_limit.unit", "invalid rate limit unit ''"},
		{"empty rate_limit map", "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {}\n", 4,
			"rate_limit.unit", "invalid rate limit unit ''"},
		{"unlimited with unit", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unlimited: true\n      unit: second\n", 6,
			"rate_limit.unit", "should not specify rate limit unit when unlimited"},
		{"replaces itself", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      name: x\n      unit: second\n      replaces:\n        - name: x\n", 8,
			"rate_limit.replaces", "replaces should not contain name of same descriptor"},
		{"empty replaces entry", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n      replaces:\n        - name: \"\"\n", 7,
			"rate_limit.replaces", "should not have an empty replaces entry"},
		{"bad yaml", "domain: d\ndescriptors: [\n", 2, "", "error loading config file: yaml: line 2: did not find expected node content"},
		{"bad yaml tab", "domain: d\n\tdescriptors: []\n", 2, "", "error loading config file: yaml: line 2: found a tab character that violates indentation"},
		{"unknown key", "domain: d\ndescriptors:\n  - key: a\n    ratelimit:\n      unit: second\n", 4, "ratelimit", "config error, unknown key 'ratelimit'"},
		{"unknown key in rate_limit", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n      requestsperunit: 5\n", 6,
			"requestsperunit", "config error, unknown key 'requestsperunit'"},
		{"unknown top-level key", "domain: d\nfoo: bar\n", 2, "foo", "config error, unknown key 'foo'"},
		{"unknown key in replaces", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n      replaces:\n        - nam: x\n", 7,
			"nam", "config error, unknown key 'nam'"},
		{"non-string key", "domain: d\ndescriptors:\n  - key: a\n    0.25: x\n", 4, "descriptors", "config error, key is not of type string: 0.25"},
		{"int key", "domain: d\n5: x\n", 2, "", "config error, key is not of type string: 5"},
		{"list of scalars", "domain: d\ndescriptors:\n  - a\n", 3, "descriptors", "config error, yaml file contains list of type other than map: a"},
		{"replaces of scalars", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n      replaces: [x]\n", 6,
			"replaces", "config error, yaml file contains list of type other than map: x"},
		{"share_threshold without wildcard", "domain: d\ndescriptors:\n  - key: a\n    value: b\n    share_threshold: true\n    rate_limit:\n      unit: second\n", 5,
			"share_threshold", "share_threshold can only be used with wildcard values (containing '*'), but found key 'a_b'"},
		{"share_threshold on default", "domain: d\ndescriptors:\n  - key: a\n    share_threshold: true\n", 4,
			"share_threshold", "share_threshold can only be used with wildcard values (containing '*'), but found key 'a'"},

		// Types that envoyproxy/ratelimit's YAML decoding refuses.
		{"requests_per_unit string", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n      requests_per_unit: abc\n", 6,
			"rate_limit.requests_per_unit", `must be an integer from 0 to 4294967295, not str "abc"`},
		{"requests_per_unit quoted", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n      requests_per_unit: \"5\"\n", 6,
			"rate_limit.requests_per_unit", `must be an integer from 0 to 4294967295, not str "5"`},
		{"requests_per_unit negative", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n      requests_per_unit: -1\n", 6,
			"rate_limit.requests_per_unit", `must be an integer from 0 to 4294967295, not int "-1"`},
		{"requests_per_unit too big", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n      requests_per_unit: 4294967296\n", 6,
			"rate_limit.requests_per_unit", `must be an integer from 0 to 4294967295, not int "4294967296"`},
		{"requests_per_unit float", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n      requests_per_unit: 1.5\n", 6,
			"requests_per_unit", `error checking config: "1.5" is a float; quote it to use it as a string`},
		{"requests_per_unit list", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n      requests_per_unit: [{name: x}]\n", 6,
			"rate_limit.requests_per_unit", "must be an integer from 0 to 4294967295, not a list"},
		{"value is a map", "domain: d\ndescriptors:\n  - key: a\n    value: {name: x}\n", 4, "value", "must be a string, not a map"},
		{"value is a list", "domain: d\ndescriptors:\n  - key: a\n    value: [x]\n", 4, "value", "config error, yaml file contains list of type other than map: x"},
		{"value is a float", "domain: d\ndescriptors:\n  - key: a\n    value: 1.5\n", 4, "value", `error checking config: "1.5" is a float; quote it to use it as a string`},
		{"key is a list of maps", "domain: d\ndescriptors:\n  - key: [{name: x}]\n", 3, "key", "must be a string, not a list"},
		{"domain is a map", "domain: {name: x}\n", 1, "domain", "must be a string, not a map"},
		{"descriptors is a scalar", "domain: d\ndescriptors: 5\n", 2, "descriptors", `must be a list of maps, not int "5"`},
		{"descriptors is a map", "domain: d\ndescriptors: {key: a}\n", 2, "descriptors", "must be a list of maps, not a map"},
		{"rate_limit is a scalar", "domain: d\ndescriptors:\n  - key: a\n    rate_limit: fast\n", 4, "rate_limit", `must be a map, not str "fast"`},
		{"bool not a bool", "domain: d\ndescriptors:\n  - key: a\n    shadow_mode: maybe\n", 4, "shadow_mode", `must be true or false, not str "maybe"`},
		{"bool quoted", "domain: d\ndescriptors:\n  - key: a\n    shadow_mode: \"true\"\n", 4, "shadow_mode", `must be true or false, not str "true"`},
		{"unlimited not a bool", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unlimited: 1\n", 5, "rate_limit.unlimited", `must be true or false, not int "1"`},
		{"replaces not a list", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n      replaces: x\n", 6,
			"rate_limit.replaces", `must be a list of maps, not str "x"`},
		{"document is a list", "- domain: d\n", 1, "", "error loading config file: the document must be a map, not a list"},
		{"document is a scalar", "hello\n", 1, "", `error loading config file: the document must be a map, not str "hello"`},
		{"metadata not a map", "domain: d\ndescriptors:\n  - key: a\n    metadata: [1]\n", 4, "metadata", "must be a map, not a list"},
		{"metadata non-string key", "domain: d\ndescriptors:\n  - key: a\n    metadata:\n      1: x\n", 5, "metadata", "config error, key is not of type string: 1"},
		{"custom tag", "domain: !foo d\n", 1, "domain", "error checking config: unsupported YAML tag !foo"},

		// levee's additions.
		{"burst zero", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n      requests_per_unit: 5\n      burst: 0\n", 7,
			"rate_limit.burst", "burst must be at least 1"},
		{"burst negative", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n      burst: -3\n", 6,
			"rate_limit.burst", `must be an integer from 0 to 4294967295, not int "-3"`},
		{"burst with unlimited", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unlimited: true\n      burst: 3\n", 6,
			"rate_limit.burst", "should not specify burst when unlimited"},
		{"burst on a descriptor", "domain: d\ndescriptors:\n  - key: a\n    burst: 5\n", 4,
			"burst", "'burst' is not valid on a descriptor; it belongs in rate_limit"},
		{"priority in rate_limit", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n      priority: high\n", 6,
			"rate_limit.priority", "'priority' is not valid in rate_limit; it belongs in a descriptor"},
		{"failure_mode at the top", "domain: d\nfailure_mode: open\n", 2,
			"failure_mode", "'failure_mode' is not valid at the top level; it belongs in a descriptor"},
		{"bad priority", "domain: d\ndescriptors:\n  - key: a\n    priority: urgent\n", 4,
			"priority", "invalid priority 'urgent' (want critical, high, default, low or sheddable)"},
		{"bad failure_mode", "domain: d\ndescriptors:\n  - key: a\n    failure_mode: maybe\n", 4,
			"failure_mode", "invalid failure mode 'maybe' (want local, open or closed)"},

		// Bounds.
		{"too deep", "domain: d\ndescriptors:\n" + deepDescriptors(40), 65, "key", "nested deeper than 64 levels"},
		{"too deep flow", "domain: d\ndescriptors: " + strings.Repeat("[", 100) + strings.Repeat("]", 100) + "\n", 2, "descriptors",
			"config error, yaml file contains list of type other than map: a list"},
		{"too big", "domain: d\n#" + strings.Repeat("x", MaxFileSize), 1, "", "file is larger than 4194304 bytes"},
		{"alias bomb", aliasBomb("x"), 0, "", "error loading config file: the document has more than 2097152 nodes (counting alias expansions)"},
		{"descriptor bomb", manyDescriptors(), 0, "key", "too many descriptors: the limit is 131072 per file"},
		{"long key", "domain: d\ndescriptors:\n  - key: " + strings.Repeat("k", MaxStringBytes+1) + "\n", 3, "key",
			"4097 bytes, more than the 4096 a request may carry"},
		{"long value", "domain: d\ndescriptors:\n  - key: k\n    value: " + strings.Repeat("v", MaxStringBytes+1) + "\n", 4, "value",
			"4097 bytes, more than the 4096 a request may carry"},
		{"long domain", "domain: " + strings.Repeat("d", MaxStringBytes+1) + "\n", 1, "domain",
			"4097 bytes, more than the 4096 a request may carry"},
		{"alias bomb in metadata", "domain: d\ndescriptors:\n  - key: a\n    metadata:\n      x: " + aliasBomb("metadata"), 0, "",
			"error loading config file: the document has more than 2097152 nodes (counting alias expansions)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := Parse("rules/test.yaml", []byte(tt.yaml))
			if err == nil {
				t.Fatalf("Parse succeeded with domain %q; want error %q", d.Name, tt.reason)
			}
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v (%T) is not a *ParseError", err, err)
			}
			if pe.File != "rules/test.yaml" || pe.Reason != tt.reason || pe.Field != tt.field || (tt.line != 0 && pe.Line != tt.line) {
				t.Errorf("got %#v\nwant line %d field %q reason %q", *pe, tt.line, tt.field, tt.reason)
			}
			if pe.Line < 1 {
				t.Errorf("line %d < 1", pe.Line)
			}
			want := "rules/test.yaml:"
			if !strings.HasPrefix(err.Error(), want) || !strings.HasSuffix(err.Error(), ": "+tt.reason) {
				t.Errorf("Error() = %q; want %q...: %s", err.Error(), want, tt.reason)
			}
		})
	}
}

func deepDescriptors(n int) string {
	var b strings.Builder
	for i := range n {
		ind := strings.Repeat("    ", i)
		b.WriteString(ind + "  - key: k\n" + ind + "    descriptors:\n")
	}
	return b.String()
}

// manyDescriptors nests lists of aliased descriptors so that a short file
// would expand to millions of rules.
func manyDescriptors() string {
	var b strings.Builder
	b.WriteString("domain: d\nname: &l0 [{key: k}]\n")
	keys := []string{"key", "value", "descriptors", "rate_limit", "unit", "name", "replaces", "unlimited", "shadow_mode", "quota_mode"}
	for i := 1; i <= 4; i++ {
		fmt.Fprintf(&b, "%s: &l%d [", keys[i], i)
		for j := range 11 {
			if j > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "{key: k%d, descriptors: *l%d}", j, i-1)
		}
		b.WriteString("]\n")
	}
	b.WriteString("descriptors: [")
	for j := range 11 {
		if j > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "{key: k%d, descriptors: *l4}", j)
	}
	b.WriteString("]\n")
	return b.String()
}

// aliasBomb is a "billion laughs" flow map: each level refers to the
// previous one ten times, under keys that are all valid, so only the work
// bound stops it. It is placed as the value of key prefix.
func aliasBomb(prefix string) string {
	keys := []string{"domain", "key", "value", "descriptors", "rate_limit", "unit", "name", "replaces", "unlimited", "shadow_mode"}
	var b strings.Builder
	b.WriteString("&a0 {name: x}\n")
	if prefix == "x" {
		b.Reset()
		b.WriteString("domain: d\nname: &a0 {name: x}\n")
	}
	for i := 1; i <= 9; i++ {
		if prefix == "x" {
			b.WriteString(keys[i] + ": ")
		} else {
			b.WriteString("      " + keys[i] + ": ")
		}
		b.WriteString("&a" + string(rune('0'+i)) + " {")
		for j, k := range keys {
			if j > 0 {
				b.WriteString(", ")
			}
			b.WriteString(k + ": *a" + string(rune('0'+i-1)))
		}
		b.WriteString("}\n")
	}
	return b.String()
}

func TestParseErrorString(t *testing.T) {
	err := &ParseError{File: "rules/api.yaml", Line: 12, Field: "rate_limit.unit", Reason: "invalid rate limit unit 'minutes'"}
	if got, want := err.Error(), "rules/api.yaml:12: rate_limit.unit: invalid rate limit unit 'minutes'"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	err.Field = ""
	if got, want := err.Error(), "rules/api.yaml:12: invalid rate limit unit 'minutes'"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func mustParse(t testing.TB, yaml string) *Domain {
	t.Helper()
	d, err := Parse("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return d
}

func ruleByID(t testing.TB, d *Domain, id string) *Rule {
	t.Helper()
	for _, r := range d.Rules {
		if r.ID == id {
			return r
		}
	}
	t.Fatalf("no rule %q in %s", id, d.Name)
	return nil
}

func TestParseFields(t *testing.T) {
	d := mustParse(t, `
domain: api
descriptors:
  - key: remote_address
    rate_limit:
      unit: Second
      requests_per_unit: 10
      burst: 25
  - key: remote_address
    value: 50.0.0.5
    shadow_mode: yes
    quota_mode: true
    rate_limit:
      unit: MINUTE
  - key: path
    value: "/api/*"
    share_threshold: true
    value_to_metric: on
    detailed_metric: false
    priority: Critical
    failure_mode: CLOSED
    metadata:
      team: edge
      tier: 2
      ratio: 0.5
      tags: [a, true, null]
      nested: {x: {y: z}}
    rate_limit:
      name: paths
      unit: week
      requests_per_unit: 7
      replaces:
        - name: other
        - name: third
  - key: ldap
    rate_limit:
      unlimited: true
      requests_per_unit: 9
  - key: ldap2
    rate_limit:
      unlimited: true
      unit: bogus
  - key: open
    rate_limit:
  - key: number
    value: 123
    priority: sheddable
`)
	if d.Name != "api" || d.File != "test.yaml" || d.Line != 2 {
		t.Errorf("domain = %q %s:%d", d.Name, d.File, d.Line)
	}
	if len(d.Warnings) != 0 {
		t.Errorf("unexpected warnings: %v", d.Warnings)
	}
	ids := []string{"api.remote_address", "api.remote_address_50.0.0.5", "api.path_/api/*", "api.ldap", "api.ldap2", "api.open", "api.number_123"}
	if len(d.Rules) != len(ids) {
		t.Fatalf("%d rules, want %d", len(d.Rules), len(ids))
	}
	for i, id := range ids {
		if d.Rules[i].ID != id {
			t.Errorf("rule %d ID %q, want %q", i, d.Rules[i].ID, id)
		}
	}

	r := ruleByID(t, d, "api.remote_address")
	if !r.HasLimit || limit0(r).Unit != UnitSecond || limit0(r).RequestsPerUnit != 10 || r.Line != 4 || r.Domain != "api" ||
		limit0(r).Limit != (limiter.Limit{Rate: 10, Period: time.Second, Burst: 25}) || r.FailureMode != FailureLocal || r.Priority != shed.Unspecified {
		t.Errorf("remote_address: %+v", r)
	}
	r = ruleByID(t, d, "api.remote_address_50.0.0.5")
	if !r.HasLimit || !r.ShadowMode || !r.QuotaMode || limit0(r).RequestsPerUnit != 0 ||
		limit0(r).Limit != (limiter.Limit{Rate: 0, Period: time.Minute, Burst: 0}) {
		t.Errorf("block list: %+v", r)
	}
	r = ruleByID(t, d, "api.path_/api/*")
	if !r.ShareThreshold || !r.ValueToMetric || r.DetailedMetric || r.Priority != shed.Critical || r.FailureMode != FailureClosed ||
		r.Name != "paths" || limit0(r).Name != "paths" || strings.Join(r.Replaces, ",") != "other,third" || limit0(r).Unit != UnitWeek ||
		limit0(r).Limit != (limiter.Limit{Rate: 7, Period: 7 * 24 * time.Hour, Burst: 7}) {
		t.Errorf("path: %+v", r)
	}
	md := r.Metadata
	if md["team"] != "edge" || md["tier"] != 2 || md["ratio"] != 0.5 {
		t.Errorf("metadata = %#v", md)
	}
	if tags, _ := md["tags"].([]any); len(tags) != 3 || tags[0] != "a" || tags[1] != true || tags[2] != nil {
		t.Errorf("metadata tags = %#v", md["tags"])
	}
	if x, _ := md["nested"].(map[string]any)["x"].(map[string]any); x["y"] != "z" {
		t.Errorf("metadata nested = %#v", md["nested"])
	}
	for _, id := range []string{"api.ldap", "api.ldap2"} {
		r = ruleByID(t, d, id)
		if !r.HasLimit || !r.Unlimited || len(r.Limits) != 0 {
			t.Errorf("%s: %+v", id, r)
		}
	}
	r = ruleByID(t, d, "api.open")
	if r.HasLimit {
		t.Errorf("rate_limit: null should mean no limit, as in envoyproxy/ratelimit: %+v", r)
	}
	r = ruleByID(t, d, "api.number_123")
	if r.Priority != shed.Sheddable || r.HasLimit {
		t.Errorf("number: %+v", r)
	}
}

// TestParseWarnings: envoyproxy/ratelimit checks keys against one flat set
// and ignores a known key in the wrong place; levee loads such a file too
// but says so.
func TestParseWarnings(t *testing.T) {
	d := mustParse(t, `
domain: d
unit: second
descriptors:
  - key: a
    requests_per_unit: 5
    rate_limit:
      unit: second
      key: x
      replaces:
        - name: y
          unit: z
  - key: b
    key: c
`)
	want := []string{
		"test.yaml:3: unit: 'unit' has no effect at the top level and is ignored",
		"test.yaml:6: requests_per_unit: 'requests_per_unit' has no effect on a descriptor and is ignored",
		"test.yaml:9: rate_limit.key: 'key' has no effect in rate_limit and is ignored",
		"test.yaml:12: rate_limit.replaces.unit: 'unit' has no effect in replaces and is ignored",
		"test.yaml:14: key: key given twice in one map; the last one wins",
	}
	var got []string
	for _, w := range d.Warnings {
		got = append(got, w.Error())
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if ruleByID(t, d, "d.c") == nil {
		t.Error("the last duplicate key should win")
	}
}

func TestParseAnchorsAndMergeKeys(t *testing.T) {
	d := mustParse(t, `
domain: d
descriptors:
  - key: a
    rate_limit: &std
      unit: minute
      requests_per_unit: 10
  - key: b
    rate_limit:
      <<: *std
      requests_per_unit: 20
  - key: c
    rate_limit: *std
`)
	for id, want := range map[string]uint32{"d.a": 10, "d.b": 20, "d.c": 10} {
		r := ruleByID(t, d, id)
		if l := limit0(r); l.RequestsPerUnit != want || l.Unit != UnitMinute {
			t.Errorf("%s: %d/%v, want %d/MINUTE", id, l.RequestsPerUnit, l.Unit, want)
		}
	}
	// A merged-in unknown key is refused like a written one.
	_, err := Parse("m.yaml", []byte("domain: d\nx: &x {bogus: 1}\n"))
	if err == nil || !strings.Contains(err.Error(), "unknown key 'x'") {
		t.Errorf("err = %v", err)
	}
	_, err = Parse("m.yaml", []byte("domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      <<: {bogus: 1}\n      unit: second\n"))
	if err == nil || !strings.Contains(err.Error(), "unknown key 'bogus'") {
		t.Errorf("err = %v", err)
	}
}

func TestUnits(t *testing.T) {
	tests := []struct {
		in   string
		unit Unit
		name string
		d    time.Duration
	}{
		{"second", UnitSecond, "SECOND", time.Second},
		{"Minute", UnitMinute, "MINUTE", time.Minute},
		{"HOUR", UnitHour, "HOUR", time.Hour},
		{"day", UnitDay, "DAY", 86400 * time.Second},
		{"week", UnitWeek, "WEEK", 604800 * time.Second},
		{"month", UnitMonth, "MONTH", 30 * 86400 * time.Second},
		{"year", UnitYear, "YEAR", 365 * 86400 * time.Second},
	}
	for _, tt := range tests {
		u, err := ParseUnit(tt.in)
		if err != nil || u != tt.unit || u.String() != tt.name || u.Duration() != tt.d {
			t.Errorf("ParseUnit(%q) = %v (%d, %v), %v", tt.in, u, int(u), u.Duration(), err)
		}
	}
	// The numeric values are envoy's enum values.
	if UnitWeek != 7 || UnitMonth != 5 || UnitYear != 6 || UnitDay != 4 {
		t.Error("Unit values differ from envoy.service.ratelimit.v3 RateLimitResponse.RateLimit.Unit")
	}
	for _, bad := range []string{"", "unknown", "minutes", "5m"} {
		if _, err := ParseUnit(bad); err == nil {
			t.Errorf("ParseUnit(%q) succeeded", bad)
		}
	}
	if UnitUnknown.String() != "UNKNOWN" || UnitUnknown.Duration() != 0 {
		t.Error("UnitUnknown")
	}
	for _, m := range []FailureMode{FailureLocal, FailureOpen, FailureClosed} {
		if got, err := ParseFailureMode(m.String()); err != nil || got != m {
			t.Errorf("ParseFailureMode(%q) = %v, %v", m.String(), got, err)
		}
	}
}

// TestParseLongestStrings: a key, value and domain of exactly
// MaxStringBytes load and match a request that carries as much.
func TestParseLongestStrings(t *testing.T) {
	long := func(c string) string { return strings.Repeat(c, MaxStringBytes) }
	c := mustConfig(t, "domain: "+long("d")+"\ndescriptors:\n  - key: "+long("k")+"\n    value: "+long("v")+"\n")
	if m := c.Match(long("d"), []Entry{{long("k"), long("v")}}); m.Rule == nil {
		t.Fatal("the longest key and value do not match")
	}
}

// limit0 returns r's first limit, or a zero one when it has none.
func limit0(r *Rule) RateLimit {
	if len(r.Limits) == 0 {
		return RateLimit{}
	}
	return r.Limits[0]
}
