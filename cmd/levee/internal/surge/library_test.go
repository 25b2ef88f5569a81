package surge

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestLocalServesInOrderAndDropsExpired: the library harness's worker
// serves first come, first served, and drops a request whose deadline
// passed while it queued when it reaches it.
func TestLocalServesInOrderAndDropsExpired(t *testing.T) {
	for _, w := range []Work{WorkSpin, WorkTimed} {
		t.Run(w.String(), func(t *testing.T) {
			l, err := NewLocal(BackendConfig{Policy: PolicyNone, Work: w}, HarnessLibrary)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			served := make(chan struct{})
			go func() { l.Serve(ctx); close(served) }()
			defer func() { cancel(); <-served }()

			long := make(chan outcome, 1)
			start := time.Now()
			go func() {
				out, _ := l.Do(ctx, start, 3, "a", 150*time.Millisecond, time.Second)
				long <- out
			}()
			time.Sleep(30 * time.Millisecond)
			// Behind 150 ms of work with a 50 ms deadline: dropped, when
			// the worker gets to it.
			out, end := l.Do(ctx, time.Now(), 0, "b", time.Millisecond, 50*time.Millisecond)
			if out != outTimeout || end.Sub(start) < 140*time.Millisecond {
				t.Fatalf("request behind 150 ms of work with a 50 ms deadline: %v after %v, want a timeout when the worker reached it", out, end.Sub(start))
			}
			if out := <-long; out != outOK {
				t.Fatalf("long request: %v, want OK", out)
			}
			if s := l.Stats(); s.Done != 1 || s.Skipped != 1 || s.Queue != 0 || s.Admitted[0] != 1 || s.Admitted[3] != 1 {
				t.Fatalf("stats %+v: want one served, one skipped, nothing queued", s)
			}
		})
	}
}

// TestLibraryHarnessFlood runs a short flood through the library harness
// and through the sidecar harness (5 ms mean service, so that the race
// detector keeps up): levee keeps far more critical calls than no
// shedding, refuses none of them, and the report names the harness; the
// retry scenario, which needs gRPC clients, is refused.
func TestLibraryHarnessFlood(t *testing.T) {
	for _, h := range []Harness{HarnessLibrary, HarnessSidecar} {
		t.Run(h.String(), func(t *testing.T) { testLocalFlood(t, h) })
	}
	for _, h := range []Harness{HarnessGRPC, HarnessLibrary, HarnessSidecar} {
		if got, err := ParseHarness(h.String()); err != nil || got != h {
			t.Errorf("ParseHarness(%q) = %v, %v", h, got, err)
		}
	}
	if _, err := ParseHarness("carrier pigeon"); err == nil {
		t.Error("unknown harness accepted")
	}
	if _, err := NewLocal(BackendConfig{Policy: PolicyNone}, HarnessGRPC); err == nil {
		t.Error("NewLocal accepted the grpc harness")
	}
}

func testLocalFlood(t *testing.T, h Harness) {
	// The sidecar's two gRPC calls a request cost the process CPU that
	// the race detector multiplies: half the rate keeps the worker, not
	// the sidecar, the bottleneck.
	c, service := 180.0, 5*time.Millisecond
	if h == HarnessSidecar {
		c, service = 90, 10*time.Millisecond
	}
	rep, err := Run(context.Background(), Options{
		Harness:     h,
		Scenarios:   []string{"flood"},
		Policies:    []Policy{PolicyNone, PolicyLevee},
		Scale:       0.2,
		Capacity:    c,
		MeanService: service,
		Work:        WorkTimed,
	})
	if err != nil {
		t.Fatal(err)
	}
	res := rep.Results[0]
	fs, fe := phaseRange(res.Scenario, 1)
	none, lv := res.Run(PolicyNone), res.Run(PolicyLevee)
	cn, cl := none.Agg(fs, fe, 0), lv.Agg(fs, fe, 0)
	t.Logf("critical success in the flood: none %.1f%%, levee %.1f%% (%d calls)", 100*cn.Success(), 100*cl.Success(), cl.Offered)
	if cl.Offered == 0 || cn.Offered != cl.Offered {
		t.Fatalf("critical calls offered: none %d, levee %d; want the same non-zero schedule", cn.Offered, cl.Offered)
	}
	if cl.Success() < cn.Success()+0.3 {
		t.Errorf("levee kept %.1f%% of critical calls, no shedding %.1f%%: want a margin of 30 points", 100*cl.Success(), 100*cn.Success())
	}
	if cl.Refused != 0 || lv.serverRefused(0) != 0 {
		t.Errorf("levee refused critical calls: %d seen, %d counted (by reason %v)", cl.Refused, lv.serverRefused(0), lv.stats[len(lv.stats)-1].CriticalBy)
	}
	if s := lv.Agg(fs, fe, 4); s.Refused == 0 {
		t.Error("levee refused no sheddable calls in a 3.5C flood")
	}
	var md strings.Builder
	if err := rep.WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(md.String(), "Harness: "+h.String()) {
		t.Errorf("report does not name the %s harness", h)
	}
	_, err = Run(context.Background(), Options{Harness: h, Scenarios: []string{"retry"}, Capacity: 100})
	if err == nil || !strings.Contains(err.Error(), "gRPC clients") {
		t.Errorf("retry through the %s harness: %v, want an error naming the clients it needs", h, err)
	}
}
