package node

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/engine"
	"github.com/levee-dev/levee/limiter/envoy"
	"github.com/levee-dev/levee/limiter/native"
	"github.com/levee-dev/levee/limiter/peer"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
)

func TestVTCodecRoundTrip(t *testing.T) {
	c := newVTCodec()
	for _, n := range []int{1, 3, 2000} { // 2000 statuses crosses the buffer pooling threshold
		resp := &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OVER_LIMIT}
		for i := range n {
			resp.Statuses = append(resp.Statuses, &rlsv3.RateLimitResponse_DescriptorStatus{
				Code:               rlsv3.RateLimitResponse_Code(1 + i%2),
				CurrentLimit:       &rlsv3.RateLimitResponse_RateLimit{Name: strings.Repeat("n", i%7), RequestsPerUnit: uint32(i), Unit: rlsv3.RateLimitResponse_RateLimit_MINUTE},
				LimitRemaining:     uint32(i * 3),
				DurationUntilReset: durationpb.New(1e9 * 7),
			})
		}
		data, err := c.Marshal(resp)
		if err != nil {
			t.Fatal(err)
		}
		got := new(rlsv3.RateLimitResponse)
		if err := proto.Unmarshal(data.Materialize(), got); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(got, resp) {
			t.Fatalf("%d statuses: round trip differs", n)
		}
		data.Free()
	}
	// Messages without vtprotobuf marshalers take the standard path.
	req := &leveev1.CheckRequest{Cohort: 9}
	data, err := c.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	got := new(leveev1.CheckRequest)
	if err := c.Unmarshal(data, got); err != nil || got.GetCohort() != 9 {
		t.Fatalf("fallback round trip: %v %v", got, err)
	}
}

// rawCodec sends a []byte as the message's bytes, so that a test can put
// malformed protobuf on the wire.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }
func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.([]byte))}, nil
}
func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*(v.(*[]byte)) = data.Materialize()
	return nil
}

// TestMalformedRequests: bytes that do not decode are the caller's fault,
// answered InvalidArgument naming what was malformed (gRPC's own answer is
// Internal), on unary calls and on a stream; a well-formed call on the same
// server is decided, and nothing stays recorded.
func TestMalformedRequests(t *testing.T) {
	cfg, err := loadRules("")
	if err != nil {
		t.Fatal(err)
	}
	store := limiter.NewStore(1000)
	eng := engine.New(engine.LocalBuckets{Store: store}, cfg, nil)
	codec := newVTCodec()
	srv := grpc.NewServer(codec.serverOptions()...)
	rlsv3.RegisterRateLimitServiceServer(srv, envoy.NewServer(eng, nil))
	leveev1.RegisterRateLimitServiceServer(srv, native.NewServer(eng, nil))
	leveev1.RegisterPeerServiceServer(srv, peer.NewServer(store, nil))
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

	good := &rlsv3.RateLimitRequest{Domain: "bench", Descriptors: []*ratelimitv3.RateLimitDescriptor{
		{Entries: []*ratelimitv3.RateLimitDescriptor_Entry{{Key: "user", Value: "ok"}}},
		{Entries: []*ratelimitv3.RateLimitDescriptor_Entry{{Key: "user", Value: "é"}}},
	}}
	wire, err := proto.Marshal(good)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(wire, []byte("é"))
	badUTF8 := bytes.Clone(wire)
	badUTF8[i] = 0xff // "é" is two bytes; 0xff never starts one
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	raw := grpc.ForceCodecV2(rawCodec{})
	for _, c := range []struct {
		name, method string
		msg          []byte
		want         string
	}{
		{"invalid UTF-8", "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit", badUTF8,
			"malformed envoy.service.ratelimit.v3.RateLimitRequest: descriptors[1].entries[0].value: invalid UTF-8"},
		{"truncated", "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit", wire[:len(wire)-3],
			"malformed envoy.service.ratelimit.v3.RateLimitRequest: descriptors[1]: truncated at byte"},
		{"native truncated", "/levee.v1.RateLimitService/Check", []byte{0x0a, 0x05, 'a'},
			"malformed levee.v1.CheckRequest: "},
	} {
		var out []byte
		err := conn.Invoke(ctx, c.method, c.msg, &out, raw)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), c.want) {
			t.Errorf("%s: %v, want InvalidArgument with %q", c.name, err, c.want)
		}
	}

	// A stream: the malformed message ends it with InvalidArgument.
	s, err := conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, "/levee.v1.PeerService/Take", raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SendMsg([]byte{0x0a, 0x40, 0x08}); err != nil { // takes: 64 bytes announced, 1 sent
		t.Fatal(err)
	}
	var out []byte
	err = s.RecvMsg(&out)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "malformed levee.v1.TakeRequest: takes[0]: truncated") {
		t.Errorf("stream: %v, want InvalidArgument naming takes[0]", err)
	}

	resp, err := rlsv3.NewRateLimitServiceClient(conn).ShouldRateLimit(ctx, good)
	if err != nil || resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
		t.Fatalf("well-formed call: %v %v", resp, err)
	}
	if n := codec.pending.Load(); n != 0 {
		t.Fatalf("%d malformed messages still recorded", n)
	}
	if eng.Decided() != 2 {
		t.Fatalf("%d items decided, want the well-formed call's 2", eng.Decided())
	}
}
