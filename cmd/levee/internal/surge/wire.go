package surge

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The backend's gRPC service is written by hand (no .proto): two unary
// methods on well-known message types, so the harness needs no generated
// code and carries no wire types of its own.
const (
	serviceName = "levee.surge.v1.Backend"
	// MethodWork is the protected method. Its request is the service time
	// in nanoseconds (a wrapperspb.Int64Value) drawn by the load
	// generator, so every policy is offered exactly the same work.
	MethodWork = "/" + serviceName + "/Work"
	// MethodStats returns the backend's BackendStats as JSON in a
	// wrapperspb.BytesValue. It is never shed.
	MethodStats = "/" + serviceName + "/Stats"
)

// backendService is the handler type the service description checks
// servers against.
type backendService interface {
	work(ctx context.Context, in *wrapperspb.Int64Value) (*emptypb.Empty, error)
	stats(ctx context.Context, in *emptypb.Empty) (*wrapperspb.BytesValue, error)
}

var serviceDesc = grpc.ServiceDesc{
	ServiceName: serviceName,
	HandlerType: (*backendService)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Work", Handler: workHandler},
		{MethodName: "Stats", Handler: statsHandler},
	},
	Metadata: "levee/surge",
}

// unaryHandler is the grpc.MethodHandler of a unary method taking a T, as
// protoc-gen-go-grpc would generate it.
func unaryHandler[T any](method string, call func(backendService, context.Context, *T) (any, error)) grpc.MethodHandler {
	return func(srv any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
		in := new(T)
		if err := dec(in); err != nil {
			return nil, err
		}
		s := srv.(backendService)
		if ic == nil {
			return call(s, ctx, in)
		}
		info := &grpc.UnaryServerInfo{Server: srv, FullMethod: method}
		return ic(ctx, in, info, func(ctx context.Context, req any) (any, error) {
			return call(s, ctx, req.(*T))
		})
	}
}

var (
	workHandler = unaryHandler(MethodWork, func(s backendService, ctx context.Context, in *wrapperspb.Int64Value) (any, error) {
		return s.work(ctx, in)
	})
	statsHandler = unaryHandler(MethodStats, func(s backendService, ctx context.Context, in *emptypb.Empty) (any, error) {
		return s.stats(ctx, in)
	})
)
