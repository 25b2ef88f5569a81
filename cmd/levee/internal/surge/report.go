package surge

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/levee-dev/levee/shed"
)

func pct(f float64) string { return fmt.Sprintf("%.2f%%", 100*f) }

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func msPrec(d time.Duration) string {
	return fmt.Sprintf("%.3f ms", float64(d)/float64(time.Millisecond))
}

func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func joinRates(gp []float64, c float64) string {
	s := make([]string, len(gp))
	for i, g := range gp {
		s[i] = fmt.Sprintf("%.2fC", g/c)
	}
	return strings.Join(s, ", ")
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	if len(s) > 4 {
		return strings.Join(s[:4], "; ") + fmt.Sprintf("; and %d more", len(s)-4)
	}
	return strings.Join(s, "; ")
}

// WriteFiles writes, for each scenario, NAME.md (the tables), NAME.csv (one
// row per second, policy and priority) and NAME.svg (goodput, p99,
// goroutines and levee's threshold over time), and index.md with all the
// tables, into dir.
func (rep *Report) WriteFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("surge: %w", err)
	}
	write := func(name string, f func(io.Writer) error) error {
		fh, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			return fmt.Errorf("surge: %w", err)
		}
		w := bufio.NewWriter(fh)
		err = f(w)
		if ferr := w.Flush(); err == nil {
			err = ferr
		}
		if cerr := fh.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("surge: write %s: %w", name, err)
		}
		return nil
	}
	for _, res := range rep.Results {
		name := res.Scenario.Name
		if err := write(name+".md", func(w io.Writer) error { return rep.writeScenario(w, res, name+".svg") }); err != nil {
			return err
		}
		if err := write(name+".csv", res.WriteCSV); err != nil {
			return err
		}
		if err := write(name+".svg", res.WriteSVG); err != nil {
			return err
		}
	}
	return write("index.md", rep.WriteMarkdown)
}

// WriteMarkdown writes every scenario's tables, after a summary of the
// targets.
func (rep *Report) WriteMarkdown(w io.Writer) error {
	ew := &errWriter{w: w}
	o := rep.Options
	ew.printf("# levee surge\n\n")
	ew.printf("%d CPUs; load average %.2f at the start, %.2f at the end (other work shares the machine); ", runtime.NumCPU(), rep.LoadAvg[0], rep.LoadAvg[1])
	ew.printf("seed %d, duration scale %g, mean service %v (%s worker), deadline %v per attempt; total %v.\n\n", o.Seed, o.Scale, o.MeanService, o.Work, o.Deadline, rep.Elapsed.Round(time.Second))
	ew.printf("Harness: %s.\n\n", harnessText[o.Harness])
	cal := rep.Calibration
	if cal.Given {
		ew.printf("C = %.0f/s (given).\n\n", cal.C)
	} else {
		ew.printf("C = %.0f/s, measured: the worker serves μ = %.0f/s when busy; without shedding at C, p99 %s and success %s (%d verification run(s), target p99 ≤ 50 ms and ≥ 99.9%%: %s).\n\n",
			cal.C, cal.ServiceRate, ms(cal.P99), pct(cal.Success), cal.Tries, verdict(cal.OK))
	}
	ew.printf("## Targets\n\n| scenario | target | measured | verdict |\n| --- | --- | --- | --- |\n")
	for _, res := range rep.Results {
		for _, ch := range res.Checks {
			v := verdict(ch.Pass)
			if ch.Info {
				v = "(baseline)"
			}
			ew.printf("| %s | %s | %s | %s |\n", res.Scenario.Name, ch.Target, ch.Measured, v)
		}
	}
	ew.printf("\n")
	for _, res := range rep.Results {
		if err := rep.writeScenario(ew, res, res.Scenario.Name+".svg"); err != nil {
			return err
		}
	}
	return ew.err
}

var harnessText = [numHarnesses]string{
	HarnessGRPC: "grpc — open-loop gRPC calls to a backend with one worker; levee is the shed middleware (tap handle and interceptor)",
	HarnessLibrary: "library — in process, no gRPC: a goroutine per request calls Resource.Acquire (deadline 100 ms after its scheduled arrival), " +
		"queues for one worker (unbounded FIFO, dropped when dequeued past its deadline) and calls Release with the latency since its scheduled arrival; " +
		"levee's resource has the default configuration, is ticked every 100 ms by Resource.Run and sees nothing else",
	HarnessSidecar: "sidecar — the library harness with levee behind its sidecar: each request asks levee.v1.ShedService's Admit over gRPC on loopback " +
		"with its remaining time budget (and a permit_ttl of that budget plus one deadline) and reports to Release the latency since its scheduled arrival; the sidecar's resource has the default configuration " +
		"and is ticked every 100 ms; levee sees nothing else",
}

func verdict(ok bool) string {
	if ok {
		return "pass"
	}
	return "**miss**"
}

