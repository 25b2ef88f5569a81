package surge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
	"github.com/levee-dev/levee/shed"
	"github.com/levee-dev/levee/shed/middleware"
)

// outcome is how a call ended, as its client saw it.
type outcome uint8

const (
	outPending   outcome = iota
	outOK                // answered OK before its deadline
	outRefused           // refused by the backend's policy (ResourceExhausted)
	outTimeout           // deadline exceeded
	outThrottled         // rejected locally by levee's adaptive throttle
	outError             // anything else
)

// callResult is one call of the schedule, from its first send to its final
// answer. Offsets are from the start of the run.
type callResult struct {
	sent, end time.Duration
	attempts  uint8 // attempts that left the client
	out       outcome
}

// statSample is one poll of the backend's stats.
type statSample struct {
	at time.Duration
	BackendStats
}

// PolicyRun is one policy's run of a scenario: the schedule it was offered,
// what each call saw, and the backend's stats over time.
type PolicyRun struct {
	Policy  Policy
	Client  ClientMode
	Elapsed time.Duration
	// LoadAvg is the machine's 1-minute load average at the start and the
	// end of the run.
	LoadAvg [2]float64

	arrivals []arrival
	calls    []callResult
	stats    []statSample
	lag      []time.Duration    // send time minus scheduled time
	sidecar  [4][]time.Duration // Admit, Release, both, and a health check (the floor)
}

// loadConfig is what a run needs besides the schedule.
type loadConfig struct {
	addr     string
	mode     ClientMode
	deadline time.Duration
	attempts int
	sidecar  bool
	poll     time.Duration
}

var prioNames = func() (n [shed.NumPriorities]string) {
	for i := range n {
		n[i] = shed.Priority(i + 1).String()
	}
	return n
}()

type attemptsKey struct{}

// attemptInterceptor counts the attempts that leave the client and gives
// each its own deadline; it sits inside levee's client interceptor, which
// retries.
func attemptInterceptor(deadline time.Duration) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if n, ok := ctx.Value(attemptsKey{}).(*atomic.Int32); ok {
			n.Add(1)
		}
		actx, cancel := context.WithTimeout(ctx, deadline)
		defer cancel()
		return invoker(actx, method, req, reply, cc, opts...)
	}
}

func classify(err error) outcome {
	switch {
	case err == nil:
		return outOK
	case errors.Is(err, middleware.ErrThrottled):
		return outThrottled
	}
	switch status.Code(err) {
	case codes.ResourceExhausted:
		return outRefused
	case codes.DeadlineExceeded:
		return outTimeout
	}
	return outError
}

// runLoad offers the schedule to the backend at lc.addr, open loop: each
// call is sent at its scheduled time whatever happened to the earlier
// ones.
func runLoad(ctx context.Context, arr []arrival, lc loadConfig) (*PolicyRun, error) {
	run := &PolicyRun{Client: lc.mode, arrivals: arr, calls: make([]callResult, len(arr)), lag: make([]time.Duration, len(arr))}
	run.LoadAvg[0] = loadAvg()
	dial := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if lc.mode == ClientLevee {
		cl, err := middleware.NewClient(middleware.ClientOptions{MaxAttempts: lc.attempts})
		if err != nil {
			return nil, err
		}
		dial = append(dial, grpc.WithChainUnaryInterceptor(cl.Unary, attemptInterceptor(lc.deadline)))
	}
	// Two connections carry the load; a third carries stats and probes,
	// so that polling never queues behind the load.
	const nconn = 2
	var conns [nconn]*grpc.ClientConn
	for i := range conns {
		cc, err := grpc.NewClient(lc.addr, dial...)
		if err != nil {
			return nil, fmt.Errorf("surge: dial %s: %w", lc.addr, err)
		}
		defer cc.Close()
		conns[i] = cc
	}
	ctl, err := grpc.NewClient(lc.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("surge: dial %s: %w", lc.addr, err)
	}
	defer ctl.Close()
	for _, cc := range append(conns[:], ctl) {
		if _, err := pollStats(ctx, cc, 5*time.Second); err != nil {
			return nil, fmt.Errorf("surge: backend at %s not ready: %w", lc.addr, err)
		}
	}

	t0 := time.Now()
	pctx, stopPoll := context.WithCancel(ctx)
	var bg sync.WaitGroup
	bg.Go(func() {
		t := time.NewTicker(lc.poll)
		defer t.Stop()
		for {
			if s, err := pollStats(pctx, ctl, time.Second); err == nil {
				run.stats = append(run.stats, statSample{at: time.Since(t0), BackendStats: s})
			}
			select {
			case <-pctx.Done():
				return
			case <-t.C:
			}
		}
	})
	if lc.sidecar {
		bg.Go(func() { run.sidecar = probeSidecar(pctx, ctl) })
	}

	dispatch(ctx, arr, t0, run.lag, func(k int) { run.calls[k] = call(ctx, conns[k%nconn], t0, arr[k], lc) })
	run.Elapsed = time.Since(t0)
	stopPoll()
	bg.Wait()
	// A last sample after the tail of the calls has drained.
	if s, err := pollStats(ctx, ctl, time.Second); err == nil {
		run.stats = append(run.stats, statSample{at: time.Since(t0), BackendStats: s})
	}
	run.LoadAvg[1] = loadAvg()
	return run, ctx.Err()
}

