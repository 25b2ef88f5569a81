package quota

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/levee-dev/levee/limiter"
)

// envoyBucket models the token bucket of Envoy's rate_limit_quota filter,
// independently of the package: it refills continuously at tokensPerFill
// per fill interval up to maxTokens, and an assignment whose token bucket
// differs in any field replaces it with a new one that starts full.
type envoyBucket struct {
	perFill, max uint64
	fill         time.Duration
	tokens       float64
	at           time.Duration
	set          bool
}

func (b *envoyBucket) assign(now time.Duration, perFill, max uint64, fill time.Duration) (replaced bool) {
	if b.set && b.perFill == perFill && b.max == max && b.fill == fill {
		return false
	}
	replaced = b.set
	*b = envoyBucket{perFill: perFill, max: max, fill: fill, tokens: float64(max), at: now, set: true}
	return replaced
}

func (b *envoyBucket) refill(now time.Duration) {
	rate := float64(b.perFill) / b.fill.Seconds()
	b.tokens = math.Min(float64(b.max), b.tokens+rate*(now-b.at).Seconds())
	b.at = now
}

func (b *envoyBucket) take(now time.Duration) bool {
	if !b.set {
		return true // no assignment yet: Envoy's no-assignment behaviour allows
	}
	b.refill(now)
	if b.tokens >= 1 {
		b.tokens--
		return true
	}
	return false
}

// fleetRun is the outcome of simulateFleet after its warm-up.
type fleetRun struct {
	total  float64 // admitted / (limit × time)
	under  float64 // least admitted / offered of the clients under the level
	pushes int     // assignments that replaced a bucket
}

// simulateFleet runs clients with Poisson demands (requests per second)
// against one Allocator for rounds report intervals of every, each client
// reporting what it was offered, and its Envoy applying every grant as
// Envoy does (a changed bucket starts full). The first warm rounds are not
// counted.
func simulateFleet(t *testing.T, l limiter.Limit, demands []float64, every time.Duration, rounds, warm int, seed uint64) fleetRun {
	t.Helper()
	return simulateSteps(t, l, [][]float64{demands}, every, rounds, warm, seed)
}

// simulateSteps is simulateFleet with the demands stepping from each of
// phases to the next at an equal part of the rounds; only the last phase,
// after its first warm rounds, is counted.
func simulateSteps(t *testing.T, l limiter.Limit, phases [][]float64, every time.Duration, rounds, warm int, seed uint64) fleetRun {
	t.Helper()
	demands := phases[0]
	per := rounds / len(phases)
	warm += per * (len(phases) - 1)
	rng := rand.New(rand.NewPCG(seed, 1))
	a := NewAllocator(time.Minute)
	n := len(demands)
	buckets := make([]envoyBucket, n)
	next := make([]time.Duration, n)
	offered := make([]float64, n)
	admitted := make([]float64, n)
	for i := range next {
		next[i] = time.Duration(rng.ExpFloat64() / demands[i] * float64(time.Second))
	}
	ds := make([]Demand, n)
	for i := range ds {
		ds[i] = Demand{ID: uint64(i), Rate: Unknown}
	}
	t0 := time.Unix(1000, 0)
	limitRate := float64(l.Rate) / l.Period.Seconds()
	var run fleetRun
	var counted float64
	for r := 0; r < rounds; r++ {
		now := time.Duration(r) * every
		if k := min(r/per, len(phases)-1); &phases[k][0] != &demands[0] {
			// The new demands start at once: draw every client's next
			// arrival again (the exponential has no memory).
			demands = phases[k]
			for i := range next {
				next[i] = now + time.Duration(rng.ExpFloat64()/demands[i]*float64(time.Second))
			}
		}
		g := a.Report(t0.Add(now), 1, l, "n", ds, nil)
		for i := range buckets {
			tok := g.Tokens[i]
			if buckets[i].assign(now, tok, MaxTokens(l, g.Pool, tok, g.FillInterval, ds[i].Rate), g.FillInterval) && r >= warm {
				run.pushes++
			}
		}
		end := now + every
		for i := range buckets {
			var off, adm float64
			for next[i] < end {
				off++
				if buckets[i].take(next[i]) {
					adm++
				}
				next[i] += time.Duration(rng.ExpFloat64() / demands[i] * float64(time.Second))
			}
			ds[i].Rate = off / every.Seconds()
			ds[i].Noise = math.Sqrt(max(off, 1)) / every.Seconds()
			if r >= warm {
				offered[i] += off
				admitted[i] += adm
			}
		}
		if r >= warm {
			counted += every.Seconds()
		}
	}
	var sum float64
	for _, v := range admitted {
		sum += v
	}
	run.total = sum / (limitRate * counted)
	// The level: max-min over the true demands.
	shares := MaxMin(limitRate, demands, nil, nil)
	run.under = math.Inf(1)
	for i, d := range demands {
		if d <= shares[i]*(1+1e-9) {
			run.under = math.Min(run.under, admitted[i]/offered[i])
		}
	}
	return run
}

