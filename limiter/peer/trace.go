package peer

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
)

// Tracing: the peer path adds spans of its own to the callers' traces, since
// gRPC instrumentation sees one long Take stream per peer, not its batches.
//
//   - levee.peer.batch (client): one per forwarded batch, from send to
//     answer. Its parent is the first sampled caller whose checks it
//     carries, and it links to every sampled caller: one RPC serves many
//     requests, so it is not one span per decision. It goes to the owner
//     in TakeRequest.traceparent.
//   - levee.peer.take (server): the owner deciding that batch.
//   - levee.peer.fallback: a Take call's checks for one owner decided by
//     their fallback, in the caller's trace.
//   - levee.peer.lease: a batch's hot-key lease requests.
//   - levee.peer.handoff: a hand-off of buckets to their new owners.
//
// A batch none of whose callers is sampled gets no span: with parent-based
// sampling, tracing costs the peer path a span context copy per call. With
// no tracer provider (the default) every hook is a nil check.

// tracer is the peer path's tracer; nil turns tracing off.
type tracer struct {
	t trace.Tracer
}

const tracerName = "github.com/levee-dev/levee/limiter/peer"

// maxLinks bounds the caller links of one batch span.
const maxLinks = 64

func newTracer(tp trace.TracerProvider) *tracer {
	if tp == nil {
		return nil
	}
	return &tracer{t: tp.Tracer(tracerName)}
}

// callTrace is the caller's span, carried by a call into its batch.
type callTrace struct {
	caller trace.SpanContext
}

// flightTrace is a batch's span, ended when the batch is answered.
type flightTrace struct {
	span trace.Span // nil: not traced
}

// callerOf returns the span of the Take call's context.
func (t *tracer) callerOf(ctx context.Context) callTrace {
	if t == nil {
		return callTrace{}
	}
	return callTrace{caller: trace.SpanContextFromContext(ctx)}
}

// batch starts the span of a batch of calls sent to peer and writes its
// trace context into req's traceparent, if any caller is sampled.
func (t *tracer) batch(b []*call, peer string, req *leveev1.TakeRequest) flightTrace {
	if t == nil {
		return flightTrace{}
	}
	var parent trace.SpanContext
	var links []trace.Link
	for _, c := range b {
		if sc := c.caller; sc.IsSampled() {
			if !parent.IsValid() {
				parent = sc
			}
			if len(links) < maxLinks {
				links = append(links, trace.Link{SpanContext: sc})
			}
		}
	}
	if !parent.IsValid() {
		return flightTrace{}
	}
	ctx := trace.ContextWithSpanContext(context.Background(), parent)
	ctx, span := t.t.Start(ctx, "levee.peer.batch",
		trace.WithSpanKind(trace.SpanKindClient),
		trace.WithLinks(links...),
		trace.WithAttributes(
			attribute.String("levee.peer", peer),
			attribute.Int("levee.peer.takes", len(req.Takes)),
			attribute.Int("levee.peer.callers", len(b)),
		))
	carrier := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, carrier)
	req.Traceparent = carrier.Get("traceparent")
	return flightTrace{span: span}
}

// end ends a batch's span with the batch's outcome.
func (f flightTrace) end(err error) {
	if f.span == nil {
		return
	}
	endWith(f.span, err)
}

func endWith(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// fallback records that n checks for peer were decided by their fallback
// because of cause, in the caller's trace.
func (t *tracer) fallback(ctx context.Context, peer string, n int, cause error) {
	if t == nil || !trace.SpanContextFromContext(ctx).IsSampled() {
		return
	}
	_, span := t.t.Start(ctx, "levee.peer.fallback", trace.WithAttributes(
		attribute.String("levee.peer", peer),
		attribute.Int("levee.peer.checks", n),
		attribute.String("levee.peer.cause", cause.Error()),
	))
	span.End()
}

// lease starts the span of a batch's lease requests to peer.
func (t *tracer) lease(ctx context.Context, peer string, n int) (context.Context, func(error)) {
	if t == nil {
		return ctx, func(error) {}
	}
	ctx, span := t.t.Start(ctx, "levee.peer.lease", trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(
		attribute.String("levee.peer", peer),
		attribute.Int("levee.peer.leases", n),
	))
	return ctx, func(err error) { endWith(span, err) }
}

// handoff starts the span of a hand-off.
func (t *tracer) handoff(ctx context.Context) (context.Context, func(buckets uint64, err error)) {
	if t == nil {
		return ctx, func(uint64, error) {}
	}
	ctx, span := t.t.Start(ctx, "levee.peer.handoff")
	return ctx, func(buckets uint64, err error) {
		span.SetAttributes(attribute.Int64("levee.peer.buckets", int64(buckets)))
		endWith(span, err)
	}
}

// take starts the owner's span for a batch whose sender traced it.
func (t *tracer) take(traceparent, from string, takes int) trace.Span {
	if t == nil || traceparent == "" {
		return nil
	}
	ctx := propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier{"traceparent": traceparent})
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return nil
	}
	_, span := t.t.Start(ctx, "levee.peer.take", trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(
		attribute.String("levee.peer.from", from),
		attribute.Int("levee.peer.takes", takes),
	))
	return span
}

// endTake ends the owner's span of a batch, if it has one.
func endTake(span trace.Span, err error) {
	if span != nil {
		endWith(span, err)
	}
}

// WithTracing makes the server continue the traces of the batches it is
// sent (nil: no spans) and returns it.
func (s *Server) WithTracing(tp trace.TracerProvider) *Server {
	s.trace = newTracer(tp)
	return s
}
