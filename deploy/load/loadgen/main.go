// Command loadgen loads a rate limit service with Envoy's ShouldRateLimit
// from many concurrent callers, each giving up after a timeout as Envoy's
// rate limit filter does, and reports the decisions answered in time:
//
//	go run ./deploy/load/loadgen -addr 127.0.0.1:8081 -c 2000 -timeout 20ms -d 10s
//
// It does what ghz does for overload.sh with a fraction of ghz's CPU per
// call (requests built once, generated stubs rather than dynamic messages),
// so that a generator on one core can overload a node on a share of
// another: ghz on one core cannot send and read a call within 20 ms at
// 2,000 concurrent, even against a server that does nothing. Each caller
// sends its next call when its last is answered or given up (closed loop,
// as ghz -c). The report is one JSON object: calls by gRPC code, the OK
// calls per second and their latency quantiles.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// Report is what one run measured.
type Report struct {
	Seconds  float64        `json:"seconds"`
	Codes    map[string]int `json:"codes"`
	OK       int            `json:"ok"`
	OKPerSec float64        `json:"ok_per_s"`
	P50ms    float64        `json:"p50_ms"`
	P99ms    float64        `json:"p99_ms"`
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8081", "the rate limit service")
	conc := flag.Int("c", 50, "concurrent callers")
	timeout := flag.Duration("timeout", 0, "each call's timeout (0: none)")
	dur := flag.Duration("d", 10*time.Second, "how long to load, after the warm-up")
	warmup := flag.Duration("warmup", 0, "load not counted, before the measured run")
	conns := flag.Int("conns", 1, "gRPC connections, callers spread over them")
	domain := flag.String("domain", "bench", "domain of the requests")
	keys := flag.Int("keys", 10000, "distinct values of the descriptor user=u<n>")
	seed := flag.Uint64("seed", 1, "seed of the keys' order")
	flag.Parse()
	if *conc < 1 || *conns < 1 || *keys < 1 || *dur <= 0 {
		fmt.Fprintln(os.Stderr, "loadgen: -c, -conns, -keys and -d must be positive")
		os.Exit(2)
	}
	rep, err := run(*addr, *conc, *conns, *keys, *seed, *domain, *timeout, *warmup, *dur)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
	if err := json.NewEncoder(os.Stdout).Encode(rep); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

// caller is one caller's tally; each caller owns one, so counting takes no
// lock.
type caller struct {
	codes map[string]int
	okLat []time.Duration
}

func run(addr string, conc, conns, keys int, seed uint64, domain string, timeout, warmup, dur time.Duration) (Report, error) {
	clients := make([]rlsv3.RateLimitServiceClient, conns)
	for i := range clients {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return Report{}, fmt.Errorf("dialing %s: %w", addr, err)
		}
		defer cc.Close()
		clients[i] = rlsv3.NewRateLimitServiceClient(cc)
	}
	reqs := make([]*rlsv3.RateLimitRequest, keys)
	for i := range reqs {
		reqs[i] = &rlsv3.RateLimitRequest{Domain: domain, Descriptors: []*ratelimitv3.RateLimitDescriptor{{
			Entries: []*ratelimitv3.RateLimitDescriptor_Entry{{Key: "user", Value: fmt.Sprintf("u%d", i)}},
		}}}
	}
	start := time.Now()
	measureFrom, end := start.Add(warmup), start.Add(warmup+dur)
	callers := make([]caller, conc)
	var wg sync.WaitGroup
	for i := range callers {
		c := &callers[i]
		c.codes = make(map[string]int)
		client := clients[i%conns]
		rng := rand.New(rand.NewPCG(seed, uint64(i)))
		wg.Go(func() {
			for {
				sent := time.Now()
				if !sent.Before(end) {
					return
				}
				ctx, cancel := context.Background(), context.CancelFunc(func() {})
				if timeout > 0 {
					ctx, cancel = context.WithTimeout(ctx, timeout)
				}
				_, err := client.ShouldRateLimit(ctx, reqs[rng.IntN(keys)])
				cancel()
				if sent.Before(measureFrom) {
					continue
				}
				lat := time.Since(sent)
				if time.Now().After(end) && err != nil {
					continue // cut short by the end of the run, as ghz's
				}
				code := status.Code(err).String()
				c.codes[code]++
				if err == nil {
					c.okLat = append(c.okLat, lat)
				}
			}
		})
	}
	wg.Wait()
	rep := Report{Seconds: dur.Seconds(), Codes: make(map[string]int)}
	var lat []time.Duration
	for _, c := range callers {
		for k, v := range c.codes {
			rep.Codes[k] += v
		}
		lat = append(lat, c.okLat...)
	}
	slices.Sort(lat)
	rep.OK = len(lat)
	rep.OKPerSec = float64(len(lat)) / dur.Seconds()
	if len(lat) > 0 {
		rep.P50ms = float64(lat[len(lat)/2]) / 1e6
		rep.P99ms = float64(lat[min(len(lat)-1, len(lat)*99/100)]) / 1e6
	}
	return rep, nil
}
