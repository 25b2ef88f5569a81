package surge

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/levee-dev/levee/shed"
)

// Options configures Run. The zero value runs every scenario against every
// policy with in-process backends, calibrating C first.
type Options struct {
	// Scenarios to run, by name (empty: all of ScenarioNames).
	Scenarios []string
	// Policies to compare (empty: none, static and levee).
	Policies []Policy
	// Scale multiplies every phase's length (1: about a minute per policy
	// and scenario).
	Scale float64
	// Seed makes the offered load reproducible (1).
	Seed uint64
	// Capacity is C in requests per second; 0 measures it first.
	Capacity float64
	// MeanService is the mean of the exponential service time (1 ms).
	MeanService time.Duration
	// Work is how the backend spends service time (WorkTimed).
	Work Work
	// Deadline is each attempt's gRPC deadline (100 ms).
	Deadline time.Duration
	// Harness is how the load reaches the policies (HarnessGRPC).
	Harness Harness
	// Launch starts a gRPC backend for each policy run (nil: InProcess);
	// the library and sidecar harnesses have no backend to launch.
	Launch Launcher
	// Progress receives one line per step (nil: nothing).
	Progress io.Writer
}

func (o Options) withDefaults() (Options, error) {
	if o.Harness >= numHarnesses {
		return o, fmt.Errorf("surge: options: unknown harness %v", o.Harness)
	}
	if len(o.Scenarios) == 0 {
		for _, name := range ScenarioNames {
			if o.Harness == HarnessGRPC || name != "retry" {
				o.Scenarios = append(o.Scenarios, name)
			}
		}
	}
	if len(o.Policies) == 0 {
		o.Policies = []Policy{PolicyNone, PolicyStatic, PolicyLevee}
	}
	if o.Scale == 0 {
		o.Scale = 1
	}
	if o.Seed == 0 {
		o.Seed = 1
	}
	if o.MeanService == 0 {
		o.MeanService = time.Millisecond
	}
	if o.Deadline == 0 {
		o.Deadline = 100 * time.Millisecond
	}
	if o.Launch == nil {
		o.Launch = InProcess()
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.Capacity < 0 || o.MeanService < 0 || o.Deadline < 0 || !(o.Scale > 0) {
		return o, fmt.Errorf("surge: options: capacity %v, mean service %v, deadline %v, scale %v: want non-negative values and a positive scale",
			o.Capacity, o.MeanService, o.Deadline, o.Scale)
	}
	for _, p := range o.Policies {
		if p >= numPolicies {
			return o, fmt.Errorf("surge: options: unknown policy %v", p)
		}
	}
	return o, nil
}

// Launcher starts a backend configured by cfg and returns its address and
// a function that stops it.
type Launcher func(ctx context.Context, cfg BackendConfig) (addr string, stop func() error, err error)

// InProcess launches backends as goroutines of this process: simple, but
// the backend shares the process (and its goroutine and heap figures) with
// the load generator.
func InProcess() Launcher {
	return func(ctx context.Context, cfg BackendConfig) (string, func() error, error) {
		b, err := NewBackend(cfg)
		if err != nil {
			return "", nil, err
		}
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", nil, fmt.Errorf("surge: listen: %w", err)
		}
		ctx, cancel := context.WithCancel(ctx)
		errc := make(chan error, 1)
		go func() { errc <- b.Serve(ctx, lis) }()
		return lis.Addr().String(), func() error { cancel(); return <-errc }, nil
	}
}

// Args returns the flags that carry cfg to a child backend (see
// ChildProcess); cfg.Levee is not carried, children use levee's defaults.
func (cfg BackendConfig) Args() []string {
	return []string{
		"--policy", cfg.Policy.String(),
		"--work", cfg.Work.String(),
		"--capacity", strconv.FormatFloat(cfg.Capacity, 'f', -1, 64),
		"--salt-seed", strconv.FormatUint(cfg.SaltSeed, 10),
		"--sidecar=" + strconv.FormatBool(cfg.Sidecar),
	}
}

