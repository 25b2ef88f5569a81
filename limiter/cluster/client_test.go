package cluster_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/levee-dev/levee/limiter/cluster"
	"github.com/levee-dev/levee/limiter/cluster/clustertest"
)

// TestAwait: against an endpoint nothing listens on, Await gives up after
// its attempts with one report per failure; it returns nil once an etcd
// started on that endpoint answers.
func TestAwait(t *testing.T) {
	port := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return "http://" + l.Addr().String()
	}
	cfg := clustertest.Config(t)
	cfg.ClientURL, cfg.PeerURL = port(), port()
	c := clustertest.Client(t, []string{cfg.ClientURL})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	fails := 0
	if err := cluster.Await(ctx, c, "/levee/", 200*time.Millisecond, func(error, time.Duration) { fails++ }, 2); err == nil || fails != 2 {
		t.Fatalf("etcd down, 2 attempts: err %v after %d failures; want an error after 2", err, fails)
	}

	done := make(chan error, 1)
	go func() { done <- cluster.Await(ctx, c, "/levee/", 200*time.Millisecond, nil, 0) }()
	clustertest.StartEtcdWith(t, cfg)
	if err := <-done; err != nil {
		t.Fatalf("etcd up: %v", err)
	}

	cancel()
	if err := cluster.Await(ctx, c, "/levee/", time.Second, nil, 0); err == nil {
		t.Fatal("Await with a cancelled context returned nil")
	}
}
