package statuspage

import (
	"sort"
	"time"

	"github.com/levee-dev/levee/shed"
)

// Reading is one resource's state at a sampling instant: its threshold and
// its cumulative counters, summed over priorities.
type Reading struct {
	Resource  string
	Threshold shed.Level
	Admitted  uint64
	Refused   uint64
}

// Point is one step of a resource's history: the threshold at At and the
// admission rates since the step before.
type Point struct {
	At                time.Time
	Threshold         shed.Level
	AdmittedPerSecond float64
	RefusedPerSecond  float64
}

// History keeps the recent Points of every resource, for the charts of the
// status page.
//
// Record takes the resources' cumulative counters at each sampling instant
// and stores, per resource, the threshold and the rates since the previous
// reading in a ring of fixed capacity; Points returns those younger than
// the window. A resource that stops being read (a policy dropped it) keeps
// its points until they age out. A counter that goes backwards (a policy
// change rebuilt the resource) restarts the rates from that reading.
//
// History holds no clock and starts no goroutine: the caller passes the
// time and serialises calls.
type History struct {
	window time.Duration
	size   int
	series map[string]*series
}

// series is one resource's ring of points and its last reading.
type series struct {
	points []Point // ring; next is where the next point goes
	next   int
	n      int
	last   Reading
	lastAt time.Time
}

// NewHistory returns a History that keeps window of points when sampled
// every step (it holds window/step+1 points per resource).
func NewHistory(window, step time.Duration) *History {
	return &History{window: window, size: int(window/step) + 1, series: map[string]*series{}}
}

// Record adds the readings taken at now. Readings older than a resource's
// last one are ignored.
func (h *History) Record(now time.Time, readings []Reading) {
	for _, r := range readings {
		s := h.series[r.Resource]
		if s == nil {
			s = &series{points: make([]Point, h.size)}
			h.series[r.Resource] = s
		}
		if !s.lastAt.IsZero() && !now.After(s.lastAt) {
			continue
		}
		p := Point{At: now, Threshold: r.Threshold}
		if secs := now.Sub(s.lastAt).Seconds(); !s.lastAt.IsZero() && r.Admitted >= s.last.Admitted && r.Refused >= s.last.Refused {
			p.AdmittedPerSecond = float64(r.Admitted-s.last.Admitted) / secs
			p.RefusedPerSecond = float64(r.Refused-s.last.Refused) / secs
		}
		s.last, s.lastAt = r, now
		s.points[s.next] = p
		s.next = (s.next + 1) % len(s.points)
		s.n = min(s.n+1, len(s.points))
	}
	h.expire(now)
}

// expire drops the resources whose every point is older than the window.
func (h *History) expire(now time.Time) {
	for name, s := range h.series {
		if now.Sub(s.lastAt) > h.window {
			delete(h.series, name)
		}
	}
}

// Points returns the resource's points younger than the window at now,
// oldest first.
func (h *History) Points(resource string, now time.Time) []Point {
	s := h.series[resource]
	if s == nil {
		return nil
	}
	out := make([]Point, 0, s.n)
	for i := range s.n {
		p := s.points[(s.next-s.n+i+len(s.points))%len(s.points)]
		if now.Sub(p.At) <= h.window {
			out = append(out, p)
		}
	}
	return out
}

// Resources returns the names of the resources with points, sorted.
func (h *History) Resources() []string {
	out := make([]string, 0, len(h.series))
	for name := range h.series {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}
