package main

import (
	"bytes"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// TestFitRecoversTheModel: measurements made by a known model (batch sizes
// from the simulation, CPU from Item + Batch/b) are fitted back to it.
func TestFitRecoversTheModel(t *testing.T) {
	want := Model{Local: 25, Item: 31, Batch: 150, Window: 500 * time.Microsecond, RTT: time.Millisecond}
	var ms []Measurement
	for _, n := range []int{3, 6, 9} {
		perPeer := 9000.0 / float64(n)
		b := batchSize(perPeer, want.Window, want.RTT, rand.New(rand.NewPCG(7, 1)))
		ms = append(ms, Measurement{Nodes: n, SingleCPU: want.Local, FwdCPU: want.CPU(b), Batch: b, FwdPerS: perPeer * float64(n-1)})
	}
	got, err := Fit(ms, want.Window, 7)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(got.Item-want.Item) > 0.01 || math.Abs(got.Batch-want.Batch) > 0.01 || got.Local != want.Local {
		t.Fatalf("fitted %+v, want %+v", got, want)
	}
	// The simulation's batch sizes are the fit's only evidence of the
	// times: they must come back close, whichever pair of times does it.
	for _, x := range ms {
		b := batchSize(x.FwdPerS/float64(x.Nodes-1), got.Window, got.RTT, rand.New(rand.NewPCG(7, 1)))
		if math.Abs(math.Log(b/x.Batch)) > 0.1 {
			t.Fatalf("%d nodes: fitted times (open %v, in flight %v) give %.2f per batch, measured %.2f", x.Nodes, got.Window, got.RTT, b, x.Batch)
		}
	}
	if _, err := Fit(ms[:1], want.Window, 7); err == nil {
		t.Fatal("fitted one cluster size")
	}
}

// TestBatchSize: the simulated batching rule. A peer whose operations never
// meet sends one per batch; batches grow with the rate, and with company
// a batch holds at least what arrives within the window.
func TestBatchSize(t *testing.T) {
	rng := func() *rand.Rand { return rand.New(rand.NewPCG(1, 1)) }
	w, r := 500*time.Microsecond, 300*time.Microsecond
	if b := batchSize(0, w, r, rng()); b != 1 {
		t.Fatalf("no traffic: %v per batch", b)
	}
	if b := batchSize(1, w, r, rng()); b > 1.01 {
		t.Fatalf("one operation a second: %v per batch, want 1", b)
	}
	prev := 1.0
	for _, rate := range []float64{100, 1000, 5000, 20000, 100000} {
		b := batchSize(rate, w, r, rng())
		if b < prev {
			t.Fatalf("rate %v: %v per batch, fewer than at a lower rate (%v)", rate, b, prev)
		}
		prev = b
	}
	if b := batchSize(100000, w, r, rng()); b < 100000*w.Seconds() {
		t.Fatalf("100,000/s with a 500 us window: %v per batch, want at least %v", b, 100000*w.Seconds())
	}
}

func TestZipfShare(t *testing.T) {
	if s := ZipfShare(10000, 0, 10000, 320); s != 0 {
		t.Fatalf("uniform keys at 1/s each: %v leased", s)
	}
	if s := ZipfShare(10, 0, 10000, 320); s < 0.999 {
		t.Fatalf("10 keys at 1000/s each: %v leased, want all", s)
	}
	if s := ZipfShare(10000, 1.1, 10000, 320); s <= 0 || s >= 1 {
		t.Fatalf("zipf 1.1: %v leased, want some", s)
	}
}

// TestReport: the program reads cluster-load.sh's lines and writes its
// tables.
func TestReport(t *testing.T) {
	in := `{"nodes": 6, "single_cpu_us": 25, "fwd_cpu_us": 70, "batch": 3.1, "fwd_per_s": 6000, "load": 2.5}
{"nodes": 3, "single_cpu_us": 25, "fwd_cpu_us": 55, "batch": 7.5, "fwd_per_s": 6500, "load": 2.1}

{"nodes": 9, "single_cpu_us": 26, "fwd_cpu_us": 80, "batch": 2.2, "fwd_per_s": 6100, "load": 2.7}
`
	ms, err := read(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 3 || ms[0].Nodes != 3 || ms[2].Nodes != 9 {
		t.Fatalf("read %+v", ms)
	}
	var out bytes.Buffer
	if err := report(&out, ms, 500*time.Microsecond, 500*time.Microsecond, 0, 10000, 0, 320, 2, 1); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| 100 |", "| 30 |", "at 100 nodes", "fit: local decision 25.0 us"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("report lacks %q:\n%s", want, out.String())
		}
	}
	if _, err := read(strings.NewReader(`{"nodes": 1}`)); err == nil {
		t.Fatal("read a one-node cluster")
	}
}

// TestWarmShare: with uniform keys each checked u times a lease, one check
// in u + 1 is forwarded; the lease's share of the bucket caps u; no lease
// period, no leases; and a skewed key distribution, whose popular keys
// fill their leases, answers more from leases than a uniform one.
func TestWarmShare(t *testing.T) {
	// 1,000 keys at 2,000/s: 2 checks a second each, 10 s leases: u = 20.
	if got, want := WarmShare(1000, 0, 2000, 10*time.Second, 1e9), 20.0/21; math.Abs(got-want) > 1e-9 {
		t.Fatalf("uniform: %v answered from leases, want %v", got, want)
	}
	if got, want := WarmShare(1000, 0, 2000, 10*time.Second, 4), 4.0/5; math.Abs(got-want) > 1e-9 {
		t.Fatalf("capped at 4 tokens a lease: %v, want %v", got, want)
	}
	if got := WarmShare(1000, 0, 2000, 0, 1e9); got != 0 {
		t.Fatalf("no lease period: %v", got)
	}
	if u, z := WarmShare(10000, 0, 1000, time.Second, 1e9), WarmShare(10000, 1.1, 1000, time.Second, 1e9); z <= u {
		t.Fatalf("zipf 1.1 answers %v from leases, uniform %v: want more", z, u)
	}
}

// TestLeasedCost: a run with leases whose remote-owned decisions cost a
// known blend gives back the leased decision's cost; a run without leases
// gives none.
func TestLeasedCost(t *testing.T) {
	x := Measurement{RemoteCPU: 0.9*20 + 0.1*100, LeasedShare: 0.9}
	if c, ok := x.LeasedCost(100); !ok || math.Abs(c-20) > 1e-9 {
		t.Fatalf("leased cost %v, %v; want 20", c, ok)
	}
	if _, ok := (Measurement{RemoteCPU: 50}).LeasedCost(100); ok {
		t.Fatal("a run without leases gave a leased cost")
	}
}
