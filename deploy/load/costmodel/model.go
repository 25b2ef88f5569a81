package main

import (
	"errors"
	"math"
	"math/rand/v2"
	"sort"
	"time"
)

// Measurement is one cluster-load.sh run (its RESULTS line): medians over
// its rounds.
type Measurement struct {
	Nodes       int     `json:"nodes"`
	SingleCPU   float64 `json:"single_cpu_us"` // CPU of one single-node decision, µs
	FwdCPU      float64 `json:"fwd_cpu_us"`    // CPU of one forwarded decision, both nodes, µs
	Batch       float64 `json:"batch"`         // forwarded decisions per peer RPC
	FwdPerS     float64 `json:"fwd_per_s"`     // decisions node 1 forwarded per second
	SingleP99   float64 `json:"single_p99_ms"`
	ClusterP99  float64 `json:"cluster_p99_ms"`
	LoadAverage float64 `json:"load"`
	// With leases (--warm-lease): CPU of one decision on a key another
	// node owns, forwarded or decided from a lease, both nodes, µs; and
	// the share of those decided from leases.
	RemoteCPU   float64 `json:"remote_cpu_us"`
	LeasedShare float64 `json:"leased_share"`
}

// withoutLeases returns the runs made without leases: the forwarding
// model is fitted to those alone.
func withoutLeases(ms []Measurement) []Measurement {
	var plain []Measurement
	for _, x := range ms {
		if x.LeasedShare == 0 {
			plain = append(plain, x)
		}
	}
	return plain
}

// LeasedCost is the CPU of a decision answered from a lease (renewals
// included), from a run with leases: what is left of its CPU per
// remote-owned decision once the forwarded ones are charged fwd each
// (the model's cost at that run's batch size). It reports false for a run
// without leases.
func (x Measurement) LeasedCost(fwd float64) (float64, bool) {
	if x.LeasedShare <= 0 || x.RemoteCPU <= 0 {
		return 0, false
	}
	return (x.RemoteCPU - (1-x.LeasedShare)*fwd) / x.LeasedShare, true
}

// Model is the CPU of a forwarded decision as a function of how many
// decisions share its peer RPC:
//
//	cpu(b) = Item + Batch/b
//
// Item is what every forwarded decision costs on both nodes (the
// client-facing call, routing, its share of encoding and of the owner's
// work); Batch is what one peer RPC costs on both nodes whatever it
// carries (the stream message, its system calls and thread wake-ups on
// each side). The batch size b follows from each peer's arrival rate
// through the batching rule (see batchSize), with RTT the time a batch is
// in flight.
type Model struct {
	Local float64 // CPU of a local decision, µs
	Item  float64 // µs per forwarded decision
	Batch float64 // µs per peer RPC
	// Window is how long a batch with company stays open: fitted, as a
	// multiple of the batch window the measurements ran with (timers that
	// fire late on a busy machine lengthen it). RTT is the fitted time a
	// batch is in flight.
	Window time.Duration
	RTT    time.Duration
}

// Scaled returns m for a batch window of window instead of measured, the
// one the fit's measurements ran with, keeping the fitted stretch.
func (m Model) Scaled(measured, window time.Duration) Model {
	m.Window = time.Duration(float64(m.Window) * float64(window) / float64(measured))
	return m
}

// CPU is the model's CPU per forwarded decision at batch size b.
func (m Model) CPU(b float64) float64 { return m.Item + m.Batch/max(b, 1) }

// Fit fits a model to measurements at several cluster sizes, made with
// batch window window: Item and Batch by least squares of the CPU per
// forwarded decision against 1/b, and the effective window and time in
// flight as those whose simulated batch sizes come closest (in relative
// error) to those measured at each size's per-peer rate.
func Fit(ms []Measurement, window time.Duration, seed uint64) (Model, error) {
	if len(ms) < 2 {
		return Model{}, errors.New("costmodel: need measurements at two cluster sizes at least")
	}
	var locals []float64
	var sx, sy, sxx, sxy float64
	for _, x := range ms {
		locals = append(locals, x.SingleCPU)
		inv := 1 / max(x.Batch, 1)
		sx += inv
		sy += x.FwdCPU
		sxx += inv * inv
		sxy += inv * x.FwdCPU
	}
	n := float64(len(ms))
	den := n*sxx - sx*sx
	if den == 0 {
		return Model{}, errors.New("costmodel: every measurement has the same batch size: nothing to fit the per-RPC cost to")
	}
	m := Model{Local: median(locals), Window: window}
	m.Batch = (n*sxy - sx*sy) / den
	m.Item = (sy - m.Batch*sx) / n
	// The effective window and the time in flight: a grid, the smallest
	// relative error between simulated and measured batch sizes.
	best := math.Inf(1)
	for rtt := 50 * time.Microsecond; rtt <= 20*time.Millisecond; rtt = rtt * 6 / 5 {
		for f := 0.5; f <= 8; f *= 1.25 {
			win := time.Duration(float64(window) * f)
			e := 0.0
			for _, x := range ms {
				b := batchSize(x.FwdPerS/float64(x.Nodes-1), win, rtt, rand.New(rand.NewPCG(seed, 1)))
				e += math.Pow(math.Log(b/max(x.Batch, 1)), 2)
			}
			if e < best {
				best, m.RTT, m.Window = e, rtt, win
			}
		}
	}
	return m, nil
}

