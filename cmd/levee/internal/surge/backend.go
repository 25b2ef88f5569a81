package surge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/levee-dev/levee/limiter"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
	"github.com/levee-dev/levee/shed"
	"github.com/levee-dev/levee/shed/middleware"
	"github.com/levee-dev/levee/shed/policy"
	"github.com/levee-dev/levee/shed/sidecar"
)

// Policy is the load shedding policy a backend runs.
type Policy uint8

// The policies compared side by side.
const (
	// PolicyNone sheds nothing: every request queues for the worker.
	PolicyNone Policy = iota
	// PolicyStatic is a priority-blind token bucket fixed at the
	// calibrated capacity C, refusing in the tap handle.
	PolicyStatic
	// PolicyLevee is levee's shed middleware (tap handle and unary
	// interceptor) over a shed.Resource with its default configuration.
	PolicyLevee
	numPolicies
)

var policyNames = [numPolicies]string{"none", "static", "levee"}

// String returns the policy's name as used in flags and tables.
func (p Policy) String() string {
	if p < numPolicies {
		return policyNames[p]
	}
	return fmt.Sprintf("policy(%d)", uint8(p))
}

// ParsePolicy parses a policy name.
func ParsePolicy(s string) (Policy, error) {
	for p := range numPolicies {
		if s == policyNames[p] {
			return p, nil
		}
	}
	return 0, fmt.Errorf("surge: unknown policy %q (want none, static or levee)", s)
}

// Work is how the backend's one worker spends a request's service time.
type Work uint8

// Kinds of work.
const (
	// WorkTimed keeps the worker on the wall clock: a first come, first
	// served single server whose every request's start and end are
	// computed as it arrives (start = the later of its arrival and the
	// end of the request before it), the handler waiting until its end.
	// Capacity is exactly one over the mean service time whatever else
	// runs on the machine, so C stays put on a shared machine.
	WorkTimed Work = iota
	// WorkSpin has one worker goroutine burn CPU for each request's
	// service time, first come, first served: closer to a CPU-bound
	// service, but its capacity falls whenever other processes take the
	// CPU, so it suits a quiet machine only.
	WorkSpin
)

// ParseWork parses "timed" or "spin".
func ParseWork(s string) (Work, error) {
	switch s {
	case "timed":
		return WorkTimed, nil
	case "spin":
		return WorkSpin, nil
	}
	return 0, fmt.Errorf("surge: unknown work %q (want timed or spin)", s)
}

// String returns the work's name.
func (w Work) String() string {
	if w == WorkSpin {
		return "spin"
	}
	return "timed"
}

// BackendConfig configures a Backend.
type BackendConfig struct {
	Policy Policy
	Work   Work
	// Capacity is the static limiter's rate in requests per second
	// (PolicyStatic only).
	Capacity float64
	// SaltSeed seeds the cohort salt that turns x-levee-user into a cohort.
	SaltSeed uint64
	// Sidecar also serves levee.v1.ShedService with one resource,
	// SidecarResource, to measure the sidecar's admit/release round trip.
	Sidecar bool
	// Levee configures the shed.Resource of PolicyLevee (the zero value:
	// levee's defaults, as the middleware deploys them).
	Levee shed.Config
	// QueueSignal adds the worker's queueing delay to levee's signals as
	// a CoDel signal, as a service that exposes its own queue would.
	QueueSignal bool
}

// SidecarResource is the resource name the backend's sidecar serves.
const SidecarResource = "surge-probe"

// BackendStats is a snapshot of a backend, polled by the load generator.
type BackendStats struct {
	Goroutines int    `json:"goroutines"`
	HeapBytes  uint64 `json:"heap_bytes"`
	CPUNanos   int64  `json:"cpu_ns"` // process user+system time
	Done       uint64 `json:"done"`   // requests the worker served
	Skipped    uint64 `json:"skipped"`
	BusyNanos  int64  `json:"busy_ns"` // time the worker spent serving
	Queue      int    `json:"queue"`   // requests waiting for or with the worker
	// Threshold is levee's admission threshold level, -1 for other
	// policies; Limit and Inflight are its adaptive concurrency limit and
	// requests in flight.
	Threshold int `json:"threshold"`
	Limit     int `json:"limit"`
	Inflight  int `json:"inflight"`
	// Capacity is the throughput levee measured with its gate full
	// (shed.Status.Capacity), requests per second; 0 unknown.
	Capacity float64 `json:"capacity"`
	// Admitted and Refused count requests by priority (index 0 critical)
	// that reached the handler or were refused by the policy.
	Admitted [shed.NumPriorities]uint64 `json:"admitted"`
	Refused  [shed.NumPriorities]uint64 `json:"refused"`
	// CriticalBy counts levee's critical refusals by shed.Reason.
	CriticalBy [shed.NumReasons]uint64 `json:"critical_by"`
	// Ticks counts levee's control ticks; Overloaded, Critical and
	// Saturated count those whose combined reading said so.
	Ticks      uint64 `json:"ticks"`
	Overloaded uint64 `json:"overloaded"`
	Critical   uint64 `json:"critical"`
	Saturated  uint64 `json:"saturated"`
	// Moves counts the moves of levee's threshold by shed.Cause.
	Moves [shed.NumCauses]uint64 `json:"moves"`
}

