package main

import (
	"context"
	"net"
	"testing"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
)

// server answers every call OK after delay.
type server struct {
	rlsv3.UnimplementedRateLimitServiceServer
	delay time.Duration
}

func (s *server) ShouldRateLimit(ctx context.Context, _ *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	select {
	case <-time.After(s.delay):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK}, nil
}

func start(t *testing.T, delay time.Duration) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	rlsv3.RegisterRateLimitServiceServer(srv, &server{delay: delay})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// TestRunCountsInTimeAndLate: calls a server answers within the timeout
// count as OK with their latency; calls it answers after the timeout
// count as DeadlineExceeded and never as answered.
func TestRunCountsInTimeAndLate(t *testing.T) {
	fast := start(t, time.Millisecond)
	rep, err := run(fast, 4, 2, 100, 1, "bench", 500*time.Millisecond, 50*time.Millisecond, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK == 0 || rep.Codes["OK"] != rep.OK || len(rep.Codes) != 1 || rep.P50ms < 1 || rep.P99ms < rep.P50ms {
		t.Fatalf("fast server: %+v, want only OK calls of at least 1 ms", rep)
	}
	slow := start(t, 200*time.Millisecond)
	rep, err = run(slow, 4, 1, 100, 1, "bench", 20*time.Millisecond, 0, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK != 0 || rep.OKPerSec != 0 || rep.Codes["DeadlineExceeded"] == 0 {
		t.Fatalf("slow server: %+v, want every call past its 20 ms timeout", rep)
	}
}
