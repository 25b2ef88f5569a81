package node

import (
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the default codec used as fallback
	"google.golang.org/grpc/mem"
)

// vtCodec is gRPC's protobuf codec with a faster path for messages that
// carry vtprotobuf's generated marshalers, as go-control-plane's Envoy types
// do: they write the response straight into a pooled buffer with no
// reflection. Everything else, and all unmarshalling, goes through the
// standard codec; the bytes on the wire are the same.
type vtCodec struct{ fallback encoding.CodecV2 }

type vtMarshaler interface {
	SizeVT() int
	MarshalToSizedBufferVTStrict([]byte) (int, error)
}

func newVTCodec() vtCodec { return vtCodec{fallback: encoding.GetCodecV2("proto")} }

// Name implements encoding.CodecV2; the codec replaces "proto".
func (vtCodec) Name() string { return "proto" }

// Marshal implements encoding.CodecV2.
func (c vtCodec) Marshal(v any) (mem.BufferSlice, error) {
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

// Unmarshal implements encoding.CodecV2.
func (c vtCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return c.fallback.Unmarshal(data, v)
}
