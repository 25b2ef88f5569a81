package node

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
)

// sampling is the OTEL_TRACES_SAMPLER setting: the share of new traces
// sampled, and whether a caller's sampling decision is followed.
//
// levee decides whether a gRPC call is traced before otelgrpc sees it
// (tracedCalls): a call that is not sampled costs a metadata lookup and a
// random draw, not otelgrpc's span, attributes and per-event work, which
// at 1% sampling added over a quarter to the CPU per decision.
type sampling struct {
	ratio       float64 // of new traces: 0 (always_off) to 1 (always_on)
	parentBased bool
}

// samplerFromEnv reads OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG
// as the OpenTelemetry specification defines them; unset is
// parentbased_always_on.
func samplerFromEnv() (sampling, error) {
	name := strings.TrimSpace(os.Getenv("OTEL_TRACES_SAMPLER"))
	arg := strings.TrimSpace(os.Getenv("OTEL_TRACES_SAMPLER_ARG"))
	ratio := func() float64 {
		r, err := strconv.ParseFloat(arg, 64)
		if err != nil || r < 0 || r > 1 {
			return 1 // the specification's default for a missing or bad argument
		}
		return r
	}
	switch name {
	case "", "parentbased_always_on":
		return sampling{ratio: 1, parentBased: true}, nil
	case "parentbased_always_off":
		return sampling{ratio: 0, parentBased: true}, nil
	case "parentbased_traceidratio":
		return sampling{ratio: ratio(), parentBased: true}, nil
	case "always_on":
		return sampling{ratio: 1}, nil
	case "always_off":
		return sampling{ratio: 0}, nil
	case "traceidratio":
		return sampling{ratio: ratio()}, nil
	default:
		return sampling{}, fmt.Errorf("OTEL_TRACES_SAMPLER: %q is not supported (always_on, always_off, traceidratio, or one of them prefixed with parentbased_)", name)
	}
}

// sdkSampler is the SDK sampler for spans levee starts itself (batches,
// hand-offs, leases, config applies), which honours a call's forced
// decision.
func (s sampling) sdkSampler() sdktrace.Sampler {
	var root sdktrace.Sampler
	switch s.ratio {
	case 0:
		root = sdktrace.NeverSample()
	case 1:
		root = sdktrace.AlwaysSample()
	default:
		root = sdktrace.TraceIDRatioBased(s.ratio)
	}
	if s.parentBased {
		root = sdktrace.ParentBased(root)
	}
	return forcedSampler{root}
}

// sample decides whether a call is traced: by the caller's traceparent
// flag when parent-based and one is given, else by a draw at the ratio.
func (s sampling) sample(ctx context.Context) bool {
	if s.parentBased {
		if tp := metadata.ValueFromIncomingContext(ctx, "traceparent"); len(tp) == 1 {
			if sampled, ok := traceparentSampled(tp[0]); ok {
				return sampled
			}
		}
	}
	switch s.ratio {
	case 0:
		return false
	case 1:
		return true
	}
	return rand.Float64() < s.ratio
}

// traceparentSampled reads the sampled flag of a W3C traceparent,
// "00-<trace id>-<span id>-<flags>"; ok is false if it is malformed.
func traceparentSampled(tp string) (sampled, ok bool) {
	if len(tp) < 55 || tp[2] != '-' || tp[35] != '-' || tp[52] != '-' {
		return false, false
	}
	flags, err := strconv.ParseUint(tp[53:55], 16, 8)
	if err != nil {
		return false, false
	}
	return flags&1 == 1, true
}

// forceSample marks a call's context as sampled by tracedCalls.
type forceSample struct{}

// forcedSampler samples what tracedCalls decided to sample, and asks its
// root sampler otherwise.
type forcedSampler struct{ sdktrace.Sampler }

func (f forcedSampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	if p.ParentContext != nil && p.ParentContext.Value(forceSample{}) != nil {
		return sdktrace.SamplingResult{
			Decision:   sdktrace.RecordAndSample,
			Tracestate: trace.SpanContextFromContext(p.ParentContext).TraceState(),
		}
	}
	return f.Sampler.ShouldSample(p)
}

// tracedCalls is the gRPC server's tracing: an interceptor that decides
// whether a call is sampled and, only if it is, drives otelgrpc's server
// stats handler through the call (TagRPC, InHeader, End), which makes the
// span, continues the caller's trace and sets the method, peer and status
// attributes. Installing the stats handler on the server instead makes
// gRPC copy every call's metadata and build an event per message for it,
// sampled or not: at 1% sampling that alone added 15% to the CPU per
// decision. Like otelgrpc's filter on the peer connections, it leaves out
// the peer Take stream and health checks. It also writes the request log
// line (debug level), with the trace and span ids when the call is traced.
type tracedCalls struct {
	otel     stats.Handler // otelgrpc's server handler
	sampling sampling
	log      *slog.Logger
}

func (t tracedCalls) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	debug := t.log.Enabled(ctx, slog.LevelDebug)
	if strings.HasPrefix(info.FullMethod, "/grpc.health.v1.Health/") || !t.sampling.sample(ctx) {
		if !debug {
			return handler(ctx, req)
		}
		start := time.Now()
		resp, err := handler(ctx, req)
		t.logCall(ctx, info.FullMethod, start, err)
		return resp, err
	}
	start := time.Now()
	ctx = t.otel.TagRPC(context.WithValue(ctx, forceSample{}, true), &stats.RPCTagInfo{FullMethodName: info.FullMethod})
	if p, ok := peer.FromContext(ctx); ok {
		t.otel.HandleRPC(ctx, &stats.InHeader{FullMethod: info.FullMethod, RemoteAddr: p.Addr, LocalAddr: p.LocalAddr})
	}
	resp, err := handler(ctx, req)
	t.otel.HandleRPC(ctx, &stats.End{BeginTime: start, EndTime: time.Now(), Error: err})
	if debug {
		t.logCall(ctx, info.FullMethod, start, err)
	}
	return resp, err
}

// logCall is the request log line; traceLogHandler adds the trace and
// span ids when ctx holds a span.
func (t tracedCalls) logCall(ctx context.Context, method string, start time.Time, err error) {
	t.log.DebugContext(ctx, "request", "method", method, "code", status.Code(err).String(), "duration", time.Since(start))
}

// peerTakeMethod is the peer Take stream, which the peer package traces
// batch by batch.
const peerTakeMethod = "/levee.v1.PeerService/Take"
