// Package admin serves levee's admin API (levee.v1.AdminService) on its own
// listener: configuration get/apply/diff/history/rollback on a
// configstore.Store, operator overrides, cluster status and rule
// explanations.
//
// # Authentication
//
// Two mechanisms, usable together: bearer tokens from a file (one
// "name:token" per line, compared in constant time), and TLS client
// certificates verified against a CA, whose common name or DNS name must be
// on an allowed list. The name that authenticated is the author recorded
// with each change; a request cannot choose its author. Writes always need
// an identity, and reads need one except on a loopback listener. With no
// authentication configured, the server refuses to listen beyond loopback,
// and records changes as made by "anonymous". Bearer tokens beyond loopback
// need TLS, so that they do not cross the network in clear.
package admin

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/levee-dev/levee/cmd/levee/internal/configstore"
	"github.com/levee-dev/levee/cmd/levee/internal/tlsfiles"
	"github.com/levee-dev/levee/limiter/rules"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
)

// DefaultAddr is the default admin listen address: loopback only.
const DefaultAddr = "127.0.0.1:9091"

// stopGrace bounds how long Run waits for in-flight calls when it stops.
const stopGrace = 5 * time.Second

// Config configures a Server.
type Config struct {
	// Addr is the listen address. Default DefaultAddr.
	Addr string
	// Store holds the configuration. Required.
	Store *configstore.Store
	// Status gives the cluster figures for the Status call. Nil: Status
	// reports only the stored version and the overrides.
	Status StatusSource
	// ConfigSource is where the node serving this API takes its rules
	// and shedding policy from: SourceEtcd (the default) or SourceFile.
	// With SourceFile the stored configuration is not what the node
	// enforces, so ApplyConfig and Rollback are refused with
	// FailedPrecondition naming ConfigFiles, the files it enforces (empty:
	// the built-in examples).
	ConfigSource string
	ConfigFiles  []string
	// EnforcedRules, with SourceFile, gives the rules the node enforces,
	// which Explain explains against unless asked for a stored version.
	EnforcedRules func() *rules.Config
	// TokenFile is a file of "name:token" lines; empty for none.
	TokenFile string
	// TLSCertFile and TLSKeyFile are the server's certificate and key;
	// empty for plain text (loopback only when TokenFile is set).
	TLSCertFile, TLSKeyFile string
	// ClientCAFile verifies client certificates (mTLS); it needs the
	// server's certificate, and AllowedClients.
	ClientCAFile string
	// AllowedClients are the client certificate names (common name or DNS
	// name) allowed to call; required with ClientCAFile, so that every
	// certificate a shared CA signs is not an administrator.
	AllowedClients []string
	// MaxHistory bounds History's limit. Default 1000.
	MaxHistory int
	// Logger receives the server's logs. Default: discard.
	Logger *slog.Logger
	// Now is the clock for override expiry. Default time.Now.
	Now func() time.Time
}

// Server is a running admin API listener.
type Server struct {
	srv *grpc.Server
	lis net.Listener
	log *slog.Logger
}

// New checks cfg, loads the credentials and binds the listener. It refuses
// a listener beyond loopback without authentication, and bearer tokens
// beyond loopback without TLS.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("admin: Config.Store is nil")
	}
	if cfg.Addr == "" {
		cfg.Addr = DefaultAddr
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxHistory <= 0 {
		cfg.MaxHistory = 1000
	}
	auth := &authenticator{}
	if cfg.TokenFile != "" {
		toks, err := loadTokens(cfg.TokenFile)
		if err != nil {
			return nil, err
		}
		auth.tokens = toks
		if fi, err := os.Stat(cfg.TokenFile); err == nil && fi.Mode().Perm()&0o077 != 0 {
			cfg.Logger.Warn("admin token file is readable by other users; chmod 600 it", "path", cfg.TokenFile, "mode", fi.Mode().Perm())
		}
	}
	tlsCfg, err := serverTLS(cfg)
	if err != nil {
		return nil, err
	}
	if cfg.ClientCAFile != "" {
		auth.allowed = make(map[string]bool, len(cfg.AllowedClients))
		for _, n := range cfg.AllowedClients {
			if n = strings.TrimSpace(n); n != "" {
				auth.allowed[n] = true
			}
		}
	}

	// Refuse before binding when the address alone shows the problem, and
	// check the bound address too (a host name may resolve anywhere).
	if host, _, err := net.SplitHostPort(cfg.Addr); err != nil {
		return nil, fmt.Errorf("admin: address %q: %w", cfg.Addr, err)
	} else if err := checkExposure(auth, tlsCfg != nil, hostIsLoopback(host), cfg.Addr); err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("admin: listening on %s: %w", cfg.Addr, err)
	}
	tcp, _ := lis.Addr().(*net.TCPAddr)
	auth.loopback = tcp != nil && tcp.IP.IsLoopback()
	if err := checkExposure(auth, tlsCfg != nil, auth.loopback, lis.Addr().String()); err != nil {
		lis.Close()
		return nil, err
	}

	opts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(auth.unary),
		grpc.ChainStreamInterceptor(auth.stream),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		// Bundles are at most configstore.MaxBundleSize; leave room for
		// the protobuf framing.
		grpc.MaxRecvMsgSize(configstore.MaxBundleSize + 64<<10),
		grpc.MaxSendMsgSize(configstore.MaxBundleSize + 64<<10),
	}
	if tlsCfg != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(tlsCfg)))
	}
	srv := grpc.NewServer(opts...)
	if cfg.ConfigSource == "" {
		cfg.ConfigSource = SourceEtcd
	}
	if cfg.ConfigSource != SourceEtcd && cfg.ConfigSource != SourceFile {
		lis.Close()
		return nil, fmt.Errorf("admin: config source %q: want %q or %q", cfg.ConfigSource, SourceFile, SourceEtcd)
	}
	leveev1.RegisterAdminServiceServer(srv, &service{
		store: cfg.Store, status: cfg.Status, log: cfg.Logger, now: cfg.Now, maxHistory: cfg.MaxHistory,
		source: cfg.ConfigSource, files: cfg.ConfigFiles, enforced: cfg.EnforcedRules,
	})
	cfg.Logger.Info("admin API listening", "addr", lis.Addr().String(), "tls", tlsCfg != nil,
		"tokens", len(auth.tokens), "mtls", auth.allowed != nil, "loopback", auth.loopback)
	return &Server{srv: srv, lis: lis, log: cfg.Logger}, nil
}

