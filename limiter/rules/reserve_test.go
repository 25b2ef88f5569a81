package rules

import (
	"errors"
	"strings"
	"testing"

	"github.com/levee-dev/levee/shed"
)

func TestReserve(t *testing.T) {
	d, err := Parse("r.yaml", []byte(`domain: d
descriptors:
  - key: k
    rate_limit: {unit: second, requests_per_unit: 100, burst: 200, reserve: {high: 5%, low: 0.25, sheddable: "50%"}}
`))
	if err != nil {
		t.Fatal(err)
	}
	r := limit0(d.Rules[0])
	want := map[shed.Priority]uint64{shed.Critical: 0, shed.High: 10, shed.Default: 10, shed.Low: 50, shed.Sheddable: 100, shed.Unspecified: 10}
	for p, n := range want {
		if r.Reserve[p] != n {
			t.Errorf("reserve[%s] = %d, want %d", p, r.Reserve[p], n)
		}
	}
	for _, tc := range []struct{ yaml, want string }{
		{`{critical: 10%}`, "critical has no reserve"},
		{`{urgent: 10%}`, "unknown priority 'urgent'"},
		{`{low: 150%}`, "must be a fraction"},
		{`{low: -0.1}`, "must be a fraction"},
		{`{low: abc}`, "must be a fraction"},
		{`{high: 50%, low: 10%}`, "low keeps less"},
		{`[10%]`, "must be a map"},
	} {
		_, err := Parse("r.yaml", []byte("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 10, reserve: "+tc.yaml+"}\n"))
		var pe *ParseError
		if !errors.As(err, &pe) || !strings.Contains(pe.Error(), tc.want) || pe.Line != 4 || !strings.HasPrefix(pe.Field, "rate_limit.reserve") {
			t.Errorf("reserve %s: got %v, want line 4 rate_limit.reserve... %q", tc.yaml, err, tc.want)
		}
	}
	if _, err := Parse("r.yaml", []byte("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true, reserve: {low: 10%}}\n")); err == nil || !strings.Contains(err.Error(), "when unlimited") {
		t.Errorf("reserve with unlimited: %v", err)
	}
}
