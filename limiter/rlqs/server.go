package rlqs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	rlqsv3 "github.com/envoyproxy/go-control-plane/envoy/service/rate_limit_quota/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/quota"
	"github.com/levee-dev/levee/limiter/ring"
	"github.com/levee-dev/levee/limiter/rules"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
	"github.com/levee-dev/levee/shed"
)

// Peers is the cluster as the quota service needs it (peer.Router).
type Peers interface {
	// Owner returns the owner of key and whether it is this node.
	Owner(key uint64) (m ring.Member, self bool)
	// Live returns the number of live nodes.
	Live() int
	// Quota sends a node's demand to owner m.
	Quota(ctx context.Context, m ring.Member, req *leveev1.QuotaRequest) (*leveev1.QuotaResponse, error)
}

// Unmatched is the answer for a bucket id no rule matches.
type Unmatched uint8

const (
	// UnmatchedAllow assigns ALLOW_ALL. It is the default: a bucket the
	// rules do not know is not limited, as for ShouldRateLimit.
	UnmatchedAllow Unmatched = iota
	// UnmatchedDeny assigns DENY_ALL.
	UnmatchedDeny
)

// ParseUnmatched parses "allow" or "deny".
func ParseUnmatched(s string) (Unmatched, error) {
	switch strings.ToLower(s) {
	case "", "allow":
		return UnmatchedAllow, nil
	case "deny":
		return UnmatchedDeny, nil
	}
	return UnmatchedAllow, fmt.Errorf("invalid unmatched bucket behaviour %q (want allow or deny)", s)
}

// String returns "allow" or "deny".
func (u Unmatched) String() string {
	if u == UnmatchedDeny {
		return "deny"
	}
	return "allow"
}

// Config configures a Server.
type Config struct {
	// Rules returns the rules in force (engine.Engine.Rules).
	Rules func() *rules.Config
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// Self is this node's ID, sent to owners (default "self").
	Self string
	// Peers is the cluster (nil: a standalone node owns every bucket).
	Peers Peers
	// Unmatched is the answer for bucket ids no rule matches.
	Unmatched Unmatched
	// TTL is the assignments' time to live, in whole seconds (default
	// 15 s, three of Envoy's 5 s report intervals; at least 1 s).
	TTL time.Duration
	// Sync is how often demand goes to the owners and assignments are
	// recomputed (default 1 s).
	Sync time.Duration
	// Idle is how long a client that reports nothing is kept (default 30 s).
	Idle time.Duration
	// Abandon is how long a client may report no requests before the
	// server abandons its bucket (abandon_action: Envoy erases the bucket
	// and stops reporting it until a request matches it again), so that
	// buckets nobody uses cost neither side anything (default 5 minutes).
	Abandon time.Duration
	// Threshold returns the shedding threshold in force: the highest of
	// the protected resources' (nil: never shedding).
	Threshold func(now time.Time) shed.Level
	// Metrics counts the service's work (nil: not counted).
	Metrics *Metrics
	// Logger receives the service's logs (nil: discarded).
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Self == "" {
		c.Self = "self"
	}
	c.TTL = c.TTL.Truncate(time.Second)
	if c.TTL <= 0 {
		c.TTL = 15 * time.Second
	}
	if c.Sync <= 0 {
		c.Sync = time.Second
	}
	if c.Idle <= 0 {
		c.Idle = 30 * time.Second
	}
	if c.Abandon <= 0 {
		c.Abandon = 5 * time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Rules == nil {
		c.Rules = func() *rules.Config { return nil }
	}
	return c
}

// MaxBucketsPerStream bounds the bucket ids one stream may subscribe to.
const MaxBucketsPerStream = 10_000

// Server implements rlqsv3.RateLimitQuotaServiceServer, and the owner's
// side of the peer Quota call (peer.QuotaHandler). Run drives it.
type Server struct {
	rlqsv3.UnimplementedRateLimitQuotaServiceServer
	cfg  Config
	kick chan struct{}

	// mu guards the streams and their clients.
	mu       sync.Mutex
	streams  map[*stream]struct{}
	nextID   uint64
	reports  uint64
	closing  bool           // no new streams: Run is over or Drain ran
	draining bool           // Drain ran
	recvs    sync.WaitGroup // the streams' receiving goroutines

	// allocMu guards alloc, the buckets this node owns.
	allocMu sync.Mutex
	alloc   *quota.Allocator
}

// stream is one Envoy's stream (one domain).
type stream struct {
	domain  string
	clients map[string]*client // by canonical bucket id
	// pending holds the actions to send, by canonical bucket id: a newer
	// action replaces one not sent yet, so a slow stream holds at most
	// one per bucket.
	pending map[string]*rlqsv3.RateLimitQuotaResponse_BucketAction
	wake    chan struct{} // pending has actions
	done    chan struct{} // closed by Drain
}

// kind is how a client's bucket is answered.
type kind uint8

const (
	kindLimited kind = iota // its share of the matched limit
	kindAllow               // ALLOW_ALL
	kindDeny                // DENY_ALL
)

// client is one (stream, bucket id) pair.
type client struct {
	id       uint64
	bucketID *rlqsv3.BucketId
	entries  []rules.Entry // sorted by key
	meter    quota.Meter
	last     time.Time // the last report
	used     time.Time // the last report of requests (or the subscription)

	// What the rules say, as of the last report.
	kind     kind
	key      uint64
	limit    limiter.Limit
	priority shed.Priority
	rule     string // rule ID for metrics; "unmatched" when none

	// The owner's grant (granted: one has arrived for key).
	granted bool
	fill    time.Duration
	pool    uint64
	tokens  uint64

	// The last assignment sent.
	sent    assignment
	sentAt  time.Time
	hasSent bool
}

// assignment is an assignment as compared for changes.
type assignment struct {
	kind          kind // kindLimited: a token bucket
	fill          time.Duration
	tokensPerFill uint64
	maxTokens     uint64
}

// New returns a Server.
func New(cfg Config) *Server {
	cfg = cfg.withDefaults()
	return &Server{
		cfg:     cfg,
		kick:    make(chan struct{}, 1),
		streams: make(map[*stream]struct{}),
		// Nodes send the whole demand of their clients every Sync, so a
		// node's clients that the owner has not heard of for three syncs
		// went with their node: their share must not stay reserved for
		// the Envoys' own idle time.
		alloc: quota.NewAllocator(max(3*cfg.Sync, 3*time.Second)),
	}
}

// Run syncs demand and assignments every Config.Sync (and when a client
// subscribes) until ctx is done; then it refuses new streams and waits for
// the streams' goroutines, which end as the gRPC server stops.
func (s *Server) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.Sync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			s.mu.Lock()
			s.closing = true
			s.mu.Unlock()
			s.recvs.Wait()
			return nil
		case <-t.C:
		case <-s.kick:
		}
		s.Sync(ctx)
	}
}

