package node

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc/filters"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	noopmetric "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"

	"github.com/levee-dev/levee/cmd/levee/internal/configstore"
)

// tracing is the node's OpenTelemetry tracing. It is configured by the
// standard environment variables and is off unless OTEL_TRACES_EXPORTER
// names an exporter:
//
//	OTEL_TRACES_EXPORTER           "otlp" turns tracing on; unset or "none": off
//	OTEL_SDK_DISABLED              "true": off
//	OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL  "grpc" or "http/protobuf" (default)
//	OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS, _TIMEOUT, _INSECURE, _CERTIFICATE, …
//	OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG  e.g. parentbased_traceidratio and 0.01
//	OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES   (service.name defaults to "levee")
//	OTEL_BSP_*                      the batch span processor
//
// Off, the node installs no gRPC instrumentation and passes no tracer
// provider to the peer router: the request path does exactly what it did
// without tracing. Propagation is W3C trace context and baggage.
type tracing struct {
	provider *sdktrace.TracerProvider // nil: off
	sampling sampling
}

// propagator is the trace context format levee reads and writes.
var propagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

// newTracing reads the OTEL_* environment. instance names the node in the
// resource (service.instance.id) unless the environment does.
func newTracing(ctx context.Context, instance string) (*tracing, error) {
	if !tracingEnabled() {
		return &tracing{}, nil
	}
	exp, err := newExporter(ctx)
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	attrs := []attribute.KeyValue{attribute.String("service.name", "levee")}
	if instance != "" {
		attrs = append(attrs, attribute.String("service.instance.id", instance))
	}
	// The environment's attributes come after levee's defaults and win.
	res, err := resource.New(ctx, resource.WithAttributes(attrs...), resource.WithTelemetrySDK(), resource.WithFromEnv())
	if err != nil {
		return nil, fmt.Errorf("tracing resource: %w", err)
	}
	smp, err := samplerFromEnv()
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res), sdktrace.WithSampler(smp.sdkSampler()))
	return &tracing{provider: tp, sampling: smp}, nil
}

// tracingEnabled reads OTEL_SDK_DISABLED and OTEL_TRACES_EXPORTER.
func tracingEnabled() bool {
	if strings.EqualFold(strings.TrimSpace(os.Getenv("OTEL_SDK_DISABLED")), "true") {
		return false
	}
	for e := range strings.SplitSeq(os.Getenv("OTEL_TRACES_EXPORTER"), ",") {
		if strings.TrimSpace(e) == "otlp" {
			return true
		}
	}
	return false
}

// newExporter builds the OTLP exporter for the protocol the environment
// names; the exporters read their endpoint, headers and TLS settings from
// the environment themselves.
func newExporter(ctx context.Context) (sdktrace.SpanExporter, error) {
	for e := range strings.SplitSeq(os.Getenv("OTEL_TRACES_EXPORTER"), ",") {
		if e = strings.TrimSpace(e); e != "otlp" && e != "none" && e != "" {
			return nil, fmt.Errorf("OTEL_TRACES_EXPORTER: exporter %q is not supported (otlp or none)", e)
		}
	}
	proto := os.Getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if proto == "" {
		proto = os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	switch proto {
	case "grpc":
		return otlptracegrpc.New(ctx)
	case "", "http/protobuf":
		return otlptracehttp.New(ctx)
	default:
		return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL: %q is not supported (grpc or http/protobuf)", proto)
	}
}

// on reports whether tracing is on.
func (t *tracing) on() bool { return t != nil && t.provider != nil }

// tracerProvider is the provider for the peer router and server; nil when
// off, which turns their hooks into nil checks.
func (t *tracing) tracerProvider() trace.TracerProvider {
	if !t.on() {
		return nil
	}
	return t.provider
}

// tracer is the node's own tracer (config applies); nil when off.
func (t *tracing) tracer() trace.Tracer {
	if !t.on() {
		return nil
	}
	return t.provider.Tracer("github.com/levee-dev/levee/cmd/levee")
}

// otelgrpcOptions instrument gRPC calls except the peer Take stream, which
// lives as long as the connection and carries many batches (the peer
// package traces each batch), and health checks.
func (t *tracing) otelgrpcOptions() []otelgrpc.Option {
	return []otelgrpc.Option{
		otelgrpc.WithTracerProvider(t.provider),
		otelgrpc.WithPropagators(propagator),
		// levee's own metrics cover calls; no second set from otelgrpc.
		otelgrpc.WithMeterProvider(noopmetric.NewMeterProvider()),
		otelgrpc.WithFilter(filters.None(filters.FullMethodName(peerTakeMethod), filters.HealthCheck())),
	}
}

// serverOptions are the gRPC server's: a span per sampled call,
// continuing the caller's trace, and the request log line with the trace
// id (tracedCalls).
func (t *tracing) serverOptions(log *slog.Logger) []grpc.ServerOption {
	if !t.on() {
		return nil
	}
	tc := tracedCalls{otel: otelgrpc.NewServerHandler(t.otelgrpcOptions()...), sampling: t.sampling, log: log}
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(tc.unary)}
}

// dialOptions are the peer connections': a span per unary peer call (lease,
// hand-off) carrying the trace to the owner.
func (t *tracing) dialOptions() []grpc.DialOption {
	if !t.on() {
		return nil
	}
	return []grpc.DialOption{grpc.WithStatsHandler(otelgrpc.NewClientHandler(t.otelgrpcOptions()...))}
}

// shutdown flushes the spans not yet exported.
func (t *tracing) shutdown() {
	if !t.on() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = t.provider.Shutdown(ctx)
}

// traceLogHandler adds trace_id and span_id to every record logged with a
// context that holds a span.
type traceLogHandler struct{ slog.Handler }

func withTraceIDs(l *slog.Logger) *slog.Logger {
	if _, ok := l.Handler().(traceLogHandler); ok {
		return l
	}
	return slog.New(traceLogHandler{l.Handler()})
}

func (h traceLogHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

func (h traceLogHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return traceLogHandler{h.Handler.WithAttrs(as)}
}

func (h traceLogHandler) WithGroup(name string) slog.Handler {
	return traceLogHandler{h.Handler.WithGroup(name)}
}

// traceApply starts the span of applying configuration version m; the
// returned func ends it with the outcome.
func (rt *runtimeConfig) traceApply(m configstore.Meta) func(error) {
	if rt.tracer == nil {
		return func(error) {}
	}
	_, span := rt.tracer.Start(context.Background(), "levee.config.apply", trace.WithAttributes(
		attribute.Int64("levee.config.version", m.Version),
		attribute.String("levee.config.author", m.Author),
		attribute.String("levee.config.reason", m.Reason),
	))
	return func(err error) {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}
}

// nodeInstance is the node's name in its traces' resource: the configured
// node ID, or none (OTEL_RESOURCE_ATTRIBUTES may give one).
func nodeInstance(cfg Config) string {
	if cfg.Cluster != nil {
		return cfg.Cluster.NodeID
	}
	return ""
}
