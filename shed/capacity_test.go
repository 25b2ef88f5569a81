package shed

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestThroughputTargetReadings(t *testing.T) {
	tick := 100 * time.Millisecond
	tt := throughputTarget{headroom: 0.1, memory: 30 * time.Second}
	now := t0
	// pressed: the gate was full all tick.
	step := func(arrived, exempt, completed uint64, pressed bool) Reading {
		now = now.Add(tick)
		g := gateReading{all: arrived, exempt: exempt, completed: completed, interval: tick}
		if pressed {
			g.full, g.fullDone = tick, completed
		}
		tt.observe(now, g, 0)
		return tt.read(now)
	}
	// No capacity measured yet: no opinion, however much arrives.
	for range 5 {
		if r := step(500, 500, 50, false); r != (Reading{}) {
			t.Fatalf("before any pressed tick: %+v, want no reading", r)
		}
	}
	// Pressed ticks measure 1,000/s: the target is 900/s.
	for range 3 {
		step(100, 0, 100, true)
	}
	if c := tt.capacity; math.Abs(c-1000) > 1e-9 {
		t.Fatalf("capacity %v, want 1000", c)
	}
	// The capacity is the rate while full, not the tick's: a tick full
	// for 40 ms in which 40 of 70 completions fell leaves it at 1,000/s.
	now = now.Add(tick)
	tt.observe(now, gateReading{all: 70, completed: 70, full: 40 * time.Millisecond, fullDone: 40, interval: tick}, 0)
	if c := tt.capacity; math.Abs(c-1000) > 1e-9 {
		t.Fatalf("after a partly full tick: capacity %v, want 1000", c)
	}
	// A tick full all along that served at under a quarter of it is a
	// stall, left out.
	now = now.Add(tick)
	tt.observe(now, gateReading{all: 70, completed: 20, full: tick, fullDone: 20, interval: tick}, 0)
	if c := tt.capacity; math.Abs(c-1000) > 1e-9 {
		t.Fatalf("after a stalled tick: capacity %v, want 1000", c)
	}
	// A tick full for less than minFull says nothing.
	now = now.Add(tick)
	tt.observe(now, gateReading{all: 70, completed: 70, full: time.Millisecond, fullDone: 5, interval: tick}, 0)
	if c := tt.capacity; math.Abs(c-1000) > 1e-9 {
		t.Fatalf("after a tick full for 1 ms: capacity %v, want 1000", c)
	}
	tt.reset()
	// Just after a move the threshold holds while the rate is measured.
	if r := step(150, 120, 100, false); r != (Reading{Saturated: true}) {
		t.Fatalf("first tick after a reset: %+v, want a hold", r)
	}
	step(150, 120, 100, false)
	// 1,500/s let through, 1,200/s of it past the gate, against 900/s:
	// overloaded, shed 40% of what the threshold lets through.
	r := step(150, 120, 100, false)
	if !r.Overloaded || math.Abs(r.Excess-0.4) > 1e-9 || r.Critical {
		t.Fatalf("at 1,500/s with 1,200/s exempt: %+v, want overloaded with excess 0.4", r)
	}
	// The same 1,500/s all at the marginal priority: the gate holds the
	// queue, the threshold holds.
	tt.reset()
	for range 5 {
		r = step(150, 0, 100, false)
	}
	if r != (Reading{Saturated: true}) {
		t.Fatalf("at 1,500/s, none exempt: %+v, want a hold", r)
	}
	// At the target: hold.
	tt.reset()
	for range 20 {
		r = step(90, 45, 100, false)
	}
	if r != (Reading{Saturated: true}) {
		t.Fatalf("at the target: %+v, want a hold", r)
	}
	// At 600/s: room for half as much again.
	tt.reset()
	for range 20 {
		r = step(60, 30, 60, false)
	}
	if r.Overloaded || r.Saturated || math.Abs(r.Room-0.5) > 1e-9 {
		t.Fatalf("at 600/s: %+v, want room 0.5", r)
	}
	// Demand falls from the target to 450/s: the decayed rate is still
	// near the target for seconds (it would say room for ~15%), the last
	// three ticks say room for all of it again.
	tt.reset()
	for range 40 {
		step(90, 45, 90, false)
	}
	step(45, 20, 45, false)
	step(45, 20, 45, false)
	if r = step(45, 20, 45, false); r.Overloaded || r.Saturated || math.Abs(r.Room-1) > 1e-9 {
		t.Fatalf("three ticks after demand fell to half the target: %+v, want room 1", r)
	}
	// ... and when it stops altogether.
	tt.reset()
	for range 40 {
		step(90, 45, 90, false)
	}
	step(0, 0, 0, false)
	step(0, 0, 0, false)
	if r = step(0, 0, 0, false); r.Room != 1 {
		t.Fatalf("three ticks after demand stopped: %+v, want room 1", r)
	}
	// A fall by less than a third is left to the decayed rate.
	tt.reset()
	for range 40 {
		step(90, 45, 90, false)
	}
	for range 3 {
		r = step(72, 36, 72, false)
	}
	if r.Room > 0.2 {
		t.Fatalf("three ticks after demand fell by a fifth: %+v, want at most the decayed rate's room", r)
	}
	// A gate that refuses while serving about the measured capacity keeps
	// the measurement alive past the memory; one that does not, does not.
	for range 400 { // 40 s
		now = now.Add(tick)
		tt.observe(now, gateReading{all: 120, exempt: 50, completed: 95, refused: 10, interval: tick}, 0)
	}
	if r := tt.read(now); r == (Reading{}) {
		t.Fatalf("capacity forgotten while the gate kept refusing at capacity")
	}
	// A capacity older than the memory is forgotten.
	now = now.Add(31 * time.Second)
	if r := step(150, 150, 100, false); r != (Reading{}) {
		t.Fatalf("after the memory: %+v, want no reading", r)
	}
}

