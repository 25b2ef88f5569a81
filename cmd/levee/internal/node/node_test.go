package node_test

// End-to-end tests: each test runs a whole node in-process (node.Run on
// loopback ports, with its rule files in a temporary directory and a clock
// the test moves by hand) and talks to it the way Envoy and services do:
// over real gRPC with the generated client stubs, and over HTTP for
// /metrics.
//
// The clock starts at base, a whole number of every rate limit unit after
// the origin of the limiter's token time, so token boundaries fall on it and
// every expected remaining count and duration below is exact.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/levee-dev/levee/cmd/levee/internal/node"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
	"github.com/levee-dev/levee/shed/shedtest"
)

// base is 15,330 days (the least common multiple of a week, 30 days and 365
// days) after 2026-01-01 UTC, the origin of the limiter's token time.
var base = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(15330 * 24 * time.Hour)

// waitFor bounds every wait for the node (start, stop, reloads). It guards
// against hangs; no test asserts how fast anything is.
const waitFor = 30 * time.Second

// clock is a hand-moved clock, safe for the node's goroutines to read.
type clock struct{ *shedtest.Clock }

// AlignTo advances the clock to the next whole multiple of d after base
// (staying put if it is on one), so that token boundaries of limits whose
// token interval divides d fall on it again. Only the test moves the
// clock, so reading it and then moving it is safe.
func (c clock) AlignTo(d time.Duration) {
	if r := c.Now().Sub(base) % d; r != 0 {
		c.Add(d - r)
	}
}

// testNode is a running node and clients for it.
type testNode struct {
	dir    string
	clock  clock
	addrs  node.Addrs
	envoy  rlsv3.RateLimitServiceClient
	native leveev1.RateLimitServiceClient
	peer   leveev1.PeerServiceClient
}

// startNode writes files (name -> YAML) into a fresh rules directory and
// runs a node on it until the test ends.
func startNode(t *testing.T, files map[string]string) *testNode {
	t.Helper()
	n := &testNode{dir: t.TempDir(), clock: clock{shedtest.NewClock(base)}}
	for name, body := range files {
		n.write(t, name, body)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan node.Addrs, 1)
	done := make(chan error, 1)
	go func() {
		done <- node.Run(ctx, node.Config{
			GRPCAddr:    "127.0.0.1:0",
			MetricsAddr: "127.0.0.1:0",
			RulesPath:   n.dir,
			RulesPoll:   20 * time.Millisecond,
			Now:         n.clock.Now,
		}, func(a node.Addrs) { ready <- a })
	}()
	select {
	case n.addrs = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("node.Run returned before it was ready: %v", err)
	case <-time.After(waitFor):
		cancel()
		t.Fatal("node did not become ready")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("node.Run: %v", err)
			}
		case <-time.After(waitFor):
			t.Error("node did not stop")
		}
	})
	conn, err := grpc.NewClient(n.addrs.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() }) // runs before the node stops
	n.envoy = rlsv3.NewRateLimitServiceClient(conn)
	n.native = leveev1.NewRateLimitServiceClient(conn)
	n.peer = leveev1.NewPeerServiceClient(conn)
	return n
}

// write replaces a rule file atomically (a dot-named temporary file, which
// the loader skips, renamed into place), so a poll never sees half a file.
func (n *testNode) write(t *testing.T, name, body string) {
	t.Helper()
	tmp := filepath.Join(n.dir, ".tmp-"+name)
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(n.dir, name)); err != nil {
		t.Fatal(err)
	}
}

func callCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	t.Cleanup(cancel)
	return ctx
}

// should calls ShouldRateLimit and fails the test on an error.
func (n *testNode) should(t *testing.T, req *rlsv3.RateLimitRequest) *rlsv3.RateLimitResponse {
	t.Helper()
	resp, err := n.envoy.ShouldRateLimit(callCtx(t), req)
	if err != nil {
		t.Fatalf("ShouldRateLimit(%v): %v", req, err)
	}
	if len(resp.Statuses) != len(req.Descriptors) {
		t.Fatalf("ShouldRateLimit: %d statuses for %d descriptors", len(resp.Statuses), len(req.Descriptors))
	}
	return resp
}

// req builds a request; hits is the request-level hits_addend.
func req(domain string, hits uint32, ds ...*ratelimitv3.RateLimitDescriptor) *rlsv3.RateLimitRequest {
	return &rlsv3.RateLimitRequest{Domain: domain, HitsAddend: hits, Descriptors: ds}
}

// d builds a descriptor from "key=value" entries.
func d(kvs ...string) *ratelimitv3.RateLimitDescriptor {
	out := &ratelimitv3.RateLimitDescriptor{}
	for _, kv := range kvs {
		k, v, _ := strings.Cut(kv, "=")
		out.Entries = append(out.Entries, &ratelimitv3.RateLimitDescriptor_Entry{Key: k, Value: v})
	}
	return out
}

// withHits sets a descriptor's own hits_addend.
func withHits(x *ratelimitv3.RateLimitDescriptor, hits uint64) *ratelimitv3.RateLimitDescriptor {
	x.HitsAddend = wrapperspb.UInt64(hits)
	return x
}

// withLimit sets a descriptor's limit override.
func withLimit(x *ratelimitv3.RateLimitDescriptor, rpu uint32, unit typev3.RateLimitUnit) *ratelimitv3.RateLimitDescriptor {
	x.Limit = &ratelimitv3.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: rpu, Unit: unit}
	return x
}

const (
	codeOK     = rlsv3.RateLimitResponse_OK
	codeOver   = rlsv3.RateLimitResponse_OVER_LIMIT
	unitSecond = rlsv3.RateLimitResponse_RateLimit_SECOND
	unitMinute = rlsv3.RateLimitResponse_RateLimit_MINUTE
	unitHour   = rlsv3.RateLimitResponse_RateLimit_HOUR
	unitDay    = rlsv3.RateLimitResponse_RateLimit_DAY
	unitWeek   = rlsv3.RateLimitResponse_RateLimit_WEEK
	unitMonth  = rlsv3.RateLimitResponse_RateLimit_MONTH
	unitYear   = rlsv3.RateLimitResponse_RateLimit_YEAR
)

// noLimit is the status of a descriptor no limit applies to.
func noLimit() *rlsv3.RateLimitResponse_DescriptorStatus {
	return &rlsv3.RateLimitResponse_DescriptorStatus{Code: codeOK}
}

// limited is the status of a descriptor under a limit: current_limit
// {rpu, unit, name}, limit_remaining and duration_until_reset in whole
// seconds.
func limited(code rlsv3.RateLimitResponse_Code, rpu uint32, unit rlsv3.RateLimitResponse_RateLimit_Unit, name string, remaining uint32, resetSeconds int64) *rlsv3.RateLimitResponse_DescriptorStatus {
	return &rlsv3.RateLimitResponse_DescriptorStatus{
		Code:               code,
		CurrentLimit:       &rlsv3.RateLimitResponse_RateLimit{RequestsPerUnit: rpu, Unit: unit, Name: name},
		LimitRemaining:     remaining,
		DurationUntilReset: &durationpb.Duration{Seconds: resetSeconds},
	}
}

// expect checks the whole response: the overall code and every status.
func expect(t *testing.T, resp *rlsv3.RateLimitResponse, overall rlsv3.RateLimitResponse_Code, want ...*rlsv3.RateLimitResponse_DescriptorStatus) {
	t.Helper()
	w := &rlsv3.RateLimitResponse{OverallCode: overall, Statuses: want}
	if diff := cmp.Diff(w, resp, protocmp.Transform()); diff != "" {
		t.Fatalf("response mismatch (-want +got):\n%s", diff)
	}
}

// look reads a descriptor's current limit without taking a token.
func (n *testNode) look(t *testing.T, domain string, kvs ...string) *rlsv3.RateLimitResponse_DescriptorStatus {
	t.Helper()
	return n.should(t, req(domain, 1, withHits(d(kvs...), 0))).Statuses[0]
}

// ceilSeconds rounds a duration up to whole seconds, as duration_until_reset
// is.
func ceilSeconds(x time.Duration) int64 {
	return int64((x + time.Second - 1) / time.Second)
}

// --- metrics ---

type sample struct {
	name   string
	labels map[string]string
	value  float64
}

var labelRE = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)

