package rules

import (
	"errors"
	"math/big"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/shed"
)

// TestRateLimits: rate_limits lists limits that all apply, each parsed as a
// rate_limit is, with its own name, burst, reserve and window.
func TestRateLimits(t *testing.T) {
	d := mustParse(t, `
domain: api
descriptors:
  - key: user
    rate_limits:
      - {name: per_second, unit: second, requests_per_unit: 10, replaces: [{name: legacy}]}
      - {name: per_hour, unit: hour, requests_per_unit: 600, burst: 50, reserve: {low: 20%}}
      - {unit: minute, unit_multiplier: 5, requests_per_unit: 5}
      - {period: 90s, requests_per_unit: 3}
  - key: route
    rate_limit: {unit: minute, unit_multiplier: 15, requests_per_unit: 100}
  - key: token
    rate_limit: {period: 36h, requests_per_unit: 1000}
`)
	r := ruleByID(t, d, "api.user")
	want := []RateLimit{
		{Name: "per_second", Unit: UnitSecond, UnitMultiplier: 1, RequestsPerUnit: 10,
			Limit: limiter.Limit{Rate: 10, Period: time.Second, Burst: 10}},
		{Name: "per_hour", Unit: UnitHour, UnitMultiplier: 1, RequestsPerUnit: 600,
			Limit: limiter.Limit{Rate: 600, Period: time.Hour, Burst: 50}},
		{Unit: UnitMinute, UnitMultiplier: 5, RequestsPerUnit: 5,
			Limit: limiter.Limit{Rate: 5, Period: 5 * time.Minute, Burst: 5}},
		{Unit: UnitSecond, UnitMultiplier: 90, RequestsPerUnit: 3,
			Limit: limiter.Limit{Rate: 3, Period: 90 * time.Second, Burst: 3}},
	}
	want[1].Reserve[shed.Low], want[1].Reserve[shed.Sheddable] = 10, 10
	if !r.HasLimit || r.Unlimited || r.Name != "" || len(r.Limits) != len(want) {
		t.Fatalf("user: %+v", r)
	}
	for i := range want {
		if r.Limits[i] != want[i] {
			t.Errorf("limit %d = %+v\nwant %+v", i, r.Limits[i], want[i])
		}
	}
	if strings.Join(r.Replaces, ",") != "legacy" {
		t.Errorf("replaces = %v", r.Replaces)
	}
	if l := ruleByID(t, d, "api.route").Limits; len(l) != 1 || l[0].Unit != UnitMinute || l[0].UnitMultiplier != 15 || l[0].Window() != 15*time.Minute {
		t.Errorf("route: %+v", l)
	}
	if l := ruleByID(t, d, "api.token").Limits; len(l) != 1 || l[0].Unit != UnitHour || l[0].UnitMultiplier != 36 || l[0].Window() != 36*time.Hour {
		t.Errorf("token: %+v", l)
	}
	// A period takes the largest unit that divides it.
	for period, want := range map[string]struct {
		u Unit
		m uint32
	}{"1s": {UnitSecond, 1}, "120s": {UnitMinute, 2}, "1h1s": {UnitSecond, 3601}, "168h": {UnitWeek, 1}, "720h": {UnitDay, 30}} {
		d := mustParse(t, "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {period: "+period+", requests_per_unit: 1}\n")
		if l := d.Rules[0].Limits[0]; l.Unit != want.u || l.UnitMultiplier != want.m {
			t.Errorf("period %s: %v x %d, want %v x %d", period, l.Unit, l.UnitMultiplier, want.u, want.m)
		}
	}
}

