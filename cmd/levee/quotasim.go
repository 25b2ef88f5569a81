package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/levee-dev/levee/cmd/levee/internal/quotasim"
)

func quotaSimCommand() *cobra.Command {
	var (
		o                 quotasim.Options
		demand            string
		steps             []string
		buckets           []string
		noAssign, expired string
		expiredTimeout    time.Duration
		failOnCheck       bool
		bucketCount       int
		timeline          bool
	)
	cmd := &cobra.Command{
		Use:   "quota-sim",
		Short: "Run a simulated fleet of Envoys against levee's rate limit quota service",
		Long: `Run a fleet of simulated Envoys against the rate limit quota service
(RLQS) of the levee nodes in --nodes, and report how the global limit was
shared out.

Each Envoy behaves as Envoy's rate_limit_quota filter does as of 2026:
one stream per Envoy to one node (Envoy i starts on node i mod n and moves
to the next node when its stream breaks), reports on a fixed timer with
time_elapsed in whole seconds (0 s on the first), reports lost while no
stream is up, a local token bucket from each assignment, TTLs read in
whole seconds, requests_per_time_unit ignored, the no-assignment and
expired-assignment behaviours, abandon_action. The one deviation is
--report-interval: Envoy's timer is fixed at 5 s, the default here.

Demand is open loop (Poisson arrivals from --seed), --demand times the
limit in total, spread over the Envoys by Zipf weights (exponent --zipf);
--step 30s=1.5x changes the total at 30 s. --limit must be the limit the
nodes' rules give the bucket (--bucket): the simulation only uses it to
judge. The report, per phase between steps and after its first two report
intervals: total admitted against the limit, each Envoy's admissions
against its max-min fair share of the demands it actually offered
(computed here, not by levee), how long assignments took to settle after a
step, streams broken and reopened, buckets left past their TTL, and
answers that would break real Envoys (conformance failures), each held to
the bounds of issue 15. With --check the command fails when one is missed.

Every flag can also be set in the environment as LEVEE_<FLAG>.`,
		Args: cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			return bindEnv(cmd.Flags())
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			var err error
			if o.Demand, err = parseMultiple(demand); err != nil {
				return fmt.Errorf("--demand: %w", err)
			}
			for _, s := range steps {
				at, d, ok := strings.Cut(s, "=")
				if !ok {
					return fmt.Errorf("--step %q: want DURATION=MULTIPLE, e.g. 30s=1.5x", s)
				}
				var st quotasim.Step
				if st.At, err = time.ParseDuration(at); err != nil {
					return fmt.Errorf("--step %q: %w", s, err)
				}
				if st.Demand, err = parseMultiple(d); err != nil {
					return fmt.Errorf("--step %q: %w", s, err)
				}
				o.Steps = append(o.Steps, st)
			}
			for _, b := range buckets {
				id := map[string]string{}
				for _, kv := range strings.Split(b, ",") {
					k, v, ok := strings.Cut(kv, "=")
					if !ok || k == "" {
						return fmt.Errorf("--bucket %q: want key=value[,key=value...]", b)
					}
					id[k] = v
				}
				o.Buckets = append(o.Buckets, id)
			}
			if bucketCount > 0 {
				if len(o.Buckets) != 1 {
					return errors.New("--bucket-count needs one --bucket, a template with %d in a value")
				}
				tmpl := o.Buckets[0]
				o.Buckets = nil
				for i := range bucketCount {
					id := map[string]string{}
					for k, v := range tmpl {
						id[k] = strings.ReplaceAll(v, "%d", strconv.Itoa(i))
					}
					o.Buckets = append(o.Buckets, id)
				}
			}
			if o.Settings.NoAssignment, err = quotasim.ParseBehavior(noAssign); err != nil {
				return fmt.Errorf("--no-assignment: %w", err)
			}
			if o.Settings.Expired, err = quotasim.ParseExpired(expired); err != nil {
				return fmt.Errorf("--expired: %w", err)
			}
			o.Settings.ExpiredTimeout = expiredTimeout
			o.Progress = cmd.ErrOrStderr()
			res, err := quotasim.Run(ctx, o)
			if err != nil {
				return err
			}
			if err := res.Write(cmd.OutOrStdout()); err != nil {
				return err
			}
			if timeline {
				fmt.Fprintln(cmd.OutOrStdout(), "\nassignments received:")
				if err := res.WriteTimeline(cmd.OutOrStdout()); err != nil {
					return err
				}
			}
			if failOnCheck && !res.Passed() {
				return errors.New("quota-sim: a check failed")
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&o.Nodes, "nodes", []string{"127.0.0.1:8081"}, "gRPC addresses of the levee nodes (plaintext)")
	f.IntVar(&o.Envoys, "envoys", 20, "simulated Envoys")
	f.StringVar(&o.Domain, "domain", "quota-sim", "RLQS domain of every stream")
	f.StringArrayVar(&buckets, "bucket", nil, "bucket id as key=value[,key=value...]; repeat for more buckets, each with the same demand (default name=quota-sim); the report judges the first")
	f.IntVar(&bucketCount, "bucket-count", 0, "expand the one --bucket into this many ids, %d in its values replaced by 0, 1, ... (for cost runs)")
	f.Float64Var(&o.Limit, "limit", 100, "the global limit L the nodes' rules give the bucket, requests a second")
	f.StringVar(&demand, "demand", "3x", "total demand as a multiple of the limit")
	f.Float64Var(&o.Zipf, "zipf", 1.1, "Zipf exponent of the demand across Envoys (0: even)")
	f.StringArrayVar(&steps, "step", nil, "demand step DURATION=MULTIPLE (e.g. 30s=1.5x); repeatable")
	f.DurationVar(&o.Duration, "duration", 60*time.Second, "length of the run")
	f.DurationVar(&o.ReportInterval, "report-interval", quotasim.DefaultReportInterval, "report timer period (Envoy's is fixed at 5 s; shorter only for quick runs)")
	f.DurationVar(&o.Tick, "tick", 10*time.Millisecond, "how often each Envoy draws its arrivals")
	f.StringVar(&noAssign, "no-assignment", "allow", "no_assignment_behavior: allow or deny")
	f.StringVar(&expired, "expired", "none", "expired_assignment_behavior: none (as no assignment), allow, deny or reuse (the last assignment)")
	f.DurationVar(&expiredTimeout, "expired-timeout", 0, "expired_assignment_behavior_timeout (0: until a new assignment)")
	f.Uint64Var(&o.Seed, "seed", 1, "seed of the demand")
	f.BoolVar(&timeline, "timeline", false, "also print every assignment received")
	f.BoolVar(&failOnCheck, "check", false, "exit non-zero when a check of issue 15's bounds fails")
	envUsage(f)
	return cmd
}

// parseMultiple reads "3x" or "3".
func parseMultiple(s string) (float64, error) {
	v, err := strconv.ParseFloat(strings.TrimSuffix(s, "x"), 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("%q: want a multiple like 3x", s)
	}
	return v, nil
}
