package middleware_test

import (
	"net"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/levee-dev/levee/limiter/client/sidecartest"
	"github.com/levee-dev/levee/limiter/engine"
	"github.com/levee-dev/levee/limiter/middleware"
	"github.com/levee-dev/levee/limiter/rules"
)

// serveGRPC runs a gRPC server (the health service stands in for an
// application) behind l, and returns a client of it.
func serveGRPC(t *testing.T, l *middleware.Limiter) healthpb.HealthClient {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(l.Unary), grpc.ChainStreamInterceptor(l.Stream))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return healthpb.NewHealthClient(conn)
}

var grpcDescribe = middleware.All(
	middleware.Descriptor("web", middleware.Header("user", "x-user")),
	middleware.Descriptor("web", middleware.Route("route")),
)

// TestGRPCResourceExhausted: a call over a quota fails with
// ResourceExhausted, a RetryInfo delay matching an independent account of
// the bucket, and a QuotaFailure naming the quota; streams draw once.
func TestGRPCResourceExhausted(t *testing.T) {
	sc := sidecartest.New(t, testRules, sidecartest.TCP)
	hc := serveGRPC(t, middleware.New(newClient(t, sc, false), grpcDescribe, middleware.Options{}))
	ctx := metadata.AppendToOutgoingContext(t.Context(), "x-user", "ann")
	for i := range 3 {
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted {
		t.Fatalf("fourth call: %v", err)
	}
	user := bucket{rate: 3, period: time.Minute}
	var retry *errdetails.RetryInfo
	var qf *errdetails.QuotaFailure
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.RetryInfo:
			retry = d
		case *errdetails.QuotaFailure:
			qf = d
		}
	}
	if retry == nil || retry.RetryDelay.AsDuration() != user.period/time.Duration(user.rate) {
		t.Fatalf("RetryInfo %v", retry)
	}
	if qf == nil || len(qf.Violations) != 1 || qf.Violations[0].Subject != "per_user" ||
		qf.Violations[0].Description != "over the limit of 3 per 1m0s; retry in 20s" {
		t.Fatalf("QuotaFailure %v", qf)
	}
	// The route quota keys on the method, and took all four calls (the
	// fourth was refused by per_user only).
	look := []engine.Item{{Domain: "web", Entries: []rules.Entry{{Key: "route", Value: "/grpc.health.v1.Health/Check"}}}}
	sts := make([]engine.Status, 1)
	if _, err := sc.Engine.Check(t.Context(), look, sts, sc.Clock.Now().UnixNano()); err != nil || sts[0].Result.Remaining != 996 {
		t.Fatalf("route bucket: %+v %v", sts[0], err)
	}
	// A stream draws on the quotas when it starts.
	other := metadata.AppendToOutgoingContext(t.Context(), "x-user", "bo")
	for i := range 4 {
		w, err := hc.Watch(other, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		_, err = w.Recv()
		if over := i == 3; (status.Code(err) == codes.ResourceExhausted) != over || (!over && err != nil) {
			t.Fatalf("stream %d: %v", i, err)
		}
	}
}

// TestGRPCFailClosed: with the sidecar stopped, a limiter whose client
// fails closed answers Unavailable, and one failing open serves.
func TestGRPCFailClosed(t *testing.T) {
	sc := sidecartest.New(t, testRules, sidecartest.Unix)
	closed := serveGRPC(t, middleware.New(newClient(t, sc, true), grpcDescribe, middleware.Options{}))
	open := serveGRPC(t, middleware.New(newClient(t, sc, false), grpcDescribe, middleware.Options{}))
	ctx := metadata.AppendToOutgoingContext(t.Context(), "x-user", "cy")
	sc.Stop()
	if _, err := closed.Check(ctx, &healthpb.HealthCheckRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("fail closed: %v", err)
	}
	if _, err := open.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("fail open: %v", err)
	}
}
