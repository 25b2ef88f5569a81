package rpc_test

import (
	"context"
	"net"
	"testing"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/engine"
	"github.com/levee-dev/levee/limiter/envoy"
	"github.com/levee-dev/levee/limiter/native"
	"github.com/levee-dev/levee/limiter/rules"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
)

// TestExpiredCallsAreNotDecided: over real gRPC, a call whose deadline has
// passed by the time its handler runs (here an interceptor holds it until
// then, as a queue of calls on a saturated node would) is answered with its
// context's end and decides nothing: the engine's count of decisions
// and the bucket stay as they were. A call in time is decided.
func TestExpiredCallsAreNotDecided(t *testing.T) {
	d, err := rules.Parse("bench.yaml", []byte("domain: bench\ndescriptors:\n  - key: user\n    rate_limit:\n      unit: hour\n      requests_per_unit: 10\n"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := rules.NewConfig(d)
	if err != nil {
		t.Fatal(err)
	}
	eng := engine.New(engine.LocalBuckets{Store: limiter.NewStore(100)}, cfg, nil)
	// answered receives the handlers' answers to calls with a deadline.
	answered := make(chan error, 3)
	queued := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if _, ok := ctx.Deadline(); !ok {
			return h(ctx, req)
		}
		<-ctx.Done() // dequeued only after the caller's deadline
		resp, err := h(ctx, req)
		answered <- err
		return resp, err
	}
	srv := grpc.NewServer(grpc.UnaryInterceptor(queued))
	rlsv3.RegisterRateLimitServiceServer(srv, envoy.NewServer(eng, nil))
	leveev1.RegisterRateLimitServiceServer(srv, native.NewServer(eng, nil))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	envoyReq := &rlsv3.RateLimitRequest{Domain: "bench", Descriptors: []*ratelimitv3.RateLimitDescriptor{
		{Entries: []*ratelimitv3.RateLimitDescriptor_Entry{{Key: "user", Value: "a"}}},
	}}
	nativeReq := &leveev1.CheckRequest{Items: []*leveev1.CheckItem{{Target: &leveev1.CheckItem_Descriptor_{Descriptor_: &leveev1.RuleDescriptor{
		Domain: "bench", Entries: []*leveev1.Entry{{Key: "user", Value: "a"}}}}}}}
	rls, lv := rlsv3.NewRateLimitServiceClient(conn), leveev1.NewRateLimitServiceClient(conn)

	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		if i%2 == 0 {
			_, err = rls.ShouldRateLimit(ctx, envoyReq)
		} else {
			_, err = lv.Check(ctx, nativeReq)
		}
		cancel()
		if status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("call %d: %v, want DeadlineExceeded", i, err)
		}
	}
	for i := range 3 {
		// The server's own deadline, or the caller's cancel when it gave
		// up, whichever reached the handler's context first.
		if err := <-answered; status.Code(err) != codes.DeadlineExceeded && status.Code(err) != codes.Canceled {
			t.Fatalf("handler %d answered %v, want DeadlineExceeded or Canceled", i, err)
		}
	}
	if n := eng.Decided(); n != 0 {
		t.Fatalf("%d items decided for calls whose callers had gone", n)
	}
	resp, err := rls.ShouldRateLimit(context.Background(), envoyReq)
	if err != nil || resp.GetStatuses()[0].GetLimitRemaining() != 9 {
		t.Fatalf("call in time: %v %v, want decided with 9 of 10 left (the expired calls took nothing)", resp, err)
	}
	if n := eng.Decided(); n != 1 {
		t.Fatalf("%d items decided, want 1", n)
	}
}
