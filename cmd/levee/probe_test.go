package main

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/levee-dev/levee/cmd/levee/internal/tlsfiles"
	"github.com/levee-dev/levee/cmd/levee/internal/tlsfiles/tlstest"
)

// runProbe runs `levee probe args...` and returns its output and error.
func runProbe(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := &cobra.Command{Use: "levee", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(probeCommand())
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{"probe"}, args...))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

// healthServer serves the standard gRPC health service on loopback, over
// TLS when creds is not nil.
func healthServer(t *testing.T, creds credentials.TransportCredentials) (*health.Server, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var opts []grpc.ServerOption
	if creds != nil {
		opts = append(opts, grpc.Creds(creds))
	}
	srv := grpc.NewServer(opts...)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return hs, lis.Addr().String()
}

func TestProbeStatus(t *testing.T) {
	hs, addr := healthServer(t, nil)
	hs.SetServingStatus("levee.v1.RateLimitService", healthpb.HealthCheckResponse_SERVING)
	out, err := runProbe(t, "--grpc-addr", addr)
	if err != nil || !strings.Contains(out, "SERVING") {
		t.Fatalf("probe of a serving node: %v (output %q); want success", err, out)
	}
	if _, err := runProbe(t, "--grpc-addr", addr, "--service", "levee.v1.RateLimitService"); err != nil {
		t.Errorf("probe of a serving service: %v; want success", err)
	}
	// A node shutting down reports NOT_SERVING for every service.
	hs.Shutdown()
	if _, err := runProbe(t, "--grpc-addr", addr); err == nil || !strings.Contains(err.Error(), "NOT_SERVING") || !strings.Contains(err.Error(), addr) {
		t.Errorf("probe of a node not serving: %v; want an error naming %s and NOT_SERVING", err, addr)
	}
	if code := ctlExitCode(func() error { _, err := runProbe(t, "--grpc-addr", addr); return err }()); code != 1 {
		t.Errorf("exit code of a failed probe: %d, want 1 (Docker's unhealthy)", code)
	}
	if _, err := runProbe(t, "--grpc-addr", addr, "--service", "no.such.Service"); err == nil {
		t.Error("probe of an unknown service succeeded")
	}
}

// TestProbeEnv: the probe reads serve's variables, so a container set up
// for serve needs no argument.
func TestProbeEnv(t *testing.T) {
	hs, addr := healthServer(t, nil)
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	t.Setenv("LEVEE_GRPC_ADDR", addr)
	if _, err := runProbe(t); err != nil {
		t.Errorf("probe with LEVEE_GRPC_ADDR=%s: %v; want success", addr, err)
	}
	// A flag wins over the environment.
	t.Setenv("LEVEE_GRPC_ADDR", "127.0.0.1:1")
	if _, err := runProbe(t, "--grpc-addr", addr); err != nil {
		t.Errorf("probe with --grpc-addr over LEVEE_GRPC_ADDR: %v; want success", err)
	}
	// The probe-only flags have no variable: LEVEE_TIMEOUT belongs to ctl.
	t.Setenv("LEVEE_TIMEOUT", "not a duration")
	if _, err := runProbe(t, "--grpc-addr", addr); err != nil {
		t.Errorf("probe with ctl's LEVEE_TIMEOUT set: %v; want it ignored", err)
	}
}

func TestProbeUnreachable(t *testing.T) {
	// Nothing listens: refused at once, with the address named.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	if _, err := runProbe(t, "--grpc-addr", addr); err == nil || !strings.Contains(err.Error(), addr) {
		t.Errorf("probe of a closed port: %v; want an error naming %s", err, addr)
	}
	// A hung node accepts connections and never answers: the timeout ends
	// the probe.
	hung, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hung.Close()
	if _, err := runProbe(t, "--grpc-addr", hung.Addr().String(), "--timeout", "200ms"); err == nil || !strings.Contains(err.Error(), "no answer within 200ms") {
		t.Errorf("probe of a hung node: %v; want no answer within the timeout", err)
	}
}

// TestProbeTLS: over TLS the node's certificate is verified as its peers
// verify it: for the host of --advertise-addr, against --peer-ca or else
// --tls-client-ca.
func TestProbeTLS(t *testing.T) {
	ca := tlstest.NewCA(t, "levee cluster")
	cert, key := ca.Issue(t, "node", tlstest.Server|tlstest.Client) // names 127.0.0.1 and localhost
	srvCfg, err := tlsfiles.Files{CA: ca.File, Cert: cert, Key: key}.Server()
	if err != nil {
		t.Fatal(err)
	}
	hs, addr := healthServer(t, credentials.NewTLS(srvCfg))
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	_, port, _ := net.SplitHostPort(addr)
	other := tlstest.NewCA(t, "another cluster")

	for _, c := range []struct {
		name string
		args []string
		ok   bool
	}{
		{"client CA", []string{"--tls-client-ca", ca.File, "--tls-cert", cert, "--tls-key", key}, true},
		{"peer CA wins", []string{"--tls-client-ca", other.File, "--peer-ca", ca.File, "--tls-cert", cert, "--tls-key", key}, true},
		{"no client certificate", []string{"--tls-client-ca", ca.File}, true},
		{"unspecified host dialled on loopback", []string{"--grpc-addr", "0.0.0.0:" + port, "--tls-client-ca", ca.File}, true},
		{"advertised name in the certificate", []string{"--advertise-addr", "localhost:8081", "--tls-client-ca", ca.File}, true},
		{"advertised name not in the certificate", []string{"--advertise-addr", "levee-0.levee-peers:8081", "--tls-client-ca", ca.File}, false},
		{"another CA", []string{"--tls-client-ca", other.File}, false},
		{"plaintext against TLS", nil, false},
	} {
		args := append([]string{"--grpc-addr", addr, "--timeout", "5s"}, c.args...)
		_, err := runProbe(t, args...)
		if (err == nil) != c.ok {
			t.Errorf("%s: probe %v: %v; want ok=%v", c.name, args, err, c.ok)
		}
	}
}

func TestProbeTarget(t *testing.T) {
	for _, c := range []struct{ grpc, advertise, addr, name string }{
		{"127.0.0.1:8081", "", "127.0.0.1:8081", "127.0.0.1"},
		{"0.0.0.0:8081", "", "127.0.0.1:8081", "127.0.0.1"},
		{":8081", "", "127.0.0.1:8081", "127.0.0.1"},
		{"[::]:8081", "", "[::1]:8081", "::1"},
		{"0.0.0.0:8081", "levee-0.levee-peers:8081", "127.0.0.1:8081", "levee-0.levee-peers"},
		{"node.example:8081", "", "node.example:8081", "node.example"},
	} {
		addr, name := probeTarget(c.grpc, c.advertise)
		if addr != c.addr || name != c.name {
			t.Errorf("probeTarget(%q, %q) = %q, %q; want %q, %q", c.grpc, c.advertise, addr, name, c.addr, c.name)
		}
	}
}