// job is one request waiting for, or being served by, the worker.
type job struct {
	ctx     context.Context
	service time.Duration
	enq     time.Time
	ran     atomic.Bool
	done    chan struct{}
}

// Backend is the protected service of the harness: a gRPC server with one
// worker that serves requests first come, first served, each for the
// service time the request carries (see Work for how the time is spent).
//
// A request whose deadline has passed by the time the worker reaches it is
// skipped at no cost, as a handler that passes its context to the slow
// call would be; the work of a request that expires during service is
// wasted, as in any server.
type Backend struct {
	cfg   BackendConfig
	srv   *grpc.Server
	queue chan *job // WorkSpin
	timed struct {  // WorkTimed
		mu   sync.Mutex
		free time.Time // when the worker finishes the last request given to it
	}
	pending atomic.Int64 // requests given to the worker and not finished
	res     *shed.Resource
	qdelay  *shed.CoDel
	side    *policy.Set // the sidecar's resources
	static  *staticLimit

	done, skipped atomic.Uint64
	busy          atomic.Int64
	ticks         [4]atomic.Uint64 // ticks, overloaded, critical, saturated
	admitted      [shed.NumPriorities]atomic.Uint64
}

// maxQueue bounds the worker queue; beyond it the backend answers
// Unavailable. It is never reached in the scenarios: expired requests are
// skipped at once, so the queue holds at most a deadline's worth of work.
const maxQueue = 1 << 17

// NewBackend returns a backend for cfg; Serve runs it.
func NewBackend(cfg BackendConfig) (*Backend, error) {
	b := &Backend{cfg: cfg}
	switch cfg.Work {
	case WorkTimed:
	case WorkSpin:
		b.queue = make(chan *job, maxQueue)
	default:
		return nil, fmt.Errorf("surge: unknown work %v", cfg.Work)
	}
	salter := shed.CohortSalter{Seed: cfg.SaltSeed, Period: 1 << 62}
	exempt := func(m string) bool {
		return m == MethodStats || middleware.IsHealthCheck(m) || strings.HasPrefix(m, "/levee.v1.ShedService/")
	}
	var opts []grpc.ServerOption
	switch cfg.Policy {
	case PolicyNone:
	case PolicyStatic:
		if !(cfg.Capacity >= 1) {
			return nil, fmt.Errorf("surge: static policy needs a capacity of at least 1/s, got %v", cfg.Capacity)
		}
		b.static = newStaticLimit(cfg.Capacity)
		opts = append(opts, grpc.InTapHandle(b.static.tap))
	case PolicyLevee:
		var err error
		lc := cfg.Levee
		if cfg.QueueSignal {
			if b.qdelay, err = shed.NewCoDel(shed.CoDelConfig{}); err != nil {
				return nil, err
			}
			lc.Signals = append(append([]shed.Signal(nil), lc.Signals...), b.qdelay)
		}
		if b.res, err = shed.New("surge-backend", lc); err != nil {
			return nil, err
		}
		g := middleware.NewGuard(b.res, middleware.GuardOptions{Salter: salter, Exempt: exempt})
		opts = append(opts, grpc.InTapHandle(g.Tap), grpc.ChainUnaryInterceptor(g.Unary))
	default:
		return nil, fmt.Errorf("surge: unknown policy %v", cfg.Policy)
	}
	b.srv = grpc.NewServer(opts...)
	b.srv.RegisterService(&serviceDesc, b)
	if cfg.Sidecar {
		b.side = policy.NewSet(nil, nil)
		if err := b.side.Apply(&policy.Policy{Resources: []policy.Resource{{Name: SidecarResource}}}); err != nil {
			return nil, err
		}
		leveev1.RegisterShedServiceServer(b.srv, sidecar.NewServer(b.side, salter, nil))
		// The floor the sidecar's round trips stand on: a call that does
		// nothing, on the same server and connection.
		healthpb.RegisterHealthServer(b.srv, health.NewServer())
	}
	return b, nil
}

