package quotasim

import (
	"math"
	"sort"
	"time"
)

// Bounds the acceptance runs are held to (issue 15).
const (
	// TotalTolerance is how far the admitted total may stray from
	// limit × time after the first two report intervals.
	TotalTolerance = 0.05
	// BelowShare is the share of its fair share an Envoy whose demand is
	// under the level must get.
	BelowShare = 0.98
	// SettleIntervals is how many report intervals assignments may take
	// to settle after a step.
	SettleIntervals = 2
	// settleTolerance is how close to the fair shares the assignments
	// must be to count as settled, as a share of the limit.
	settleTolerance = 0.10
)

// Bounds are what a run's checks hold it to.
type Bounds struct {
	// Total is how far the admitted total may stray from limit × time.
	Total float64
	// Below is the share of its fair share an Envoy under the level must
	// get.
	Below float64
	// Settle is how many report intervals assignments may take to settle
	// after a step.
	Settle float64
	// Near is how close to the fair shares, as a share of the limit,
	// settled assignments stay (0: settleTolerance).
	Near float64
}

// IssueBounds are the acceptance bounds of issue 15, for runs at Envoy's
// own 5 s reports; the zero Bounds in Options means these.
var IssueBounds = Bounds{Total: TotalTolerance, Below: BelowShare, Settle: SettleIntervals}

// Result is what a run saw and how it measures up.
type Result struct {
	Limit          float64
	ReportInterval time.Duration
	Bounds         Bounds
	Elapsed        time.Duration
	Phases         []Phase
	Reconnects     []Reconnect
	Expiries       []Expiry // time buckets spent past an assignment's TTL
	Failures       map[Failure]int
	ReportsSent    int          // bucket usage reports that reached a stream
	ReportsLost    int          // bucket usage reports lost with no stream
	Assignments    int          // assignments received
	Timeline       []Assignment // every assignment received, in time order
	Offered        int64
	Admitted       int64
	Events         []Event
}

// Phase is the stretch between two demand changes, measured after the
// first two report intervals of it.
type Phase struct {
	Start, From, To time.Duration // phase start; measured window [From, To)
	Demand          float64       // total demand asked, as a multiple of the limit
	OfferedRate     float64       // total offered in the window, requests a second
	AdmittedRate    float64
	Ratio           float64 // AdmittedRate / Limit
	Level           float64 // the max-min level of the realized demands (+Inf: no Envoy limited)
	Envoys          []Share
	MinBelow        float64 // least Admitted/Share among Envoys under the level (1 if none)
	Below           int     // Envoys under the level
	// Settle is how long after Start the assignments came within 10% of
	// the limit of the fair shares for good (see settle); -1 when they did
	// not, or (with Stepped false) the phase has no step at its start.
	Settle  time.Duration
	Stepped bool
	// Distance is the assignments' distance from the fair shares at the
	// end of the phase, and Closest the least it came to after the step,
	// as shares of the limit (see settle).
	Distance, Closest float64
}

// Share is one Envoy's figures in a phase, in requests a second.
type Share struct {
	Envoy                   int
	Offered, Admitted, Fair float64
	Under                   bool // its demand is under the level
}

// Reconnect is a stream that broke and the one that replaced it.
type Reconnect struct {
	Envoy      int
	From, To   string
	Broken     time.Duration
	Opened     time.Duration // -1 if none was opened
	Assignment time.Duration // first assignment on the new stream; -1 if none
}

// Expiry is a time an Envoy's bucket spent with its assignment past its
// TTL and no new one.
type Expiry struct {
	Envoy, Bucket int
	From, To      time.Duration
	ServerZero    bool // the server expired it on purpose (TTL 0)
}

func analyze(o *Options, f *fleet, envoys []*envoy, elapsed time.Duration) *Result {
	r := &Result{Limit: o.Limit, ReportInterval: o.ReportInterval, Bounds: o.bounds(), Elapsed: elapsed, Failures: map[Failure]int{}}
	for _, e := range envoys {
		rec := e.rec
		rec.mu.Lock()
		r.ReportsSent += rec.sent
		r.ReportsLost += rec.lost
		r.Assignments += len(rec.assignments)
		r.Timeline = append(r.Timeline, rec.assignments...)
		r.Offered += rec.offeredAll
		r.Admitted += rec.admittedAll
		for k, v := range rec.failures {
			r.Failures[k] += v
		}
		r.Events = append(r.Events, rec.events...)
		r.Reconnects = append(r.Reconnects, reconnects(e.id, rec.events, rec.assignments)...)
		rec.mu.Unlock()
		for _, x := range e.expired {
			r.Expiries = append(r.Expiries, Expiry{Envoy: e.id, Bucket: x.bucket,
				From: x.from.Sub(f.start), To: x.to.Sub(f.start), ServerZero: x.serverZero})
		}
	}
	sort.Slice(r.Events, func(i, j int) bool { return r.Events[i].At < r.Events[j].At })
	sort.SliceStable(r.Timeline, func(i, j int) bool { return r.Timeline[i].At < r.Timeline[j].At })

	bounds := []time.Duration{0}
	for _, s := range o.Steps {
		if s.At > 0 && s.At < elapsed {
			bounds = append(bounds, s.At)
		}
	}
	bounds = append(bounds, elapsed)
	for k := 0; k+1 < len(bounds); k++ {
		start, end := bounds[k], bounds[k+1]
		p := Phase{Start: start, From: start + SettleIntervals*o.ReportInterval, To: end,
			Demand: o.demandAt(start), Settle: -1, Stepped: k > 0}
		measure(&p, o.Limit, envoys)
		if k > 0 {
			p.Settle, p.Distance, p.Closest = settle(&p, o.Limit, o.bounds().Near, envoys)
		}
		r.Phases = append(r.Phases, p)
	}
	return r
}

