// Package cluster keeps a levee node's view of the live nodes of its cluster,
// using etcd, and runs an embedded etcd for single-command development.
//
// # Membership
//
// The members of a cluster are the keys directly under one etcd key prefix
// (Config.KeyPrefix), one per node; where that prefix sits among the
// cluster's other keys is the caller's layout. Every node writes
// <KeyPrefix><id> = {"id":…,"addr":…} under a lease with a TTL of a few
// seconds and keeps the lease alive. Every node watches KeyPrefix and
// rebuilds its [ring.Ring] on each change, so all nodes that saw the same
// events hold Equal rings. A crashed or partitioned node stops renewing its
// lease and etcd deletes its key after the TTL; a node that stops gracefully
// deletes its key and revokes its lease itself, so the others drop it at
// once.
//
// [Membership.Run] is one loop of sessions. A session registers (it renews
// the previous lease if etcd still has it, else grants a new one, then writes
// the key), reads the whole member prefix, publishes the ring, and follows a
// watch from the revision of that read. It ends on the first sign of trouble:
// the keepalive channel closing (the lease was not renewed within its TTL,
// which is how an etcd outage shows up), the watch failing or being cancelled
// (compaction, lost leader), or the node's own key being deleted. The loop
// then waits with capped exponential backoff and starts a new session, which
// re-registers and resynchronises from scratch; a session that got as far
// as publishing a ring resets the backoff.
//
// Between sessions, and for as long as etcd is unreachable, the node keeps
// the last ring it published and keeps serving: losing etcd must not turn
// into errors for callers.
package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/levee-dev/levee/limiter/backoff"
	"github.com/levee-dev/levee/limiter/ring"
)

// Defaults for Config fields left zero.
const (
	DefaultTTL      = 3 * time.Second
	DefaultRetryMin = 100 * time.Millisecond
	DefaultRetryMax = 2 * time.Second
)

// Config configures a Membership.
type Config struct {
	// Client is the etcd client. Membership does not close it.
	Client *clientv3.Client
	// KeyPrefix is the etcd key prefix of the member keys: this node
	// registers at KeyPrefix + Self.ID, and every key directly under it is
	// a member. It is required and must end in '/'.
	KeyPrefix string
	// Self is this node. Self.ID must be non-empty and contain no '/';
	// Self.Addr must be non-empty (peers dial it).
	Self ring.Member
	// TTL of the registration lease: how long after this node stops
	// renewing it the others drop it. etcd leases count whole seconds, so
	// it is rounded up, and etcd may raise it to its minimum lease TTL.
	// Default DefaultTTL.
	TTL time.Duration
	// RetryMin and RetryMax bound the wait between sessions: it starts
	// near RetryMin and doubles on each failure up to RetryMax. Defaults
	// DefaultRetryMin and DefaultRetryMax.
	RetryMin, RetryMax time.Duration
	// Logger receives session changes. Default: discard.
	Logger *slog.Logger
	// OnChange, if set, is called with every new ring, after Ring returns
	// it. It runs on the goroutine of Run, one call at a time, in order, so
	// it must not block for long.
	OnChange func(*ring.Ring)
}

// Membership registers this node in etcd and tracks the ring of live
// members. Create it with New and drive it with Run.
type Membership struct {
	client    *clientv3.Client
	prefix    string // Config.KeyPrefix
	self      ring.Member
	key       string
	value     string
	ttl       int64 // seconds
	opTimeout time.Duration
	log       *slog.Logger
	onChange  func(*ring.Ring)

	// wait sleeps between sessions; tests replace it to observe the retry
	// schedule without sleeping.
	wait    func(ctx context.Context, d time.Duration) error
	backoff backoff.Backoff

	ring    atomic.Pointer[ring.Ring]
	running atomic.Bool

	// lease is the lease of the current or last registration, 0 if none.
	// Only Run's goroutine touches it.
	lease clientv3.LeaseID
}

// memberRecord is the JSON value stored at a member key.
type memberRecord struct {
	ID   string `json:"id"`
	Addr string `json:"addr"`
}

