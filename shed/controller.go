package shed

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// ControllerConfig tunes a Controller. The zero value gives the defaults.
type ControllerConfig struct {
	// Window is the length of one histogram window (250 ms). The histogram
	// covers Windows of them: the recent traffic the steps are computed on.
	Window time.Duration
	// Windows is the number of histogram windows kept (4; at most 64).
	Windows int
	// RaiseStep is the fraction of admitted traffic shed by one raise when
	// the signals do not measure the excess (0.05); a measured excess is
	// shed as measured. A raise always sheds at least one non-empty level.
	RaiseStep float64
	// MaxRaiseStep caps the fraction shed by one raise (0.25), however
	// large the excess a signal reports: a concurrency gate holds the
	// queue meanwhile, so a surge costs a few ticks rather than an
	// overshoot.
	MaxRaiseStep float64
	// LowerStep is the fraction of admitted traffic readmitted by one lower
	// (0.02). A lower readmits at least one non-empty level.
	LowerStep float64
	// Hold is the refractory period after a raise during which the
	// threshold does not fall (1 s).
	Hold time.Duration
	// MaxHold caps the hold as it doubles after failed probes (8 s).
	MaxHold time.Duration
}

func (c ControllerConfig) withDefaults() (ControllerConfig, error) {
	if c.Window == 0 {
		c.Window = 250 * time.Millisecond
	}
	if c.Windows == 0 {
		c.Windows = 4
	}
	if c.RaiseStep == 0 {
		c.RaiseStep = 0.05
	}
	if c.MaxRaiseStep == 0 {
		c.MaxRaiseStep = 0.25
	}
	if c.LowerStep == 0 {
		c.LowerStep = 0.02
	}
	if c.Hold == 0 {
		c.Hold = time.Second
	}
	if c.MaxHold == 0 {
		c.MaxHold = 8 * c.Hold
	}
	var errs []error
	if c.Window < 0 {
		errs = append(errs, fmt.Errorf("field Window %v: must be positive", c.Window))
	}
	if c.Windows < 1 || c.Windows > 64 {
		errs = append(errs, fmt.Errorf("field Windows %d: want 1 to 64", c.Windows))
	}
	for _, f := range []struct {
		name string
		v    float64
	}{{"RaiseStep", c.RaiseStep}, {"MaxRaiseStep", c.MaxRaiseStep}, {"LowerStep", c.LowerStep}} {
		if !(f.v > 0 && f.v < 1) {
			errs = append(errs, fmt.Errorf("field %s %v: want a fraction between 0 and 1", f.name, f.v))
		}
	}
	if c.MaxRaiseStep < c.RaiseStep {
		errs = append(errs, fmt.Errorf("field MaxRaiseStep %v: below RaiseStep %v", c.MaxRaiseStep, c.RaiseStep))
	}
	if c.Hold < 0 || c.MaxHold < c.Hold {
		errs = append(errs, fmt.Errorf("field Hold %v, MaxHold %v: want 0 ≤ Hold ≤ MaxHold", c.Hold, c.MaxHold))
	}
	if err := errors.Join(errs...); err != nil {
		return c, fmt.Errorf("shed: controller config: %w", err)
	}
	return c, nil
}

// pin is an operator's override: a fixed threshold until an expiry.
type pin struct {
	level Level
	until time.Time
	nanos int64 // until.UnixNano(), for the hot path
}

// Controller is the admission controller of one protected resource: a state
// machine holding a threshold Level. Check and Admit are safe for concurrent
// use and cost a few atomic operations; Update is called by one owner on its
// control tick with the time and the combined signal reading. See the
// package documentation for the control law.
type Controller struct {
	cfg       ControllerConfig
	threshold atomic.Uint32
	pin       atomic.Pointer[pin]
	hist      levelHistogram
	marginal  atomic.Uint32 // Priority of the least important level admitted

	mu          sync.Mutex // serialises Update and Pin
	windowStart time.Time
	lastRaise   time.Time
	hold        time.Duration
	lastMove    int // +1 after a raise, -1 after a lower
	// The sliver the last raise shed on a judgement that it would not
	// hold (a snap, a queue): [sliverFrom, sliverTo), and when.
	sliverFrom, sliverTo Level
	sliverAt             time.Time
	counts               [NumLevels]uint64
	recent               [NumLevels]uint64
	// The demand per level of the last two ticks (ticks[0] the last):
	// the histogram's sum before a tick's rotation less its sum after the
	// previous one.
	ticks   [2][NumLevels]uint64
	rotated [NumLevels]uint64 // the histogram's sum after the last rotation
}

