package engine

import (
	"context"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/levee-dev/levee/limiter/rules"
)

// Metrics counts decisions by domain, result and rule.
//
// Label values come from the rule files, not from requests, so their number
// is bounded by the configuration: only descriptors that a rule (or a limit
// override in a known domain) limits are counted, and inline limits are
// counted under domain "inline". Only
// rules with detailed_metric put runtime values into the rule label (as
// envoyproxy/ratelimit does); to keep a flood of distinct values from
// exhausting memory, at most maxLabelSets label sets are kept and the rest
// are counted under rule "overflow".
type Metrics struct {
	decisions metric.Int64Counter

	mu   sync.RWMutex
	opts map[labels]metric.AddOption
}

type labels struct{ domain, result, rule string }

const maxLabelSets = 10_000

// NewMetrics creates the decision instruments on meter.
func NewMetrics(meter metric.Meter) (*Metrics, error) {
	c, err := meter.Int64Counter("levee.decisions",
		metric.WithDescription("Rate limit decisions on descriptors and inline limits, by domain, result and rule."),
		metric.WithUnit("{decision}"))
	if err != nil {
		return nil, err
	}
	return &Metrics{decisions: c, opts: make(map[labels]metric.AddOption)}, nil
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
		if r := st.Rule; r != nil {
			l.domain, l.rule = r.Domain, ruleLabel(r, items[i].Entries)
		} else if !items[i].Inline {
			l.domain = items[i].Domain
		}
		m.decisions.Add(ctx, 1, m.option(l))
	}
}

func ruleLabel(r *rules.Rule, entries []rules.Entry) string {
	if r.DetailedMetric || r.ValueToMetric {
		return r.MetricKey(entries)
	}
	return r.ID
}

func (m *Metrics) option(l labels) metric.AddOption {
	m.mu.RLock()
	o, ok := m.opts[l]
	m.mu.RUnlock()
	if ok {
		return o
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if o, ok := m.opts[l]; ok {
		return o
	}
	if len(m.opts) >= maxLabelSets {
		l.rule = "overflow"
		if o, ok := m.opts[l]; ok {
			return o
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
