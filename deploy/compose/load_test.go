//go:build docker

package compose

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	rlv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
)

// callTimeout is the callers' deadline. A call to a node that is paused or
// cut off ends here; a reachable node answers far sooner.
const callTimeout = time.Second

// client holds one gRPC connection per levee node, as a caller on the
// host reaches them: through the ports published on loopback.
type client struct {
	conns  []*grpc.ClientConn
	envoy  []rlsv3.RateLimitServiceClient
	native []leveev1.RateLimitServiceClient
	health []healthpb.HealthClient
}

func newClient(addrs []string) (*client, error) {
	c := &client{}
	for _, a := range addrs {
		conn, err := grpc.NewClient("passthrough:///"+a, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			c.close()
			return nil, err
		}
		c.conns = append(c.conns, conn)
		c.envoy = append(c.envoy, rlsv3.NewRateLimitServiceClient(conn))
		c.native = append(c.native, leveev1.NewRateLimitServiceClient(conn))
		c.health = append(c.health, healthpb.NewHealthClient(conn))
	}
	return c, nil
}

func (c *client) close() {
	for _, conn := range c.conns {
		_ = conn.Close()
	}
}

// serving reports whether node answers its gRPC health check.
func (c *client) serving(node int) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	r, err := c.health[node].Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		// The node may be back: try it now rather than after the
		// connection's backoff, which measures the client, not levee.
		c.conns[node].ResetConnectBackoff()
	}
	return err == nil && r.GetStatus() == healthpb.HealthCheckResponse_SERVING
}

// inline is a bucket the suite defines itself (levee.v1 inline limit).
type inline struct {
	key    string
	limit  int64
	period time.Duration
	burst  int64
}

// check takes hits from an inline bucket through node and returns whether
// it was admitted and the tokens left.
func (c *client) check(ctx context.Context, node int, b inline, hits int64) (bool, int64, error) {
	r, err := c.native[node].Check(ctx, &leveev1.CheckRequest{Items: []*leveev1.CheckItem{{
		Target: &leveev1.CheckItem_Inline{Inline: &leveev1.InlineLimit{Key: b.key, Limit: b.limit, Period: durationpb.New(b.period), Burst: b.burst}},
		Hits:   &hits,
	}}})
	if err != nil {
		return false, 0, err
	}
	st := r.GetStatuses()[0]
	return st.GetCode() == leveev1.Code_CODE_OK, st.GetRemaining(), nil
}

// Kinds of calls the load makes.
const (
	kindUnique = iota // a new user on every call: Envoy's API, the example rules
	kindGlobal        // one inline bucket all callers share
	kindRoomy         // a few inline buckets far from their limits, which nodes warm-lease
)

// kindNames name the kinds in error counts.
var kindNames = [...]string{"unique", "global", "roomy"}

// sample is one call of the load.
type sample struct {
	node    int8
	kind    int8
	allowed bool
	code    codes.Code // OK, or the call's error
	start   time.Duration
	latency time.Duration
}

// load drives calls at fixed rates through every node, open-loop: each call
// runs on its own goroutine, so a node that hangs does not slow the calls to
// the others.
type load struct {
	c       *client
	global  inline
	unique  float64 // calls per second per node
	globalR float64 // calls per second per node on the global bucket
	prefix  string  // of the unique users
	roomy   []inline
	roomyR  float64 // calls per second per node on the roomy buckets, in turn

	t0      time.Time
	seq     atomic.Uint64
	mu      sync.Mutex
	samples []sample
	wg      sync.WaitGroup
}

// maxInflight bounds the calls waiting on one node (a paused node holds
// every call for callTimeout); a call over the bound is recorded as
// ResourceExhausted without being sent.
const maxInflight = 200

func (l *load) run(ctx context.Context) {
	l.t0 = time.Now()
	for n := range l.c.conns {
		inflight := new(atomic.Int64)
		l.wg.Add(2)
		go l.drive(ctx, n, kindUnique, l.unique, inflight)
		go l.drive(ctx, n, kindGlobal, l.globalR, inflight)
		if len(l.roomy) > 0 {
			l.wg.Add(1)
			go l.drive(ctx, n, kindRoomy, l.roomyR, inflight)
		}
	}
}

func (l *load) drive(ctx context.Context, node, kind int, rate float64, inflight *atomic.Int64) {
	defer l.wg.Done()
	tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if inflight.Add(1) > maxInflight {
			inflight.Add(-1)
			l.record(sample{node: int8(node), kind: int8(kind), code: codes.ResourceExhausted, start: time.Since(l.t0)})
			continue
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			defer inflight.Add(-1)
			l.call(node, kind)
		}()
	}
}

