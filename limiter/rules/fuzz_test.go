package rules

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParse: Parse never panics; every error is a *ParseError that names
// the file and a line; and whatever parses can be matched, hashed and named
// without panicking, for any request.
func FuzzParse(f *testing.F) {
	seeds := []string{
		example1, example2, example3, example4a, example4b, example5, example9, precedence, benchConfig,
		"", "domain: d\n", "domain: d\ndescriptors: [\n", "- a\n", "domain: d\nx: &a [*a]\n",
		"domain: d\ndescriptors:\n  - key: k\n    value: \"*a*b*\"\n    share_threshold: true\n    rate_limit: {unit: day, requests_per_unit: 1, burst: 2}\n",
		"domain: d\ndescriptors:\n  - key: k\n    metadata: {a: [1, 2.5, {b: null}]}\n    rate_limit: {<<: {unit: hour}}\n",
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
				_ = m.Rule.KeyHash(d.Name, en)
				if m.Rule.MetricKey(en) == "" {
					t.Fatal("empty metric key")
				}
			}
		}
	})
}
