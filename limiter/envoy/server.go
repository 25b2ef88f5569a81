// Package envoy serves envoy.service.ratelimit.v3.RateLimitService, the
// external rate limit API Envoy's ratelimit filters call, with the semantics
// of envoyproxy/ratelimit, so levee can replace that service without
// touching its rule files or Envoy's configuration.
//
// The one intended difference is the algorithm: envoyproxy/ratelimit counts
// in fixed windows aligned to the epoch, levee uses a token bucket of the
// same rate whose burst is the per-unit limit. limit_remaining is the tokens
// left, and duration_until_reset the time until the bucket is full again,
// in whole seconds rounded up.
//
// A rule with several limits (levee's rate_limits) answers with the
// tightest as current_limit; a window of several units (unit_multiplier or
// period) is reported in current_limit.unit_multiplier, which Envoy reads.
package envoy

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/engine"
	"github.com/levee-dev/levee/limiter/internal/rpc"
	"github.com/levee-dev/levee/limiter/rules"
)

// Server implements rlsv3.RateLimitServiceServer on an Engine.
type Server struct {
	rlsv3.UnimplementedRateLimitServiceServer
	engine *engine.Engine
	now    func() time.Time
}

// NewServer returns a Server deciding with e. now is the clock (nil:
// time.Now); tests pass their own.
func NewServer(e *engine.Engine, now func() time.Time) *Server {
	if now == nil {
		now = time.Now
	}
	s := &Server{engine: e, now: now}
	return s
}

var fields = engine.Fields{Items: "descriptors", Domain: "domain", Hits: ".hits_addend", AllowEmptyEntries: true}

// ShouldRateLimit implements rlsv3.RateLimitServiceServer.
func (s *Server) ShouldRateLimit(ctx context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	if req.GetDomain() == "" {
		return nil, status.Error(codes.InvalidArgument, "domain: rate limit domain must not be empty")
	}
	if len(req.Domain) > engine.MaxStringBytes {
		return nil, status.Errorf(codes.InvalidArgument, "domain: %d bytes, at most %d allowed", len(req.Domain), engine.MaxStringBytes)
	}
	if len(req.GetDescriptors()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "descriptors: rate limit descriptor list must not be empty")
	}
	if len(req.Descriptors) > engine.MaxItems {
		return nil, status.Errorf(codes.InvalidArgument, "descriptors: %d descriptors, at most %d allowed", len(req.Descriptors), engine.MaxItems)
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
	return response(code, req, r.Statuses), nil
}

// decode converts the wire request into a pooled engine batch.
func decode(req *rlsv3.RateLimitRequest) (*engine.Batch, error) {
	total := 0
	for _, d := range req.Descriptors {
		total += len(d.GetEntries())
	}
	if total > engine.MaxItems*engine.MaxEntries/10 {
		return nil, &engine.FieldError{Field: "descriptors", Reason: "too many entries in one request"}
	}
	r := engine.GetBatch(len(req.Descriptors), total)
	if err := fill(r, req); err != nil {
		engine.PutBatch(r)
		return nil, err
	}
	return r, nil
}

func fill(r *engine.Batch, req *rlsv3.RateLimitRequest) error {
	hits := uint64(req.HitsAddend)
	if hits == 0 {
		hits = 1
	}
	for i, d := range req.Descriptors {
		entries := r.Entries(len(d.GetEntries()))
		for j, e := range d.GetEntries() {
			entries[j] = rules.Entry{Key: e.GetKey(), Value: e.GetValue()}
		}
		it := &r.Items[i]
		*it = engine.Item{Domain: req.Domain, Entries: entries, Hits: hits}
		if h := d.GetHitsAddend(); h != nil {
			it.Hits = h.GetValue()
		}
		it.Refund = d.GetIsNegativeHits()
		if o := d.GetLimit(); o != nil {
			l, err := overrideLimit(o)
			if err != nil {
				return &engine.FieldError{Field: fmt.Sprintf("descriptors[%d].limit", i), Reason: err.Error()}
			}
			it.Override, it.OverrideLimit = true, l
		}
	}
	return nil
}

// overrideLimit converts a descriptor's limit override.
func overrideLimit(o *ratelimitv3.RateLimitDescriptor_RateLimitOverride) (limiter.Limit, error) {
	unit := rules.Unit(o.GetUnit())
	d := unit.Duration()
	if d == 0 {
		return limiter.Limit{}, errors.New("unit: unknown rate limit unit")
	}
	if m := o.GetUnitMultiplier(); m != nil && m.GetValue() > 1 {
		if time.Duration(m.GetValue()) > math.MaxInt64/d {
			return limiter.Limit{}, fmt.Errorf("unit_multiplier: %d %ss is longer than levee can count", m.GetValue(), unit)
		}
		d *= time.Duration(m.GetValue())
	}
	return limiter.Limit{Rate: uint64(o.GetRequestsPerUnit()), Period: d}, nil
}

// response builds the wire response. Statuses, limits and durations are
// allocated in one slice each rather than one object per descriptor.
func response(code engine.Code, req *rlsv3.RateLimitRequest, sts []engine.Status) *rlsv3.RateLimitResponse {
	n := len(sts)
	resp := &rlsv3.RateLimitResponse{OverallCode: wireCode(code)}
	out := make([]rlsv3.RateLimitResponse_DescriptorStatus, n)
	ptrs := make([]*rlsv3.RateLimitResponse_DescriptorStatus, n)
	limited := 0
	for i := range sts {
		if sts[i].Limited {
			limited++
		}
	}
	limits := make([]rlsv3.RateLimitResponse_RateLimit, limited)
	durs := make([]durationpb.Duration, limited)
	k := 0
	for i := range sts {
		st := &sts[i]
		o := &out[i]
		ptrs[i] = o
		o.Code = wireCode(st.Code)
		switch {
		case st.Unlimited:
			o.LimitRemaining = math.MaxUint32
		case st.Limited:
			l := &limits[k]
			d := &durs[k]
			k++
			switch {
			case st.Overridden:
				// Echo the override as the caller gave it.
				o := req.Descriptors[i].GetLimit()
				l.RequestsPerUnit, l.Unit = o.GetRequestsPerUnit(), rlsv3.RateLimitResponse_RateLimit_Unit(o.GetUnit())
			case st.RateLimit != nil:
				// The tightest of the rule's limits, with its window.
				rl := st.RateLimit
				l.RequestsPerUnit, l.Unit, l.Name = rl.RequestsPerUnit, rlsv3.RateLimitResponse_RateLimit_Unit(rl.Unit), rl.Name
				if rl.UnitMultiplier > 1 {
					l.UnitMultiplier = wrapperspb.UInt32(rl.UnitMultiplier)
				}
			}
			o.CurrentLimit = l
			if st.Result.Allowed {
				o.LimitRemaining = uint32(min(st.Result.Remaining, math.MaxUint32))
			}
			// Round up without overflowing near the largest duration.
			d.Seconds = int64(st.Result.ResetAfter / time.Second)
			if st.Result.ResetAfter%time.Second > 0 {
				d.Seconds++
			}
			o.DurationUntilReset = d
		}
	}
	resp.Statuses = ptrs
	return resp
}

func wireCode(c engine.Code) rlsv3.RateLimitResponse_Code {
	if c == engine.OverLimit {
		return rlsv3.RateLimitResponse_OVER_LIMIT
	}
	return rlsv3.RateLimitResponse_OK
}
