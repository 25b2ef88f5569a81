package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"gopkg.in/yaml.v3"

	"github.com/levee-dev/levee/cmd/levee/internal/tlsfiles"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
)

// Exit codes of levee ctl, for scripts.
const (
	ctlExitOK       = 0
	ctlExitError    = 1 // anything else: unreachable, unauthenticated, not found ...
	ctlExitUsage    = 2 // bad flags or arguments; nothing was sent
	ctlExitConflict = 3 // the configuration changed since it was read; nothing was stored
	ctlExitInvalid  = 4 // the server refused the configuration as invalid; nothing was stored
)

const ctlExitCodesHelp = `Exit codes:
  0  success
  1  error (admin API unreachable, authentication failed, version not found, ...)
  2  usage error (bad flags or arguments); nothing was sent
  3  conflict: the configuration changed since it was read; nothing was stored
  4  refused as invalid (the message lists file:line: reason); nothing was stored`

// ctlError is an error with the exit code levee should end with.
type ctlError struct {
	code int
	err  error
}

func (e *ctlError) Error() string { return e.err.Error() }
func (e *ctlError) Unwrap() error { return e.err }

// ctlExitCode is the process exit code for an error returned by a levee
// command: 0 for nil, the code a ctlError carries, else 1.
func ctlExitCode(err error) int {
	if err == nil {
		return ctlExitOK
	}
	var ce *ctlError
	if errors.As(err, &ce) {
		return ce.code
	}
	return ctlExitError
}

func usageErr(cmd *cobra.Command, format string, args ...any) error {
	return &ctlError{code: ctlExitUsage, err: fmt.Errorf("%s (see '%s --help')", fmt.Sprintf(format, args...), cmd.CommandPath())}
}

// ctlOptions are the flags every ctl command shares.
type ctlOptions struct {
	addr       string
	tokenFile  string
	tls        tlsfiles.Files
	serverName string
	output     string
	timeout    time.Duration
}

// ctlCommand is `levee ctl`, the operator's client of the admin API.
func ctlCommand() *cobra.Command {
	o := &ctlOptions{}
	var pf *pflag.FlagSet // the connection flags, bound to LEVEE_* below
	cmd := &cobra.Command{
		Use:   "ctl",
		Short: "Change and inspect a running levee cluster through the admin API",
		Long: `levee ctl talks to the admin API of a levee node (levee serve --admin-addr):
get, apply, diff, history and rollback of the configuration stored in etcd,
shedding overrides, cluster status, and explanations of rule matches.

Every change records who made it (the token's name or the client
certificate's name) and why (--reason). Writes are made against the version
you read: if someone else changed the configuration in between, the write is
refused with a conflict, and nothing is stored.

Output is a table by default; -o json or -o yaml give stable fields for
scripts. Connection flags can also be set in the environment as
LEVEE_<FLAG>, e.g. LEVEE_ADDR and LEVEE_TOKEN_FILE.

` + ctlExitCodesHelp,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := bindEnv(pf); err != nil {
				return &ctlError{code: ctlExitUsage, err: err}
			}
			switch o.output {
			case "table", "json", "yaml":
			default:
				return usageErr(cmd, "-o %q: want table, json or yaml", o.output)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageErr(cmd, "unknown command %q for %q", args[0], cmd.CommandPath())
			}
			return cmd.Help()
		},
	}
	pf = cmd.PersistentFlags()
	pf.StringVar(&o.addr, "addr", "127.0.0.1:9091", "admin API address (levee serve --admin-addr)")
	pf.StringVar(&o.tokenFile, "token-file", "", "file holding the bearer token (the token alone, as issued; not the server's name:token file)")
	pf.StringVar(&o.tls.CA, "ca-file", "", "CA certificate to verify the admin API's TLS certificate (enables TLS)")
	pf.StringVar(&o.tls.Cert, "cert-file", "", "client certificate for mTLS (enables TLS)")
	pf.StringVar(&o.tls.Key, "key-file", "", "client key for mTLS")
	pf.StringVar(&o.serverName, "server-name", "", "name to verify the server certificate against (default: the host of --addr)")
	pf.StringVarP(&o.output, "output", "o", "table", "output format: table, json or yaml")
	pf.DurationVar(&o.timeout, "timeout", 10*time.Second, "how long to wait for the admin API")
	envUsage(pf)

	cmd.AddCommand(
		ctlGetCommand(o), ctlApplyCommand(o), ctlDiffCommand(o), ctlHistoryCommand(o), ctlRollbackCommand(o),
		ctlOverrideCommand(o), ctlStatusCommand(o), ctlExplainCommand(o), ctlTopCommand(o),
	)
	// Subcommands inherit SetFlagErrorFunc only through their parent; set
	// it on every one so a flag typo anywhere exits with the usage code.
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		c.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageErr(c, "%v", err) })
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(cmd)
	return cmd
}

