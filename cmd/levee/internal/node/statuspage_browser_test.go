package node

// The status page in a real browser: headless Chromium (Debian's chromium
// package, installed by .ci/browser.sh) driven with chromedp against three
// whole nodes and a real embedded etcd.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/levee-dev/levee/cmd/levee/internal/configstore"
	"github.com/levee-dev/levee/limiter/cluster/clustertest"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
	"github.com/levee-dev/levee/shed/shedtest"
)

// chromiumPath finds the browser: $LEVEE_CHROMIUM, else chromium on PATH.
// Without one the test skips, unless LEVEE_BROWSER_TEST=1 (CI) requires
// it.
func chromiumPath(t *testing.T) string {
	if p := os.Getenv("LEVEE_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("LEVEE_BROWSER_TEST") == "1" {
		t.Fatal("no chromium on PATH: run .ci/browser.sh")
	}
	t.Skip("no chromium on PATH (install it with .ci/browser.sh)")
	return ""
}

// browser starts headless Chromium and returns a tab context. Every
// console error, uncaught exception and browser log entry of level error
// (a failed request, a content security policy violation) is added to
// errs.
func browser(t *testing.T, errs *consoleErrors) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1440, 1000),
	)
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(acancel)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	messages := chromedp.Console(ctx) // starts the browser and subscribes
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Go(func() {
		for m, err := range messages {
			if err != nil {
				return // the context ended
			}
			if m.Type == chromedp.ConsoleError || m.IsException() {
				errs.add(m.String() + " " + m.URL)
			}
		}
	})
	return ctx
}

type consoleErrors struct {
	mu   sync.Mutex
	msgs []string
}

func (c *consoleErrors) add(s string) {
	c.mu.Lock()
	c.msgs = append(c.msgs, s)
	c.mu.Unlock()
}

func (c *consoleErrors) list() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.msgs...)
}

