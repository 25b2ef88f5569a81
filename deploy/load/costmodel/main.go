// Command costmodel fits levee's cost of forwarding to measurements of
// clusters of several sizes and extrapolates it to large fleets:
//
//	for n in 3 6 9; do NODES=$n RESULTS=results.jsonl deploy/load/cluster-load.sh; done
//	go run ./deploy/load/costmodel -results results.jsonl
//
// The CPU of a forwarded decision is Item + Batch/b (see Model), b the
// decisions one peer RPC carries, which a simulation of the batching rule
// predicts from the rate at which one node forwards to one peer. On a fleet
// of N nodes each taking the same load per node, a node forwards (N-1)/N
// of its decisions over N-1 peers, so each peer's share falls as 1/N and
// batches thin out; the model says how far, and what keeps a forwarded
// decision within a bound (2x a local decision by default) at the same
// batch window (the latency budget): decisions answered locally from
// leases, or ownership restricted to a subset of the nodes.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sort"
	"time"
)

func main() {
	results := flag.String("results", "", "JSON lines written by cluster-load.sh with RESULTS= (one per cluster size)")
	window := flag.Duration("window", 500*time.Microsecond, "the batch window (--batch-window) the measurements ran with")
	fleetWindow := flag.Duration("fleet-window", 500*time.Microsecond, "the batch window of the fleet predicted")
	load := flag.Float64("load", 0, "decisions per second each node of the fleet takes (0: what node 1 took in the smallest cluster measured)")
	keys := flag.Int("keys", 10000, "distinct keys the load is spread over")
	zipf := flag.Float64("zipf", 0, "Zipf exponent of the keys' popularity (0: uniform)")
	hotRate := flag.Float64("hot-rate", 320, "forwarded decisions per second per key from one node above which the node leases its tokens (levee: 64 tokens in two 100 ms lease periods)")
	bound := flag.Float64("bound", 2, "the bound on a forwarded decision's CPU, in local decisions")
	warm := flag.Duration("warm", 0, "the fleet's warm lease period (--warm-lease; 0: none): predicts the CPU of a decision on a key another node owns, forwarded or answered from a lease")
	capacity := flag.Float64("capacity", 1_000_000, "tokens each key's bucket holds (a node leases at most capacity / (4 x nodes) of a key)")
	seed := flag.Uint64("seed", 1, "seed of the batch simulation")
	flag.Parse()
	if *results == "" {
		fmt.Fprintln(os.Stderr, "costmodel: -results is required")
		os.Exit(2)
	}
	f, err := os.Open(*results)
	if err != nil {
		fmt.Fprintln(os.Stderr, "costmodel:", err)
		os.Exit(1)
	}
	defer f.Close()
	ms, err := read(f)
	if err != nil {
		fmt.Fprintln(os.Stderr, "costmodel:", err)
		os.Exit(1)
	}
	// The runs with leases only give the cost of a decision from a lease
	// (reportWarm).
	if err := report(os.Stdout, withoutLeases(ms), *window, *fleetWindow, *load, *keys, *zipf, *hotRate, *bound, *seed); err != nil {
		fmt.Fprintln(os.Stderr, "costmodel:", err)
		os.Exit(1)
	}
	if *warm <= 0 {
		return
	}
	if err := reportWarm(os.Stdout, ms, *window, *fleetWindow, *load, *keys, *zipf, *warm, *capacity, *bound, *seed); err != nil {
		fmt.Fprintln(os.Stderr, "costmodel:", err)
		os.Exit(1)
	}
}

// read parses JSON lines of measurements, sorted by cluster size.
func read(r io.Reader) ([]Measurement, error) {
	var ms []Measurement
	sc := bufio.NewScanner(r)
	for line := 1; sc.Scan(); line++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var m Measurement
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		if m.Nodes < 2 {
			return nil, fmt.Errorf("line %d: %d nodes: a cluster has 2 at least", line, m.Nodes)
		}
		ms = append(ms, m)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	sort.SliceStable(ms, func(i, j int) bool { return ms[i].Nodes < ms[j].Nodes })
	return ms, nil
}

