// Package node assembles one levee node: the rule files and their watcher,
// the bucket store, the engine, the gRPC front ends (Envoy's rate limit
// service and quota service, and levee.v1), the shedding policy's resources (a policy.Set the
// node owns and drives) and the ShedService sidecar, health and
// reflection, and the HTTP listener for metrics, health checks and the
// status page. With etcd it also joins the cluster (membership, the peer
// router and server), follows the runtime configuration and overrides and
// writes its status under the keys configstore lays out, and serves the
// admin API. Run builds a node, serves it and shuts it down; `levee serve`
// runs one, tests run several in one process.
package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"path"
	"runtime"
	"sync"
	"time"

	rlqsv3 "github.com/envoyproxy/go-control-plane/envoy/service/rate_limit_quota/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/levee-dev/levee/cmd/levee/internal/admin"
	"github.com/levee-dev/levee/cmd/levee/internal/configstore"
	"github.com/levee-dev/levee/deploy/examples"
	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/cluster"
	"github.com/levee-dev/levee/limiter/engine"
	"github.com/levee-dev/levee/limiter/envoy"
	"github.com/levee-dev/levee/limiter/native"
	"github.com/levee-dev/levee/limiter/peer"
	"github.com/levee-dev/levee/limiter/rlqs"
	"github.com/levee-dev/levee/limiter/rules"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
	"github.com/levee-dev/levee/shed"
	"github.com/levee-dev/levee/shed/policy"
)

// Config is a node's configuration; `levee serve` fills it from flags.
type Config struct {
	// GRPCAddr is the gRPC listen address (both APIs, health, reflection).
	GRPCAddr string
	// TLS serves the gRPC listener over TLS (nil: plaintext). With
	// a Cluster, ClientCAs must be set and the peer API needs a client
	// certificate they verify, so that only other nodes can take from
	// this node's buckets or hand buckets to it; Envoy and services need
	// none.
	TLS *tls.Config
	// MetricsAddr is the HTTP listen address for /metrics and /healthz;
	// empty disables it.
	MetricsAddr string
	// RulesPath is a rule file or directory; empty uses the built-in
	// example rules.
	RulesPath string
	// RulesPoll is how often the rule files (and, in file mode, the
	// shedding policy file) are checked for changes.
	RulesPoll time.Duration
	// ShedPolicyPath is the shedding policy file; empty uses the built-in
	// example policy.
	ShedPolicyPath string
	// ConfigSource is where the rules and the shedding policy come from:
	// admin.SourceFile, the files above, watched (a standalone node's only
	// choice); admin.SourceEtcd, the versions stored in etcd, which the
	// files only seed when etcd holds none; or empty (or "auto") for file
	// when RulesPath is set or the node is standalone, etcd otherwise.
	ConfigSource string
	// Pprof serves net/http/pprof under /debug/pprof/ on MetricsAddr.
	Pprof bool
	// MaxProcs is the most GOMAXPROCS the node will run with, which sizes
	// its pool of gRPC stream workers (0: GOMAXPROCS now). A node whose
	// GOMAXPROCS follows the load starts low and must not size it then.
	MaxProcs int
	// MaxKeys bounds the number of buckets held.
	MaxKeys int
	// ShutdownGrace bounds a graceful stop: in-flight calls get this long.
	ShutdownGrace time.Duration
	// MaxConnections bounds the gRPC connections open at once; one past
	// it is closed as soon as it is accepted (0: unbounded).
	MaxConnections int
	// MaxConnectionIdle closes a gRPC connection with no call in flight
	// for this long (0: never).
	MaxConnectionIdle time.Duration
	// Logger receives the node's logs (nil: discarded).
	Logger *slog.Logger
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// Cluster makes the node one of many sharing their buckets; nil runs a
	// standalone node with no etcd and no peers.
	Cluster *ClusterConfig
	// Admin is the admin API; it needs the cluster's etcd, where the
	// configuration it manages lives.
	Admin AdminConfig
	// Quota configures Envoy's rate limit quota service (limiter/rlqs).
	Quota QuotaConfig
}