// evalUntil evaluates expr in the page until it returns true, and returns
// how long that took.
func evalUntil(t *testing.T, ctx context.Context, what, expr string) time.Duration {
	t.Helper()
	start := time.Now()
	shedtest.Eventually(t, clusterWait, what, func() error {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
		if err != nil {
			t.Fatalf("%s: evaluating %s: %v", what, expr, err)
		}
		if ok {
			return nil
		}
		body, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector("main").innerText`))
		return fmt.Errorf("not shown; the page reads:\n%s", body)
	})
	return time.Since(start)
}

// statusLoad keeps the nodes busy: rate limit checks on every node and
// shedding admissions at every priority on the first, so that the page
// has rates, refusals and charts to show.
func statusLoad(ctx context.Context, t *testing.T, wg *sync.WaitGroup, ms []*member) {
	prios := []leveev1.Priority{
		leveev1.Priority_PRIORITY_CRITICAL, leveev1.Priority_PRIORITY_HIGH, leveev1.Priority_PRIORITY_DEFAULT,
		leveev1.Priority_PRIORITY_LOW, leveev1.Priority_PRIORITY_SHEDDABLE,
	}
	for i, m := range ms {
		conn, err := grpc.NewClient(m.addrs.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		envoy := rlsv3.NewRateLimitServiceClient(conn)
		shedc := leveev1.NewShedServiceClient(conn)
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				_, _ = envoy.ShouldRateLimit(ctx, &rlsv3.RateLimitRequest{Domain: "example", Descriptors: []*ratelimitv3.RateLimitDescriptor{
					{Entries: []*ratelimitv3.RateLimitDescriptor_Entry{{Key: "user", Value: fmt.Sprintf("u%d", n%50)}}},
				}})
				if i == 0 {
					resp, err := shedc.Admit(ctx, &leveev1.AdmitRequest{Resource: "timeline", Priority: prios[n%len(prios)], User: fmt.Sprintf("u%d", n%97)})
					if err == nil && resp.Admitted {
						_, _ = shedc.Release(ctx, &leveev1.ReleaseRequest{Resource: "timeline", Permit: resp.Permit})
					}
				}
				time.Sleep(2 * time.Millisecond) // paces the load; nothing is awaited
			}
		})
	}
}

// TestStatusPageInBrowser loads the status page of a three-node cluster in
// headless Chromium: it lists the three members, shows a threshold change
// (an operator's override, written to etcd as `levee ctl override` does)
// within two seconds, and marks a stopped node as gone; the page logs no
// error throughout. With LEVEE_STATUS_SCREENSHOT=file.png it also saves a
// screenshot of the page under load (LEVEE_STATUS_SCREENSHOT_LOAD sets how
// long the load runs first, so that the charts fill).
func TestStatusPageInBrowser(t *testing.T) {
	var errs consoleErrors
	ctx := browser(t, &errs)

	etcd := clustertest.StartEtcd(t)
	ms := []*member{
		startMember(t, etcd.Endpoints(), "n1", ""),
		startMember(t, etcd.Endpoints(), "n2", ""),
		startMember(t, etcd.Endpoints(), "n3", ""),
	}
	waitRing(t, 3, ms...)
	loadCtx, stopLoad := context.WithCancel(context.Background())
	var loadWG sync.WaitGroup
	t.Cleanup(func() { stopLoad(); loadWG.Wait() })
	statusLoad(loadCtx, t, &loadWG, ms)

	url := "http://" + ms[0].addrs.Metrics + "/status"
	if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
		t.Fatalf("opening %s: %v", url, err)
	}
	evalUntil(t, ctx, "three members up",
		`document.querySelectorAll('#members tr[data-state="up"]').length === 3`)
	names, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll('#members tr[data-member]')].map(r => r.dataset.member)`))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(names, ",") != "n1,n2,n3" {
		t.Errorf("members listed: %v, want n1,n2,n3", names)
	}
	// The load's users are checked through every node: n1 forwards those
	// other nodes own (their example limits are drained, so not leased),
	// and the page says what it did with them.
	evalUntil(t, ctx, "n1's checks of other nodes' keys",
		`/this node, keys other nodes own: [1-9][0-9.]*k?\/s forwarded, [0-9.]+k?\/s from leases, [0-9.]+k?\/s by failure_mode/.test(document.getElementById('members-count').textContent)`)

	var fill time.Duration // how long the load runs before and after the override
	if d := os.Getenv("LEVEE_STATUS_SCREENSHOT_LOAD"); d != "" {
		if fill, err = time.ParseDuration(d); err != nil {
			t.Fatalf("LEVEE_STATUS_SCREENSHOT_LOAD: %v", err)
		}
		fill /= 2
		time.Sleep(fill) // lets the load fill the charts; nothing is awaited
	}

	store, err := configstore.New(configstore.Options{Client: clustertest.Client(t, etcd.Endpoints()), Prefix: configstore.DefaultPrefix, ValidateShed: validateShedPolicy})
	if err != nil {
		t.Fatal(err)
	}
	threshold := `document.querySelector('[data-resource="timeline"] .threshold').textContent`
	before, err := chromedp.Run(ctx, chromedp.Evaluate[string](threshold))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(before, "critical") {
		t.Fatalf("timeline already admits only critical before the override: %q", before)
	}
	if _, _, err := store.SetOverride(context.Background(), configstore.Override{
		Resource: "timeline", MinPriority: "critical", Until: time.Now().Add(20 * time.Minute),
		Author: "oncall@example.com", Reason: "INC-4711: timeline p99 over 2 s, shedding to critical",
	}); err != nil {
		t.Fatal(err)
	}
	took := evalUntil(t, ctx, "the override's threshold", threshold+`.includes("critical")`)
	t.Logf("override written to etcd → shown on the page: %v", took)
	// The page polls every second and reads the threshold live on each
	// poll; the rest is etcd's watch. The time is reported, not asserted:
	// a shared machine's scheduling is not the page's behaviour.
	evalUntil(t, ctx, "the override listed", `!!document.querySelector('#overrides tr[data-override="timeline"]')`)

	time.Sleep(fill) // as above

	ms[2].stop(t)
	evalUntil(t, ctx, "n3 marked gone", `!!document.querySelector('#members tr[data-member="n3"][data-state="gone"]')`)
	rows, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('#members tr[data-member]').length`))
	if err != nil {
		t.Fatal(err)
	}
	if rows != 3 {
		t.Errorf("%d members listed after n3 stopped, want 3 (n3 kept as gone)", rows)
	}

	if out := os.Getenv("LEVEE_STATUS_SCREENSHOT"); out != "" {
		if err := chromedp.Do(ctx, chromedp.Sleep(1500*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(out, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot saved to %s", out)
	}
	if e := errs.list(); len(e) > 0 {
		t.Errorf("the page logged %d errors:\n%s", len(e), strings.Join(e, "\n"))
	}
}
