package node

// Quota service tests: real nodes (Run), Envoy's rate limit quota streams
// over go-control-plane's client stubs, a real embedded etcd for the
// cluster. Waits poll until a deadline far above what any step needs.

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	rlqsv3 "github.com/envoyproxy/go-control-plane/envoy/service/rate_limit_quota/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/levee-dev/levee/cmd/levee/internal/admin"
	"github.com/levee-dev/levee/limiter/cluster/clustertest"
	"github.com/levee-dev/levee/shed/shedtest"
)

// quotaStream is one simulated Envoy's stream to a node: it sends reports
// as Envoy does and keeps the latest action per bucket.
type quotaStream struct {
	t      *testing.T
	st     rlqsv3.RateLimitQuotaService_StreamRateLimitQuotasClient
	cancel context.CancelFunc
	sent   bool
	acts   chan *rlqsv3.RateLimitQuotaResponse_BucketAction
	err    chan error
}

func openQuota(t *testing.T, addr string) *quotaStream {
	t.Helper()
	return openQuotaCreds(t, addr, insecure.NewCredentials())
}

func openQuotaCreds(t *testing.T, addr string, creds credentials.TransportCredentials) *quotaStream {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); _ = conn.Close() })
	st, err := rlqsv3.NewRateLimitQuotaServiceClient(conn).StreamRateLimitQuotas(ctx)
	if err != nil {
		t.Fatal(err)
	}
	q := &quotaStream{t: t, st: st, cancel: cancel, acts: make(chan *rlqsv3.RateLimitQuotaResponse_BucketAction, 1000), err: make(chan error, 1)}
	go func() {
		for {
			m, err := st.Recv()
			if err != nil {
				q.err <- err
				return
			}
			for _, a := range m.GetBucketAction() {
				q.acts <- a
			}
		}
	}()
	return q
}

// report sends one bucket's usage; the first message names the domain and
// carries time_elapsed 0 s, as Envoy's does.
func (q *quotaStream) report(bucket map[string]string, requests uint64, elapsed time.Duration) {
	q.t.Helper()
	m := &rlqsv3.RateLimitQuotaUsageReports{BucketQuotaUsages: []*rlqsv3.RateLimitQuotaUsageReports_BucketQuotaUsage{{
		BucketId: &rlqsv3.BucketId{Bucket: bucket}, TimeElapsed: durationpb.New(elapsed), NumRequestsAllowed: requests,
	}}}
	if !q.sent {
		m.Domain, q.sent = "rlqs", true
	}
	if err := q.st.Send(m); err != nil {
		q.t.Fatal(err)
	}
}

// await returns the first action pushed that satisfies ok.
func (q *quotaStream) await(what string, ok func(*rlqsv3.RateLimitQuotaResponse_BucketAction) bool) *rlqsv3.RateLimitQuotaResponse_BucketAction {
	q.t.Helper()
	deadline := time.After(clusterWait)
	for {
		select {
		case a := <-q.acts:
			if ok(a) {
				return a
			}
		case err := <-q.err:
			q.t.Fatalf("%s: stream ended: %v", what, err)
		case <-deadline:
			q.t.Fatalf("%s: not pushed", what)
		}
	}
}

// latest drains what was pushed and returns the last token bucket's tokens
// per fill (keeping the previous value when nothing came).
func (q *quotaStream) latest(prev uint32) uint32 {
	for {
		select {
		case a := <-q.acts:
			if tb := a.GetQuotaAssignmentAction().GetRateLimitStrategy().GetTokenBucket(); tb != nil {
				prev = tb.GetTokensPerFill().GetValue()
			} else if a.GetQuotaAssignmentAction().GetRateLimitStrategy().GetBlanketRule() == 1 {
				prev = 0 // DENY_ALL: a share below one token
			}
		default:
			return prev
		}
	}
}

func tokensPerFill(want uint32) func(*rlqsv3.RateLimitQuotaResponse_BucketAction) bool {
	return func(a *rlqsv3.RateLimitQuotaResponse_BucketAction) bool {
		tb := a.GetQuotaAssignmentAction().GetRateLimitStrategy().GetTokenBucket()
		return tb != nil && tb.GetTokensPerFill().GetValue() == want
	}
}

// labelled reads the /metrics series whose line starts with prefix
// (a name and some of its labels), summed.
func labelled(t *testing.T, metricsAddr, prefix string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		if i := strings.LastIndexByte(line, ' '); i > 0 {
			v, err := strconv.ParseFloat(line[i+1:], 64)
			if err == nil {
				sum += v
			}
		}
	}
	return sum
}

