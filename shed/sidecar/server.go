// Package sidecar serves levee.v1.ShedService: levee's load shedder for
// services that cannot run the Go middleware. A service asks Admit before it
// starts work on a protected resource and calls Release when the work ends;
// the permits in between let the shedder see in-flight work and latency as
// the in-process middleware does. Permits that are never released expire.
//
// The resources and their permits belong to a policy.Set, whose owner keeps
// it current and ticks it; this package only adapts the wire.
package sidecar

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
	"github.com/levee-dev/levee/shed"
	"github.com/levee-dev/levee/shed/policy"
)

// DefaultPermitTTL is how long a permit lives when the caller gives
// neither a permit TTL nor a timeout.
const DefaultPermitTTL = 30 * time.Second

// BudgetPermits is how long a permit lives, in the caller's timeouts, when
// the caller gives a timeout and no permit TTL (at most DefaultPermitTTL).
const BudgetPermits = 2

// MaxPermitTTL bounds a caller's permit lifetime.
const MaxPermitTTL = 10 * time.Minute

// Server implements leveev1.ShedServiceServer over a policy.Set. It only
// translates: the Set's owner applies the policy and drives the control
// loop, which also expires unreleased permits.
type Server struct {
	leveev1.UnimplementedShedServiceServer
	set    *policy.Set
	salter shed.CohortSalter
	now    func() time.Time
}

// NewServer returns a Server over the resources of set. now is the clock
// (nil: time.Now); salter turns user ids into cohorts.
func NewServer(set *policy.Set, salter shed.CohortSalter, now func() time.Time) *Server {
	if now == nil {
		now = time.Now
	}
	return &Server{set: set, salter: salter, now: now}
}

// permits returns the permit table of the named resource.
func (s *Server) permits(name string) (*shed.PermitTable, error) {
	if name == "" {
		return nil, status.Error(codes.InvalidArgument, "resource: must not be empty")
	}
	t := s.set.Permits(name)
	if t == nil {
		return nil, status.Errorf(codes.NotFound, "resource: %q is not in the shedding policy", name)
	}
	return t, nil
}

// Admit implements leveev1.ShedServiceServer.
func (s *Server) Admit(ctx context.Context, req *leveev1.AdmitRequest) (*leveev1.AdmitResponse, error) {
	permits, err := s.permits(req.GetResource())
	if err != nil {
		return nil, err
	}
	p := req.GetPriority()
	if p < leveev1.Priority_PRIORITY_UNSPECIFIED || p > leveev1.Priority_PRIORITY_SHEDDABLE {
		return nil, status.Errorf(codes.InvalidArgument, "priority: unknown priority %d", int32(p))
	}
	now := s.now()
	var cohort uint8
	switch {
	case req.GetUser() != "":
		cohort = s.salter.Cohort(req.GetUser(), now)
	case req.Cohort != nil:
		if req.GetCohort() >= shed.NumCohorts {
			return nil, status.Errorf(codes.InvalidArgument, "cohort: %d is above the maximum %d", req.GetCohort(), shed.NumCohorts-1)
		}
		cohort = uint8(req.GetCohort())
	}
	// The caller's own time budget, not this call's deadline, decides
	// whether the work can finish in time.
	actx := ctx
	ttl := DefaultPermitTTL
	if t := req.GetTimeout(); t != nil {
		if t.AsDuration() <= 0 {
			return nil, status.Error(codes.InvalidArgument, "timeout: must be positive")
		}
		var cancel context.CancelFunc
		actx, cancel = context.WithDeadline(context.WithoutCancel(ctx), now.Add(t.AsDuration()))
		defer cancel()
		// Work is worth nothing well past its budget: the permit of a
		// caller that dies without releasing it holds its slot of the
		// concurrency gate for BudgetPermits budgets, not for 30 s, in
		// which a few such permits close a gate of a few slots.
		ttl = min(ttl, BudgetPermits*t.AsDuration())
	} else {
		actx = context.WithoutCancel(ctx)
	}
	if t := req.GetPermitTtl(); t != nil {
		if ttl = t.AsDuration(); ttl <= 0 || ttl > MaxPermitTTL {
			return nil, status.Errorf(codes.InvalidArgument, "permit_ttl: must be between 0 and %v", MaxPermitTTL)
		}
	}
	// A caller that gave up on this call (its deadline passed while the
	// call waited for the sidecar, or it went away) never sees a permit
	// given to it, nor releases it: held until it expired, every such
	// permit would take a slot of the concurrency gate, and a few of them
	// close a gate of a few slots to everyone, critical included.
	if err := ctx.Err(); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	id, err := permits.Acquire(actx, shed.LevelOf(shed.Priority(p), cohort), now, ttl)
	if err == nil && ctx.Err() != nil {
		_ = permits.Release(id, 0, shed.OutcomeIgnored)
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	if err != nil {
		var ref *shed.Refusal
		if !errors.As(err, &ref) {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		resp := &leveev1.AdmitResponse{Reason: leveev1.RefusalReason(ref.Reason)}
		if ref.RetryAfter > 0 {
			resp.RetryAfter = durationpb.New(ref.RetryAfter)
		}
		return resp, nil
	}
	return &leveev1.AdmitResponse{Admitted: true, Permit: id}, nil
}

// Release implements leveev1.ShedServiceServer.
func (s *Server) Release(_ context.Context, req *leveev1.ReleaseRequest) (*leveev1.ReleaseResponse, error) {
	permits, err := s.permits(req.GetResource())
	if err != nil {
		return nil, err
	}
	var latency time.Duration
	if l := req.GetLatency(); l != nil {
		if latency = l.AsDuration(); latency < 0 {
			return nil, status.Error(codes.InvalidArgument, "latency: must not be negative")
		}
	}
	o, err := outcome(req.GetOutcome())
	if err != nil {
		return nil, err
	}
	if err := permits.Release(req.GetPermit(), latency, o); err != nil {
		if errors.Is(err, shed.ErrUnknownPermit) {
			return nil, status.Errorf(codes.NotFound, "permit: %d is unknown, already released or expired", req.GetPermit())
		}
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &leveev1.ReleaseResponse{}, nil
}

func outcome(o leveev1.Outcome) (shed.Outcome, error) {
	switch o {
	case leveev1.Outcome_OUTCOME_UNSPECIFIED, leveev1.Outcome_OUTCOME_SUCCESS:
		return shed.OutcomeSuccess, nil
	case leveev1.Outcome_OUTCOME_DROPPED:
		return shed.OutcomeDropped, nil
	case leveev1.Outcome_OUTCOME_IGNORED:
		return shed.OutcomeIgnored, nil
	}
	return 0, status.Error(codes.InvalidArgument, fmt.Sprintf("outcome: unknown outcome %d", int32(o)))
}
