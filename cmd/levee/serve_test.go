package main

import (
	"bufio"
	"context"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/levee-dev/levee/cmd/levee/internal/tlsfiles/tlstest"
)

func TestSetProcs(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	for _, c := range []struct {
		flag, env string
		tuned     bool
	}{
		{"auto", "", true},
		{"auto", "2", false}, // GOMAXPROCS in the environment wins
		{"auto", "0", true},  // Go ignores it, and so does levee
		{"auto", "many", true},
		{"default", "", false},
	} {
		t.Setenv("GOMAXPROCS", c.env)
		tuned, err := setProcs(c.flag)
		if err != nil || tuned != c.tuned {
			t.Errorf("--procs %s with GOMAXPROCS=%q: tuned %v (err %v), want %v", c.flag, c.env, tuned, err, c.tuned)
		}
	}
	if tuned, err := setProcs("3"); err != nil || tuned || runtime.GOMAXPROCS(0) != 3 {
		t.Errorf("--procs 3: tuned %v, err %v, GOMAXPROCS %d; want 3 set and no tuner", tuned, err, runtime.GOMAXPROCS(0))
	}
	for _, bad := range []string{"0", "-1", "x", "Auto2"} {
		if _, err := setProcs(bad); err == nil || !strings.Contains(err.Error(), "--procs") {
			t.Errorf("--procs %q: err %v, want an error naming --procs", bad, err)
		}
	}
}

// TestServeTLSFlagErrors: TLS flags that cannot work are refused at start
// with the flags named, before anything listens.
func TestServeTLSFlagErrors(t *testing.T) {
	ca := tlstest.NewCA(t, "levee cluster")
	cert, key := ca.Issue(t, "node", tlstest.Server|tlstest.Client)
	serverOnly, serverOnlyKey := ca.Issue(t, "server-only", tlstest.Server)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--standalone", "--tls-cert", cert}, "a cert file without its key"},
		{[]string{"--standalone", "--tls-key", key}, "a key file without its certificate"},
		{[]string{"--standalone", "--tls-client-ca", ca.File}, "needs its own certificate and key"},
		{[]string{"--standalone", "--tls-cert", cert, "--tls-key", key, "--peer-ca", ca.File}, "--peer-ca"},
		// A standalone node has no peer API: its peer flags are refused.
		{[]string{"--standalone", "--tls-cert", cert, "--tls-key", key, "--tls-client-ca", ca.File, "--peer-names", "node"}, "--peer-names node: a standalone node serves no peer API"},
		{[]string{"--standalone", "--peer-names", "n1,n2"}, "--peer-names n1,n2"},
		{[]string{"--tls-cert", cert, "--tls-key", key, "--etcd-endpoints", "http://127.0.0.1:1"}, "needs a client CA (--tls-client-ca)"},
		{[]string{"--peer-names", "n1", "--etcd-endpoints", "http://127.0.0.1:1"}, "--peer-names needs TLS"},
		// A server-only certificate cannot call peers; one for another
		// host cannot serve them.
		{[]string{"--tls-cert", serverOnly, "--tls-key", serverOnlyKey, "--tls-client-ca", ca.File, "--etcd-endpoints", "http://127.0.0.1:1"}, "as a client"},
		{[]string{"--tls-cert", cert, "--tls-key", key, "--tls-client-ca", ca.File, "--advertise-addr", "levee-0.example:8081", "--etcd-endpoints", "http://127.0.0.1:1"}, "--advertise-addr levee-0.example:8081"},
		// A node its own --peer-names leaves out is refused by its peers.
		{[]string{"--tls-cert", cert, "--tls-key", key, "--tls-client-ca", ca.File, "--peer-names", "n1,n2", "--etcd-endpoints", "http://127.0.0.1:1"}, "--peer-names n1,n2 does not list this node's certificate (--tls-cert, for node, localhost)"},
		{[]string{"--standalone", "--tls-cert", cert, "--tls-key", ca.File}, "certificate " + cert},
	} {
		if err := serveErr(c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("levee serve %v: %v; want an error with %q", c.args, err, c.want)
		}
	}
}

// serveErr runs `levee serve` with args, on free ports and without the
// admin API, and returns its error: for flags that are refused at start.
func serveErr(args ...string) error {
	base := []string{"serve", "--grpc-addr", "127.0.0.1:0", "--metrics-addr", "", "--admin-addr", "", "--procs", "default"}
	root := &cobra.Command{Use: "levee", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(serveCommand())
	root.SetArgs(append(base, args...))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return root.ExecuteContext(ctx)
}

// TestServeConfigSourceErrors: a config source that cannot work is refused
// at start with the flags named.
func TestServeConfigSourceErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"--standalone", "--config-source", "etcd"}, []string{"--standalone", "--config-source etcd"}},
		{[]string{"--standalone", "--config-source", "files"}, []string{"--config-source", `"files"`}},
	} {
		err := serveErr(c.args...)
		for _, w := range c.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("levee serve %v: %v; want an error with %q", c.args, err, w)
			}
		}
	}
}

// TestServeStandaloneAdminAddrWarns: a standalone node given --admin-addr
// starts without the admin API (it needs etcd) and says so; one left at
// the default does not warn.
func TestServeStandaloneAdminAddrWarns(t *testing.T) {
	for _, c := range []struct {
		args []string
		warn bool
	}{
		{[]string{"--admin-addr", "127.0.0.1:0"}, true},
		{nil, false},
	} {
		out := serveLogUntilServing(t, append([]string{"serve", "--standalone", "--grpc-addr", "127.0.0.1:0", "--metrics-addr", "", "--procs", "default"}, c.args...))
		if got := strings.Contains(out, "no admin API"); got != c.warn {
			t.Errorf("levee serve --standalone %v: warned %v, want %v; log:\n%s", c.args, got, c.warn, out)
		}
	}
}

// serveLogUntilServing runs `levee` with args in-process, returns what it
// logged on stderr up to "levee serving", and stops it.
func serveLogUntilServing(t *testing.T, args []string) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := os.Stderr
	os.Stderr = w // newLogger writes to os.Stderr as it is when serve starts
	defer func() { os.Stderr = stderr }()
	root := &cobra.Command{Use: "levee", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(serveCommand())
	root.SetArgs(args)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	var log strings.Builder
	lines := bufio.NewScanner(r)
	serving := make(chan bool, 1)
	go func() {
		for lines.Scan() {
			log.WriteString(lines.Text() + "\n")
			if strings.Contains(lines.Text(), "levee serving") {
				serving <- true
				return
			}
		}
		serving <- false
	}()
	select {
	case ok := <-serving:
		if !ok {
			t.Fatal("stderr closed before levee served")
		}
	case err := <-done:
		t.Fatalf("levee %v returned before serving: %v", args, err)
	case <-time.After(30 * time.Second):
		t.Fatalf("levee %v did not serve", args)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("levee %v: %v", args, err)
	}
	_ = w.Close()
	_ = r.Close()
	return log.String()
}