const quotaTenantRules = `domain: rlqs
descriptors:
  - key: name
    value: tenant
    descriptors:
      - key: tenant
        rate_limit: {unit: second, requests_per_unit: %d}
`

// TestQuotaNode: a standalone node serves the quota service: the first
// report (time_elapsed 0 s) subscribes and gets a whole-second token
// bucket with a whole-second TTL; a rule file edit changes the assignment;
// the metrics count streams, buckets and assignments; stopping the node
// expires the assignment (TTL 0) and ends the stream with UNAVAILABLE.
func TestQuotaNode(t *testing.T) {
	dir := t.TempDir()
	write := func(rpu int) {
		tmp := filepath.Join(dir, ".tmp")
		if err := os.WriteFile(tmp, fmt.Appendf(nil, quotaTenantRules, rpu), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "rlqs.yaml")); err != nil {
			t.Fatal(err)
		}
	}
	write(20)
	m := startMemberConfig(t, Config{
		GRPCAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0", RulesPath: dir, RulesPoll: 20 * time.Millisecond,
		ConfigSource: admin.SourceFile, ShutdownGrace: clusterWait, Quota: QuotaConfig{Sync: 100 * time.Millisecond},
	}, nil)
	q := openQuota(t, m.addrs.GRPC)
	bucket := map[string]string{"tenant": "acme", "name": "tenant"}
	q.report(bucket, 1, 0)
	a := q.await("first assignment", tokensPerFill(20))
	qa := a.GetQuotaAssignmentAction()
	if d := qa.GetAssignmentTimeToLive(); d == nil || d.GetNanos() != 0 || d.AsDuration() < time.Second {
		t.Fatalf("TTL %v: want whole seconds >= 1 s", d)
	}
	if f := qa.GetRateLimitStrategy().GetTokenBucket().GetFillInterval().AsDuration(); f != time.Second {
		t.Fatalf("fill_interval %v, want 1 s", f)
	}

	write(40)
	deadline := time.Now().Add(clusterWait)
	got := uint32(20)
	for got != 40 {
		if time.Now().After(deadline) {
			t.Fatalf("after the rule edit: %d per fill, want 40", got)
		}
		q.report(bucket, 0, time.Second)
		time.Sleep(50 * time.Millisecond)
		got = q.latest(got)
	}

	if v := labelled(t, m.addrs.Metrics, "levee_rlqs_streams"); v != 1 {
		t.Errorf("levee_rlqs_streams %v, want 1", v)
	}
	if v := labelled(t, m.addrs.Metrics, `levee_rlqs_assignments_total{action="token_bucket"`); v < 2 {
		t.Errorf("token bucket assignments counted %v, want >= 2", v)
	}
	if v := labelled(t, m.addrs.Metrics, `levee_rlqs_buckets{role="owned"`); v != 1 {
		t.Errorf("owned buckets %v, want 1", v)
	}
	if v := labelled(t, m.addrs.Metrics, `levee_rlqs_assigned_per_second{domain="rlqs",rule="rlqs.name_tenant.tenant"`); v != 40 {
		t.Errorf("assigned rate %v, want 40", v)
	}

	go m.stop(t)
	q.await("expiring assignment on drain", func(a *rlqsv3.RateLimitQuotaResponse_BucketAction) bool {
		d := a.GetQuotaAssignmentAction().GetAssignmentTimeToLive()
		return d != nil && d.AsDuration() == 0
	})
	select {
	case err := <-q.err:
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("stream ended with %v, want UNAVAILABLE", err)
		}
	case <-time.After(clusterWait):
		t.Fatal("stream not ended on drain")
	}
}