func (l *load) call(node, kind int) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	s := sample{node: int8(node), kind: int8(kind)}
	start := time.Now()
	s.start = start.Sub(l.t0)
	var err error
	switch kind {
	case kindUnique:
		var r *rlsv3.RateLimitResponse
		user := l.prefix + strconv.FormatUint(l.seq.Add(1), 10)
		r, err = l.c.envoy[node].ShouldRateLimit(ctx, &rlsv3.RateLimitRequest{
			Domain:      "example",
			Descriptors: []*rlv3.RateLimitDescriptor{{Entries: []*rlv3.RateLimitDescriptor_Entry{{Key: "user", Value: user}}}},
		})
		s.allowed = err == nil && r.GetOverallCode() == rlsv3.RateLimitResponse_OK
	case kindGlobal:
		s.allowed, _, err = l.c.check(ctx, node, l.global, 1)
	case kindRoomy:
		s.allowed, _, err = l.c.check(ctx, node, l.roomy[l.seq.Add(1)%uint64(len(l.roomy))], 1)
	}
	s.latency = time.Since(start)
	s.code = status.Code(err)
	l.record(s)
}

func (l *load) record(s sample) {
	l.mu.Lock()
	l.samples = append(l.samples, s)
	l.mu.Unlock()
}

// wait waits for the calls in flight once ctx is done.
func (l *load) wait() []sample {
	l.wg.Wait()
	return l.samples
}

// scrape is one reading of a node's metrics.
type scrape struct {
	at        time.Duration // since the load's start
	node      int
	ok        bool // the metrics endpoint answered
	members   int
	fallbacks float64
	local     float64 // levee_peer_local_total: decided from leases (or cached refusals)
}

// watcher reads every node's metrics every 100 ms: the ring size each node
// holds (levee_cluster_members) and the checks it decided by fallback.
type watcher struct {
	addrs []string
	t0    time.Time
	hc    http.Client
	mu    sync.Mutex
	log   []scrape
	done  chan struct{}
}

func watch(ctx context.Context, addrs []string, t0 time.Time) *watcher {
	w := &watcher{addrs: addrs, t0: t0, hc: http.Client{Timeout: 300 * time.Millisecond}, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			var wg sync.WaitGroup
			for n := range addrs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					s := w.read(n)
					w.mu.Lock()
					w.log = append(w.log, s)
					w.mu.Unlock()
				}()
			}
			wg.Wait()
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return w
}

func (w *watcher) read(node int) scrape {
	s := scrape{at: time.Since(w.t0), node: node}
	resp, err := w.hc.Get("http://" + w.addrs[node] + "/metrics")
	if err != nil {
		return s
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		name, val, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		switch name {
		case "levee_cluster_members":
			s.members, _ = strconv.Atoi(val)
			s.ok = true
		case "levee_peer_fallbacks_total":
			s.fallbacks, _ = strconv.ParseFloat(val, 64)
		case "levee_peer_local_total":
			s.local, _ = strconv.ParseFloat(val, 64)
		}
	}
	return s
}

// latest returns each node's last reading.
func (w *watcher) latest() []scrape {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]scrape, len(w.addrs))
	for i := len(w.log) - 1; i >= 0; i-- {
		s := w.log[i]
		if out[s.node].at == 0 {
			out[s.node] = s
		}
	}
	return out
}

// until polls cond on the latest readings until it holds or timeout passes,
// and returns the time (since t0) of the readings that satisfied it.
func (w *watcher) until(timeout time.Duration, cond func([]scrape) bool) (time.Duration, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		l := w.latest()
		if cond(l) {
			at := time.Duration(0)
			for _, s := range l {
				at = max(at, s.at)
			}
			return at, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return 0, fmt.Errorf("not within %v: last readings %+v", timeout, w.latest())
}

// lastFallback returns when any node's fallback count last rose.
func (w *watcher) lastFallback() time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	prev := map[int]float64{}
	var last time.Duration
	for _, s := range w.log {
		if !s.ok {
			continue
		}
		if p, seen := prev[s.node]; seen && s.fallbacks > p {
			last = s.at
		}
		prev[s.node] = s.fallbacks
	}
	return last
}

// fallbackStretches returns the stretches of the phase in which some node
// decided checks by fallback: each reading whose fallback count rose
// covers the time since that node's previous reading, and covered spans
// less than 300 ms apart are one stretch.
func (w *watcher) fallbackStretches() []time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	type span struct{ from, to time.Duration }
	var spans []span
	prev := map[int]scrape{}
	for _, s := range w.log {
		if !s.ok {
			continue
		}
		if p, seen := prev[s.node]; seen && s.fallbacks > p.fallbacks {
			spans = append(spans, span{p.at, s.at})
		}
		prev[s.node] = s
	}
	slices.SortFunc(spans, func(a, b span) int { return cmp.Compare(a.from, b.from) })
	var out []time.Duration
	var cur span
	for i, sp := range spans {
		if i > 0 && sp.from <= cur.to+300*time.Millisecond {
			cur.to = max(cur.to, sp.to)
			continue
		}
		if i > 0 {
			out = append(out, cur.to-cur.from)
		}
		cur = sp
	}
	if len(spans) > 0 {
		out = append(out, cur.to-cur.from)
	}
	return out
}
