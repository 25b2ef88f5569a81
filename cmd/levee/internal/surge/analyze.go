package surge

import (
	"cmp"
	"slices"
	"strconv"
	"time"

	"github.com/levee-dev/levee/shed"
	"github.com/levee-dev/levee/shed/shedtest"
)

// Agg aggregates the calls scheduled in a stretch of time.
type Agg struct {
	Offered   int // calls scheduled
	OK        int // answered OK before the deadline (goodput)
	Refused   int // refused by the backend's policy
	Timeout   int // deadline exceeded
	Throttled int // rejected locally by levee's client throttle
	Errors    int // anything else
	Attempts  int // attempts that left the client
	Seconds   float64
	// P50 and P99 are the latencies of the OK calls as their clients saw
	// them, from the first send to the answer (retries included).
	P50, P99 time.Duration
}

// Success is the fraction of calls answered OK (1 when none were offered).
func (a Agg) Success() float64 {
	if a.Offered == 0 {
		return 1
	}
	return float64(a.OK) / float64(a.Offered)
}

// Goodput is OK answers per second.
func (a Agg) Goodput() float64 {
	if a.Seconds <= 0 {
		return 0
	}
	return float64(a.OK) / a.Seconds
}

// OfferedRate is calls scheduled per second.
func (a Agg) OfferedRate() float64 {
	if a.Seconds <= 0 {
		return 0
	}
	return float64(a.Offered) / a.Seconds
}

// Amplification is attempts per call.
func (a Agg) Amplification() float64 {
	if a.Offered == 0 {
		return 0
	}
	return float64(a.Attempts) / float64(a.Offered)
}

// allPriorities selects every priority in Run.Agg.
const allPriorities = -1

// Agg aggregates the calls of priority prio (0 critical … 4 sheddable, or
// allPriorities) scheduled in [from, to).
func (r *PolicyRun) Agg(from, to time.Duration, prio int) Agg {
	a := Agg{Seconds: (to - from).Seconds()}
	var lat []time.Duration
	lo, _ := slices.BinarySearchFunc(r.arrivals, from, func(x arrival, t time.Duration) int { return cmp.Compare(x.at, t) })
	for i := lo; i < len(r.arrivals) && r.arrivals[i].at < to; i++ {
		if prio != allPriorities && int(r.arrivals[i].prio) != prio {
			continue
		}
		c := &r.calls[i]
		a.add(c)
		if c.out == outOK {
			lat = append(lat, c.end-c.sent)
		}
	}
	a.P50, a.P99 = quantiles(lat)
	return a
}

// admittedP99 is the 99th percentile of the latency of the calls scheduled
// in [from, to) that the policy admitted, whatever became of them: every
// call not refused or throttled, a timed-out one at the time it ended.
func (r *PolicyRun) admittedP99(from, to time.Duration) time.Duration {
	var lat []time.Duration
	lo, _ := slices.BinarySearchFunc(r.arrivals, from, func(x arrival, t time.Duration) int { return cmp.Compare(x.at, t) })
	for i := lo; i < len(r.arrivals) && r.arrivals[i].at < to; i++ {
		if c := &r.calls[i]; c.out != outRefused && c.out != outThrottled {
			lat = append(lat, c.end-c.sent)
		}
	}
	_, p99 := quantiles(lat)
	return p99
}

func (a *Agg) add(c *callResult) {
	a.Offered++
	a.Attempts += int(c.attempts)
	switch c.out {
	case outOK:
		a.OK++
	case outRefused:
		a.Refused++
	case outTimeout:
		a.Timeout++
	case outThrottled:
		a.Throttled++
	default:
		a.Errors++
	}
}

// quantiles returns the median and the 99th percentile (nearest rank).
func quantiles(d []time.Duration) (p50, p99 time.Duration) {
	if len(d) == 0 {
		return 0, 0
	}
	slices.Sort(d)
	at := func(q float64) time.Duration {
		i := int(q*float64(len(d))+0.999999) - 1
		return d[min(max(i, 0), len(d)-1)]
	}
	return at(0.5), at(0.99)
}

// Bin is one time bin of a run: calls by priority and the backend's state.
type Bin struct {
	Start time.Duration
	Prio  [shed.NumPriorities]Agg
	All   Agg
	// Backend state over the bin: the last threshold and limit seen (-1
	// threshold: no shedder state), and the most goroutines, heap and
	// queued requests.
	Threshold, Limit int
	// Capacity is the last capacity levee reported measuring (0 unknown).
	Capacity   float64
	Goroutines int
	Heap       uint64
	Queue      int
	// Served counts the requests the worker finished in the bin.
	Served uint64
	// Moves counts the moves of levee's threshold in the bin, by cause.
	Moves [shed.NumCauses]uint64
}

