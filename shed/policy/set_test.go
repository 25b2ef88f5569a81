package policy

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/levee-dev/levee/shed"
	"github.com/levee-dev/levee/shed/shedtest"
)

func mustParse(t *testing.T, yaml string) *Policy {
	t.Helper()
	p, err := Parse("p.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func mustApply(t *testing.T, s *Set, yaml string) {
	t.Helper()
	if err := s.Apply(mustParse(t, yaml)); err != nil {
		t.Fatal(err)
	}
}

func byName(s *Set) map[string]*shed.Resource {
	m := map[string]*shed.Resource{}
	for _, r := range s.Resources() {
		m[r.Name()] = r
	}
	return m
}

func TestApplyKeepsUnchangedResources(t *testing.T) {
	clk := shedtest.NewClock(time.Date(2026, 11, 21, 0, 0, 0, 0, time.UTC))
	s := NewSet(clk.Now, nil)
	mustApply(t, s, "resources:\n  - name: a\n  - name: b\n")
	before := byName(s)
	if _, err := s.Permits("a").Acquire(context.Background(), shed.MaxLevel, clk.Now(), time.Minute); err != nil {
		t.Fatal(err)
	}

	// a moves in the file but keeps its settings; b changes.
	mustApply(t, s, "resources:\n  - name: b\n    shadow: true\n  - name: c\n  - name: a\n")
	after := byName(s)
	if after["a"] != before["a"] {
		t.Error("a was rebuilt although its settings did not change")
	}
	if s.Permits("a").Len() != 1 || after["a"].Inflight() != 1 {
		t.Errorf("a lost its permit: %d permits, %d in flight", s.Permits("a").Len(), after["a"].Inflight())
	}
	if after["b"] == before["b"] || !after["b"].Shadow() {
		t.Error("b was not rebuilt with its new settings")
	}
	if after["c"] == nil || s.Permits("c") == nil {
		t.Error("c was not added")
	}
	var names []string
	for _, r := range s.Resources() {
		names = append(names, r.Name())
	}
	if len(names) != 3 || names[0] != "a" || names[1] != "b" || names[2] != "c" {
		t.Errorf("Resources: %v, want a b c in order", names)
	}
}

func TestApplyDropsResources(t *testing.T) {
	s := NewSet(nil, nil)
	mustApply(t, s, "resources:\n  - name: a\n  - name: b\n")
	mustApply(t, s, "resources:\n  - name: a\n")
	if rs := s.Resources(); len(rs) != 1 || rs[0].Name() != "a" {
		t.Fatalf("after dropping b: %v", rs)
	}
	if s.Permits("b") != nil {
		t.Error("b still has a permit table")
	}
	mustApply(t, s, "")
	if len(s.Resources()) != 0 || s.Permits("a") != nil {
		t.Error("an empty policy left resources")
	}
}

func TestApplyFailureChangesNothing(t *testing.T) {
	s := NewSet(nil, nil)
	mustApply(t, s, "resources:\n  - name: a\n")
	before := byName(s)["a"]
	// Parse bounds the headroom; a Policy built in code can break shed.New.
	bad := &Policy{Resources: []Resource{{Name: "a", Shadow: true}, {Name: "z", Headroom: 1.5, Line: 7}}}
	err := s.Apply(bad)
	if err == nil {
		t.Fatal("Apply accepted a headroom of 1.5")
	}
	if want := `resource "z" (line 7)`; len(err.Error()) < len(want) || err.Error()[:len(want)] != want {
		t.Errorf("error %q does not name the resource and line", err)
	}
	if rs := s.Resources(); len(rs) != 1 || rs[0] != before || rs[0].Shadow() {
		t.Errorf("a failed Apply changed the set: %v", rs)
	}
}

func TestApplyRegistersMetrics(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer func() { _ = mp.Shutdown(context.Background()) }()
	m, err := shed.NewMetrics(mp.Meter("levee/shed"))
	if err != nil {
		t.Fatal(err)
	}
	exported := func() map[string]bool {
		var rm metricdata.ResourceMetrics
		if err := reader.Collect(context.Background(), &rm); err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, sm := range rm.ScopeMetrics {
			for _, mt := range sm.Metrics {
				if g, ok := mt.Data.(metricdata.Gauge[int64]); ok && mt.Name == "levee.shed.threshold" {
					for _, dp := range g.DataPoints {
						v, _ := dp.Attributes.Value(attribute.Key("resource"))
						out[v.AsString()] = true
					}
				}
			}
		}
		return out
	}
	s := NewSet(nil, m)
	mustApply(t, s, "resources:\n  - name: a\n  - name: b\n")
	if got := exported(); !got["a"] || !got["b"] || len(got) != 2 {
		t.Fatalf("exported %v, want a and b", got)
	}
	mustApply(t, s, "resources:\n  - name: a\n    shadow: true\n")
	if got := exported(); !got["a"] || len(got) != 1 {
		t.Fatalf("exported %v after dropping b and rebuilding a, want a once", got)
	}
	s.Close()
	if got := exported(); len(got) != 0 {
		t.Fatalf("exported %v after Close", got)
	}
}

func TestPinsApplyAndExpire(t *testing.T) {
	clk := shedtest.NewClock(time.Date(2026, 11, 21, 0, 0, 0, 0, time.UTC))
	s := NewSet(clk.Now, nil)
	mustApply(t, s, "resources:\n  - name: a\n  - name: b\n")
	until := clk.Now().Add(time.Minute)
	err := s.Pin([]Pin{
		{Resource: "a", Level: shed.CriticalOnly, Until: until},
		{Resource: "b", Level: shed.NumLevels + 1, Until: until}, // out of range
		{Resource: "c", Level: shed.NumLevels, Until: until},     // not in the policy yet
	})
	if err == nil {
		t.Error("a pin above NumLevels was accepted")
	}
	st := byName(s)["a"].Status(clk.Now())
	if !st.Pinned || st.Threshold != shed.CriticalOnly || !st.PinnedUntil.Equal(until) {
		t.Fatalf("a: %+v, want pinned at critical only until %v", st, until)
	}
	if _, err := byName(s)["a"].Acquire(context.Background(), shed.LevelOf(shed.Low, 0)); !errors.Is(err, shed.ErrRefused) {
		t.Errorf("low admitted under a critical-only pin: %v", err)
	}
	if byName(s)["b"].Status(clk.Now()).Pinned {
		t.Error("b is pinned by an invalid pin")
	}

	// A pin outlives Apply: c appears pinned, and a rebuilt a is pinned again.
	mustApply(t, s, "resources:\n  - name: a\n    shadow: true\n  - name: b\n  - name: c\n")
	if st := byName(s)["a"].Status(clk.Now()); !st.Pinned || st.Threshold != shed.CriticalOnly {
		t.Errorf("rebuilt a lost its pin: %+v", st)
	}
	if st := byName(s)["c"].Status(clk.Now()); !st.Pinned || st.Threshold != shed.NumLevels {
		t.Errorf("c did not take its waiting pin: %+v", st)
	}

	// Past Until the resources follow their controllers again, and a
	// lapsed pin is not applied to a resource built later.
	clk.Add(time.Minute)
	if byName(s)["a"].Status(clk.Now()).Pinned {
		t.Error("a still pinned after its pin lapsed")
	}
	mustApply(t, s, "resources:\n  - name: a\n  - name: b\n  - name: c\n")
	if byName(s)["a"].Status(clk.Now()).Pinned {
		t.Error("a lapsed pin was applied to a new resource")
	}

	// Replacing the pins unpins at once.
	if err := s.Pin([]Pin{{Resource: "b", Level: shed.CriticalOnly, Until: clk.Now().Add(time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Pin(nil); err != nil {
		t.Fatal(err)
	}
	if byName(s)["b"].Status(clk.Now()).Pinned {
		t.Error("b still pinned after its pin was removed")
	}
}

func TestTickExpiresPermits(t *testing.T) {
	clk := shedtest.NewClock(time.Date(2026, 11, 21, 0, 0, 0, 0, time.UTC))
	s := NewSet(clk.Now, nil)
	mustApply(t, s, "resources:\n  - name: a\n")
	for range 3 {
		if _, err := s.Permits("a").Acquire(context.Background(), shed.MaxLevel, clk.Now(), 2*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	clk.Add(time.Second)
	s.Tick(clk.Now())
	if n := byName(s)["a"].Inflight(); n != 3 {
		t.Fatalf("inflight %d before expiry", n)
	}
	clk.Add(time.Second)
	s.Tick(clk.Now())
	if n := byName(s)["a"].Inflight(); n != 0 || s.Permits("a").Len() != 0 {
		t.Fatalf("inflight %d, %d permits after expiry", n, s.Permits("a").Len())
	}
}

func TestRun(t *testing.T) {
	s := NewSet(nil, nil)
	mustApply(t, s, "resources:\n  - name: a\n")
	if _, err := s.Permits("a").Acquire(context.Background(), shed.MaxLevel, time.Now(), time.Millisecond); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, time.Millisecond) }()
	// The loop's ticks sweep the expired permit.
	for s.Permits("a").Len() != 0 {
		select {
		case err := <-done:
			t.Fatalf("Run returned early: %v", err)
		case <-time.After(time.Millisecond):
		}
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v, want context.Canceled", err)
	}
	if err := s.Run(context.Background(), 0); err == nil {
		t.Fatal("Run accepted a zero interval")
	}
}
