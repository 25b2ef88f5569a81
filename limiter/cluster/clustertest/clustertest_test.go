package clustertest

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

// TestStartEtcdRestart checks that a test server serves clients, that a
// restart from its Config keeps data and addresses, and that Close releases
// the client port.
func TestStartEtcdRestart(t *testing.T) {
	e := StartEtcd(t)
	cfg := e.Config()
	if cfg.ClientURL == "http://127.0.0.1:0" || len(e.Endpoints()) != 1 || e.Endpoints()[0] != cfg.ClientURL {
		t.Fatalf("Endpoints() = %v, Config().ClientURL = %q: want the bound address", e.Endpoints(), cfg.ClientURL)
	}
	c := Client(t, e.Endpoints())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := c.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("Put: %v", err)
	}

	e.Close()
	e.Close() // idempotent
	e2 := StartEtcdWith(t, cfg)
	if e2.Config() != cfg {
		t.Fatalf("restarted server config %+v, want %+v", e2.Config(), cfg)
	}
	resp, err := c.Get(ctx, "k") // the old client reconnects to the same address
	if err != nil {
		t.Fatalf("Get after restart: %v", err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("Get after restart = %v, want k=v", resp.Kvs)
	}
	e2.Close()
	addr := strings.TrimPrefix(cfg.ClientURL, "http://")
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		conn.Close()
		t.Fatalf("%s still accepts connections after Close", addr)
	}
}