// QuotaConfig configures the rate limit quota service.
type QuotaConfig struct {
	// Unmatched is the answer for bucket ids no rule matches: "allow"
	// (ALLOW_ALL, the default) or "deny" (DENY_ALL).
	Unmatched string
	// TTL is the assignments' time to live, whole seconds (default 15 s).
	TTL time.Duration
	// Sync is how often demand goes to the buckets' owners (default 1 s).
	Sync time.Duration
	// Abandon is how long a bucket may see no requests before the Envoy
	// is told to abandon it (default 5 minutes).
	Abandon time.Duration
}

// ClusterConfig is how a node finds its peers and shares buckets with them.
type ClusterConfig struct {
	// EtcdEndpoints are the etcd client URLs. Empty starts an embedded
	// single-node etcd (Embedded) for development.
	EtcdEndpoints []string
	// Embedded configures the embedded etcd when EtcdEndpoints is empty.
	// An empty Dir is a fresh temporary directory, removed when the node
	// stops; a Dir given keeps etcd's data across runs.
	Embedded cluster.EmbeddedConfig
	// EtcdTLS, EtcdUsername and EtcdPassword secure the etcd connection.
	EtcdTLS                    *tls.Config
	EtcdUsername, EtcdPassword string
	// Prefix is the etcd key prefix of the cluster.
	Prefix string
	// MemberTTL is how long after a node stops renewing its lease the
	// others drop it.
	MemberTTL time.Duration
	// NodeID names the node in the ring (default: host name and gRPC port).
	NodeID string
	// AdvertiseAddr is the gRPC address peers dial (default: the bound
	// gRPC address).
	AdvertiseAddr string
	// PeerTLS is how the node dials its peers (nil: plaintext): the CA
	// that verifies their listeners, and the client certificate their
	// peer API asks for. It is set exactly when Config.TLS is.
	PeerTLS *tls.Config
	// PeerNames, when not empty, are the only certificate names (common
	// name or DNS name) the peer API answers, so that not every
	// certificate the client CA signs is a node.
	PeerNames []string
	// BatchWindow, BatchMax and PeerTimeout tune forwarding (peer.Config).
	BatchWindow time.Duration
	BatchMax    int
	PeerTimeout time.Duration
	// WarmLease is how long a warm lease lasts (peer.Config.WarmLease; 0:
	// none).
	WarmLease time.Duration
}

// Addrs are the addresses a running node listens on.
type Addrs struct {
	GRPC, Metrics, Admin string
}

// Run runs a node until ctx is done, then stops it gracefully. ready, if not
// nil, is called once the listeners are bound. Run fails at once if the
// initial rules do not load: a node must not start without knowing its
// limits.
func Run(ctx context.Context, cfg Config, ready func(Addrs)) error {
	n, err := build(ctx, cfg.withDefaults())
	if err != nil {
		return err
	}
	defer n.close()
	return n.serve(ctx, ready)
}

// withDefaults fills the fields left zero.
func (c Config) withDefaults() Config {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	c.Logger = withTraceIDs(c.Logger)
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.MaxKeys <= 0 {
		c.MaxKeys = 1_000_000
	}
	if c.ShutdownGrace <= 0 {
		c.ShutdownGrace = 10 * time.Second
	}
	return c
}

// node is one levee node: build assembles it, serve runs it and stops it,
// close releases what build acquired.
type node struct {
	cfg Config
	log *slog.Logger

	store    *limiter.Store
	cl       *clusterNode // nil for a standalone node
	eng      *engine.Engine
	tel      *telemetry
	conns    *limitListener // the gRPC listener's connection bound and counts
	tr       *tracing
	shedding *shedSet
	rt       *runtimeConfig // nil for a standalone node
	conf     *enforced      // what the node enforces, from which source
	why      string         // why that source
	files    *fileSource    // nil unless the source is file

	quota *rlqs.Server // Envoy's rate limit quota service

	lis     net.Listener // gRPC
	srv     *grpc.Server
	peerSrv *peer.Server // nil when standalone
	health  *health.Server
	httpLis net.Listener // nil without a MetricsAddr
	httpSrv *http.Server
	status  *statusView // the status page; nil without a MetricsAddr

	// closers release what build acquired; close runs them last first.
	closers []func()
}