// TestRateLimitsErrors: every refusal of the extensions names the field
// and the line.
func TestRateLimitsErrors(t *testing.T) {
	const head = "domain: d\ndescriptors:\n  - key: a\n"
	tests := []struct {
		name, yaml string
		line       int
		field      string
		reason     string
	}{
		{"both forms", head + "    rate_limit: {unit: second}\n    rate_limits: [{unit: second}]\n", 5, "rate_limits", "not both"},
		{"empty list", head + "    rate_limits: []\n", 4, "rate_limits", "at least one limit"},
		{"not a list", head + "    rate_limits: {unit: second}\n", 4, "rate_limits", "must be a list"},
		{"list of scalars", head + "    rate_limits: [x]\n", 4, "rate_limits", "list of type other than map"},
		{"too many", head + "    rate_limits: [" + strings.Repeat("{unit: second},", MaxLimits) + "{unit: hour}]\n", 4, "rate_limits", "at most 8"},
		{"missing unit", head + "    rate_limits:\n      - {unit: second}\n      - {requests_per_unit: 5}\n", 6, "rate_limits[1].unit", "invalid rate limit unit ''"},
		{"unlimited in list", head + "    rate_limits:\n      - {unlimited: true}\n", 5, "rate_limits[0].unlimited", "cannot be unlimited"},
		{"duplicate names", head + "    rate_limits:\n      - {name: x, unit: second}\n      - {name: x, unit: hour}\n", 6, "rate_limits[1].name", "both named 'x'"},
		{"replaces a sibling", head + "    rate_limits:\n      - {name: x, unit: second}\n      - {name: y, unit: hour, replaces: [{name: x}]}\n", 4, "rate_limits", "name of same descriptor"},
		{"replaces itself in list", head + "    rate_limits:\n      - {name: x, unit: second, replaces: [{name: x}]}\n", 5, "rate_limits[0].replaces", "name of same descriptor"},
		{"multiplier zero", head + "    rate_limit: {unit: second, unit_multiplier: 0}\n", 4, "rate_limit.unit_multiplier", "at least 1"},
		{"multiplier string", head + "    rate_limit: {unit: second, unit_multiplier: five}\n", 4, "rate_limit.unit_multiplier", "must be an integer"},
		{"multiplier too long", head + "    rate_limit: {unit: year, unit_multiplier: 300}\n", 4, "rate_limit.unit_multiplier", "longer than levee can count"},
		{"multiplier without unit", head + "    rate_limit: {unit_multiplier: 5}\n", 4, "rate_limit.unit", "invalid rate limit unit ''"},
		{"period and unit", head + "    rate_limit: {unit: second, period: 5m}\n", 4, "rate_limit.unit", "not both"},
		{"period and multiplier", head + "    rate_limit: {period: 5m, unit_multiplier: 2}\n", 4, "rate_limit.unit_multiplier", "not both"},
		{"period bad", head + "    rate_limit: {period: five minutes}\n", 4, "rate_limit.period", "whole number of seconds"},
		{"period fractional", head + "    rate_limit: {period: 1500ms}\n", 4, "rate_limit.period", "whole number of seconds"},
		{"period short", head + "    rate_limit: {period: 0s}\n", 4, "rate_limit.period", "at least 1s"},
		{"period number", head + "    rate_limit: {period: 60}\n", 4, "rate_limit.period", "written as a duration"},
		{"unlimited with multiplier", head + "    rate_limit: {unlimited: true, unit_multiplier: 2}\n", 4, "rate_limit.unit_multiplier", "when unlimited"},
		{"unlimited with period", head + "    rate_limit: {unlimited: true, period: 5m}\n", 4, "rate_limit.period", "when unlimited"},
		{"multiplier on descriptor", head + "    unit_multiplier: 5\n", 4, "unit_multiplier", "belongs in rate_limit"},
		{"rate_limits in rate_limit", head + "    rate_limit: {unit: second, rate_limits: []}\n", 4, "rate_limit.rate_limits", "belongs in a descriptor"},
		{"bad reserve in list", head + "    rate_limits: [{unit: second, requests_per_unit: 10, reserve: {low: 2}}]\n", 4, "rate_limits[0].reserve.low", "must be a fraction"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("test.yaml", []byte(tt.yaml))
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("err = %v, want a *ParseError", err)
			}
			if pe.Line != tt.line || pe.Field != tt.field || !strings.Contains(pe.Reason, tt.reason) {
				t.Errorf("got %s:%d %s: %s\nwant line %d field %s reason containing %q", pe.File, pe.Line, pe.Field, pe.Reason, tt.line, tt.field, tt.reason)
			}
		})
	}
}

// TestEnvoyFilesHaveOneLimit: a file in envoyproxy/ratelimit's format gives
// every limited rule exactly its one limit, with a multiplier of one.
func TestEnvoyFilesHaveOneLimit(t *testing.T) {
	for _, src := range []string{example1, example2, example3, example4a, example4b, example5, example9, precedence} {
		d := mustParse(t, src)
		for _, r := range d.Rules {
			switch {
			case !r.HasLimit || r.Unlimited:
				if len(r.Limits) != 0 {
					t.Errorf("%s: %d limits without a limit", r.ID, len(r.Limits))
				}
			case len(r.Limits) != 1 || r.Limits[0].UnitMultiplier != 1 || r.Limits[0].Name != r.Name ||
				r.Limits[0].Window() != r.Limits[0].Unit.Duration():
				t.Errorf("%s: limits %+v", r.ID, r.Limits)
			}
		}
	}
}

// TestLimitKeyHash: the first limit counts where KeyHash says, every other
// in a bucket of its own, and no limit's key is another descriptor's.
func TestLimitKeyHash(t *testing.T) {
	c := mustConfig(t, `
domain: d
descriptors:
  - key: user
    rate_limits: [{unit: second}, {unit: minute}, {unit: hour}]
    descriptors:
      - key: x
        rate_limit: {unit: second}
`)
	en := e("user=a")
	r := c.Match("d", en).Rule
	seen := map[uint64]string{}
	add := func(h uint64, what string) {
		if prev, dup := seen[h]; dup {
			t.Errorf("%s and %s share key %x", what, prev, h)
		}
		seen[h] = what
	}
	if r.LimitKeyHash("d", en, 0) != r.KeyHash("d", en) {
		t.Error("limit 0 does not count under KeyHash")
	}
	for k := range r.Limits {
		add(r.LimitKeyHash("d", en, k), "limit "+string(rune('0'+k)))
	}
	// The nested descriptor with one more entry, whatever its key and value.
	for _, ex := range []string{"", "\xff", "\xff\xff\xff\xff\x01", "x"} {
		deep := []Entry{{"user", "a"}, {"x", ex}}
		add(c.Match("d", deep).Rule.KeyHash("d", deep), "user=a,x="+ex)
	}
	allocs := testing.AllocsPerRun(100, func() { _ = r.LimitKeyHash("d", en, 2) })
	if allocs != 0 {
		t.Errorf("LimitKeyHash allocates %v times", allocs)
	}
}