// NewController returns a controller with threshold 0 (admit everything).
func NewController(cfg ControllerConfig) (*Controller, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	c := &Controller{cfg: cfg, hist: newLevelHistogram(cfg.Windows), hold: cfg.Hold}
	c.marginal.Store(uint32(Critical))
	return c, nil
}

// Marginal returns the priority of the least important traffic the
// threshold in force admitted over the histogram's span, as of the last
// Update: the priority being shed at the margin. Before any traffic it is
// Critical.
func (c *Controller) Marginal() Priority { return Priority(c.marginal.Load()) }

// setMarginal records the priority of the lowest level at or above t that
// saw traffic (Critical when none did).
func (c *Controller) setMarginal(t Level) {
	m := Critical
	for l := int(t); l < NumLevels; l++ {
		if c.counts[l] > 0 {
			m = Level(l).Priority()
			break
		}
	}
	c.marginal.Store(uint32(m))
}

// Check says whether a request at level l would be admitted at now, without
// recording it. It is the refusal path's core: no lock, no allocation.
func (c *Controller) Check(l Level, now time.Time) Reason {
	if p := c.pin.Load(); p != nil && now.UnixNano() < p.nanos {
		if l < p.level {
			return ReasonOverride
		}
		return ReasonNone
	}
	if uint32(l) < c.threshold.Load() {
		return ReasonThreshold
	}
	return ReasonNone
}

// checkUnpinned is Check without the clock: it reports pinned = true, and
// no verdict, when a pin is set, whose expiry needs the time.
func (c *Controller) checkUnpinned(l Level) (r Reason, pinned bool) {
	if c.pin.Load() != nil {
		return ReasonNone, true
	}
	if uint32(l) < c.threshold.Load() {
		return ReasonThreshold, false
	}
	return ReasonNone, false
}

// Record counts an arrival at level l in the histogram the steps are
// computed from. Every offered request should be recorded once, admitted or
// not, so the histogram describes demand rather than what got through.
func (c *Controller) Record(l Level) {
	if l > MaxLevel {
		l = MaxLevel
	}
	c.hist.add(l)
}

// Admit records the arrival and checks it: ReasonNone means admitted.
func (c *Controller) Admit(l Level, now time.Time) Reason {
	c.Record(l)
	return c.Check(l, now)
}

// Threshold returns the automatic threshold (ignoring any pin).
func (c *Controller) Threshold() Level { return Level(c.threshold.Load()) }

// Effective returns the threshold in force at now: the pin if one is active,
// else the automatic threshold.
func (c *Controller) Effective(now time.Time) Level {
	if l, _, ok := c.Pinned(now); ok {
		return l
	}
	return c.Threshold()
}

// Pin fixes the threshold at l until the given time, whatever the signals
// say: CriticalOnly sheds everything but critical, 0 sheds nothing (a kill
// switch), NumLevels refuses everything. The automatic threshold is frozen
// while a pin is in force and resumes from where it was when it expires, so
// a forgotten pin cannot outlive its expiry.
func (c *Controller) Pin(l Level, until time.Time) error {
	if l > NumLevels {
		return &FieldError{Field: "level", Value: fmt.Sprint(uint16(l)), Reason: fmt.Sprintf("want a level from 0 to %d", NumLevels)}
	}
	c.pin.Store(&pin{level: l, until: until, nanos: until.UnixNano()})
	return nil
}

// Unpin removes any pin at once.
func (c *Controller) Unpin() { c.pin.Store(nil) }

// Pinned reports the pin in force at now, if any.
func (c *Controller) Pinned(now time.Time) (Level, time.Time, bool) {
	p := c.pin.Load()
	if p == nil || now.UnixNano() >= p.nanos {
		return 0, time.Time{}, false
	}
	return p.level, p.until, true
}