// scrape reads the node's /metrics in the Prometheus text format.
func (n *testNode) scrape(t *testing.T) []sample {
	t.Helper()
	resp, err := http.Get("http://" + n.addrs.Metrics + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	var out []sample
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		s := sample{labels: map[string]string{}}
		rest := line
		if i := strings.IndexAny(line, "{ "); i >= 0 && line[i] == '{' {
			s.name = line[:i]
			j := strings.LastIndex(line, "}")
			for _, m := range labelRE.FindAllStringSubmatch(line[i+1:j], -1) {
				v, err := strconv.Unquote(`"` + m[2] + `"`)
				if err != nil {
					v = m[2]
				}
				s.labels[m[1]] = v
			}
			rest = strings.TrimSpace(line[j+1:])
		} else {
			s.name, rest, _ = strings.Cut(line, " ")
		}
		val, _, _ := strings.Cut(strings.TrimSpace(rest), " ")
		v, err := strconv.ParseFloat(val, 64)
		if err != nil {
			t.Fatalf("bad metrics line %q: %v", line, err)
		}
		s.value = v
		out = append(out, s)
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("reading /metrics: %v", err)
	}
	return out
}

// metric returns the value of the series name whose labels include want,
// and 0 if there is none. It fails if several series match.
func metric(t *testing.T, samples []sample, name string, want map[string]string) float64 {
	t.Helper()
	found := -1.0
	for _, s := range samples {
		if s.name != name {
			continue
		}
		match := true
		for k, v := range want {
			if s.labels[k] != v {
				match = false
				break
			}
		}
		if !match {
			continue
		}
		if found >= 0 {
			t.Fatalf("several series %s%v", name, want)
		}
		found = s.value
	}
	return max(found, 0)
}

// ============================================================================
// Envoy rate limit service
// ============================================================================

func TestEnvoyStatusesInRequestOrder(t *testing.T) {
	n := startNode(t, map[string]string{"order.yaml": `
domain: order
descriptors:
  - key: a
    rate_limit:
      unit: minute
      requests_per_unit: 3
      name: alpha
  - key: b
    rate_limit:
      unit: hour
      requests_per_unit: 1
`})
	three := req("order", 0, d("a=1"), d("zzz=1"), d("b=1"))

	// One token every 20 s for a; b's single token comes back after an hour.
	expect(t, n.should(t, three), codeOK,
		limited(codeOK, 3, unitMinute, "alpha", 2, 20),
		noLimit(),
		limited(codeOK, 1, unitHour, "", 0, 3600))
	// b is over: the overall code is the OR of the descriptors.
	expect(t, n.should(t, three), codeOver,
		limited(codeOK, 3, unitMinute, "alpha", 1, 40),
		noLimit(),
		limited(codeOver, 1, unitHour, "", 0, 3600))
	expect(t, n.should(t, req("order", 0, d("a=1"))), codeOK, limited(codeOK, 3, unitMinute, "alpha", 0, 60))
	expect(t, n.should(t, req("order", 0, d("a=1"))), codeOver, limited(codeOver, 3, unitMinute, "alpha", 0, 60))
	expect(t, n.should(t, req("order", 0, d("a=1"))), codeOver, limited(codeOver, 3, unitMinute, "alpha", 0, 60))

	// Refused requests took nothing: after 20 s exactly one token is back.
	n.clock.Add(20 * time.Second)
	expect(t, n.should(t, req("order", 0, d("a=1"))), codeOK, limited(codeOK, 3, unitMinute, "alpha", 0, 60))
	expect(t, n.should(t, req("order", 0, d("a=1"))), codeOver, limited(codeOver, 3, unitMinute, "alpha", 0, 60))
	// Partway to the next token the reset counts down, rounded up.
	n.clock.Add(500 * time.Millisecond)
	expect(t, n.should(t, req("order", 0, d("a=1"))), codeOver, limited(codeOver, 3, unitMinute, "alpha", 0, 60))
	n.clock.Add(10 * time.Second)
	expect(t, n.should(t, req("order", 0, d("a=1"))), codeOver, limited(codeOver, 3, unitMinute, "alpha", 0, 50))
	n.clock.AlignTo(time.Minute)

	// Each runtime value of a key-only rule has its own bucket, and two
	// descriptors on one bucket in one request see each other, in order.
	expect(t, n.should(t, req("order", 0, d("a=2"), d("a=2"), d("a=3"))), codeOK,
		limited(codeOK, 3, unitMinute, "alpha", 2, 20),
		limited(codeOK, 3, unitMinute, "alpha", 1, 40),
		limited(codeOK, 3, unitMinute, "alpha", 2, 20))

	// An hour after it was taken b is full again.
	n.clock.AlignTo(time.Hour)
	expect(t, n.should(t, req("order", 0, d("b=1"))), codeOK, limited(codeOK, 1, unitHour, "", 0, 3600))
}

func TestEnvoyHitsAddend(t *testing.T) {
	n := startNode(t, map[string]string{"hits.yaml": `
domain: hits
descriptors:
  - key: k
    rate_limit:
      unit: minute
      requests_per_unit: 5
`})
	// Request-level hits_addend 0 counts as 1; one token every 12 s.
	expect(t, n.should(t, req("hits", 0, d("k=a"))), codeOK, limited(codeOK, 5, unitMinute, "", 4, 12))
	expect(t, n.should(t, req("hits", 1, d("k=a"))), codeOK, limited(codeOK, 5, unitMinute, "", 3, 24))
	expect(t, n.should(t, req("hits", 2, d("k=a"))), codeOK, limited(codeOK, 5, unitMinute, "", 1, 48))
	// More than is left: refused, nothing taken.
	expect(t, n.should(t, req("hits", 2, d("k=a"))), codeOver, limited(codeOver, 5, unitMinute, "", 0, 48))
	// Per-descriptor hits_addend 0 only looks.
	expect(t, n.should(t, req("hits", 3, withHits(d("k=a"), 0))), codeOK, limited(codeOK, 5, unitMinute, "", 1, 48))
	// The descriptor's own hits_addend beats the request's.
	expect(t, n.should(t, req("hits", 4, withHits(d("k=a"), 1))), codeOK, limited(codeOK, 5, unitMinute, "", 0, 60))
	// Looking at an empty bucket is codeOK with nothing remaining.
	expect(t, n.should(t, req("hits", 0, withHits(d("k=a"), 0))), codeOK, limited(codeOK, 5, unitMinute, "", 0, 60))
	expect(t, n.should(t, req("hits", 0, d("k=a"))), codeOver, limited(codeOver, 5, unitMinute, "", 0, 60))

	// Within one request each descriptor uses its own addend, else the
	// request's.
	expect(t, n.should(t, req("hits", 2, d("k=b"), withHits(d("k=c"), 5), withHits(d("k=d"), 0), d("k=e"))), codeOK,
		limited(codeOK, 5, unitMinute, "", 3, 24),
		limited(codeOK, 5, unitMinute, "", 0, 60),
		limited(codeOK, 5, unitMinute, "", 5, 0),
		limited(codeOK, 5, unitMinute, "", 3, 24))
	// An addend above the whole burst can never fit.
	expect(t, n.should(t, req("hits", 6, d("k=f"))), codeOver, limited(codeOver, 5, unitMinute, "", 0, 0))
	expect(t, n.should(t, req("hits", 5, d("k=f"))), codeOK, limited(codeOK, 5, unitMinute, "", 0, 60))
}

func TestEnvoyUnknownDomainAndUnmatchedDescriptors(t *testing.T) {
	n := startNode(t, map[string]string{"known.yaml": `
domain: known
descriptors:
  - key: k
    value: v
    rate_limit:
      unit: second
      requests_per_unit: 1
`})
	for range 3 {
		// The same descriptor that is limited in "known" is free elsewhere.
		expect(t, n.should(t, req("unknown", 0, d("k=v"), d("x=y"))), codeOK, noLimit(), noLimit())
	}
	// Known domain, but no rule for the key, the value or the depth.
	for range 3 {
		expect(t, n.should(t, req("known", 0, d("k=other"), d("x=v"), d("k=v", "deeper=1"), d("K=v"))), codeOK,
			noLimit(), noLimit(), noLimit(), noLimit())
	}
	expect(t, n.should(t, req("known", 0, d("k=v"))), codeOK, limited(codeOK, 1, unitSecond, "", 0, 1))
	expect(t, n.should(t, req("known", 0, d("k=v"), d("k=other"))), codeOver, limited(codeOver, 1, unitSecond, "", 0, 1), noLimit())
}