// New checks cfg and returns a Membership that has not contacted etcd yet.
// Until its first session completes, Ring returns a ring holding only Self,
// so a node that cannot reach etcd at start-up owns every key and decides
// locally.
func New(cfg Config) (*Membership, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("cluster: Config.Client is nil")
	case !strings.HasSuffix(cfg.KeyPrefix, "/"):
		return nil, fmt.Errorf("cluster: Config.KeyPrefix %q does not end in '/'", cfg.KeyPrefix)
	case cfg.Self.ID == "":
		return nil, errors.New("cluster: Config.Self.ID is empty")
	case strings.Contains(cfg.Self.ID, "/"):
		return nil, fmt.Errorf("cluster: Config.Self.ID %q contains '/'", cfg.Self.ID)
	case cfg.Self.Addr == "":
		return nil, fmt.Errorf("cluster: Config.Self.Addr is empty for member %q", cfg.Self.ID)
	case cfg.TTL < 0:
		return nil, fmt.Errorf("cluster: Config.TTL is negative (%v)", cfg.TTL)
	case cfg.RetryMin < 0 || cfg.RetryMax < 0:
		return nil, fmt.Errorf("cluster: Config.RetryMin/RetryMax are negative (%v, %v)", cfg.RetryMin, cfg.RetryMax)
	}
	ttl := cfg.TTL
	if ttl == 0 {
		ttl = DefaultTTL
	}
	retryMin, retryMax := cfg.RetryMin, cfg.RetryMax
	if retryMin == 0 {
		retryMin = DefaultRetryMin
	}
	if retryMax == 0 {
		retryMax = max(DefaultRetryMax, retryMin)
	}
	if retryMax < retryMin {
		return nil, fmt.Errorf("cluster: Config.RetryMax (%v) is below RetryMin (%v)", retryMax, retryMin)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	value, err := json.Marshal(memberRecord{ID: cfg.Self.ID, Addr: cfg.Self.Addr})
	if err != nil {
		return nil, fmt.Errorf("cluster: encoding member record: %w", err)
	}
	m := &Membership{
		client: cfg.Client,
		prefix: cfg.KeyPrefix,
		self:   cfg.Self,
		key:    cfg.KeyPrefix + cfg.Self.ID,
		value:  string(value),
		ttl:    int64(math.Ceil(ttl.Seconds())),
		// One etcd round trip should take milliseconds; waiting a whole
		// TTL before calling a call failed is generous without letting a
		// dead etcd stall a session for long.
		opTimeout: ttl,
		log:       logger.With("member", cfg.Self.ID),
		onChange:  cfg.OnChange,
		wait:      sleepCtx,
		backoff:   backoff.Backoff{Min: retryMin, Max: retryMax},
	}
	m.ring.Store(ring.New([]ring.Member{cfg.Self}))
	return m, nil
}

// Ring returns the current ring. It never returns nil and is safe to call
// from any goroutine.
func (m *Membership) Ring() *ring.Ring { return m.ring.Load() }

// Run registers this node and keeps the ring up to date until ctx is
// cancelled. It then deregisters: it deletes the member key and revokes the
// lease, so that the other nodes drop this node at once, publishes a ring
// without this node (unless it was the only member), and returns. Call it
// once, and stop serving peers only after it returns.
//
// Run returns nil after a clean deregistration, or an error if it could not
// deregister (etcd unreachable: the others then drop this node when its
// lease expires).
func (m *Membership) Run(ctx context.Context) error {
	if !m.running.CompareAndSwap(false, true) {
		return errors.New("cluster: Membership.Run called twice")
	}
	for {
		err := m.session(ctx)
		if ctx.Err() != nil {
			return m.deregister(ctx)
		}
		level := slog.LevelWarn
		if m.backoff.Failing() {
			level = slog.LevelDebug // already reported; an outage retries often
		}
		d := m.backoff.Next(rand.Float64())
		m.log.Log(ctx, level, "etcd membership session ended; keeping the last ring", "err", err, "retry_in", d)
		if m.wait(ctx, d) != nil {
			return m.deregister(ctx)
		}
	}
}

// errors that end a session.
var (
	errLeaseLost   = errors.New("lease keepalive stopped (etcd unreachable or lease expired)")
	errWatchClosed = errors.New("watch channel closed")
	errSelfRemoved = errors.New("own member key was deleted")
)

// session runs one registration and watch. It always returns a non-nil
// error describing why it ended.
func (m *Membership) session(ctx context.Context) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the keepalive and the watch of this session

	if err := m.register(sctx); err != nil {
		return err
	}
	ka, err := m.client.KeepAlive(sctx, m.lease)
	if err != nil {
		return fmt.Errorf("starting keepalive of lease %x: %w", m.lease, err)
	}

	gctx, gcancel := context.WithTimeout(sctx, m.opTimeout)
	resp, err := m.client.Get(gctx, m.prefix, clientv3.WithPrefix())
	gcancel()
	if err != nil {
		return fmt.Errorf("listing members under %q: %w", m.prefix, err)
	}
	members := make(map[string]ring.Member, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		if mem, ok := m.decode(kv); ok {
			members[mem.ID] = mem
		}
	}
	m.publish(members)
	m.backoff.Reset()
	m.log.Info("etcd membership synced", "members", len(members), "revision", resp.Header.Revision)

	// WithRequireLeader: an etcd member cut off from its leader cancels the
	// watch instead of serving a stale one in silence.
	wch := m.client.Watch(clientv3.WithRequireLeader(sctx), m.prefix,
		clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case _, ok := <-ka:
			if !ok {
				return errLeaseLost
			}
		case wr, ok := <-wch:
			if !ok {
				return errWatchClosed
			}
			if err := wr.Err(); err != nil {
				// Includes compaction (wr.CompactRevision > 0): the next
				// session reads the current state again.
				return fmt.Errorf("watching %q: %w", m.prefix, err)
			}
			if wr.Canceled {
				return fmt.Errorf("watching %q: cancelled by server", m.prefix)
			}
			removed := false
			for _, ev := range wr.Events {
				id := strings.TrimPrefix(string(ev.Kv.Key), m.prefix)
				switch ev.Type {
				case mvccpb.PUT:
					if mem, ok := m.decode(ev.Kv); ok {
						members[mem.ID] = mem
					}
				case mvccpb.DELETE:
					delete(members, id)
					removed = removed || id == m.self.ID
				}
			}
			if removed {
				// Our lease expired (a partition longer than the TTL)
				// or an operator removed us: register again rather than
				// publish a ring without ourselves.
				return errSelfRemoved
			}
			m.publish(members)
		}
	}
}