// Update is the control step, called by the owner every 100–250 ms with the
// current time and the combined reading of the resource's signals. It
// rotates the histogram, and raises, lowers or keeps the automatic threshold.
// It returns the automatic threshold after the step.
func (c *Controller) Update(now time.Time, r Reading) Level {
	c.mu.Lock()
	defer c.mu.Unlock()

	// The demand since the last tick: what the windows hold now beyond
	// what they held after the last rotation.
	c.ticks[1] = c.ticks[0]
	c.hist.sum(&c.counts)
	for l, n := range c.counts {
		c.ticks[0][l] = n - min(n, c.rotated[l])
	}
	if c.windowStart.IsZero() {
		c.windowStart = now
	} else if el := now.Sub(c.windowStart); el >= c.cfg.Window {
		n := min(int(el/c.cfg.Window), len(c.hist.windows))
		for range n {
			c.hist.rotate()
		}
		c.windowStart = now
	}

	t := Level(c.threshold.Load())
	c.hist.sum(&c.counts)
	c.rotated = c.counts
	if p := c.pin.Load(); p != nil {
		if now.UnixNano() < p.nanos {
			c.setMarginal(p.level)
			return t // frozen under a pin
		}
		c.pin.CompareAndSwap(p, nil)
	}

	switch {
	case r.Overloaded && r.Fit:
		// A surge measured against the capacity: shed what it measured
		// in one raise, on the demand of the ticks it measured.
		for l := range c.recent {
			c.recent[l] = c.ticks[0][l] + c.ticks[1][l]
		}
		ceiling := MaxLevel
		if !r.Critical {
			// Without the critical band open, one raise leaves the last
			// non-critical level that saw demand: emptying every
			// priority but critical turns the gate on critical (it
			// refuses the marginal priority), and a reading that has
			// not seen critical demand alone outrun the target must not
			// cost it a request. The gate and the next reading take what
			// the raise leaves.
			ceiling = t
			for l := int(CriticalOnly) - 1; l >= int(t); l-- {
				if c.recent[l] > 0 {
					ceiling = Level(l)
					break
				}
			}
		}
		if nt := raiseStep(&c.recent, t, min(fitGain*r.Excess, maxFit), ceiling); nt > t {
			st := snapUp(&c.recent, nt, ceiling)
			if st > nt {
				c.sliverFrom, c.sliverTo, c.sliverAt = nt, st, now
			}
			c.hold, c.lastRaise, c.lastMove, t = c.cfg.Hold, now, +1, st
		}
	case r.Overloaded:
		frac := c.cfg.RaiseStep
		if r.Excess > 0 {
			frac = r.Excess
		}
		frac = min(frac, c.cfg.MaxRaiseStep)
		ceiling := MaxLevel
		if !r.Critical {
			// Without evidence that critical demand alone exceeds capacity,
			// never shed critical traffic by threshold.
			ceiling = max(t, CriticalOnly)
		}
		// The excess is a share of the traffic arriving now: the step is
		// computed on the most recent windows, so that a sudden change of
		// mix (a flood of one priority) is not measured against the
		// traffic of a second ago.
		c.hist.sumRecent(&c.recent)
		// One raise sheds at most the rest of the marginal priority (the
		// least important one still admitted): the next priority up is
		// touched only if the overload outlasts it, so a burst never
		// costs a more important priority while a less important one
		// could have absorbed it.
		for l := int(t); l < NumLevels; l++ {
			if c.recent[l] > 0 {
				end := priorityEnd(Level(l))
				switch {
				case r.MarginUnfit && Level(l) < CriticalOnly:
					// The more important traffic alone overloads the
					// resource: none of this priority fits. Shed the
					// rest of it in one raise; partial raises would keep
					// admitting some of it for seconds while the next
					// priority up already queues behind the gate.
					// Critical is never emptied in one step.
					frac = 1
				case end-1 > t:
					// Leave the priority's last cohort: a priority is
					// emptied, and the gate turned on the next one, only
					// by a raise that finds nothing else of it admitted.
					end--
				}
				ceiling = min(ceiling, end)
				break
			}
		}
		if nt := raiseStep(&c.recent, t, frac, ceiling); nt > t {
			if now.Sub(c.lastRaise) > 2*c.cfg.MaxHold || r.Excess > 2*c.cfg.LowerStep {
				// A new episode, or a new surge (an excess far beyond what
				// a probe readmitted), starts with the short hold.
				c.hold = c.cfg.Hold
			} else if c.lastMove < 0 {
				c.hold = min(2*c.hold, c.cfg.MaxHold) // the last lower was a failed probe
			}
			c.lastRaise, c.lastMove = now, +1
			c.sliverFrom, c.sliverTo, c.sliverAt, t = t, nt, now, nt
		}
	case r.Saturated:
		// At capacity: readmitting would only be refused again.
	case t > 0 && (now.Sub(c.lastRaise) >= c.hold || r.Room > 0):
		// A signal that measured room (the throughput target) lowers at
		// once, by most of it: the hold guards against probing past a
		// capacity nobody measured, not against readmitting traffic that
		// measurably fits.
		nt := lowerStep(&c.counts, t, min(max(c.cfg.LowerStep, roomGain*r.Room), c.cfg.MaxRaiseStep))
		if r.Room > 0 && nt < c.sliverTo && t >= c.sliverTo && now.Sub(c.sliverAt) < sliverMemory {
			// Room to readmit a sliver shed moments ago because the
			// traffic above it alone keeps the resource near its
			// target, but not clearly more room than the sliver: where
			// the measured capacity strays by a few percent, it would
			// queue and be shed again, the threshold hunting across the
			// priority's edge.
			if rest, above := restAbove(&c.counts, c.sliverFrom, c.sliverTo); isSliver(rest, above) && r.Room*above < rest+sliverMargin*above {
				nt = c.sliverTo
			}
		}
		if nt == t {
			break
		}
		t, c.lastMove = nt, -1
		if t == 0 {
			c.hold = c.cfg.Hold
		}
	}
	c.threshold.Store(uint32(t))
	c.setMarginal(t)
	return t
}

