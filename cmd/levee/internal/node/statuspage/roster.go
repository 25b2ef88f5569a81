package statuspage

import (
	"sort"
	"time"
)

// Member states, as /status.json reports them.
const (
	// StateUp is a ring member that publishes its figures.
	StateUp = "up"
	// StateNoStatus is a ring member with no published figures: it has
	// just joined, or cannot reach etcd, or this node cannot.
	StateNoStatus = "no_status"
	// StateGone is a node that left the ring (stopped, crashed, or cut
	// off from etcd). It stays listed, with its last figures, until it
	// has been gone for the roster's retention.
	StateGone = "gone"
)

// Sighting is what one observation knows of a node: whether it is in this
// node's ring, the etcd revision of its published figures (0: none), and
// the figures themselves.
type Sighting struct {
	ID       string
	InRing   bool
	Revision int64
	// Self marks the node answering: its figures are live, so its
	// heartbeat is always now.
	Self   bool
	Member Member
}

// Roster remembers the nodes a node has seen, so that a node that
// disappears is marked gone rather than dropped, and measures each node's
// heartbeat: the last time its published figures changed (every node
// republishes every two seconds, so a stale heartbeat is a node that
// stopped publishing).
//
// Roster holds no clock and starts no goroutine: the caller passes the
// time and serialises calls.
type Roster struct {
	retain time.Duration
	seen   map[string]*sighted
}

type sighted struct {
	last      Member
	revision  int64
	beat      time.Time // zero: never published
	goneSince time.Time // zero: in the ring
	inRing    bool
	published bool
}

// NewRoster returns a Roster that keeps a gone node for retain.
func NewRoster(retain time.Duration) *Roster {
	return &Roster{retain: retain, seen: map[string]*sighted{}}
}

// Observe records what is seen at now: every node not among sightings is
// out of the ring. A node whose figures are missing keeps its last known
// figures.
func (r *Roster) Observe(now time.Time, sightings []Sighting) {
	present := make(map[string]bool, len(sightings))
	for _, s := range sightings {
		present[s.ID] = true
		e := r.seen[s.ID]
		if e == nil {
			e = &sighted{}
			r.seen[s.ID] = e
		}
		switch {
		case s.Self:
			e.beat, e.last, e.published = now, s.Member, true
		case s.Revision != 0:
			if s.Revision != e.revision {
				e.beat, e.revision = now, s.Revision
			}
			e.last, e.published = s.Member, true
		default:
			e.published = false
			if e.last.ID == "" {
				e.last = s.Member
			} else {
				// Keep the last figures, but take the ring's address
				// and share.
				e.last.Addr, e.last.RingShare = s.Member.Addr, s.Member.RingShare
			}
		}
		e.inRing = s.InRing
		if s.InRing {
			e.goneSince = time.Time{}
		} else if e.goneSince.IsZero() {
			e.goneSince = now
		}
	}
	for id, e := range r.seen {
		if !present[id] {
			e.inRing, e.published = false, false
			if e.goneSince.IsZero() {
				e.goneSince = now
			}
		}
		if !e.goneSince.IsZero() && now.Sub(e.goneSince) > r.retain {
			delete(r.seen, id)
		}
	}
}

// Members returns every node the roster holds at now, sorted by ID, with
// State, GoneSince, LastHeartbeat and HeartbeatAgeSeconds filled in. A gone
// node's ring share is 0.
func (r *Roster) Members(now time.Time) []Member {
	out := make([]Member, 0, len(r.seen))
	for id, e := range r.seen {
		m := e.last
		m.ID = id
		if m.RefusalsPerSecond == nil {
			m.RefusalsPerSecond = map[string]float64{}
		}
		if m.Thresholds == nil {
			m.Thresholds = []Threshold{}
		}
		switch {
		case !e.inRing:
			m.State = StateGone
			gs := e.goneSince
			m.GoneSince = &gs
			m.RingShare = 0
		case e.published:
			m.State = StateUp
		default:
			m.State = StateNoStatus
		}
		if !e.beat.IsZero() {
			b := e.beat
			age := now.Sub(b).Seconds()
			m.LastHeartbeat, m.HeartbeatAgeSeconds = &b, &age
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
