package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/levee-dev/levee/cmd/levee/internal/tlsfiles"
)

// probeCommand is `levee probe`: a node's liveness check that needs no
// shell or other tool in the image (a Docker HEALTHCHECK, a Kubernetes exec
// probe where the kubelet's own gRPC probe cannot speak TLS).
func probeCommand() *cobra.Command {
	var (
		grpcAddr, advertise string
		files               tlsfiles.Files
		peerCA              string
		service             string
		timeout             time.Duration
	)
	// The flags probe shares with serve read the same LEVEE_* variables, so
	// that in a container configured for serve the probe finds the node
	// and its TLS settings with no argument.
	shared := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	cmd := &cobra.Command{
		Use:   "probe",
		Short: "Ask a node's gRPC health service whether it is serving: exit 0 if so, 1 if not",
		Long: `levee probe calls the standard gRPC health service (grpc.health.v1) of the
node at --grpc-addr and exits 0 if it answers SERVING, and 1 with the reason
otherwise (not serving, refused, no answer within --timeout, TLS refused).

It reads the same flags and LEVEE_* variables as levee serve for the address
and TLS, so a container set up for serve needs no argument: an unspecified
host (0.0.0.0, ::) is dialled on loopback, and over TLS the node's
certificate is verified as its peers verify it, for the host of
--advertise-addr (else of --grpc-addr) against --peer-ca (else
--tls-client-ca), presenting --tls-cert as the client certificate.`,
		Args: cobra.NoArgs,
		PreRunE: func(*cobra.Command, []string) error {
			return bindEnv(shared)
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			addr, name := probeTarget(grpcAddr, advertise)
			var tlsCfg *tls.Config
			client := tlsfiles.Files{CA: cmp.Or(peerCA, files.CA), Cert: files.Cert, Key: files.Key}
			if !client.IsZero() {
				var err error
				if tlsCfg, err = client.Client(); err != nil {
					return fmt.Errorf("TLS (--peer-ca, --tls-client-ca, --tls-cert, --tls-key): %w", err)
				}
				tlsCfg.ServerName = name
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			st, err := probeHealth(ctx, addr, tlsCfg, service)
			if err != nil {
				if ctx.Err() != nil {
					return fmt.Errorf("probe %s: no answer within %v (--timeout): %w", addr, timeout, err)
				}
				return fmt.Errorf("probe %s: %w", addr, err)
			}
			if st != healthpb.HealthCheckResponse_SERVING {
				return fmt.Errorf("probe %s: %s", addr, st)
			}
			fmt.Fprintln(cmd.OutOrStdout(), addr, st)
			return nil
		},
	}
	shared.StringVar(&grpcAddr, "grpc-addr", "127.0.0.1:8081", "gRPC address of the node (levee serve --grpc-addr)")
	shared.StringVar(&advertise, "advertise-addr", "", "over TLS, the node's certificate is verified for this address's host (default: --grpc-addr)")
	shared.StringVar(&files.Cert, "tls-cert", "", "client certificate presented to the node (enables TLS)")
	shared.StringVar(&files.Key, "tls-key", "", "key of --tls-cert")
	shared.StringVar(&files.CA, "tls-client-ca", "", "CA that verifies the node's certificate when --peer-ca is not given (enables TLS)")
	shared.StringVar(&peerCA, "peer-ca", "", "CA that verifies the node's certificate (enables TLS)")
	envUsage(shared)
	f := cmd.Flags()
	f.AddFlagSet(shared)
	f.StringVar(&service, "service", "", "service name to ask about (empty: the node as a whole)")
	f.DurationVar(&timeout, "timeout", 2*time.Second, "how long to wait for the answer")
	return cmd
}

// probeTarget returns the address to dial for a node listening on
// grpcAddr, and the name its certificate is verified for. An unspecified
// host means every local address, so loopback reaches it.
func probeTarget(grpcAddr, advertise string) (addr, name string) {
	addr = grpcAddr
	if host, port, err := net.SplitHostPort(grpcAddr); err == nil {
		name = host
		if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
			lo := "127.0.0.1"
			if ip != nil && ip.To4() == nil {
				lo = "::1"
			}
			addr, name = net.JoinHostPort(lo, port), lo
		}
	}
	if host, _, err := net.SplitHostPort(advertise); err == nil && host != "" {
		name = host
	}
	return addr, name
}

// probeHealth asks the health service at addr for service's status. A
// connection that cannot be made fails the call at once rather than
// waiting for the deadline.
func probeHealth(ctx context.Context, addr string, tlsCfg *tls.Config, service string) (healthpb.HealthCheckResponse_ServingStatus, error) {
	creds := insecure.NewCredentials()
	if tlsCfg != nil {
		creds = credentials.NewTLS(tlsCfg)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		return 0, err
	}
	return resp.GetStatus(), nil
}
