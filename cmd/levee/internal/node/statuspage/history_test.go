package statuspage

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/levee-dev/levee/shed"
)

var t0 = time.Date(2026, 3, 4, 3, 0, 0, 0, time.UTC)

func at(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }

func TestHistoryRates(t *testing.T) {
	h := NewHistory(10*time.Second, 2*time.Second)
	h.Record(at(0), []Reading{{Resource: "api", Threshold: 0, Admitted: 100, Refused: 0}})
	h.Record(at(2), []Reading{{Resource: "api", Threshold: 300, Admitted: 140, Refused: 10}})
	h.Record(at(3), []Reading{{Resource: "api", Threshold: 310, Admitted: 150, Refused: 40}})
	want := []Point{
		{At: at(0), Threshold: 0},
		{At: at(2), Threshold: 300, AdmittedPerSecond: 20, RefusedPerSecond: 5},
		{At: at(3), Threshold: 310, AdmittedPerSecond: 10, RefusedPerSecond: 30},
	}
	if diff := cmp.Diff(want, h.Points("api", at(3))); diff != "" {
		t.Fatalf("points (-want +got):\n%s", diff)
	}
}

// TestHistoryWindow checks the ring: at most window/step+1 points, none
// older than the window, oldest first.
func TestHistoryWindow(t *testing.T) {
	h := NewHistory(10*time.Second, 2*time.Second)
	for i := range 20 {
		h.Record(at(float64(2*i)), []Reading{{Resource: "api", Threshold: shed.Level(i), Admitted: uint64(10 * i)}})
	}
	now := at(38)
	ps := h.Points("api", now)
	if len(ps) != 6 {
		t.Fatalf("%d points, want 6 (10 s at 2 s steps, both ends)", len(ps))
	}
	for i, p := range ps {
		if want := at(float64(28 + 2*i)); !p.At.Equal(want) {
			t.Errorf("point %d at %v, want %v", i, p.At, want)
		}
		if p.AdmittedPerSecond != 5 {
			t.Errorf("point %d: %v admitted/s, want 5", i, p.AdmittedPerSecond)
		}
	}
	// Later, without new readings, old points fall out of the window.
	if got := len(h.Points("api", at(45))); got != 2 {
		t.Errorf("%d points 7 s later, want 2", got)
	}
}

// TestHistoryDroppedResource checks that a resource that stops being read
// keeps its points until they age out, and that a counter that went back
// (the resource was rebuilt) gives no negative or huge rate.
func TestHistoryDroppedResource(t *testing.T) {
	h := NewHistory(10*time.Second, 2*time.Second)
	h.Record(at(0), []Reading{{Resource: "a", Admitted: 50}, {Resource: "b", Admitted: 1000}})
	h.Record(at(2), []Reading{{Resource: "a", Admitted: 60}, {Resource: "b", Admitted: 4}})
	if ps := h.Points("b", at(2)); ps[1].AdmittedPerSecond != 0 {
		t.Errorf("rate across a counter reset = %v, want 0", ps[1].AdmittedPerSecond)
	}
	h.Record(at(4), []Reading{{Resource: "b", Admitted: 10}})
	if ps := h.Points("b", at(4)); ps[2].AdmittedPerSecond != 3 {
		t.Errorf("rate after a reset = %v, want 3", ps[2].AdmittedPerSecond)
	}
	if got := h.Resources(); !cmp.Equal(got, []string{"a", "b"}) {
		t.Errorf("resources %v, want a kept while its points are young", got)
	}
	h.Record(at(13), []Reading{{Resource: "b", Admitted: 10}})
	if got := h.Resources(); !cmp.Equal(got, []string{"b"}) {
		t.Errorf("resources %v, want a aged out", got)
	}
	if ps := h.Points("a", at(13)); ps != nil {
		t.Errorf("aged-out resource still has %d points", len(ps))
	}
	// A reading not after the last one is ignored.
	h.Record(at(13), []Reading{{Resource: "b", Admitted: 99}})
	if ps := h.Points("b", at(13)); ps[len(ps)-1].AdmittedPerSecond != 0 {
		t.Errorf("a second reading at the same instant changed the history: %+v", ps[len(ps)-1])
	}
}