// tokenModel is an independent model of a limit: a bucket that holds at
// most burst whole tokens, one of which arrives at every instant
// epoch + k·period/rate, counted with exact rationals. It keeps the token
// count, not a theoretical arrival time.
type tokenModel struct {
	rate, burst uint64
	period      time.Duration
	tokens      uint64
	seen        *big.Int // arrivals counted so far
}

// modelEpoch is limiter's documented origin of token time.
var modelEpoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func newTokenModel(l limiter.Limit, start time.Time) *tokenModel {
	m := &tokenModel{rate: l.Rate, burst: l.Capacity(), period: l.Period, tokens: l.Capacity()}
	m.seen = m.arrivals(start)
	return m
}

// arrivals is the number of tokens that have arrived by t: ⌊(t−epoch)·rate/period⌋.
func (m *tokenModel) arrivals(t time.Time) *big.Int {
	n := new(big.Int).Mul(big.NewInt(int64(t.Sub(modelEpoch))), new(big.Int).SetUint64(m.rate))
	return n.Div(n, big.NewInt(int64(m.period)))
}

// at returns the first instant at which arrivals reach n.
func (m *tokenModel) at(n *big.Int) time.Time {
	ns := new(big.Int).Mul(n, big.NewInt(int64(m.period)))
	q, r := new(big.Int).QuoRem(ns, new(big.Int).SetUint64(m.rate), new(big.Int))
	if r.Sign() > 0 {
		q.Add(q, big.NewInt(1))
	}
	return modelEpoch.Add(time.Duration(q.Int64()))
}

// take refills to now and takes hits if they fit; it returns what
// limiter.Result reports.
func (m *tokenModel) take(now time.Time, hits uint64) limiter.Result {
	a := m.arrivals(now)
	gained := new(big.Int).Sub(a, m.seen)
	m.seen = a
	if gained.IsUint64() && m.tokens+gained.Uint64() < m.burst {
		m.tokens += gained.Uint64()
	} else {
		m.tokens = m.burst
	}
	// The bucket is full again once burst−tokens more tokens arrive.
	full := func(missing uint64) time.Duration {
		if missing == 0 {
			return 0
		}
		return m.at(new(big.Int).Add(a, new(big.Int).SetUint64(missing))).Sub(now)
	}
	if hits <= m.tokens {
		m.tokens -= hits
		return limiter.Result{Allowed: true, Remaining: m.tokens, ResetAfter: full(m.burst - m.tokens)}
	}
	res := limiter.Result{Remaining: m.tokens, ResetAfter: full(m.burst - m.tokens), RetryAfter: limiter.Never}
	if hits <= m.burst {
		res.RetryAfter = m.at(new(big.Int).Add(a, new(big.Int).SetUint64(hits-m.tokens))).Sub(now)
	}
	return res
}

// TestWindowsAgainstModel: N-unit windows are exact. Each limit parsed from
// a file with unit_multiplier or period decides a random sequence of
// requests exactly as the independent token model does: the same admissions,
// remaining tokens, reset and retry times, to the nanosecond.
func TestWindowsAgainstModel(t *testing.T) {
	d := mustParse(t, `
domain: d
descriptors:
  - key: k
    rate_limits:
      - {unit: minute, unit_multiplier: 5, requests_per_unit: 5}
      - {period: 90s, requests_per_unit: 3, burst: 4}
      - {unit: hour, unit_multiplier: 7, requests_per_unit: 1000}
      - {unit: day, unit_multiplier: 3, requests_per_unit: 7}
      - {unit: second, unit_multiplier: 13, requests_per_unit: 1}
      - {period: 1h1s, requests_per_unit: 4294967295}
`)
	rng := rand.New(rand.NewPCG(18, 5))
	for _, rl := range d.Rules[0].Limits {
		l := rl.Limit
		start := modelEpoch.Add(time.Duration(rng.Int64N(int64(400 * 24 * time.Hour))))
		m := newTokenModel(l, start)
		var tat int64
		now := start
		for i := range 2000 {
			// Steps around the token interval, so buckets both fill and run dry.
			step := time.Duration(rng.Int64N(int64(2*l.Period/time.Duration(l.Rate)) + 2))
			if rng.IntN(10) == 0 {
				step = 0
			}
			now = now.Add(step)
			hits := uint64(rng.IntN(3))
			var got limiter.Result
			tat, got = l.Take(tat, hits, now.UnixNano())
			want := m.take(now, hits)
			if got != want {
				t.Fatalf("%d per %v, step %d at +%v, %d hits: got %+v, model %+v", l.Rate, l.Period, i, now.Sub(start), hits, got, want)
			}
		}
	}
}
