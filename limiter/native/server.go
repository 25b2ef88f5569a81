// Package native serves levee.v1.RateLimitService, levee's own API: one
// batched Check per unit of work, each item either a rule (found the way
// Envoy descriptors are) or a limit the caller defines inline.
package native

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/engine"
	"github.com/levee-dev/levee/limiter/internal/rpc"
	"github.com/levee-dev/levee/limiter/rules"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
	"github.com/levee-dev/levee/shed"
)

// Server implements leveev1.RateLimitServiceServer on an Engine.
type Server struct {
	leveev1.UnimplementedRateLimitServiceServer
	engine *engine.Engine
	now    func() time.Time
}

// NewServer returns a Server deciding with e. now is the clock (nil:
// time.Now).
func NewServer(e *engine.Engine, now func() time.Time) *Server {
	if now == nil {
		now = time.Now
	}
	s := &Server{engine: e, now: now}
	return s
}

// MaxCohort is the largest cohort a request may carry. Check validates the
// cohort but does not use it (see CheckRequest.cohort in ratelimit.proto):
// it is accepted so that callers can send the labels they send to the shed
// service, and kept to shed's range so that it means the same there.
const MaxCohort = shed.NumCohorts - 1

var fields = engine.Fields{Items: "items", Domain: ".descriptor.domain", Descriptor: ".descriptor", Inline: ".inline", Hits: ".hits"}

// Check implements leveev1.RateLimitServiceServer.
func (s *Server) Check(ctx context.Context, req *leveev1.CheckRequest) (*leveev1.CheckResponse, error) {
	if p := req.GetPriority(); p < leveev1.Priority_PRIORITY_UNSPECIFIED || p > leveev1.Priority_PRIORITY_SHEDDABLE {
		return nil, status.Errorf(codes.InvalidArgument, "priority: unknown priority %d", int32(p))
	}
	if c := req.GetCohort(); c > MaxCohort {
		return nil, status.Errorf(codes.InvalidArgument, "cohort: %d is above the maximum %d", c, MaxCohort)
	}
	if len(req.GetItems()) > engine.MaxItems {
		return nil, status.Errorf(codes.InvalidArgument, "items: %d items, at most %d allowed", len(req.Items), engine.MaxItems)
	}
	r, err := decode(req)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	defer engine.PutBatch(r)
	code, err := rpc.Check(ctx, s.engine, r, fields, s.now().UnixNano())
	if err != nil {
		return nil, err
	}
	return response(code, r.Statuses), nil
}

// decode converts the wire request into a pooled engine batch.
func decode(req *leveev1.CheckRequest) (*engine.Batch, error) {
	total := 0
	for _, it := range req.Items {
		total += len(it.GetDescriptor_().GetEntries())
	}
	if total > engine.MaxItems*engine.MaxEntries/10 {
		return nil, &engine.FieldError{Field: "items", Reason: "too many descriptor entries in one request"}
	}
	r := engine.GetBatch(len(req.Items), total)
	if err := fill(r, req); err != nil {
		engine.PutBatch(r)
		return nil, err
	}
	return r, nil
}

func fill(r *engine.Batch, req *leveev1.CheckRequest) error {
	for i, wi := range req.Items {
		it := &r.Items[i]
		*it = engine.Item{Hits: 1, Priority: shed.Priority(req.GetPriority())}
		if wi.Hits != nil {
			if *wi.Hits < 0 {
				return &engine.FieldError{Field: fmt.Sprintf("items[%d].hits", i), Reason: fmt.Sprintf("must not be negative, got %d", *wi.Hits)}
			}
			it.Hits = uint64(*wi.Hits)
		}
		switch t := wi.Target.(type) {
		case *leveev1.CheckItem_Descriptor_:
			entries := r.Entries(len(t.Descriptor_.GetEntries()))
			for j, e := range t.Descriptor_.GetEntries() {
				entries[j] = rules.Entry{Key: e.GetKey(), Value: e.GetValue()}
			}
			it.Domain = t.Descriptor_.GetDomain()
			it.Entries = entries
		case *leveev1.CheckItem_Inline:
			l, err := inlineLimit(t.Inline, i)
			if err != nil {
				return err
			}
			it.Inline, it.InlineKey, it.InlineLimit, it.InlineUnlimited = true, t.Inline.GetKey(), l, t.Inline.GetUnlimited()
		default:
			return &engine.FieldError{Field: fmt.Sprintf("items[%d]", i), Reason: "one of descriptor or inline is required"}
		}
	}
	return nil
}

