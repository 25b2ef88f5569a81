// Package node assembles one levee node: the rule files and their watcher,
// the bucket store, the engine, the gRPC front ends (Envoy's rate limit
// service and levee.v1), health and reflection, and the HTTP listener for
// metrics and health checks. `levee serve` runs one; tests run several in
// one process.
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

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/levee-dev/levee/deploy/examples"
	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/cluster"
	"github.com/levee-dev/levee/limiter/configstore"
	"github.com/levee-dev/levee/limiter/engine"
	"github.com/levee-dev/levee/limiter/envoy"
	"github.com/levee-dev/levee/limiter/native"
	"github.com/levee-dev/levee/limiter/peer"
	"github.com/levee-dev/levee/limiter/rules"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
	"github.com/levee-dev/levee/shed"
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
	// RulesPoll is how often the rule files are checked for changes.
	RulesPoll time.Duration
	// ShedPolicyPath is the shedding policy file; empty uses the built-in
	// example policy.
	ShedPolicyPath string
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
}

// ClusterConfig is how a node finds its peers and shares buckets with them.
type ClusterConfig struct {
	// EtcdEndpoints are the etcd client URLs. Empty starts an embedded
	// single-node etcd (Embedded) for development.
	EtcdEndpoints []string
	// Embedded configures the embedded etcd when EtcdEndpoints is empty.
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
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxKeys <= 0 {
		cfg.MaxKeys = 1_000_000
	}
	if cfg.ShutdownGrace <= 0 {
		cfg.ShutdownGrace = 10 * time.Second
	}

	if err := checkPeerTLS(cfg); err != nil {
		return err
	}

	initial, err := loadRules(cfg.RulesPath)
	if err != nil {
		return fmt.Errorf("loading rules: %w", err)
	}
	var policyData []byte
	if cfg.ShedPolicyPath != "" {
		if policyData, err = configstore.ReadFile(cfg.ShedPolicyPath); err != nil {
			return fmt.Errorf("loading shedding policy: %w", err)
		}
	}
	initialPolicy, err := parseShedPolicy(cfg.ShedPolicyPath, policyData)
	if err != nil {
		return fmt.Errorf("loading shedding policy: %w", err)
	}

	reg := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo())
	if err != nil {
		return fmt.Errorf("metrics exporter: %w", err)
	}
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
	defer func() { _ = provider.Shutdown(context.Background()) }()
	meter := provider.Meter("github.com/levee-dev/levee")

	lis, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return fmt.Errorf("grpc listener: %w", err)
	}
	defer lis.Close()

	store := limiter.NewStore(cfg.MaxKeys)
	var buckets engine.Buckets = engine.LocalBuckets{Store: store}
	var cl *clusterNode
	if cfg.Cluster != nil {
		cl, err = startCluster(ctx, *cfg.Cluster, lis.Addr().String(), store, cfg.Now, log)
		if err != nil {
			return err
		}
		defer cl.close()
		buckets = cl.router
	}
	em, err := engine.NewMetrics(meter)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	eng := engine.New(buckets, initial, em)
	tel, err := newTelemetry(meter, store, cl)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	sm, err := shed.NewMetrics(meter)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	shedding := newShedSet(sm, cfg.Now, log)
	defer shedding.close()
	if err := shedding.apply(initialPolicy); err != nil {
		return fmt.Errorf("shedding policy: %w", err)
	}
	sidecarSrv := shedding.sidecar
	var rt *runtimeConfig
	if cl != nil {
		seed, err := bootstrapBundle(cfg, policyData)
		if err != nil {
			return err
		}
		if rt, err = startRuntime(ctx, cfg, cl, eng, shedding, tel, seed, log); err != nil {
			return err
		}
		if rt.admin != nil {
			defer rt.admin.Close() // frees the port if a later step fails; a no-op after Run
		}
		if err := configMetrics(meter, rt); err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
	}
	if cl != nil && cfg.TLS == nil && !isLoopback(lis.Addr()) {
		log.Warn("the peer API is served in plain text beyond loopback: anyone who reaches the gRPC address can take tokens and hand buckets over; give --tls-cert, --tls-key and --tls-client-ca", "grpc", lis.Addr().String())
	}
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
		grpc.ChainUnaryInterceptor(tel.unaryInterceptor),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		// Envoy and sidecar clients keep long-lived connections and may ping.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	}
	opts = append(opts, newVTCodec().serverOptions()...)
	if cfg.TLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg.TLS)))
		if cl != nil {
			g := newPeerGuard(cfg.Cluster.PeerNames)
			opts = append(opts, grpc.ChainUnaryInterceptor(g.unary), grpc.ChainStreamInterceptor(g.stream))
		}
	}
	srv := grpc.NewServer(opts...)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	reflection.Register(srv)
	rlsv3.RegisterRateLimitServiceServer(srv, envoy.NewServer(eng, cfg.Now))
	leveev1.RegisterRateLimitServiceServer(srv, native.NewServer(eng, cfg.Now))
	if cl != nil {
		// Only a cluster has peers: a standalone node must not let
		// anyone take from or hand over its buckets.
		leveev1.RegisterPeerServiceServer(srv, peer.NewServer(store, cfg.Now))
	}
	leveev1.RegisterShedServiceServer(srv, sidecarSrv)

	var httpSrv *http.Server
	var httpLis net.Listener
	if cfg.MetricsAddr != "" {
		httpLis, err = net.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			return fmt.Errorf("metrics listener: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		if cfg.Pprof {
			mux.HandleFunc("/debug/pprof/", pprof.Index)
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
			mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
			mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		}
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			fmt.Fprintln(w, "ok")
		})
		httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	wg.Go(func() {
		if err := srv.Serve(lis); err != nil {
			errc <- fmt.Errorf("grpc server: %w", err)
		}
	})
	if httpSrv != nil {
		wg.Go(func() {
			if err := httpSrv.Serve(httpLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("metrics server: %w", err)
			}
		})
	}
	if rt != nil {
		// etcd holds the configuration; the files only seeded it.
		rt.run(ctx, &wg)
	} else if cfg.RulesPath != "" {
		w := rules.NewWatcher(cfg.RulesPath, cfg.RulesPoll, log)
		w.OnError = func(error) { tel.reloads.Add(context.Background(), 1, tel.reloadFailed) }
		wg.Go(func() {
			_ = w.Run(ctx, func(c *rules.Config) {
				if c != eng.Rules() {
					eng.SetRules(c)
					tel.reloads.Add(context.Background(), 1, tel.reloadOK)
					log.Info("rules loaded", "path", cfg.RulesPath, "domains", len(c.Domains()))
				}
			})
		})
	}
	wg.Go(func() { sweep(ctx, store, cfg.Now) })
	wg.Go(func() { _ = sidecarSrv.Run(ctx, 100*time.Millisecond) })
	if cl != nil {
		cl.start()
	}

	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	addrs := Addrs{GRPC: lis.Addr().String()}
	if httpLis != nil {
		addrs.Metrics = httpLis.Addr().String()
	}
	if rt != nil && rt.admin != nil {
		addrs.Admin = rt.admin.Addr()
	}
	log.Info("levee serving", "grpc", addrs.GRPC, "metrics", addrs.Metrics, "admin", addrs.Admin, "rules", rulesSource(cfg.RulesPath), "shed_resources", len(shedding.resources()), "max_keys", cfg.MaxKeys)
	if ready != nil {
		ready(addrs)
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	log.Info("levee stopping")
	// Report NOT_SERVING first so that load balancers send new traffic
	// elsewhere; then leave the ring, so peers stop forwarding here, and
	// hand the buckets to their new owners while still answering.
	hs.Shutdown()
	if cl != nil {
		cl.leave(cfg.ShutdownGrace)
	}
	cancel()
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(cfg.ShutdownGrace):
		log.Warn("graceful stop timed out; closing connections", "grace", cfg.ShutdownGrace)
		srv.Stop()
		<-stopped
	}
	if httpSrv != nil {
		sctx, scancel := context.WithTimeout(context.Background(), cfg.ShutdownGrace)
		_ = httpSrv.Shutdown(sctx)
		scancel()
	}
	wg.Wait()
	return runErr
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