// fitGain is the share of a fitted excess one raise sheds: most of it, but
// not all, since the capacity it was measured against errs low more often
// than high (it is measured while a gate of a few requests is full, some
// of them on their way out), and what the raise leaves the gate trims and
// the next reading sheds, whereas what it takes too much stays shed until
// room is measured.
const fitGain = 0.8

// snapShare is the most of the demand a fitted raise leaves admitted that
// may be the rest of the priority it lands in before the raise sheds that
// rest too (see snapUp).
const snapShare = 0.15

// snapUp returns nt, or the first level of the next priority when nt lands
// inside a priority whose demand at nt and above is at most snapShare of
// all the demand at nt and above (and that level is within ceiling). The
// traffic above so small a remainder alone keeps the resource near its
// target, where the queue past the gate stands now and then, and the
// standing queue sheds the remainder seconds later (MarginUnfit): the
// threshold moves again after it seemed settled, and the gate, which
// trims the remainder meanwhile, refuses it at random rather than by
// cohorts. Shed with the raise, it moves once; should the remainder have
// fitted, the measured room readmits it.
func snapUp(counts *[NumLevels]uint64, nt, ceiling Level) Level {
	end := priorityEnd(nt)
	if nt.Cohort() == 0 || end > ceiling {
		return nt
	}
	if isSliver(restAbove(counts, nt, end)) {
		return end
	}
	return nt
}

// sliverMemory is how long a sliver shed on the judgement that it would
// not hold (a snapped rest, or a raise for a queue) stays shed unless the
// measured room clearly holds it: by sliverMargin of the traffic above
// it beyond its own demand, about twice the capacity's own error.
const (
	sliverMemory = 10 * time.Second
	sliverMargin = 0.1
)

// restAbove returns the demand of levels [from, to) and at to and above.
func restAbove(counts *[NumLevels]uint64, from, to Level) (rest, above float64) {
	for l := int(from); l < NumLevels; l++ {
		if l < int(to) {
			rest += float64(counts[l])
		} else {
			above += float64(counts[l])
		}
	}
	return rest, above
}

// isSliver reports whether rest is at most snapShare of the demand at and
// above its first level.
func isSliver(rest, above float64) bool { return rest <= snapShare*(rest+above) }

// priorityEnd is the first level above l's priority: the threshold that
// sheds the rest of it.
func priorityEnd(l Level) Level { return (l/NumCohorts + 1) * NumCohorts }

// maxFit caps the share of the traffic one fitted raise sheds: a
// measurement that says nearly all of it must go is more likely a stall
// than a surge.
const maxFit = 0.95

// roomGain is the share of a measured room (see Reading.Room) one lower
// readmits: most of it, as the room is measured beyond its noise, but not
// all, so that an estimate on the high side does not overshoot.
const roomGain = 0.7

// raiseStep returns the lowest threshold above t that sheds at least frac of
// the traffic admitted at t (and so at least one non-empty level), capped at
// ceiling. With no traffic at or above t it returns t.
func raiseStep(counts *[NumLevels]uint64, t Level, frac float64, ceiling Level) Level {
	var admitted uint64
	for l := int(t); l < NumLevels; l++ {
		admitted += counts[l]
	}
	if admitted == 0 || t >= ceiling {
		return t
	}
	target := float64(admitted) * (1 - frac)
	remaining := admitted
	for l := t; l < ceiling; l++ {
		remaining -= counts[l]
		if counts[l] > 0 && float64(remaining) <= target {
			return l + 1
		}
	}
	return ceiling
}

// lowerStep returns the highest threshold below t that readmits at least frac
// of the traffic admitted at t, and at least one non-empty level; when the
// levels below t saw no traffic it returns 0.
func lowerStep(counts *[NumLevels]uint64, t Level, frac float64) Level {
	var admitted uint64
	for l := int(t); l < NumLevels; l++ {
		admitted += counts[l]
	}
	want := float64(admitted) * frac
	var readmitted uint64
	for l := int(t) - 1; l >= 0; l-- {
		readmitted += counts[l]
		if readmitted > 0 && float64(readmitted) >= want {
			return Level(l)
		}
	}
	return 0
}