// Resource returns levee's resource (PolicyLevee), else nil.
func (b *Backend) Resource() *shed.Resource { return b.res }

// Serve serves on lis until ctx is done, running the worker and, for levee,
// the control loop (a tick every 100 ms). It returns nil after ctx ends, or
// the server's error.
func (b *Backend) Serve(ctx context.Context, lis net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	if b.queue != nil {
		wg.Go(func() { b.worker(ctx) })
	}
	if b.res != nil || b.side != nil {
		wg.Go(func() { b.control(ctx) })
	}
	errc := make(chan error, 1)
	go func() { errc <- b.srv.Serve(lis) }()
	var err error
	select {
	case <-ctx.Done():
		b.srv.Stop()
		<-errc
	case err = <-errc:
		cancel()
	}
	wg.Wait()
	if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("surge: backend: %w", err)
	}
	return nil
}

func (b *Backend) control(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if b.res != nil {
				rd := b.res.Tick(now)
				b.ticks[0].Add(1)
				if rd.Overloaded {
					b.ticks[1].Add(1)
				}
				if rd.Critical {
					b.ticks[2].Add(1)
				}
				if rd.Saturated {
					b.ticks[3].Add(1)
				}
			}
			if b.side != nil {
				b.side.Tick(now)
			}
		}
	}
}

func (b *Backend) worker(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case j := <-b.queue:
			start := time.Now()
			if j.ctx.Err() != nil {
				b.skipped.Add(1)
				close(j.done)
				continue
			}
			if b.qdelay != nil {
				b.qdelay.Observe(start.Sub(j.enq))
			}
			spin(start.Add(j.service))
			b.busy.Add(int64(time.Since(start)))
			b.done.Add(1)
			j.ran.Store(true)
			close(j.done)
		}
	}
}

var spinSink atomic.Uint64

// spin burns CPU until the wall clock reaches until, yielding now and then
// so the server's other goroutines are not starved on a single P.
func spin(until time.Time) {
	x := uint64(1)
	for n := 1; ; n++ {
		for range 64 {
			x = x*6364136223846793005 + 1442695040888963407
		}
		if !time.Now().Before(until) {
			break
		}
		if n%128 == 0 {
			runtime.Gosched()
		}
	}
	spinSink.Add(x)
}

// maxService bounds a request's service time.
const maxService = time.Second

func (b *Backend) work(ctx context.Context, in *wrapperspb.Int64Value) (*emptypb.Empty, error) {
	d := time.Duration(in.GetValue())
	if d < 0 || d > maxService {
		return nil, status.Errorf(codes.InvalidArgument, "service time %v: want 0 to %v", d, maxService)
	}
	b.admitted[priorityIndex(ctx)].Add(1)
	if b.queue == nil {
		return b.workTimed(ctx, d)
	}
	j := &job{ctx: ctx, service: d, enq: time.Now(), done: make(chan struct{})}
	select {
	case b.queue <- j:
	default:
		return nil, status.Error(codes.Unavailable, "surge: worker queue full")
	}
	select {
	case <-j.done:
		if j.ran.Load() {
			return &emptypb.Empty{}, nil
		}
	case <-ctx.Done():
	}
	return nil, status.FromContextError(ctx.Err()).Err()
}

