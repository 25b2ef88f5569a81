package surge

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/levee-dev/levee/shed"
	"github.com/levee-dev/levee/shed/shedtest"
)

// childEnv makes the test binary serve one backend (the child half of
// ChildProcess) instead of running tests.
const childEnv = "LEVEE_SURGE_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		os.Exit(serveTestChild())
	}
	os.Exit(m.Run())
}

// serveTestChild parses BackendConfig.Args from the command line, as
// `levee surge --backend-child` does, and serves until stdin closes.
func serveTestChild() int {
	fs := flag.NewFlagSet("child", flag.ContinueOnError)
	policy := fs.String("policy", "none", "")
	work := fs.String("work", "timed", "")
	capacity := fs.Float64("capacity", 0, "")
	seed := fs.Uint64("salt-seed", 0, "")
	sidecar := fs.Bool("sidecar", false, "")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	p, err := ParsePolicy(*policy)
	if err != nil {
		return 2
	}
	w, err := ParseWork(*work)
	if err != nil {
		return 2
	}
	cfg := BackendConfig{Policy: p, Work: w, Capacity: *capacity, SaltSeed: *seed, Sidecar: *sidecar}
	if err := ServeChild(context.Background(), cfg, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// TestFloodLeveeKeepsCritical runs a short flood (5 ms mean service, so
// that the race detector keeps up) against no shedding and levee, and
// checks what must hold however noisy the machine: levee keeps far more
// critical calls alive than no shedding and refuses none of them, and the
// outputs are well formed.
func TestFloodLeveeKeepsCritical(t *testing.T) {
	const mean = 5 * time.Millisecond // μ = 200/s
	rep, err := Run(context.Background(), Options{
		Scenarios:   []string{"flood"},
		Policies:    []Policy{PolicyNone, PolicyLevee},
		Scale:       0.2, // 1.6 s before, 8.4 s of flood, 1.2 s after
		Capacity:    180,
		MeanService: mean,
		Launch:      InProcess(),
	})
	if err != nil {
		t.Fatal(err)
	}
	res := rep.Results[0]
	sc := res.Scenario
	fs, fe := phaseRange(sc, 1)
	none, lv := res.Run(PolicyNone), res.Run(PolicyLevee)
	cn, cl := none.Agg(fs, fe, 0), lv.Agg(fs, fe, 0)
	t.Logf("critical success in the flood: none %.1f%% (%d calls), levee %.1f%% (%d calls); levee goodput %.0f/s",
		100*cn.Success(), cn.Offered, 100*cl.Success(), cl.Offered, lv.Agg(fs, fe, allPriorities).Goodput())
	if cl.Offered == 0 || cn.Offered != cl.Offered {
		t.Fatalf("critical calls offered: none %d, levee %d; want the same non-zero schedule", cn.Offered, cl.Offered)
	}
	if cl.Success() < cn.Success()+0.3 {
		t.Errorf("levee kept %.1f%% of critical calls, no shedding %.1f%%: want a margin of at least 30 points",
			100*cl.Success(), 100*cn.Success())
	}
	if cl.Refused != 0 || lv.serverRefused(0) != 0 {
		t.Errorf("levee refused critical calls: %d seen by clients, %d counted by the backend", cl.Refused, lv.serverRefused(0))
	}
	if s := lv.Agg(fs, fe, 4); s.Refused == 0 {
		t.Error("levee refused no sheddable calls in a 3.5C flood")
	}
	if n := none.Agg(fs, fe, allPriorities); n.Refused != 0 {
		t.Errorf("the no-shedding policy refused %d calls", n.Refused)
	}

	var md, csv, svg bytes.Buffer
	if err := rep.WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	if err := res.WriteCSV(&csv); err != nil {
		t.Fatal(err)
	}
	if err := res.WriteSVG(&svg); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"none", "levee"} {
		if !strings.Contains(md.String(), "| "+p+" | flood | critical |") {
			t.Errorf("markdown table has no flood row for policy %s", p)
		}
		if !strings.Contains(csv.String(), "flood,"+p+",") {
			t.Errorf("CSV has no rows for policy %s", p)
		}
	}
	if !strings.Contains(md.String(), "critical success during the flood") {
		t.Error("markdown has no target rows")
	}
	checkXML(t, svg.Bytes())
	if !bytes.Contains(svg.Bytes(), []byte("<polyline")) {
		t.Error("SVG draws no series")
	}

	dir := t.TempDir()
	if err := rep.WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"index.md", "flood.md", "flood.csv", "flood.svg"} {
		if st, err := os.Stat(dir + "/" + f); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v (empty or missing)", f, err)
		}
	}
}

