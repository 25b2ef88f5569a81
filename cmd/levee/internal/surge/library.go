package surge

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/levee-dev/levee/shed"
)

// Harness is how the offered load reaches the shedding policy.
type Harness uint8

// Harnesses.
const (
	// HarnessGRPC offers the load as gRPC calls to a Backend, where levee
	// is the shed middleware (tap handle and interceptor).
	HarnessGRPC Harness = iota
	// HarnessLibrary offers it in process, with no gRPC, as a service
	// that imports shed uses it (see Local): each request is a goroutine
	// that calls Resource.Acquire, queues for the worker and reports its
	// latency since its scheduled arrival to Resource.Release.
	HarnessLibrary
	// HarnessSidecar is the library harness with levee behind the
	// sidecar: each request asks levee.v1.ShedService's Admit over gRPC
	// and reports its latency to Release (see viaSidecar).
	HarnessSidecar
	numHarnesses
)

var harnessNames = [numHarnesses]string{"grpc", "library", "sidecar"}

// String returns the harness's name as used in flags and reports.
func (h Harness) String() string {
	if h < numHarnesses {
		return harnessNames[h]
	}
	return fmt.Sprintf("harness(%d)", uint8(h))
}

// ParseHarness parses "grpc", "library" or "sidecar".
func ParseHarness(s string) (Harness, error) {
	for h := range numHarnesses {
		if s == harnessNames[h] {
			return h, nil
		}
	}
	return 0, fmt.Errorf("surge: unknown harness %q (want grpc, library or sidecar)", s)
}

// Local is the protected service of the library harness: an unbounded
// first come, first served queue in front of one worker, with the policy
// called directly rather than through gRPC. With WorkSpin (the library
// harness's default) the worker burns CPU for each request's service
// time, so it competes for the machine with the requests' goroutines, the
// generator and the control loop, as a CPU-bound service does. A request
// whose deadline passed while it queued is dropped when the worker
// dequeues it.
//
// levee's resource has the default configuration and is ticked every
// 100 ms by Resource.Run; nothing feeds its queueing delay signal, so it
// sees only what Acquire and Release tell it.
type Local struct {
	cfg    BackendConfig
	res    *shed.Resource
	side   *viaSidecar // HarnessSidecar: res is reached through it
	static *staticLimit
	salt   uint64 // turns a user id into a cohort

	mu    sync.Mutex
	queue []*localJob
	wake  chan struct{} // a job was queued (WorkSpin)
	free  time.Time     // WorkTimed: when the worker finishes the last job given to it

	pending       atomic.Int64 // jobs queued or being served
	done, skipped atomic.Uint64
	busy          atomic.Int64
	admitted      [shed.NumPriorities]atomic.Uint64
	refused       [shed.NumPriorities]atomic.Uint64 // by the static limit
}

// localJob is one request queued for the worker.
type localJob struct {
	service  time.Duration
	deadline time.Time
	ran      bool          // served (set before done closes)
	done     chan struct{} // closed when served or dropped
}

// NewLocal returns the service of harness h (HarnessLibrary or
// HarnessSidecar) for cfg (its Sidecar and QueueSignal do not apply);
// Serve runs it.
func NewLocal(cfg BackendConfig, h Harness) (*Local, error) {
	if h != HarnessLibrary && h != HarnessSidecar {
		return nil, fmt.Errorf("surge: harness %v does not run in process", h)
	}
	l := &Local{cfg: cfg, wake: make(chan struct{}, 1), salt: shed.CohortSalter{Seed: cfg.SaltSeed, Period: 1 << 62}.Salt(time.Now())}
	switch cfg.Work {
	case WorkTimed, WorkSpin:
	default:
		return nil, fmt.Errorf("surge: unknown work %v", cfg.Work)
	}
	switch cfg.Policy {
	case PolicyNone:
	case PolicyStatic:
		if !(cfg.Capacity >= 1) {
			return nil, fmt.Errorf("surge: static policy needs a capacity of at least 1/s, got %v", cfg.Capacity)
		}
		l.static = newStaticLimit(cfg.Capacity)
	case PolicyLevee:
		if h == HarnessSidecar {
			// The sidecar's resource comes from its policy, with
			// shed.Config's defaults: cfg.Levee does not apply.
			var err error
			if l.side, err = newViaSidecar(cfg.SaltSeed); err != nil {
				return nil, err
			}
			l.res = l.side.resource()
			break
		}
		var err error
		if l.res, err = shed.New("surge-library", cfg.Levee); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("surge: unknown policy %v", cfg.Policy)
	}
	return l, nil
}

// Resource returns levee's resource (PolicyLevee), else nil.
func (l *Local) Resource() *shed.Resource { return l.res }

// Serve runs the worker and, for levee, Resource.Run with a 100 ms tick,
// until ctx is done.
func (l *Local) Serve(ctx context.Context) {
	var wg sync.WaitGroup
	if l.cfg.Work == WorkSpin {
		wg.Go(func() { l.worker(ctx) })
	}
	switch {
	case l.side != nil:
		wg.Go(func() { l.side.serve(ctx) })
	case l.res != nil:
		wg.Go(func() { _ = l.res.Run(ctx, 100*time.Millisecond) })
	}
	wg.Wait()
}

