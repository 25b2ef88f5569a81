//go:build unix

package peer

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/levee-dev/levee/limiter"
)

// BenchmarkForwardedTake measures one forwarded bucket operation: node 0
// decides keys owned by node 1 over real gRPC on loopback, from 8 or 50
// concurrent callers, so that batches fill as they do on a busy node.
// cpu-ns/op is the process's CPU time (both nodes) per operation — the
// peer hop's share of the cluster's CPU per forwarded decision, without
// the client-facing call — and ops/batch how many operations one peer
// message carried.
func BenchmarkForwardedTake(b *testing.B) {
	for _, callers := range []int{8, 50} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) { benchmarkForwardedTake(b, callers) })
	}
}

func benchmarkForwardedTake(b *testing.B, callers int) {
	nodes := startNodes(b, 2, func(c *Config) { c.HotThreshold = -1 })
	r := nodes[0].router
	keys := make([]uint64, 1024)
	for i := range keys {
		keys[i] = keyOwnedBy(b, r.Ring(), nodes[1].member.ID, i)
	}
	lim := limiter.Limit{Rate: 1 << 30, Period: time.Second}
	// Warm the connection up outside the measurement.
	if _, err := take(b, r, limiter.Request{Key: keys[0], Limit: lim, Hits: 1}); err != nil {
		b.Fatal(err)
	}
	fwd0, bat0 := r.Stats().Forwarded.Load(), r.Stats().Batches.Load()
	cpu := takeInParallel(b, r, keys, lim, callers)
	fwd, bat := r.Stats().Forwarded.Load()-fwd0, r.Stats().Batches.Load()-bat0
	if fwd != uint64(b.N) {
		b.Fatalf("%d operations forwarded for %d takes", fwd, b.N)
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(fwd)/float64(max(bat, 1)), "ops/batch")
}

// BenchmarkRemoteTake measures a decision on a key another node owns with
// warm leases, against one on a key this node owns, in the same run: node
// 0 decides 1,024 keys owned by node 1 (remote) or by itself (owned), from
// 50 concurrent callers. cpu-ns/op is the process's CPU (both nodes) per
// decision, and local% the share of remote decisions answered from leases.
func BenchmarkRemoteTake(b *testing.B) {
	for _, owned := range []bool{true, false} {
		name := "remote"
		if owned {
			name = "owned"
		}
		b.Run(name, func(b *testing.B) { benchmarkRemoteTake(b, owned) })
	}
}

func benchmarkRemoteTake(b *testing.B, owned bool) {
	nodes := startNodes(b, 2, func(c *Config) { c.WarmLease = 10 * time.Second })
	r := nodes[0].router
	owner := nodes[1].member.ID
	if owned {
		owner = nodes[0].member.ID
	}
	keys := make([]uint64, 1024)
	for i := range keys {
		keys[i] = keyOwnedBy(b, r.Ring(), owner, i)
	}
	lim := limiter.Limit{Rate: 1 << 30, Period: time.Second}
	// Every key's first two checks (the second leases), outside the
	// measurement.
	for range 2 {
		for _, k := range keys {
			if _, err := take(b, r, limiter.Request{Key: k, Limit: lim, Hits: 1}); err != nil {
				b.Fatal(err)
			}
		}
	}
	local0 := r.Stats().Local.Load()
	cpu := takeInParallel(b, r, keys, lim, 50)
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	if !owned {
		b.ReportMetric(100*float64(r.Stats().Local.Load()-local0)/float64(b.N), "local%")
	}
}

// takeInParallel takes one token of keys in turn from callers concurrent
// callers for b.N takes, failing on any refusal (lim cannot run out), and
// returns the process's CPU time over them.
func takeInParallel(b *testing.B, r *Router, keys []uint64, lim limiter.Limit, callers int) time.Duration {
	var next atomic.Uint64
	cpu0 := cpuTime(b)
	b.SetParallelism(max(1, callers/runtime.GOMAXPROCS(0)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		reqs := make([]limiter.Request, 1)
		res := make([]limiter.Result, 1)
		for pb.Next() {
			reqs[0] = limiter.Request{Key: keys[next.Add(1)%uint64(len(keys))], Limit: lim, Hits: 1}
			if err := r.Take(context.Background(), time.Now().UnixNano(), reqs, res); err != nil {
				b.Error(err)
				return
			}
			if !res[0].Allowed {
				b.Error("refused under a limit that cannot run out")
				return
			}
		}
	})
	b.StopTimer()
	return cpuTime(b) - cpu0
}

// cpuTime is the CPU time (user + system) this process has used.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
