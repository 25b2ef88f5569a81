package node

import (
	"context"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the default codec used as fallback
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// vtCodec is gRPC's protobuf codec with a faster path for messages that
// carry vtprotobuf's generated marshalers, as go-control-plane's Envoy types
// do: they write the response straight into a pooled buffer with no
// reflection. Everything else, and all unmarshalling, goes through the
// standard codec; the bytes on the wire are the same.
//
// A request that does not decode (invalid UTF-8 in a string, truncated
// protobuf) is the caller's fault, but gRPC turns any error a codec returns
// into Internal, a server fault that pages levee's operators. So Unmarshal
// does not return it: it empties the message, records why it was malformed,
// and the codec's interceptors, which run before the handler sees the
// message, answer InvalidArgument naming the malformed field. The codec and
// its interceptors must be installed together (see serverOptions).
type vtCodec struct {
	fallback encoding.CodecV2

	// bad holds the messages that failed to decode, until the interceptor
	// of their call answers for them. pending counts them, so that the
	// interceptors of well-formed calls read one atomic and nothing else.
	mu      sync.Mutex
	bad     map[any]error
	pending atomic.Int64
}

// maxPendingMalformed bounds the malformed messages waiting for their
// interceptor. Past it (which only a server missing the interceptors
// reaches) Unmarshal reports errors to gRPC as before, as Internal.
const maxPendingMalformed = 1024

type vtMarshaler interface {
	SizeVT() int
	MarshalToSizedBufferVTStrict([]byte) (int, error)
}

func newVTCodec() *vtCodec {
	return &vtCodec{fallback: encoding.GetCodecV2("proto"), bad: make(map[any]error)}
}

// Name implements encoding.CodecV2; the codec replaces "proto".
func (*vtCodec) Name() string { return "proto" }

// Marshal implements encoding.CodecV2.
func (c *vtCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(vtMarshaler)
	if !ok {
		return c.fallback.Marshal(v)
	}
	size := m.SizeVT()
	if mem.IsBelowBufferPoolingThreshold(size) {
		buf := make([]byte, size)
		if _, err := m.MarshalToSizedBufferVTStrict(buf); err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(buf)}, nil
	}
	pool := mem.DefaultBufferPool()
	buf := pool.Get(size)
	if _, err := m.MarshalToSizedBufferVTStrict((*buf)[:size]); err != nil {
		pool.Put(buf)
		return nil, err
	}
	return mem.BufferSlice{mem.NewBuffer(buf, pool)}, nil
}

// Unmarshal implements encoding.CodecV2. A message that does not decode is
// emptied and recorded for the interceptors (see vtCodec).
func (c *vtCodec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.fallback.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	m, ok := v.(proto.Message)
	if !ok {
		return err
	}
	// Empty it, so that a handler reached without the interceptors sees
	// no field rather than half of them.
	proto.Reset(m)
	st := status.Error(codes.InvalidArgument, malformed(data.Materialize(), m.ProtoReflect().Descriptor(), err).Error())
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.bad) >= maxPendingMalformed {
		return err
	}
	c.bad[v] = st
	c.pending.Add(1)
	return nil
}

// malformedErr returns the error recorded for v, if Unmarshal recorded one,
// and forgets it.
func (c *vtCodec) malformedErr(v any) error {
	if c.pending.Load() == 0 {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	err, ok := c.bad[v]
	if ok {
		delete(c.bad, v)
		c.pending.Add(-1)
	}
	return err
}

// unaryInterceptor answers a call whose request did not decode with the
// InvalidArgument Unmarshal recorded for it.
func (c *vtCodec) unaryInterceptor(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := c.malformedErr(req); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// streamInterceptor does the same for each message a stream receives.
func (c *vtCodec) streamInterceptor(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return handler(srv, checkedStream{ServerStream: ss, codec: c})
}

type checkedStream struct {
	grpc.ServerStream
	codec *vtCodec
}

func (s checkedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return s.codec.malformedErr(m)
}

// serverOptions installs the codec and its interceptors; the unary one runs
// after those the caller chained before it.
func (c *vtCodec) serverOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ForceServerCodecV2(c),
		grpc.ChainUnaryInterceptor(c.unaryInterceptor),
		grpc.ChainStreamInterceptor(c.streamInterceptor),
	}
}
