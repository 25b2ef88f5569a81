package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/levee-dev/levee/limiter/cluster"
	"github.com/levee-dev/levee/limiter/cluster/clustertest"
	"github.com/levee-dev/levee/limiter/ring"
	"github.com/levee-dev/levee/shed/shedtest"
)

// prefix holds the member keys, as configstore.Layout.Members does for a
// levee cluster.
const prefix = "/test/members/"

// waitLimit bounds every poll. It is far above what any step needs on an
// idle machine; tests never assert how fast something happened, only that
// it happened (and, where it matters, that it happened before a lease TTL
// could explain it).
const waitLimit = 20 * time.Second

// node is one running Membership with its own etcd client, as each levee
// process has.
type node struct {
	id     string
	m      *cluster.Membership
	client *clientv3.Client
	cancel context.CancelFunc
	done   chan error // receives Run's result

	mu       sync.Mutex
	onChange []*ring.Ring
	logs     *logCounter
}

// logCounter counts a node's log records by message: a session that ends
// says so in the log and nowhere else.
type logCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *logCounter) Enabled(context.Context, slog.Level) bool { return true }
func (c *logCounter) WithAttrs([]slog.Attr) slog.Handler       { return c }
func (c *logCounter) WithGroup(string) slog.Handler            { return c }

func (c *logCounter) Handle(_ context.Context, r slog.Record) error {
	c.mu.Lock()
	c.n[r.Message]++
	c.mu.Unlock()
	return nil
}

func (c *logCounter) count(msg string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[msg]
}

// sessionEnded is what Membership logs when a session ends.
const sessionEnded = "etcd membership session ended; keeping the last ring"

func startNode(t *testing.T, endpoints []string, id string, ttl time.Duration) *node {
	t.Helper()
	n := &node{id: id, client: clustertest.Client(t, endpoints), done: make(chan error, 1), logs: &logCounter{n: map[string]int{}}}
	m, err := cluster.New(cluster.Config{
		Client:    n.client,
		KeyPrefix: prefix,
		Logger:    slog.New(n.logs),
		Self:      ring.Member{ID: id, Addr: id + ".test:7001"},
		TTL:       ttl,
		RetryMin:  50 * time.Millisecond,
		RetryMax:  500 * time.Millisecond,
		OnChange: func(r *ring.Ring) {
			n.mu.Lock()
			n.onChange = append(n.onChange, r)
			n.mu.Unlock()
		},
	})
	if err != nil {
		t.Fatalf("cluster.New(%s): %v", id, err)
	}
	n.m = m
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	go func() { n.done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-n.done:
		case <-time.After(waitLimit):
			t.Errorf("%s: Run did not return after cancel", id)
		}
	})
	return n
}

// stop cancels the node's Run and returns its result.
func (n *node) stop(t *testing.T) error {
	t.Helper()
	n.cancel()
	select {
	case err := <-n.done:
		n.done <- err // keep it for the cleanup
		return err
	case <-time.After(waitLimit):
		t.Fatalf("%s: Run did not return after cancel", n.id)
		return nil
	}
}

func (n *node) lastOnChange() *ring.Ring {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.onChange) == 0 {
		return nil
	}
	return n.onChange[len(n.onChange)-1]
}

func members(ids ...string) []ring.Member {
	out := make([]ring.Member, len(ids))
	for i, id := range ids {
		out[i] = ring.Member{ID: id, Addr: id + ".test:7001"}
	}
	return out
}

func ids(r *ring.Ring) []string {
	var out []string
	for _, m := range r.Members() {
		out = append(out, m.ID)
	}
	return out
}

// agree returns a cond that holds when every node's ring is want.
func agree(want *ring.Ring, nodes ...*node) func() error {
	return func() error {
		for _, n := range nodes {
			if r := n.m.Ring(); !r.Equal(want) {
				return fmt.Errorf("%s has %v, want %v", n.id, ids(r), ids(want))
			}
		}
		return nil
	}
}

