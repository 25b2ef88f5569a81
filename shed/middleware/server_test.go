package middleware

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/levee-dev/levee/shed"
	"github.com/levee-dev/levee/shed/shedtest"
)

// testService counts the calls that reached a handler.
type testService struct {
	testpb.UnimplementedTestServiceServer
	calls   atomic.Int64
	onUnary func(ctx context.Context) error
}

func (s *testService) UnaryCall(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	s.calls.Add(1)
	if s.onUnary != nil {
		if err := s.onUnary(ctx); err != nil {
			return nil, err
		}
	}
	return &testpb.SimpleResponse{}, nil
}

func (s *testService) StreamingOutputCall(_ *testpb.StreamingOutputCallRequest, stream testpb.TestService_StreamingOutputCallServer) error {
	s.calls.Add(1)
	if s.onUnary != nil {
		if err := s.onUnary(stream.Context()); err != nil {
			return err
		}
	}
	return stream.Send(&testpb.StreamingOutputCallResponse{})
}

type harness struct {
	res   *shed.Resource
	guard *Guard
	svc   *testService
	cc    *grpc.ClientConn
	cl    testpb.TestServiceClient
}

// newHarness serves the test service and health over a real loopback
// listener, guarded by a fresh resource.
func newHarness(t *testing.T, cfg shed.Config, withTap bool, dial ...grpc.DialOption) *harness {
	t.Helper()
	res, err := shed.New("api", cfg)
	if err != nil {
		t.Fatal(err)
	}
	g := NewGuard(res, GuardOptions{Salter: shed.CohortSalter{Seed: 3}})
	opts := []grpc.ServerOption{grpc.ChainUnaryInterceptor(g.Unary), grpc.ChainStreamInterceptor(g.Stream)}
	if withTap {
		opts = append(opts, grpc.InTapHandle(g.Tap))
	}
	srv := grpc.NewServer(opts...)
	svc := &testService{}
	testpb.RegisterTestServiceServer(srv, svc)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	cc, err := grpc.NewClient(lis.Addr().String(), append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, dial...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cc.Close()
		srv.Stop()
		<-done
	})
	return &harness{res: res, guard: g, svc: svc, cc: cc, cl: testpb.NewTestServiceClient(cc)}
}

func withLabels(ctx context.Context, kv ...string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, kv...)
}

// retryInfo returns the RetryInfo delay in err, if any.
func retryInfo(err error) (time.Duration, bool) {
	st, _ := status.FromError(err)
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration(), true
		}
	}
	return 0, false
}

func TestTapRefusesFromHeaders(t *testing.T) {
	h := newHarness(t, shed.Config{RetryAfter: 20 * time.Millisecond}, true)
	if err := h.res.Pin(shed.CriticalOnly, time.Now().Add(30*time.Second)); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	_, err := h.cl.UnaryCall(withLabels(ctx, shed.HeaderPriority, "low", shed.HeaderUser, "alice"), &testpb.SimpleRequest{})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("low under a critical-only pin: %v, want ResourceExhausted", err)
	}
	if d, ok := retryInfo(err); !ok || d < 29*time.Second || d > 30*time.Second {
		t.Fatalf("RetryInfo %v, %v; want about the 30 s left on the pin", d, ok)
	}
	if n := h.svc.calls.Load(); n != 0 {
		t.Fatalf("%d calls reached the handler", n)
	}
	if c := h.res.Counts(shed.Low); c.Refused[shed.ReasonOverride] != 1 {
		t.Fatalf("low counts %+v, want one override refusal", c)
	}
	if _, err := h.cl.UnaryCall(withLabels(ctx, shed.HeaderPriority, "critical"), &testpb.SimpleRequest{}); err != nil {
		t.Fatalf("critical under a critical-only pin: %v", err)
	}
	if c := h.res.Counts(shed.Critical); c.Admitted != 1 {
		t.Fatalf("critical counts %+v, want one admitted (the tap must not count it twice)", c)
	}
	// Streams are refused by the tap too.
	stream, err := h.cl.StreamingOutputCall(withLabels(ctx, shed.HeaderPriority, "sheddable"), &testpb.StreamingOutputCallRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("sheddable stream under the pin: %v, want ResourceExhausted", err)
	}
}

// rawCodec sends its bytes as they are, so a test can send a body that is
// not a valid protobuf message.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return v.([]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

