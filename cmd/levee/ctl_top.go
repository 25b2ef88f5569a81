package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/levee-dev/levee/cmd/levee/internal/node/statuspage"
)

// ctlTopCommand is `levee ctl top`: the status page in a terminal. It reads
// a node's /status.json (on --metrics-addr, not the admin API).
func ctlTopCommand(o *ctlOptions) *cobra.Command {
	var (
		statusAddr string
		interval   time.Duration
		once       bool
	)
	cmd := &cobra.Command{
		Use:   "top",
		Short: "Watch the cluster in the terminal: what needs attention, members, resources, overrides",
		Long: `Show what a node's status page shows (levee serve --metrics-addr, /status),
refreshed every --interval until interrupted: what needs attention first
(nodes gone, resources shedding, overrides, configuration drift), then every
member with its ring share, config version, rates and heartbeat, this node's
protected resources with a sparkline of the last five minutes of refusals,
the overrides in force and the last configuration changes.

--once prints one screen and exits; with -o json or -o yaml it prints the
/status.json document (documented and stable) once.`,
		Args: ctlArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if interval <= 0 {
				return usageErr(cmd, "--interval must be positive")
			}
			url := statusAddr
			if !strings.Contains(url, "://") {
				url = "http://" + url
			}
			url = strings.TrimSuffix(url, "/") + "/status.json"
			out := cmd.OutOrStdout()
			if o.output != "table" {
				once = true
			}
			for {
				st, err := fetchStatus(cmd.Context(), url, o.timeout)
				if err != nil {
					if once {
						return &ctlError{code: ctlExitError, err: err}
					}
					// Keep watching: the node may come back. Say so at the top.
					fmt.Fprintf(out, "\x1b[H\x1b[2J%s  %v (retrying every %v)\n", time.Now().Format(time.TimeOnly), err, interval)
				} else {
					if err := writeTop(out, st, o.output, once); err != nil {
						return err
					}
				}
				if once {
					return nil
				}
				select {
				case <-cmd.Context().Done():
					return nil
				case <-time.After(interval):
				}
			}
		},
	}
	cmd.Flags().StringVar(&statusAddr, "status-addr", "127.0.0.1:9090", "address of a node's status page (levee serve --metrics-addr)")
	cmd.Flags().DurationVar(&interval, "interval", 2*time.Second, "how often to refresh")
	cmd.Flags().BoolVar(&once, "once", false, "print once and exit")
	return cmd
}

func fetchStatus(ctx context.Context, url string, timeout time.Duration) (statuspage.Status, error) {
	var st statuspage.Status
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return st, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return st, fmt.Errorf("status: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("status: GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&st); err != nil {
		return st, fmt.Errorf("status: reading %s: %w", url, err)
	}
	return st, nil
}

// writeTop prints one screen; repeated screens clear the terminal first.
func writeTop(w io.Writer, st statuspage.Status, format string, once bool) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	case "yaml":
		// Through JSON, so that the YAML has the document's snake_case names.
		data, err := json.Marshal(st)
		if err != nil {
			return err
		}
		var v any
		if err := json.Unmarshal(data, &v); err != nil {
			return err
		}
		return yaml.NewEncoder(w).Encode(v)
	}
	if !once {
		if _, err := io.WriteString(w, "\x1b[H\x1b[2J"); err != nil {
			return err
		}
	}
	return statuspage.WriteText(w, st)
}