// zipf returns n demands of Zipf exponent s adding up to total.
func zipf(n int, s, total float64) []float64 {
	ds := make([]float64, n)
	var sum float64
	for i := range ds {
		ds[i] = 1 / math.Pow(float64(i+1), s)
		sum += ds[i]
	}
	for i := range ds {
		ds[i] *= total / sum
	}
	return ds
}

// TestFleetResets runs fleets like the acceptance runs of the quota
// service through Envoy's token buckets: whatever the reassignments, the
// total admitted stays within 5% of the limit and the clients under the
// level get their demand.
func TestFleetResets(t *testing.T) {
	for _, tc := range []struct {
		name  string
		l     limiter.Limit
		n     int
		every time.Duration
	}{
		{"200/s 8 clients 1s reports", limiter.Limit{Rate: 200, Period: time.Second}, 8, time.Second},
		{"1000/s 20 clients 5s reports", limiter.Limit{Rate: 1000, Period: time.Second}, 20, 5 * time.Second},
		{"1000/s 20 clients 1s reports", limiter.Limit{Rate: 1000, Period: time.Second}, 20, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rate := float64(tc.l.Rate)
			for seed := uint64(1); seed <= 3; seed++ {
				rounds := int(120 * time.Second / tc.every)
				run := simulateFleet(t, tc.l, zipf(tc.n, 1.1, 3*rate), tc.every, rounds, 3, seed)
				t.Logf("seed %d: total %.3f L, clients under the level %.3f of demand, %d pushes", seed, run.total, run.under, run.pushes)
				if run.total < 0.95 || run.total > 1.05 {
					t.Errorf("seed %d: total admitted %.3f of the limit, want 0.95–1.05", seed, run.total)
				}
				if run.under < 0.98 {
					t.Errorf("seed %d: a client under the level got %.3f of its demand, want ≥ 0.98", seed, run.under)
				}
			}
		})
	}
}

// TestFleetSteps: after the demand steps (3× the limit to 1.5× and back),
// the fleet is within the same bounds from the second report on.
func TestFleetSteps(t *testing.T) {
	l := limiter.Limit{Rate: 1000, Period: time.Second}
	for _, tc := range []struct {
		name     string
		from, to float64
		every    time.Duration
	}{
		{"3x to 1.5x, 5s reports", 3, 1.5, 5 * time.Second},
		{"1.5x to 3x, 5s reports", 1.5, 3, 5 * time.Second},
		{"3x to 1.5x, 1s reports", 3, 1.5, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for seed := uint64(1); seed <= 5; seed++ {
				rounds := int(120 * time.Second / tc.every)
				run := simulateSteps(t, l, [][]float64{zipf(20, 1.1, tc.from*1000), zipf(20, 1.1, tc.to*1000)}, tc.every, rounds, 2, seed)
				t.Logf("seed %d: total %.3f L, clients under the level %.3f of demand, %d pushes", seed, run.total, run.under, run.pushes)
				if run.total < 0.95 || run.total > 1.05 {
					t.Errorf("seed %d: total admitted %.3f of the limit, want 0.95–1.05", seed, run.total)
				}
				if run.under < 0.98 {
					t.Errorf("seed %d: a client under the level got %.3f of its demand, want ≥ 0.98", seed, run.under)
				}
			}
		})
	}
}