// StreamRateLimitQuotas implements rlqsv3.RateLimitQuotaServiceServer.
func (s *Server) StreamRateLimitQuotas(st rlqsv3.RateLimitQuotaService_StreamRateLimitQuotasServer) error {
	ss := &stream{
		clients: make(map[string]*client),
		pending: make(map[string]*rlqsv3.RateLimitQuotaResponse_BucketAction),
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return status.Error(codes.Unavailable, "levee node draining")
	}
	s.streams[ss] = struct{}{}
	// Recv blocks until the stream ends, which may only be after this
	// handler returns (on Drain): the server owns the receiving goroutine.
	s.recvs.Add(1)
	s.mu.Unlock()
	s.cfg.Metrics.stream(1)
	defer func() {
		s.mu.Lock()
		delete(s.streams, ss)
		s.mu.Unlock()
		s.cfg.Metrics.stream(-1)
		s.wakeSync() // the owner hands the stream's shares to the others
	}()

	recvErr := make(chan error, 1)
	go func() {
		defer s.recvs.Done()
		for {
			m, err := st.Recv()
			if err == nil {
				err = s.report(ss, m)
			}
			if err != nil {
				recvErr <- err
				return
			}
		}
	}()
	for {
		select {
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case <-ss.wake:
			if err := s.flush(ss, st); err != nil {
				return err
			}
		case <-ss.done:
			if err := s.flush(ss, st); err != nil {
				return err
			}
			return status.Error(codes.Unavailable, "levee node draining: reconnect to another node")
		case <-st.Context().Done():
			return status.FromContextError(st.Context().Err()).Err()
		}
	}
}

