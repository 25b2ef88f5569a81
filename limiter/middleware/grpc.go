package middleware

import (
	"context"
	"fmt"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/levee-dev/levee/limiter/client"
	"github.com/levee-dev/levee/shed"
)

// Unary is a grpc.UnaryServerInterceptor: a call over a quota fails with
// ResourceExhausted, RetryInfo and QuotaFailure; one levee did not decide
// fails with Unavailable if the client fails closed, and is served
// otherwise.
func (l *Limiter) Unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := l.admit(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// Stream is a grpc.StreamServerInterceptor: a stream draws on its quotas
// once, when it starts.
func (l *Limiter) Stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := l.admit(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
}

func (l *Limiter) admit(ctx context.Context, method string) error {
	items := l.describe(&Request{Context: ctx, Method: method})
	if len(items) == 0 {
		return nil
	}
	var p shed.Priority
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		p, _ = shed.ParsePriority(first(md[shed.HeaderPriority]))
	}
	d := l.client.CheckPriority(ctx, p, items...)
	switch {
	case d.Err != nil && !d.Allowed:
		return status.Error(codes.Unavailable, d.Err.Error())
	case !d.Allowed:
		return OverLimitStatus(&d).Err()
	}
	return nil
}

// OverLimitStatus encodes a refusal as a gRPC status: ResourceExhausted,
// with RetryInfo when the refusal says when to retry, and a QuotaFailure
// naming each quota that refused.
func OverLimitStatus(d *client.Decision) *status.Status {
	names := refused(d)
	st := status.New(codes.ResourceExhausted, "rate limit exceeded: "+strings.Join(names, ", "))
	var details []protoadapt.MessageV1
	if d.RetryAfter > 0 {
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(d.RetryAfter)})
	}
	qf := &errdetails.QuotaFailure{}
	for i := range d.Items {
		it := &d.Items[i]
		if !it.OverLimit {
			continue
		}
		v := &errdetails.QuotaFailure_Violation{Subject: it.Policy, Description: "over the limit"}
		if it.Limited {
			v.Description = fmt.Sprintf("over the limit of %d per %v", it.Rate, it.Period)
			if it.RetryAfter > 0 {
				v.Description += fmt.Sprintf("; retry in %v", it.RetryAfter.Round(time.Millisecond))
			}
		}
		qf.Violations = append(qf.Violations, v)
	}
	if len(qf.Violations) > 0 {
		details = append(details, qf)
	}
	if ds, err := st.WithDetails(details...); err == nil {
		st = ds
	}
	return st
}