func TestEnvoyNestedDescriptors(t *testing.T) {
	n := startNode(t, map[string]string{"nest.yaml": `
domain: nest
descriptors:
  - key: org
    rate_limit:
      unit: minute
      requests_per_unit: 10
    descriptors:
      - key: user
        value: vip
        rate_limit:
          unit: minute
          requests_per_unit: 100
      - key: user
        value: "bot*"
        rate_limit:
          unit: minute
          requests_per_unit: 50
      - key: user
        rate_limit:
          unit: minute
          requests_per_unit: 2
  - key: team
    descriptors:
      - key: member
        rate_limit:
          unit: minute
          requests_per_unit: 3
  - key: allow
    value: me
`})
	// Exact value beats wildcard beats key-only, at the second level.
	expect(t, n.should(t, req("nest", 0, d("org=a", "user=vip"), d("org=a", "user=bot7"), d("org=a", "user=bob"))), codeOK,
		limited(codeOK, 100, unitMinute, "", 99, 1),
		limited(codeOK, 50, unitMinute, "", 49, 2),
		limited(codeOK, 2, unitMinute, "", 1, 30))
	// "bo" is not "bot*": the key's default applies.
	expect(t, n.should(t, req("nest", 0, d("org=a", "user=bo"))), codeOK, limited(codeOK, 2, unitMinute, "", 1, 30))
	expect(t, n.should(t, req("nest", 0, d("org=a", "user=bob"))), codeOK, limited(codeOK, 2, unitMinute, "", 0, 60))
	expect(t, n.should(t, req("nest", 0, d("org=a", "user=bob"))), codeOver, limited(codeOver, 2, unitMinute, "", 0, 60))
	// The limit on org is ignored for deeper requests: its bucket was never
	// touched by the requests above.
	expect(t, n.should(t, req("nest", 0, d("org=a"))), codeOK, limited(codeOK, 10, unitMinute, "", 9, 6))
	// The tree's shape decides: deeper than the config, a parent without a
	// limit, an allow-list leaf, the wrong order, a second level alone.
	expect(t, n.should(t, req("nest", 0,
		d("org=a", "user=bob", "extra=1"),
		d("team=t"),
		d("allow=me"),
		d("user=bob", "org=a"),
		d("user=bob"),
		d("allow=me", "x=1"))), codeOK,
		noLimit(), noLimit(), noLimit(), noLimit(), noLimit(), noLimit())
	expect(t, n.should(t, req("nest", 0, d("team=t", "member=m"))), codeOK, limited(codeOK, 3, unitMinute, "", 2, 20))
	// An empty value falls back to the key's default and has its own
	// bucket.
	expect(t, n.should(t, req("nest", 0, d("org=a", "user="))), codeOK, limited(codeOK, 2, unitMinute, "", 1, 30))
	// Other orgs have their own buckets all the way down.
	expect(t, n.should(t, req("nest", 0, d("org=b", "user=bob"))), codeOK, limited(codeOK, 2, unitMinute, "", 1, 30))
}

func TestEnvoyWildcards(t *testing.T) {
	n := startNode(t, map[string]string{"wild.yaml": `
domain: wild
descriptors:
  - key: path
    value: "/api/*"
    rate_limit:
      unit: minute
      requests_per_unit: 1
  - key: path
    value: "/api/v*"
    rate_limit:
      unit: minute
      requests_per_unit: 4
  - key: path
    value: /api/special
    rate_limit:
      unit: minute
      requests_per_unit: 3
  - key: path
    rate_limit:
      unit: minute
      requests_per_unit: 5
  - key: host
    value: "a*m*z"
    rate_limit:
      unit: minute
      requests_per_unit: 2
  - key: shared
    value: "s*"
    share_threshold: true
    rate_limit:
      unit: minute
      requests_per_unit: 2
  - key: separate
    value: "s*"
    rate_limit:
      unit: minute
      requests_per_unit: 2
`})
	expect(t, n.should(t, req("wild", 0,
		d("path=/api/special"), // exact beats the wildcards
		d("path=/api/x"),       // prefix wildcard
		d("path=/api/v2"),      // both wildcards match: the first in the file wins
		d("path=/other"),       // the key's default
		d("path=/api/"),        // '*' matches the empty string
	)), codeOK,
		limited(codeOK, 3, unitMinute, "", 2, 20),
		limited(codeOK, 1, unitMinute, "", 0, 60),
		limited(codeOK, 1, unitMinute, "", 0, 60),
		limited(codeOK, 5, unitMinute, "", 4, 12),
		limited(codeOK, 1, unitMinute, "", 0, 60))
	// Without share_threshold every value has its own bucket.
	expect(t, n.should(t, req("wild", 0, d("path=/api/x"), d("path=/api/y"))), codeOver,
		limited(codeOver, 1, unitMinute, "", 0, 60),
		limited(codeOK, 1, unitMinute, "", 0, 60))

	// Wildcards in the middle and more than one.
	expect(t, n.should(t, req("wild", 0, d("host=amz"), d("host=a-m-z"), d("host=abcz"), d("host=amzq"), d("host=zma"))), codeOK,
		limited(codeOK, 2, unitMinute, "", 1, 30),
		limited(codeOK, 2, unitMinute, "", 1, 30),
		noLimit(), noLimit(), noLimit())

	// share_threshold: every value matching the pattern draws from one
	// bucket; the same pattern without it gives each value its own.
	expect(t, n.should(t, req("wild", 0, d("shared=s1"), d("shared=s2"), d("shared=s3"), d("shared=x"))), codeOver,
		limited(codeOK, 2, unitMinute, "", 1, 30),
		limited(codeOK, 2, unitMinute, "", 0, 60),
		limited(codeOver, 2, unitMinute, "", 0, 60),
		noLimit())
	expect(t, n.should(t, req("wild", 0, d("separate=s1"), d("separate=s2"), d("separate=s3"), d("separate=s1"))), codeOK,
		limited(codeOK, 2, unitMinute, "", 1, 30),
		limited(codeOK, 2, unitMinute, "", 1, 30),
		limited(codeOK, 2, unitMinute, "", 1, 30),
		limited(codeOK, 2, unitMinute, "", 0, 60))
}

func TestEnvoyUnlimitedAndBlockList(t *testing.T) {
	n := startNode(t, map[string]string{"special.yaml": `
domain: special
descriptors:
  - key: client
    value: batch
    rate_limit:
      unlimited: true
  - key: client
    rate_limit:
      unit: second
      requests_per_unit: 1
  - key: ip
    value: "203.0.113.*"
    rate_limit:
      unit: minute
      requests_per_unit: 0
  - key: ip
    rate_limit:
      unit: minute
      requests_per_unit: 5
`})
	unlimited := &rlsv3.RateLimitResponse_DescriptorStatus{Code: codeOK, LimitRemaining: 4294967295}
	for range 5 {
		expect(t, n.should(t, req("special", 1000, d("client=batch"))), codeOK, unlimited)
	}
	expect(t, n.should(t, req("special", 0, d("client=batch"), d("client=web"), d("client=batch"))), codeOK,
		unlimited, limited(codeOK, 1, unitSecond, "", 0, 1), unlimited)

	// requests_per_unit 0 refuses everything, from the first request.
	for range 3 {
		expect(t, n.should(t, req("special", 0, d("ip=203.0.113.7"), d("ip=198.51.100.1"))), codeOver,
			limited(codeOver, 0, unitMinute, "", 0, 0),
			limited(codeOK, 5, unitMinute, "", 4, 12))
		n.clock.Add(time.Hour)
	}
}

