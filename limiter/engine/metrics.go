package engine

import (
	"context"
	"strconv"
	"sync"
	"unicode/utf8"

	"github.com/cespare/xxhash/v2"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/levee-dev/levee/limiter/rules"
)

// Metrics counts decisions by domain, result and rule.
//
// Label values come from the rule files, not from requests, so their number
// is bounded by the configuration: only descriptors that a rule (or a limit
// override in a known domain) limits are counted, and inline limits are
// counted under domain "inline". Those label sets are always counted, however
// many there are, so that no request pattern can hide a rule's decisions.
//
// Only rules with detailed_metric (or value_to_metric on their path) put
// runtime values into the rule label, as envoyproxy/ratelimit does, and those
// values come from clients. Each such rule gets its own budget of
// DetailedSeriesPerRule label sets, and all of them together at most
// DetailedSeriesTotal; past its budget a rule's new values are counted under
// rule "<rule ID>/overflow" with their domain and result, so one client
// sending distinct values costs a bounded number of series and the flood
// stays visible on the rule it hit. Every rule label is cut to MaxLabelLen
// bytes (keeping a hash of the whole value, so distinct long values stay
// distinct).
type Metrics struct {
	decisions metric.Int64Counter

	mu   sync.RWMutex
	opts map[labels]metric.AddOption
	// detailed counts the runtime-valued label sets admitted per rule
	// (domain and rule ID, stable across reloads); detailedTotal is their
	// sum.
	detailed      map[ruleKey]int
	detailedTotal int
}

type labels struct{ domain, result, rule string }

type ruleKey struct{ domain, id string }

const (
	// DetailedSeriesPerRule bounds the label sets with runtime values one
	// rule may add (about a hundred values, each with up to three results).
	DetailedSeriesPerRule = 300
	// DetailedSeriesTotal bounds the label sets with runtime values all
	// rules together may add.
	DetailedSeriesTotal = 5_000
	// MaxLabelLen bounds the length of a rule label in bytes.
	MaxLabelLen = 200
	// overflowSuffix marks a rule's series for the values past its budget.
	overflowSuffix = "/overflow"
)

// NewMetrics creates the decision instruments on meter.
func NewMetrics(meter metric.Meter) (*Metrics, error) {
	c, err := meter.Int64Counter("levee.decisions",
		metric.WithDescription("Rate limit decisions on descriptors and inline limits, by domain, result and rule."),
		metric.WithUnit("{decision}"))
	if err != nil {
		return nil, err
	}
	return &Metrics{decisions: c, opts: make(map[labels]metric.AddOption), detailed: make(map[ruleKey]int)}, nil
}

// Results as they appear in the result label.
const (
	resultOK              = "ok"
	resultOverLimit       = "over_limit"
	resultShadowOverLimit = "shadow_over_limit"
)

// Record counts the decisions of one request.
func (m *Metrics) Record(ctx context.Context, items []Item, statuses []Status) {
	if m == nil {
		return
	}
	for i := range statuses {
		st := &statuses[i]
		if !st.Limited && !st.Unlimited {
			continue
		}
		l := labels{domain: "inline", result: resultOK}
		switch {
		case st.ShadowOverLimit:
			l.result = resultShadowOverLimit
		case st.Code == OverLimit:
			l.result = resultOverLimit
		}
		var dynamic *rules.Rule
		if r := st.Rule; r != nil {
			l.domain, l.rule = r.Domain, ruleLabel(r, items[i].Entries)
			if l.rule != r.ID {
				dynamic = r
			}
		} else if !items[i].Inline {
			l.domain = items[i].Domain
		}
		m.decisions.Add(ctx, 1, m.option(l, dynamic))
	}
}

func ruleLabel(r *rules.Rule, entries []rules.Entry) string {
	if r.DetailedMetric || r.ValueToMetric {
		return r.MetricKey(entries)
	}
	return r.ID
}

// option returns the cached attribute option for l. dynamic is the rule
// whose runtime values l.rule carries, nil when l comes from the
// configuration alone.
func (m *Metrics) option(l labels, dynamic *rules.Rule) metric.AddOption {
	if len(l.rule) > MaxLabelLen {
		l.rule = capLabel(l.rule)
	}
	var k ruleKey
	if dynamic != nil {
		k = ruleKey{dynamic.Domain, dynamic.ID}
	}
	m.mu.RLock()
	o, ok := m.opts[l]
	if !ok && dynamic != nil && m.overBudget(k) {
		// A flooded rule's new values all go to its overflow series: find
		// it without the write lock.
		o, ok = m.opts[overflow(l, dynamic)]
	}
	m.mu.RUnlock()
	if ok {
		return o
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if o, ok := m.opts[l]; ok {
		return o
	}
	if dynamic != nil {
		if m.overBudget(k) {
			l = overflow(l, dynamic)
			if o, ok := m.opts[l]; ok {
				return o
			}
		} else {
			m.detailed[k]++
			m.detailedTotal++
		}
	}
	o = metric.WithAttributeSet(attribute.NewSet(
		attribute.String("domain", l.domain),
		attribute.String("result", l.result),
		attribute.String("rule", l.rule),
	))
	m.opts[l] = o
	return o
}

// overBudget reports whether the rule k may add no more label sets with
// runtime values. m.mu must be held.
func (m *Metrics) overBudget(k ruleKey) bool {
	return m.detailed[k] >= DetailedSeriesPerRule || m.detailedTotal >= DetailedSeriesTotal
}

// overflow is the label set that counts l once r is over its budget.
func overflow(l labels, r *rules.Rule) labels {
	l.rule = capLabel(r.ID + overflowSuffix)
	return l
}

// capLabel cuts s to MaxLabelLen bytes on a character boundary, ending it
// with "~" and a hash of the whole of s so that two long values that share
// a prefix stay two series.
func capLabel(s string) string {
	if len(s) <= MaxLabelLen {
		return s
	}
	sum := strconv.FormatUint(xxhash.Sum64String(s), 16)
	cut := MaxLabelLen - len(sum) - 1
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "~" + sum
}