// Bins cuts the run into bins of width w over [0, total).
func (r *PolicyRun) Bins(w, total time.Duration) []Bin {
	n := int((total + w - 1) / w)
	bins := make([]Bin, n)
	lats := make([][shed.NumPriorities + 1][]time.Duration, n)
	for i := range bins {
		bins[i].Start = time.Duration(i) * w
		bins[i].Threshold = -1
		for p := range bins[i].Prio {
			bins[i].Prio[p].Seconds = w.Seconds()
		}
		bins[i].All.Seconds = w.Seconds()
	}
	for i, a := range r.arrivals {
		k := int(a.at / w)
		if k >= n {
			break
		}
		c := &r.calls[i]
		bins[k].Prio[a.prio].add(c)
		bins[k].All.add(c)
		if c.out == outOK {
			lats[k][a.prio] = append(lats[k][a.prio], c.end-c.sent)
			lats[k][shed.NumPriorities] = append(lats[k][shed.NumPriorities], c.end-c.sent)
		}
	}
	for k := range bins {
		for p := range bins[k].Prio {
			bins[k].Prio[p].P50, bins[k].Prio[p].P99 = quantiles(lats[k][p])
		}
		bins[k].All.P50, bins[k].All.P99 = quantiles(lats[k][shed.NumPriorities])
	}
	var prevDone uint64
	var prevMoves [shed.NumCauses]uint64
	for j, s := range r.stats {
		k := int(s.at / w)
		if k >= n {
			break
		}
		b := &bins[k]
		b.Threshold, b.Limit, b.Capacity = s.Threshold, s.Limit, s.Capacity
		b.Goroutines = max(b.Goroutines, s.Goroutines)
		b.Heap = max(b.Heap, s.HeapBytes)
		b.Queue = max(b.Queue, s.Queue)
		if j > 0 {
			b.Served += s.Done - prevDone
			for c, n := range s.Moves {
				b.Moves[c] += n - min(n, prevMoves[c])
			}
		}
		prevDone, prevMoves = s.Done, s.Moves
	}
	// Carry the shedder state into bins no poll landed in.
	for k := 1; k < n; k++ {
		if bins[k].Goroutines == 0 {
			bins[k].Threshold, bins[k].Limit, bins[k].Capacity = bins[k-1].Threshold, bins[k-1].Limit, bins[k-1].Capacity
		}
	}
	return bins
}

// statsIn returns the stats samples taken in [from, to).
func (r *PolicyRun) statsIn(from, to time.Duration) []statSample {
	var out []statSample
	for _, s := range r.stats {
		if s.at >= from && s.at < to {
			out = append(out, s)
		}
	}
	return out
}

// maxState returns the most goroutines and heap seen in [from, to).
func (r *PolicyRun) maxState(from, to time.Duration) (goroutines int, heap uint64) {
	for _, s := range r.statsIn(from, to) {
		goroutines = max(goroutines, s.Goroutines)
		heap = max(heap, s.HeapBytes)
	}
	return goroutines, heap
}

// serverRefused returns the backend's cumulative refusals of priority prio
// at the end of the run.
func (r *PolicyRun) serverRefused(prio int) uint64 {
	if len(r.stats) == 0 {
		return 0
	}
	return r.stats[len(r.stats)-1].Refused[prio]
}

// LagP99 is the 99th percentile of how late the generator sent calls
// against their schedule: a health check of the load generator.
func (r *PolicyRun) LagP99() time.Duration {
	_, p99 := quantiles(slices.Clone(r.lag))
	return p99
}

// acceptance returns, for each stats sample of the run, the fraction of the
// offered calls in [from, to) whose level the sample's threshold admits:
// the acceptance the threshold alone implies.
func (r *PolicyRun) acceptance(from, to time.Duration, salt uint64) []float64 {
	var hist [shed.NumLevels]int
	total := 0
	for _, a := range r.arrivals {
		if a.at < from || a.at >= to {
			continue
		}
		hist[levelOf(a, salt)]++
		total++
	}
	// above[l] = calls at level ≥ l.
	var above [shed.NumLevels + 1]int
	for l := shed.NumLevels - 1; l >= 0; l-- {
		above[l] = above[l+1] + hist[l]
	}
	out := make([]float64, len(r.stats))
	for i, s := range r.stats {
		t := min(max(s.Threshold, 0), shed.NumLevels)
		if total > 0 {
			out[i] = float64(above[t]) / float64(total)
		}
	}
	return out
}

func levelOf(a arrival, salt uint64) shed.Level {
	return shed.LevelOf(shed.Priority(a.prio+1), shed.Cohort(userID(a.user), salt))
}

func userID(u uint32) string { return "u" + strconv.Itoa(int(u)) }

// settleTime is how long after hs the acceptance implied by levee's
// threshold settled (shedtest.Settle); he - hs if it never did.
func settleTime(r *PolicyRun, hs, he time.Duration, salt uint64) time.Duration {
	at := make([]time.Duration, len(r.stats))
	for i, s := range r.stats {
		at[i] = s.at
	}
	return shedtest.Settle(at, r.acceptance(hs, he, salt), hs, he)
}

// acceptanceSettle is the stricter convergence time, read from the calls
// rather than the threshold: the share of offered calls that were
// admitted (not refused or throttled), in shedtest.ConvergeBin bins,
// converged with the admitted calls' p99 at most 50 ms
// (shedtest.Converged); he - hs if it never did. It also returns the
// largest relative swing of the acceptance from its final value after
// that.
func acceptanceSettle(r *PolicyRun, hs, he time.Duration) (time.Duration, float64) {
	var bins []shedtest.Bin
	for t := hs; t+shedtest.ConvergeBin <= he; t += shedtest.ConvergeBin {
		a := r.Agg(t, t+shedtest.ConvergeBin, allPriorities)
		if a.Offered > 0 {
			bins = append(bins, shedtest.Bin{At: t, Acceptance: 1 - float64(a.Refused+a.Throttled)/float64(a.Offered), P99: a.P99})
		}
	}
	return shedtest.Converged(bins, 50*time.Millisecond, hs, he)
}