// checkExposure refuses a listener that would let unauthenticated writes,
// or bearer tokens in clear, beyond loopback.
func checkExposure(a *authenticator, tls, loopback bool, addr string) error {
	if loopback {
		return nil
	}
	if !a.configured() {
		return fmt.Errorf("admin: refusing to listen on %s, beyond loopback, without authentication: give --admin-token-file or --admin-client-ca with --admin-allowed-clients, or listen on 127.0.0.1", addr)
	}
	if len(a.tokens) > 0 && !tls {
		return fmt.Errorf("admin: refusing to accept bearer tokens on %s, beyond loopback, in plain text: give --admin-tls-cert and --admin-tls-key, or listen on 127.0.0.1", addr)
	}
	return nil
}

// hostIsLoopback reports whether a listen host is certainly loopback
// before binding: "localhost" or a loopback IP. An empty host means every
// interface.
func hostIsLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// serverTLS builds the TLS configuration, or nil for plain text.
func serverTLS(cfg Config) (*tls.Config, error) {
	if (cfg.TLSCertFile == "") != (cfg.TLSKeyFile == "") {
		return nil, errors.New("admin: give both --admin-tls-cert and --admin-tls-key, or neither")
	}
	if cfg.ClientCAFile != "" && cfg.TLSCertFile == "" {
		return nil, errors.New("admin: --admin-client-ca needs the server's own certificate (--admin-tls-cert, --admin-tls-key)")
	}
	if cfg.ClientCAFile != "" && len(cfg.AllowedClients) == 0 {
		return nil, errors.New("admin: --admin-client-ca needs --admin-allowed-clients: the client certificate names allowed to administer levee")
	}
	if cfg.ClientCAFile == "" && len(cfg.AllowedClients) > 0 {
		return nil, errors.New("admin: --admin-allowed-clients needs --admin-client-ca to verify client certificates")
	}
	if cfg.TLSCertFile == "" {
		return nil, nil
	}
	t, err := tlsfiles.Files{CA: cfg.ClientCAFile, Cert: cfg.TLSCertFile, Key: cfg.TLSKeyFile}.Server()
	if err != nil {
		return nil, fmt.Errorf("admin: TLS (--admin-tls-cert, --admin-tls-key, --admin-client-ca): %w", err)
	}
	// With a client CA, a certificate is verified when one is given;
	// callers with a bearer token, or reading on loopback, need none. The
	// interceptor decides.
	return t, nil
}

// Addr returns the address the server listens on.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Run serves until ctx is done, then stops gracefully: in-flight calls get
// a few seconds to finish. It returns nil after a stop caused by ctx.
func (s *Server) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.lis) }()
	select {
	case err := <-errc:
		return fmt.Errorf("admin: serving: %w", err)
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() { s.srv.GracefulStop(); close(stopped) }()
	t := time.NewTimer(stopGrace)
	defer t.Stop()
	select {
	case <-stopped:
	case <-t.C:
		s.log.Warn("admin API: graceful stop timed out; closing connections")
		s.srv.Stop()
		<-stopped
	}
	<-errc
	return nil
}

// Close stops a server that Run was not called on, or stops one at once,
// closing its connections.
func (s *Server) Close() {
	s.srv.Stop()
	_ = s.lis.Close()
}
