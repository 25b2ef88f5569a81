// Package middleware adapts a shed.Resource to gRPC and net/http servers,
// and gives gRPC clients adaptive throttling and a retry budget.
//
// On the server, a Guard reads the request's level from the
// x-levee-priority, x-levee-cohort and x-levee-user headers (unlabelled
// traffic is default). Its tap handle refuses a request from its headers
// alone, before the message is read or decoded, when the threshold already
// excludes it, and stamps the arrival time so the interceptor can measure
// the queueing delay between arrival and handling. Its unary and stream
// interceptors acquire and release the resource around the handler (a stream
// holds its permit for its lifetime but is not a latency sample). Refusals
// are codes.ResourceExhausted with an errdetails.RetryInfo carrying the
// suggested delay (none when retrying cannot help); a bad label is
// codes.InvalidArgument naming the header. The HTTP middleware answers 503
// with Retry-After, and 400 for a bad label.
//
// Encoded refusals are cached per refusal value, so a refusal costs no
// allocation in steady state.
package middleware

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"time"

	"github.com/levee-dev/levee/shed"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
	"google.golang.org/protobuf/types/known/durationpb"
)

// GuardOptions configures a Guard. The zero value is usable.
type GuardOptions struct {
	// Salter turns x-levee-user into a cohort; its Seed must be the same on
	// every server that sheds the same users.
	Salter shed.CohortSalter
	// Exempt says which gRPC methods bypass shedding entirely (neither
	// counted nor refused). Nil exempts the gRPC health service.
	Exempt func(fullMethod string) bool
	// Clock reads the time (time.Now when nil).
	Clock func() time.Time
}

// Guard applies a shed.Resource to incoming requests.
type Guard struct {
	res    *shed.Resource
	salter shed.CohortSalter
	exempt func(string) bool
	clock  func() time.Time
	cache  [shed.NumReasons]atomic.Pointer[cachedStatus]
}

type cachedStatus struct {
	ref *shed.Refusal
	err error
}

// NewGuard returns a guard for r.
func NewGuard(r *shed.Resource, o GuardOptions) *Guard {
	g := &Guard{res: r, salter: o.Salter, exempt: o.Exempt, clock: o.Clock}
	if g.exempt == nil {
		g.exempt = IsHealthCheck
	}
	if g.clock == nil {
		g.clock = time.Now
	}
	return g
}

// IsHealthCheck reports whether fullMethod belongs to the gRPC health
// service. Health checks must not be shed (a shed health check takes the
// server out of rotation, moving its load elsewhere) nor sampled.
func IsHealthCheck(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/grpc.health.v1.Health/")
}

type tapKey struct{}

type tapInfo struct {
	level   shed.Level
	arrival time.Time
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// level resolves a request's labels. Anonymous requests get a random cohort,
// so that they spread over all cohorts and can be shed in small steps.
func (g *Guard) level(lb shed.Labels, now time.Time) (shed.Level, error) {
	var salt uint64
	if lb.User != "" && lb.Cohort == "" {
		salt = g.salter.Salt(now)
	}
	return lb.Level(salt, uint8(rand.Uint32()%shed.NumCohorts))
}

func (g *Guard) levelFromMD(md metadata.MD, now time.Time) (shed.Level, error) {
	return g.level(shed.Labels{
		Priority: first(md[shed.HeaderPriority]),
		Cohort:   first(md[shed.HeaderCohort]),
		User:     first(md[shed.HeaderUser]),
	}, now)
}

// Tap is a tap.ServerInHandle (install with grpc.InTapHandle): it refuses a
// request whose level the threshold already excludes, from its headers
// alone, and passes the level and arrival time on to the interceptors.
func (g *Guard) Tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	if g.exempt(info.FullMethodName) {
		return ctx, nil
	}
	now := g.clock()
	l, err := g.levelFromMD(info.Header, now)
	if err != nil {
		return ctx, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := g.res.Precheck(l, now); err != nil {
		return ctx, g.grpcError(err)
	}
	return context.WithValue(ctx, tapKey{}, tapInfo{level: l, arrival: now}), nil
}

var _ tap.ServerInHandle = (*Guard)(nil).Tap

// admit acquires a permit for the request in ctx.
func (g *Guard) admit(ctx context.Context) (shed.Permit, time.Time, error) {
	start := g.clock()
	var l shed.Level
	if ti, ok := ctx.Value(tapKey{}).(tapInfo); ok {
		l = ti.level
		g.res.ObserveQueueDelay(start.Sub(ti.arrival))
	} else {
		md, _ := metadata.FromIncomingContext(ctx)
		var err error
		if l, err = g.levelFromMD(md, start); err != nil {
			return shed.Permit{}, start, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	p, err := g.res.Acquire(ctx, l)
	if err != nil {
		return p, start, g.grpcError(err)
	}
	return p, start, nil
}

// Unary is a grpc.UnaryServerInterceptor.
func (g *Guard) Unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	if g.exempt(info.FullMethod) {
		return handler(ctx, req)
	}
	p, start, err := g.admit(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { g.res.Release(p, g.clock().Sub(start), outcome(err)) }()
	return handler(ctx, req)
}

// Stream is a grpc.StreamServerInterceptor. A stream holds its permit until
// it ends; its duration is not a latency sample.
func (g *Guard) Stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if g.exempt(info.FullMethod) {
		return handler(srv, ss)
	}
	p, _, err := g.admit(ss.Context())
	if err != nil {
		return err
	}
	defer g.res.Release(p, 0, shed.OutcomeIgnored)
	return handler(srv, ss)
}

// outcome classifies a handler's error for the latency signals.
func outcome(err error) shed.Outcome {
	if err == nil {
		return shed.OutcomeSuccess
	}
	switch {
	case errors.Is(err, context.Canceled):
		return shed.OutcomeIgnored
	case errors.Is(err, context.DeadlineExceeded):
		return shed.OutcomeDropped
	}
	switch status.Code(err) {
	case codes.Canceled:
		return shed.OutcomeIgnored
	case codes.DeadlineExceeded, codes.ResourceExhausted, codes.Unavailable:
		return shed.OutcomeDropped
	}
	return shed.OutcomeSuccess
}

// grpcError converts a refusal into a ResourceExhausted status with
// RetryInfo, reusing the encoding while the refusal value is unchanged.
func (g *Guard) grpcError(err error) error {
	ref, ok := err.(*shed.Refusal)
	if !ok || int(ref.Reason) >= len(g.cache) {
		return status.Error(codes.Internal, err.Error())
	}
	slot := &g.cache[ref.Reason]
	if c := slot.Load(); c != nil && c.ref == ref {
		return c.err
	}
	c := &cachedStatus{ref: ref, err: RefusalStatus(ref).Err()}
	slot.Store(c)
	return c.err
}

// RefusalStatus encodes a refusal as a gRPC status: ResourceExhausted, with
// RetryInfo when a retry delay is suggested.
func RefusalStatus(ref *shed.Refusal) *status.Status {
	st := status.New(codes.ResourceExhausted, ref.Error())
	if ref.RetryAfter > 0 {
		if d, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(ref.RetryAfter)}); err == nil {
			st = d
		}
	}
	return st
}
