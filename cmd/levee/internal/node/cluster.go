package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/credentials"

	"github.com/levee-dev/levee/cmd/levee/internal/configstore"
	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/cluster"
	"github.com/levee-dev/levee/limiter/peer"
	"github.com/levee-dev/levee/limiter/ring"
)

// clusterNode is the cluster half of a node: etcd (embedded or remote), the
// membership that keeps the ring, and the router that forwards to owners.
type clusterNode struct {
	log        *slog.Logger
	embedded   *cluster.Embedded
	client     *clientv3.Client
	membership *cluster.Membership
	router     *peer.Router
	self       ring.Member
	keys       configstore.Layout
	tempDir    string   // the embedded etcd's data, removed at close
	endpoints  []string // etcd's client URLs, named in logs while etcd does not answer

	stopMembership context.CancelFunc
	membershipDone chan error
}

func startCluster(ctx context.Context, cfg ClusterConfig, grpcAddr string, store *limiter.Store, now func() time.Time, log *slog.Logger, tr *tracing) (*clusterNode, error) {
	cn := &clusterNode{log: log, keys: configstore.NewLayout(cfg.Prefix)}
	ok := false
	defer func() {
		if !ok {
			cn.close()
		}
	}()
	endpoints := cfg.EtcdEndpoints
	if len(endpoints) == 0 {
		ec := cfg.Embedded
		if ec.Dir == "" {
			// A fresh directory per run: a development node must not
			// serve what an earlier run with other flags stored.
			dir, err := os.MkdirTemp("", "levee-etcd-")
			if err != nil {
				return nil, fmt.Errorf("embedded etcd data directory: %w", err)
			}
			ec.Dir, cn.tempDir = dir, dir
		}
		e, err := cluster.StartEmbedded(ctx, ec)
		if err != nil {
			return nil, fmt.Errorf("%w (is another levee or etcd using the port? join it with --etcd-endpoints, or run with --standalone)", err)
		}
		cn.embedded = e
		endpoints = e.Endpoints()
		log.Info("embedded etcd started (development mode)", "endpoints", endpoints, "data_dir", ec.Dir, "data_kept", cn.tempDir == "")
	}
	cn.endpoints = endpoints
	ecfg := cluster.ClientConfig(endpoints)
	ecfg.TLS = cfg.EtcdTLS
	ecfg.Username, ecfg.Password = cfg.EtcdUsername, cfg.EtcdPassword
	client, err := clientv3.New(ecfg)
	if err != nil {
		return nil, fmt.Errorf("etcd client for %v: %w", endpoints, err)
	}
	cn.client = client

	cn.self = ring.Member{ID: cfg.NodeID, Addr: cfg.AdvertiseAddr}
	if cn.self.Addr == "" {
		cn.self.Addr = grpcAddr
	}
	if cn.self.ID == "" {
		cn.self.ID = defaultNodeID(cn.self.Addr)
	}
	if host, _, err := net.SplitHostPort(cn.self.Addr); err == nil {
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			return nil, fmt.Errorf("advertise address %s is not reachable by peers: set --advertise-addr", cn.self.Addr)
		}
	}
	var creds credentials.TransportCredentials
	if cfg.PeerTLS != nil {
		creds = credentials.NewTLS(cfg.PeerTLS)
	}
	cn.router = peer.NewRouter(peer.Config{
		Self:        cn.self,
		Creds:       creds,
		Store:       store,
		BatchWindow: cfg.BatchWindow,
		BatchMax:    cfg.BatchMax,
		Timeout:     cfg.PeerTimeout,
		WarmLease:   cfg.WarmLease,
		Now:         now,
		Logger:      log,
		// Off, both are nil: the router adds no spans and no handler.
		TracerProvider: tr.tracerProvider(),
		DialOptions:    tr.dialOptions(),
	})
	cn.membership, err = cluster.New(cluster.Config{
		Client:    client,
		KeyPrefix: cn.keys.Members(),
		Self:      cn.self,
		TTL:       cfg.MemberTTL,
		Logger:    log,
		OnChange: func(r *ring.Ring) {
			cn.router.SetRing(r)
			log.Info("ring changed", "members", r.Len())
		},
	})
	if err != nil {
		return nil, fmt.Errorf("membership: %w", err)
	}
	// Start the router on the membership's initial ring (this node alone).
	// Membership reports only changes from it, so without this a node that
	// runs alone would keep a nil ring: no members gauge, and no hand-off
	// of its buckets when the first peer joins.
	cn.router.SetRing(cn.membership.Ring())
	ok = true
	return cn, nil
}

