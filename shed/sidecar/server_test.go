package sidecar

import (
	"context"
	"net"
	"sort"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
	"github.com/levee-dev/levee/shed"
	"github.com/levee-dev/levee/shed/policy"
	"github.com/levee-dev/levee/shed/shedtest"
)

// start serves the resources of a Set built from the policy file text,
// with clock now (nil: time.Now).
func start(t testing.TB, now func() time.Time, policyYAML string) (*policy.Set, leveev1.ShedServiceClient) {
	t.Helper()
	p, err := policy.Parse("p.yaml", []byte(policyYAML))
	if err != nil {
		t.Fatal(err)
	}
	set := policy.NewSet(now, nil)
	if err := set.Apply(p); err != nil {
		t.Fatal(err)
	}
	s := NewServer(set, shed.CohortSalter{}, now)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	leveev1.RegisterShedServiceServer(g, s)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return set, leveev1.NewShedServiceClient(conn)
}

const timeline = "resources:\n  - name: timeline\n"

func TestAdmitReleaseRoundTrip(t *testing.T) {
	set, c := start(t, nil, timeline)
	r := set.Resources()[0]
	ctx := context.Background()
	resp, err := c.Admit(ctx, &leveev1.AdmitRequest{Resource: "timeline", Priority: leveev1.Priority_PRIORITY_HIGH, User: "alice", Timeout: durationpb.New(time.Second)})
	if err != nil || !resp.Admitted || resp.Permit == 0 {
		t.Fatalf("admit: %v %v", resp, err)
	}
	if r.Inflight() != 1 {
		t.Fatalf("inflight %d after admit", r.Inflight())
	}
	if _, err := c.Release(ctx, &leveev1.ReleaseRequest{Resource: "timeline", Permit: resp.Permit, Latency: durationpb.New(2 * time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
	if r.Inflight() != 0 {
		t.Fatalf("inflight %d after release", r.Inflight())
	}
	// A second release of the same permit is refused, naming the field.
	_, err = c.Release(ctx, &leveev1.ReleaseRequest{Resource: "timeline", Permit: resp.Permit})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("double release: %v", err)
	}
}

func TestBadInputNamesTheField(t *testing.T) {
	_, c := start(t, nil, timeline)
	ctx := context.Background()
	cohort := uint32(200)
	for _, tc := range []struct {
		req   *leveev1.AdmitRequest
		code  codes.Code
		field string
	}{
		{&leveev1.AdmitRequest{}, codes.InvalidArgument, "resource"},
		{&leveev1.AdmitRequest{Resource: "nope"}, codes.NotFound, "resource"},
		{&leveev1.AdmitRequest{Resource: "timeline", Priority: 9}, codes.InvalidArgument, "priority"},
		{&leveev1.AdmitRequest{Resource: "timeline", Cohort: &cohort}, codes.InvalidArgument, "cohort"},
		{&leveev1.AdmitRequest{Resource: "timeline", PermitTtl: durationpb.New(time.Hour)}, codes.InvalidArgument, "permit_ttl"},
		{&leveev1.AdmitRequest{Resource: "timeline", Timeout: durationpb.New(-time.Second)}, codes.InvalidArgument, "timeout"},
	} {
		_, err := c.Admit(ctx, tc.req)
		st := status.Convert(err)
		if st.Code() != tc.code || len(st.Message()) < len(tc.field) || st.Message()[:len(tc.field)] != tc.field {
			t.Errorf("%v: got %v, want %v naming %q", tc.req, err, tc.code, tc.field)
		}
	}
	_, err := c.Release(ctx, &leveev1.ReleaseRequest{Resource: "timeline", Permit: 1, Outcome: 42})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad outcome: %v", err)
	}
}

func TestPinnedResourceRefusesWithReason(t *testing.T) {
	clk := shedtest.NewClock(time.Date(2026, 11, 21, 0, 0, 0, 0, time.UTC))
	set, c := start(t, clk.Now, timeline)
	if err := set.Pin([]policy.Pin{{Resource: "timeline", Level: shed.CriticalOnly, Until: clk.Now().Add(time.Minute)}}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	resp, err := c.Admit(ctx, &leveev1.AdmitRequest{Resource: "timeline", Priority: leveev1.Priority_PRIORITY_LOW})
	if err != nil || resp.Admitted || resp.Reason != leveev1.RefusalReason_REFUSAL_REASON_OVERRIDE || resp.RetryAfter == nil {
		t.Fatalf("low under a critical-only pin: %v %v", resp, err)
	}
	resp, err = c.Admit(ctx, &leveev1.AdmitRequest{Resource: "timeline", Priority: leveev1.Priority_PRIORITY_CRITICAL})
	if err != nil || !resp.Admitted {
		t.Fatalf("critical under a critical-only pin: %v %v", resp, err)
	}
}

// TestAdmitAfterTheCallerGaveUp: an Admit whose call's context is done
// by the time the sidecar answers it (the caller's deadline passed while
// the call waited) takes no permit, since the caller never sees it to
// release it, and says why.
func TestAdmitAfterTheCallerGaveUp(t *testing.T) {
	set, _ := start(t, nil, timeline)
	r := set.Resources()[0]
	s := NewServer(set, shed.CohortSalter{}, nil)
	for _, tc := range []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		code codes.Code
	}{
		{"deadline passed", func() (context.Context, context.CancelFunc) {
			return context.WithDeadline(context.Background(), time.Now().Add(-time.Millisecond))
		}, codes.DeadlineExceeded},
		{"canceled", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx, cancel
		}, codes.Canceled},
	} {
		ctx, cancel := tc.ctx()
		resp, err := s.Admit(ctx, &leveev1.AdmitRequest{Resource: "timeline", Priority: leveev1.Priority_PRIORITY_CRITICAL, Timeout: durationpb.New(time.Second)})
		cancel()
		if status.Code(err) != tc.code || resp.GetAdmitted() {
			t.Errorf("%s: admit: %v, %v; want %v and no permit", tc.name, resp, err, tc.code)
		}
		if n := r.Inflight(); n != 0 {
			t.Fatalf("%s: inflight %d after an admit nobody waited for", tc.name, n)
		}
		if n := set.Permits("timeline").Len(); n != 0 {
			t.Fatalf("%s: %d permits held after an admit nobody waited for", tc.name, n)
		}
	}
}