// checkXML fails unless b is one well-formed XML document with an svg root.
func checkXML(t *testing.T, b []byte) {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(b))
	depth, root := 0, ""
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("SVG is not well-formed XML: %v", err)
		}
		switch el := tok.(type) {
		case xml.StartElement:
			if depth == 0 {
				root = el.Name.Local
			}
			depth++
		case xml.EndElement:
			depth--
		}
	}
	if depth != 0 || root != "svg" {
		t.Fatalf("SVG root %q, final depth %d; want a closed svg element", root, depth)
	}
}

func TestScheduleIsReproducible(t *testing.T) {
	sc, err := NewScenario("ramp", 0.1)
	if err != nil {
		t.Fatal(err)
	}
	a := schedule(sc, 900, time.Millisecond, 7)
	b := schedule(sc, 900, time.Millisecond, 7)
	c := schedule(sc, 900, time.Millisecond, 8)
	if len(a) == 0 || len(a) != len(b) {
		t.Fatalf("same seed gave %d and %d arrivals", len(a), len(b))
	}
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("arrival %d differs with the same seed: %+v vs %+v", i, a[i], b[i])
		}
	}
	if len(c) == len(a) && c[0] == a[0] {
		t.Error("a different seed gave the same schedule")
	}
	// Each phase's offered rate and mix come out as asked, within the
	// noise of a Poisson process.
	for i, ph := range sc.Phases {
		from, to := phaseRange(sc, i)
		var byPrio [shed.NumPriorities]int
		for _, x := range a {
			if x.at >= from && x.at < to {
				byPrio[x.prio]++
			}
			if x.at < 0 || x.at >= sc.Duration() || x.service < 0 || x.service > 20*time.Millisecond {
				t.Fatalf("arrival out of range: %+v", x)
			}
		}
		for p, want := range ph.Rate {
			exp := want * 900 * (to - from).Seconds()
			got := float64(byPrio[p])
			if exp == 0 && got != 0 || exp > 0 && (got < exp-5*sqrt(exp) || got > exp+5*sqrt(exp)) {
				t.Errorf("phase %s priority %d: %v arrivals, want about %.0f", ph.Name, p, got, exp)
			}
		}
	}
}

func sqrt(x float64) float64 {
	r := x
	for range 30 {
		r = (r + x/r) / 2
	}
	return r
}

func TestScenariosAndPolicies(t *testing.T) {
	for _, name := range ScenarioNames {
		sc, err := NewScenario(name, 1)
		if err != nil {
			t.Fatal(err)
		}
		// Three policies at scale 1 fit in three minutes.
		if d := 3 * sc.Duration(); d > 3*time.Minute {
			t.Errorf("scenario %s: %v for three policies, want ≤ 3 min", name, d)
		}
	}
	if _, err := NewScenario("nope", 1); err == nil {
		t.Error("unknown scenario accepted")
	}
	if _, err := NewScenario("flood", 0); err == nil {
		t.Error("zero scale accepted")
	}
	for p := range numPolicies {
		got, err := ParsePolicy(p.String())
		if err != nil || got != p {
			t.Errorf("ParsePolicy(%q) = %v, %v", p.String(), got, err)
		}
	}
	if _, err := ParsePolicy("fast"); err == nil {
		t.Error("unknown policy accepted")
	}
	if _, err := NewBackend(BackendConfig{Policy: PolicyStatic}); err == nil {
		t.Error("static policy without a capacity accepted")
	}
}

// startBackend serves a backend in process and returns a client for it.
func startBackend(t *testing.T, cfg BackendConfig) *grpc.ClientConn {
	t.Helper()
	addr, stop, err := InProcess()(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	})
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

func work(ctx context.Context, cc *grpc.ClientConn, prio string, d time.Duration) error {
	ctx = metadata.AppendToOutgoingContext(ctx, shed.HeaderPriority, prio)
	return cc.Invoke(ctx, MethodWork, wrapperspb.Int64(int64(d)), new(emptypb.Empty))
}