func TestThroughputTargetReadsASurgeAtOnce(t *testing.T) {
	tt := throughputTarget{headroom: 0.1, memory: time.Minute}
	now := t0
	for range 3 {
		now = now.Add(tick)
		tt.observe(now, gateReading{all: 100, completed: 100, full: tick, fullDone: 100, interval: tick}, 0) // 1,000/s
	}
	tt.reset() // a move: the surge is read on the ticks after it
	// The first tick after the move: 200 arrive, 160 of them past the
	// gate, against a target of 90: a surge, shed at once on this tick.
	now = now.Add(tick)
	tt.observe(now, gateReading{all: 200, exempt: 160, completed: 100, interval: tick}, 40)
	r := tt.read(now)
	if !r.Overloaded || !r.Fit || math.Abs(r.Excess-0.55) > 1e-9 || r.Critical {
		t.Fatalf("160 of 200 past the gate against 90: %+v, want a fitted excess of 0.55", r)
	}
	// Critical demand alone past the target as clearly opens the band.
	tt.reset()
	now = now.Add(tick)
	tt.observe(now, gateReading{all: 300, exempt: 200, completed: 100, interval: tick}, 150)
	if r := tt.read(now); !r.Fit || !r.Critical {
		t.Fatalf("critical demand 150 against 90: %+v, want a fitted excess with Critical", r)
	}
	// 110 against 90 is not a surge: the first tick after a move holds.
	tt.reset()
	now = now.Add(tick)
	tt.observe(now, gateReading{all: 130, exempt: 110, completed: 100, interval: tick}, 30)
	if r := tt.read(now); r != (Reading{Saturated: true}) {
		t.Fatalf("110 past the gate against 90, one tick after a move: %+v, want a hold", r)
	}
}

func TestThroughputTargetToleratesNoise(t *testing.T) {
	// Arrivals at the target, all of them exempt from the gate, and just
	// over it with half of them exempt (the gate's to trim: a hold), read
	// every tick for 10 minutes: Poisson, and Poisson around a mean that
	// itself varies by ±10% from tick to tick (real traffic is burstier
	// than Poisson). Noise alone must almost never read as overload or
	// room.
	for _, c := range []struct {
		name              string
		load, swing, part float64
	}{{"poisson at the target", 1, 0, 1}, {"bursty at the target", 1, 0.1, 1}, {"bursty at 1.05 of it", 1.05, 0.1, 0.5}} {
		t.Run(c.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, 2))
			tick := 100 * time.Millisecond
			tt := throughputTarget{headroom: 0.1, memory: time.Hour}
			now := t0
			tt.observe(now, gateReading{all: 100, completed: 100, full: tick, fullDone: 100, interval: tick}, 0) // capacity 1,000/s
			moves := 0
			for range 6000 {
				now = now.Add(tick)
				n := poisson(rng, 90*c.load*(1+c.swing*(2*rng.Float64()-1)))
				tt.observe(now, gateReading{all: n, exempt: uint64(c.part * float64(n)), completed: 90, interval: tick}, 0)
				if r := tt.read(now); r.Overloaded || r.Room > 0 {
					moves++
					tt.reset() // a move starts the count afresh, as Resource does
				}
			}
			t.Logf("%d moves in 10 minutes", moves)
			if moves > 30 { // at most one move every 20 s
				t.Fatalf("%d moves in 10 minutes of steady load", moves)
			}
		})
	}
}