// workTimed serves a request on the wall-clock worker (WorkTimed).
func (b *Backend) workTimed(ctx context.Context, d time.Duration) (*emptypb.Empty, error) {
	now := time.Now()
	deadline, hasDeadline := ctx.Deadline()
	b.timed.mu.Lock()
	start := now
	if b.timed.free.After(start) {
		start = b.timed.free
	}
	run := !hasDeadline || start.Before(deadline)
	end := start.Add(d)
	if run {
		b.timed.free = end
	}
	b.timed.mu.Unlock()
	if !run {
		// The worker would reach it expired, and skip it.
		b.skipped.Add(1)
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	b.pending.Add(1)
	defer b.pending.Add(-1)
	if b.qdelay != nil {
		b.qdelay.Observe(start.Sub(now))
	}
	b.busy.Add(int64(d))
	t := time.NewTimer(end.Sub(now))
	defer t.Stop()
	select {
	case <-t.C:
		b.done.Add(1)
		return &emptypb.Empty{}, nil
	case <-ctx.Done():
		b.done.Add(1) // served all the same, too late
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

// priorityIndex returns 0 (critical) … 4 (sheddable) for the request's
// x-levee-priority.
func priorityIndex(ctx context.Context) int {
	md, _ := metadata.FromIncomingContext(ctx)
	return headerIndex(md)
}

func headerIndex(md metadata.MD) int {
	var s string
	if v := md[shed.HeaderPriority]; len(v) > 0 {
		s = v[0]
	}
	p, err := shed.ParsePriority(s)
	if err != nil {
		p = shed.Default
	}
	return int(p) - 1
}

func (b *Backend) stats(context.Context, *emptypb.Empty) (*wrapperspb.BytesValue, error) {
	buf, err := json.Marshal(b.Stats())
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return wrapperspb.Bytes(buf), nil
}

var heapMetric = []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}

// Stats returns a snapshot of the backend.
func (b *Backend) Stats() BackendStats {
	s := BackendStats{
		Goroutines: runtime.NumGoroutine(),
		Done:       b.done.Load(),
		Skipped:    b.skipped.Load(),
		BusyNanos:  b.busy.Load(),
		Queue:      len(b.queue) + int(b.pending.Load()),
		Threshold:  -1,
		Ticks:      b.ticks[0].Load(),
		Overloaded: b.ticks[1].Load(),
		Critical:   b.ticks[2].Load(),
		Saturated:  b.ticks[3].Load(),
	}
	s.HeapBytes, s.CPUNanos = processState()
	for i := range s.Admitted {
		s.Admitted[i] = b.admitted[i].Load()
	}
	switch {
	case b.res != nil:
		resourceStats(&s, b.res)
	case b.static != nil:
		for i := range s.Refused {
			s.Refused[i] = b.static.refused[i].Load()
		}
	}
	return s
}

// processState returns the process's live heap and its CPU time so far
// (user and system).
func processState() (heap uint64, cpu int64) {
	sample := []metrics.Sample{heapMetric[0]}
	metrics.Read(sample)
	if sample[0].Value.Kind() == metrics.KindUint64 {
		heap = sample[0].Value.Uint64()
	}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		cpu = ru.Utime.Nano() + ru.Stime.Nano()
	}
	return heap, cpu
}

// resourceStats fills s with levee's state and refusals.
func resourceStats(s *BackendStats, res *shed.Resource) {
	st := res.Status(time.Now())
	s.Threshold, s.Limit, s.Inflight, s.Capacity = int(st.Threshold), st.Limit, st.Inflight, st.Capacity
	s.Moves = st.Moves
	for p := shed.Critical; p <= shed.Sheddable; p++ {
		c := res.Counts(p)
		for reason, n := range c.Refused {
			s.Refused[p-1] += n
			if p == shed.Critical {
				s.CriticalBy[reason] = n
			}
		}
	}
}

// staticLimit is the priority-blind baseline: one token bucket (levee's
// GCRA) at the calibrated capacity with a burst of 20 ms of it.
type staticLimit struct {
	mu      sync.Mutex
	lim     limiter.Limit
	tat     int64
	refused [shed.NumPriorities]atomic.Uint64
}

var errStaticRefused = status.Error(codes.ResourceExhausted, "surge: static limit reached")

func newStaticLimit(rate float64) *staticLimit {
	// Rates are integers per period: count in hundredths of a request.
	return &staticLimit{lim: limiter.Limit{
		Rate:   uint64(rate*100 + 0.5),
		Period: 100 * time.Second,
		Burst:  uint64(max(1, rate/50)),
	}}
}

func (s *staticLimit) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	if info.FullMethodName != MethodWork {
		return ctx, nil
	}
	if !s.allow(time.Now()) {
		s.refused[headerIndex(info.Header)].Add(1)
		return ctx, errStaticRefused
	}
	return ctx, nil
}

// allow takes a token at now if there is one.
func (s *staticLimit) allow(now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	tat, res := s.lim.Take(s.tat, 1, now.UnixNano())
	if res.Allowed {
		s.tat = tat
	}
	return res.Allowed
}