func TestTapRejectsBeforeDecoding(t *testing.T) {
	h := newHarness(t, shed.Config{}, true)
	if err := h.res.Pin(shed.CriticalOnly, time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	garbage := []byte{0xff, 0xff, 0xff, 0xff, 0x0f} // not a SimpleRequest
	var reply []byte
	call := func(prio string) error {
		return h.cc.Invoke(withLabels(context.Background(), shed.HeaderPriority, prio),
			testpb.TestService_UnaryCall_FullMethodName, garbage, &reply, grpc.ForceCodec(rawCodec{}))
	}
	// Admitted, the garbage body reaches the decoder and fails there...
	if err := call("critical"); status.Code(err) == codes.OK || status.Code(err) == codes.ResourceExhausted {
		t.Fatalf("critical with an undecodable body: %v, want a decoding error", err)
	}
	// ...refused, it is never decoded: the answer is the refusal.
	if err := call("low"); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("low with an undecodable body: %v, want ResourceExhausted from the tap", err)
	}
}

func TestInterceptorsWithoutTap(t *testing.T) {
	h := newHarness(t, shed.Config{}, false)
	if err := h.res.Pin(shed.LevelOf(shed.Default, 0), time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	_, err := h.cl.UnaryCall(withLabels(ctx, shed.HeaderPriority, "low"), &testpb.SimpleRequest{})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("unary low: %v, want ResourceExhausted", err)
	}
	if _, ok := retryInfo(err); !ok {
		t.Fatal("unary refusal without RetryInfo")
	}
	// Unlabelled traffic is default, and so admitted at default/0.
	if _, err := h.cl.UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
		t.Fatalf("unlabelled: %v", err)
	}
	if c := h.res.Counts(shed.Default); c.Admitted != 1 {
		t.Fatalf("default counts %+v, want one admitted", c)
	}
	stream, err := h.cl.StreamingOutputCall(withLabels(ctx, shed.HeaderPriority, "sheddable"), &testpb.StreamingOutputCallRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("stream sheddable: %v, want ResourceExhausted", err)
	}
	if _, ok := retryInfo(err); !ok {
		t.Fatal("stream refusal without RetryInfo")
	}
	if n := h.svc.calls.Load(); n != 1 {
		t.Fatalf("%d calls reached handlers, want only the unlabelled one", n)
	}
}

func TestStreamHoldsPermit(t *testing.T) {
	h := newHarness(t, shed.Config{}, true)
	var inside atomic.Int64
	h.svc.onUnary = func(context.Context) error {
		inside.Store(int64(h.res.Inflight()))
		return nil
	}
	stream, err := h.cl.StreamingOutputCall(withLabels(context.Background(), shed.HeaderPriority, "high"), &testpb.StreamingOutputCallRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	if inside.Load() != 1 {
		t.Fatalf("inflight inside the stream handler %d, want 1", inside.Load())
	}
	shedtest.Eventually(t, time.Second, "the stream's permit released", func() error {
		if n := h.res.Inflight(); n != 0 {
			return fmt.Errorf("inflight %d, want 0", n)
		}
		return nil
	})
}

func TestConcurrencyRefusal(t *testing.T) {
	h := newHarness(t, shed.Config{Concurrency: shed.GradientConfig{InitialLimit: 1, MinLimit: 1}}, true)
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	h.svc.onUnary = func(context.Context) error {
		entered <- struct{}{}
		<-release
		return nil
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, err := h.cl.UnaryCall(context.Background(), &testpb.SimpleRequest{}); err != nil {
			t.Errorf("first call: %v", err)
		}
	}()
	<-entered
	_, err := h.cl.UnaryCall(context.Background(), &testpb.SimpleRequest{})
	close(release)
	wg.Wait()
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("second call over a limit of 1: %v, want ResourceExhausted", err)
	}
	if d, ok := retryInfo(err); !ok || d <= 0 {
		t.Fatalf("concurrency refusal RetryInfo %v, %v; want a short positive delay", d, ok)
	}
	if !strings.Contains(status.Convert(err).Message(), "concurrency") {
		t.Fatalf("message %q does not name the reason", status.Convert(err).Message())
	}
}

func TestDeadlineRefusalHasNoRetryInfo(t *testing.T) {
	h := newHarness(t, shed.Config{}, true)
	dl := h.res.Deadlines()
	now := time.Now()
	dl.Update(now)
	for range 20 {
		dl.Observe(500 * time.Millisecond)
	}
	dl.Update(now.Add(time.Second))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := h.cl.UnaryCall(ctx, &testpb.SimpleRequest{})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("50 ms deadline against 500 ms service: %v, want ResourceExhausted", err)
	}
	if _, ok := retryInfo(err); ok {
		t.Fatal("deadline refusal carries RetryInfo; retrying cannot help")
	}
	if h.svc.calls.Load() != 0 {
		t.Fatal("a request that could not finish in time reached the handler")
	}
}