// args wraps a cobra argument check so that a failure exits with the usage
// code.
func ctlArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return usageErr(cmd, "%v", err)
		}
		return nil
	}
}

// ctlClient is a connection to the admin API for one command.
type ctlClient struct {
	leveev1.AdminServiceClient
	conn  *grpc.ClientConn
	o     *ctlOptions
	token string
}

// connect dials the admin API. It fails only on bad local settings; an
// unreachable server shows up on the first call.
func (o *ctlOptions) connect() (*ctlClient, error) {
	var token string
	if o.tokenFile != "" {
		data, err := os.ReadFile(o.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		for _, line := range strings.Split(string(data), "\n") {
			if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
				token = line
				break
			}
		}
		if token == "" {
			return nil, fmt.Errorf("--token-file %s holds no token", o.tokenFile)
		}
	}
	creds := insecure.NewCredentials()
	if !o.tls.IsZero() {
		cfg, err := o.tls.Client()
		if err != nil {
			return nil, fmt.Errorf("TLS (--ca-file, --cert-file, --key-file): %w", err)
		}
		cfg.ServerName = o.serverName
		if cfg.ServerName == "" {
			if host, _, err := net.SplitHostPort(o.addr); err == nil {
				cfg.ServerName = host
			}
		}
		creds = credentials.NewTLS(cfg)
	}
	conn, err := grpc.NewClient(o.addr, grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(4<<20), grpc.MaxCallSendMsgSize(4<<20)))
	if err != nil {
		return nil, fmt.Errorf("--addr %q: %w", o.addr, err)
	}
	return &ctlClient{AdminServiceClient: leveev1.NewAdminServiceClient(conn), conn: conn, o: o, token: token}, nil
}

// ctx returns a context for one call, with the token and the timeout.
func (c *ctlClient) ctx(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(parent, c.o.timeout)
	if c.token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.token)
	}
	return ctx, cancel
}

func (c *ctlClient) Close() { _ = c.conn.Close() }

// callErr turns an admin API error into a message that says what to do,
// with the exit code scripts act on.
func (c *ctlClient) callErr(what string, err error) error {
	st := status.Convert(err)
	msg := st.Message()
	switch st.Code() {
	case codes.Aborted:
		for _, d := range st.Details() {
			if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetMetadata()["current_version"] != "" {
				msg += fmt.Sprintf(" (see what changed: levee ctl history; levee ctl diff --from %s)", info.GetMetadata()["expected_version"])
			}
		}
		return &ctlError{code: ctlExitConflict, err: fmt.Errorf("%s: conflict: %s", what, msg)}
	case codes.InvalidArgument:
		return &ctlError{code: ctlExitInvalid, err: fmt.Errorf("%s: refused: %s", what, msg)}
	case codes.Unavailable:
		return &ctlError{code: ctlExitError, err: fmt.Errorf("%s: cannot reach the admin API at %s: %s (is levee serve running with --admin-addr %s?)", what, c.o.addr, msg, c.o.addr)}
	case codes.Unauthenticated:
		hint := "give --token-file or a client certificate"
		if c.token != "" {
			hint = "check the token in " + c.o.tokenFile
		}
		return &ctlError{code: ctlExitError, err: fmt.Errorf("%s: not authenticated: %s (%s)", what, msg, hint)}
	case codes.PermissionDenied:
		return &ctlError{code: ctlExitError, err: fmt.Errorf("%s: permission denied: %s", what, msg)}
	case codes.FailedPrecondition:
		if _, _, malformed := malformedCurrent(err); malformed {
			msg += "; " + repairHint
		}
	case codes.DeadlineExceeded:
		return &ctlError{code: ctlExitError, err: fmt.Errorf("%s: no answer from %s within %v (--timeout)", what, c.o.addr, c.o.timeout)}
	}
	return &ctlError{code: ctlExitError, err: fmt.Errorf("%s: %s", what, msg)}
}

// printOut writes v as JSON or YAML, or calls table for the table format.
func (o *ctlOptions) printOut(w io.Writer, v any, table func(io.Writer) error) error {
	switch o.output {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		enc := yaml.NewEncoder(w)
		enc.SetIndent(2)
		if err := enc.Encode(v); err != nil {
			return err
		}
		return enc.Close()
	}
	return table(w)
}