func TestEnvoyShadowMode(t *testing.T) {
	n := startNode(t, map[string]string{"shadow.yaml": `
domain: shadow
descriptors:
  - key: route
    value: /search
    shadow_mode: true
    rate_limit:
      unit: minute
      requests_per_unit: 1
  - key: route
    value: /post
    rate_limit:
      unit: minute
      requests_per_unit: 1
`})
	expect(t, n.should(t, req("shadow", 0, d("route=/search"))), codeOK, limited(codeOK, 1, unitMinute, "", 0, 60))
	// Over the limit, answered codeOK: limit_remaining stays 0 and the bucket is
	// reported as it is.
	for range 2 {
		expect(t, n.should(t, req("shadow", 0, d("route=/search"))), codeOK, limited(codeOK, 1, unitMinute, "", 0, 60))
	}
	// A shadow descriptor does not hide another descriptor's OVER_LIMIT.
	expect(t, n.should(t, req("shadow", 0, d("route=/search"), d("route=/post"))), codeOK,
		limited(codeOK, 1, unitMinute, "", 0, 60), limited(codeOK, 1, unitMinute, "", 0, 60))
	expect(t, n.should(t, req("shadow", 0, d("route=/search"), d("route=/post"))), codeOver,
		limited(codeOK, 1, unitMinute, "", 0, 60), limited(codeOver, 1, unitMinute, "", 0, 60))

	m := n.scrape(t)
	rule := "shadow.route_/search"
	if got := metric(t, m, "levee_decisions_total", map[string]string{"domain": "shadow", "rule": rule, "result": "shadow_over_limit"}); got != 4 {
		t.Errorf("shadow_over_limit decisions = %v, want 4", got)
	}
	if got := metric(t, m, "levee_decisions_total", map[string]string{"domain": "shadow", "rule": rule, "result": "ok"}); got != 1 {
		t.Errorf("ok decisions = %v, want 1", got)
	}
	if got := metric(t, m, "levee_decisions_total", map[string]string{"domain": "shadow", "rule": rule, "result": "over_limit"}); got != 0 {
		t.Errorf("over_limit decisions of the shadow rule = %v, want 0", got)
	}
	if got := metric(t, m, "levee_decisions_total", map[string]string{"domain": "shadow", "rule": "shadow.route_/post", "result": "over_limit"}); got != 1 {
		t.Errorf("over_limit decisions of the enforced rule = %v, want 1", got)
	}
}

func TestEnvoyReplaces(t *testing.T) {
	n := startNode(t, map[string]string{"rep.yaml": `
domain: rep
descriptors:
  - key: key1
    rate_limit:
      unit: minute
      requests_per_unit: 2
      name: limit1
  - key: key2
    rate_limit:
      unit: minute
      requests_per_unit: 5
      replaces:
        - name: limit1
  - key: key3
    rate_limit:
      unit: minute
      requests_per_unit: 4
`})
	// key2's limit replaces limit1 in requests that carry both: key1 is codeOK
	// with no current_limit, however often it comes.
	for i := range uint32(4) {
		expect(t, n.should(t, req("rep", 0, d("key1=a"), d("key2=b"), d("key3=c"))), codeOK,
			noLimit(),
			limited(codeOK, 5, unitMinute, "", 4-i, 12*int64(i+1)),
			limited(codeOK, 4, unitMinute, "", 3-i, 15*int64(i+1)))
	}
	// ... and its bucket was never touched.
	expect(t, n.should(t, req("rep", 0, d("key1=a"))), codeOK, limited(codeOK, 2, unitMinute, "limit1", 1, 30))
	expect(t, n.should(t, req("rep", 0, d("key1=a"), d("key3=d"))), codeOK,
		limited(codeOK, 2, unitMinute, "limit1", 0, 60), limited(codeOK, 4, unitMinute, "", 3, 15))
	// Replaced even when limit1 is over: the request passes.
	expect(t, n.should(t, req("rep", 0, d("key2=z"), d("key1=a"))), codeOK,
		limited(codeOK, 5, unitMinute, "", 4, 12), noLimit())
	expect(t, n.should(t, req("rep", 0, d("key1=a"))), codeOver, limited(codeOver, 2, unitMinute, "limit1", 0, 60))
}

func TestEnvoyQuotaMode(t *testing.T) {
	n := startNode(t, map[string]string{"quota.yaml": `
domain: quota
descriptors:
  - key: q1
    quota_mode: true
    rate_limit:
      unit: minute
      requests_per_unit: 1
  - key: q2
    quota_mode: true
    rate_limit:
      unit: minute
      requests_per_unit: 1
  - key: plain
    rate_limit:
      unit: minute
      requests_per_unit: 1
`})
	ok1 := limited(codeOK, 1, unitMinute, "", 0, 60)
	over1 := limited(codeOver, 1, unitMinute, "", 0, 60)
	expect(t, n.should(t, req("quota", 0, d("q1=a"), d("q2=a"))), codeOK, ok1, ok1)
	// One quota descriptor over, another not: the request passes.
	expect(t, n.should(t, req("quota", 0, d("q1=a"), d("q2=b"))), codeOK, over1, ok1)
	// Every quota descriptor over: OVER_LIMIT.
	expect(t, n.should(t, req("quota", 0, d("q1=a"), d("q2=a"))), codeOver, over1, over1)
	expect(t, n.should(t, req("quota", 0, d("q1=a"))), codeOver, over1)
	// A passing non-quota descriptor does not rescue all-quota-over ...
	expect(t, n.should(t, req("quota", 0, d("q1=a"), d("plain=x"))), codeOver, over1, ok1)
	// ... and a non-quota OVER_LIMIT is OVER_LIMIT whatever the quotas say.
	expect(t, n.should(t, req("quota", 0, d("q2=c"), d("plain=x"))), codeOver, ok1, over1)
	// Unmatched descriptors are not quota descriptors.
	expect(t, n.should(t, req("quota", 0, d("q2=d"), d("q1=a"), d("none=z"))), codeOK, ok1, over1, noLimit())
	expect(t, n.should(t, req("quota", 0, d("none=z"), d("q1=a"))), codeOver, noLimit(), over1)
}

func TestEnvoyDetailedMetric(t *testing.T) {
	n := startNode(t, map[string]string{"dm.yaml": `
domain: dm
descriptors:
  - key: user
    detailed_metric: true
    rate_limit:
      unit: minute
      requests_per_unit: 1
  - key: plain
    rate_limit:
      unit: minute
      requests_per_unit: 1
`})
	n.should(t, req("dm", 0, d("user=alice"), d("user=alice"), d("user=bob"), d("plain=carol"), d("plain=dave")))
	m := n.scrape(t)
	for _, c := range []struct {
		rule, result string
		want         float64
	}{
		{"dm.user_alice", "ok", 1},
		{"dm.user_alice", "over_limit", 1},
		{"dm.user_bob", "ok", 1},
		{"dm.plain", "ok", 2}, // without detailed_metric the values stay out
		{"dm.user", "ok", 0},
	} {
		if got := metric(t, m, "levee_decisions_total", map[string]string{"domain": "dm", "rule": c.rule, "result": c.result}); got != c.want {
			t.Errorf("levee_decisions_total{rule=%q,result=%q} = %v, want %v", c.rule, c.result, got, c.want)
		}
	}
	for _, s := range m {
		if s.name == "levee_decisions_total" && (strings.Contains(s.labels["rule"], "carol") || strings.Contains(s.labels["rule"], "dave")) {
			t.Errorf("a runtime value leaked into a rule label without detailed_metric: %v", s.labels)
		}
	}
}

func TestEnvoyLimitOverride(t *testing.T) {
	n := startNode(t, map[string]string{"ovr.yaml": `
domain: ovr
descriptors:
  - key: user
    rate_limit:
      unit: minute
      requests_per_unit: 100
      name: per_user
  - key: shadowed
    shadow_mode: true
    rate_limit:
      unit: minute
      requests_per_unit: 100
`})
	// The override replaces the rule's limit and is echoed as the current
	// limit, without the rule's name.
	expect(t, n.should(t, req("ovr", 0, withLimit(d("user=a"), 2, typev3.RateLimitUnit_SECOND))), codeOK, limited(codeOK, 2, unitSecond, "", 1, 1))
	expect(t, n.should(t, req("ovr", 0, withLimit(d("user=a"), 2, typev3.RateLimitUnit_SECOND))), codeOK, limited(codeOK, 2, unitSecond, "", 0, 1))
	expect(t, n.should(t, req("ovr", 0, withLimit(d("user=a"), 2, typev3.RateLimitUnit_SECOND))), codeOver, limited(codeOver, 2, unitSecond, "", 0, 1))
	// The rule's own bucket is separate.
	expect(t, n.should(t, req("ovr", 0, d("user=a"))), codeOK, limited(codeOK, 100, unitMinute, "per_user", 99, 1))
	// It applies in a known domain even where no rule matches ...
	expect(t, n.should(t, req("ovr", 0, withLimit(d("nomatch=z"), 1, typev3.RateLimitUnit_HOUR))), codeOK, limited(codeOK, 1, unitHour, "", 0, 3600))
	expect(t, n.should(t, req("ovr", 0, withLimit(d("nomatch=z"), 1, typev3.RateLimitUnit_HOUR))), codeOver, limited(codeOver, 1, unitHour, "", 0, 3600))
	// ... but not in an unknown domain.
	for range 3 {
		expect(t, n.should(t, req("nowhere", 0, withLimit(d("user=a"), 1, typev3.RateLimitUnit_HOUR))), codeOK, noLimit())
	}
	// Shadow mode never applies to an override.
	expect(t, n.should(t, req("ovr", 0, withLimit(d("shadowed=s"), 1, typev3.RateLimitUnit_DAY))), codeOK, limited(codeOK, 1, unitDay, "", 0, 86400))
	expect(t, n.should(t, req("ovr", 0, withLimit(d("shadowed=s"), 1, typev3.RateLimitUnit_DAY))), codeOver, limited(codeOver, 1, unitDay, "", 0, 86400))
	// Overrides honour hits_addend, month and year.
	expect(t, n.should(t, req("ovr", 3, withLimit(d("user=m"), 30, typev3.RateLimitUnit_MONTH))), codeOK, limited(codeOK, 30, unitMonth, "", 27, 3*86400))
	expect(t, n.should(t, req("ovr", 0, withHits(withLimit(d("user=y"), 365, typev3.RateLimitUnit_YEAR), 0))), codeOK, limited(codeOK, 365, unitYear, "", 365, 0))
	// The override's bucket is keyed by the descriptor's values: another
	// user has its own.
	expect(t, n.should(t, req("ovr", 0, withLimit(d("user=b"), 2, typev3.RateLimitUnit_SECOND))), codeOK, limited(codeOK, 2, unitSecond, "", 1, 1))
}