// dispatch runs do(k) in a goroutine of its own at the scheduled time of
// each arrival k from t0, open loop: whatever happened to the earlier ones.
// It records each arrival's lag (start minus scheduled time) in lag, stops
// starting calls when ctx is done, and returns when every call started has.
func dispatch(ctx context.Context, arr []arrival, t0 time.Time, lag []time.Duration, do func(k int)) {
	var calls sync.WaitGroup
	for i := 0; i < len(arr); {
		if ctx.Err() != nil {
			break
		}
		now := time.Since(t0)
		for ; i < len(arr) && arr[i].at <= now; i++ {
			lag[i] = now - arr[i].at
			k := i
			calls.Go(func() { do(k) })
		}
		if i < len(arr) {
			if d := arr[i].at - time.Since(t0); d > 0 {
				time.Sleep(d)
			}
		}
	}
	calls.Wait()
}

func call(ctx context.Context, cc *grpc.ClientConn, t0 time.Time, a arrival, lc loadConfig) callResult {
	md := metadata.Pairs(shed.HeaderPriority, prioNames[a.prio], shed.HeaderUser, userID(a.user))
	base := metadata.NewOutgoingContext(ctx, md)
	req := wrapperspb.Int64(int64(a.service))
	var r callResult
	r.sent = time.Since(t0)
	var err error
	switch lc.mode {
	case ClientPlain:
		actx, cancel := context.WithTimeout(base, lc.deadline)
		err = cc.Invoke(actx, MethodWork, req, new(emptypb.Empty))
		cancel()
		r.attempts = 1
	case ClientRetry:
		for range lc.attempts {
			actx, cancel := context.WithTimeout(base, lc.deadline)
			err = cc.Invoke(actx, MethodWork, req, new(emptypb.Empty))
			cancel()
			r.attempts++
			if err == nil || ctx.Err() != nil {
				break
			}
		}
	case ClientLevee:
		var n atomic.Int32
		cctx, cancel := context.WithTimeout(context.WithValue(base, attemptsKey{}, &n), time.Duration(lc.attempts)*lc.deadline)
		err = cc.Invoke(cctx, MethodWork, req, new(emptypb.Empty))
		cancel()
		r.attempts = uint8(n.Load())
	}
	r.end = time.Since(t0)
	r.out = classify(err)
	return r
}

func pollStats(ctx context.Context, cc *grpc.ClientConn, timeout time.Duration) (BackendStats, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var out wrapperspb.BytesValue
	var s BackendStats
	if err := cc.Invoke(ctx, MethodStats, &emptypb.Empty{}, &out, grpc.WaitForReady(true)); err != nil {
		return s, err
	}
	if err := json.Unmarshal(out.GetValue(), &s); err != nil {
		return s, fmt.Errorf("surge: stats: %w", err)
	}
	return s, nil
}

// probeSidecar measures the sidecar's Admit and Release round trips and
// the pair, and, on alternate ticks, a gRPC health check of the same
// server: a call that does nothing, made after the same idle time as an
// Admit, so the floor under the other three. 100 of each a second until
// ctx ends.
func probeSidecar(ctx context.Context, cc *grpc.ClientConn) (rtt [4][]time.Duration) {
	cl := leveev1.NewShedServiceClient(cc)
	hc := healthpb.NewHealthClient(cc)
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	req := &leveev1.AdmitRequest{Resource: SidecarResource, Priority: leveev1.Priority_PRIORITY_DEFAULT,
		User: "probe", Timeout: durationpb.New(100 * time.Millisecond)}
	for floor := false; ; floor = !floor {
		select {
		case <-ctx.Done():
			return rtt
		case <-t.C:
		}
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		t0 := time.Now()
		if floor {
			if _, err := hc.Check(cctx, &healthpb.HealthCheckRequest{}); err == nil {
				rtt[3] = append(rtt[3], time.Since(t0))
			}
			cancel()
			continue
		}
		resp, err := cl.Admit(cctx, req)
		t1 := time.Now()
		if err == nil && resp.GetAdmitted() {
			_, err = cl.Release(cctx, &leveev1.ReleaseRequest{Resource: SidecarResource, Permit: resp.GetPermit(),
				Latency: durationpb.New(t1.Sub(t0)), Outcome: leveev1.Outcome_OUTCOME_SUCCESS})
			t2 := time.Now()
			if err == nil {
				rtt[0] = append(rtt[0], t1.Sub(t0))
				rtt[1] = append(rtt[1], t2.Sub(t1))
				rtt[2] = append(rtt[2], t2.Sub(t0))
			}
		}
		cancel()
	}
}

// loadAvg returns the 1-minute load average, 0 where /proc is missing.
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}
