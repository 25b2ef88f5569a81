package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/levee-dev/levee/cmd/levee/internal/admin"
	"github.com/levee-dev/levee/cmd/levee/internal/configstore"
	"github.com/levee-dev/levee/cmd/levee/internal/memlimit"
	"github.com/levee-dev/levee/cmd/levee/internal/node"
	"github.com/levee-dev/levee/cmd/levee/internal/procs"
	"github.com/levee-dev/levee/cmd/levee/internal/tlsfiles"
)

// defaultGCPercent is the garbage collector's target (GOGC) of `levee
// serve` when GOGC is not set.
const defaultGCPercent = 400

func serveCommand() *cobra.Command {
	var (
		cfg        node.Config
		cl         node.ClusterConfig
		standalone bool
		dataDir    string
		etcdTLS    tlsfiles.Files
		grpcTLS    tlsfiles.Files
		peerCA     string
		logLevel   string
		logFormat  string
		procsFlag  string
		memLimit   string
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run a levee node",
		Long: `Run a levee node: Envoy's rate limit service and levee.v1 on --grpc-addr,
Prometheus metrics, /healthz and the status page (/status, /status.json)
on --metrics-addr. OpenTelemetry tracing is off unless OTEL_TRACES_EXPORTER
is "otlp" (see the README).

With no --config, levee enforces its built-in example rules
(deploy/examples/rules). Every flag can also be set in the environment as
LEVEE_<FLAG>, e.g. LEVEE_GRPC_ADDR.

Where the rules and the shedding policy come from (--config-source):
  file  each node enforces its own --config and --shed-policy files and
        applies a change within a couple of seconds; levee ctl apply and
        rollback are refused. The default with --config, and with
        --standalone.
  etcd  every node enforces the version stored in etcd, changed with
        levee ctl (compare-and-swap, history, rollback); --config only
        seeds an empty store. The default without --config.

Without --etcd-endpoints a node starts an embedded single-node etcd for
development; its data lives in a fresh temporary directory, removed when
the node stops, unless --data-dir names one to keep across runs.`,
		Args: cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			return bindEnv(cmd.Flags())
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(logLevel, logFormat)
			if err != nil {
				return err
			}
			cfg.Logger = log
			if os.Getenv("GOGC") == "" {
				// A node's live heap is small (buckets are 67 bytes a key),
				// so at Go's default the collector runs many times a second
				// under load; at 400 it runs a quarter as often for a few
				// MB more (measured: about a quarter less CPU per forwarded
				// decision). GOGC and GOMEMLIMIT still apply when set.
				debug.SetGCPercent(defaultGCPercent)
			}
			if err := memlimit.Apply(memLimit, log); err != nil {
				return err
			}
			if cfg.TLS, err = grpcTLS.Server(); err != nil {
				return fmt.Errorf("gRPC TLS (--tls-cert, --tls-key, --tls-client-ca): %w", err)
			}
			if standalone && cmd.Flags().Changed("admin-addr") && cfg.Admin.Addr != "" {
				// The admin API manages the configuration in etcd, which
				// a standalone node has none of.
				log.Warn("no admin API: a standalone node has no etcd, which the admin API needs; --admin-addr is ignored", "admin_addr", cfg.Admin.Addr)
			}
			if peerCA != "" && (standalone || cfg.TLS == nil) {
				return errors.New("--peer-ca verifies peers' TLS certificates: it needs a cluster node serving TLS (--tls-cert, --tls-key)")
			}
			if standalone && len(cl.PeerNames) > 0 {
				// Refused as --peer-ca is: an allow-list that nothing
				// enforces should not look as if it did.
				return fmt.Errorf("--peer-names %s: a standalone node serves no peer API for it to restrict; drop it, or run in a cluster", strings.Join(cl.PeerNames, ","))
			}
			if !standalone {
				if cfg.TLS != nil {
					// A node dials its peers with its own certificate: one
					// certificate per node, for serving and as a client.
					peerFiles := tlsfiles.Files{CA: cmp.Or(peerCA, grpcTLS.CA), Cert: grpcTLS.Cert, Key: grpcTLS.Key}
					if cl.PeerTLS, err = peerFiles.Client(); err != nil {
						return fmt.Errorf("peer TLS (--peer-ca, --tls-cert, --tls-key): %w", err)
					}
				}
				if cl.Embedded.Dir == "" {
					cl.Embedded.Dir = dataDir
				}
				if cl.EtcdTLS, err = etcdTLS.Client(); err != nil {
					return fmt.Errorf("etcd TLS (--etcd-ca-file, --etcd-cert-file, --etcd-key-file): %w", err)
				}
				if cl.EtcdPassword == "" {
					cl.EtcdPassword = os.Getenv("LEVEE_ETCD_PASSWORD")
				}
				cfg.Cluster = &cl
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			most := runtime.GOMAXPROCS(0)
			cfg.MaxProcs = most
			tuned, err := setProcs(procsFlag)
			if err != nil {
				return err
			}
			if tuned && most > 1 {
				log.Info("GOMAXPROCS follows the load", "from", 1, "up_to", most)
				t := procs.NewTuner(most, procs.DefaultCalm)
				// The tuner outlives the signal: a node draining its calls
				// and handing its buckets off may need its Ps. It stops
				// when the node has stopped.
				tctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
				done := make(chan struct{})
				go func() {
					defer close(done)
					if err := procs.Run(tctx, t, 250*time.Millisecond, log); err != nil && tctx.Err() == nil {
						log.Warn("GOMAXPROCS left at its default", "err", err)
					}
				}()
				defer func() { cancel(); <-done }()
			}
			return node.Run(ctx, cfg, nil)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.GRPCAddr, "grpc-addr", "127.0.0.1:8081", "gRPC listen address (Envoy rate limit service, levee.v1, health, reflection): host:port, or unix:///path/levee.sock for a Unix socket (mode 0660; a clustered node then needs --advertise-addr)")
	f.StringVar(&grpcTLS.Cert, "tls-cert", "", "certificate of the gRPC listener (enables TLS); in a cluster also this node's client certificate towards its peers")
	f.StringVar(&grpcTLS.Key, "tls-key", "", "key of --tls-cert")
	f.StringVar(&grpcTLS.CA, "tls-client-ca", "", "CA that signs the cluster's node certificates: the peer API answers only clients presenting one (required in a cluster with TLS)")
	f.StringVar(&peerCA, "peer-ca", "", "CA that verifies peers' --tls-cert (default: --tls-client-ca)")
	f.StringSliceVar(&cl.PeerNames, "peer-names", nil, "certificate names (common or DNS name) of the nodes the peer API answers, this node's among them (empty: any certificate --tls-client-ca signs)")
	f.StringVar(&cfg.MetricsAddr, "metrics-addr", "127.0.0.1:9090", "HTTP listen address for /metrics, /healthz and the status page /status (empty: off)")
	f.StringVar(&cfg.RulesPath, "config", "", "rule file or directory of envoyproxy/ratelimit YAML files (empty: built-in examples); with --config-source file they are watched and enforced, with etcd they seed an empty store")
	f.StringVar(&cfg.ConfigSource, "config-source", "auto", "where rules and shedding policy come from: file (this node's --config and --shed-policy, watched), etcd (the version stored in etcd, changed with levee ctl), or auto: file with --config or --standalone, etcd otherwise")
	f.StringVar(&cfg.ShedPolicyPath, "shed-policy", "", "shedding policy file: the resources the ShedService protects (empty: built-in example)")
	f.DurationVar(&cfg.RulesPoll, "config-poll", time.Second, "how often the rule files (and, with --config-source file, the --shed-policy file) are checked for changes")
	f.IntVar(&cfg.MaxKeys, "max-keys", 1_000_000, "most buckets held in memory; idle ones are evicted first")
	f.DurationVar(&cfg.ShutdownGrace, "shutdown-grace", 10*time.Second, "on SIGTERM, how long in-flight calls may take before connections are closed")
	f.IntVar(&cfg.MaxConnections, "max-connections", 10_000, "most gRPC connections open at once; one past it is closed when accepted (0: unbounded)")
	f.DurationVar(&cfg.MaxConnectionIdle, "max-connection-idle", 5*time.Minute, "close a gRPC connection with no call in flight for this long (0: never)")
	f.StringVar(&cfg.Quota.Unmatched, "rlqs-unmatched", "allow", "Envoy rate limit quota service: the assignment for a bucket id no rule matches, allow (ALLOW_ALL) or deny (DENY_ALL)")
	f.DurationVar(&cfg.Quota.TTL, "rlqs-ttl", 15*time.Second, "Envoy rate limit quota service: time to live of the assignments, whole seconds (refreshed every third of it)")
	f.BoolVar(&standalone, "standalone", false, "run alone: no etcd, no peers")
	f.StringSliceVar(&cl.EtcdEndpoints, "etcd-endpoints", nil, "etcd client URLs, comma-separated (empty: start an embedded single-node etcd for development)")
	f.StringVar(&cl.Prefix, "etcd-prefix", configstore.DefaultPrefix, "etcd key prefix of the cluster")
	f.DurationVar(&cl.MemberTTL, "member-ttl", 3*time.Second, "membership lease TTL: a node that stops renewing is dropped after this")
	f.StringVar(&cl.NodeID, "node-id", "", "this node's ID in the ring (default: host name and gRPC port)")
	f.StringVar(&cl.AdvertiseAddr, "advertise-addr", "", "gRPC address peers dial (default: --grpc-addr)")
	f.StringVar(&dataDir, "data-dir", "", "data directory of the embedded etcd, kept across runs (empty: a fresh temporary directory, removed when the node stops)")
	f.StringVar(&cl.Embedded.ClientURL, "embedded-etcd-client-url", "http://127.0.0.1:2379", "client URL of the embedded etcd; other nodes join with --etcd-endpoints set to it")
	f.StringVar(&cl.Embedded.PeerURL, "embedded-etcd-peer-url", "http://127.0.0.1:2380", "raft peer URL of the embedded etcd")
	f.StringVar(&etcdTLS.CA, "etcd-ca-file", "", "CA bundle to verify etcd's certificate")
	f.StringVar(&etcdTLS.Cert, "etcd-cert-file", "", "client certificate for etcd (mTLS)")
	f.StringVar(&etcdTLS.Key, "etcd-key-file", "", "client key for etcd (mTLS)")
	f.StringVar(&cl.EtcdUsername, "etcd-username", "", "etcd user (password in $LEVEE_ETCD_PASSWORD)")
	f.DurationVar(&cl.BatchWindow, "batch-window", 500*time.Microsecond, "how long forwarded checks wait to share a peer RPC")
	f.IntVar(&cl.BatchMax, "batch-max", 512, "most forwarded checks in one peer RPC")
	f.DurationVar(&cl.WarmLease, "warm-lease", 10*time.Second, "how long a warm lease lasts: a forwarded check of a key whose bucket is over half full also takes a few tokens for this node to admit the key's next checks locally for this long (0: off)")
	f.DurationVar(&cl.PeerTimeout, "peer-timeout", 100*time.Millisecond, "how long a forwarded batch may take before its checks fall back to their failure mode")
	f.StringVar(&cfg.Admin.Addr, "admin-addr", admin.DefaultAddr, "admin API listen address, for levee ctl (needs etcd; empty: off)")
	f.StringVar(&cfg.Admin.TokenFile, "admin-token-file", "", "file of name:token lines; callers of the admin API present a token as a bearer")
	f.StringVar(&cfg.Admin.TLSCertFile, "admin-tls-cert", "", "admin API server certificate")
	f.StringVar(&cfg.Admin.TLSKeyFile, "admin-tls-key", "", "admin API server key")
	f.StringVar(&cfg.Admin.ClientCAFile, "admin-client-ca", "", "CA that signs admin clients' certificates (mTLS)")
	f.StringSliceVar(&cfg.Admin.AllowedClients, "admin-allowed-clients", nil, "client certificate names allowed to call the admin API")
	f.StringVar(&procsFlag, "procs", "auto", "GOMAXPROCS: auto follows the CPU the node uses, from 1 up to Go's default (a positive GOMAXPROCS in the environment wins); default leaves Go's default (which tracks the container's CPU limit); or a number")
	f.StringVar(&memLimit, "memory-limit", "auto", memlimit.FlagUsage)
	f.BoolVar(&cfg.Pprof, "pprof", false, "serve Go's profiler under /debug/pprof/ on --metrics-addr")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	f.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	envUsage(f)
	return cmd
}

// setProcs applies --procs: a number sets GOMAXPROCS, default leaves Go's
// own, and auto reports that a tuner should follow the load, unless a
// positive GOMAXPROCS in the environment (which Go has applied) says
// otherwise.
func setProcs(v string) (tuned bool, err error) {
	switch v {
	case "auto":
		n, err := strconv.Atoi(os.Getenv("GOMAXPROCS"))
		return err != nil || n < 1, nil
	case "default":
		return false, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return false, fmt.Errorf("--procs (LEVEE_PROCS) %q: want auto, default or a number, at least 1", v)
	}
	runtime.GOMAXPROCS(n)
	return false, nil
}

func newLogger(level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format: want text or json, got %q", format)
}