func (n *node) onClose(f func()) { n.closers = append(n.closers, f) }

func (n *node) close() {
	for i := len(n.closers) - 1; i >= 0; i-- {
		n.closers[i]()
	}
	n.closers = nil
}

// build loads the bootstrap rules and shedding policy, binds the listeners,
// joins etcd when clustered and assembles the engine and the servers. Nothing
// is served yet. If it fails, it releases what it acquired.
func build(ctx context.Context, cfg Config) (*node, error) {
	n := &node{cfg: cfg, log: cfg.Logger}
	ok := false
	defer func() {
		if !ok {
			n.close()
		}
	}()
	log := n.log

	if err := checkPeerTLS(cfg); err != nil {
		return nil, err
	}
	if err := checkGRPCAddr(cfg); err != nil {
		return nil, err
	}
	src, why, err := cfg.source()
	if err != nil {
		return nil, err
	}
	n.why = why
	// In file mode the watcher loads the rules, so that they are parsed
	// once: it carries on from what it loaded.
	var watcher *rules.Watcher
	if src == admin.SourceFile && cfg.RulesPath != "" {
		watcher = rules.NewWatcher(cfg.RulesPath, cfg.RulesPoll, log)
	}
	initial, policyData, initialPolicy, err := loadBootstrap(cfg, watcher)
	if err != nil {
		return nil, err
	}
	boot, err := bootstrapBundle(cfg, policyData)
	if err != nil {
		return nil, err
	}
	var paths []string
	if src == admin.SourceFile {
		paths = cfg.configPaths()
	}
	// Until etcd says otherwise, the node enforces its bootstrap files.
	n.conf = newEnforced(src, paths, cfg.Now)
	n.conf.applied(0, boot.Hash())
	reg, provider, err := newMetrics()
	if err != nil {
		return nil, err
	}
	if n.tr, err = newTracing(ctx, nodeInstance(cfg)); err != nil {
		return nil, err
	}
	n.onClose(n.tr.shutdown)
	n.onClose(func() { _ = provider.Shutdown(context.Background()) })
	meter := provider.Meter("github.com/levee-dev/levee")

	if n.lis, err = listen(cfg.GRPCAddr); err != nil {
		return nil, fmt.Errorf("grpc listener: %w", err)
	}
	n.onClose(func() { _ = n.lis.Close() })
	n.conns = limitConns(n.lis, cfg.MaxConnections)
	n.lis = n.conns

	n.store = limiter.NewStore(cfg.MaxKeys)
	var buckets engine.Buckets = engine.LocalBuckets{Store: n.store}
	if cfg.Cluster != nil {
		if n.cl, err = startCluster(ctx, *cfg.Cluster, n.lis.Addr().String(), n.store, cfg.Now, log, n.tr); err != nil {
			return nil, err
		}
		n.onClose(n.cl.close)
		buckets = n.cl.router
	}
	em, err := engine.NewMetrics(meter)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	n.eng = engine.New(buckets, initial, em)
	if n.tel, err = newTelemetry(meter, n.store, n.cl, n.conns); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	sm, err := shed.NewMetrics(meter)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	n.shedding = newShedSet(sm, cfg.Now, log)
	n.onClose(n.shedding.Close)
	if err := n.shedding.Apply(initialPolicy); err != nil {
		return nil, fmt.Errorf("shedding policy: %w", err)
	}
	if n.quota, err = newQuota(cfg, n.eng, n.cl, n.shedding, meter, log); err != nil {
		return nil, err
	}
	if err := configInfoMetrics(meter, n.conf); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	if src == admin.SourceFile {
		n.files = newFileSource(cfg, watcher, boot, n.eng, n.shedding, n.tel, n.conf, log)
	}
	if n.cl != nil {
		if n.rt, err = startRuntime(ctx, cfg, n.cl, n.eng, n.shedding, n.tel, boot, n.conf, log); err != nil {
			return nil, err
		}
		if n.files != nil {
			n.files.changed = n.rt.publishSoon
		}
		if n.rt.admin != nil {
			n.onClose(n.rt.admin.Close) // frees the port if a later step fails; a no-op after serve
		}
		n.rt.tracer = n.tr.tracer()
		if err := configMetrics(meter, n.rt); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	if n.cl != nil && cfg.TLS == nil && !isLoopback(n.lis.Addr()) {
		log.Warn("the peer API is served in plain text beyond loopback: anyone who reaches the gRPC address can take tokens and hand buckets over; give --tls-cert, --tls-key and --tls-client-ca", "grpc", n.lis.Addr().String())
	}
	n.newGRPCServer()
	if cfg.MetricsAddr != "" {
		if err := n.newMetricsServer(reg); err != nil {
			return nil, err
		}
	}
	ok = true
	return n, nil
}

// loadBootstrap reads the rules and the shedding policy the node starts
// with, from their files (through w, if not nil) or the built-in examples;
// policyData is the policy file's content, nil for the example.
func loadBootstrap(cfg Config, w *rules.Watcher) (initial *rules.Config, policyData []byte, pol *policy.Policy, err error) {
	if w != nil {
		initial, err = w.Load()
	} else {
		initial, err = loadRules(cfg.RulesPath)
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf("loading rules: %w", err)
	}
	if cfg.ShedPolicyPath != "" {
		if policyData, err = configstore.ReadFile(cfg.ShedPolicyPath); err != nil {
			return nil, nil, nil, fmt.Errorf("loading shedding policy: %w", err)
		}
	}
	if pol, err = parseShedPolicy(cfg.ShedPolicyPath, policyData); err != nil {
		return nil, nil, nil, fmt.Errorf("loading shedding policy: %w", err)
	}
	return initial, policyData, pol, nil
}

// newGRPCServer builds the gRPC server with its services: both rate limit
// APIs, the ShedService, health and reflection, and the peer API in a
// cluster.
func (n *node) newGRPCServer() {
	cfg := n.cfg
	opts := []grpc.ServerOption{
		// A fixed pool of stream workers keeps handler goroutines (and their
		// grown stacks) instead of starting one per call: without it about
		// a tenth of a busy node's CPU went to growing fresh stacks. The
		// pool must cover the calls in flight at once (handlers wait for
		// forwarded decisions and for the request's data): with one
		// worker per core, 50 concurrent calls still started a goroutine
		// for most of them, and copying their stacks was 13% of a node's
		// CPU in a profile; with 64 workers, 0.7%.
		grpc.NumStreamWorkers(uint32(max(64, 16*cfg.maxProcs()))),
		// Fixed flow-control windows turn off gRPC's bandwidth estimation,
		// which answers incoming data with a ping: for messages this small
		// that is a write, a read and a wake-up more per call.
		grpc.InitialWindowSize(peer.WindowSize), grpc.InitialConnWindowSize(peer.WindowSize),
		grpc.ChainUnaryInterceptor(n.tel.unaryInterceptor),
		// An idle client connection holds a file descriptor and goroutines
		// until its client closes it; MaxConnectionIdle sends it GOAWAY.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, MaxConnectionIdle: cfg.MaxConnectionIdle}),
		// Envoy and sidecar clients keep long-lived connections and may ping.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	}
	opts = append(opts, newVTCodec().serverOptions()...)

	opts = append(opts, n.tr.serverOptions(n.log)...)
	if cfg.TLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg.TLS)))
		if n.cl != nil {
			g := newPeerGuard(cfg.Cluster.PeerNames)
			opts = append(opts, grpc.ChainUnaryInterceptor(g.unary), grpc.ChainStreamInterceptor(g.stream))
		}
	}
	srv := grpc.NewServer(opts...)
	n.health = health.NewServer()
	healthpb.RegisterHealthServer(srv, n.health)
	reflection.Register(srv)
	rlsv3.RegisterRateLimitServiceServer(srv, envoy.NewServer(n.eng, cfg.Now))
	rlqsv3.RegisterRateLimitQuotaServiceServer(srv, n.quota)
	leveev1.RegisterRateLimitServiceServer(srv, native.NewServer(n.eng, cfg.Now))
	if n.cl != nil {
		// Only a cluster has peers: a standalone node must not let
		// anyone take from or hand over its buckets.
		n.peerSrv = peer.NewServer(n.store, cfg.Now).WithTracing(n.tr.tracerProvider()).WithQuota(n.quota)
		leveev1.RegisterPeerServiceServer(srv, n.peerSrv)
	}
	leveev1.RegisterShedServiceServer(srv, n.shedding.sidecar)
	n.srv = srv
}