func TestThroughputTargetMeasuresSlowResources(t *testing.T) {
	// A resource that serves 30 requests a second, its gate always full:
	// the capacity is trusted once 100 requests were served while full,
	// however slowly they came.
	tick := 100 * time.Millisecond
	tt := throughputTarget{headroom: 0.1, memory: 30 * time.Second}
	now := t0
	for i := range 60 {
		now = now.Add(tick)
		tt.observe(now, gateReading{all: 3, completed: 3, full: tick, fullDone: 3, interval: tick}, 0)
		if known := tt.known(now) > 0; known != (i >= 33) {
			t.Fatalf("after %d served while full: trusted %v, want %v", 3*(i+1), known, i >= 33)
		}
	}
	if c := tt.known(now); math.Abs(c-30) > 1e-9 {
		t.Fatalf("capacity %v, want 30", c)
	}
	// A full time longer than the tick (a clock that stepped) counts as
	// the tick.
	now = now.Add(tick)
	tt.observe(now, gateReading{all: 3, completed: 3, full: time.Hour, fullDone: 3, interval: tick}, 0)
	if c := tt.known(now); math.Abs(c-30) > 1e-9 {
		t.Fatalf("after a tick claiming an hour of full time: capacity %v, want 30", c)
	}
}

// poisson draws a Poisson count with mean m (m small enough for the product
// method).
func poisson(rng *rand.Rand, m float64) uint64 {
	l, k, p := math.Exp(-m), uint64(0), 1.0
	for {
		p *= rng.Float64()
		if p <= l {
			return k
		}
		k++
	}
}

// TestSimulationStepSettles drives a whole Resource in fake time (sim: one
// FIFO worker, exponential service, mean 1 ms, μ = 1,000/s; Poisson
// arrivals of four priorities at 25% each, 100 ms deadlines), demand
// stepping from 0.7μ to 1.4μ and back three times, for forty seeds (120
// steps). The threshold settles (the acceptance it implies within ±5 points
// of its final value for 1 s) within 2 s of at least 90% of the steps,
// within 3 s of at least 95%, and within the phase (8 s) of all; while
// demand is high the worker serves at least 75% of its capacity, and what
// is admitted from the second second on waits at most half its deadline
// (p99); after each step down everything is readmitted within 3 s;
// critical is never refused.
//
// The settle times are a distribution: a noisy queue sometimes warrants a
// late correction of a few points, so a handful of seeds cannot say whether
// a change made settling faster or slower; forty can.
func TestSimulationStepSettles(t *testing.T) {
	const seeds = 40
	var within2, within3, steps int
	for seed := range uint64(seeds) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			for _, d := range simulateSteps(t, seed) {
				steps++
				if d <= 2*time.Second {
					within2++
				}
				if d <= 3*time.Second {
					within3++
				}
			}
		})
	}
	t.Logf("settled within 2 s after %d of %d steps, within 3 s after %d", within2, steps, within3)
	if float64(within2) < 0.9*float64(steps) || float64(within3) < 0.95*float64(steps) {
		t.Errorf("settled within 2 s after %d of %d steps (want 90%%), within 3 s after %d (want 95%%)", within2, steps, within3)
	}
}