// ChildProcess launches each backend as a child process: argv (a command
// that ends in ServeChild, given BackendConfig.Args) run with GOMAXPROCS
// set to procs, so the backend and its shedder get a scheduler of their own
// and report their own goroutines and heap. The child prints its address
// on stdout and exits when its stdin closes.
func ChildProcess(argv []string, procs int) Launcher {
	return func(ctx context.Context, cfg BackendConfig) (string, func() error, error) {
		if len(argv) == 0 {
			return "", nil, errors.New("surge: child process: empty command")
		}
		cmd := exec.Command(argv[0], append(argv[1:len(argv):len(argv)], cfg.Args()...)...)
		cmd.Env = append(os.Environ(), "GOMAXPROCS="+strconv.Itoa(procs))
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return "", nil, err
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return "", nil, err
		}
		if err := cmd.Start(); err != nil {
			return "", nil, fmt.Errorf("surge: start backend: %w", err)
		}
		waited := make(chan error, 1)
		stop := func() error {
			_ = stdin.Close()
			select {
			case err := <-waited:
				return err
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				return <-waited
			}
		}
		lines := make(chan string, 1)
		go func() {
			line, _ := bufio.NewReader(stdout).ReadString('\n')
			lines <- line
			_, _ = io.Copy(io.Discard, stdout)
			waited <- cmd.Wait()
		}()
		select {
		case line := <-lines:
			addr, ok := strings.CutPrefix(strings.TrimSpace(line), listeningPrefix)
			if !ok {
				_ = stop()
				return "", nil, fmt.Errorf("surge: backend said %q, want %q and an address", line, listeningPrefix)
			}
			return addr, stop, nil
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			return "", nil, errors.New("surge: backend did not report its address within 30 s")
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			return "", nil, ctx.Err()
		}
	}
}

const listeningPrefix = "surge backend listening on "

// ServeChild runs a backend for cfg on a loopback port, writes
// "surge backend listening on ADDR" to out, and serves until ctx ends or in
// reaches EOF (its parent closed the pipe or died).
func ServeChild(ctx context.Context, cfg BackendConfig, in io.Reader, out io.Writer) error {
	b, err := NewBackend(cfg)
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("surge: listen: %w", err)
	}
	if _, err := fmt.Fprintf(out, "%s%s\n", listeningPrefix, lis.Addr()); err != nil {
		_ = lis.Close()
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// This reader ends when the parent closes the pipe; it outlives ctx
	// only until the process exits.
	go func() {
		_, _ = io.Copy(io.Discard, in)
		cancel()
	}()
	return b.Serve(ctx, lis)
}

// Calibration is how C was found.
type Calibration struct {
	Given       bool    // C was passed in, not measured
	ServiceRate float64 // requests/s the worker serves when busy
	C           float64
	// P99 and Success are those of the last verification run at C,
	// without shedding; Tries counts the verification runs.
	P99     time.Duration
	Success float64
	Tries   int
	OK      bool // the last verification met its p99 and success targets
	Elapsed time.Duration
}

// Calibration targets: C is the highest rate served without shedding with
// p99 ≤ 50 mean service times (50 ms at the default 1 ms) and ≥ 99.9%
// success.
const (
	calP99     = 50
	calSuccess = 0.999
)

// calibrate measures C: the worker's service rate μ from a run at 0.7/mean
// (busy time per request served), then verification runs without shedding
// starting at 0.9μ (M/M/1 at 0.9 load has a p99 sojourn of about 46 mean
// service times) and stepping down 5% until p99 ≤ 50 mean service times
// and success ≥ 99.9% hold.
func calibrate(ctx context.Context, o Options) (Calibration, error) {
	start := time.Now()
	cal := Calibration{}
	cfg := BackendConfig{Policy: PolicyNone, Work: o.Work, SaltSeed: o.Seed}
	lc := loadConfig{mode: ClientPlain, deadline: o.Deadline, attempts: 1, poll: 250 * time.Millisecond}
	nominal := float64(time.Second) / float64(o.MeanService)
	probe := &Scenario{Name: "calibrate", Phases: []Phase{{Name: "probe", Duration: secs(1, 2.5), Rate: quarters(1)}}}
	run, err := offer(ctx, o, cfg, schedule(probe, 0.7*nominal, o.MeanService, o.Seed), lc)
	if err != nil {
		return cal, err
	}
	if len(run.stats) < 2 {
		return cal, errors.New("surge: calibration: no backend stats")
	}
	first, last := run.stats[0], run.stats[len(run.stats)-1]
	if last.BusyNanos <= first.BusyNanos || last.Done <= first.Done {
		return cal, errors.New("surge: calibration: the backend served nothing")
	}
	cal.ServiceRate = float64(last.Done-first.Done) / time.Duration(last.BusyNanos-first.BusyNanos).Seconds()
	cal.C = 0.9 * cal.ServiceRate
	verify := &Scenario{Name: "verify", Phases: []Phase{{Name: "verify", Duration: secs(1, 4), Rate: quarters(1)}}}
	for cal.Tries < 5 {
		cal.Tries++
		fmt.Fprintf(o.Progress, "calibration: μ = %.0f/s, verifying C = %.0f/s without shedding\n", cal.ServiceRate, cal.C)
		run, err := offer(ctx, o, cfg, schedule(verify, cal.C, o.MeanService, o.Seed+uint64(cal.Tries)), lc)
		if err != nil {
			return cal, err
		}
		a := run.Agg(0, verify.Duration(), allPriorities)
		cal.P99, cal.Success = a.P99, a.Success()
		if cal.P99 <= calP99*o.MeanService && cal.Success >= calSuccess {
			cal.OK = true
			break
		}
		fmt.Fprintf(o.Progress, "calibration: at %.0f/s p99 %v, success %.2f%%: stepping down\n", cal.C, cal.P99, 100*cal.Success)
		cal.C *= 0.95
	}
	cal.Elapsed = time.Since(start)
	return cal, nil
}

