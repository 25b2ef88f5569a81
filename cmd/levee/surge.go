package main

import (
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/levee-dev/levee/cmd/levee/internal/surge"
)

func surgeCommand() *cobra.Command {
	var (
		scenario    string
		policies    []string
		scale       float64
		out         string
		seed        uint64
		capacity    float64
		meanService time.Duration
		deadline    time.Duration
		backend     string
		harness     string
		procs       int
		// Hidden: the re-executed backend.
		work     string
		child    bool
		childCfg struct {
			policy  string
			sidecar bool
		}
	)
	cmd := &cobra.Command{
		Use:   "surge",
		Short: "Run the reproducible overload test: three shedding policies side by side",
		Long: `Run levee's overload test. A built-in backend (one worker, exponential
1 ms service, gRPC over loopback) is offered open-loop Poisson load with
100 ms deadlines and a mix of priorities, under three policies in turn:
no shedding, a priority-blind token bucket at the capacity C, and levee.
C is measured first unless --capacity is given.

Scenarios: flood (low-priority flood), ramp (0.5C to 6C), step (0.7C to
1.4C), retry (retry storm at 2C), calm (0.5C, no overload), or all. At
--duration 1 each scenario takes about three minutes for the three
policies. Results go to --out: NAME.md, NAME.csv and NAME.svg per
scenario and index.md.

--harness library drops gRPC: the load runs in this process as a service
that imports the shed package would run it, one goroutine per request
calling Resource.Acquire with a deadline 100 ms after its scheduled
arrival, an unbounded FIFO queue in front of one worker that burns CPU,
and Release with the latency since the scheduled arrival. levee's
resource has its default configuration, ticked by Resource.Run, and sees
nothing but Acquire and Release. The retry scenario needs gRPC clients
and is left out.

--harness sidecar is the library harness with levee behind its sidecar:
each request asks levee.v1.ShedService's Admit over gRPC on loopback
(with its remaining time budget, and a permit_ttl of that budget plus
one deadline) and reports to Release the latency since its scheduled
arrival; the sidecar's resource has the default configuration. Baselines
(none, static) are the library harness's.

Every flag can also be set in the environment as LEVEE_<FLAG>.`,
		Args: cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			return bindEnv(cmd.Flags())
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			h, err := surge.ParseHarness(harness)
			if err != nil {
				return err
			}
			if work == "" {
				// The library harness reproduces a CPU-bound service;
				// over gRPC the wall-clock worker keeps C put on a
				// shared machine.
				work = map[surge.Harness]string{surge.HarnessGRPC: "timed", surge.HarnessLibrary: "spin", surge.HarnessSidecar: "spin"}[h]
			}
			w, err := surge.ParseWork(work)
			if err != nil {
				return err
			}
			if child {
				p, err := surge.ParsePolicy(childCfg.policy)
				if err != nil {
					return err
				}
				return surge.ServeChild(ctx, surge.BackendConfig{Policy: p, Work: w, Capacity: capacity, SaltSeed: seed, Sidecar: childCfg.sidecar},
					os.Stdin, cmd.OutOrStdout())
			}
			o := surge.Options{Scale: scale, Seed: seed, Capacity: capacity, MeanService: meanService, Deadline: deadline,
				Work: w, Harness: h, Progress: cmd.ErrOrStderr()}
			if scenario != "all" {
				o.Scenarios = strings.Split(scenario, ",")
			}
			for _, name := range policies {
				p, err := surge.ParsePolicy(name)
				if err != nil {
					return err
				}
				o.Policies = append(o.Policies, p)
			}
			switch backend {
			case "child":
				exe, err := os.Executable()
				if err != nil {
					return fmt.Errorf("surge: find own executable: %w", err)
				}
				o.Launch = surge.ChildProcess([]string{exe, "surge", "--backend-child"}, procs)
			case "inprocess":
				o.Launch = surge.InProcess()
			default:
				return fmt.Errorf("--backend %q: want child or inprocess", backend)
			}
			rep, err := surge.Run(ctx, o)
			if err != nil {
				return err
			}
			if err := rep.WriteFiles(out); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s/index.md and a .md, .csv and .svg per scenario (%v)\n", out, rep.Elapsed.Round(time.Second))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&scenario, "scenario", "all", "scenario to run: flood, ramp, step, retry, calm, a comma-separated list, or all")
	f.StringSliceVar(&policies, "policies", nil, "policies to compare (default none,static,levee)")
	f.Float64Var(&scale, "duration", 1, "scale factor for every phase's length (1: about 3 minutes per scenario; 0.1 for a quick run)")
	f.StringVar(&out, "out", "surge-results", "directory for the tables and pictures")
	f.Uint64Var(&seed, "seed", 1, "seed of the offered load (and of the cohort salt)")
	f.Float64Var(&capacity, "capacity", 0, "capacity C in requests per second (0: measure it first)")
	f.DurationVar(&meanService, "mean-service", time.Millisecond, "mean of the backend's exponential service time")
	f.DurationVar(&deadline, "deadline", 100*time.Millisecond, "gRPC deadline of each attempt")
	f.StringVar(&work, "work", "", "how the worker spends service time: timed (a wall-clock FIFO server, capacity immune to other load on the machine; the grpc harness's default) or spin (burns CPU; the library and sidecar harnesses' default)")
	f.StringVar(&harness, "harness", "grpc", "how the load reaches the policies: grpc (calls to a backend with levee's middleware) library (Acquire and Release in process, a goroutine per request, no gRPC) or sidecar (the library harness asking the sidecar's Admit and Release over gRPC)")
	f.StringVar(&backend, "backend", "child", "where grpc backends run: child (a process of their own) or inprocess")
	f.IntVar(&procs, "backend-procs", 1, "GOMAXPROCS of a child backend (1: the backend and its shedder on one core)")
	f.BoolVar(&child, "backend-child", false, "serve one backend and print its address (used by surge itself)")
	f.StringVar(&childCfg.policy, "policy", "none", "policy of a --backend-child")
	f.BoolVar(&childCfg.sidecar, "sidecar", false, "a --backend-child also serves levee.v1.ShedService")
	f.Uint64Var(&seed, "salt-seed", 1, "cohort salt seed of a --backend-child")
	for _, name := range []string{"backend-child", "policy", "sidecar", "salt-seed"} {
		_ = f.MarkHidden(name)
	}
	envUsage(f)
	return cmd
}
