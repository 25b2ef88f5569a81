package node

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/levee-dev/levee/cmd/levee/internal/admin"
	"github.com/levee-dev/levee/cmd/levee/internal/configstore"
	"github.com/levee-dev/levee/limiter/cluster/clustertest"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
	"github.com/levee-dev/levee/shed/shedtest"
)

// freeURL returns an http URL on a loopback port nothing listens on (one
// that was free a moment ago).
func freeURL(t *testing.T) string {
	t.Helper()
	// A port the kernel hands out for ":0" can be taken by any test
	// process between this check and etcd's bind: pick one below the
	// ephemeral range, which only explicit picks like this one use.
	lo := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil && v > 20000 {
				lo = v
			}
		}
	}
	for range 100 {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(10000+rand.IntN(lo-10000)))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		_ = l.Close()
		return "http://" + addr
	}
	t.Fatal("no free port below the ephemeral range")
	return ""
}

// TestClusterStartsWithoutEtcd: a clustered node whose etcd does not answer
// at start serves its rule files from the start, names the endpoint it
// retries, and once etcd starts on that endpoint registers, seeds etcd
// from its files and follows the configuration stored there.
func TestClusterStartsWithoutEtcd(t *testing.T) {
	ecfg := clustertest.Config(t)
	ecfg.ClientURL, ecfg.PeerURL = freeURL(t), freeURL(t)
	endpoints := []string{ecfg.ClientURL}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "prop.yaml"), propRules(1000), 0o644); err != nil {
		t.Fatal(err)
	}
	var logs shedtest.Log
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan Addrs, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{
			GRPCAddr:  "127.0.0.1:0",
			RulesPath: dir,
			RulesPoll: time.Hour,
			// etcd mode: the node also seeds etcd from its files once it
			// answers (a file-mode node only registers).
			ConfigSource:  admin.SourceEtcd,
			ShutdownGrace: clusterWait,
			Logger:        slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
			Cluster: &ClusterConfig{
				EtcdEndpoints: endpoints,
				MemberTTL:     memberTTL,
				NodeID:        "late",
			},
		}, func(a Addrs) { ready <- a })
	}()
	var addrs Addrs
	select {
	case addrs = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("Run returned before it was ready: %v", err)
	case <-time.After(clusterWait):
		cancel()
		t.Fatalf("a node whose etcd does not answer did not start serving; log:\n%s", logs.String())
	}
	// etcd is started below and must outlive the node, which deregisters
	// on stop: stop the node in a cleanup registered after etcd's.
	conn, err := grpc.NewClient(addrs.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	m := &member{id: "late", addrs: addrs, cancel: cancel, done: done, conn: conn, native: leveev1.NewRateLimitServiceClient(conn)}

	// Serving its files before etcd answers, and saying which etcd it waits for.
	if got := enforcedLimit(t, m); got != 1000 {
		t.Fatalf("before etcd answers: limit %d, want the rule file's 1000", got)
	}
	if l := logs.String(); !strings.Contains(l, "etcd does not answer") || !strings.Contains(l, endpoints[0]) {
		t.Fatalf("no warning naming the etcd endpoint %s; log:\n%s", endpoints[0], l)
	}

	e := clustertest.StartEtcdWith(t, ecfg)
	t.Cleanup(func() { m.stop(t) })
	ec := clustertest.Client(t, e.Endpoints())
	shedtest.Eventually(t, clusterWait, "the node registers", func() error {
		if got := etcdMembers(t, ec); !slices.Equal(got, []string{"late"}) {
			return fmt.Errorf("etcd members %v", got)
		}
		return nil
	})
	store, err := configstore.New(configstore.Options{Client: ec, Prefix: configstore.DefaultPrefix, ValidateShed: validateShedPolicy})
	if err != nil {
		t.Fatal(err)
	}
	var cur configstore.Record
	shedtest.Eventually(t, clusterWait, "etcd seeded from the node's files", func() error {
		if cur, err = store.Get(ctx); err != nil {
			return err
		}
		if !bytes.Equal(cur.Bundle.Rules["prop.yaml"], propRules(1000)) {
			return fmt.Errorf("version %d holds %q", cur.Version, cur.Bundle.Rules)
		}
		return nil
	})
	// The node follows etcd now: a new version reaches it.
	b := cur.Bundle
	b.Rules = map[string][]byte{"prop.yaml": propRules(1001)}
	if _, err := store.Apply(ctx, b, cur.Version, "test", "after a late start"); err != nil {
		t.Fatal(err)
	}
	shedtest.Eventually(t, clusterWait, "the node applies the version stored in etcd", func() error {
		if got := enforcedLimit(t, m); got != 1001 {
			return fmt.Errorf("limit %d, want 1001", got)
		}
		return nil
	})
}