func report(w io.Writer, ms []Measurement, window, fleetWindow time.Duration, load float64, keys int, zipf, hotRate, bound float64, seed uint64) error {
	m, err := Fit(ms, window, seed)
	if err != nil {
		return err
	}
	rng := func() *rand.Rand { return rand.New(rand.NewPCG(seed, 2)) }
	fmt.Fprintf(w, "fit: local decision %.1f us; forwarded decision = %.1f us + %.1f us / (decisions per peer RPC); "+
		"a batch with company stays open %v (batch window %v), and is in flight %v\n\n",
		m.Local, m.Item, m.Batch, m.Window.Round(time.Microsecond), window, m.RTT.Round(time.Microsecond))
	fmt.Fprintln(w, "| nodes | forwarded/s to one peer | batch measured | batch simulated | cpu/forwarded measured | model | x local | load average |")
	fmt.Fprintln(w, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, x := range ms {
		perPeer := x.FwdPerS / float64(x.Nodes-1)
		b := batchSize(perPeer, m.Window, m.RTT, rng())
		fmt.Fprintf(w, "| %d | %.0f | %.2f | %.2f | %.1f us | %.1f us | %.2f | %.1f |\n",
			x.Nodes, perPeer, x.Batch, b, x.FwdCPU, m.CPU(x.Batch), x.FwdCPU/x.SingleCPU, x.LoadAverage)
	}
	if load == 0 {
		x := ms[0]
		load = x.FwdPerS * float64(x.Nodes) / float64(x.Nodes-1)
	}
	local := ZipfShare(keys, zipf, load, hotRate)
	m = m.Scaled(window, fleetWindow)
	fmt.Fprintf(w, "\nfleet: %.0f decisions/s per node over %d keys (zipf %.2f), batch window %v: %.1f%% of decisions on keys hot enough to lease\n\n",
		load, keys, zipf, fleetWindow, 100*local)
	fmt.Fprintln(w, "| nodes | forwarded/s to one peer | decisions per peer RPC | cpu/forwarded | x local |")
	fmt.Fprintln(w, "| ---: | ---: | ---: | ---: | ---: |")
	for _, n := range []int{3, 6, 9, 30, 100} {
		p := m.Predict(n, 0, load, local, rng())
		fmt.Fprintf(w, "| %d | %.0f | %.2f | %.1f us | %.2f |\n", n, p.PerPeer, p.Batch, p.CPU, p.Ratio)
	}

	// What keeps 100 nodes within the bound at the same window.
	fmt.Fprintf(w, "\nat 100 nodes, for a forwarded decision within %.1fx a local one at the same %v window:\n", bound, fleetWindow)
	need := m.Batch / (bound*m.Local - m.Item)
	if bound*m.Local <= m.Item {
		fmt.Fprintf(w, "- no batch size suffices: a forwarded decision's own cost, %.1f us, is already over the bound\n", m.Item)
		return nil
	}
	at100 := m.Predict(100, 0, load, local, rng())
	fmt.Fprintf(w, "- a peer RPC must carry %.1f decisions on average (it carries %.2f): a window of about %v at %.0f decisions/s to each peer\n",
		need, at100.Batch, time.Duration(max(need-1, 0)/max(at100.PerPeer, 1e-9)*float64(time.Second)).Round(time.Millisecond), at100.PerPeer)
	fmt.Fprintf(w, "- or a peer RPC must cost at most %.0f us on both nodes (it costs %.0f us)\n", (bound*m.Local-m.Item)*at100.Batch, m.Batch)
	for owners := 99; owners >= 2; owners-- {
		p := m.Predict(100, owners, load, local, rng())
		if p.Ratio <= bound {
			fmt.Fprintf(w, "- ownership restricted to %d of the 100 nodes: each owner gets %.0f forwarded decisions/s from each node, %.2f per RPC: %.1f us = %.2fx (each owner decides %.0f/s for the fleet)\n",
				owners, p.PerPeer, p.Batch, p.CPU, p.Ratio, 100*load*(1-local)/float64(owners))
			break
		}
		if owners == 2 {
			fmt.Fprintln(w, "- no subset of owners suffices at this load")
		}
	}
	for share := local; share < 1; share += 0.01 {
		p := m.Predict(100, 0, load, share, rng())
		// Decisions answered from a lease cost about a local decision.
		blend := share + (1-share)*p.Ratio
		if blend <= bound {
			fmt.Fprintf(w, "- or %.0f%% of decisions answered from leases (keys warm enough to lease): %.2fx on average\n", 100*share, blend)
			break
		}
	}
	return nil
}

// reportWarm predicts, for fleets with warm leases of period warm, the CPU
// of a decision on a key another node owns: answered from a lease at the
// cost measured in the runs with leases, or forwarded, over a stream
// thinned by the leases, at the model's cost.
func reportWarm(w io.Writer, ms []Measurement, window, fleetWindow time.Duration, load float64, keys int, zipf float64, warm time.Duration, capacity, bound float64, seed uint64) error {
	plain := withoutLeases(ms)
	var leased []float64
	m, err := Fit(plain, window, seed)
	if err != nil {
		return err
	}
	for _, x := range ms {
		if c, ok := x.LeasedCost(m.CPU(x.Batch)); ok {
			leased = append(leased, c)
		}
	}
	cost, source := m.Local, "a local decision's (no run with leases given)"
	if len(leased) > 0 {
		cost, source = median(leased), fmt.Sprintf("median of %d runs with leases", len(leased))
	}
	if load == 0 {
		x := plain[0]
		load = x.FwdPerS * float64(x.Nodes) / float64(x.Nodes-1)
	}
	m = m.Scaled(window, fleetWindow)
	rng := func() *rand.Rand { return rand.New(rand.NewPCG(seed, 3)) }
	fmt.Fprintf(w, "\nwarm leases of %v, %.0f decisions/s per node over %d keys (zipf %.2f), %.0f tokens a bucket; "+
		"a decision from a lease costs %.1f us = %.2fx local (%s):\n\n", warm, load, keys, zipf, capacity, cost, cost/m.Local, source)
	fmt.Fprintln(w, "| nodes | answered from leases | forwarded/s to one peer | decisions per peer RPC | cpu/forwarded | cpu/remote-owned decision | x local |")
	fmt.Fprintln(w, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, n := range []int{3, 6, 9, 30, 100} {
		share := WarmShare(keys, zipf, load, warm, capacity/float64(4*n))
		p := m.Predict(n, 0, load, share, rng())
		remote := share*cost + (1-share)*p.CPU
		mark := ""
		if n == 100 && remote/m.Local > bound {
			mark = fmt.Sprintf(" (over the %.1fx bound)", bound)
		}
		fmt.Fprintf(w, "| %d | %.1f%% | %.0f | %.2f | %.1f us | %.1f us | %.2f%s |\n", n, 100*share, p.PerPeer, p.Batch, p.CPU, remote, remote/m.Local, mark)
	}
	return nil
}