// newMetricsServer binds the HTTP listener for /metrics, /healthz, the
// status page (/status, /status.json) and, if asked, pprof.
func (n *node) newMetricsServer(reg *prometheus.Registry) error {
	lis, err := net.Listen("tcp", n.cfg.MetricsAddr)
	if err != nil {
		return fmt.Errorf("metrics listener: %w", err)
	}
	n.httpLis = lis
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	n.status = newStatusView(n)
	if err := n.status.register(mux); err != nil {
		_ = lis.Close()
		return err
	}
	if n.cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	n.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	return nil
}

// serve starts the servers and the node's background work, joins the
// cluster, reports ready, and runs until ctx is done or a server fails;
// then it stops the node (see shutdown) and waits for every goroutine it
// started.
func (n *node) serve(ctx context.Context, ready func(Addrs)) error {
	cfg, log := n.cfg, n.log
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	wg.Go(func() {
		if err := n.srv.Serve(n.lis); err != nil {
			errc <- fmt.Errorf("grpc server: %w", err)
		}
	})
	if n.httpSrv != nil {
		wg.Go(func() {
			if err := n.httpSrv.Serve(n.httpLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("metrics server: %w", err)
			}
		})
	}
	if n.rt != nil {
		n.rt.run(ctx, &wg)
	}
	if n.files != nil {
		n.files.run(ctx, &wg)
	}
	wg.Go(func() { sweep(ctx, n.store, cfg.Now) })
	if n.cl != nil {
		// The router's fallback buckets refill like the others; nobody
		// else drops them.
		wg.Go(func() { sweep(ctx, n.cl.router.FallbackStore(), cfg.Now) })
	}
	if n.status != nil {
		wg.Go(func() { n.status.run(ctx) })
	}
	wg.Go(func() { _ = n.shedding.Run(ctx, 100*time.Millisecond) })
	wg.Go(func() { _ = n.quota.Run(ctx) })
	if n.cl != nil {
		n.cl.start()
	}

	n.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	addrs := Addrs{GRPC: dialTarget(n.lis.Addr())}
	if n.httpLis != nil {
		addrs.Metrics = n.httpLis.Addr().String()
	}
	if n.rt != nil && n.rt.admin != nil {
		addrs.Admin = n.rt.admin.Addr()
	}
	conf := n.conf.state()
	log.Info("levee serving", "grpc", addrs.GRPC, "metrics", addrs.Metrics, "admin", addrs.Admin,
		"config_source", conf.Source, "config_source_reason", n.why, "config_version", conf.Version, "config_hash", conf.Hash,
		"rules", rulesSource(cfg.RulesPath), "shed_resources", len(n.shedding.Resources()), "max_keys", cfg.MaxKeys)
	if ready != nil {
		ready(addrs)
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	n.shutdown(cancel)
	wg.Wait()
	return runErr
}

// shutdown stops a serving node within the grace period: it reports
// NOT_SERVING first so that load balancers send new traffic elsewhere;
// then leaves the ring, so peers stop forwarding here, and hands the
// buckets to their new owners while still answering; then stops the
// background work (cancel), ends the peers' Take streams and stops the
// servers.
func (n *node) shutdown(cancel context.CancelFunc) {
	grace := n.cfg.ShutdownGrace
	n.log.Info("levee stopping")
	n.health.Shutdown()
	// Envoys fall back to their expired-assignment behaviour and reconnect
	// elsewhere rather than keep a share this node no longer refreshes.
	n.quota.Drain()
	if n.cl != nil {
		n.cl.leave(grace)
	}
	cancel()
	if n.peerSrv != nil {
		// Peers whose rings still name this node (they have not seen it
		// leave: etcd is down) keep their Take streams open, and
		// GracefulStop would wait for them for the whole grace. The
		// buckets are handed off: they decide by their fallback now.
		n.peerSrv.Drain()
	}
	stopped := make(chan struct{})
	go func() { n.srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(grace):
		n.log.Warn("graceful stop timed out; closing connections", "grace", grace)
		n.srv.Stop()
		<-stopped
	}
	if n.httpSrv != nil {
		sctx, scancel := context.WithTimeout(context.Background(), grace)
		_ = n.httpSrv.Shutdown(sctx)
		scancel()
	}
}

// sweep gives the memory of refilled buckets back every few seconds.
func sweep(ctx context.Context, s *limiter.Store, now func() time.Time) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.Sweep(now().UnixNano())
		}
	}
}

