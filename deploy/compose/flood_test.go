//go:build docker

package compose

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
)

var (
	floodKeys   = flag.Int("flood.keys", 10_000_000, "distinct keys the flood sends the memory-limited node")
	measureKeys = flag.Int("flood.measure-keys", 1_000_000, "keys held when bytes per key are measured")
)

// The memory-limited node of docker-compose.yaml (service levee-flood).
const (
	floodMemLimit = 256 << 20
	floodMaxKeys  = 1_000_000
)

// floodBatch is the items of one flood call: levee.v1 takes up to 1,000.
const floodBatch = 1000

// TestMemoryFlood measures a node's memory per bucket at the process level,
// then floods the memory-limited node (256 MiB, --max-keys 1,000,000) with
// distinct keys while a prober checks that it keeps answering, and checks
// that the kernel never killed it.
func TestMemoryFlood(t *testing.T) {
	requireDocker(t)
	c := &floodRun{t: t}

	// 1. Bytes per key: a standalone node with no memory limit, as a
	// process: RSS and live heap with no keys, then with measureKeys.
	bare := c.start("bare", nil, "--max-keys", strconv.Itoa(2**measureKeys))
	rss0, heap0 := bare.rss(), bare.liveHeap()
	bare.flood(0, *measureKeys, nil)
	keys := bare.metric("levee_store_keys")
	rss1, heap1 := bare.rss(), bare.liveHeap()
	t.Logf("no memory limit (GOGC=400): %.0f keys held; RSS %.1f → %.1f MB, live heap %.1f → %.1f MB: %.0f B/key RSS, %.0f B/key live heap",
		keys, mb(rss0), mb(rss1), mb(heap0), mb(heap1), float64(rss1-rss0)/keys, float64(heap1-heap0)/keys)
	bare.stop()

	// 2. The memory-limited node under a flood of floodKeys keys.
	node := c.start("limited", []string{"--memory", strconv.Itoa(floodMemLimit), "--memory-swap", strconv.Itoa(floodMemLimit)},
		"--max-keys", strconv.Itoa(floodMaxKeys))
	soft := node.softLimit()
	ctx, cancel := context.WithCancel(context.Background())
	probe := node.probe(ctx)
	var rssMax, rssLateMax atomic.Int64
	sampled := make(chan struct{})
	var flooded atomic.Int64
	go func() {
		defer close(sampled)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			r := node.rss()
			rssMax.Store(max(rssMax.Load(), r))
			if flooded.Load() > int64(*floodKeys/2) {
				rssLateMax.Store(max(rssLateMax.Load(), r))
			}
		}
	}()
	start := time.Now()
	node.flood(0, *floodKeys, &flooded)
	took := time.Since(start)
	held := node.metric("levee_store_keys")
	evicted := node.metric("levee_store_evictions_total")
	heap := node.liveHeap()
	cancel()
	<-sampled
	pr := probe.wait()

	oom, restarts, state := node.inspect()
	cgMax := node.cgroupMaxUsage()
	t.Logf("memory-limited node (%d MiB, --max-keys %d, Go soft limit %.1f MB): %d keys flooded in %.0f s (%.0f keys/s); held %.0f, evicted %.0f; RSS max %.1f MB, in the flood's second half %.1f MB; cgroup max usage %.1f MB; live heap after %.1f MB; OOMKilled %v, restarts %d, state %s",
		floodMemLimit>>20, floodMaxKeys, mb(soft), *floodKeys, took.Seconds(), float64(*floodKeys)/took.Seconds(),
		held, evicted, mb(rssMax.Load()), mb(rssLateMax.Load()), mb(cgMax), mb(heap), oom, restarts, state)
	t.Logf("prober during the flood: %d calls, %d errors %v, p50 %v, p99 %v, max %v",
		pr.calls, pr.errors, pr.codes, pr.p50, pr.p99, pr.max)
	if oom || restarts > 0 || state != "running" {
		t.Errorf("the memory-limited node was killed: OOMKilled %v, restarts %d, state %s", oom, restarts, state)
	}
	if pr.errors > 0 {
		t.Errorf("the prober saw %d errors during the flood (target 0): %v", pr.errors, pr.codes)
	}
	if held > floodMaxKeys*1.01 {
		t.Errorf("the node holds %.0f keys, over --max-keys %d", held, floodMaxKeys)
	}
	if rssMax.Load() >= floodMemLimit {
		t.Errorf("RSS reached %.1f MB, the container's limit", mb(rssMax.Load()))
	}
}

func mb(b int64) float64 { return float64(b) / 1e6 }

type floodRun struct {
	t *testing.T
}

// floodNode is one levee container of the flood test: a standalone node
// with gRPC and metrics (and the profiler) published on loopback.
type floodNode struct {
	t       *testing.T
	id      string
	grpc    string
	metrics string
	c       *client
}