func TestBadLabelsAreInvalidArgument(t *testing.T) {
	for _, withTap := range []bool{true, false} {
		h := newHarness(t, shed.Config{}, withTap)
		_, err := h.cl.UnaryCall(withLabels(context.Background(), shed.HeaderPriority, "urgent"), &testpb.SimpleRequest{})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), shed.HeaderPriority) {
			t.Fatalf("tap %v, unknown priority: %v; want InvalidArgument naming %s", withTap, err, shed.HeaderPriority)
		}
		_, err = h.cl.UnaryCall(withLabels(context.Background(), shed.HeaderCohort, "900"), &testpb.SimpleRequest{})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), shed.HeaderCohort) {
			t.Fatalf("tap %v, bad cohort: %v; want InvalidArgument naming %s", withTap, err, shed.HeaderCohort)
		}
	}
}

func TestHealthChecksAreExempt(t *testing.T) {
	h := newHarness(t, shed.Config{}, true)
	if err := h.res.Pin(shed.NumLevels, time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := healthpb.NewHealthClient(h.cc).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("health check under a refuse-all pin: %v", err)
	}
	if _, err := h.cl.UnaryCall(withLabels(context.Background(), shed.HeaderPriority, "critical"), &testpb.SimpleRequest{}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("critical under a refuse-all pin: %v", err)
	}
}

func TestTapFeedsQueueDelayAndCohorts(t *testing.T) {
	h := newHarness(t, shed.Config{}, true)
	now := time.Now()
	h.res.Tick(now)
	for range 5 {
		if _, err := h.cl.UnaryCall(withLabels(context.Background(), shed.HeaderUser, "bob"), &testpb.SimpleRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	h.res.Tick(now.Add(200 * time.Millisecond))
	if _, ok := h.res.QueueDelay().Delay(); !ok {
		t.Fatal("no queueing delay observed between tap and interceptor")
	}
	// bob's cohort under this hour's salt decides his fate: pin just above
	// it and he is refused, just at it and he is admitted.
	c := shed.CohortSalter{Seed: 3}.Cohort("bob", time.Now())
	lvl := shed.LevelOf(shed.Default, c)
	ctx := withLabels(context.Background(), shed.HeaderUser, "bob")
	if err := h.res.Pin(lvl+1, time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := h.cl.UnaryCall(ctx, &testpb.SimpleRequest{}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("bob (%v) under a pin at %v: %v, want refused", lvl, lvl+1, err)
	}
	if err := h.res.Pin(lvl, time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := h.cl.UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
		t.Fatalf("bob (%v) under a pin at his level: %v", lvl, err)
	}
}

func TestOutcome(t *testing.T) {
	for err, want := range map[error]shed.Outcome{
		nil:                                        shed.OutcomeSuccess,
		context.Canceled:                           shed.OutcomeIgnored,
		status.Error(codes.Canceled, ""):           shed.OutcomeIgnored,
		context.DeadlineExceeded:                   shed.OutcomeDropped,
		status.Error(codes.Unavailable, ""):        shed.OutcomeDropped,
		status.Error(codes.NotFound, ""):           shed.OutcomeSuccess,
		errors.New("plain"):                        shed.OutcomeSuccess,
		status.Error(codes.ResourceExhausted, "x"): shed.OutcomeDropped,
	} {
		if got := outcome(err); got != want {
			t.Errorf("outcome(%v) = %v, want %v", err, got, want)
		}
	}
}

func BenchmarkTapRefuse(b *testing.B) {
	res, err := shed.New("api", shed.Config{})
	if err != nil {
		b.Fatal(err)
	}
	if err := res.Pin(shed.CriticalOnly, time.Now().Add(time.Hour)); err != nil {
		b.Fatal(err)
	}
	g := NewGuard(res, GuardOptions{})
	info := &tap.Info{
		FullMethodName: testpb.TestService_UnaryCall_FullMethodName,
		Header:         metadata.Pairs(shed.HeaderPriority, "low", shed.HeaderUser, "alice"),
	}
	ctx := context.Background()
	if _, err := g.Tap(ctx, info); status.Code(err) != codes.ResourceExhausted {
		b.Fatalf("tap: %v", err)
	}
	b.ReportAllocs()
	for b.Loop() {
		_, _ = g.Tap(ctx, info)
	}
}
