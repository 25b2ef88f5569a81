// Command levee is a distributed rate limiter and load shedder, run as a
// gRPC sidecar. `levee serve` runs a node, `levee ctl` tunes a running
// cluster, `levee surge` runs the load-shedding surge test, `levee
// quota-sim` runs a simulated Envoy fleet against the quota service,
// `levee probe` checks a node's health, and `levee version` prints the
// build.
package main

import (
	"fmt"
	"os"
	"runtime/debug"

	"github.com/spf13/cobra"
)

func main() {
	root := &cobra.Command{
		Use:           "levee",
		Short:         "levee is a distributed rate limiter and load shedder",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(serveCommand(), ctlCommand(), surgeCommand(), quotaSimCommand(), probeCommand(), versionCommand())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "levee:", err)
		os.Exit(ctlExitCode(err))
	}
}

// version is the release levee reports, stamped when building with
// -ldflags "-X main.version=..." (deploy/docker/build.sh does); when it is
// empty, levee version reports the module's build information.
var version string

func versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			if version != "" {
				fmt.Fprintln(cmd.OutOrStdout(), "levee", version)
				return
			}
			v := "(devel)"
			if bi, ok := debug.ReadBuildInfo(); ok {
				v = bi.Main.Version
				for _, s := range bi.Settings {
					if s.Key == "vcs.revision" {
						v += " " + s.Value
					}
				}
			}
			fmt.Fprintln(cmd.OutOrStdout(), "levee", v)
		},
	}
}