func rulesSource(p string) string {
	if p == "" {
		return "built-in examples"
	}
	return p
}

// loadRules loads the rule files at p, or the built-in examples if p is empty.
func loadRules(p string) (*rules.Config, error) {
	if p != "" {
		return rules.Load(p)
	}
	names, err := fs.Glob(examples.Rules, "rules/*.yaml")
	if err != nil {
		return nil, err
	}
	var domains []*rules.Domain
	for _, name := range names {
		data, err := examples.Rules.ReadFile(name)
		if err != nil {
			return nil, err
		}
		d, err := rules.Parse(path.Join("builtin", name), data)
		if err != nil {
			return nil, err
		}
		domains = append(domains, d)
	}
	return rules.NewConfig(domains...)
}

// bootstrapBundle is the configuration the node starts with, as a Bundle:
// the --config rule files (or the built-in examples) and the shedding
// policy file (or the built-in example). In file mode it is what the node
// enforces, and hashes; in etcd mode it seeds an empty store.
func bootstrapBundle(cfg Config, policyData []byte) (configstore.Bundle, error) {
	b := configstore.Bundle{Shed: policyData}
	if b.Shed == nil {
		b.Shed = examples.ShedPolicy
	}
	var err error
	if b.Rules, err = ruleFiles(cfg.RulesPath); err != nil {
		return b, fmt.Errorf("reading rules: %w", err)
	}
	return b, nil
}

// ruleFiles reads the rule files at p as a Bundle's rules, named as
// configstore.ReadRules names them; the built-in examples when p is empty.
// It does not refuse files larger than a stored bundle may be, as ReadRules
// does: a node enforcing its own files stores nothing, and a node seeding
// etcd has the store refuse them.
func ruleFiles(p string) (map[string][]byte, error) {
	out := map[string][]byte{}
	if p != "" {
		files, err := rules.ReadFiles(p)
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			out[f.Name] = f.Data
		}
		return out, nil
	}
	names, err := fs.Glob(examples.Rules, "rules/*.yaml")
	if err != nil {
		return nil, err
	}
	for _, name := range names {
		data, err := examples.Rules.ReadFile(name)
		if err != nil {
			return nil, err
		}
		out[path.Base(name)] = data
	}
	return out, nil
}

// maxProcs is MaxProcs, or GOMAXPROCS now.
func (c Config) maxProcs() int {
	if c.MaxProcs > 0 {
		return c.MaxProcs
	}
	return runtime.GOMAXPROCS(0)
}
