package rlqs

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	rlqsv3 "github.com/envoyproxy/go-control-plane/envoy/service/rate_limit_quota/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/levee-dev/levee/deploy/examples"
	"github.com/levee-dev/levee/limiter/rules"
	"github.com/levee-dev/levee/shed"
	"github.com/levee-dev/levee/shed/shedtest"
)

// harness is a Server on a real gRPC listener, on a test clock, stepped by
// calling Sync; its rules can be swapped.
type harness struct {
	t      *testing.T
	srv    *Server
	clock  *shedtest.Clock
	rules  atomic.Pointer[rules.Config]
	client rlqsv3.RateLimitQuotaServiceClient
}

func exampleRules(t testing.TB) *rules.Config {
	t.Helper()
	data, err := examples.Rules.ReadFile("rules/rlqs.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return parseRules(t, string(data))
}

func parseRules(t testing.TB, yaml string) *rules.Config {
	t.Helper()
	d, err := rules.Parse("rlqs.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	c, err := rules.NewConfig(d)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	h := &harness{t: t, clock: shedtest.NewClock(time.Unix(1_000_000, 0))}
	h.rules.Store(exampleRules(t))
	cfg.Rules = h.rules.Load
	cfg.Now = h.clock.Now
	h.srv = New(cfg)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	rlqsv3.RegisterRateLimitQuotaServiceServer(gs, h.srv)
	done := make(chan struct{})
	go func() { _ = gs.Serve(lis); close(done) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		gs.Stop()
		<-done
	})
	h.client = rlqsv3.NewRateLimitQuotaServiceClient(conn)
	return h
}

// envoy is one Envoy's stream, read by a goroutine into got.
type envoy struct {
	h      *harness
	st     rlqsv3.RateLimitQuotaService_StreamRateLimitQuotasClient
	domain string
	sent   bool
	got    chan *rlqsv3.RateLimitQuotaResponse
	err    chan error
}

func (h *harness) envoy(domain string) *envoy {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	h.t.Cleanup(cancel)
	st, err := h.client.StreamRateLimitQuotas(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	e := &envoy{h: h, st: st, domain: domain, got: make(chan *rlqsv3.RateLimitQuotaResponse, 100), err: make(chan error, 1)}
	go func() {
		for {
			m, err := st.Recv()
			if err != nil {
				e.err <- err
				return
			}
			e.got <- m
		}
	}()
	return e
}

// usage is one bucket's report: bucket id as "k=v,k=v", requests, and
// time_elapsed as Envoy sends it (whole seconds; 0 in the first report).
type usage struct {
	bucket          string
	allowed, denied uint64
	elapsed         time.Duration
}

func bucketID(s string) *rlqsv3.BucketId {
	b := &rlqsv3.BucketId{Bucket: map[string]string{}}
	for _, kv := range strings.Split(s, ",") {
		k, v, _ := strings.Cut(kv, "=")
		b.Bucket[k] = v
	}
	return b
}

// report sends one message as Envoy does (the domain in the first only) and
// waits until the server has counted it.
func (e *envoy) report(us ...usage) {
	e.h.t.Helper()
	m := &rlqsv3.RateLimitQuotaUsageReports{}
	if !e.sent {
		m.Domain = e.domain
		e.sent = true
	}
	for _, u := range us {
		m.BucketQuotaUsages = append(m.BucketQuotaUsages, &rlqsv3.RateLimitQuotaUsageReports_BucketQuotaUsage{
			BucketId: bucketID(u.bucket), TimeElapsed: durationpb.New(u.elapsed),
			NumRequestsAllowed: u.allowed, NumRequestsDenied: u.denied,
		})
	}
	before := e.h.srv.Stats().Reports
	if err := e.st.Send(m); err != nil {
		e.h.t.Fatal(err)
	}
	shedtest.Eventually(e.h.t, 5*time.Second, "report counted", func() error {
		if got := e.h.srv.Stats().Reports; got < before+uint64(len(us)) {
			return fmt.Errorf("%d reports", got)
		}
		return nil
	})
}

// next returns the actions of the next response, by bucket id string
// (keys sorted, as "k=v,k=v").
func (e *envoy) next() map[string]*rlqsv3.RateLimitQuotaResponse_BucketAction {
	e.h.t.Helper()
	select {
	case m := <-e.got:
		out := map[string]*rlqsv3.RateLimitQuotaResponse_BucketAction{}
		for _, a := range m.GetBucketAction() {
			out[idString(a.GetBucketId())] = a
		}
		return out
	case err := <-e.err:
		e.h.t.Fatalf("stream ended: %v", err)
	case <-time.After(5 * time.Second):
		e.h.t.Fatal("no response")
	}
	return nil
}

// none checks that nothing more was pushed.
func (e *envoy) none() {
	e.h.t.Helper()
	select {
	case m := <-e.got:
		e.h.t.Fatalf("unexpected push %v", m)
	default:
	}
}

func idString(b *rlqsv3.BucketId) string {
	return strings.Join(entryStrings(b.GetBucket()), ",")
}

func entryStrings(m map[string]string) []string {
	var out []string
	for _, e := range Descriptor(m) {
		out = append(out, e.Key+"="+e.Value)
	}
	return out
}

func (h *harness) sync() { h.srv.Sync(context.Background()) }

// tokenBucket checks an action is a conformant token bucket assignment and
// returns its tokens per fill.
func tokenBucket(t *testing.T, a *rlqsv3.RateLimitQuotaResponse_BucketAction, ttl time.Duration) (perFill, maxTokens uint32, fill time.Duration) {
	t.Helper()
	q := conformant(t, a, ttl)
	tb := q.GetRateLimitStrategy().GetTokenBucket()
	if tb == nil {
		t.Fatalf("action %v: not a token bucket", a)
	}
	if err := tb.ValidateAll(); err != nil {
		t.Fatalf("token bucket %v: %v", tb, err)
	}
	fill = tb.GetFillInterval().AsDuration()
	if fill < time.Second || fill%time.Second != 0 {
		t.Fatalf("fill_interval %v: not whole seconds >= 1 s", fill)
	}
	return tb.GetTokensPerFill().GetValue(), tb.GetMaxTokens(), fill
}

// conformant checks what Envoy needs of every assignment: a TTL set, in
// whole seconds; never requests_per_time_unit.
func conformant(t *testing.T, a *rlqsv3.RateLimitQuotaResponse_BucketAction, ttl time.Duration) *rlqsv3.RateLimitQuotaResponse_BucketAction_QuotaAssignmentAction {
	t.Helper()
	if err := a.ValidateAll(); err != nil {
		t.Fatalf("action %v: %v", a, err)
	}
	q := a.GetQuotaAssignmentAction()
	if q == nil {
		t.Fatalf("action %v: not an assignment", a)
	}
	d := q.GetAssignmentTimeToLive()
	if d == nil || d.GetNanos() != 0 || d.AsDuration() != ttl {
		t.Fatalf("TTL %v, want %v in whole seconds", d, ttl)
	}
	if q.GetRateLimitStrategy().GetRequestsPerTimeUnit() != nil {
		t.Fatalf("requests_per_time_unit sent: Envoy ignores it")
	}
	return q
}

func blanket(t *testing.T, a *rlqsv3.RateLimitQuotaResponse_BucketAction, ttl time.Duration) typev3.RateLimitStrategy_BlanketRule {
	t.Helper()
	q := conformant(t, a, ttl)
	s, ok := q.GetRateLimitStrategy().GetStrategy().(*typev3.RateLimitStrategy_BlanketRule_)
	if !ok {
		t.Fatalf("action %v: not a blanket rule", a)
	}
	return s.BlanketRule
}

const ttl = 15 * time.Second

// TestFairShare: two Envoys asking 10/s and 1000/s of a 100/s bucket get 10
// and 90; before their demand is measured, 50 each.
func TestFairShare(t *testing.T) {
	h := newHarness(t, Config{})
	a, b := h.envoy("rlqs"), h.envoy("rlqs")
	// Envoy's first report: the first request, time_elapsed 0 s, which the
	// proto's own rule refuses; accepted.
	a.report(usage{bucket: "name=api", allowed: 1})
	b.report(usage{bucket: "name=api", allowed: 1})
	h.sync()
	for _, e := range []*envoy{a, b} {
		if n, _, fill := tokenBucket(t, e.next()["name=api"], ttl); n != 50 || fill != time.Second {
			t.Fatalf("first assignment %d per %v, want 50 per 1 s (demand unknown)", n, fill)
		}
	}
	h.clock.Add(5 * time.Second)
	a.report(usage{bucket: "name=api", allowed: 50, elapsed: 5 * time.Second})
	b.report(usage{bucket: "name=api", allowed: 250, denied: 4750, elapsed: 5 * time.Second})
	h.sync()
	// 10/s with two standard errors of headroom (50 requests in 5 s:
	// √50/5 ≈ 1.41/s), rounded up: 13; the other gets the limit less the
	// 10 asked for.
	if n, m, _ := tokenBucket(t, a.next()["name=api"], ttl); n != 13 || m != 13 {
		t.Errorf("10/s Envoy: %d per fill, max %d; want 13, 13", n, m)
	}
	if n, _, _ := tokenBucket(t, b.next()["name=api"], ttl); n != 90 {
		t.Errorf("1000/s Envoy: %d per fill, want 90", n)
	}
	// Nothing changed: nothing pushed until a third of the TTL has passed.
	h.clock.Add(time.Second)
	h.sync()
	a.none()
	h.clock.Add(4 * time.Second)
	h.sync()
	if n, _, _ := tokenBucket(t, a.next()["name=api"], ttl); n != 13 {
		t.Errorf("refresh: %d per fill, want 13", n)
	}
}

// TestStreamEnds: an Envoy that goes away leaves its share to the others.
func TestStreamEnds(t *testing.T) {
	h := newHarness(t, Config{})
	a := h.envoy("rlqs")
	ctx, cancel := context.WithCancel(context.Background())
	st, err := h.client.StreamRateLimitQuotas(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&rlqsv3.RateLimitQuotaUsageReports{Domain: "rlqs", BucketQuotaUsages: []*rlqsv3.RateLimitQuotaUsageReports_BucketQuotaUsage{{BucketId: bucketID("name=api")}}}); err != nil {
		t.Fatal(err)
	}
	shedtest.Eventually(t, 5*time.Second, "first stream's report counted", func() error {
		if h.srv.Stats().Reports == 0 {
			return errors.New("not yet")
		}
		return nil
	})
	a.report(usage{bucket: "name=api"})
	h.sync()
	if n, _, _ := tokenBucket(t, a.next()["name=api"], ttl); n != 50 {
		t.Fatalf("%d per fill with two Envoys, want 50", n)
	}
	cancel()
	shedtest.Eventually(t, 5*time.Second, "stream gone", func() error {
		if s := h.srv.Stats(); s.Streams != 1 {
			return fmt.Errorf("%d streams", s.Streams)
		}
		return nil
	})
	h.sync()
	if n, _, _ := tokenBucket(t, a.next()["name=api"], ttl); n != 100 {
		t.Fatalf("%d per fill alone, want 100", n)
	}
}

// TestRuleEdit: a rule file edit changes the assignment at the next sync.
func TestRuleEdit(t *testing.T) {
	h := newHarness(t, Config{})
	a := h.envoy("rlqs")
	a.report(usage{bucket: "name=tenant,tenant=acme"})
	h.sync()
	if n, _, _ := tokenBucket(t, a.next()["name=tenant,tenant=acme"], ttl); n != 20 {
		t.Fatalf("%d per fill, want 20", n)
	}
	h.rules.Store(parseRules(t, `
domain: rlqs
descriptors:
  - key: name
    value: tenant
    descriptors:
      - key: tenant
        rate_limit: {unit: minute, requests_per_unit: 120}
`))
	h.clock.Add(5 * time.Second)
	a.report(usage{bucket: "name=tenant,tenant=acme", allowed: 5})
	h.sync()
	if n, _, fill := tokenBucket(t, a.next()["name=tenant,tenant=acme"], ttl); n != 2 || fill != time.Second {
		t.Fatalf("after the edit %d per %v, want 2 per 1 s", n, fill)
	}
}

// TestBlanketRules: unlimited and zero limits, and unmatched bucket ids by
// the configured default, are answered at once with blanket rules.
func TestBlanketRules(t *testing.T) {
	for _, c := range []struct {
		unmatched Unmatched
		bucket    string
		want      typev3.RateLimitStrategy_BlanketRule
	}{
		{UnmatchedAllow, "name=free", typev3.RateLimitStrategy_ALLOW_ALL},
		{UnmatchedAllow, "name=blocked", typev3.RateLimitStrategy_DENY_ALL},
		{UnmatchedAllow, "name=nosuch", typev3.RateLimitStrategy_ALLOW_ALL},
		{UnmatchedDeny, "name=nosuch", typev3.RateLimitStrategy_DENY_ALL},
		{UnmatchedDeny, "name=api,other=x", typev3.RateLimitStrategy_DENY_ALL}, // deeper than the tree
	} {
		t.Run(c.unmatched.String()+"/"+c.bucket, func(t *testing.T) {
			h := newHarness(t, Config{Unmatched: c.unmatched})
			a := h.envoy("rlqs")
			a.report(usage{bucket: c.bucket, allowed: 1})
			if got := blanket(t, a.next()[c.bucket], ttl); got != c.want {
				t.Fatalf("%v, want %v", got, c.want)
			}
		})
	}
	// A shadow-mode rule is never enforced.
	h := newHarness(t, Config{})
	h.rules.Store(parseRules(t, "domain: rlqs\ndescriptors:\n  - key: name\n    shadow_mode: true\n    rate_limit: {unit: second, requests_per_unit: 1}\n"))
	s := h.envoy("rlqs")
	s.report(usage{bucket: "name=x"})
	if got := blanket(t, s.next()["name=x"], ttl); got != typev3.RateLimitStrategy_ALLOW_ALL {
		t.Fatalf("shadow mode: %v, want ALLOW_ALL", got)
	}
	// An unknown domain is unmatched too.
	h = newHarness(t, Config{Unmatched: UnmatchedDeny})
	a := h.envoy("nosuch")
	a.report(usage{bucket: "name=api"})
	if got := blanket(t, a.next()["name=api"], ttl); got != typev3.RateLimitStrategy_DENY_ALL {
		t.Fatalf("unknown domain: %v", got)
	}
}

// TestKeyOrder: bucket ids are unordered maps; the same entries name the
// same bucket however they arrive, matched in sorted key order.
func TestKeyOrder(t *testing.T) {
	h := newHarness(t, Config{})
	a, b := h.envoy("rlqs"), h.envoy("rlqs")
	a.report(usage{bucket: "tenant=acme,name=tenant"})
	b.report(usage{bucket: "name=tenant,tenant=acme"})
	h.sync()
	if n, _, _ := tokenBucket(t, a.next()["name=tenant,tenant=acme"], ttl); n != 10 {
		t.Fatalf("%d per fill, want 10: one bucket of 20 for both", n)
	}
}

// TestTTLWholeSeconds: a TTL configured with a fraction is cut to whole
// seconds, and one below a second becomes the default, never 0.
func TestTTLWholeSeconds(t *testing.T) {
	for _, c := range []struct{ in, want time.Duration }{
		{7500 * time.Millisecond, 7 * time.Second},
		{300 * time.Millisecond, 15 * time.Second},
		{0, 15 * time.Second},
	} {
		h := newHarness(t, Config{TTL: c.in})
		a := h.envoy("rlqs")
		a.report(usage{bucket: "name=free"})
		blanket(t, a.next()["name=free"], c.want)
	}
}

// TestDrain: a draining server sends every assignment again with TTL 0 s
// (set: expire now) and ends the streams with UNAVAILABLE.
func TestDrain(t *testing.T) {
	h := newHarness(t, Config{})
	a := h.envoy("rlqs")
	a.report(usage{bucket: "name=api"}, usage{bucket: "name=free"})
	h.sync()
	got := map[string]*rlqsv3.RateLimitQuotaResponse_BucketAction{}
	for len(got) < 2 {
		for k, v := range a.next() {
			got[k] = v
		}
	}
	h.srv.Drain()
	acts := a.next()
	if len(acts) != 2 {
		t.Fatalf("drain sent %d actions, want 2", len(acts))
	}
	for k, act := range acts {
		q := act.GetQuotaAssignmentAction()
		if q.GetAssignmentTimeToLive() == nil || q.GetAssignmentTimeToLive().AsDuration() != 0 {
			t.Errorf("%s: TTL %v, want set to 0 s", k, q.GetAssignmentTimeToLive())
		}
	}
	select {
	case err := <-a.err:
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("stream ended with %v, want UNAVAILABLE", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("stream not ended")
	}
	// A new stream is refused.
	b := h.envoy("rlqs")
	_ = b.st.Send(&rlqsv3.RateLimitQuotaUsageReports{Domain: "rlqs"})
	select {
	case err := <-b.err:
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("new stream: %v, want UNAVAILABLE", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("new stream not refused")
	}
}

// TestShedding: while a resource sheds half of sheddable, the sheddable
// bucket's assignment halves; the high-priority bucket keeps its share.
func TestShedding(t *testing.T) {
	var th atomic.Uint32
	h := newHarness(t, Config{Threshold: func(time.Time) shed.Level { return shed.Level(th.Load()) }})
	a := h.envoy("rlqs")
	a.report(usage{bucket: "name=batch"}, usage{bucket: "name=api"})
	h.sync()
	acts := a.next()
	if n, _, _ := tokenBucket(t, acts["name=batch"], ttl); n != 50 {
		t.Fatalf("batch %d, want 50", n)
	}
	th.Store(uint32(shed.LevelOf(shed.Sheddable, 64)))
	h.sync()
	acts = a.next()
	if n, _, _ := tokenBucket(t, acts["name=batch"], ttl); n != 25 {
		t.Fatalf("batch %d while half of sheddable is shed, want 25", n)
	}
	if _, ok := acts["name=api"]; ok {
		t.Fatalf("api pushed again: %v", acts["name=api"])
	}
	th.Store(uint32(shed.LevelOf(shed.Low, 0)))
	h.sync()
	if got := blanket(t, a.next()["name=batch"], ttl); got != typev3.RateLimitStrategy_DENY_ALL {
		t.Fatalf("batch while sheddable is shed: %v, want DENY_ALL", got)
	}
}

// TestInvalidReports: a stream must name its domain first, and may not
// change it; a bucket id must have entries.
func TestInvalidReports(t *testing.T) {
	h := newHarness(t, Config{})
	for _, c := range []struct {
		name string
		msgs []*rlqsv3.RateLimitQuotaUsageReports
		want string
	}{
		{"no domain", []*rlqsv3.RateLimitQuotaUsageReports{{}}, "domain"},
		{"domain changed", []*rlqsv3.RateLimitQuotaUsageReports{{Domain: "rlqs"}, {Domain: "other"}}, "domain"},
		{"empty bucket id", []*rlqsv3.RateLimitQuotaUsageReports{{Domain: "rlqs", BucketQuotaUsages: []*rlqsv3.RateLimitQuotaUsageReports_BucketQuotaUsage{{}}}}, "bucket_quota_usages[0].bucket_id"},
	} {
		e := h.envoy("rlqs")
		for _, m := range c.msgs {
			_ = e.st.Send(m)
		}
		select {
		case err := <-e.err:
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s: %v, want InvalidArgument naming %s", c.name, err, c.want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: stream not ended", c.name)
		}
	}
}

// TestIdle: a client that stops reporting is forgotten after Idle.
func TestIdle(t *testing.T) {
	h := newHarness(t, Config{Idle: 10 * time.Second})
	a := h.envoy("rlqs")
	a.report(usage{bucket: "name=api"})
	h.sync()
	a.next()
	h.clock.Add(11 * time.Second)
	h.sync()
	if s := h.srv.Stats(); s.Clients != 0 || s.Owned != 0 || s.Pairs != 0 {
		t.Fatalf("after idle: %+v, want nothing held", s)
	}
}

// TestAbandon: a bucket that reports no requests for Abandon is abandoned
// (Envoy erases it) and forgotten; a bucket in use is not.
func TestAbandon(t *testing.T) {
	h := newHarness(t, Config{Abandon: 20 * time.Second})
	a := h.envoy("rlqs")
	a.report(usage{bucket: "name=api", allowed: 1}, usage{bucket: "name=tenant,tenant=x", allowed: 1})
	h.sync()
	a.next()
	for range 5 {
		h.clock.Add(5 * time.Second)
		a.report(usage{bucket: "name=api", elapsed: 5 * time.Second}, usage{bucket: "name=tenant,tenant=x", allowed: 5, elapsed: 5 * time.Second})
	}
	h.sync()
	acts := a.next()
	if act := acts["name=api"]; act.GetAbandonAction() == nil {
		t.Fatalf("unused bucket: %v, want abandon_action", act)
	}
	if act, ok := acts["name=tenant,tenant=x"]; ok && act.GetAbandonAction() != nil {
		t.Fatal("a bucket in use was abandoned")
	}
	if st := h.srv.Stats(); st.Clients != 1 {
		t.Fatalf("%d clients after the abandon, want 1", st.Clients)
	}
}

// TestDrift: a change of at most 2% of a large share is not pushed (Envoy
// would start a new, full, token bucket for it); the refresh sends the
// assignment already applied; a larger change is pushed.
// TestHold: the front end pushes the grants the owner holds (quota.Holds),
// so a share that moves a little sends no new token bucket, which Envoy
// would start full.
func TestHold(t *testing.T) {
	h := newHarness(t, Config{TTL: 30 * time.Second}) // refreshed every 10 s
	a, b := h.envoy("rlqs"), h.envoy("rlqs")
	a.report(usage{bucket: "name=api", allowed: 1})
	b.report(usage{bucket: "name=api", allowed: 1})
	h.sync()
	a.next()
	b.next()
	step := func(aRate, bRate uint64) {
		h.clock.Add(5 * time.Second)
		a.report(usage{bucket: "name=api", allowed: 5 * aRate, elapsed: 5 * time.Second})
		b.report(usage{bucket: "name=api", allowed: 5 * bRate, elapsed: 5 * time.Second})
		h.sync()
	}
	want := func(e *envoy, name string, n uint32) {
		t.Helper()
		if got, _, _ := tokenBucket(t, e.next()["name=api"], 30*time.Second); got != n {
			t.Fatalf("%s: %d, want %d", name, got, n)
		}
	}
	// b asks 9/s, measured over 45 requests (standard error √45/5 ≈
	// 1.34/s): 9 and two standard errors, 12 tokens; a gets 91.
	step(1000, 9)
	want(a, "a", 91)
	want(b, "b", 12)
	// b asks 8/s: its share is 11 and a's 92; b's 12 still covers its
	// need (10.5), and a's 91 is within 10% of 92 with the grants adding
	// up to the shares.
	step(1000, 8)
	step(1000, 8) // 10 s on: the refreshes repeat what the Envoys apply
	want(a, "a's refresh", 91)
	want(b, "b's refresh", 12)
	// b asks 12/s: its 12 no longer covers its need (15.1): 16; a's 91
	// would then take more than the shares add up to: 88.
	step(1000, 12)
	want(a, "a", 88)
	want(b, "b", 16)
}
