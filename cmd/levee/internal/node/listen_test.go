package node

import (
	"context"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
)

func TestUnixPath(t *testing.T) {
	for addr, want := range map[string]string{
		"unix:///run/levee/levee.sock": "/run/levee/levee.sock",
		"unix:levee.sock":              "levee.sock",
		"unix:/abs.sock":               "/abs.sock",
	} {
		if got, ok := unixPath(addr); !ok || got != want {
			t.Errorf("unixPath(%q) = %q, %v; want %q", addr, got, ok, want)
		}
	}
	for _, addr := range []string{"127.0.0.1:8081", ":8081", "[::1]:1", "unixhost:80"} {
		if _, ok := unixPath(addr); ok {
			t.Errorf("unixPath(%q) says it is a socket", addr)
		}
	}
	if got := dialTarget(&net.UnixAddr{Name: "/run/x.sock", Net: "unix"}); got != "unix:///run/x.sock" {
		t.Errorf("dialTarget = %q", got)
	}
	if got := dialTarget(&net.UnixAddr{Name: "x.sock", Net: "unix"}); got != "unix:x.sock" {
		t.Errorf("dialTarget = %q", got)
	}
}

// TestListenUnix: the socket gets its mode, a stale socket is replaced,
// a live one, a regular file and an empty path are refused, and closing
// the listener removes the socket.
func TestListenUnix(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "levee.sock")
	lis, err := listen("unix://" + path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode()&fs.ModeSocket == 0 || fi.Mode().Perm() != SocketMode {
		t.Fatalf("socket file: %v, %v", fi, err)
	}
	// A second node on the same path is refused while the first answers.
	if _, err := listen("unix://" + path); err == nil || !strings.Contains(err.Error(), "another process is serving") {
		t.Fatalf("second listener: %v", err)
	}
	lis.Close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("socket left after close: %v", err)
	}

	// A stale socket (its listener gone without removing it) is replaced.
	old, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	old.(*net.UnixListener).SetUnlinkOnClose(false)
	old.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("the stale socket is not there: %v", err)
	}
	lis, err = listen("unix:" + path)
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	lis.Close()

	// Anything else at the path is left alone.
	if err := os.WriteFile(path, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := listen("unix://" + path); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("over a regular file: %v", err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "keep" {
		t.Fatalf("the file was touched: %q, %v", b, err)
	}
	if _, err := listen("unix://"); err == nil {
		t.Fatal("an empty socket path was accepted")
	}
}

func TestCheckGRPCAddr(t *testing.T) {
	sock := "unix:///run/levee.sock"
	for _, tc := range []struct {
		cfg  Config
		want string // "" for no error
	}{
		{Config{GRPCAddr: sock}, ""},
		{Config{GRPCAddr: "127.0.0.1:8081", Cluster: &ClusterConfig{}}, ""},
		{Config{GRPCAddr: sock, Cluster: &ClusterConfig{}}, "give --advertise-addr"},
		{Config{GRPCAddr: sock, Cluster: &ClusterConfig{AdvertiseAddr: "10.0.0.7:8081"}}, ""},
		{Config{GRPCAddr: "127.0.0.1:8081", Cluster: &ClusterConfig{AdvertiseAddr: sock}}, "peers dial each other over TCP"},
	} {
		err := checkGRPCAddr(tc.cfg)
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("checkGRPCAddr(%s, %+v) = %v, want %q", tc.cfg.GRPCAddr, tc.cfg.Cluster, err, tc.want)
		}
	}
}

// TestRunOnUnixSocket: a node serves levee.v1 on a Unix socket, reports
// the socket as its gRPC target, and removes the socket when it stops.
func TestRunOnUnixSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "levee.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan Addrs, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{GRPCAddr: "unix://" + path}, func(a Addrs) { ready <- a })
	}()
	var addrs Addrs
	select {
	case addrs = <-ready:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("node did not become ready")
	}
	if addrs.GRPC != "unix://"+path {
		t.Fatalf("gRPC target %q", addrs.GRPC)
	}
	conn, err := grpc.NewClient(addrs.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := leveev1.NewRateLimitServiceClient(conn).Check(ctx, &leveev1.CheckRequest{Items: []*leveev1.CheckItem{{
		Target: &leveev1.CheckItem_Inline{Inline: &leveev1.InlineLimit{Key: "k", Limit: 1, Period: durationpb.New(time.Hour)}},
	}}})
	if err != nil || resp.OverallCode != leveev1.Code_CODE_OK || resp.Statuses[0].Remaining != 0 {
		t.Fatalf("Check over the socket: %v, %v", resp, err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("node did not stop")
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("socket left after the node stopped: %v", err)
	}
}

// TestRunRefusesClusterOnSocketWithoutAdvertise: the check runs before
// anything is started.
func TestRunRefusesClusterOnSocketWithoutAdvertise(t *testing.T) {
	path := filepath.Join(t.TempDir(), "levee.sock")
	err := Run(t.Context(), Config{GRPCAddr: "unix://" + path, Cluster: &ClusterConfig{}}, nil)
	if err == nil || !strings.Contains(err.Error(), "--advertise-addr") {
		t.Fatalf("Run = %v", err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("a socket was created: %v", err)
	}
}
