package quotasim

import (
	"testing"
	"time"
)

// TestAnalyze judges a recorded run: two Envoys against a limit of 100,
// the first offering 150/s and the second 30/s, then (from 10 s) 50/s
// each; assignments 70/30 before the step, and after it a first wrong
// move at 11 s and the fair 50/50 from 12 s.
func TestAnalyze(t *testing.T) {
	o := Options{Limit: 100, ReportInterval: time.Second, Duration: 20 * time.Second,
		Demand: 1.8, Steps: []Step{{At: 10 * time.Second, Demand: 1}}}
	f := &fleet{o: o, start: t0}
	envoys := []*envoy{{id: 0, fl: f, rec: newEnvoyRecord(o.Duration)}, {id: 1, fl: f, rec: newEnvoyRecord(o.Duration)}}
	for b := range 200 { // 100 ms bins
		at := time.Duration(b) * binWidth
		if at < 10*time.Second {
			envoys[0].rec.add(0, at, 15, 7) // 150/s offered, 70/s admitted
			envoys[1].rec.add(0, at, 3, 3)  // 30/s, all admitted
		} else {
			envoys[0].rec.add(0, at, 5, 5)
			envoys[1].rec.add(0, at, 5, 5)
		}
	}
	as := []Assignment{
		{At: time.Second, Envoy: 0, Rate: 70, Live: true}, {At: time.Second, Envoy: 1, Rate: 30, Live: true},
		{At: 11 * time.Second, Envoy: 0, Rate: 20, Live: true},
		{At: 12 * time.Second, Envoy: 0, Rate: 50, Live: true}, {At: 12 * time.Second, Envoy: 1, Rate: 50, Live: true},
		{At: 14 * time.Second, Envoy: 1, Rate: 53, Live: true}, // within 10% of the limit: still settled
	}
	for _, a := range as {
		envoys[a.Envoy].rec.assigned(a)
	}
	r := analyze(&f.o, f, envoys, o.Duration)
	if len(r.Phases) != 2 {
		t.Fatalf("%d phases, want 2", len(r.Phases))
	}
	if r.Bounds != (Bounds{Total: TotalTolerance, Below: BelowShare, Settle: SettleIntervals, Near: settleTolerance}) {
		t.Fatalf("bounds %+v with none set, want IssueBounds with Near %v", r.Bounds, settleTolerance)
	}
	p0, p1 := r.Phases[0], r.Phases[1]
	if p0.From != 2*time.Second || p0.To != 10*time.Second || p1.From != 12*time.Second {
		t.Fatalf("windows [%v, %v) and from %v: want the first two report intervals of each phase left out", p0.From, p0.To, p1.From)
	}
	if p0.Ratio != 1 || p0.Level != 70 || p0.Below != 1 || p0.MinBelow != 1 {
		t.Fatalf("phase 0: ratio %v level %v below %d min %v; want 1, 70, 1, 1", p0.Ratio, p0.Level, p0.Below, p0.MinBelow)
	}
	if p0.Stepped || !p1.Stepped {
		t.Fatal("only the second phase follows a step")
	}
	// At 10 s the assignments 70/30 are 20% of the limit from the fair
	// 50/50; at 11 s 20/30 is 50% off; from 12 s they are fair.
	if p1.Settle != 2*time.Second {
		t.Fatalf("settled %v after the step, want 2s", p1.Settle)
	}
	for _, c := range r.Checks() {
		if !c.Passed {
			t.Errorf("check %s failed: %s (bound %s)", c.Name, c.Value, c.Bound)
		}
	}
}
