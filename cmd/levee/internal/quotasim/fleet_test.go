package quotasim

// These tests run the fleet against a minimal RLQS server written here, a
// stand-in that answers every report with a fixed assignment: they exercise
// the simulation's wire handling (subscription, reconnection, quirks in the
// answers). levee's own quota service is tested with the fleet from
// cmd/levee's process tests.

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	rlqsv3 "github.com/envoyproxy/go-control-plane/envoy/service/rate_limit_quota/v3"
	"google.golang.org/grpc"
)

// stubServer is the stand-in quota server.
type stubServer struct {
	rlqsv3.UnimplementedRateLimitQuotaServiceServer
	answer func(u *rlqsv3.RateLimitQuotaUsageReports_BucketQuotaUsage) *rlqsv3.RateLimitQuotaResponse_BucketAction_QuotaAssignmentAction

	mu      sync.Mutex
	domains []string // domain of each stream's first message
	firsts  []time.Duration
	reports int
}

func (s *stubServer) StreamRateLimitQuotas(st rlqsv3.RateLimitQuotaService_StreamRateLimitQuotasServer) error {
	first := true
	seen := map[string]bool{}
	for {
		m, err := st.Recv()
		if err != nil {
			return nil
		}
		s.mu.Lock()
		if first {
			s.domains = append(s.domains, m.GetDomain())
			first = false
		}
		resp := &rlqsv3.RateLimitQuotaResponse{}
		for _, u := range m.GetBucketQuotaUsages() {
			s.reports++
			k := u.GetBucketId().String()
			if !seen[k] {
				seen[k] = true
				s.firsts = append(s.firsts, u.GetTimeElapsed().AsDuration())
			}
			resp.BucketAction = append(resp.BucketAction, &rlqsv3.RateLimitQuotaResponse_BucketAction{
				BucketId:     u.GetBucketId(),
				BucketAction: &rlqsv3.RateLimitQuotaResponse_BucketAction_QuotaAssignmentAction_{QuotaAssignmentAction: s.answer(u)},
			})
		}
		s.mu.Unlock()
		if err := st.Send(resp); err != nil {
			return nil
		}
	}
}

func startStub(t *testing.T, s *stubServer) (string, *grpc.Server) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	rlqsv3.RegisterRateLimitQuotaServiceServer(g, s)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := g.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			t.Error(err)
		}
	}()
	t.Cleanup(func() { g.Stop(); <-done })
	return lis.Addr().String(), g
}

func fixed(rate uint32, ttl float64) func(*rlqsv3.RateLimitQuotaUsageReports_BucketQuotaUsage) *rlqsv3.RateLimitQuotaResponse_BucketAction_QuotaAssignmentAction {
	return func(*rlqsv3.RateLimitQuotaUsageReports_BucketQuotaUsage) *rlqsv3.RateLimitQuotaResponse_BucketAction_QuotaAssignmentAction {
		return tokenBucket(rate, rate, sec(1), sec(ttl))
	}
}

// TestFleetStub: every Envoy subscribes at once with a 0 s report on a
// stream that names the domain, and is then held to its assignment.
func TestFleetStub(t *testing.T) {
	s := &stubServer{answer: fixed(20, 10)}
	addr, _ := startStub(t, s)
	res, err := Run(context.Background(), Options{
		Nodes: []string{addr}, Envoys: 4, Limit: 80, Demand: 4, Zipf: 0,
		Duration: 3 * time.Second, ReportInterval: 250 * time.Millisecond, Seed: 1,
		Settings: Settings{NoAssignment: DenyAll},
	})
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.domains) != 4 {
		t.Fatalf("%d streams, want one per Envoy (4)", len(s.domains))
	}
	for _, d := range s.domains {
		if d != "quota-sim" {
			t.Fatalf("stream domain %q, want quota-sim", d)
		}
	}
	for _, el := range s.firsts {
		if el != 0 {
			t.Fatalf("first report of a bucket carried %v, want 0 s as Envoy sends", el)
		}
	}
	// Each Envoy offers 80/s and holds a 20/s bucket of 20 tokens. Over
	// the measured window it can take at most the bucket's 20 tokens plus
	// what 20/s refills: more than 20/s when a loaded host stalls the
	// generator and the bucket fills meanwhile, never more than that.
	p := res.Phases[0]
	secs := (p.To - p.From).Seconds()
	most := (20 + 20*secs) / secs
	for _, e := range p.Envoys {
		if e.Admitted > most+0.01 || e.Admitted < 0.85*min(e.Offered, 20) {
			t.Fatalf("envoy %d offered %.1f/s, admitted %.1f/s under a 20/s assignment with 20 tokens: want between %.1f and %.1f",
				e.Envoy, e.Offered, e.Admitted, 0.85*min(e.Offered, 20), most)
		}
	}
	// The stub never ends a stream: a report can only be lost to the
	// run's own end closing a stream under a send, one per Envoy at most.
	if res.ConformanceFailures() != 0 || len(res.Stale()) != 0 || res.ReportsLost > 4 {
		t.Fatalf("failures %v, stale %v, lost %d: want none, none, at most one per Envoy", res.Failures, res.Stale(), res.ReportsLost)
	}
	// A send the run's end cut short may not arrive: one per Envoy.
	if res.ReportsSent < 4*8 || s.reports > res.ReportsSent || s.reports < res.ReportsSent-4 {
		t.Fatalf("reports sent %d, server saw %d: want about 4 Envoys × 12 ticks, all but the last received", res.ReportsSent, s.reports)
	}
}

