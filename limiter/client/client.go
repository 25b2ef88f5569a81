package client

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/levee-dev/levee/limiter"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
	"github.com/levee-dev/levee/shed"
)

// Config configures a Client.
type Config struct {
	// Target is the sidecar's gRPC address: "127.0.0.1:8081", or
	// "unix:///run/levee/levee.sock" for a Unix socket. It is dialled
	// with DialOptions, in plain text unless they say otherwise.
	Target      string
	DialOptions []grpc.DialOption
	// Conn, if set, is used instead of dialling Target; Close leaves it
	// open.
	Conn grpc.ClientConnInterface
	// Budget bounds how long a check waits for the sidecar, within the
	// caller's deadline (0: DefaultBudget).
	Budget time.Duration
	// FailClosed refuses work that levee did not decide in time; by
	// default it is admitted.
	FailClosed bool
	// CacheSize bounds the refusal cache (0: DefaultCacheSize; negative:
	// no cache).
	CacheSize int
	// Now is the clock (nil: time.Now).
	Now func() time.Time
}

// Defaults for Config.
const (
	DefaultBudget    = 5 * time.Millisecond
	DefaultCacheSize = 10_000
)

// Client checks quotas against a levee sidecar.
type Client struct {
	rpc      leveev1.RateLimitServiceClient
	conn     *grpc.ClientConn // dialled here, closed by Close
	budget   time.Duration
	closed   bool // FailClosed
	cache    *refusals
	now      func() time.Time
	requests sync.Pool

	checks, calls, cached, failures atomic.Uint64
}

// New returns a client of the sidecar cfg names. It starts connecting but
// does not wait for the sidecar: a check before the connection is up (or
// within the budget) is decided by the failure mode.
func New(cfg Config) (*Client, error) {
	c := &Client{budget: cfg.Budget, closed: cfg.FailClosed, now: cfg.Now}
	if c.budget <= 0 {
		c.budget = DefaultBudget
	}
	if c.now == nil {
		c.now = time.Now
	}
	size := cfg.CacheSize
	if size == 0 {
		size = DefaultCacheSize
	}
	c.cache = newRefusals(size)
	cc := cfg.Conn
	if cc == nil {
		if cfg.Target == "" {
			return nil, errors.New("client: Config.Target or Config.Conn is required")
		}
		opts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, cfg.DialOptions...)
		conn, err := grpc.NewClient(cfg.Target, opts...)
		if err != nil {
			return nil, fmt.Errorf("client: dialling %s: %w", cfg.Target, err)
		}
		// Connect now rather than on the first check, which would otherwise
		// spend its budget on the handshake.
		conn.Connect()
		c.conn, cc = conn, conn
	}
	c.rpc = leveev1.NewRateLimitServiceClient(cc)
	c.requests.New = func() any { return new(request) }
	return c, nil
}

// Close releases the connection the client dialled.
func (c *Client) Close() error {
	if c.conn == nil {
		return nil
	}
	return c.conn.Close()
}

// Stats counts what a client did since New.
type Stats struct {
	// Checks is the number of checks.
	Checks uint64
	// Calls is the number of calls made to the sidecar.
	Calls uint64
	// Cached is the number of checks refused from the refusal cache.
	Cached uint64
	// Failures is the number of checks levee did not decide (the sidecar
	// unreachable, too slow for the budget, or refusing the request), which
	// the failure mode decided.
	Failures uint64
}

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	return Stats{Checks: c.checks.Load(), Calls: c.calls.Load(), Cached: c.cached.Load(), Failures: c.failures.Load()}
}

// Check decides items at the default priority. See CheckPriority.
func (c *Client) Check(ctx context.Context, items ...Item) Decision {
	return c.CheckPriority(ctx, shed.Unspecified, items...)
}

// CheckPriority decides whether work drawing on items may proceed. p is
// the work's priority, which selects the reserve of a capacity-budget rule
// (rate_limit.reserve); Unspecified is default. Every item is decided in
// one call to the sidecar, unless the refusal cache already refuses one;
// a check of no items is allowed without a call.
func (c *Client) CheckPriority(ctx context.Context, p shed.Priority, items ...Item) Decision {
	c.checks.Add(1)
	if len(items) == 0 {
		return Decision{Allowed: true} // no quota to draw on
	}
	sent := c.now().UnixNano()
	var keys [8]uint64
	var ks []uint64
	if c.cache != nil {
		ks = keys[:0]
		if len(items) > len(keys) {
			ks = make([]uint64, 0, len(items))
		}
		for i := range items {
			ks = append(ks, itemKey(&items[i], p))
		}
		if d, ok := c.fromCache(items, ks, sent); ok {
			c.cached.Add(1)
			return d
		}
	}

	req := c.requests.Get().(*request)
	defer c.requests.Put(req)
	req.fill(items, p)
	ctx, cancel := context.WithTimeout(ctx, c.budget)
	defer cancel()
	c.calls.Add(1)
	resp, err := c.rpc.Check(ctx, &req.msg)
	if err == nil && len(resp.GetStatuses()) != len(items) {
		err = fmt.Errorf("levee answered %d statuses for %d items", len(resp.GetStatuses()), len(items))
	}
	if err != nil {
		c.failures.Add(1)
		return Decision{Allowed: !c.closed, Err: fmt.Errorf("levee did not decide: %w", err)}
	}
	d := Decision{Allowed: resp.GetOverallCode() != leveev1.Code_CODE_OVER_LIMIT, Items: make([]Status, len(items))}
	for i, ws := range resp.GetStatuses() {
		st := &d.Items[i]
		decode(st, ws, &items[i])
		if !d.Allowed && st.OverLimit && st.RetryAfter > d.RetryAfter {
			d.RetryAfter = st.RetryAfter
		}
		if c.cache != nil && cacheable(st) {
			c.cache.add(ks[i], refusal{until: sent + int64(st.RetryAfter), hits: items[i].hits(), st: *st}, sent)
		}
	}
	return d
}

// fromCache answers a check that a cached refusal refuses.
func (c *Client) fromCache(items []Item, keys []uint64, now int64) (Decision, bool) {
	var d Decision
	for i := range items {
		r, ok := c.cache.lookup(keys[i], items[i].hits(), now)
		if !ok {
			continue
		}
		if d.Items == nil {
			d.Items = make([]Status, len(items))
			d.Cached = true
		}
		st := r.st
		st.RetryAfter = time.Duration(r.until - now)
		d.Items[i] = st
		d.RetryAfter = max(d.RetryAfter, st.RetryAfter)
	}
	return d, d.Cached
}

// decode fills st from the sidecar's status of item it.
func decode(st *Status, ws *leveev1.ItemStatus, it *Item) {
	*st = Status{
		OverLimit:         ws.GetCode() == leveev1.Code_CODE_OVER_LIMIT,
		Limited:           ws.GetLimited(),
		Policy:            ws.GetRule(),
		Shadow:            ws.GetShadow(),
		OverLimitInShadow: ws.GetOverLimitInShadow(),
		QuotaMode:         ws.GetQuotaMode(),
	}
	if it.Key != "" && st.Policy == "" {
		st.Policy = "inline"
	}
	if !st.Limited {
		return
	}
	st.Rate, st.Period = uint64(max(ws.GetLimit(), 0)), ws.GetPeriod().AsDuration()
	st.Remaining = uint64(max(ws.GetRemaining(), 0))
	st.ResetAfter = ws.GetResetAfter().AsDuration()
	if st.OverLimit {
		st.RetryAfter = limiter.Never
		if ra := ws.GetRetryAfter(); ra != nil {
			st.RetryAfter = ra.AsDuration()
		}
	}
}
