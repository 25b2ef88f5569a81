package surge

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
	"github.com/levee-dev/levee/shed"
	"github.com/levee-dev/levee/shed/policy"
	"github.com/levee-dev/levee/shed/sidecar"
)

// sidecarResource is the resource the sidecar harness's shedder protects.
const sidecarResource = "surge-sidecar"

// viaSidecar is levee as the sidecar harness reaches it: the sidecar's
// levee.v1.ShedService over real gRPC on loopback, in front of a
// policy.Set holding one resource with the default configuration, ticked
// every 100 ms by Set.Run as the node ticks it. The service asks Admit
// with its remaining time budget and reports to Release the latency it
// saw since the request's scheduled arrival, and nothing else.
//
// The caller cannot tell whether an Admit it gave up on (its deadline
// passed before the answer came) was admitted, so it never releases that
// permit: it asks for a permit that lives its remaining budget plus one
// more deadline, time enough for the work it admits, and the sidecar
// sweeps the rest soon. (With the default permit_ttl of 30 s, a handful of
// such permits hold a concurrency gate of a few slots full for 30 s.)
//
// The server runs in the harness's process, so its CPU competes with the
// worker's as a sidecar on the same host does.
type viaSidecar struct {
	set   *policy.Set
	srv   *grpc.Server
	lis   net.Listener
	conns [2]*grpc.ClientConn // the load's calls, spread as runLoad spreads them
	next  atomic.Uint32
	// failed counts Admit and Release calls that failed for another
	// reason than the caller's deadline: a run with any is an error.
	failed atomic.Uint64
	// expired counts Releases of permits the sidecar had swept.
	expired atomic.Uint64
}

func newViaSidecar(saltSeed uint64) (*viaSidecar, error) {
	v := &viaSidecar{set: policy.NewSet(nil, nil)}
	if err := v.set.Apply(&policy.Policy{Resources: []policy.Resource{{Name: sidecarResource}}}); err != nil {
		return nil, fmt.Errorf("surge: sidecar policy: %w", err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("surge: sidecar listener: %w", err)
	}
	v.lis = lis
	for i := range v.conns {
		cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			v.close()
			return nil, fmt.Errorf("surge: dial sidecar %s: %w", lis.Addr(), err)
		}
		v.conns[i] = cc
	}
	v.srv = grpc.NewServer()
	leveev1.RegisterShedServiceServer(v.srv, sidecar.NewServer(v.set, shed.CohortSalter{Seed: saltSeed, Period: 1 << 62}, nil))
	return v, nil
}

// resource returns the shed.Resource behind the sidecar, for stats.
func (v *viaSidecar) resource() *shed.Resource { return v.set.Resources()[0] }

// serve serves the sidecar and ticks its resources until ctx is done, then
// stops the server and closes the connections.
func (v *viaSidecar) serve(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { _ = v.srv.Serve(v.lis) })
	_ = v.set.Run(ctx, 100*time.Millisecond)
	v.srv.Stop()
	wg.Wait()
	v.close()
}

func (v *viaSidecar) close() {
	for _, cc := range v.conns {
		if cc != nil {
			_ = cc.Close()
		}
	}
	if v.srv == nil {
		_ = v.lis.Close()
	}
}

// admit asks the sidecar to admit a request of priority prio (0 critical)
// for user, due by dl. It returns the permit, or how the request ended if
// it was not admitted: refused, or timed out waiting for the answer.
func (v *viaSidecar) admit(ctx context.Context, prio int, user string, dl time.Time, deadline time.Duration) (uint64, outcome) {
	left := time.Until(dl)
	if left <= 0 {
		return 0, outTimeout
	}
	ctx, cancel := context.WithDeadline(ctx, dl)
	defer cancel()
	cc := v.conns[v.next.Add(1)%uint32(len(v.conns))]
	resp, err := leveev1.NewShedServiceClient(cc).Admit(ctx, &leveev1.AdmitRequest{Resource: sidecarResource,
		Priority: leveev1.Priority(prio + 1), User: user, Timeout: durationpb.New(left), PermitTtl: durationpb.New(left + deadline)})
	switch {
	case err == nil && resp.GetAdmitted():
		return resp.GetPermit(), outOK
	case err == nil:
		return 0, outRefused
	case status.Code(err) == codes.DeadlineExceeded || errors.Is(err, context.DeadlineExceeded):
		return 0, outTimeout
	}
	v.failed.Add(1)
	return 0, outError
}

// release reports the end of permit's work: its latency since the
// request's scheduled arrival and whether it finished in time.
func (v *viaSidecar) release(ctx context.Context, permit uint64, latency time.Duration, o shed.Outcome) {
	out := leveev1.Outcome_OUTCOME_SUCCESS
	if o == shed.OutcomeDropped {
		out = leveev1.Outcome_OUTCOME_DROPPED
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cc := v.conns[v.next.Add(1)%uint32(len(v.conns))]
	if _, err := leveev1.NewShedServiceClient(cc).Release(ctx, &leveev1.ReleaseRequest{Resource: sidecarResource,
		Permit: permit, Latency: durationpb.New(latency), Outcome: out}); status.Code(err) == codes.NotFound {
		v.expired.Add(1)
	} else if err != nil {
		v.failed.Add(1)
	}
}