// noticed returns a cond that holds when every node has ended a session
// since the counts in before were taken.
func noticed(before map[*node]int, nodes ...*node) func() error {
	return func() error {
		for _, n := range nodes {
			if n.logs.count(sessionEnded) <= before[n] {
				return errors.New(n.id + " has not ended its session")
			}
		}
		return nil
	}
}

func sessionsEnded(nodes ...*node) map[*node]int {
	out := map[*node]int{}
	for _, n := range nodes {
		out[n] = n.logs.count(sessionEnded)
	}
	return out
}

func keyExists(t *testing.T, c *clientv3.Client, id string) bool {
	t.Helper()
	return keyRevision(t, c, id) != 0
}

// keyRevision returns the revision at which id's member key was last
// written, or 0 if there is none.
func keyRevision(t *testing.T, c *clientv3.Client, id string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	resp, err := c.Get(ctx, prefix+id)
	if err != nil {
		t.Fatalf("Get %s: %v", id, err)
	}
	if len(resp.Kvs) != 1 {
		return 0
	}
	return resp.Kvs[0].ModRevision
}

// TestJoinAndGracefulLeave checks that three nodes agree on the ring after
// they join, and that a node that stops gracefully is dropped at once: its
// key is gone when Run returns, and the others drop it although its lease
// has a TTL longer than the whole test.
func TestJoinAndGracefulLeave(t *testing.T) {
	e := clustertest.StartEtcd(t)
	const ttl = 60 * time.Second
	a := startNode(t, e.Endpoints(), "a", ttl)
	b := startNode(t, e.Endpoints(), "b", ttl)
	c := startNode(t, e.Endpoints(), "c", ttl)

	all := ring.New(members("a", "b", "c"))
	shedtest.Eventually(t, waitLimit, "all three agree", agree(all, a, b, c))
	for _, n := range []*node{a, b, c} {
		if !keyExists(t, a.client, n.id) {
			t.Errorf("%s: no member key with etcd up", n.id)
		}
		if r := n.lastOnChange(); !r.Equal(n.m.Ring()) {
			t.Errorf("%s: last OnChange ring %v differs from Ring() %v", n.id, ids(r), ids(n.m.Ring()))
		}
	}

	if err := c.stop(t); err != nil {
		t.Fatalf("graceful stop of c: %v", err)
	}
	if keyExists(t, a.client, "c") {
		t.Fatalf("c's key still exists after Run returned")
	}
	two := ring.New(members("a", "b"))
	if !c.m.Ring().Equal(two) {
		t.Errorf("c after leaving has ring %v, want %v", ids(c.m.Ring()), ids(two))
	}
	if !c.lastOnChange().Equal(two) {
		t.Errorf("c's OnChange was not told it left: last ring %v", ids(c.lastOnChange()))
	}
	shedtest.Eventually(t, waitLimit, "a and b drop c", agree(two, a, b))
}

// TestKeepaliveStopDropsMember checks that a node that stops renewing its
// lease without deregistering (its etcd client closed, as when the process
// is killed or partitioned) is dropped by the others once the lease
// expires, while it keeps its own last ring.
func TestKeepaliveStopDropsMember(t *testing.T) {
	e := clustertest.StartEtcd(t)
	const ttl = 2 * time.Second
	a := startNode(t, e.Endpoints(), "a", ttl)
	b := startNode(t, e.Endpoints(), "b", ttl)
	c := startNode(t, e.Endpoints(), "c", ttl)
	all := ring.New(members("a", "b", "c"))
	shedtest.Eventually(t, waitLimit, "all three agree", agree(all, a, b, c))

	before := sessionsEnded(c)
	if err := c.client.Close(); err != nil {
		t.Fatalf("closing c's client: %v", err)
	}
	if !keyExists(t, a.client, "c") {
		t.Fatalf("c's key vanished as soon as its client closed; want it to live until the lease expires")
	}
	shedtest.Eventually(t, waitLimit, "a and b drop c after its lease expires", agree(ring.New(members("a", "b")), a, b))
	if !c.m.Ring().Equal(all) {
		t.Errorf("c, cut off from etcd, has ring %v, want its last ring %v", ids(c.m.Ring()), ids(all))
	}
	shedtest.Eventually(t, waitLimit, "c notices it is cut off", noticed(before, c))
	if err := c.stop(t); err == nil {
		t.Errorf("Run of c returned nil; want an error, it could not deregister with a closed client")
	}
}

