package statuspage

import (
	"testing"
	"time"
)

func sight(id string, rev int64, inRing bool) Sighting {
	return Sighting{ID: id, InRing: inRing, Revision: rev, Member: Member{ID: id, Addr: id + ":1", RingShare: 0.5, DecisionsPerSecond: float64(rev)}}
}

func states(ms []Member) map[string]string {
	out := map[string]string{}
	for _, m := range ms {
		out[m.ID] = m.State
	}
	return out
}

func TestRosterGoneUntilAgedOut(t *testing.T) {
	r := NewRoster(60 * time.Second)
	self := Sighting{ID: "a", InRing: true, Self: true, Member: Member{ID: "a", Self: true}}
	r.Observe(at(0), []Sighting{self, sight("b", 10, true), {ID: "c", InRing: true, Member: Member{ID: "c"}}})
	if got := states(r.Members(at(0))); got["a"] != StateUp || got["b"] != StateUp || got["c"] != StateNoStatus {
		t.Fatalf("states %v", got)
	}
	// b stops: it leaves the ring; its last figures stay.
	r.Observe(at(5), []Sighting{self, sight("c", 3, true)})
	ms := r.Members(at(5))
	if len(ms) != 3 {
		t.Fatalf("%d members, want b kept", len(ms))
	}
	b := ms[1]
	if b.State != StateGone || b.GoneSince == nil || !b.GoneSince.Equal(at(5)) || b.RingShare != 0 || b.DecisionsPerSecond != 10 {
		t.Errorf("gone member %+v", b)
	}
	r.Observe(at(64), []Sighting{self, sight("c", 3, true)})
	if len(r.Members(at(64))) != 3 {
		t.Errorf("b aged out before its retention")
	}
	r.Observe(at(66), []Sighting{self, sight("c", 3, true)})
	if got := states(r.Members(at(66))); len(got) != 2 || got["b"] != "" {
		t.Errorf("b still listed after its retention: %v", got)
	}
}

// TestRosterHeartbeat checks that the heartbeat is the last change of a
// member's published figures, and that a member coming back is up again.
func TestRosterHeartbeat(t *testing.T) {
	r := NewRoster(time.Minute)
	r.Observe(at(0), []Sighting{sight("b", 1, true)})
	r.Observe(at(2), []Sighting{sight("b", 2, true)})
	r.Observe(at(4), []Sighting{sight("b", 2, true)}) // not republished
	m := r.Members(at(7))[0]
	if m.LastHeartbeat == nil || !m.LastHeartbeat.Equal(at(2)) || *m.HeartbeatAgeSeconds != 5 {
		t.Errorf("heartbeat %v, age %v; want at 2 s, 5 s old", m.LastHeartbeat, m.HeartbeatAgeSeconds)
	}
	// Published figures that outlive the ring membership (their lease is
	// longer) do not make a node up.
	r.Observe(at(8), []Sighting{sight("b", 3, false)})
	if m := r.Members(at(8))[0]; m.State != StateGone {
		t.Errorf("state %s out of the ring, want gone", m.State)
	}
	r.Observe(at(9), []Sighting{sight("b", 4, true)})
	if m := r.Members(at(9))[0]; m.State != StateUp || m.GoneSince != nil {
		t.Errorf("back in the ring: %+v", m)
	}
	// Figures that disappear while the node stays in the ring: no_status,
	// with the last figures kept.
	r.Observe(at(10), []Sighting{{ID: "b", InRing: true, Member: Member{ID: "b", Addr: "b:2"}}})
	if m := r.Members(at(10))[0]; m.State != StateNoStatus || m.DecisionsPerSecond != 4 || m.Addr != "b:2" {
		t.Errorf("unpublished: %+v", m)
	}
}
