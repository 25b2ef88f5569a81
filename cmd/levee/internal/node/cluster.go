package node

import (
	"context"
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
	tempDir    string // the embedded etcd's data, removed at close

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