// register makes sure this node's key exists under a live lease: it renews
// the previous lease if etcd still has it, and grants a new one otherwise.
func (m *Membership) register(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, m.opTimeout)
	defer cancel()
	if m.lease != 0 {
		_, err := m.client.KeepAliveOnce(ctx, m.lease)
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			m.log.Info("etcd lease expired; granting a new one", "lease", fmt.Sprintf("%x", m.lease))
			m.lease = 0
		} else if err != nil {
			return fmt.Errorf("renewing lease %x: %w", m.lease, err)
		}
	}
	if m.lease == 0 {
		g, err := m.client.Grant(ctx, m.ttl)
		if err != nil {
			return fmt.Errorf("granting a %ds lease: %w", m.ttl, err)
		}
		m.lease = g.ID
	}
	if _, err := m.client.Put(ctx, m.key, m.value, clientv3.WithLease(m.lease)); err != nil {
		return fmt.Errorf("writing %q: %w", m.key, err)
	}
	return nil
}

// deregister deletes this node's key (only if it is still held by our lease,
// so as not to remove a newer registration under the same ID) and revokes
// the lease. It runs after ctx is done, so it uses a context of its own.
func (m *Membership) deregister(ctx context.Context) error {
	if m.lease == 0 {
		return nil
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.opTimeout)
	defer cancel()
	_, err := m.client.Txn(dctx).
		If(clientv3.Compare(clientv3.LeaseValue(m.key), "=", m.lease)).
		Then(clientv3.OpDelete(m.key)).
		Commit()
	if err != nil {
		return fmt.Errorf("cluster: deregistering %q: deleting key: %w", m.key, err)
	}
	if _, err := m.client.Revoke(dctx, m.lease); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("cluster: deregistering %q: revoking lease %x: %w", m.key, m.lease, err)
	}
	m.lease = 0
	m.log.Info("left the cluster")

	if cur := m.Ring(); cur.Len() > 1 && cur.Contains(m.self.ID) {
		rest := make([]ring.Member, 0, cur.Len()-1)
		for _, mem := range cur.Members() {
			if mem.ID != m.self.ID {
				rest = append(rest, mem)
			}
		}
		m.store(ring.New(rest))
	}
	return nil
}

// decode turns a member key-value into a Member. The ID comes from the key;
// the value is the JSON record, or, for keys written by hand, a bare
// address.
func (m *Membership) decode(kv *mvccpb.KeyValue) (ring.Member, bool) {
	id := strings.TrimPrefix(string(kv.Key), m.prefix)
	if id == "" || strings.Contains(id, "/") {
		return ring.Member{}, false
	}
	addr := string(kv.Value)
	var rec memberRecord
	if strings.HasPrefix(addr, "{") {
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			m.log.Warn("ignoring member with a malformed value", "key", string(kv.Key), "err", err)
			return ring.Member{}, false
		}
		addr = rec.Addr
	}
	if addr == "" {
		m.log.Warn("ignoring member with no address", "key", string(kv.Key))
		return ring.Member{}, false
	}
	return ring.Member{ID: id, Addr: addr}, true
}

// publish builds the ring of members and stores it if it differs from the
// current one.
func (m *Membership) publish(members map[string]ring.Member) {
	list := make([]ring.Member, 0, len(members))
	for _, mem := range members {
		list = append(list, mem)
	}
	r := ring.New(list)
	if r.Equal(m.Ring()) {
		return
	}
	m.log.Info("cluster membership changed", "members", r.Len())
	m.store(r)
}

func (m *Membership) store(r *ring.Ring) {
	m.ring.Store(r)
	if m.onChange != nil {
		m.onChange(r)
	}
}

// sleepCtx waits for d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