// flush sends the stream's pending actions in one response.
func (s *Server) flush(ss *stream, st rlqsv3.RateLimitQuotaService_StreamRateLimitQuotasServer) error {
	s.mu.Lock()
	if len(ss.pending) == 0 {
		s.mu.Unlock()
		return nil
	}
	resp := &rlqsv3.RateLimitQuotaResponse{BucketAction: make([]*rlqsv3.RateLimitQuotaResponse_BucketAction, 0, len(ss.pending))}
	for c, a := range ss.pending {
		resp.BucketAction = append(resp.BucketAction, a)
		delete(ss.pending, c)
	}
	s.mu.Unlock()
	s.cfg.Metrics.pushed(resp.BucketAction)
	return st.Send(resp)
}

func (s *Server) wakeSync() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// report records one message of usage reports.
func (s *Server) report(ss *stream, m *rlqsv3.RateLimitQuotaUsageReports) error {
	now := s.cfg.Now()
	rc := s.cfg.Rules()
	s.mu.Lock()
	defer s.mu.Unlock()
	switch d := m.GetDomain(); {
	case ss.domain == "" && d == "":
		return status.Error(codes.InvalidArgument, "domain: required in the stream's first report")
	case ss.domain == "":
		ss.domain = d
	case d != "" && d != ss.domain:
		return status.Errorf(codes.InvalidArgument, "domain: %q differs from the stream's %q: open another stream", d, ss.domain)
	}
	subscribed := false
	for i, u := range m.GetBucketQuotaUsages() {
		bid := u.GetBucketId().GetBucket()
		if len(bid) == 0 {
			return status.Errorf(codes.InvalidArgument, "bucket_quota_usages[%d].bucket_id.bucket: must not be empty", i)
		}
		for k, v := range bid {
			if k == "" || v == "" {
				return status.Errorf(codes.InvalidArgument, "bucket_quota_usages[%d].bucket_id.bucket[%q]: keys and values must not be empty", i, k)
			}
		}
		canon := canonical(bid)
		c := ss.clients[canon]
		if c == nil {
			if len(ss.clients) >= MaxBucketsPerStream {
				return status.Errorf(codes.ResourceExhausted, "bucket_quota_usages[%d]: more than %d buckets on one stream", i, MaxBucketsPerStream)
			}
			s.nextID++
			c = &client{id: s.nextID, bucketID: &rlqsv3.BucketId{Bucket: maps.Clone(bid)}, entries: Descriptor(bid), used: now}
			ss.clients[canon] = c
			subscribed = true
		}
		// time_elapsed is not read: the meter times reports itself.
		n := u.GetNumRequestsAllowed() + u.GetNumRequestsDenied()
		c.meter.Report(now, n)
		c.last = now
		if n > 0 {
			c.used = now
		}
		s.reports++
		s.cfg.Metrics.reported()
		if s.match(rc, ss.domain, c) {
			subscribed = true
		}
		if c.kind != kindLimited {
			// A blanket rule needs no owner: answer now. Shares are
			// pushed by Sync, once the owner has divided the limit.
			s.decide(ss, canon, c, now, 0)
		}
	}
	if subscribed {
		s.wakeSync()
	}
	return nil
}

// match sets what the rules say of c's bucket; it reports whether c's
// bucket or limit changed (the owner must hear of it soon).
func (s *Server) match(rc *rules.Config, domain string, c *client) bool {
	old := c.kind
	oldKey, oldLimit := c.key, c.limit
	c.key, c.limit, c.priority = 0, limiter.Limit{}, shed.Unspecified
	r := rc.Match(domain, c.entries).Rule
	switch {
	case r == nil:
		c.rule = "unmatched"
		c.kind = kindAllow
		if s.cfg.Unmatched == UnmatchedDeny {
			c.kind = kindDeny
		}
	case !r.HasLimit || r.Unlimited || len(r.Limits) == 0 || r.ShadowMode:
		// A shadow-mode rule is only counted, never enforced: with
		// enforcement in Envoy there is nothing to count it against.
		c.rule, c.kind = r.ID, kindAllow
	default:
		c.rule, c.priority = r.ID, r.Priority
		k := tightest(r.Limits)
		c.limit = r.Limits[k].Limit
		c.key = r.LimitKeyHash(domain, c.entries, k)
		c.kind = kindLimited
		if c.limit.Rate == 0 {
			c.kind = kindDeny
		}
	}
	if c.kind != kindLimited || c.key != oldKey {
		c.granted = false
	}
	return c.kind == kindLimited && (old != kindLimited || c.key != oldKey || c.limit != oldLimit)
}