// bootstrapBundle is the configuration a clustered node seeds etcd with
// when etcd holds none: the --config rule files (or the built-in examples)
// and the shedding policy file (or the built-in example).
func bootstrapBundle(cfg Config, policyData []byte) (configstore.Bundle, error) {
	b := configstore.Bundle{Shed: policyData}
	if b.Shed == nil {
		b.Shed = examples.ShedPolicy
	}
	if cfg.RulesPath != "" {
		files, err := configstore.ReadRules(cfg.RulesPath)
		if err != nil {
			return b, fmt.Errorf("reading rules to seed etcd: %w", err)
		}
		b.Rules = files
		return b, nil
	}
	names, err := fs.Glob(examples.Rules, "rules/*.yaml")
	if err != nil {
		return b, err
	}
	b.Rules = map[string][]byte{}
	for _, name := range names {
		data, err := examples.Rules.ReadFile(name)
		if err != nil {
			return b, err
		}
		b.Rules[path.Base(name)] = data
	}
	return b, nil
}

// telemetry holds the node-level instruments.
type telemetry struct {
	latency      metric.Float64Histogram
	reloads      metric.Int64Counter
	reloadOK     metric.AddOption
	reloadFailed metric.AddOption
	mu           sync.RWMutex
	methods      map[methodCode]metric.RecordOption
}

type methodCode struct{ method, code string }

// maxProcs is MaxProcs, or GOMAXPROCS now.
func (c Config) maxProcs() int {
	if c.MaxProcs > 0 {
		return c.MaxProcs
	}
	return runtime.GOMAXPROCS(0)
}