// measure fills the phase's admissions and shares from the recorded bins.
func measure(p *Phase, limit float64, envoys []*envoy) {
	lo, hi := int(p.From/binWidth), int(p.To/binWidth)
	secs := float64(hi-lo) * binWidth.Seconds()
	if secs <= 0 {
		p.MinBelow = 1
		return
	}
	demands := make([]float64, len(envoys))
	p.Envoys = make([]Share, len(envoys))
	for i, e := range envoys {
		e.rec.mu.Lock()
		var off, adm int64
		for b := lo; b < hi && b < len(e.rec.offered); b++ {
			off += e.rec.offered[b]
			adm += e.rec.admitted[b]
		}
		e.rec.mu.Unlock()
		p.Envoys[i] = Share{Envoy: i, Offered: float64(off) / secs, Admitted: float64(adm) / secs}
		demands[i] = p.Envoys[i].Offered
		p.OfferedRate += p.Envoys[i].Offered
		p.AdmittedRate += p.Envoys[i].Admitted
	}
	p.Ratio = p.AdmittedRate / limit
	shares, level := MaxMin(limit, demands)
	p.Level, p.MinBelow = level, 1
	for i := range p.Envoys {
		s := &p.Envoys[i]
		s.Fair = shares[i]
		s.Under = s.Offered < level
		if s.Under && s.Fair > 0 {
			p.Below++
			p.MinBelow = math.Min(p.MinBelow, s.Admitted/s.Fair)
		}
	}
}

// settle returns how long after the phase's start the assignments of the
// first bucket came, for good, within settleTolerance of the fair shares
// of the demand the Envoys had last reported (the server's own input; the
// window's offered rates for an Envoy with no report yet): the distance
// sum_i |min(assigned_i, demand_i) - fair_i| / limit (an assignment above
// a demand under the level costs nothing: the Envoy cannot use it). The
// distance is taken whenever the assignments have stood still for
// quietFor, so that one push landing Envoy by Envoy is judged once. It is
// -1 when the assignments are still farther at the phase's end; end and
// closest are the distance then and the least it came to.
func settle(p *Phase, limit, near float64, envoys []*envoy) (settled time.Duration, end, closest float64) {
	const quietFor = 200 * time.Millisecond
	type event struct {
		at     time.Duration
		envoy  int
		rate   float64
		demand bool // a report's demand, not an assignment
	}
	var evs []event
	cur := make([]float64, len(envoys)) // assigned rate in force
	dem := make([]float64, len(envoys)) // demand last reported
	for i, e := range envoys {
		dem[i] = p.Envoys[i].Offered
		e.rec.mu.Lock()
		for _, a := range e.rec.assignments {
			if a.Bucket != 0 || a.At >= p.To {
				continue
			}
			r := a.Rate
			if !a.Live {
				r = 0
			}
			if a.At < p.Start {
				cur[i] = r
				continue
			}
			evs = append(evs, event{a.At, i, r, false})
		}
		for _, d := range e.rec.demands {
			if d.at >= p.Start && d.at < p.To {
				evs = append(evs, event{d.at, i, d.rate, true})
			}
		}
		e.rec.mu.Unlock()
	}
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].at < evs[j].at })
	dist := func() float64 {
		fair, _ := MaxMin(limit, dem)
		var d float64
		for i := range cur {
			d += math.Abs(math.Min(cur[i], dem[i]) - fair[i])
		}
		return d / limit
	}
	settled, closest = -1, math.Inf(1)
	judge := func(at time.Duration) {
		d := dist()
		closest = math.Min(closest, d)
		switch {
		case d > near:
			settled = -1
		case settled < 0:
			settled = at - p.Start
		}
	}
	judge(p.Start)
	for k, ev := range evs {
		if ev.demand {
			dem[ev.envoy] = ev.rate
			continue
		}
		cur[ev.envoy] = ev.rate
		landed := true // no other assignment follows within quietFor
		for _, nx := range evs[k+1:] {
			if nx.at-ev.at >= quietFor {
				break
			}
			if !nx.demand {
				landed = false
				break
			}
		}
		if landed {
			judge(ev.at)
		}
	}
	return settled, dist(), closest
}

// reconnects pairs each broken stream with the next one opened.
func reconnects(id int, events []Event, as []Assignment) []Reconnect {
	var out []Reconnect
	for i, ev := range events {
		if ev.Kind != EventBroken {
			continue
		}
		rc := Reconnect{Envoy: id, From: ev.Node, Broken: ev.At, Opened: -1, Assignment: -1}
		for _, nx := range events[i+1:] {
			if nx.Kind == EventOpened {
				rc.To, rc.Opened = nx.Node, nx.At
				break
			}
		}
		if rc.Opened >= 0 {
			for _, a := range as {
				if a.At >= rc.Opened && a.Node == rc.To {
					rc.Assignment = a.At
					break
				}
			}
		}
		out = append(out, rc)
	}
	return out
}

// Stale returns the expiries that were not the server's doing: time a
// bucket spent past its assignment's TTL because no new one came.
func (r *Result) Stale() []Expiry {
	var out []Expiry
	for _, x := range r.Expiries {
		if !x.ServerZero {
			out = append(out, x)
		}
	}
	return out
}

// ConformanceFailures returns the count of every failure seen.
func (r *Result) ConformanceFailures() int {
	n := 0
	for _, v := range r.Failures {
		n += v
	}
	return n
}

// bounds returns o.Bounds, or IssueBounds when it is unset, with an unset
// Near as settleTolerance.
func (o *Options) bounds() Bounds {
	b := o.Bounds
	if b == (Bounds{}) {
		b = IssueBounds
	}
	if b.Near == 0 {
		b.Near = settleTolerance
	}
	return b
}
