package node

// Tracing across two whole nodes, exported over real OTLP/gRPC to a
// collector service running in this process (the OpenTelemetry proto
// module's TraceService), configured the way an operator does: with the
// OTEL_* environment variables.

import (
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracev1 "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"

	"github.com/levee-dev/levee/limiter/cluster/clustertest"
)

// collector is an in-process OTLP/gRPC trace receiver.
type collector struct {
	collectortrace.UnimplementedTraceServiceServer
	mu      sync.Mutex
	exports int
	spans   []exported
}

// exported is a received span with the node it came from.
type exported struct {
	instance string // service.instance.id
	span     *tracev1.Span
}

func (c *collector) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.exports++
	for _, rs := range req.GetResourceSpans() {
		var instance string
		for _, a := range rs.GetResource().GetAttributes() {
			if a.GetKey() == "service.instance.id" {
				instance = a.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				c.spans = append(c.spans, exported{instance: instance, span: s})
			}
		}
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

func (c *collector) received() (exports int, spans []exported) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.exports, append([]exported(nil), c.spans...)
}

// startCollector serves a collector on a loopback port until the test ends.
func startCollector(t *testing.T) (*collector, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &collector{}
	srv := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(srv, c)
	done := make(chan struct{})
	go func() { _ = srv.Serve(lis); close(done) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return c, lis.Addr().String()
}

// tracingEnv points the nodes started after it at the collector; on turns
// the exporter on (always sampling), off leaves OTEL_TRACES_EXPORTER unset.
func tracingEnv(t *testing.T, addr string, on bool) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+addr)
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
	t.Setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
	t.Setenv("OTEL_SDK_DISABLED", "")
	if on {
		t.Setenv("OTEL_TRACES_EXPORTER", "otlp")
	} else {
		t.Setenv("OTEL_TRACES_EXPORTER", "")
	}
}

// forwardOne starts two nodes and sends one check to n1 for a key n2 owns,
// then stops both nodes (which flushes their spans).
func forwardOne(t *testing.T) {
	t.Helper()
	etcd := clustertest.StartEtcd(t)
	n1 := startMember(t, etcd.Endpoints(), "n1", "")
	n2 := startMember(t, etcd.Endpoints(), "n2", "")
	waitRing(t, 2, n1, n2)
	key := keyOwned(t, "traced", "n2", []string{"n1", "n2"}, "")
	ctx, cancel := context.WithTimeout(context.Background(), clusterWait)
	defer cancel()
	st, err := n1.checkInline(ctx, inlineItem(key, 100, time.Minute, 1))
	if err != nil {
		t.Fatal(err)
	}
	if st[0].Remaining != 99 {
		t.Fatalf("remaining %d after one hit of 100", st[0].Remaining)
	}
	n1.stop(t)
	n2.stop(t)
}

func spanID(b []byte) string { return hex.EncodeToString(b) }

// TestTracingForwardedCheck checks that one check forwarded from n1 to its
// owner n2 makes one trace that covers the receiving node's call, the peer
// batch it went out in and the owner deciding it, parent to child.
func TestTracingForwardedCheck(t *testing.T) {
	c, addr := startCollector(t)
	tracingEnv(t, addr, true)
	forwardOne(t)

	_, spans := c.received()
	var checks []exported
	for _, s := range spans {
		if s.span.GetName() == "levee.v1.RateLimitService/Check" {
			checks = append(checks, s)
		}
	}
	if len(checks) != 1 {
		t.Fatalf("%d Check spans, want the one call's", len(checks))
	}
	check := checks[0]
	trace := check.span.GetTraceId()
	byName := map[string][]exported{}
	var names []string
	for _, s := range spans {
		if string(s.span.GetTraceId()) == string(trace) {
			byName[s.span.GetName()] = append(byName[s.span.GetName()], s)
			names = append(names, fmt.Sprintf("%s@%s", s.span.GetName(), s.instance))
		}
	}
	t.Logf("trace %s: %s", spanID(trace), strings.Join(names, ", "))
	batch, take := byName["levee.peer.batch"], byName["levee.peer.take"]
	if len(batch) != 1 || len(take) != 1 {
		t.Fatalf("trace of the check holds %d batch and %d take spans, want one each: %v", len(batch), len(take), names)
	}
	for _, w := range []struct {
		what, instance string
		s              exported
		kind           tracev1.Span_SpanKind
		parent         []byte
	}{
		{"the receiving node's call", "n1", check, tracev1.Span_SPAN_KIND_SERVER, nil},
		{"the peer batch", "n1", batch[0], tracev1.Span_SPAN_KIND_CLIENT, check.span.GetSpanId()},
		{"the owner's decision", "n2", take[0], tracev1.Span_SPAN_KIND_SERVER, batch[0].span.GetSpanId()},
	} {
		if w.s.instance != w.instance {
			t.Errorf("%s came from %q, want %s", w.what, w.s.instance, w.instance)
		}
		if w.s.span.GetKind() != w.kind {
			t.Errorf("%s is a %v span, want %v", w.what, w.s.span.GetKind(), w.kind)
		}
		if w.parent != nil && spanID(w.s.span.GetParentSpanId()) != spanID(w.parent) {
			t.Errorf("%s has parent %s, want %s", w.what, spanID(w.s.span.GetParentSpanId()), spanID(w.parent))
		}
	}
	if links := batch[0].span.GetLinks(); len(links) != 1 || spanID(links[0].GetSpanId()) != spanID(check.span.GetSpanId()) {
		t.Errorf("the batch span links %d callers, want the one check", len(links))
	}
}

// TestTracingOffExportsNothing runs the same forwarded check with the
// collector's address in the environment but no exporter named: nothing
// reaches the collector, not even at shutdown.
func TestTracingOffExportsNothing(t *testing.T) {
	c, addr := startCollector(t)
	tracingEnv(t, addr, false)
	forwardOne(t)
	if exports, spans := c.received(); exports != 0 || len(spans) != 0 {
		t.Fatalf("tracing off exported %d spans in %d requests", len(spans), exports)
	}
}