// TestFleetReconnect: when a node stops, its Envoys reopen their streams
// on the next node and get assignments there.
func TestFleetReconnect(t *testing.T) {
	a, ga := startStub(t, &stubServer{answer: fixed(10, 5)})
	b, _ := startStub(t, &stubServer{answer: fixed(10, 5)})
	time.AfterFunc(1500*time.Millisecond, ga.Stop)
	res, err := Run(context.Background(), Options{
		Nodes: []string{a, b}, Envoys: 4, Limit: 40, Demand: 2,
		Duration: 3500 * time.Millisecond, ReportInterval: 250 * time.Millisecond, Seed: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	// Streams that end with the run itself are no reconnection.
	var rcs []Reconnect
	for _, rc := range res.Reconnects {
		if rc.Broken < 3*time.Second {
			rcs = append(rcs, rc)
		}
	}
	if len(rcs) != 2 {
		t.Fatalf("reconnects %+v: want the two Envoys on the stopped node", res.Reconnects)
	}
	for _, rc := range rcs {
		if rc.From != a || rc.To != b || rc.Assignment < 0 {
			t.Fatalf("reconnect %+v: want from %s to %s with an assignment there", rc, a, b)
		}
		if rc.Opened-rc.Broken > 400*time.Millisecond {
			t.Fatalf("reconnect %+v: reopened later than the next report tick", rc)
		}
	}
	for _, c := range res.Checks() {
		if c.Name == "broken streams reopened on another node" && !c.Passed {
			t.Fatalf("check %+v failed", c)
		}
	}
	if st := res.Stale(); len(st) != 0 {
		t.Fatalf("stale buckets %+v: the TTL of 5 s outlives the gap", st)
	}
}

// TestFleetQuirks: answers that break real Envoys are counted, and the
// fleet carries on.
func TestFleetQuirks(t *testing.T) {
	n := 0
	var mu sync.Mutex
	s := &stubServer{answer: func(*rlqsv3.RateLimitQuotaUsageReports_BucketQuotaUsage) *rlqsv3.RateLimitQuotaResponse_BucketAction_QuotaAssignmentAction {
		mu.Lock()
		defer mu.Unlock()
		n++
		switch n % 3 {
		case 0:
			return tokenBucket(10, 10, sec(0.5), sec(5)) // divides by zero in Envoy
		case 1:
			return tokenBucket(10, 10, sec(1), nil) // unset TTL: expires at once
		default:
			return tokenBucket(10, 10, sec(1), sec(0)) // TTL 0: the server's own expiry
		}
	}}
	addr, _ := startStub(t, s)
	res, err := Run(context.Background(), Options{
		Nodes: []string{addr}, Envoys: 2, Limit: 20, Demand: 1,
		Duration: 2 * time.Second, ReportInterval: 200 * time.Millisecond, Seed: 3,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Failures[FailFillSubSecond] == 0 || res.Failures[FailTTLUnset] == 0 {
		t.Fatalf("failures %v: want the sub-second fill and the unset TTL counted", res.Failures)
	}
	var zero, stale int
	for _, x := range res.Expiries {
		if x.ServerZero {
			zero++
		} else {
			stale++
		}
	}
	if zero == 0 || stale == 0 {
		t.Fatalf("expiries %+v: want both the server's TTL 0 and the unset TTL's", res.Expiries)
	}
}