func (rep *Report) writeScenario(w io.Writer, res *ScenarioResult, svg string) error {
	ew := &errWriter{w: w}
	sc := res.Scenario
	ew.printf("## %s: %s\n\n", sc.Name, sc.Title)
	ew.printf("C = %.0f/s; %v per policy; phases:", res.C, sc.Duration())
	for _, ph := range sc.Phases {
		ew.printf(" %s %v at %.2fC;", ph.Name, ph.Duration, ph.Total())
	}
	ew.printf(" run took %v.\n\n", res.elapsed.Round(time.Second))
	if svg != "" {
		ew.printf("![%s](%s)\n\n", sc.Name, svg)
	}
	if sc.Name == "flood" {
		ew.printf("For scale, published Go shedders in a harness of this shape (one 1 ms worker, C ≈ 900/s) kept this share of critical calls alive under the flood: no shedding 12%%, a static limit 30%%, failsafe-go 35–41%%, kratos BBR 23–28%%, the Netflix concurrency-limits port with fixed partitions 80%% (critical p99 3.9× unloaded).\n\n")
	}
	if len(res.Checks) > 0 {
		ew.printf("| target | measured | verdict |\n| --- | --- | --- |\n")
		for _, ch := range res.Checks {
			v := verdict(ch.Pass)
			if ch.Info {
				v = "(baseline)"
			}
			ew.printf("| %s | %s | %s |\n", ch.Target, ch.Measured, v)
		}
		ew.printf("\n")
	}
	ew.printf("| policy | phase | priority | offered/s | success | goodput/s | refused | timed out | attempts/call | p50 | p99 |\n")
	ew.printf("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, r := range res.Runs {
		for i, ph := range sc.Phases {
			from, to := phaseRange(sc, i)
			rows := []int{}
			for p := range shed.NumPriorities {
				if ph.Rate[p] > 0 {
					rows = append(rows, p)
				}
			}
			rows = append(rows, allPriorities)
			for _, p := range rows {
				a := r.Agg(from, to, p)
				name := "all"
				if p != allPriorities {
					name = prioNames[p]
				}
				ew.printf("| %s | %s | %s | %.0f | %s | %.0f | %d | %d | %.2f | %s | %s |\n",
					r.Policy, ph.Name, name, a.OfferedRate(), pct(a.Success()), a.Goodput(), a.Refused+a.Throttled, a.Timeout,
					a.Amplification(), ms(a.P50), ms(a.P99))
			}
		}
	}
	ew.printf("\n| policy | client | max goroutines | max heap | backend CPU | generator lag p99 | load average |\n| --- | --- | ---: | ---: | ---: | ---: | --- |\n")
	for _, r := range res.Runs {
		g, h := r.maxState(0, time.Duration(1<<62))
		cpu := 0.0
		if n := len(r.stats); n > 1 && r.Elapsed > 0 {
			cpu = float64(r.stats[n-1].CPUNanos-r.stats[0].CPUNanos) / float64(r.stats[n-1].at-r.stats[0].at)
		}
		ew.printf("| %s | %s | %d | %s | %.2f cores | %s | %.2f → %.2f |\n", r.Policy, clientNames[r.Client], g, mib(h), cpu, ms(r.LagP99()), r.LoadAvg[0], r.LoadAvg[1])
	}
	ew.printf("\n")
	return ew.err
}

var clientNames = map[ClientMode]string{ClientPlain: "one attempt", ClientRetry: "naive, 3 attempts", ClientLevee: "levee (throttle + budget)"}

// movesText is a bin's moves of the threshold for the CSV: cause:count
// pairs joined by ';' (empty when none).
func movesText(m [shed.NumCauses]uint64) string {
	var parts []string
	for c, n := range m {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%v:%d", shed.Cause(c), n))
		}
	}
	return strings.Join(parts, ";")
}

// WriteCSV writes one row per second, policy and priority (and "all").
func (res *ScenarioResult) WriteCSV(w io.Writer) error {
	ew := &errWriter{w: w}
	ew.printf("scenario,policy,second,phase,priority,offered,admitted,ok,refused,timed_out,throttled,attempts,p50_ms,p99_ms,threshold,limit,goroutines,heap_bytes,queue,moves,capacity\n")
	sc := res.Scenario
	for _, r := range res.Runs {
		for _, b := range r.Bins(time.Second, sc.Duration()) {
			phase := sc.Phases[sc.PhaseAt(b.Start)].Name
			for p := -1; p < shed.NumPriorities; p++ {
				a, name := b.All, "all"
				if p >= 0 {
					if a, name = b.Prio[p], prioNames[p]; a.Offered == 0 {
						continue
					}
				}
				ew.printf("%s,%s,%d,%s,%s,%d,%d,%d,%d,%d,%d,%d,%.2f,%.2f,%d,%d,%d,%d,%d,%s,%.0f\n",
					sc.Name, r.Policy, int(b.Start/time.Second), phase, name, a.Offered, a.Offered-a.Refused-a.Throttled, a.OK, a.Refused, a.Timeout, a.Throttled, a.Attempts,
					msf(a.P50), msf(a.P99), b.Threshold, b.Limit, b.Goroutines, b.Heap, b.Queue, movesText(b.Moves), b.Capacity)
			}
		}
	}
	return ew.err
}

func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// errWriter keeps the first write error, so formatting code need not check
// every line.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) printf(format string, args ...any) {
	if e.err == nil {
		_, e.err = fmt.Fprintf(e.w, format, args...)
	}
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	e.err = err
	return n, err
}