// tightest returns the index of the limit with the lowest long-run rate.
func tightest(ls []rules.RateLimit) int {
	best := 0
	for i := 1; i < len(ls); i++ {
		a, b := ls[i].Limit, ls[best].Limit
		if float64(a.Rate)/a.Period.Seconds() < float64(b.Rate)/b.Period.Seconds() {
			best = i
		}
	}
	return best
}

// decide queues c's assignment on its stream if it changed, or if the last
// one sent is a third of its TTL old. threshold is the shedding threshold.
func (s *Server) decide(ss *stream, canon string, c *client, now time.Time, threshold shed.Level) {
	if s.draining {
		return // Drain's expiring assignments must not be replaced
	}
	var a assignment
	switch c.kind {
	case kindAllow, kindDeny:
		a.kind = c.kind
	case kindLimited:
		if !c.granted {
			return // the no-assignment behaviour until the owner answers
		}
		tokens := quota.Shrink(c.tokens, quota.Admitted(c.priority, threshold))
		tokens = min(tokens, math.MaxUint32)
		if tokens == 0 {
			a.kind = kindDeny
			break
		}
		a = assignment{kind: kindLimited, fill: c.fill, tokensPerFill: tokens,
			maxTokens: min(quota.MaxTokens(c.limit, c.pool, tokens, c.fill, c.meter.Demand()), math.MaxUint32)}
	}
	if c.hasSent && a == c.sent && now.Sub(c.sentAt) < s.cfg.TTL/3 {
		return
	}
	c.sent, c.sentAt, c.hasSent = a, now, true
	ss.pending[canon] = action(c.bucketID, a, s.cfg.TTL)
	select {
	case ss.wake <- struct{}{}:
	default:
	}
}

// action is the wire form of an assignment with time to live ttl.
func action(id *rlqsv3.BucketId, a assignment, ttl time.Duration) *rlqsv3.RateLimitQuotaResponse_BucketAction {
	strategy := &typev3.RateLimitStrategy{}
	switch a.kind {
	case kindAllow:
		strategy.Strategy = &typev3.RateLimitStrategy_BlanketRule_{BlanketRule: typev3.RateLimitStrategy_ALLOW_ALL}
	case kindDeny:
		strategy.Strategy = &typev3.RateLimitStrategy_BlanketRule_{BlanketRule: typev3.RateLimitStrategy_DENY_ALL}
	default:
		strategy.Strategy = &typev3.RateLimitStrategy_TokenBucket{TokenBucket: &typev3.TokenBucket{
			MaxTokens:     uint32(a.maxTokens),
			TokensPerFill: wrapperspb.UInt32(uint32(a.tokensPerFill)),
			FillInterval:  durationpb.New(a.fill),
		}}
	}
	return &rlqsv3.RateLimitQuotaResponse_BucketAction{
		BucketId: id,
		BucketAction: &rlqsv3.RateLimitQuotaResponse_BucketAction_QuotaAssignmentAction_{
			QuotaAssignmentAction: &rlqsv3.RateLimitQuotaResponse_BucketAction_QuotaAssignmentAction{
				// Always set, in whole seconds: Envoy expires an unset
				// TTL at once and reads only the seconds.
				AssignmentTimeToLive: &durationpb.Duration{Seconds: int64(ttl / time.Second)},
				RateLimitStrategy:    strategy,
			},
		},
	}
}

// canonical is a bucket id's identity: its entries sorted by key, each
// length-prefixed so that no two ids run together.
func canonical(bid map[string]string) string {
	keys := make([]string, 0, len(bid))
	n := 0
	for k, v := range bid {
		keys = append(keys, k)
		n += len(k) + len(v) + 16
	}
	slices.Sort(keys)
	var b strings.Builder
	b.Grow(n)
	for _, k := range keys {
		fmt.Fprintf(&b, "%d:%s%d:%s", len(k), k, len(bid[k]), bid[k])
	}
	return b.String()
}

// Descriptor is a bucket id as the descriptor the rules match: its entries
// sorted by key. levee ctl explain --bucket-id uses it too.
func Descriptor(bid map[string]string) []rules.Entry {
	es := make([]rules.Entry, 0, len(bid))
	for k, v := range bid {
		es = append(es, rules.Entry{Key: k, Value: v})
	}
	slices.SortFunc(es, func(a, b rules.Entry) int { return strings.Compare(a.Key, b.Key) })
	return es
}