// simulateSteps runs one seed and returns how long the threshold took to
// settle after each step up.
func simulateSteps(t *testing.T, seed uint64) []time.Duration {
	const (
		phase  = 8 * time.Second
		phases = 6 // low, high, low, high, low, high
	)
	var load []simPhase
	for ph := range phases {
		rate := 0.7
		if ph%2 == 1 {
			rate = 1.4
		}
		load = append(load, simPhase{phase, quarters(rate)})
	}
	s := newSim(t, seed, Config{})
	s.run(load...)
	if st := s.stats(Critical, 0, s.duration); st.refused > 0 {
		t.Fatalf("%d critical requests refused", st.refused)
	}
	// acceptance implied by a threshold: each priority is a quarter of the
	// traffic, each cohort 1/128 of it.
	acc := func(l Level) float64 {
		shed := 0.0
		for _, p := range []Priority{Critical, High, Low, Sheddable} {
			lo := LevelOf(p, 0)
			shed += 0.25 * min(max(float64(l)-float64(lo), 0), NumCohorts) / NumCohorts
		}
		return 1 - shed
	}
	var settles []time.Duration
	for ph := 1; ph < phases; ph += 2 {
		start, stop := time.Duration(ph)*phase, time.Duration(ph+1)*phase
		var tail []float64
		for _, tk := range s.ticks {
			if tk.at >= stop-3*time.Second && tk.at < stop {
				tail = append(tail, acc(tk.st.Threshold))
			}
		}
		slices.Sort(tail)
		final := tail[len(tail)/2]
		settled := time.Duration(-1)
		var since time.Duration = -1
		for _, tk := range s.ticks {
			if tk.at < start || tk.at >= stop {
				continue
			}
			if math.Abs(acc(tk.st.Threshold)-final) > 0.05 {
				since = -1
				continue
			}
			if since < 0 {
				since = tk.at
			}
			if tk.at-since >= time.Second {
				settled = since - start
				break
			}
		}
		served := float64(s.stats(0, start, stop).ok) / phase.Seconds()
		p99 := pct(s.stats(0, start+time.Second, stop).lat, 0.99)
		t.Logf("step %d: final acceptance %.2f, settled after %v; served %.0f/s, admitted p99 %v", ph/2+1, final, settled, served, p99)
		if settled < 0 {
			t.Errorf("step %d: threshold never settled in the phase", ph/2+1)
			settled = phase
		}
		settles = append(settles, settled)
		if served < 0.75*simMu {
			t.Errorf("step %d: served %.0f/s over the phase, want at least 750/s (no collapse)", ph/2+1, served)
		}
		if p99 > simDeadline/2 {
			t.Errorf("step %d: admitted p99 %v from its second second, want at most half the deadline", ph/2+1, p99)
		}
		// After the step down, everything is readmitted within 3 s.
		for _, tk := range s.ticks {
			if tk.at >= stop+3*time.Second && tk.at < stop+phase && tk.st.Threshold != 0 {
				t.Errorf("step %d: threshold %v at %v, %v after demand fell to 0.7μ", ph/2+1, tk.st.Threshold, tk.at, tk.at-stop)
				break
			}
		}
	}
	return settles
}

// TestSimulationStallDoesNotEmptyPriorities drives a Resource in fake time
// (one FIFO worker, exponential 1 ms service, four priorities at 25% each,
// 0.8μ offered, 100 ms deadlines, work whose caller gave up is dropped)
// through a stall: for a second or two the worker completes nothing, then
// it serves as before. A stall says nothing about which priorities fit:
// the threshold must never shed critical traffic, and must be back to 0
// within 3 s of the stall's end.
func TestSimulationStallDoesNotEmptyPriorities(t *testing.T) {
	for _, stall := range []time.Duration{time.Second, 2 * time.Second} {
		t.Run(fmt.Sprint("stall ", stall), func(t *testing.T) {
			s := newSim(t, 7, Config{})
			stallFrom := 10 * time.Second
			stallTo := stallFrom + stall
			s.stalls = []span{{stallFrom, stallTo}}
			s.run(simPhase{stallTo + 8*time.Second, quarters(0.8)})
			var (
				maxTh  Level
				zeroAt time.Duration = -1
			)
			for _, tk := range s.ticks {
				th := tk.st.Threshold
				maxTh = max(maxTh, th)
				if tk.at >= stallTo && th == 0 && zeroAt < 0 {
					zeroAt = tk.at - stallTo
				} else if th != 0 {
					zeroAt = -1
				}
			}
			t.Logf("highest threshold %v; back to 0 %v after the stall", maxTh, zeroAt)
			if maxTh >= CriticalOnly {
				t.Errorf("a %v stall raised the threshold to %v, into critical", stall, maxTh)
			}
			if zeroAt < 0 || zeroAt > 3*time.Second {
				t.Errorf("threshold back to 0 %v after the stall, want within 3 s", zeroAt)
			}
		})
	}
}