// TestQuotaCluster: three nodes, one Envoy streaming to each, one bucket of
// 100/s. The bucket's owner divides it across the nodes: a small Envoy gets
// its demand and the two large ones split the rest; the assignments never
// add up to more than the limit. A node that stops expires its Envoy's
// assignment, and the Envoy, reconnecting to another node, gets a share
// again while the total stays within the limit.
func TestQuotaCluster(t *testing.T) {
	e := clustertest.StartEtcd(t)
	var ms []*member
	for _, id := range []string{"n1", "n2", "n3"} {
		ms = append(ms, startMemberConfig(t, Config{
			GRPCAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0", RulesPoll: time.Hour,
			ConfigSource: admin.SourceEtcd, ShutdownGrace: clusterWait,
			Quota:   QuotaConfig{Sync: 200 * time.Millisecond},
			Cluster: &ClusterConfig{EtcdEndpoints: e.Endpoints(), MemberTTL: memberTTL, NodeID: id, PeerTimeout: 5 * time.Second},
		}, nil))
	}
	waitRing(t, 3, ms...)
	bucket := map[string]string{"name": "api"}
	qs := make([]*quotaStream, 3)
	for i, m := range ms {
		qs[i] = openQuota(t, m.addrs.GRPC)
		qs[i].report(bucket, 1, 0)
	}
	// Demand unknown for all three: about a third each, 100 in all.
	tokens := make([]uint32, 3)
	shedtest.Eventually(t, clusterWait, "a third each", func() error {
		sum := uint32(0)
		for i, q := range qs {
			tokens[i] = q.latest(tokens[i])
			sum += tokens[i]
		}
		if sum != 100 || min(tokens[0], tokens[1], tokens[2]) < 33 {
			return fmt.Errorf("tokens %v", tokens)
		}
		return nil
	})
	// The second reports: Envoy 0 asks for almost nothing, 1 and 2 for far
	// more than the limit.
	time.Sleep(time.Second)
	qs[0].report(bucket, 1, 5*time.Second)
	qs[1].report(bucket, 1_000_000, 5*time.Second)
	qs[2].report(bucket, 1_000_000, 5*time.Second)
	// Envoy 0 gets its demand (one request in a second or two) and
	// headroom of two standard errors of it, rounded up: 1 to 3 tokens.
	// The others split the limit less its demand, not its headroom: 99 or
	// 100 in all, never more.
	shedtest.Eventually(t, clusterWait, "max-min shares", func() error {
		for i, q := range qs {
			tokens[i] = q.latest(tokens[i])
		}
		if tokens[1]+tokens[2] > 100 {
			t.Fatalf("tokens %v: the Envoys above the level hold more than the limit", tokens)
		}
		if tokens[0] < 1 || tokens[0] > 3 || tokens[1]+tokens[2] < 99 || tokens[1] < 48 || tokens[2] < 48 {
			return fmt.Errorf("tokens %v", tokens)
		}
		return nil
	})

	// Stop n2: its Envoy's assignment expires and its stream ends.
	go ms[1].stop(t)
	qs[1].await("expiring assignment on drain", func(a *rlqsv3.RateLimitQuotaResponse_BucketAction) bool {
		d := a.GetQuotaAssignmentAction().GetAssignmentTimeToLive()
		return d != nil && d.AsDuration() == 0
	})
	if err := <-qs[1].err; status.Code(err) != codes.Unavailable {
		t.Fatalf("n2's stream ended with %v, want UNAVAILABLE", err)
	}
	// The Envoy reconnects to n3 (its reports while down are lost) and
	// subscribes again: the live assignments stay within the limit (less
	// Envoy 0's demand, plus its headroom) and come back to the whole of
	// it.
	re := openQuota(t, ms[2].addrs.GRPC)
	re.report(bucket, 1, 0)
	now := []uint32{tokens[0], 0, tokens[2]}
	qs[1] = re
	shedtest.Eventually(t, clusterWait, "shares after the reconnect", func() error {
		for i, q := range qs {
			now[i] = q.latest(now[i])
		}
		if now[1]+now[2] > 100 {
			t.Fatalf("tokens %v: the Envoys above the level hold more than the limit", now)
		}
		if now[1] == 0 || now[1]+now[2] < 99 || now[0] < 1 || now[0] > 3 {
			return fmt.Errorf("tokens %v", now)
		}
		return nil
	})
}

// TestQuotaConfigRefused: a node does not start with a quota setting Envoy
// could not use, and the error names it.
func TestQuotaConfigRefused(t *testing.T) {
	for _, c := range []struct {
		q    QuotaConfig
		want string
	}{
		{QuotaConfig{Unmatched: "maybe"}, "unmatched"},
		{QuotaConfig{TTL: 1500 * time.Millisecond}, "ttl: 1.5s is not a whole number of seconds"},
	} {
		err := Run(context.Background(), Config{GRPCAddr: "127.0.0.1:0", Quota: c.q}, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Quota %+v: %v, want an error naming %q", c.q, err, c.want)
		}
	}
}
