package node

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// cardinalityLimit is the OpenTelemetry SDK's bound on the series of one
// instrument, set deliberately rather than left at the SDK's default of
// 2,000. levee bounds its own series first: every instrument but
// levee.decisions has labels from a fixed set or from the configuration,
// and levee.decisions admits at most engine.DetailedSeriesTotal series with
// runtime values (each rule within its own budget) besides three per rule.
// The SDK's limit only catches a configuration with thousands of rules;
// past it the SDK counts new label sets under otel_metric_overflow="true".
const cardinalityLimit = 20_000

// newMetrics returns the Prometheus registry /metrics serves and the
// OpenTelemetry meter provider whose instruments it exports, with the Go
// runtime's and the process's own metrics (go_*, process_*) beside
// levee's.
func newMetrics() (*prometheus.Registry, *sdkmetric.MeterProvider, error) {
	reg := prometheus.NewRegistry()
	if err := reg.Register(collectors.NewGoCollector()); err != nil {
		return nil, nil, fmt.Errorf("go runtime metrics: %w", err)
	}
	if err := reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		return nil, nil, fmt.Errorf("process metrics: %w", err)
	}
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo())
	if err != nil {
		return nil, nil, fmt.Errorf("metrics exporter: %w", err)
	}
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter), sdkmetric.WithCardinalityLimit(cardinalityLimit))
	return reg, provider, nil
}
