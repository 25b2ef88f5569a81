package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/levee-dev/levee/cmd/levee/internal/node"
)

func serveCommand() *cobra.Command {
	var (
		cfg       node.Config
		logLevel  string
		logFormat string
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run a levee node",
		Long: `Run a levee node: Envoy's rate limit service and levee.v1 on --grpc-addr,
Prometheus metrics and /healthz on --metrics-addr.

With no --config, levee enforces its built-in example rules
(deploy/examples/rules). Every flag can also be set in the environment as
LEVEE_<FLAG>, e.g. LEVEE_GRPC_ADDR.`,
		Args: cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			return bindEnv(cmd.Flags())
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(logLevel, logFormat)
			if err != nil {
				return err
			}
			cfg.Logger = log
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			return node.Run(ctx, cfg, nil)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.GRPCAddr, "grpc-addr", "127.0.0.1:8081", "gRPC listen address (Envoy rate limit service, levee.v1, health, reflection)")
	f.StringVar(&cfg.MetricsAddr, "metrics-addr", "127.0.0.1:9090", "HTTP listen address for /metrics and /healthz (empty: off)")
	f.StringVar(&cfg.RulesPath, "config", "", "rule file or directory of envoyproxy/ratelimit YAML files, watched for changes (empty: built-in examples)")
	f.DurationVar(&cfg.RulesPoll, "config-poll", time.Second, "how often the rule files are checked for changes")
	f.IntVar(&cfg.MaxKeys, "max-keys", 1_000_000, "most buckets held in memory; idle ones are evicted first")
	f.DurationVar(&cfg.ShutdownGrace, "shutdown-grace", 10*time.Second, "on SIGTERM, how long in-flight calls may take before connections are closed")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	f.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	envUsage(f)
	return cmd
}

func newLogger(level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format: want text or json, got %q", format)
}
