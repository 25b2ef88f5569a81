package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Defaults for EmbeddedConfig fields left zero.
const (
	DefaultEmbeddedName      = "levee"
	DefaultEmbeddedClientURL = "http://127.0.0.1:2379"
	DefaultEmbeddedPeerURL   = "http://127.0.0.1:2380"
)

// EmbeddedConfig configures a single-node etcd run inside the levee process.
type EmbeddedConfig struct {
	// Dir is the data directory. Required. Restarting on the same Dir
	// keeps the data, including leases (which etcd extends on restart).
	Dir string
	// Name of the etcd member. Default DefaultEmbeddedName.
	Name string
	// ClientURL to listen on and advertise, e.g. "http://127.0.0.1:2379".
	// Port 0 picks a free port; Endpoints and Config report the real one.
	// Default DefaultEmbeddedClientURL.
	ClientURL string
	// PeerURL for raft traffic; a single node uses it only to bind. Port 0
	// picks a free port. Default DefaultEmbeddedPeerURL.
	PeerURL string
	// TickMs and ElectionMs are the raft heartbeat and election timeout.
	// Zero keeps etcd's defaults (100 and 1000). Tests use 10 and 100,
	// which also lowers etcd's minimum lease TTL to one second.
	TickMs, ElectionMs uint
	// UnsafeNoFsync skips fsync: faster, and loses data on power failure.
	// For tests only.
	UnsafeNoFsync bool
	// Logger for etcd's own logs. Default: discard (etcd is chatty).
	Logger *zap.Logger
}

// Embedded is a running single-node etcd.
type Embedded struct {
	etcd      *embed.Etcd
	cfg       EmbeddedConfig // with the real addresses
	closeOnce sync.Once
}

// StartEmbedded starts a single-node etcd and waits until it serves clients
// or ctx is done.
func StartEmbedded(ctx context.Context, cfg EmbeddedConfig) (*Embedded, error) {
	if cfg.Dir == "" {
		return nil, errors.New("cluster: EmbeddedConfig.Dir is empty")
	}
	if cfg.Name == "" {
		cfg.Name = DefaultEmbeddedName
	}
	if cfg.ClientURL == "" {
		cfg.ClientURL = DefaultEmbeddedClientURL
	}
	if cfg.PeerURL == "" {
		cfg.PeerURL = DefaultEmbeddedPeerURL
	}
	curl, err := url.Parse(cfg.ClientURL)
	if err != nil {
		return nil, fmt.Errorf("cluster: embedded etcd client URL %q: %w", cfg.ClientURL, err)
	}
	purl, err := url.Parse(cfg.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("cluster: embedded etcd peer URL %q: %w", cfg.PeerURL, err)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = zap.NewNop()
	}

	ec := embed.NewConfig()
	ec.Name = cfg.Name
	ec.Dir = cfg.Dir
	ec.ListenClientUrls = []url.URL{*curl}
	ec.AdvertiseClientUrls = []url.URL{*curl}
	ec.ListenPeerUrls = []url.URL{*purl}
	ec.AdvertisePeerUrls = []url.URL{*purl}
	ec.InitialCluster = ec.InitialClusterFromName(cfg.Name)
	if cfg.TickMs != 0 {
		ec.TickMs = cfg.TickMs
	}
	if cfg.ElectionMs != 0 {
		ec.ElectionMs = cfg.ElectionMs
	}
	ec.UnsafeNoFsync = cfg.UnsafeNoFsync
	// Keep an hour of history so that watchers can resume after a short
	// outage, and no more, so that a long-running development node does
	// not grow without bound.
	ec.AutoCompactionMode = embed.CompactorModePeriodic
	ec.AutoCompactionRetention = "1h"
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(logger)

	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("cluster: starting embedded etcd in %q: %w", cfg.Dir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("cluster: embedded etcd in %q failed while starting: %w", cfg.Dir, err)
	case <-ctx.Done():
		e.Close()
		return nil, fmt.Errorf("cluster: waiting for embedded etcd in %q: %w", cfg.Dir, ctx.Err())
	}

	cfg.ClientURL = curl.Scheme + "://" + e.Clients[0].Addr().String()
	cfg.PeerURL = purl.Scheme + "://" + e.Peers[0].Addr().String()
	return &Embedded{etcd: e, cfg: cfg}, nil
}

// Endpoints returns the client URLs to give clientv3, with real ports.
func (e *Embedded) Endpoints() []string { return []string{e.cfg.ClientURL} }

// Config returns the configuration the server runs with, with the ports it
// actually bound. Passing it to StartEmbedded after Close restarts the same
// server on the same data and addresses.
func (e *Embedded) Config() EmbeddedConfig { return e.cfg }

// Err delivers a fatal error of the running server, if any.
func (e *Embedded) Err() <-chan error { return e.etcd.Err() }

// Close stops the server and waits for it to release its data directory
// and ports. It is safe to call more than once. etcd lets open client
// streams (watches, keepalives) finish for up to its request timeout, about
// five seconds, before it cuts them: close this process's etcd clients first
// for a quick shutdown.
func (e *Embedded) Close() {
	e.closeOnce.Do(func() {
		e.etcd.Close()
		<-e.etcd.Server.StopNotify()
	})
}
