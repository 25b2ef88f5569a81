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
// uses more than 80% of its Ps over a tick, or when its goroutines wait
// for a P (more than 2% of them waited over a millisecond in a tick while
// it did some work: a node whose one thread the machine keeps preempting
// is short of Ps even though it gets little CPU), and halves once it has
// used less than 30% of them, without waiting, for a calm period (at least
// 10 s). It never goes above the runtime's own default at start, so a
// container whose CPU limit changes needs a restart to be sized anew.
// Tuner is a pure state machine fed the process's CPU time and scheduling
// latencies; [Run] feeds it and applies its answer.
package procs

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"runtime/metrics"
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
	// waitedAbove is the share of goroutine scheduling latencies over
	// slowWait in a tick above which the process is short of Ps, and
	// busyAbove the share of its Ps it must use for that to count (an
	// idle node on a busy machine waits too, and more Ps would not help).
	waitedAbove = 0.02
	slowWait    = time.Millisecond
	busyAbove   = 0.3
)

// Reading is one tick's measure of the process.
type Reading struct {
	CPU    time.Duration // cumulative CPU time, user and system
	Waited float64       // share of the goroutines made runnable since the last reading that waited over slowWait for a P
}

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

// Observe takes a reading of the process at now and returns the count of
// Ps to run from now on.
func (t *Tuner) Observe(now time.Time, r Reading) int {
	if !t.started {
		t.started, t.last, t.lastCPU = true, now, r.CPU
		return t.procs
	}
	el := now.Sub(t.last)
	if el <= 0 {
		return t.procs
	}
	used := float64(r.CPU-t.lastCPU) / float64(el) // cores
	t.last, t.lastCPU = now, r.CPU
	p := float64(t.procs)
	waiting := r.Waited > waitedAbove && used > busyAbove*p
	switch {
	case used > raiseAbove*p || waiting:
		t.procs = min(2*t.procs, t.max)
		t.lowSince = time.Time{}
	case used < lowerBelow*p && t.procs > 1 && r.Waited <= waitedAbove:
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
// ctx is done, feeds the tuner a reading of the process and applies its
// answer. It returns ctx's error, or at once an error when the process's
// CPU time cannot be read on this system (GOMAXPROCS is then left as it
// was).
func Run(ctx context.Context, t *Tuner, interval time.Duration, log *slog.Logger) error {
	var w waits
	read := func() (Reading, error) {
		c, err := processCPU()
		return Reading{CPU: c, Waited: w.read()}, err
	}
	return run(ctx, t, interval, read, func(n int) { runtime.GOMAXPROCS(n) }, log)
}

func run(ctx context.Context, t *Tuner, interval time.Duration, read func() (Reading, error), set func(int), log *slog.Logger) error {
	r, err := read()
	if err != nil {
		return fmt.Errorf("procs: reading the process's CPU time: %w", err)
	}
	cur := t.Observe(time.Now(), r)
	set(cur)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
			r, err := read()
			if err != nil {
				continue // keep the count; a read that failed once says nothing
			}
			// The time of the reading, not the tick's: with one P busy the
			// reading may come late, and the tick's time would count the
			// delay's CPU as used in the tick.
			if n := t.Observe(time.Now(), r); n != cur {
				log.Info("GOMAXPROCS changed", "from", cur, "to", n)
				set(n)
				cur = n
			}
		}
	}
}

// waits reads the share of goroutine scheduling latencies over slowWait
// since its last read, from the runtime's histogram.
type waits struct {
	sample []metrics.Sample
	last   []uint64
}

func (w *waits) read() float64 {
	if w.sample == nil {
		w.sample = []metrics.Sample{{Name: "/sched/latencies:seconds"}}
	}
	metrics.Read(w.sample)
	if w.sample[0].Value.Kind() != metrics.KindFloat64Histogram {
		return 0
	}
	h := w.sample[0].Value.Float64Histogram()
	if len(w.last) != len(h.Counts) {
		w.last = make([]uint64, len(h.Counts))
	}
	var all, slow uint64
	for i, c := range h.Counts {
		d := c - w.last[i]
		w.last[i] = c
		all += d
		if h.Buckets[i] >= slowWait.Seconds() { // the bucket's lower bound
			slow += d
		}
	}
	if all == 0 {
		return 0
	}
	return float64(slow) / float64(all)
}