// TestEtcdOutage stops etcd under three nodes: they keep their last ring and
// keep retrying; when etcd comes back on the same data and address they
// re-register and agree again, and the watch works (a later leave is seen).
func TestEtcdOutage(t *testing.T) {
	e := clustertest.StartEtcd(t)
	const ttl = 2 * time.Second
	a := startNode(t, e.Endpoints(), "a", ttl)
	b := startNode(t, e.Endpoints(), "b", ttl)
	c := startNode(t, e.Endpoints(), "c", ttl)
	all := ring.New(members("a", "b", "c"))
	shedtest.Eventually(t, waitLimit, "all three agree", agree(all, a, b, c))
	before := []*ring.Ring{a.m.Ring(), b.m.Ring(), c.m.Ring()}
	// A member key written above etcd's revision now was registered
	// after the outage.
	rctx, rcancel := context.WithTimeout(context.Background(), waitLimit)
	resp, err := a.client.Get(rctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	rcancel()
	if err != nil {
		t.Fatalf("reading the revision: %v", err)
	}
	lastRev := resp.Header.Revision
	ended := sessionsEnded(a, b, c)

	cfg := e.Config()
	e.Close()
	shedtest.Eventually(t, waitLimit, "nodes notice the outage", noticed(ended, a, b, c))
	// Watch the rings through a few retry rounds (RetryMax is 500 ms): the
	// sleep lets time pass on purpose, nothing here is awaited.
	for end := time.Now().Add(3 * ttl); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		for i, n := range []*node{a, b, c} {
			if r := n.m.Ring(); r != before[i] {
				t.Fatalf("%s changed its ring during the outage: %v", n.id, ids(r))
			}
		}
	}

	e2 := clustertest.StartEtcdWith(t, cfg)
	shedtest.Eventually(t, waitLimit, "nodes re-register and resync", func() error {
		for _, n := range []*node{a, b, c} {
			if rev := keyRevision(t, a.client, n.id); rev == 0 {
				return errors.New(n.id + " has no key")
			} else if rev <= lastRev {
				return errors.New(n.id + " has not registered again")
			}
		}
		return agree(all, a, b, c)()
	})
	if e2.Endpoints()[0] != e.Endpoints()[0] {
		t.Fatalf("restarted etcd on %v, want %v", e2.Endpoints(), e.Endpoints())
	}

	if err := b.stop(t); err != nil {
		t.Fatalf("graceful stop of b after the outage: %v", err)
	}
	shedtest.Eventually(t, waitLimit, "a and c see b leave after the outage", agree(ring.New(members("a", "c")), a, c))
}

// TestKeyDeletedReRegisters checks that a node whose key is deleted behind
// its back (an operator, or a lease that expired during a partition) writes
// it again, and that the others see it come back.
func TestKeyDeletedReRegisters(t *testing.T) {
	e := clustertest.StartEtcd(t)
	a := startNode(t, e.Endpoints(), "a", 60*time.Second)
	b := startNode(t, e.Endpoints(), "b", 60*time.Second)
	both := ring.New(members("a", "b"))
	shedtest.Eventually(t, waitLimit, "both agree", agree(both, a, b))

	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if _, err := b.client.Delete(ctx, prefix+"a"); err != nil {
		t.Fatalf("deleting a's key: %v", err)
	}
	shedtest.Eventually(t, waitLimit, "a re-registers", func() error {
		if !keyExists(t, b.client, "a") {
			return errors.New("a's key is missing")
		}
		return agree(both, a, b)()
	})
}