func TestStaticLimiterRefusesBeyondItsRate(t *testing.T) {
	cc := startBackend(t, BackendConfig{Policy: PolicyStatic, Capacity: 50})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	refused, ok := 0, 0
	for range 100 { // far faster than 50/s: the 1-token burst is all there is
		switch err := work(ctx, cc, "critical", 0); status.Code(err) {
		case codes.OK:
			ok++
		case codes.ResourceExhausted:
			refused++
		default:
			t.Fatalf("call: %v", err)
		}
	}
	if refused < 50 || ok == 0 {
		t.Fatalf("static limit at 50/s: %d admitted, %d refused of 100 back-to-back calls; want most refused, some admitted", ok, refused)
	}
	s, err := pollStats(ctx, cc, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if s.Refused[0] != uint64(refused) || s.Admitted[0] != uint64(ok) {
		t.Fatalf("backend counted %d admitted, %d refused critical calls; clients saw %d, %d", s.Admitted[0], s.Refused[0], ok, refused)
	}
}

func TestTimedWorkerServesInOrderAndSkipsExpired(t *testing.T) {
	cc := startBackend(t, BackendConfig{Policy: PolicyNone})
	ctx := context.Background()
	// A long request occupies the one worker; a short one behind it with
	// a deadline shorter than the wait is skipped, not served late.
	done := make(chan error, 1)
	go func() { done <- work(ctx, cc, "low", 300*time.Millisecond) }()
	shedtest.Eventually(t, 10*time.Second, "the long request given the worker", func() error {
		s, err := pollStats(ctx, cc, time.Second)
		if err == nil && s.Queue != 1 {
			err = fmt.Errorf("queue %d, want 1", s.Queue)
		}
		return err
	})
	sctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := work(sctx, cc, "critical", time.Millisecond); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("request queued behind 300 ms of work with a 50 ms deadline: %v, want DeadlineExceeded", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("long request: %v", err)
	}
	s, err := pollStats(ctx, cc, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if s.Done != 1 || s.Skipped != 1 {
		t.Fatalf("worker done %d, skipped %d; want 1 and 1", s.Done, s.Skipped)
	}
	if err := work(ctx, cc, "critical", 2*time.Second); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a 2 s service time: %v, want InvalidArgument", err)
	}
}

func TestChildProcessBackend(t *testing.T) {
	t.Setenv(childEnv, "1")
	launch := ChildProcess([]string{os.Args[0]}, 1)
	addr, stop, err := launch(context.Background(), BackendConfig{Policy: PolicyLevee, SaltSeed: 3, Sidecar: true})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := work(ctx, cc, "high", time.Millisecond); err != nil {
		t.Fatalf("call to the child backend: %v", err)
	}
	s, err := pollStats(ctx, cc, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if s.Admitted[1] != 1 || s.Threshold != 0 || s.Limit == 0 || s.Goroutines == 0 {
		t.Fatalf("child stats %+v: want one high call admitted and levee's state", s)
	}
	if err := stop(); err != nil {
		t.Fatalf("stopping the child: %v", err)
	}
	if _, err := pollStats(ctx, cc, 200*time.Millisecond); err == nil {
		t.Fatal("child still answers after stop")
	}
}

func TestCalibrationMeasuresCapacity(t *testing.T) {
	o, err := Options{MeanService: 2 * time.Millisecond, Launch: InProcess()}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	cal, err := calibrate(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("μ %.0f/s, C %.0f/s, p99 %v, success %.2f%%, %d tries", cal.ServiceRate, cal.C, cal.P99, 100*cal.Success, cal.Tries)
	// The worker serves one request per mean service time when busy.
	if cal.ServiceRate < 400 || cal.ServiceRate > 600 {
		t.Errorf("service rate %.0f/s, want about 500/s", cal.ServiceRate)
	}
	if cal.C > 0.9*cal.ServiceRate+1 || cal.C < 0.6*cal.ServiceRate {
		t.Errorf("C %.0f/s, want between 0.6 and 0.9 of μ %.0f/s", cal.C, cal.ServiceRate)
	}
}

// TestProbeSidecarMeasuresItsFloor: the sidecar probe times Admit, Release
// and the pair, and on alternate ticks a health check of the same server,
// the floor it reports beside them.
func TestProbeSidecarMeasuresItsFloor(t *testing.T) {
	cc := startBackend(t, BackendConfig{Policy: PolicyLevee, Capacity: 1000, Sidecar: true})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	rtt := probeSidecar(ctx, cc)
	for i, name := range []string{"Admit", "Release", "both", "health check"} {
		if len(rtt[i]) < 5 {
			t.Errorf("%s: %d round trips timed in 300 ms of 5 ms ticks; want several", name, len(rtt[i]))
		}
	}
	if d := len(rtt[0]) - len(rtt[3]); d < -1 || d > 1 {
		t.Errorf("%d Admits and %d health checks; want them on alternate ticks", len(rtt[0]), len(rtt[3]))
	}
}