// Report is the outcome of Run.
type Report struct {
	Options     Options
	Calibration Calibration
	Results     []*ScenarioResult
	Started     time.Time
	Elapsed     time.Duration
	LoadAvg     [2]float64 // 1-minute load average at the start and the end
}

// ScenarioResult is one scenario run against every policy.
type ScenarioResult struct {
	Scenario *Scenario
	C        float64
	Runs     []*PolicyRun
	// Bench is levee's in-process refusal cost (scenario calm only).
	Bench   *BenchResult
	Checks  []Check
	salt    uint64
	elapsed time.Duration
}

// Run returns the run of policy p, or nil.
func (s *ScenarioResult) Run(p Policy) *PolicyRun {
	for _, r := range s.Runs {
		if r.Policy == p {
			return r
		}
	}
	return nil
}

// Run measures C (unless given) and runs the scenarios, each against every
// policy in turn on a fresh backend, with the same offered load.
func Run(ctx context.Context, o Options) (*Report, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	rep := &Report{Options: o, Started: time.Now()}
	rep.LoadAvg[0] = loadAvg()
	if o.Capacity > 0 {
		rep.Calibration = Calibration{Given: true, C: o.Capacity, OK: true}
	} else if rep.Calibration, err = calibrate(ctx, o); err != nil {
		return nil, fmt.Errorf("surge: calibration: %w", err)
	}
	c := rep.Calibration.C
	salt := shed.CohortSalter{Seed: o.Seed, Period: 1 << 62}.Salt(time.Now())
	for _, name := range o.Scenarios {
		sc, err := NewScenario(name, o.Scale)
		if err != nil {
			return nil, err
		}
		if o.Harness != HarnessGRPC && len(sc.Clients) > 0 {
			return nil, fmt.Errorf("surge: scenario %s needs gRPC clients; the %s harness has none", name, o.Harness)
		}
		h := fnv.New64a()
		_, _ = h.Write([]byte(name))
		arr := schedule(sc, c, o.MeanService, o.Seed^h.Sum64())
		res := &ScenarioResult{Scenario: sc, C: c, salt: salt}
		t0 := time.Now()
		for _, p := range o.Policies {
			fmt.Fprintf(o.Progress, "%s: %s (%d calls over %v, C = %.0f/s)\n", name, p, len(arr), sc.Duration(), c)
			run, err := runPolicy(ctx, o, sc, p, arr, c)
			if err != nil {
				return nil, fmt.Errorf("surge: %s/%s: %w", name, p, err)
			}
			res.Runs = append(res.Runs, run)
		}
		if sc.Bench {
			fmt.Fprintln(o.Progress, "calm: benchmarking levee's refusal path")
			b := benchRefusal()
			res.Bench = &b
		}
		res.elapsed = time.Since(t0)
		res.Checks = checks(res)
		rep.Results = append(rep.Results, res)
	}
	rep.Elapsed = time.Since(rep.Started)
	rep.LoadAvg[1] = loadAvg()
	return rep, nil
}

func runPolicy(ctx context.Context, o Options, sc *Scenario, p Policy, arr []arrival, c float64) (*PolicyRun, error) {
	cfg := BackendConfig{Policy: p, Work: o.Work, Capacity: c, SaltSeed: o.Seed,
		Sidecar: sc.Sidecar && p == PolicyLevee && o.Harness == HarnessGRPC}
	mode := sc.Client(p)
	attempts := 1
	if mode != ClientPlain {
		attempts = 3
	}
	run, err := offer(ctx, o, cfg, arr, loadConfig{mode: mode, deadline: o.Deadline, attempts: attempts,
		sidecar: cfg.Sidecar, poll: 100 * time.Millisecond})
	if err != nil {
		return nil, err
	}
	run.Policy = p
	return run, nil
}

// offer runs the schedule against a fresh backend for cfg through o's
// harness: a gRPC backend from o.Launch, or the in-process harnesses' Local.
func offer(ctx context.Context, o Options, cfg BackendConfig, arr []arrival, lc loadConfig) (*PolicyRun, error) {
	if o.Harness != HarnessGRPC {
		if lc.mode != ClientPlain {
			return nil, fmt.Errorf("surge: the %s harness has no client to retry with (client mode %d)", o.Harness, lc.mode)
		}
		return runLocal(ctx, arr, cfg, o.Harness, o.Deadline, lc.poll)
	}
	addr, stop, err := o.Launch(ctx, cfg)
	if err != nil {
		return nil, err
	}
	lc.addr = addr
	run, err := runLoad(ctx, arr, lc)
	if serr := stop(); err == nil && serr != nil {
		err = fmt.Errorf("surge: backend: %w", serr)
	}
	return run, err
}