func TestEnvoyUnits(t *testing.T) {
	day := 24 * time.Hour
	units := []struct {
		name   string
		unit   rlsv3.RateLimitResponse_RateLimit_Unit
		period time.Duration
	}{
		{"second", unitSecond, time.Second},
		{"minute", unitMinute, time.Minute},
		{"hour", unitHour, time.Hour},
		{"day", unitDay, day},
		{"week", unitWeek, 7 * day},
		{"month", unitMonth, 30 * day},
		{"year", unitYear, 365 * day},
	}
	var b strings.Builder
	b.WriteString("domain: units\ndescriptors:\n")
	for i, u := range units {
		// Units are case-insensitive; alternate the spelling.
		spelled := u.name
		if i%2 == 1 {
			spelled = strings.ToUpper(u.name)
		}
		fmt.Fprintf(&b, "  - key: unit\n    value: %s\n    rate_limit:\n      unit: %s\n      requests_per_unit: 2\n", u.name, spelled)
	}
	n := startNode(t, map[string]string{"units.yaml": b.String()})

	for _, u := range units {
		t.Run(u.name, func(t *testing.T) {
			p := u.period
			n.clock.AlignTo(p)
			r := req("units", 0, d("unit="+u.name))
			// Two per unit: one token every half unit; empty, the bucket is
			// full again after a whole unit.
			expect(t, n.should(t, req("units", 2, d("unit="+u.name))), codeOK, limited(codeOK, 2, u.unit, "", 0, ceilSeconds(p)))
			expect(t, n.should(t, r), codeOver, limited(codeOver, 2, u.unit, "", 0, ceilSeconds(p)))
			// Just short of half a unit: still nothing.
			n.clock.Add(p/2 - p/100)
			expect(t, n.should(t, r), codeOver, limited(codeOver, 2, u.unit, "", 0, ceilSeconds(p/2+p/100)))
			// Half a unit: one token.
			n.clock.Add(p / 100)
			expect(t, n.should(t, r), codeOK, limited(codeOK, 2, u.unit, "", 0, ceilSeconds(p)))
			expect(t, n.should(t, r), codeOver, limited(codeOver, 2, u.unit, "", 0, ceilSeconds(p)))
			// A whole unit: full again, and no fuller.
			n.clock.Add(3 * p)
			expect(t, n.should(t, req("units", 0, withHits(d("unit="+u.name), 0))), codeOK, limited(codeOK, 2, u.unit, "", 2, 0))
		})
	}
}

func TestEnvoyBurst(t *testing.T) {
	n := startNode(t, map[string]string{"burst.yaml": `
domain: burst
descriptors:
  - key: small
    rate_limit:
      unit: minute
      requests_per_unit: 10
      burst: 3
  - key: big
    rate_limit:
      unit: second
      requests_per_unit: 1
      burst: 5
`})
	// Burst 3 at 10 per minute: three at once, then one every 6 s. The
	// current limit still reads 10 per minute.
	for i := range uint32(3) {
		expect(t, n.should(t, req("burst", 0, d("small=a"))), codeOK, limited(codeOK, 10, unitMinute, "", 2-i, 6*int64(i+1)))
	}
	expect(t, n.should(t, req("burst", 0, d("small=a"))), codeOver, limited(codeOver, 10, unitMinute, "", 0, 18))
	n.clock.Add(6 * time.Second)
	expect(t, n.should(t, req("burst", 0, d("small=a"))), codeOK, limited(codeOK, 10, unitMinute, "", 0, 18))
	// Waiting longer than a full refill fills only to the burst.
	n.clock.Add(time.Hour)
	expect(t, n.should(t, req("burst", 0, withHits(d("small=a"), 0))), codeOK, limited(codeOK, 10, unitMinute, "", 3, 0))

	// Burst 5 at 1 per second: 5 at once, more than the rate.
	expect(t, n.should(t, req("burst", 5, d("big=a"))), codeOK, limited(codeOK, 1, unitSecond, "", 0, 5))
	n.clock.Add(time.Second)
	expect(t, n.should(t, req("burst", 0, d("big=a"))), codeOK, limited(codeOK, 1, unitSecond, "", 0, 5))
	// More than the burst never fits.
	expect(t, n.should(t, req("burst", 6, d("big=b"))), codeOver, limited(codeOver, 1, unitSecond, "", 0, 0))
}