// batchSize simulates one peer's batches under levee's batching rule and
// returns the mean number of operations per batch. Operations arrive as a
// Poisson stream of rate per second. The first operation for an idle peer
// opens a batch; the batch waits the window when it has company (a batch
// in flight, or a last batch of several operations) and leaves at once
// otherwise; a batch is in flight for rtt. Randomness comes from rng.
func batchSize(rate float64, window, rtt time.Duration, rng *rand.Rand) float64 {
	if rate <= 0 {
		return 1
	}
	const batches = 4000
	w, r := window.Seconds(), rtt.Seconds()
	t := 0.0
	next := func() { t += rng.ExpFloat64() / rate }
	var flying []float64 // times the batches in flight land
	last, ops := 0, 0
	for range batches {
		next() // the operation that opens the batch
		open := t
		for len(flying) > 0 && flying[0] <= open {
			flying = flying[1:]
		}
		wait := 0.0
		if len(flying) > 0 || last > 1 {
			wait = w
		}
		size := 1
		for {
			before := t
			next()
			if t-open > wait {
				t = before // that operation opens the next batch
				break
			}
			size++
		}
		flying = append(flying, open+wait+r)
		last = size
		ops += size
		// The operation that did not fit arrives after the close.
		t = max(t, open+wait)
	}
	return float64(ops) / batches
}

// Prediction is the model at one cluster size.
type Prediction struct {
	Nodes   int
	PerPeer float64 // forwarded decisions per second one node sends one peer
	Batch   float64 // decisions per peer RPC
	CPU     float64 // µs per forwarded decision
	Ratio   float64 // CPU / local decision
}

// Predict is the model for a fleet of nodes nodes in which every node takes
// load decisions per second and a share local of them are decided where
// they arrive without the owner (leases, cached refusals); of the rest, a
// node owns 1/nodes and forwards the others, spread evenly over the other
// nodes. owners, when positive and below nodes, restricts ownership to
// that many nodes: every other node forwards all it does not decide
// locally, spread over the owners only.
func (m Model) Predict(nodes, owners int, load, local float64, rng *rand.Rand) Prediction {
	perPeer := load * (1 - local) / float64(nodes)
	if owners > 0 && owners < nodes {
		perPeer = load * (1 - local) / float64(owners)
	}
	b := batchSize(perPeer, m.Window, m.RTT, rng)
	cpu := m.CPU(b)
	return Prediction{Nodes: nodes, PerPeer: perPeer, Batch: b, CPU: cpu, Ratio: cpu / m.Local}
}

// ZipfShare is the share of a node's decisions on keys hot enough to lease
// (at least hotRate forwarded per second from this node), among keys keys
// drawn with Zipf exponent s (0: uniform) at load decisions per second.
func ZipfShare(keys int, s, load, hotRate float64) float64 {
	share := 0.0
	for _, p := range popularity(keys, s) {
		if p*load >= hotRate {
			share += p
		}
	}
	return share
}

// popularity is each of keys keys' share of the decisions, drawn with
// Zipf exponent s (0: uniform).
func popularity(keys int, s float64) []float64 {
	w := make([]float64, keys)
	total := 0.0
	for i := range w {
		w[i] = 1 / math.Pow(float64(i+1), s)
		total += w[i]
	}
	for i := range w {
		w[i] /= total
	}
	return w
}

// WarmShare is the share of a node's decisions answered from warm leases
// when each lease lasts period and holds at most share tokens, among keys
// keys drawn with Zipf exponent s (0: uniform) at load decisions per
// second. It assumes the worst for renewals (none rides in another
// batch): each lease starts with a forwarded check and lapses, so a key
// checked u times a lease, u = min(rate × period, share), is forwarded
// once in u + 1.
func WarmShare(keys int, s, load float64, period time.Duration, share float64) float64 {
	local := 0.0
	for _, p := range popularity(keys, s) {
		u := min(p*load*period.Seconds(), share)
		local += p * u / (u + 1)
	}
	return local
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
