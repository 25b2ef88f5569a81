package shed

import (
	"math/rand/v2"
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const tick = 100 * time.Millisecond

func mustController(t testing.TB, cfg ControllerConfig) *Controller {
	t.Helper()
	c, err := NewController(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// offer sends demand[i] requests of priority i+1 (critical first) through
// Admit at now, spread over the cohorts, and returns what was admitted.
func offer(c *Controller, now time.Time, demand [NumPriorities]int, rot int) (admitted, refused [NumPriorities]int) {
	for i, n := range demand {
		p := Priority(i + 1)
		for k := range n {
			if c.Admit(LevelOf(p, uint8((k+rot)%NumCohorts)), now) == ReasonNone {
				admitted[i]++
			} else {
				refused[i]++
			}
		}
	}
	return admitted, refused
}

func sum(a [NumPriorities]int) int {
	s := 0
	for _, v := range a {
		s += v
	}
	return s
}

// loadReading is the signal of a server that can serve capacity requests
// per tick: overloaded when it was offered more, with the excess measured.
func loadReading(admitted [NumPriorities]int, capacity int) Reading {
	a := sum(admitted)
	if a <= capacity {
		return Reading{}
	}
	return Reading{Overloaded: true, Excess: float64(a-capacity) / float64(a), Critical: admitted[0] > capacity}
}

func TestCheckOrderingIsMonotone(t *testing.T) {
	// Whatever the threshold or pin, if a level is refused every lower
	// level is refused too: a more important request is never shed while a
	// less important one is admitted.
	c := mustController(t, ControllerConfig{})
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		c.threshold.Store(uint32(rng.IntN(NumLevels + 1)))
		if rng.IntN(2) == 0 {
			if err := c.Pin(Level(rng.IntN(NumLevels+1)), t0.Add(time.Minute)); err != nil {
				t.Fatal(err)
			}
		} else {
			c.Unpin()
		}
		refusedSeen := false
		for l := MaxLevel; ; l-- {
			ok := c.Check(l, t0) == ReasonNone
			if refusedSeen && ok {
				t.Fatalf("level %v admitted below a refused level (threshold %d)", l, c.threshold.Load())
			}
			refusedSeen = refusedSeen || !ok
			if l == 0 {
				break
			}
		}
	}
}

func TestThresholdRisesUnderOverloadAndSettles(t *testing.T) {
	c := mustController(t, ControllerConfig{})
	const capacity = 1000
	demand := [NumPriorities]int{500, 0, 0, 0, 250} // critical 0.5C, sheddable 0.25C
	now := t0
	var admittedLog []int
	moves := 0
	var lastT Level
	lastDir := 0
	for i := range 400 {
		if i == 20 {
			demand[4] = 3000 // sheddable floods at 12× its usual rate (3C)
		}
		adm, ref := offer(c, now, demand, i)
		if ref[0] > 0 {
			t.Fatalf("tick %d: %d critical requests refused", i, ref[0])
		}
		th := c.Update(now, loadReading(adm, capacity))
		if i >= 80 {
			admittedLog = append(admittedLog, sum(adm))
			if dir := cmpLevel(th, lastT); dir != 0 && dir != lastDir {
				moves++
				lastDir = dir
			}
		}
		lastT = th
		now = now.Add(tick)
	}
	// Settled: every tick after convergence admits between 85% and 105% of
	// capacity, and the threshold changes direction only on the rare probes
	// the growing hold allows (32 s of steady state).
	for i, a := range admittedLog {
		if a < capacity*85/100 || a > capacity*105/100 {
			t.Errorf("tick %d after convergence admitted %d, want within [850, 1050]", i+80, a)
		}
	}
	if moves > 8 {
		t.Errorf("threshold changed direction %d times in 32 s of steady overload, want ≤ 8", moves)
	}
	if th := c.Threshold(); th.Priority() != Sheddable {
		t.Errorf("settled threshold %v, want inside the sheddable band", th)
	}
}

func cmpLevel(a, b Level) int {
	switch {
	case a > b:
		return 1
	case a < b:
		return -1
	}
	return 0
}

func TestThresholdFallsSlowlyWhenHealthy(t *testing.T) {
	cfg := ControllerConfig{}
	c := mustController(t, cfg)
	demand := [NumPriorities]int{200, 200, 200, 200, 200}
	now := t0
	// Drive the threshold up with an overloaded signal.
	for i := range 30 {
		offer(c, now, demand, i)
		c.Update(now, Reading{Overloaded: true})
		now = now.Add(tick)
	}
	top := c.Threshold()
	if top < LevelOf(Default, 0) {
		t.Fatalf("threshold after 3 s overloaded = %v, want at least default/0", top)
	}
	raisedAt := now.Add(-tick)
	// Healthy from now on: nothing moves during the hold, then each tick
	// readmits at most 2% of the admitted traffic or one level.
	ticks := 0
	for c.Threshold() > 0 {
		adm, _ := offer(c, now, demand, ticks)
		before := c.Threshold()
		after := c.Update(now, Reading{})
		if now.Sub(raisedAt) < time.Second && after != before {
			t.Fatalf("threshold fell at %v, inside the 1 s hold after the raise", now.Sub(raisedAt))
		}
		// Each lower readmits at most 2% of the traffic admitted before it,
		// plus the one level that crosses the line.
		var readmitted, admittedHist, maxLevel uint64
		for l := range NumLevels {
			switch n := c.counts[l]; {
			case Level(l) >= before:
				admittedHist += n
			case Level(l) >= after:
				readmitted += n
				maxLevel = max(maxLevel, n)
			}
		}
		if after < before && float64(readmitted) > 0.02*float64(admittedHist)+float64(maxLevel) {
			t.Fatalf("one tick readmitted %d of %d admitted (threshold %v -> %v, admitted %d this tick)",
				readmitted, admittedHist, before, after, sum(adm))
		}
		if after > before {
			t.Fatalf("threshold rose on a healthy signal")
		}
		ticks++
		now = now.Add(tick)
		if ticks > 10000 {
			t.Fatal("threshold never returned to 0")
		}
	}
	if ticks < 30 {
		t.Errorf("threshold fell from %v to 0 in %d ticks; want a slow descent (≥ 30)", top, ticks)
	}
}

func TestSteadySignalDoesNotFlap(t *testing.T) {
	c := mustController(t, ControllerConfig{})
	demand := [NumPriorities]int{100, 100, 100, 100, 100}
	now := t0
	prev := c.Threshold()
	for i := range 200 {
		offer(c, now, demand, i)
		th := c.Update(now, Reading{Overloaded: true})
		if th < prev {
			t.Fatalf("tick %d: threshold fell from %v to %v under a steady overload", i, prev, th)
		}
		prev = th
		now = now.Add(tick)
	}
	// Without evidence that critical alone is too much, it stops at the
	// critical band.
	if prev != CriticalOnly {
		t.Fatalf("threshold under steady overload = %v, want critical/0", prev)
	}
	for i := range 200 {
		offer(c, now, demand, i)
		th := c.Update(now, Reading{Overloaded: true, Critical: true})
		if th < prev {
			t.Fatalf("tick %d: threshold fell under steady critical overload", i)
		}
		prev = th
		now = now.Add(tick)
	}
	if prev <= CriticalOnly || prev > MaxLevel {
		t.Fatalf("threshold under critical overload = %v, want inside the critical band", prev)
	}
	for i := range 2000 {
		offer(c, now, demand, i)
		th := c.Update(now, Reading{})
		if th > prev {
			t.Fatalf("tick %d: threshold rose from %v to %v on a steady healthy signal", i, prev, th)
		}
		prev = th
		now = now.Add(tick)
	}
	if prev != 0 {
		t.Fatalf("threshold after 200 s healthy = %v, want 0", prev)
	}
}

func TestHoldDoublesAfterFailedProbe(t *testing.T) {
	c := mustController(t, ControllerConfig{})
	demand := [NumPriorities]int{0, 0, 0, 0, 1280}
	now := t0
	step := func(r Reading) Level {
		offer(c, now, demand, 0)
		th := c.Update(now, r)
		now = now.Add(tick)
		return th
	}
	step(Reading{Overloaded: true}) // raise at t
	raise1 := now.Add(-tick)
	top := c.Threshold()
	for now.Sub(raise1) < time.Second {
		if step(Reading{}) != top {
			t.Fatal("threshold fell inside the 1 s hold")
		}
	}
	if step(Reading{}) >= top {
		t.Fatal("no probe (lower) after the hold")
	}
	step(Reading{Overloaded: true}) // the probe failed
	raise2 := now.Add(-tick)
	before := c.Threshold()
	for now.Sub(raise2) < 2*time.Second {
		if th := step(Reading{}); th != before {
			t.Fatalf("threshold fell %v after a failed probe; want the hold doubled to 2 s", now.Sub(raise2))
		}
	}
	for range 3 {
		step(Reading{})
	}
	if c.Threshold() >= before {
		t.Fatal("threshold did not fall after the doubled hold")
	}
}

func TestPinOverridesAndExpires(t *testing.T) {
	c := mustController(t, ControllerConfig{})
	high := LevelOf(High, 127)
	until := t0.Add(15 * time.Minute)
	if err := c.Pin(CriticalOnly, until); err != nil {
		t.Fatal(err)
	}
	if got := c.Check(high, t0); got != ReasonOverride {
		t.Fatalf("high under a critical-only pin: %v, want override", got)
	}
	if got := c.Check(CriticalOnly, t0); got != ReasonNone {
		t.Fatalf("critical under a critical-only pin: %v, want admitted", got)
	}
	// The automatic threshold is frozen while pinned.
	for i := range 50 {
		offer(c, t0, [NumPriorities]int{0, 0, 0, 0, 100}, i)
		if th := c.Update(t0.Add(time.Duration(i)*tick), Reading{Overloaded: true}); th != 0 {
			t.Fatalf("automatic threshold moved to %v under a pin", th)
		}
	}
	if got := c.Check(high, until.Add(-time.Nanosecond)); got != ReasonOverride {
		t.Fatalf("one nanosecond before expiry: %v, want override", got)
	}
	if got := c.Check(high, until); got != ReasonNone {
		t.Fatalf("at expiry: %v, want admitted (the automatic threshold is 0)", got)
	}
	if got := c.Effective(until); got != 0 {
		t.Fatalf("effective threshold at expiry = %v, want 0", got)
	}
	c.Update(until, Reading{})
	if c.pin.Load() != nil {
		t.Fatal("expired pin not cleared by Update")
	}

	// A pin at 0 is a kill switch: it admits everything whatever the
	// automatic threshold; a pin at NumLevels refuses even critical/127.
	c.threshold.Store(uint32(CriticalOnly))
	if err := c.Pin(0, until.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if got := c.Check(0, until); got != ReasonNone {
		t.Fatalf("sheddable/0 under a pin at 0: %v, want admitted", got)
	}
	if err := c.Pin(NumLevels, until.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if got := c.Check(MaxLevel, until); got != ReasonOverride {
		t.Fatalf("critical/127 under a pin at none: %v, want override", got)
	}
	c.Unpin()
	if got := c.Check(LevelOf(Low, 0), until); got != ReasonThreshold {
		t.Fatalf("after Unpin: %v, want the automatic threshold to refuse", got)
	}
	if err := c.Pin(NumLevels+1, until); err == nil {
		t.Fatal("Pin beyond NumLevels accepted")
	}
}

func TestRaiseAndLowerSteps(t *testing.T) {
	var counts [NumLevels]uint64
	for l := range 100 {
		counts[l] = 10 // 1000 requests over levels 0–99
	}
	if got := raiseStep(&counts, 0, 0.05, MaxLevel); got != 5 {
		t.Errorf("raise 5%% from 0 = %d, want 5", got)
	}
	if got := raiseStep(&counts, 0, 0.5, 30); got != 30 {
		t.Errorf("raise capped at 30 = %d, want 30", got)
	}
	if got := raiseStep(&counts, 100, 0.05, MaxLevel); got != 100 {
		t.Errorf("raise with nothing admitted = %d, want unchanged 100", got)
	}
	// A single heavy level: at least one non-empty level goes.
	var heavy [NumLevels]uint64
	heavy[200] = 1000
	heavy[300] = 1
	if got := raiseStep(&heavy, 0, 0.05, MaxLevel); got != 201 {
		t.Errorf("raise over a heavy level = %d, want 201", got)
	}
	if got := lowerStep(&counts, 50, 0.02); got != 49 {
		t.Errorf("lower 2%% from 50 = %d, want 49 (one level of 10 ≥ 2%% of 500)", got)
	}
	if got := lowerStep(&heavy, 300, 0.02); got != 200 {
		t.Errorf("lower across empty levels = %d, want 200", got)
	}
	if got := lowerStep(&heavy, 200, 0.02); got != 0 {
		t.Errorf("lower with nothing below = %d, want 0", got)
	}
}

func TestControllerConfigValidation(t *testing.T) {
	for _, cfg := range []ControllerConfig{
		{RaiseStep: 1.5}, {LowerStep: -0.1}, {Windows: 100}, {RaiseStep: 0.3, MaxRaiseStep: 0.2},
		{Hold: 2 * time.Second, MaxHold: time.Second}, {Window: -time.Second},
	} {
		if _, err := NewController(cfg); err == nil {
			t.Errorf("NewController(%+v) accepted", cfg)
		}
	}
}

func TestControllerConcurrentUse(t *testing.T) {
	// Admit from many goroutines while the owner updates; run with -race.
	c := mustController(t, ControllerConfig{})
	stop := make(chan struct{})
	done := make(chan int)
	for g := range 4 {
		go func() {
			n := 0
			for i := 0; ; i++ {
				select {
				case <-stop:
					done <- n
					return
				default:
				}
				if c.Admit(Level((i*7+g)%NumLevels), t0) == ReasonNone {
					n++
				}
			}
		}()
	}
	now := t0
	raised := false
	for i := range 50 {
		if c.Update(now, Reading{Overloaded: i%2 == 0}) > 0 {
			raised = true
		}
		if i == 25 {
			_ = c.Pin(CriticalOnly, now.Add(time.Second))
		}
		now = now.Add(tick)
		time.Sleep(time.Millisecond) // lets the admitting goroutines run between ticks; nothing is awaited
	}
	var counts [NumLevels]uint64
	total := c.hist.sum(&counts)
	close(stop)
	admitted := 0
	for range 4 {
		admitted += <-done
	}
	if total == 0 || admitted == 0 || !raised {
		t.Fatalf("histogram total %d, admitted %d, raised %v: want traffic recorded and the threshold raised", total, admitted, raised)
	}
}

// TestMarginUnfitShedsTheRestOfTheMarginalPriority: an ordinary raise sheds
// at most MaxRaiseStep and leaves the marginal priority's last cohort; a
// reading that says the more important traffic alone overloads the
// resource sheds all that is left of the marginal priority at once — and
// no more, and never critical without Reading.Critical.
func TestMarginUnfitShedsTheRestOfTheMarginalPriority(t *testing.T) {
	demand := [NumPriorities]int{256, 256, 0, 256, 256} // critical, high, low, sheddable
	now := t0
	c := mustController(t, ControllerConfig{})
	offer(c, now, demand, 0)
	if th := c.Update(now, Reading{Overloaded: true, Excess: 0.9}); th >= LevelOf(Low, 0) {
		t.Fatalf("an ordinary raise went to %v, past the sheddable band", th)
	}

	c = mustController(t, ControllerConfig{})
	offer(c, now, demand, 0)
	unfit := Reading{Overloaded: true, Excess: 0.01, MarginUnfit: true}
	if th := c.Update(now, unfit); th != LevelOf(Low, 0) {
		t.Fatalf("margin unfit from 0: threshold %v, want %v (all of sheddable, nothing of low)", th, LevelOf(Low, 0))
	}
	now = now.Add(tick)
	offer(c, now, demand, 0)
	// All of low; default, next up, carries no traffic here.
	if th := c.Update(now, unfit); th != LevelOf(Default, 0) {
		t.Fatalf("margin unfit in the low band: threshold %v, want %v", th, LevelOf(Default, 0))
	}
	now = now.Add(tick)
	offer(c, now, demand, 0)
	if th := c.Update(now, unfit); th != CriticalOnly {
		t.Fatalf("margin unfit in the high band: threshold %v, want %v", th, CriticalOnly)
	}
	now = now.Add(tick)
	offer(c, now, demand, 0)
	if th := c.Update(now, unfit); th != CriticalOnly {
		t.Fatalf("without Critical the threshold entered the critical band: %v", th)
	}
}

// TestMarginUnfitNeverEmptiesCritical: even with Reading.Critical, a
// MarginUnfit reading in the critical band raises by the capped step, not
// to the top of the band.
func TestMarginUnfitNeverEmptiesCritical(t *testing.T) {
	c := mustController(t, ControllerConfig{})
	now := t0
	demand := [NumPriorities]int{1000, 0, 0, 0, 0}
	offer(c, now, demand, 0)
	th := c.Update(now, Reading{Overloaded: true, Excess: 0.9, Critical: true, MarginUnfit: true})
	if th < CriticalOnly || th > CriticalOnly+NumCohorts/2 {
		t.Fatalf("threshold %v after one critical raise, want a capped step into the critical band", th)
	}
}

// TestSnapUp: a fitted raise that leaves the rest of a priority, at most
// snapShare of the demand it admits, sheds that rest too, measured by
// demand rather than by cohorts, and never past its ceiling.
func TestSnapUp(t *testing.T) {
	var even [NumLevels]uint64
	for l := range NumLevels {
		even[l] = 10 // ten requests a level, 1,280 a priority
	}
	low := LevelOf(Low, 0)
	for _, tc := range []struct {
		name        string
		nt, ceiling Level
		want        Level
	}{
		// 90 cohorts of sheddable are 900 of the 6,020 admitted, 14.95%.
		{"15% of what is admitted left", NumCohorts - 90, MaxLevel, low},
		{"just over 15% left", NumCohorts - 91, MaxLevel, NumCohorts - 91},
		{"three quarters of sheddable left", 32, MaxLevel, 32},
		{"on a priority's edge", low, MaxLevel, low},
		{"the ceiling inside the priority", NumCohorts - 10, NumCohorts - 5, NumCohorts - 10},
		{"the last of high, critical open", CriticalOnly - 10, MaxLevel, CriticalOnly},
		{"the last of high, critical not open", CriticalOnly - 10, CriticalOnly - 1, CriticalOnly - 10},
		{"inside critical", MaxLevel - 3, MaxLevel, MaxLevel - 3},
	} {
		if got := snapUp(&even, tc.nt, tc.ceiling); got != tc.want {
			t.Errorf("%s: snapUp(%d) = %d, want %d", tc.name, tc.nt, got, tc.want)
		}
	}
	// A flood of sheddable over critical: few cohorts of it left, but
	// most of what is admitted.
	var flood [NumLevels]uint64
	for l := range NumCohorts {
		flood[l] = 100
		flood[CriticalOnly+Level(l)] = 10
	}
	if got := snapUp(&flood, 110, MaxLevel); got != 110 {
		t.Errorf("snapUp in a flood of sheddable = %d, want 110", got)
	}
}

// TestSliverStaysShed: a sliver shed because it would not hold (the rest
// a fitted raise snapped, or what a raise for a queue took) is readmitted
// within sliverMemory only by a room that clearly holds it, by
// sliverMargin beyond its share; after that, by any room.
func TestSliverStaysShed(t *testing.T) {
	even := [NumPriorities]int{256, 256, 256, 256, 256} // two a level
	low := LevelOf(Low, 0)
	// 17.2% shed: sheddable up to cohort 110, whose rest, 2.8% of the
	// demand, is snapped.
	surge := Reading{Overloaded: true, Fit: true, Excess: 0.172 / fitGain}
	for _, queue := range []bool{false, true} {
		for _, step := range []struct {
			after time.Duration
			over  float64 // the room's excess over the sliver's share and the margin
			lower bool
		}{
			{tick, -0.02, false},
			{sliverMemory - tick, -0.02, false},
			{sliverMemory - tick, +0.02, true},
			{sliverMemory + tick, -0.02, true},
		} {
			c := mustController(t, ControllerConfig{})
			now := t0
			tickAt := func(r Reading) Level {
				offer(c, now, even, 0)
				now = now.Add(tick)
				return c.Update(now, r)
			}
			for range 3 {
				tickAt(Reading{})
			}
			th := tickAt(surge)
			if queue {
				// A room that clearly holds it readmits more than the
				// snapped rest, and a standing queue sheds it again.
				tickAt(Reading{Room: 0.15})
				th = tickAt(Reading{Overloaded: true, MarginUnfit: true})
			}
			if th != low || c.sliverFrom <= LevelOf(Sheddable, 50) || c.sliverTo != low {
				t.Fatalf("queue %v: threshold %v after the raise, sliver [%v, %v), want %v, a sliver above sheddable/50", queue, th, c.sliverFrom, c.sliverTo, low)
			}
			raised := now
			for now.Add(tick).Sub(raised) < step.after {
				tickAt(Reading{Saturated: true})
			}
			offer(c, now, even, 0)
			now = raised.Add(step.after)
			c.hist.sum(&c.counts)
			rest, above := restAbove(&c.counts, c.sliverFrom, c.sliverTo)
			room := rest/above + sliverMargin + step.over
			if th := c.Update(now, Reading{Room: room}); (th < low) != step.lower {
				t.Errorf("queue %v: room %.3f %v after the raise (the sliver %.3f of the demand above): threshold %v, want lowered %v", queue, room, step.after, rest/above, th, step.lower)
			}
		}
	}
}

// TestFitShedsAMeasuredSurgeInOneRaise: a fitted excess is shed in one
// raise (fitGain of it) on the last two ticks' demand, across priorities,
// however large; it stops at the critical band unless the reading says
// critical alone does not fit.
func TestFitShedsAMeasuredSurgeInOneRaise(t *testing.T) {
	c := mustController(t, ControllerConfig{})
	now := t0
	tickOf := func(demand [NumPriorities]int) {
		offer(c, now, demand, 0)
		now = now.Add(tick)
	}
	even := [NumPriorities]int{100, 100, 100, 100, 100}
	tickOf(even)
	c.Update(now, Reading{})
	tickOf(even)
	c.Update(now, Reading{})
	tickOf(even)
	// 87.5% measured, 70% shed: sheddable, low, default and half of high.
	th := c.Update(now, Reading{Overloaded: true, Fit: true, Excess: 0.875})
	if lo, hi := LevelOf(High, 50), LevelOf(High, 78); th < lo || th > hi {
		t.Fatalf("threshold %v after a fitted excess of 87.5%%, want about high/64", th)
	}
	if c.Marginal() != High {
		t.Fatalf("marginal %v, want high", c.Marginal())
	}
	// Critical is half the demand: all of the rest and more measured,
	// but without Critical it stops short of the band, leaving the last
	// non-critical level that saw demand, so that the gate still turns
	// on high and not on critical.
	heavy := [NumPriorities]int{400, 100, 100, 100, 100}
	tickOf(heavy)
	c.Update(now, Reading{})
	tickOf(heavy)
	if th := c.Update(now, Reading{Overloaded: true, Fit: true, Excess: 0.9}); th >= CriticalOnly || th < LevelOf(High, 64) || c.Marginal() != High {
		t.Fatalf("threshold %v (marginal %v) after a fitted excess of 90%% without Critical, want the last level of high that saw demand, below %v", th, c.Marginal(), CriticalOnly)
	}
	tickOf(heavy)
	if th := c.Update(now, Reading{Overloaded: true, Fit: true, Excess: 0.9, Critical: true}); th <= CriticalOnly || th.Priority() != Critical {
		t.Fatalf("threshold %v after a fitted excess of 90%% with Critical, want within critical", th)
	}
}
