package shed

import (
	"context"
	"errors"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Metrics exports resources' counters and control state through
// OpenTelemetry. The request path never calls OpenTelemetry: it only bumps
// the resource's own atomic counters, and the instruments here are
// asynchronous, read by a callback at collection time with attribute sets
// built once at registration. So metrics add nothing to the cost of a
// decision.
type Metrics struct {
	admitted, refused, wouldShed metric.Int64ObservableCounter
	moves                        metric.Int64ObservableCounter
	threshold, limit, inflight   metric.Int64ObservableGauge
	queueDelay, service          metric.Float64ObservableGauge
	meter                        metric.Meter
}

// NewMetrics creates the instruments on meter.
func NewMetrics(meter metric.Meter) (*Metrics, error) {
	m := &Metrics{meter: meter}
	var errs [9]error
	m.admitted, errs[0] = meter.Int64ObservableCounter("levee.shed.admitted",
		metric.WithDescription("Requests admitted, by resource and priority."), metric.WithUnit("{request}"))
	m.refused, errs[1] = meter.Int64ObservableCounter("levee.shed.refused",
		metric.WithDescription("Requests refused, by resource, priority and reason."), metric.WithUnit("{request}"))
	m.wouldShed, errs[2] = meter.Int64ObservableCounter("levee.shed.would_shed",
		metric.WithDescription("Requests shadow mode would have refused but admitted, by resource, priority and reason."), metric.WithUnit("{request}"))
	m.threshold, errs[3] = meter.Int64ObservableGauge("levee.shed.threshold",
		metric.WithDescription("Admission threshold level in force (0 admits all; priority p cohort c is (5-p)*128+c with critical=1)."), metric.WithUnit("{level}"))
	m.limit, errs[4] = meter.Int64ObservableGauge("levee.shed.concurrency_limit",
		metric.WithDescription("Adaptive concurrency limit."), metric.WithUnit("{request}"))
	m.inflight, errs[5] = meter.Int64ObservableGauge("levee.shed.inflight",
		metric.WithDescription("Admitted requests not yet released."), metric.WithUnit("{request}"))
	m.queueDelay, errs[6] = meter.Float64ObservableGauge("levee.shed.queue_delay",
		metric.WithDescription("Minimum queueing delay over the last CoDel interval."), metric.WithUnit("s"))
	m.service, errs[7] = meter.Float64ObservableGauge("levee.shed.expected_service_time",
		metric.WithDescription("Expected service time used for deadline awareness."), metric.WithUnit("s"))
	m.moves, errs[8] = meter.Int64ObservableCounter("levee.shed.threshold_moves",
		metric.WithDescription("Moves of the automatic admission threshold, by resource and cause (what read overload for a rise; room or probe for a fall)."), metric.WithUnit("{move}"))
	if err := errors.Join(errs[:]...); err != nil {
		return nil, fmt.Errorf("shed: metrics: %w", err)
	}
	return m, nil
}

// Register starts exporting r; Unregister the returned registration when r
// is retired.
func (m *Metrics) Register(r *Resource) (metric.Registration, error) {
	res := attribute.String("resource", r.Name())
	resOpt := []metric.ObserveOption{metric.WithAttributeSet(attribute.NewSet(res))}
	var byPrio [NumPriorities][]metric.ObserveOption
	var byReason [NumPriorities][NumReasons][]metric.ObserveOption
	for p := Critical; p <= Sheddable; p++ {
		pa := attribute.String("priority", p.String())
		byPrio[p.index()] = []metric.ObserveOption{metric.WithAttributeSet(attribute.NewSet(res, pa))}
		for reason := ReasonThreshold; reason < NumReasons; reason++ {
			byReason[p.index()][reason] = []metric.ObserveOption{
				metric.WithAttributeSet(attribute.NewSet(res, pa, attribute.String("reason", reason.String())))}
		}
	}
	var byCause [NumCauses][]metric.ObserveOption
	for c := range NumCauses {
		byCause[c] = []metric.ObserveOption{metric.WithAttributeSet(attribute.NewSet(res, attribute.String("cause", c.String())))}
	}
	cb := func(_ context.Context, o metric.Observer) error {
		for i := range r.stats {
			st := &r.stats[i]
			o.ObserveInt64(m.admitted, int64(st.admitted.Load()), byPrio[i]...)
			for reason := ReasonThreshold; reason < NumReasons; reason++ {
				o.ObserveInt64(m.refused, int64(st.refused[reason].Load()), byReason[i][reason]...)
				o.ObserveInt64(m.wouldShed, int64(st.wouldShed[reason].Load()), byReason[i][reason]...)
			}
		}
		s := r.Status(r.clock())
		o.ObserveInt64(m.threshold, int64(s.Threshold), resOpt...)
		for c, n := range s.Moves {
			o.ObserveInt64(m.moves, int64(n), byCause[c]...)
		}
		o.ObserveInt64(m.inflight, int64(s.Inflight), resOpt...)
		if r.conc != nil {
			o.ObserveInt64(m.limit, int64(s.Limit), resOpt...)
		}
		o.ObserveFloat64(m.queueDelay, s.QueueDelay.Seconds(), resOpt...)
		if r.dl != nil {
			o.ObserveFloat64(m.service, s.ExpectedService.Seconds(), resOpt...)
		}
		return nil
	}
	reg, err := m.meter.RegisterCallback(cb, m.admitted, m.refused, m.wouldShed, m.moves, m.threshold, m.limit, m.inflight, m.queueDelay, m.service)
	if err != nil {
		return nil, fmt.Errorf("shed: metrics for resource %q: %w", r.Name(), err)
	}
	return reg, nil
}
