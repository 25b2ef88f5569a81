package rules

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// FuzzParse: Parse never panics; every error is a *ParseError that names
// the file and a line; whatever parses can be matched, hashed and named
// without panicking, for any request; and every limit it yields is usable:
// a window of UnitMultiplier Units, a valid bucket, a counter of its own.
func FuzzParse(f *testing.F) {
	seeds := []string{
		example1, example2, example3, example4a, example4b, example5, example9, precedence, benchConfig,
		"", "domain: d\n", "domain: d\ndescriptors: [\n", "- a\n", "domain: d\nx: &a [*a]\n",
		"domain: d\ndescriptors:\n  - key: k\n    value: \"*a*b*\"\n    share_threshold: true\n    rate_limit: {unit: day, requests_per_unit: 1, burst: 2}\n",
		"domain: d\ndescriptors:\n  - key: k\n    metadata: {a: [1, 2.5, {b: null}]}\n    rate_limit: {<<: {unit: hour}}\n",
		"domain: d\ndescriptors:\n  - key: k\n    rate_limits:\n      - {name: s, unit: second, requests_per_unit: 10, replaces: [{name: o}]}\n      - {unit: minute, unit_multiplier: 5, requests_per_unit: 5, burst: 7, reserve: {low: 10%}}\n      - {period: 1h30m, requests_per_unit: 3}\n",
		"domain: d\ndescriptors:\n  - key: k\n    value: v*\n    rate_limit: {unit: day, unit_multiplier: 4294967295, requests_per_unit: 1}\n",
		"domain: d\ndescriptors:\n  - key: k\n    rate_limits: &l [{period: 2s}]\n  - key: j\n    rate_limits: *l\n",
	}
	files, _ := filepath.Glob("testdata/config/*/*.yaml")
	more, _ := filepath.Glob("testdata/config/*.yaml")
	for _, name := range append(files, more...) {
		if data, err := os.ReadFile(name); err == nil {
			seeds = append(seeds, string(data))
		}
	}
	for _, s := range seeds {
		f.Add([]byte(s), "k", "abc", "user", "")
	}
	f.Fuzz(func(t *testing.T, data []byte, k1, v1, k2, v2 string) {
		d, err := Parse("fuzz.yaml", data)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v (%T) is not a *ParseError", err, err)
			}
			if pe.File != "fuzz.yaml" || pe.Line < 1 || pe.Reason == "" || !strings.HasPrefix(err.Error(), "fuzz.yaml:") {
				t.Fatalf("malformed error %#v", *pe)
			}
			return
		}
		c, err := NewConfig(d)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range d.Rules {
			checkLimits(t, r)
		}
		requests := [][]Entry{
			{{k1, v1}},
			{{k1, v1}, {k2, v2}},
			{{k2, v2}, {k1, v1}, {k1, v2}},
		}
		// Also every rule's own path, so that deep rules are reached.
		for _, r := range d.Rules {
			var en []Entry
			for _, l := range r.levels {
				en = append(en, Entry{l.key, strings.ReplaceAll(l.value, "*", v1)})
			}
			requests = append(requests, en)
		}
		for _, en := range requests {
			m := c.Match(d.Name, en)
			if tr := c.Trace(d.Name, en); tr.Match != m || (m.Rule == nil) != (tr.Stop != StopMatched) ||
				(len(en) > 0 && (len(tr.Steps) == 0 || len(tr.Steps) > len(en))) {
				t.Fatalf("Trace(%v) = %+v, Match %+v", en, tr, m)
			}
			if !m.DomainFound {
				t.Fatal("own domain not found")
			}
			if m.Rule != nil {
				if m.Rule.Depth() != len(en) {
					t.Fatalf("rule %s of depth %d matched %d entries", m.Rule.ID, m.Rule.Depth(), len(en))
				}
				keys := map[uint64]bool{m.Rule.KeyHash(d.Name, en): true}
				for k := 1; k < len(m.Rule.Limits); k++ {
					h := m.Rule.LimitKeyHash(d.Name, en, k)
					if keys[h] {
						t.Fatalf("rule %s: limit %d shares a counter", m.Rule.ID, k)
					}
					keys[h] = true
				}
				if m.Rule.MetricKey(en) == "" {
					t.Fatal("empty metric key")
				}
			}
		}
	})
}

// checkLimits fails unless r's limits are what the engine can enforce.
func checkLimits(t *testing.T, r *Rule) {
	t.Helper()
	if len(r.Limits) > MaxLimits || (r.HasLimit && !r.Unlimited) != (len(r.Limits) > 0) {
		t.Fatalf("rule %s: HasLimit %v, Unlimited %v, %d limits", r.ID, r.HasLimit, r.Unlimited, len(r.Limits))
	}
	for i, l := range r.Limits {
		if l.UnitMultiplier < 1 || l.Unit.Duration() == 0 ||
			l.Window() != time.Duration(l.UnitMultiplier)*l.Unit.Duration() || l.Window()%time.Second != 0 ||
			l.Limit.Rate != uint64(l.RequestsPerUnit) || !l.Limit.Valid() {
			t.Fatalf("rule %s limit %d: %+v", r.ID, i, l)
		}
		for p := range l.Reserve {
			if l.Reserve[p] > l.Limit.Capacity() {
				t.Fatalf("rule %s limit %d: reserve %d above capacity %d", r.ID, i, l.Reserve[p], l.Limit.Capacity())
			}
		}
	}
}
