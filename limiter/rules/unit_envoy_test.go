package rules

import (
	"testing"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
)

// TestUnitMatchesEnvoyEnum: a Unit converts to the wire enum with a plain
// conversion, and its String is the enum's name.
func TestUnitMatchesEnvoyEnum(t *testing.T) {
	for name, v := range rlsv3.RateLimitResponse_RateLimit_Unit_value {
		u := Unit(v)
		if u.String() != name {
			t.Errorf("Unit(%d).String() = %s, envoy calls it %s", v, u, name)
		}
		if name == "UNKNOWN" {
			continue
		}
		parsed, err := ParseUnit(name)
		if err != nil || parsed != u {
			t.Errorf("ParseUnit(%s) = %v, %v; want %d", name, parsed, err, v)
		}
	}
	if got := len(rlsv3.RateLimitResponse_RateLimit_Unit_value); got != 8 {
		t.Errorf("envoy has %d units; levee knows 8", got)
	}
}