func inlineLimit(in *leveev1.InlineLimit, i int) (limiter.Limit, error) {
	field := func(f string) string { return fmt.Sprintf("items[%d].inline.%s", i, f) }
	if in.GetUnlimited() {
		if in.GetLimit() != 0 || in.GetBurst() != 0 || in.GetPeriod() != nil {
			return limiter.Limit{}, &engine.FieldError{Field: field("unlimited"), Reason: "an unlimited item takes no limit, burst or period"}
		}
		return limiter.Limit{}, nil
	}
	if in.GetLimit() == 0 {
		return limiter.Limit{}, &engine.FieldError{Field: field("limit"), Reason: "must be at least 1 (or set unlimited)"}
	}
	if in.GetLimit() < 0 {
		return limiter.Limit{}, &engine.FieldError{Field: field("limit"), Reason: fmt.Sprintf("must not be negative, got %d", in.GetLimit())}
	}
	if in.GetBurst() < 0 {
		return limiter.Limit{}, &engine.FieldError{Field: field("burst"), Reason: fmt.Sprintf("must not be negative, got %d", in.GetBurst())}
	}
	p := in.GetPeriod()
	if p == nil {
		return limiter.Limit{}, &engine.FieldError{Field: field("period"), Reason: "is required"}
	}
	if err := p.CheckValid(); err != nil {
		return limiter.Limit{}, &engine.FieldError{Field: field("period"), Reason: err.Error()}
	}
	return limiter.Limit{Rate: uint64(in.GetLimit()), Period: p.AsDuration(), Burst: uint64(in.GetBurst())}, nil
}

func response(code engine.Code, sts []engine.Status) *leveev1.CheckResponse {
	resp := &leveev1.CheckResponse{OverallCode: wireCode(code), Statuses: make([]*leveev1.ItemStatus, len(sts))}
	out := make([]leveev1.ItemStatus, len(sts))
	for i := range sts {
		st := &sts[i]
		o := &out[i]
		resp.Statuses[i] = o
		o.Code = wireCode(st.Code)
		if st.Rule != nil {
			o.Rule = st.Rule.Name
			if st.RateLimit != nil {
				o.Rule = st.RateLimit.Name
			}
			if o.Rule == "" {
				o.Rule = st.Rule.ID
			}
			o.QuotaMode = st.Rule.QuotaMode && !st.Overridden
		}
		if !st.Limited {
			continue
		}
		o.Limited = true
		o.Limit = int64(st.Limit.Rate)
		o.Period = durationpb.New(st.Limit.Period)
		o.Remaining = int64(st.Result.Remaining)
		o.ResetAfter = durationpb.New(st.Result.ResetAfter)
		if !st.Result.Allowed && st.Result.RetryAfter != limiter.Never {
			o.RetryAfter = durationpb.New(st.Result.RetryAfter)
		}
		o.Shadow = st.Rule != nil && st.Rule.ShadowMode && !st.Overridden
		o.OverLimitInShadow = st.ShadowOverLimit
	}
	return resp
}

func wireCode(c engine.Code) leveev1.Code {
	if c == engine.OverLimit {
		return leveev1.Code_CODE_OVER_LIMIT
	}
	return leveev1.Code_CODE_OK
}
