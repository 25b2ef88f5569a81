// Package procs sizes a levee node's Go scheduler (GOMAXPROCS) to the CPU
// it actually uses.
//
// A node spends its CPU passing small messages between goroutines: a
// connection's reader hands a call to a stream worker, the worker hands
// the answer to the connection's writer, a forwarded check waits for its
// batch's answer. Whenever a goroutine becomes runnable while a P is idle,
// the runtime wakes a thread for it, which spins looking for work and goes
// back to sleep; on a virtual machine that costs tens of microseconds of
// CPU, more than a decision. A node that uses a fraction of a core with
// one P per core pays that on most calls; with one P the hand-offs stay on
// one thread. Measured with deploy/load/cluster-load.sh on 2 vCPUs (three
// nodes and the load generator on the machine, four interleaved rounds):
// CPU per decision 14.4–15.7 µs with one P against 17.4–21.8 µs with two,
// per forwarded decision 31–35 µs against 40–44 µs, at slightly higher
// throughput.
//
// A node that needs more than a core must have more Ps, so the count
// follows the load: [Tuner] starts at one, doubles as soon as the process
// uses more than 80% of its Ps over a tick, and halves once it has used
// less than 30% of them for a calm period (10 s), never going above the
// runtime's own default. Tuner is a pure state machine fed the process's
// CPU time; [Run] feeds it and applies its answer.
package procs

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"time"
)

const (
	// raiseAbove is the share of its Ps the process must use over a tick
	// for the count to double: it is short of CPU, or about to be.
	raiseAbove = 0.8
	// lowerBelow is the share of its Ps the process must stay under for
	// the calm period before the count halves; below raiseAbove/2, so that
	// the halved count is not raised again at once.
	lowerBelow = 0.3
	// DefaultCalm is how long the process must stay under lowerBelow
	// before the count halves.
	DefaultCalm = 10 * time.Second
)

// Tuner decides how many Ps the process should run from its CPU time. The
// zero value is not usable; use NewTuner.
type Tuner struct {
	max, procs int
	calm       time.Duration

	started  bool
	last     time.Time
	lastCPU  time.Duration
	lowSince time.Time // start of the current run of ticks under lowerBelow; zero if none
}

// NewTuner returns a tuner that starts at one P and never asks for more
// than most (at least 1), halving only after calm under lowerBelow.
func NewTuner(most int, calm time.Duration) *Tuner {
	return &Tuner{max: max(1, most), procs: 1, calm: calm}
}

// Procs returns the count the tuner asks for now.
func (t *Tuner) Procs() int { return t.procs }

// Observe takes the process's cumulative CPU time (user and system) at now
// and returns the count of Ps to run from now on.
func (t *Tuner) Observe(now time.Time, cpu time.Duration) int {
	if !t.started {
		t.started, t.last, t.lastCPU = true, now, cpu
		return t.procs
	}
	el := now.Sub(t.last)
	if el <= 0 {
		return t.procs
	}
	used := float64(cpu-t.lastCPU) / float64(el) // cores
	t.last, t.lastCPU = now, cpu
	switch {
	case used > raiseAbove*float64(t.procs):
		t.procs = min(2*t.procs, t.max)
		t.lowSince = time.Time{}
	case used < lowerBelow*float64(t.procs) && t.procs > 1:
		if t.lowSince.IsZero() {
			t.lowSince = now
		} else if now.Sub(t.lowSince) >= t.calm {
			t.procs = max(t.procs/2, 1)
			t.lowSince = time.Time{}
		}
	default:
		t.lowSince = time.Time{}
	}
	return t.procs
}

// Run sets GOMAXPROCS to the tuner's count and then, every interval until
// ctx is done, feeds the tuner the process's CPU time and applies its
// answer. It returns ctx's error, or at once an error when the process's
// CPU time cannot be read on this system (GOMAXPROCS is then left as it
// was).
func Run(ctx context.Context, t *Tuner, interval time.Duration, log *slog.Logger) error {
	return run(ctx, t, interval, processCPU, func(n int) { runtime.GOMAXPROCS(n) }, log)
}

func run(ctx context.Context, t *Tuner, interval time.Duration, cpu func() (time.Duration, error), set func(int), log *slog.Logger) error {
	c, err := cpu()
	if err != nil {
		return fmt.Errorf("procs: reading the process's CPU time: %w", err)
	}
	cur := t.Observe(time.Now(), c)
	set(cur)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case now := <-tick.C:
			c, err := cpu()
			if err != nil {
				continue // keep the count; a read that failed once says nothing
			}
			if n := t.Observe(now, c); n != cur {
				log.Debug("GOMAXPROCS changed", "from", cur, "to", n)
				set(n)
				cur = n
			}
		}
	}
}