func TestUnreleasedPermitsExpire(t *testing.T) {
	clk := shedtest.NewClock(time.Date(2026, 11, 21, 0, 0, 0, 0, time.UTC))
	s, c := start(t, clk.Now, timeline)
	r := s.Resources()[0]
	for range 3 {
		if resp, err := c.Admit(context.Background(), &leveev1.AdmitRequest{Resource: "timeline", PermitTtl: durationpb.New(2 * time.Second)}); err != nil || !resp.Admitted {
			t.Fatalf("admit: %v %v", resp, err)
		}
	}
	clk.Add(time.Second)
	s.Tick(clk.Now())
	if r.Inflight() != 3 {
		t.Fatalf("inflight %d before expiry", r.Inflight())
	}
	clk.Add(1500 * time.Millisecond)
	s.Tick(clk.Now())
	if r.Inflight() != 0 {
		t.Fatalf("inflight %d after the permits expired", r.Inflight())
	}
}

// TestPermitTTLFollowsTimeout: with a timeout and no permit TTL, a permit
// nobody releases lives two timeouts, not 30 s; a permit TTL wins.
func TestPermitTTLFollowsTimeout(t *testing.T) {
	clk := shedtest.NewClock(time.Date(2026, 11, 21, 0, 0, 0, 0, time.UTC))
	s, c := start(t, clk.Now, timeline)
	r := s.Resources()[0]
	for _, req := range []*leveev1.AdmitRequest{
		{Resource: "timeline", Timeout: durationpb.New(500 * time.Millisecond)},
		{Resource: "timeline", Timeout: durationpb.New(500 * time.Millisecond), PermitTtl: durationpb.New(5 * time.Second)},
		{Resource: "timeline", Timeout: durationpb.New(time.Minute)},
	} {
		if resp, err := c.Admit(context.Background(), req); err != nil || !resp.Admitted {
			t.Fatalf("admit %v: %v %v", req, resp, err)
		}
	}
	t0 := clk.Now()
	// step advances the clock by d, lets the server expire permits, and
	// checks that want are still in flight.
	step := func(d time.Duration, want int, why string) {
		t.Helper()
		clk.Add(d)
		s.Tick(clk.Now())
		if n := r.Inflight(); n != want {
			t.Fatalf("inflight %d at %v, want %d: %s", n, clk.Now().Sub(t0), want, why)
		}
	}
	step(900*time.Millisecond, 3, "no permit has expired yet")
	step(200*time.Millisecond, 2, "the permit of the 0.5 s timeout lives 1 s")
	step(4*time.Second, 1, "a permit TTL of 5 s wins over the timeout")
	step(25*time.Second, 0, "a minute's timeout lives at most 30 s")
}

// TestRoundTripLatency reports the admit+release round trip on loopback;
// the figure is logged, not asserted (shared machine).
func TestRoundTripLatency(t *testing.T) {
	_, c := start(t, nil, timeline)
	ctx := context.Background()
	var lat []time.Duration
	for range 2000 {
		t0 := time.Now()
		resp, err := c.Admit(ctx, &leveev1.AdmitRequest{Resource: "timeline", User: "u"})
		if err != nil || !resp.Admitted {
			t.Fatalf("admit: %v %v", resp, err)
		}
		if _, err := c.Release(ctx, &leveev1.ReleaseRequest{Resource: "timeline", Permit: resp.Permit, Latency: durationpb.New(time.Millisecond)}); err != nil {
			t.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("admit+release round trip: p50 %v p99 %v", lat[len(lat)/2], lat[len(lat)*99/100])
}

// TestFollowsTheSet checks that the server serves whatever the Set holds
// now: a permit outlives a policy change that keeps its resource, and a
// dropped resource is not found.
func TestFollowsTheSet(t *testing.T) {
	set, c := start(t, nil, timeline)
	ctx := context.Background()
	resp, err := c.Admit(ctx, &leveev1.AdmitRequest{Resource: "timeline"})
	if err != nil || !resp.Admitted {
		t.Fatalf("admit: %v %v", resp, err)
	}
	p, err := policy.Parse("p.yaml", []byte(timeline+"  - name: search\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := set.Apply(p); err != nil {
		t.Fatal(err)
	}
	if resp, err := c.Admit(ctx, &leveev1.AdmitRequest{Resource: "search"}); err != nil || !resp.Admitted {
		t.Fatalf("admit on an added resource: %v %v", resp, err)
	}
	if _, err := c.Release(ctx, &leveev1.ReleaseRequest{Resource: "timeline", Permit: resp.Permit}); err != nil {
		t.Fatalf("release across a policy change: %v", err)
	}
	if err := set.Apply(&policy.Policy{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Admit(ctx, &leveev1.AdmitRequest{Resource: "timeline"}); status.Code(err) != codes.NotFound {
		t.Fatalf("admit on a dropped resource: %v", err)
	}
}
