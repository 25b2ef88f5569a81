// Package sidecar serves levee.v1.ShedService: levee's load shedder for
// services that cannot run the Go middleware. A service asks Admit before it
// starts work on a protected resource and calls Release when the work ends;
// the permits in between let the shedder see in-flight work and latency as
// the in-process middleware does. Permits that are never released expire.
package sidecar

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
	"github.com/levee-dev/levee/shed"
)

// DefaultPermitTTL is how long a permit lives when the caller gives none.
const DefaultPermitTTL = 30 * time.Second

// MaxPermitTTL bounds a caller's permit lifetime.
const MaxPermitTTL = 10 * time.Minute

// Server implements leveev1.ShedServiceServer.
type Server struct {
	leveev1.UnimplementedShedServiceServer
	resources atomic.Pointer[map[string]*Resource]
	salter    shed.CohortSalter
	now       func() time.Time
}

// Resource is a protected resource with the permit table of its sidecar
// callers.
type Resource struct {
	*shed.Resource
	Permits *shed.PermitTable
}

// NewServer returns a Server over resources. now is the clock (nil:
// time.Now); salter turns user ids into cohorts.
func NewServer(resources []*shed.Resource, salter shed.CohortSalter, now func() time.Time) *Server {
	if now == nil {
		now = time.Now
	}
	s := &Server{salter: salter, now: now}
	s.SetResources(resources)
	return s
}

// SetResources replaces the protected resources. Resources that keep their
// name keep their state and permits.
func (s *Server) SetResources(resources []*shed.Resource) {
	old := s.Resources()
	m := make(map[string]*Resource, len(resources))
	for _, r := range resources {
		if prev, ok := old[r.Name()]; ok && prev.Resource == r {
			m[r.Name()] = prev
			continue
		}
		m[r.Name()] = &Resource{Resource: r, Permits: shed.NewPermitTable(r)}
	}
	s.resources.Store(&m)
}

// Resources returns the resources by name.
func (s *Server) Resources() map[string]*Resource {
	if m := s.resources.Load(); m != nil {
		return *m
	}
	return nil
}

// Tick runs every resource's control step and expires unreleased permits;
// the owner calls it every 100 ms or so.
func (s *Server) Tick(now time.Time) {
	for _, r := range s.Resources() {
		r.Tick(now)
		r.Permits.Sweep(now)
	}
}

// Run calls Tick every interval until ctx is done.
func (s *Server) Run(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case now := <-t.C:
			s.Tick(now)
		}
	}
}

func (s *Server) resource(name string) (*Resource, error) {
	if name == "" {
		return nil, status.Error(codes.InvalidArgument, "resource: must not be empty")
	}
	r, ok := s.Resources()[name]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "resource: %q is not in the shedding policy", name)
	}
	return r, nil
}

// Admit implements leveev1.ShedServiceServer.
func (s *Server) Admit(ctx context.Context, req *leveev1.AdmitRequest) (*leveev1.AdmitResponse, error) {
	r, err := s.resource(req.GetResource())
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
	ttl := DefaultPermitTTL
	if t := req.GetPermitTtl(); t != nil {
		if ttl = t.AsDuration(); ttl <= 0 || ttl > MaxPermitTTL {
			return nil, status.Errorf(codes.InvalidArgument, "permit_ttl: must be between 0 and %v", MaxPermitTTL)
		}
	}
	// The caller's own time budget, not this call's deadline, decides
	// whether the work can finish in time.
	actx := ctx
	if t := req.GetTimeout(); t != nil {
		if t.AsDuration() <= 0 {
			return nil, status.Error(codes.InvalidArgument, "timeout: must be positive")
		}
		var cancel context.CancelFunc
		actx, cancel = context.WithDeadline(context.WithoutCancel(ctx), now.Add(t.AsDuration()))
		defer cancel()
	} else {
		actx = context.WithoutCancel(ctx)
	}
	id, err := r.Permits.Acquire(actx, shed.LevelOf(shed.Priority(p), cohort), now, ttl)
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
	r, err := s.resource(req.GetResource())
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
	if err := r.Permits.Release(req.GetPermit(), latency, o); err != nil {
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
