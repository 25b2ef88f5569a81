// Package clustertest starts real etcd servers and clients for tests of
// packages that use levee's cluster membership.
//
// Servers are embedded single-node etcds on free loopback ports, with short
// raft timings (ready in about 0.1 s, leases down to one second), no fsync,
// and no logs. Everything started here is stopped by t.Cleanup.
package clustertest

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/levee-dev/levee/limiter/cluster"
)

// startTimeout bounds how long a test waits for etcd to start; a loaded
// two-core machine can take seconds.
const startTimeout = 30 * time.Second

// Config returns an embedded etcd configuration for tests: a fresh
// directory from t.TempDir, free ports, fast raft timings and no fsync.
func Config(t testing.TB) cluster.EmbeddedConfig {
	t.Helper()
	return cluster.EmbeddedConfig{
		Dir:           t.TempDir(),
		ClientURL:     "http://127.0.0.1:0",
		PeerURL:       "http://127.0.0.1:0",
		TickMs:        10,
		ElectionMs:    100,
		UnsafeNoFsync: true,
	}
}

// StartEtcd starts an embedded etcd with Config(t) and closes it when the
// test ends. Its client address is e.Endpoints().
func StartEtcd(t testing.TB) *cluster.Embedded {
	t.Helper()
	return StartEtcdWith(t, Config(t))
}

// StartEtcdWith starts an embedded etcd with cfg and closes it when the test
// ends. To simulate an etcd outage, Close a server and later restart it with
// StartEtcdWith(t, e.Config()): same data, same addresses.
func StartEtcdWith(t testing.TB, cfg cluster.EmbeddedConfig) *cluster.Embedded {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	e, err := cluster.StartEmbedded(ctx, cfg)
	if err != nil {
		t.Fatalf("clustertest: %v", err)
	}
	t.Cleanup(e.Close)
	return e
}

// Client returns an etcd client for endpoints, configured as levee
// configures its own (cluster.ClientConfig), closed when the test ends.
func Client(t testing.TB, endpoints []string) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(cluster.ClientConfig(endpoints))
	if err != nil {
		t.Fatalf("clustertest: etcd client for %v: %v", endpoints, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}
