package engine

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/rules"
)

const floodRules = `
domain: d
descriptors:
  - key: user
    detailed_metric: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: tenant
    detailed_metric: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: plain
    rate_limit: {unit: minute, requests_per_unit: 1}
`

// meteredEngine is an engine on rules with a store of keys buckets,
// counting decisions through an SDK meter provider (with opts) into the
// returned reader.
func meteredEngine(t *testing.T, rules string, keys int, opts ...sdkmetric.Option) (*Engine, sdkmetric.Reader) {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(append([]sdkmetric.Option{sdkmetric.WithReader(reader)}, opts...)...)
	t.Cleanup(func() { _ = provider.Shutdown(context.Background()) })
	m, err := NewMetrics(provider.Meter("test"))
	if err != nil {
		t.Fatal(err)
	}
	return New(LocalBuckets{Store: limiter.NewStore(keys)}, mustConfig(t, "metrics.yaml", rules), m), reader
}

// decisionSeries collects levee.decisions from r: value by (domain, result,
// rule).
func decisionSeries(t *testing.T, r sdkmetric.Reader) map[labels]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[labels]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, mm := range sm.Metrics {
			if mm.Name != "levee.decisions" {
				continue
			}
			for _, dp := range mm.Data.(metricdata.Sum[int64]).DataPoints {
				if v, ok := dp.Attributes.Value("otel.metric.overflow"); ok && v.AsBool() {
					t.Errorf("the SDK's own overflow series appeared (%d decisions): levee's bound must come first", dp.Value)
				}
				var l labels
				for _, kv := range dp.Attributes.ToSlice() {
					switch kv.Key {
					case "domain":
						l.domain = kv.Value.AsString()
					case "result":
						l.result = kv.Value.AsString()
					case "rule":
						l.rule = kv.Value.AsString()
					}
				}
				out[l] += dp.Value
			}
		}
	}
	return out
}

// TestMetricsFloodedDetailedRule sends 100,000 distinct values to a
// detailed_metric rule, through an SDK with its default cardinality limit
// (2,000 series per instrument), and checks that the flood costs a bounded
// number of series, stays visible on its own rule, and leaves every other
// rule counted under its own labels, including their first over-limit.
func TestMetricsFloodedDetailedRule(t *testing.T) {
	e, reader := meteredEngine(t, floodRules, 200_000)

	const flood = 100_000
	batch := make([]Item, 0, 1000)
	for i := range flood {
		batch = append(batch, item("user", "u"+strconv.Itoa(i)))
		if len(batch) == cap(batch) {
			check(t, e, batch...)
			batch = batch[:0]
		}
	}
	// After the flood: another rule's first decisions and first
	// over-limit, and a second detailed rule with its own budget.
	check(t, e, item("plain", "p"), item("plain", "p"), item("tenant", "acme"))

	got := decisionSeries(t, reader)
	for _, c := range []struct {
		l    labels
		want int64
	}{
		{labels{"d", resultOK, "d.plain"}, 1},
		{labels{"d", resultOverLimit, "d.plain"}, 1},
		{labels{"d", resultOK, "d.tenant_acme"}, 1},
		{labels{"d", resultOK, "d.user_u0"}, 1},
	} {
		if got[c.l] != c.want {
			t.Errorf("%+v = %d, want %d", c.l, got[c.l], c.want)
		}
	}
	var userSeries int
	var userTotal int64
	for l, v := range got {
		if strings.HasPrefix(l.rule, "d.user") {
			userSeries++
			userTotal += v
		}
	}
	if userTotal != flood {
		t.Errorf("the flooded rule counts %d decisions, want %d: none may be lost", userTotal, flood)
	}
	if userSeries > DetailedSeriesPerRule+1 {
		t.Errorf("the flooded rule has %d series, want at most %d", userSeries, DetailedSeriesPerRule+1)
	}
	over := got[labels{"d", resultOK, "d.user/overflow"}]
	if want := int64(flood - DetailedSeriesPerRule); over != want {
		t.Errorf("overflow of the flooded rule = %d, want %d", over, want)
	}
}

// TestMetricsTotalBudget floods many detailed rules: together they stop at
// DetailedSeriesTotal, and each rule's excess is counted under its own
// overflow series.
func TestMetricsTotalBudget(t *testing.T) {
	var b strings.Builder
	b.WriteString("domain: d\ndescriptors:\n")
	const nrules = 2 * DetailedSeriesTotal / DetailedSeriesPerRule
	for r := range nrules {
		b.WriteString("  - key: k" + strconv.Itoa(r) + "\n    detailed_metric: true\n    rate_limit: {unit: minute, requests_per_unit: 100}\n")
	}
	e, reader := meteredEngine(t, b.String(), 1<<20, sdkmetric.WithCardinalityLimit(2*DetailedSeriesTotal))
	for r := range nrules {
		var its []Item
		for v := range DetailedSeriesPerRule + 10 {
			its = append(its, item("k"+strconv.Itoa(r), strconv.Itoa(v)))
		}
		check(t, e, its...)
	}
	got := decisionSeries(t, reader)
	detailed, overflows := 0, 0
	for l := range got {
		if strings.HasSuffix(l.rule, "/overflow") {
			overflows++
		} else {
			detailed++
		}
	}
	if detailed != DetailedSeriesTotal {
		t.Errorf("%d detailed series, want %d", detailed, DetailedSeriesTotal)
	}
	if overflows != nrules {
		t.Errorf("%d overflow series, want one per rule (%d)", overflows, nrules)
	}
}

func TestCapLabel(t *testing.T) {
	long := strings.Repeat("é", MaxLabelLen) // two bytes each
	a, b := capLabel(long+"a"), capLabel(long+"b")
	for _, s := range []string{a, b} {
		if len(s) > MaxLabelLen || !utf8.ValidString(s) {
			t.Errorf("capLabel gave %d bytes, valid UTF-8 %v", len(s), utf8.ValidString(s))
		}
	}
	if a == b {
		t.Error("two long values sharing a prefix became one label")
	}
	if s := strings.Repeat("x", MaxLabelLen); capLabel(s) != s {
		t.Error("a label within the bound was changed")
	}
}

// TestMetricsLongDetailedValue checks that a long runtime value is cut in
// the rule label.
func TestMetricsLongDetailedValue(t *testing.T) {
	e, reader := meteredEngine(t, floodRules, 10)
	check(t, e, Item{Domain: "d", Entries: []rules.Entry{{Key: "user", Value: strings.Repeat("v", 4000)}}, Hits: 1})
	for l := range decisionSeries(t, reader) {
		if len(l.rule) > MaxLabelLen || !strings.HasPrefix(l.rule, "d.user_vvv") {
			t.Errorf("rule label of %d bytes: %.40q…", len(l.rule), l.rule)
		}
	}
}