func TestEnvoyConcurrentClientsShareOneBucket(t *testing.T) {
	n := startNode(t, map[string]string{"conc.yaml": `
domain: conc
descriptors:
  - key: k
    rate_limit:
      unit: hour
      requests_per_unit: 100
`})
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		admitted int
	)
	for range 8 {
		wg.Go(func() {
			for range 40 {
				resp, err := n.envoy.ShouldRateLimit(callCtx(t), req("conc", 0, d("k=shared")))
				if err != nil {
					t.Error(err)
					return
				}
				if resp.OverallCode == codeOK {
					mu.Lock()
					admitted++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if admitted != 100 {
		t.Fatalf("%d of 320 concurrent requests admitted, want exactly 100", admitted)
	}
}

// invalid is an Envoy request that must be refused with InvalidArgument and
// a message "field: ..." that contains text.
type invalid struct {
	name  string
	req   *rlsv3.RateLimitRequest
	field string
	text  string
}

func envoyInvalid() []invalid {
	big := strings.Repeat("k", 4097)
	many := func(n int) []*ratelimitv3.RateLimitDescriptor {
		out := make([]*ratelimitv3.RateLimitDescriptor, n)
		for i := range out {
			out[i] = d("k=v")
		}
		return out
	}
	entries := func(n int) *ratelimitv3.RateLimitDescriptor {
		x := &ratelimitv3.RateLimitDescriptor{}
		for i := range n {
			x.Entries = append(x.Entries, &ratelimitv3.RateLimitDescriptor_Entry{Key: "k", Value: strconv.Itoa(i)})
		}
		return x
	}
	manyEntries := make([]*ratelimitv3.RateLimitDescriptor, 101)
	for i := range manyEntries {
		manyEntries[i] = entries(1000)
	}
	return []invalid{
		{"empty domain", req("", 0, d("k=v")), "domain", "rate limit domain must not be empty"},
		{"no descriptors", req("d", 0), "descriptors", "rate limit descriptor list must not be empty"},
		{"empty key", req("d", 0, d("k=v"), d("a=1", "=v")), "descriptors[1].entries[1].key", ""},
		{"key over 4 KiB", req("d", 0, d(big+"=v")), "descriptors[0].entries[0].key", ""},
		{"value over 4 KiB", req("d", 0, d("k="+big)), "descriptors[0].entries[0].value", ""},
		{"domain over 4 KiB", req(big, 0, d("k=v")), "domain", "at most 4096"},
		{"1001 descriptors", req("d", 0, many(1001)...), "descriptors", "at most 1000"},
		{"1001 entries", req("d", 0, entries(1001)), "descriptors[0].entries", "at most 1000"},
		{"101,000 entries in all", req("d", 0, manyEntries...), "descriptors", "too many entries"},
		{"hits_addend over 2^32-1", req("d", 0, withHits(d("k=v"), 1<<32)), "descriptors[0].hits_addend", "at most 4294967295"},
		{"override without unit", req("d", 0, withLimit(d("k=v"), 5, typev3.RateLimitUnit_UNKNOWN)), "descriptors[0].limit", ""},
		{"override with an unknown unit", req("d", 0, withLimit(d("k=v"), 5, typev3.RateLimitUnit(42))), "descriptors[0].limit", ""},
	}
}

func TestEnvoyInvalidArgument(t *testing.T) {
	n := startNode(t, map[string]string{"d.yaml": `
domain: d
descriptors:
  - key: k
    rate_limit:
      unit: minute
      requests_per_unit: 1
`})
	for _, c := range envoyInvalid() {
		t.Run(c.name, func(t *testing.T) {
			_, err := n.envoy.ShouldRateLimit(callCtx(t), c.req)
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("got %v, want InvalidArgument", err)
			}
			msg := status.Convert(err).Message()
			if !strings.HasPrefix(msg, c.field+": ") || !strings.Contains(msg, c.text) {
				t.Fatalf("message %q: want %q, naming the field, containing %q", msg, c.field+": ...", c.text)
			}
		})
	}
	// Boundaries: exactly 4 KiB, 1,000 descriptors and 1,000 entries are
	// fine, and nothing refused took a token.
	k4 := strings.Repeat("k", 4096)
	expect(t, n.should(t, req("d", 0, d(k4+"="+k4))), codeOK, noLimit())
	descs := make([]*ratelimitv3.RateLimitDescriptor, 1000)
	for i := range descs {
		descs[i] = d("other=" + strconv.Itoa(i))
	}
	if resp := n.should(t, req("d", 0, descs...)); resp.OverallCode != codeOK {
		t.Fatalf("1000 unmatched descriptors: %v", resp.OverallCode)
	}
	expect(t, n.should(t, req("d", 0, d("k=v"))), codeOK, limited(codeOK, 1, unitMinute, "", 0, 60))
}

func TestEnvoyHugeKey(t *testing.T) {
	n := startNode(t, map[string]string{"d.yaml": `
domain: d
descriptors:
  - key: k
    rate_limit:
      unit: minute
      requests_per_unit: 1
`})
	huge := strings.Repeat("x", 1<<20)
	reqs := []*rlsv3.RateLimitRequest{
		req("d", 0, d(huge+"=v")),
		req("d", 0, d("k="+huge)),
		req(huge, 0, d("k=v")),
		req("d", 0, d("k=v"), d(huge+"="+huge)),
	}
	for i := range 8 {
		_, err := n.envoy.ShouldRateLimit(callCtx(t), reqs[i%len(reqs)])
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("request %d with a 1 MiB string: %v, want InvalidArgument", i, err)
		}
		if msg := status.Convert(err).Message(); len(msg) > 1024 {
			t.Fatalf("error message is %d bytes; it should not echo the input", len(msg))
		}
	}
	// The node still answers, and the refused requests took nothing.
	expect(t, n.should(t, req("d", 0, d("k=v"))), codeOK, limited(codeOK, 1, unitMinute, "", 0, 60))
}

// ============================================================================
// Rule reloads
// ============================================================================

func rulesFile(rpu int) string {
	return fmt.Sprintf(`
domain: reload
descriptors:
  - key: k
    rate_limit:
      unit: minute
      requests_per_unit: %d
`, rpu)
}

func TestReload(t *testing.T) {
	n := startNode(t, map[string]string{"a.yaml": rulesFile(2)})
	reloads := func(result string) float64 {
		return metric(t, n.scrape(t), "levee_rules_reloads_total", map[string]string{"result": result})
	}
	limitIs := func(want uint32) func() error {
		return func() error {
			st := n.look(t, "reload", "k=v")
			if got := st.GetCurrentLimit().GetRequestsPerUnit(); got != want {
				return fmt.Errorf("requests_per_unit %d, want %d", got, want)
			}
			return nil
		}
	}
	failedAfter := func(prev float64) func() error {
		return func() error {
			if got := reloads("failed"); got != prev+1 {
				return fmt.Errorf("failed reloads %v, want %v", got, prev+1)
			}
			return nil
		}
	}
	expect(t, n.should(t, req("reload", 0, d("k=v"))), codeOK, limited(codeOK, 2, unitMinute, "", 1, 30))
	if got := reloads("failed"); got != 0 {
		t.Fatalf("failed reloads at start = %v", got)
	}

	okBefore := reloads("ok")
	n.write(t, "a.yaml", rulesFile(5))
	shedtest.Eventually(t, waitFor, "edited limit applied", limitIs(5))
	if got := reloads("ok"); got != okBefore+1 {
		t.Errorf("ok reloads = %v, want %v", got, okBefore+1)
	}
	// The bucket carries over: the 30 s it needed to be full under the old
	// limit become 2 missing tokens of 12 s (whole tokens, rounded down).
	expect(t, n.should(t, req("reload", 0, d("k=v"))), codeOK, limited(codeOK, 5, unitMinute, "", 2, 36))

	failed := 0.0
	good := 5
	for _, broken := range []struct{ name, body string }{
		{"bad YAML", "domain: reload\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute\n"},
		{"unknown key", strings.Replace(rulesFile(50), "requests_per_unit", "requests_per_unitt", 1)},
		{"bad unit", strings.Replace(rulesFile(50), "unit: minute", "unit: fortnight", 1)},
		{"negative limit", rulesFile(-1)},
		{"empty domain", strings.Replace(rulesFile(50), "domain: reload", "domain: ''", 1)},
	} {
		t.Run(broken.name, func(t *testing.T) {
			n.write(t, "a.yaml", broken.body)
			shedtest.Eventually(t, waitFor, "failed reload counted", failedAfter(failed))
			failed++
			// The last good rules keep serving.
			if err := limitIs(uint32(good))(); err != nil {
				t.Fatalf("after a refused reload: %v", err)
			}
			// Fixing the file applies again.
			good++
			n.write(t, "a.yaml", rulesFile(good))
			shedtest.Eventually(t, waitFor, "fixed file applied", limitIs(uint32(good)))
			if got := reloads("failed"); got != failed {
				t.Errorf("failed reloads = %v, want %v", got, failed)
			}
		})
	}

	// Loading is all-or-nothing across files: with b.yaml broken, a good
	// edit of a.yaml is not applied either, and b's domain does not appear.
	n.write(t, "b.yaml", "domain: other\ndescriptors:\n  - key: x\n    rate_limit:\n      unit: minute\n      requests_per_unit: 1\n      bogus: 1\n")
	shedtest.Eventually(t, waitFor, "failed reload counted", failedAfter(failed))
	failed++
	n.write(t, "a.yaml", rulesFile(99))
	shedtest.Eventually(t, waitFor, "failed reload counted", failedAfter(failed))
	failed++
	if err := limitIs(uint32(good))(); err != nil {
		t.Fatal(err)
	}
	expect(t, n.should(t, req("other", 0, d("x=1"))), codeOK, noLimit())
	// Fixing b applies both files.
	n.write(t, "b.yaml", "domain: other\ndescriptors:\n  - key: x\n    rate_limit:\n      unit: minute\n      requests_per_unit: 1\n")
	shedtest.Eventually(t, waitFor, "both files applied", limitIs(99))
	expect(t, n.should(t, req("other", 0, d("x=1"))), codeOK, limited(codeOK, 1, unitMinute, "", 0, 60))

	// Removing a file removes its domain.
	if err := os.Remove(filepath.Join(n.dir, "b.yaml")); err != nil {
		t.Fatal(err)
	}
	shedtest.Eventually(t, waitFor, "removed domain gone", func() error {
		if st := n.look(t, "other", "x=1"); st.CurrentLimit != nil {
			return fmt.Errorf("domain other still limited: %v", st)
		}
		return nil
	})
}

func TestRunRefusesBrokenInitialRules(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "bad.yaml"), []byte(strings.Replace(rulesFile(1), "unit: minute", "unit: fortnight", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	err := node.Run(ctx, node.Config{GRPCAddr: "127.0.0.1:0", RulesPath: dir}, func(node.Addrs) {
		t.Error("node became ready with broken rules")
	})
	if err == nil {
		t.Fatal("node.Run accepted a broken rule file")
	}
	for _, want := range []string{"bad.yaml", "fortnight"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("node.Run waited for the context: %v", err)
	}
}

// ============================================================================
// levee.v1
// ============================================================================

func check(t *testing.T, n *testNode, r *leveev1.CheckRequest) *leveev1.CheckResponse {
	t.Helper()
	resp, err := n.native.Check(callCtx(t), r)
	if err != nil {
		t.Fatalf("Check(%v): %v", r, err)
	}
	if len(resp.Statuses) != len(r.Items) {
		t.Fatalf("Check: %d statuses for %d items", len(resp.Statuses), len(r.Items))
	}
	return resp
}

func items(its ...*leveev1.CheckItem) *leveev1.CheckRequest {
	return &leveev1.CheckRequest{Items: its}
}

// rule is an item naming a rule by domain and "key=value" entries.
func rule(domain string, kvs ...string) *leveev1.CheckItem {
	rd := &leveev1.RuleDescriptor{Domain: domain}
	for _, kv := range kvs {
		k, v, _ := strings.Cut(kv, "=")
		rd.Entries = append(rd.Entries, &leveev1.Entry{Key: k, Value: v})
	}
	return &leveev1.CheckItem{Target: &leveev1.CheckItem_Descriptor_{Descriptor_: rd}}
}

// inline is an item with a caller-defined limit.
func inline(key string, limit int64, period time.Duration, burst int64) *leveev1.CheckItem {
	return &leveev1.CheckItem{Target: &leveev1.CheckItem_Inline{Inline: &leveev1.InlineLimit{
		Key: key, Limit: limit, Period: durationpb.New(period), Burst: burst,
	}}}
}

func hits(it *leveev1.CheckItem, h int64) *leveev1.CheckItem {
	it.Hits = proto.Int64(h)
	return it
}

const (
	cOK   = leveev1.Code_CODE_OK
	cOver = leveev1.Code_CODE_OVER_LIMIT
)

// nativeStatus is an ItemStatus under a limit; retry < 0 means absent.
func nativeStatus(code leveev1.Code, limit int64, period time.Duration, remaining int64, reset, retry time.Duration, ruleName string) *leveev1.ItemStatus {
	s := &leveev1.ItemStatus{
		Code: code, Limited: true, Limit: limit, Period: durationpb.New(period),
		Remaining: remaining, ResetAfter: durationpb.New(reset), Rule: ruleName,
	}
	if retry >= 0 {
		s.RetryAfter = durationpb.New(retry)
	}
	return s
}

func expectNative(t *testing.T, resp *leveev1.CheckResponse, overall leveev1.Code, want ...*leveev1.ItemStatus) {
	t.Helper()
	w := &leveev1.CheckResponse{OverallCode: overall, Statuses: want}
	if diff := cmp.Diff(w, resp, protocmp.Transform()); diff != "" {
		t.Fatalf("response mismatch (-want +got):\n%s", diff)
	}
}

const nativeRules = `
domain: app
descriptors:
  - key: user
    rate_limit:
      unit: minute
      requests_per_unit: 2
      name: per_user
  - key: route
    value: /search
    shadow_mode: true
    rate_limit:
      unit: second
      requests_per_unit: 1
  - key: client
    value: batch
    rate_limit:
      unlimited: true
  - key: org
    rate_limit:
      unit: hour
      requests_per_unit: 4
      burst: 2
`

func TestNativeDescriptorItems(t *testing.T) {
	n := startNode(t, map[string]string{"app.yaml": nativeRules})
	const never = -1
	expectNative(t, check(t, n, items(rule("app", "user=a"), rule("app", "none=x"), rule("elsewhere", "user=a"), rule("app", "client=batch"))), cOK,
		nativeStatus(cOK, 2, time.Minute, 1, 30*time.Second, never, "per_user"),
		&leveev1.ItemStatus{Code: cOK},
		&leveev1.ItemStatus{Code: cOK},
		&leveev1.ItemStatus{Code: cOK, Rule: "app.client_batch"}) // unlimited: no limit applies
	// Refused: remaining is what is left, retry_after when one more fits.
	expectNative(t, check(t, n, items(hits(rule("app", "user=a"), 2))), cOver,
		nativeStatus(cOver, 2, time.Minute, 1, 30*time.Second, 30*time.Second, "per_user"))
	expectNative(t, check(t, n, items(rule("app", "user=a"), hits(rule("app", "user=a"), 0))), cOK,
		nativeStatus(cOK, 2, time.Minute, 0, time.Minute, never, "per_user"),
		nativeStatus(cOK, 2, time.Minute, 0, time.Minute, never, "per_user"))
	// The overall code is OVER_LIMIT if any item is.
	expectNative(t, check(t, n, items(rule("app", "user=b"), rule("app", "user=a"))), cOver,
		nativeStatus(cOK, 2, time.Minute, 1, 30*time.Second, never, "per_user"),
		nativeStatus(cOver, 2, time.Minute, 0, time.Minute, 30*time.Second, "per_user"))
	n.clock.Add(10 * time.Second)
	expectNative(t, check(t, n, items(rule("app", "user=a"))), cOver,
		nativeStatus(cOver, 2, time.Minute, 0, 50*time.Second, 20*time.Second, "per_user"))

	// Shadow mode: counted, reported, never enforced. The rule is named by
	// its path when it has no name.
	shadow := func(remaining int64, over bool, retry time.Duration) *leveev1.ItemStatus {
		code := cOK
		s := nativeStatus(code, 1, time.Second, remaining, time.Second, retry, "app.route_/search")
		s.Shadow, s.OverLimitInShadow = true, over
		return s
	}
	expectNative(t, check(t, n, items(rule("app", "route=/search"))), cOK, shadow(0, false, never))
	expectNative(t, check(t, n, items(rule("app", "route=/search"))), cOK, shadow(0, true, time.Second))

	// Burst below the rate: two at once, then one every 15 minutes.
	n.clock.AlignTo(time.Hour)
	expectNative(t, check(t, n, items(hits(rule("app", "org=o"), 2))), cOK,
		nativeStatus(cOK, 4, time.Hour, 0, 30*time.Minute, never, "app.org"))
	expectNative(t, check(t, n, items(hits(rule("app", "org=o"), 3))), cOver,
		nativeStatus(cOver, 4, time.Hour, 0, 30*time.Minute, never, "app.org"))
}

func TestNativeInlineItems(t *testing.T) {
	n := startNode(t, map[string]string{"app.yaml": nativeRules})
	const never = -1
	// 10 per second, burst 20: a token every 100 ms.
	tenant := func() *leveev1.CheckItem { return inline("tenant-1", 10, time.Second, 20) }
	expectNative(t, check(t, n, items(hits(tenant(), 5))), cOK,
		nativeStatus(cOK, 10, time.Second, 15, 500*time.Millisecond, never, ""))
	// hits 0 looks.
	expectNative(t, check(t, n, items(hits(tenant(), 0))), cOK,
		nativeStatus(cOK, 10, time.Second, 15, 500*time.Millisecond, never, ""))
	// 16 do not fit; they will after one more token.
	expectNative(t, check(t, n, items(hits(tenant(), 16))), cOver,
		nativeStatus(cOver, 10, time.Second, 15, 500*time.Millisecond, 100*time.Millisecond, ""))
	// More than the burst never fits.
	expectNative(t, check(t, n, items(hits(tenant(), 21))), cOver,
		nativeStatus(cOver, 10, time.Second, 15, 500*time.Millisecond, never, ""))
	n.clock.Add(100 * time.Millisecond)
	expectNative(t, check(t, n, items(hits(tenant(), 16))), cOK,
		nativeStatus(cOK, 10, time.Second, 0, 2*time.Second, never, ""))
	// Absent hits means 1.
	expectNative(t, check(t, n, items(tenant())), cOver,
		nativeStatus(cOver, 10, time.Second, 0, 2*time.Second, 100*time.Millisecond, ""))

	// Burst 0 means the limit; durations that do not divide evenly round up.
	n.clock.AlignTo(time.Second)
	third := func() *leveev1.CheckItem { return inline("thirds", 3, time.Second, 0) }
	expectNative(t, check(t, n, items(third(), third())), cOK,
		nativeStatus(cOK, 3, time.Second, 2, 333333334*time.Nanosecond, never, ""),
		nativeStatus(cOK, 3, time.Second, 1, 666666667*time.Nanosecond, never, ""))
	expectNative(t, check(t, n, items(hits(third(), 2))), cOver,
		nativeStatus(cOver, 3, time.Second, 1, 666666667*time.Nanosecond, 333333334*time.Nanosecond, ""))

	// Inline buckets are keyed by their key alone and never collide with
	// rule descriptors, even with the same text.
	n.clock.AlignTo(time.Minute)
	expectNative(t, check(t, n, items(inline("user", 1, time.Minute, 0), rule("app", "user=a"), inline("tenant-2", 1, time.Minute, 0))), cOK,
		nativeStatus(cOK, 1, time.Minute, 0, time.Minute, never, ""),
		nativeStatus(cOK, 2, time.Minute, 1, 30*time.Second, never, "per_user"),
		nativeStatus(cOK, 1, time.Minute, 0, time.Minute, never, ""))

	// An unlimited inline item is always OK and keeps no bucket.
	free := func() *leveev1.CheckItem {
		return &leveev1.CheckItem{Target: &leveev1.CheckItem_Inline{Inline: &leveev1.InlineLimit{Key: "free", Unlimited: true}}}
	}
	expectNative(t, check(t, n, items(hits(free(), 1<<32-1), free(), hits(free(), 0))), cOK,
		&leveev1.ItemStatus{Code: cOK}, &leveev1.ItemStatus{Code: cOK}, &leveev1.ItemStatus{Code: cOK})

	// Mixed with rules, the overall code is the OR.
	expectNative(t, check(t, n, items(rule("app", "client=batch"), free(), hits(inline("tenant-3", 5, time.Minute, 0), 6))), cOver,
		&leveev1.ItemStatus{Code: cOK, Rule: "app.client_batch"},
		&leveev1.ItemStatus{Code: cOK},
		nativeStatus(cOver, 5, time.Minute, 5, 0, never, ""))

	// Every priority and cohort in range is accepted.
	for p := leveev1.Priority_PRIORITY_UNSPECIFIED; p <= leveev1.Priority_PRIORITY_SHEDDABLE; p++ {
		r := items(hits(inline("prio", 1, time.Second, 0), 0))
		r.Priority, r.Cohort = p, 127
		check(t, n, r)
	}
}

func nativeInvalid() []struct {
	name  string
	req   *leveev1.CheckRequest
	field string
} {
	big := strings.Repeat("k", 4097)
	manyItems := make([]*leveev1.CheckItem, 1001)
	for i := range manyItems {
		manyItems[i] = rule("app", "k=v")
	}
	manyEntries := rule("app")
	for i := range 1001 {
		manyEntries.GetDescriptor_().Entries = append(manyEntries.GetDescriptor_().Entries, &leveev1.Entry{Key: "k", Value: strconv.Itoa(i)})
	}
	withPeriod := func(p *durationpb.Duration) *leveev1.CheckItem {
		return &leveev1.CheckItem{Target: &leveev1.CheckItem_Inline{Inline: &leveev1.InlineLimit{Key: "k", Limit: 1, Period: p}}}
	}
	unlimitedWith := func(in *leveev1.InlineLimit) *leveev1.CheckItem {
		in.Unlimited = true
		return &leveev1.CheckItem{Target: &leveev1.CheckItem_Inline{Inline: in}}
	}
	prio := func(p leveev1.Priority) *leveev1.CheckRequest {
		r := items(rule("app", "k=v"))
		r.Priority = p
		return r
	}
	cohort := items(rule("app", "k=v"))
	cohort.Cohort = 128
	return []struct {
		name  string
		req   *leveev1.CheckRequest
		field string
	}{
		{"no items", items(), "items"},
		{"item without a target", items(rule("app", "k=v"), &leveev1.CheckItem{}), "items[1]"},
		{"empty domain", items(rule("", "k=v")), "items[0].descriptor.domain"},
		{"no entries", items(rule("app")), "items[0].descriptor.entries"},
		{"empty entry key", items(rule("app", "a=1", "=v")), "items[0].descriptor.entries[1].key"},
		{"empty inline key", items(inline("", 1, time.Second, 0)), "items[0].inline.key"},
		{"negative hits", items(rule("app", "k=v"), hits(rule("app", "k=v"), -1)), "items[1].hits"},
		{"hits over 2^32-1", items(hits(inline("k", 1, time.Second, 0), 1<<32)), "items[0].hits"},
		{"negative inline limit", items(inline("k", -1, time.Second, 0)), "items[0].inline.limit"},
		{"inline limit 0", items(inline("k", 0, time.Second, 0)), "items[0].inline.limit"},
		{"unlimited with a limit", items(unlimitedWith(&leveev1.InlineLimit{Key: "k", Limit: 5})), "items[0].inline.unlimited"},
		{"unlimited with a period", items(unlimitedWith(&leveev1.InlineLimit{Key: "k", Period: durationpb.New(time.Second)})), "items[0].inline.unlimited"},
		{"unlimited with a burst", items(unlimitedWith(&leveev1.InlineLimit{Key: "k", Burst: 5})), "items[0].inline.unlimited"},
		{"unlimited without a key", items(unlimitedWith(&leveev1.InlineLimit{})), "items[0].inline.key"},
		{"inline limit over the maximum", items(inline("k", 1<<41, time.Second, 0)), "items[0].inline.limit"},
		{"negative burst", items(inline("k", 1, time.Second, -5)), "items[0].inline.burst"},
		{"burst over the maximum", items(inline("k", 1, time.Second, 1<<41)), "items[0].inline.burst"},
		{"period missing", items(withPeriod(nil)), "items[0].inline.period"},
		{"period zero", items(withPeriod(durationpb.New(0))), "items[0].inline.period"},
		{"period too short", items(withPeriod(durationpb.New(999 * time.Microsecond))), "items[0].inline.period"},
		{"period negative", items(withPeriod(durationpb.New(-time.Second))), "items[0].inline.period"},
		{"period malformed", items(withPeriod(&durationpb.Duration{Seconds: 1, Nanos: -1})), "items[0].inline.period"},
		{"entry key over 4 KiB", items(rule("app", big+"=v")), "items[0].descriptor.entries[0].key"},
		{"entry value over 4 KiB", items(rule("app", "k="+big)), "items[0].descriptor.entries[0].value"},
		{"domain over 4 KiB", items(rule(big, "k=v")), "items[0].descriptor.domain"},
		{"inline key over 4 KiB", items(inline(big, 1, time.Second, 0)), "items[0].inline.key"},
		{"1001 items", items(manyItems...), "items"},
		{"1001 entries", items(manyEntries), "items[0].descriptor.entries"},
		{"unknown priority", prio(9), "priority"},
		{"negative priority", prio(-1), "priority"},
		{"cohort over 127", cohort, "cohort"},
	}
}

func TestNativeInvalidArgument(t *testing.T) {
	n := startNode(t, map[string]string{"app.yaml": nativeRules})
	for _, c := range nativeInvalid() {
		t.Run(c.name, func(t *testing.T) {
			_, err := n.native.Check(callCtx(t), c.req)
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("got %v, want InvalidArgument", err)
			}
			if msg := status.Convert(err).Message(); !strings.HasPrefix(msg, c.field+":") {
				t.Fatalf("message %q does not start with %q", msg, c.field+":")
			}
		})
	}
	// Nothing refused took a token.
	expectNative(t, check(t, n, items(hits(rule("app", "user=k"), 2))), cOK,
		nativeStatus(cOK, 2, time.Minute, 0, time.Minute, -1, "per_user"))
}

func TestNativeHugeKey(t *testing.T) {
	n := startNode(t, map[string]string{"app.yaml": nativeRules})
	huge := strings.Repeat("x", 1<<20)
	reqs := []*leveev1.CheckRequest{
		items(rule("app", huge+"=v")),
		items(rule("app", "user="+huge)),
		items(inline(huge, 1, time.Second, 0)),
		items(rule(huge, "user=a")),
	}
	for i := range 8 {
		_, err := n.native.Check(callCtx(t), reqs[i%len(reqs)])
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("request %d with a 1 MiB string: %v, want InvalidArgument", i, err)
		}
		if msg := status.Convert(err).Message(); len(msg) > 1024 {
			t.Fatalf("error message is %d bytes; it should not echo the input", len(msg))
		}
	}
	expectNative(t, check(t, n, items(rule("app", "user=a"))), cOK,
		nativeStatus(cOK, 2, time.Minute, 1, 30*time.Second, -1, "per_user"))
}

// TestStandaloneServesNoPeerAPI: a standalone node has no peers, so nobody
// may take from or hand buckets to it through the peer API.
func TestStandaloneServesNoPeerAPI(t *testing.T) {
	n := startNode(t, nil)
	ctx := callCtx(t)
	if _, err := n.peer.Handoff(ctx, &leveev1.HandoffRequest{From: "mallory"}); status.Code(err) != codes.Unimplemented {
		t.Errorf("Handoff to a standalone node: %v; want Unimplemented", err)
	}
	if _, err := n.peer.Lease(ctx, &leveev1.LeaseRequest{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("Lease from a standalone node: %v; want Unimplemented", err)
	}
}