// TestForeignKeys checks how hand-written keys under the members prefix are
// read: a bare address is a member, malformed JSON, an empty address and
// nested keys are ignored.
func TestForeignKeys(t *testing.T) {
	e := clustertest.StartEtcd(t)
	c := clustertest.Client(t, e.Endpoints())
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	for k, v := range map[string]string{
		"bare":        "10.0.0.9:7001",
		"broken":      "{not json",
		"noaddr":      `{"id":"noaddr"}`,
		"nested/deep": "10.0.0.8:7001",
	} {
		if _, err := c.Put(ctx, prefix+k, v); err != nil {
			t.Fatalf("Put %s: %v", k, err)
		}
	}
	a := startNode(t, e.Endpoints(), "a", 60*time.Second)
	want := ring.New(append(members("a"), ring.Member{ID: "bare", Addr: "10.0.0.9:7001"}))
	shedtest.Eventually(t, waitLimit, "a reads the initial list", agree(want, a))

	// The same rules apply to keys that arrive through the watch.
	if _, err := c.Put(ctx, prefix+"late", "10.0.0.7:7001"); err != nil {
		t.Fatalf("Put late: %v", err)
	}
	if _, err := c.Put(ctx, prefix+"late/x", "10.0.0.6:7001"); err != nil {
		t.Fatalf("Put late/x: %v", err)
	}
	want = ring.New(append(want.Members(), ring.Member{ID: "late", Addr: "10.0.0.7:7001"}))
	shedtest.Eventually(t, waitLimit, "a sees the late key", agree(want, a))
	if got := ids(a.m.Ring()); !slices.Equal(got, []string{"a", "bare", "late"}) {
		t.Errorf("ring = %v", got)
	}
}

// TestNewRejectsBadConfig checks the validation of Config, and that Run
// refuses to run twice.
func TestNewRejectsBadConfig(t *testing.T) {
	client, err := clientv3.New(cluster.ClientConfig([]string{"http://127.0.0.1:1"}))
	if err != nil {
		t.Fatalf("clientv3.New: %v", err)
	}
	defer client.Close()
	self := ring.Member{ID: "a", Addr: "a:1"}
	for name, cfg := range map[string]cluster.Config{
		"nil client":       {KeyPrefix: prefix, Self: self},
		"no key prefix":    {Client: client, Self: self},
		"prefix not a dir": {Client: client, KeyPrefix: "/test/members", Self: self},
		"empty id":         {Client: client, KeyPrefix: prefix, Self: ring.Member{Addr: "a:1"}},
		"slash in id":      {Client: client, KeyPrefix: prefix, Self: ring.Member{ID: "a/b", Addr: "a:1"}},
		"empty addr":       {Client: client, KeyPrefix: prefix, Self: ring.Member{ID: "a"}},
		"negative ttl":     {Client: client, KeyPrefix: prefix, Self: self, TTL: -time.Second},
		"negative retry":   {Client: client, KeyPrefix: prefix, Self: self, RetryMin: -1},
		"max below min":    {Client: client, KeyPrefix: prefix, Self: self, RetryMin: time.Second, RetryMax: time.Millisecond},
	} {
		if _, err := cluster.New(cfg); err == nil {
			t.Errorf("%s: New accepted %+v", name, cfg)
		} else if !strings.HasPrefix(err.Error(), "cluster: ") {
			t.Errorf("%s: error %q lacks the package prefix", name, err)
		}
	}

	m, err := cluster.New(cluster.Config{Client: client, KeyPrefix: prefix, Self: self})
	if err != nil {
		t.Fatalf("New with a valid config: %v", err)
	}
	if r := m.Ring(); !r.Equal(ring.New([]ring.Member{self})) {
		t.Errorf("Ring before Run = %v, want only self", ids(r))
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	for range 2 {
		go func() { done <- m.Run(ctx) }()
	}
	// One Run is refused at once; the other runs (retrying against a
	// closed port) until cancelled, and then has nothing to deregister.
	if err := <-done; err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("first Run to return gave %v, want the refusal of a second Run", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run that never registered returned %v after cancel, want nil", err)
	}
}