// start runs a standalone levee container with extra docker run flags and
// serve flags, and waits until it serves.
func (r *floodRun) start(name string, dockerFlags []string, serveFlags ...string) *floodNode {
	t := r.t
	g, m := freePort(t), freePort(t)
	args := []string{"run", "-d", "--name", fmt.Sprintf("leveeflood%d-%s", os.Getpid(), name),
		"-p", fmt.Sprintf("127.0.0.1:%d:8081", g), "-p", fmt.Sprintf("127.0.0.1:%d:9090", m)}
	args = append(args, dockerFlags...)
	args = append(args, "levee:"+*imageTag, "serve", "--standalone", "--pprof")
	args = append(args, serveFlags...)
	id, err := docker(args...)
	if err != nil {
		t.Fatal(err)
	}
	n := &floodNode{t: t, id: id, grpc: fmt.Sprintf("127.0.0.1:%d", g), metrics: fmt.Sprintf("127.0.0.1:%d", m)}
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := docker("logs", "--tail", "30", id)
			t.Logf("logs of %s:\n%s", name, out)
		}
		if !*keep {
			_, _ = docker("rm", "-f", "-v", id)
		}
	})
	if n.c, err = newClient([]string{n.grpc}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.c.close)
	deadline := time.Now().Add(60 * time.Second)
	for !n.c.serving(0) {
		if time.Now().After(deadline) {
			t.Fatalf("levee %s not serving", name)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return n
}

func (n *floodNode) stop() { _, _ = docker("rm", "-f", "-v", n.id) }

// rss reads the node's resident set from /proc on the host (the
// container's process is a process of the host's kernel).
func (n *floodNode) rss() int64 {
	pid, err := docker("inspect", "-f", "{{.State.Pid}}", n.id)
	if err != nil {
		return 0
	}
	f, err := os.Open("/proc/" + pid + "/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// cgroupMaxUsage is the container's peak memory as its cgroup counts it
// (cgroup v1; 0 where it cannot be read).
func (n *floodNode) cgroupMaxUsage() int64 {
	for _, p := range []string{
		"/sys/fs/cgroup/memory/docker/" + n.id + "/memory.max_usage_in_bytes",
		"/sys/fs/cgroup/system.slice/docker-" + n.id + ".scope/memory.peak",
	} {
		if b, err := os.ReadFile(p); err == nil {
			v, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			return v
		}
	}
	return 0
}

// liveHeap is the heap in use after a collection, from the profiler.
func (n *floodNode) liveHeap() int64 {
	body := n.get("/debug/pprof/heap?debug=1&gc=1")
	m := regexp.MustCompile(`# HeapAlloc = (\d+)`).FindStringSubmatch(body)
	if m == nil {
		n.t.Errorf("no HeapAlloc in the heap profile")
		return 0
	}
	v, _ := strconv.ParseInt(m[1], 10, 64)
	return v
}

func (n *floodNode) get(path string) string {
	resp, err := http.Get("http://" + n.metrics + path)
	if err != nil {
		n.t.Errorf("GET %s: %v", path, err)
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func (n *floodNode) metric(name string) float64 {
	for _, line := range strings.Split(n.get("/metrics"), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// softLimit is the Go memory limit the node logged at start.
func (n *floodNode) softLimit() int64 {
	// docker logs writes the container's stderr, levee's log, to its own.
	out, err := exec.Command("docker", "logs", n.id).CombinedOutput()
	if err != nil {
		n.t.Fatalf("docker logs: %v", err)
	}
	m := regexp.MustCompile(`soft_limit_bytes=(\d+)`).FindSubmatch(out)
	if m == nil {
		n.t.Fatalf("no Go memory limit in the log:\n%s", out)
	}
	v, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return v
}

func (n *floodNode) inspect() (oom bool, restarts int, state string) {
	out, err := docker("inspect", "-f", "{{.State.OOMKilled}} {{.RestartCount}} {{.State.Status}}", n.id)
	if err != nil {
		n.t.Fatal(err)
	}
	f := strings.Fields(out)
	restarts, _ = strconv.Atoi(f[1])
	return f[0] == "true", restarts, f[2]
}

// flood sends keys [from, from+count) as inline limits (one token per
// hour, so every bucket stays in the store) in batches of floodBatch, on
// four streams of calls.
func (n *floodNode) flood(from, count int, done *atomic.Int64) {
	var next atomic.Int64
	next.Store(int64(from))
	end := int64(from + count)
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			items := make([]*leveev1.CheckItem, floodBatch)
			period := durationpb.New(time.Hour)
			for {
				lo := next.Add(floodBatch) - floodBatch
				if lo >= end {
					return
				}
				hi := min(lo+floodBatch, end)
				items = items[:hi-lo]
				for i := range items {
					items[i] = &leveev1.CheckItem{Target: &leveev1.CheckItem_Inline{Inline: &leveev1.InlineLimit{
						Key: "flood-" + strconv.FormatInt(lo+int64(i), 36), Limit: 1, Period: period}}}
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := n.c.native[0].Check(ctx, &leveev1.CheckRequest{Items: items})
				cancel()
				if err != nil {
					failed.Add(1)
				}
				if done != nil {
					done.Add(hi - lo)
				}
			}
		}()
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		n.t.Errorf("%d flood calls failed", f)
	}
}

type probeResult struct {
	calls, errors int
	codes         map[string]int
	p50, p99, max time.Duration
}

type prober struct {
	done chan probeResult
}

// probe checks one ordinary key every 50 ms until ctx ends: does the node
// keep answering while it is flooded?
func (n *floodNode) probe(ctx context.Context) *prober {
	p := &prober{done: make(chan probeResult, 1)}
	go func() {
		res := probeResult{codes: map[string]int{}}
		var lat []time.Duration
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		b := inline{key: "probe", limit: 1_000_000, period: time.Second}
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				slices.Sort(lat)
				if len(lat) > 0 {
					res.p50 = lat[len(lat)/2].Round(time.Millisecond)
					res.p99 = lat[len(lat)*99/100].Round(time.Millisecond)
					res.max = lat[len(lat)-1].Round(time.Millisecond)
				}
				p.done <- res
				return
			case <-tick.C:
			}
			cctx, cancel := context.WithTimeout(context.Background(), callTimeout)
			start := time.Now()
			_, _, err := n.c.check(cctx, 0, b, 1)
			lat = append(lat, time.Since(start))
			cancel()
			res.calls++
			if err != nil {
				res.errors++
				res.codes[status.Code(err).String()]++
			}
		}
	}()
	return p
}

func (p *prober) wait() probeResult { return <-p.done }
