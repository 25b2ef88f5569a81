package quotasim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"time"

	rlqsv3 "github.com/envoyproxy/go-control-plane/envoy/service/rate_limit_quota/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// DefaultReportInterval is the period of Envoy's report timer, fixed in
// the filter whatever reporting_interval says.
const DefaultReportInterval = 5 * time.Second

// Step changes the total demand at a time into the run.
type Step struct {
	At     time.Duration
	Demand float64 // total demand from At, as a multiple of the limit
}

// Options configure a simulated fleet.
type Options struct {
	Nodes  []string // gRPC addresses of levee nodes; Envoy i starts on node i mod len
	Envoys int
	Domain string
	// Buckets are the bucket ids every Envoy's requests fall into, each
	// with the same demand. The report judges the first.
	Buckets []map[string]string
	// Limit is the global limit L the server holds for the first bucket,
	// in requests a second; the simulation uses it only to judge.
	Limit float64
	// Demand is the fleet's total demand on each bucket as a multiple of
	// Limit, split across the Envoys by Zipf weights of exponent Zipf.
	Demand float64
	Zipf   float64
	Steps  []Step
	// Duration of the run.
	Duration time.Duration
	// ReportInterval is the report timer's period. Envoy's is fixed at
	// 5 s; shorter ones are the simulation's one deviation, for quick runs.
	ReportInterval time.Duration
	// Tick is how often each Envoy draws its arrivals (default 10 ms).
	Tick     time.Duration
	Settings Settings
	Seed     uint64
	// Bounds the report's checks hold the run to (zero: IssueBounds).
	Bounds Bounds
	// Dial connects to a node (default: plaintext gRPC).
	Dial func(addr string) (*grpc.ClientConn, error)
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Progress, if set, gets a line per phase.
	Progress io.Writer
}

func (o *Options) defaults() error {
	if len(o.Nodes) == 0 {
		return errors.New("quotasim: no nodes")
	}
	if o.Envoys <= 0 {
		return fmt.Errorf("quotasim: %d envoys", o.Envoys)
	}
	if o.Limit <= 0 {
		return fmt.Errorf("quotasim: limit %v: want > 0", o.Limit)
	}
	if o.Duration <= 0 {
		return fmt.Errorf("quotasim: duration %v: want > 0", o.Duration)
	}
	if o.Domain == "" {
		o.Domain = "quota-sim"
	}
	if len(o.Buckets) == 0 {
		o.Buckets = []map[string]string{{"name": "quota-sim"}}
	}
	if o.ReportInterval <= 0 {
		o.ReportInterval = DefaultReportInterval
	}
	if o.Tick <= 0 {
		o.Tick = 10 * time.Millisecond
	}
	if o.Dial == nil {
		o.Dial = func(addr string) (*grpc.ClientConn, error) {
			return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	sort.Slice(o.Steps, func(i, j int) bool { return o.Steps[i].At < o.Steps[j].At })
	return nil
}

// fleet is the running simulation.
type fleet struct {
	o      Options
	nodes  []string
	conns  []*grpc.ClientConn
	ids    []*rlqsv3.BucketId
	weight []float64
	start  time.Time
}

func (f *fleet) now() time.Time { return f.o.Now() }

// demandAt returns the total demand multiple at t into the run.
func (o *Options) demandAt(t time.Duration) float64 {
	d := o.Demand
	for _, s := range o.Steps {
		if t >= s.At {
			d = s.Demand
		}
	}
	return d
}

// demand returns Envoy i's request rate on each bucket at t.
func (f *fleet) demand(i int, t time.Duration) float64 {
	return f.o.demandAt(t) * f.o.Limit * f.weight[i]
}

// Run runs the fleet against the nodes for the duration and returns what
// it saw. The Envoys' randomness all comes from Seed.
func Run(ctx context.Context, o Options) (*Result, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	f := &fleet{o: o, nodes: o.Nodes, weight: Zipf(o.Envoys, o.Zipf)}
	for _, b := range o.Buckets {
		f.ids = append(f.ids, &rlqsv3.BucketId{Bucket: b})
	}
	for _, n := range o.Nodes {
		c, err := o.Dial(n)
		if err != nil {
			f.closeConns()
			return nil, fmt.Errorf("quotasim: dial %s: %w", n, err)
		}
		f.conns = append(f.conns, c)
	}
	defer f.closeConns()

	seeds := rand.New(rand.NewPCG(o.Seed, 0x9e3779b97f4a7c15))
	envoys := make([]*envoy, o.Envoys)
	for i := range envoys {
		e := &envoy{id: i, fl: f, rng: rand.New(rand.NewPCG(seeds.Uint64(), seeds.Uint64())),
			node: i % len(o.Nodes), rec: newEnvoyRecord(o.Duration)}
		for range o.Buckets {
			e.buckets = append(e.buckets, NewBucket(o.Settings))
		}
		envoys[i] = e
	}
	rctx, cancel := context.WithTimeout(ctx, o.Duration)
	defer cancel()
	f.start = o.Now()
	var wg sync.WaitGroup
	for _, e := range envoys {
		wg.Go(func() { e.run(rctx) })
	}
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, "quota-sim: %d envoys on %s for %v, reports every %v\n",
			o.Envoys, strings.Join(o.Nodes, ","), o.Duration, o.ReportInterval)
	}
	wg.Wait()
	end := o.Now()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return analyze(&o, f, envoys, end.Sub(f.start)), nil
}

func (f *fleet) closeConns() {
	for _, c := range f.conns {
		_ = c.Close()
	}
}