// etcdStartTimeout bounds the read that tells, at start, whether etcd
// answers: a node whose etcd is down must start serving its bootstrap
// rules soon rather than wait out a long timeout in silence.
const etcdStartTimeout = 2 * time.Second

// answers reports whether etcd answers a read now, within
// etcdStartTimeout. If it does not, it logs the endpoints the node will
// keep retrying.
func (cn *clusterNode) answers(ctx context.Context) bool {
	err := cluster.Await(ctx, cn.client, cn.keys.Prefix(), etcdStartTimeout, func(err error, _ time.Duration) {
		cn.log.Warn("etcd does not answer; serving the bootstrap configuration and retrying in the background", "etcd_endpoints", cn.endpoints, "err", err)
	}, 1)
	return err == nil
}

// awaitEtcd returns nil once etcd answers, logging the endpoints it
// retries, or ctx's error when ctx is done first.
func (cn *clusterNode) awaitEtcd(ctx context.Context) error {
	err := cluster.Await(ctx, cn.client, cn.keys.Prefix(), etcdStartTimeout, func(err error, retryIn time.Duration) {
		cn.log.Debug("still waiting for etcd", "etcd_endpoints", cn.endpoints, "err", err, "retry_in", retryIn)
	}, 0)
	if err == nil {
		cn.log.Info("etcd answers; catching up", "etcd_endpoints", cn.endpoints)
	}
	return err
}

// defaultNodeID names a node after its host and gRPC port, which is unique
// for several nodes on one machine and stable across restarts.
func defaultNodeID(addr string) string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "levee"
	}
	if _, port, err := net.SplitHostPort(addr); err == nil {
		return host + "-" + port
	}
	return host
}

// start joins the cluster; call it once the gRPC server serves peers.
func (cn *clusterNode) start() {
	ctx, cancel := context.WithCancel(context.Background())
	cn.stopMembership = cancel
	cn.membershipDone = make(chan error, 1)
	go func() { cn.membershipDone <- cn.membership.Run(ctx) }()
}

// leave deregisters the node and hands its buckets to their new owners,
// within grace.
func (cn *clusterNode) leave(grace time.Duration) {
	if cn.stopMembership == nil {
		return
	}
	cn.stopMembership()
	select {
	case err := <-cn.membershipDone:
		if err != nil {
			cn.log.Warn("leaving the cluster", "err", err)
		}
		cn.stopMembership = nil
	case <-time.After(grace):
		// close still waits for the membership, so that it cannot change
		// the ring of a closed router.
		cn.log.Warn("leaving the cluster timed out", "grace", grace)
	}
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	before := cn.router.Stats().HandedOff.Load()
	if err := cn.router.Leave(ctx); err != nil {
		cn.log.Warn("bucket hand-off on leave incomplete", "err", err)
	}
	cn.log.Info("left the cluster", "buckets_handed_off", cn.router.Stats().HandedOff.Load()-before)
}

func (cn *clusterNode) close() {
	if cn.stopMembership != nil {
		cn.stopMembership()
		<-cn.membershipDone
	}
	if cn.router != nil {
		cn.router.Close()
	}
	if cn.client != nil {
		_ = cn.client.Close()
	}
	if cn.embedded != nil {
		cn.embedded.Close()
	}
	if cn.tempDir != "" {
		if err := os.RemoveAll(cn.tempDir); err != nil {
			cn.log.Warn("removing the embedded etcd's data", "dir", cn.tempDir, "err", err)
		}
	}
}

// seedWhenEtcdAnswers catches up an etcd-mode node that started while etcd
// did not answer: once it does, the bootstrap files seed it if it holds no
// configuration yet (Seed's own rule). Membership and the configuration
// watches retry on their own; the watch then applies whatever version etcd
// holds, so nothing is applied here.
func (rt *runtimeConfig) seedWhenEtcdAnswers(ctx context.Context, cfg Config) {
	for rt.cl.awaitEtcd(ctx) == nil {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		res, seeded, err := rt.store.Seed(sctx, rt.boot, rt.cl.self.ID, "seeded from "+seedSource(cfg))
		cancel()
		var malformed *configstore.MalformedError
		switch {
		case err == nil && seeded:
			rt.log.Info("configuration seeded in etcd", "version", res.Meta.Version, "from", seedSource(cfg))
			return
		case err == nil || errors.As(err, &malformed):
			return // not empty: the watch loads what it holds
		}
		rt.log.Warn("could not seed the configuration in etcd; serving the bootstrap files", "err", err)
		select { // etcd answers reads but refused the seed: retry, slowly
		case <-ctx.Done():
			return
		case <-time.After(cluster.DefaultRetryMax):
		}
	}
}