// Do runs one request scheduled at sched with priority prio (0 critical …
// 4 sheddable), user user and the given service time, under deadline, as
// the harness does: Acquire, queue, wait for the worker, Release
// with the latency since sched. It returns how the request ended and
// when.
func (l *Local) Do(ctx context.Context, sched time.Time, prio int, user string, service, deadline time.Duration) (outcome, time.Time) {
	p := shed.Priority(prio + 1)
	dl := sched.Add(deadline)
	var permit shed.Permit
	var sidePermit uint64
	switch {
	case l.side != nil:
		var out outcome
		if sidePermit, out = l.side.admit(ctx, prio, user, dl, deadline); out != outOK {
			return out, time.Now()
		}
	case l.res != nil:
		ctx, cancel := context.WithDeadline(ctx, dl)
		var err error
		permit, err = l.res.Acquire(ctx, shed.LevelOf(p, shed.Cohort(user, l.salt)))
		cancel()
		if err != nil {
			return outRefused, time.Now()
		}
	case l.static != nil:
		if !l.static.allow(time.Now()) {
			l.refused[prio].Add(1)
			return outRefused, time.Now()
		}
	}
	l.admitted[prio].Add(1)
	j := &localJob{service: service, deadline: dl, done: make(chan struct{})}
	l.enqueue(j)
	<-j.done
	end := time.Now()
	out, o := outOK, shed.OutcomeSuccess
	if !j.ran || end.After(dl) {
		out, o = outTimeout, shed.OutcomeDropped
	}
	switch {
	case l.side != nil:
		l.side.release(ctx, sidePermit, end.Sub(sched), o)
	case l.res != nil:
		l.res.Release(permit, end.Sub(sched), o)
	}
	return out, end
}

func (l *Local) enqueue(j *localJob) {
	l.pending.Add(1)
	if l.cfg.Work == WorkTimed {
		l.serveTimed(j)
		return
	}
	l.mu.Lock()
	l.queue = append(l.queue, j)
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// serveTimed serves j on the wall-clock worker (WorkTimed): its start and
// end are computed as it arrives, and it waits until its end, or is
// dropped at once if the worker would reach it past its deadline.
func (l *Local) serveTimed(j *localJob) {
	defer l.pending.Add(-1)
	now := time.Now()
	l.mu.Lock()
	start := now
	if l.free.After(start) {
		start = l.free
	}
	run := start.Before(j.deadline)
	end := start.Add(j.service)
	if run {
		l.free = end
	}
	l.mu.Unlock()
	if !run {
		// The worker would reach it expired, and drop it: when it gets
		// there, which is its deadline at the earliest.
		l.skipped.Add(1)
		time.Sleep(time.Until(start))
		close(j.done)
		return
	}
	l.busy.Add(int64(j.service))
	time.Sleep(time.Until(end))
	l.done.Add(1)
	j.ran = true
	close(j.done)
}

func (l *Local) next() *localJob {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.queue) == 0 {
		return nil
	}
	j := l.queue[0]
	l.queue[0] = nil
	l.queue = l.queue[1:]
	return j
}

func (l *Local) worker(ctx context.Context) {
	for {
		j := l.next()
		if j == nil {
			select {
			case <-ctx.Done():
				return
			case <-l.wake:
				continue
			}
		}
		start := time.Now()
		if !start.Before(j.deadline) {
			l.skipped.Add(1)
		} else {
			spin(start.Add(j.service))
			l.busy.Add(int64(time.Since(start)))
			l.done.Add(1)
			j.ran = true
		}
		l.pending.Add(-1)
		close(j.done)
	}
}

// Stats returns a snapshot of the service, in the gRPC backend's terms.
func (l *Local) Stats() BackendStats {
	s := BackendStats{
		Goroutines: runtime.NumGoroutine(),
		Done:       l.done.Load(),
		Skipped:    l.skipped.Load(),
		BusyNanos:  l.busy.Load(),
		Queue:      int(l.pending.Load()),
		Threshold:  -1,
	}
	s.HeapBytes, s.CPUNanos = processState()
	for i := range s.Admitted {
		s.Admitted[i] = l.admitted[i].Load()
		s.Refused[i] = l.refused[i].Load()
	}
	if l.res != nil {
		resourceStats(&s, l.res)
	}
	return s
}

// runLocal offers the schedule to a fresh Local for cfg, open loop: each
// request's goroutine starts at its scheduled time whatever happened to
// the earlier ones, and the service's stats are sampled every poll.
func runLocal(ctx context.Context, arr []arrival, cfg BackendConfig, h Harness, deadline, poll time.Duration) (*PolicyRun, error) {
	l, err := NewLocal(cfg, h)
	if err != nil {
		return nil, err
	}
	run := &PolicyRun{arrivals: arr, calls: make([]callResult, len(arr)), lag: make([]time.Duration, len(arr))}
	run.LoadAvg[0] = loadAvg()
	sctx, stop := context.WithCancel(ctx)
	var bg sync.WaitGroup
	bg.Go(func() { l.Serve(sctx) })
	t0 := time.Now()
	bg.Go(func() {
		t := time.NewTicker(poll)
		defer t.Stop()
		for {
			run.stats = append(run.stats, statSample{at: time.Since(t0), BackendStats: l.Stats()})
			select {
			case <-sctx.Done():
				return
			case <-t.C:
			}
		}
	})
	dispatch(ctx, arr, t0, run.lag, func(k int) {
		a := arr[k]
		out, end := l.Do(ctx, t0.Add(a.at), int(a.prio), userID(a.user), a.service, deadline)
		run.calls[k] = callResult{sent: a.at, end: end.Sub(t0), attempts: 1, out: out}
	})
	run.Elapsed = time.Since(t0)
	stop()
	bg.Wait()
	// A last sample after the tail of the requests has drained.
	run.stats = append(run.stats, statSample{at: time.Since(t0), BackendStats: l.Stats()})
	run.LoadAvg[1] = loadAvg()
	if l.side != nil {
		if n := l.side.failed.Load(); n > 0 {
			return nil, fmt.Errorf("surge: %d sidecar calls failed", n)
		}
	}
	return run, ctx.Err()
}
