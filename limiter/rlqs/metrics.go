package rlqs

import (
	"context"

	rlqsv3 "github.com/envoyproxy/go-control-plane/envoy/service/rate_limit_quota/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Metrics counts the quota service's work. Its labels come from a fixed
// set or from the rule files (a rule's ID, or "unmatched"), never from
// bucket ids, so their number is bounded by the configuration.
type Metrics struct {
	streams     metric.Int64UpDownCounter
	reports     metric.Int64Counter
	assignments metric.Int64Counter
	fallbacks   metric.Int64Counter
	opts        map[string]metric.AddOption
}

// Actions as they appear in the action label of levee.rlqs.assignments.
const (
	actionTokenBucket = "token_bucket"
	actionAllowAll    = "allow_all"
	actionDenyAll     = "deny_all"
	actionExpire      = "expire"
	actionAbandon     = "abandon"
)

// NewMetrics creates the instruments on meter. Observe adds the gauges that
// read s.
func NewMetrics(meter metric.Meter) (*Metrics, error) {
	m := &Metrics{opts: make(map[string]metric.AddOption)}
	var err error
	if m.streams, err = meter.Int64UpDownCounter("levee.rlqs.streams",
		metric.WithDescription("Open quota service streams (one per Envoy and domain)."),
		metric.WithUnit("{stream}")); err != nil {
		return nil, err
	}
	if m.reports, err = meter.Int64Counter("levee.rlqs.reports",
		metric.WithDescription("Bucket usage reports received."),
		metric.WithUnit("{report}")); err != nil {
		return nil, err
	}
	if m.assignments, err = meter.Int64Counter("levee.rlqs.assignments",
		metric.WithDescription("Bucket actions pushed to Envoys, by action: token_bucket, allow_all, deny_all, expire (TTL 0, on drain), abandon."),
		metric.WithUnit("{assignment}")); err != nil {
		return nil, err
	}
	if m.fallbacks, err = meter.Int64Counter("levee.rlqs.owner_fallbacks",
		metric.WithDescription("Quota syncs whose owner could not be reached, divided locally from a fair share of the limit."),
		metric.WithUnit("{sync}")); err != nil {
		return nil, err
	}
	for _, a := range []string{actionTokenBucket, actionAllowAll, actionDenyAll, actionExpire, actionAbandon} {
		m.opts[a] = metric.WithAttributeSet(attribute.NewSet(attribute.String("action", a)))
	}
	return m, nil
}

// Observe registers the gauges that read s: the buckets subscribed on this
// node and owned by it, and per rule the demand this node's clients report
// and the rate assigned to them (summed over the nodes, the bucket's
// demand against its limit).
func (m *Metrics) Observe(meter metric.Meter, s *Server) error {
	buckets, err := meter.Int64ObservableGauge("levee.rlqs.buckets",
		metric.WithDescription("Quota buckets: role=subscribed counts (stream, bucket id) pairs on this node, role=owned the buckets this node divides, role=pairs their (node, Envoy) pairs."),
		metric.WithUnit("{bucket}"))
	if err != nil {
		return err
	}
	demand, err := meter.Float64ObservableGauge("levee.rlqs.demand",
		metric.WithDescription("Requests per second (allowed and denied) this node's Envoys report, by domain and rule."),
		metric.WithUnit("{request}/s"))
	if err != nil {
		return err
	}
	assigned, err := meter.Float64ObservableGauge("levee.rlqs.assigned",
		metric.WithDescription("Requests per second assigned to this node's Envoys, by domain and rule."),
		metric.WithUnit("{request}/s"))
	if err != nil {
		return err
	}
	subscribed := metric.WithAttributeSet(attribute.NewSet(attribute.String("role", "subscribed")))
	owned := metric.WithAttributeSet(attribute.NewSet(attribute.String("role", "owned")))
	pairs := metric.WithAttributeSet(attribute.NewSet(attribute.String("role", "pairs")))
	_, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		st := s.Stats()
		o.ObserveInt64(buckets, int64(st.Clients), subscribed)
		o.ObserveInt64(buckets, int64(st.Owned), owned)
		o.ObserveInt64(buckets, int64(st.Pairs), pairs)
		for k, r := range s.perRule() {
			opt := metric.WithAttributeSet(attribute.NewSet(attribute.String("domain", k.domain), attribute.String("rule", k.rule)))
			o.ObserveFloat64(demand, r.demand, opt)
			o.ObserveFloat64(assigned, r.assigned, opt)
		}
		return nil
	}, buckets, demand, assigned)
	return err
}

type ruleKey struct{ domain, rule string }

type ruleRates struct{ demand, assigned float64 }

// perRule sums this node's clients' demand and assignment by rule.
func (s *Server) perRule() map[ruleKey]ruleRates {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[ruleKey]ruleRates)
	for ss := range s.streams {
		for _, c := range ss.clients {
			if c.kind != kindLimited {
				continue
			}
			k := ruleKey{ss.domain, c.rule}
			r := out[k]
			if c.meter.Known() {
				r.demand += c.meter.Demand()
			}
			if c.hasSent && c.sent.kind == kindLimited {
				r.assigned += float64(c.sent.tokensPerFill) / c.sent.fill.Seconds()
			}
			out[k] = r
		}
	}
	return out
}

func (m *Metrics) stream(d int64) {
	if m != nil {
		m.streams.Add(context.Background(), d)
	}
}

func (m *Metrics) reported() {
	if m != nil {
		m.reports.Add(context.Background(), 1)
	}
}

func (m *Metrics) fallback() {
	if m != nil {
		m.fallbacks.Add(context.Background(), 1)
	}
}

func (m *Metrics) pushed(as []*rlqsv3.RateLimitQuotaResponse_BucketAction) {
	if m == nil {
		return
	}
	for _, a := range as {
		m.assignments.Add(context.Background(), 1, m.opts[actionOf(a)])
	}
}

func actionOf(a *rlqsv3.RateLimitQuotaResponse_BucketAction) string {
	q := a.GetQuotaAssignmentAction()
	switch {
	case q == nil:
		return actionAbandon
	case q.GetAssignmentTimeToLive().GetSeconds() == 0:
		return actionExpire
	case q.GetRateLimitStrategy().GetTokenBucket() != nil:
		return actionTokenBucket
	case q.GetRateLimitStrategy().GetBlanketRule() == typev3.RateLimitStrategy_DENY_ALL:
		return actionDenyAll
	}
	return actionAllowAll
}
