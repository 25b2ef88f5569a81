package middleware_test

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/levee-dev/levee/limiter/client"
	"github.com/levee-dev/levee/limiter/client/sidecartest"
	"github.com/levee-dev/levee/limiter/middleware"
	"github.com/levee-dev/levee/shed"
	shedmw "github.com/levee-dev/levee/shed/middleware"
	"github.com/levee-dev/levee/shed/shedtest"
)

const testRules = `
domain: web
descriptors:
  - key: user
    rate_limit: {name: per_user, unit: minute, requests_per_unit: 3}
  - key: route
    rate_limit: {unit: hour, requests_per_unit: 1000}
  - key: token
    rate_limits:
      - {name: fast, unit: second, requests_per_unit: 2}
      - {name: slow, unit: minute, unit_multiplier: 5, requests_per_unit: 4}
  - key: shadow
    shadow_mode: true
    rate_limit: {unit: hour, requests_per_unit: 1}
`

// waitFor bounds waits on a restarted sidecar; it guards against hangs.
const waitFor = 30 * time.Second

func newClient(t *testing.T, sc *sidecartest.Sidecar, failClosed bool) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{
		Target: sc.Target, Now: sc.Clock.Now, FailClosed: failClosed,
		Budget: 10 * time.Second, // these tests are about outcomes, not speed
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{MinConnectTimeout: 10 * time.Second,
			Backoff: backoff.Config{BaseDelay: 10 * time.Millisecond, Multiplier: 1.6, MaxDelay: 100 * time.Millisecond}})},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// describe draws on the user's quota (from X-User), the route's, the
// token's (from X-Token) and a shadow rule's (from X-Shadow).
var describe = middleware.All(
	middleware.Descriptor("web", middleware.Header("user", "X-User")),
	middleware.Descriptor("web", middleware.Route("route")),
	middleware.Descriptor("web", middleware.Header("token", "X-Token")),
	middleware.Descriptor("web", middleware.Header("shadow", "X-Shadow")),
)

// serve runs an HTTP server whose GET /posts/{id} route the limiter
// guards; served counts the requests the application saw.
func serve(t *testing.T, l *middleware.Limiter) (url string, served *int) {
	t.Helper()
	n := 0
	mux := http.NewServeMux()
	mux.Handle("GET /posts/{id}", l.HTTP(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		n++
		_, _ = io.WriteString(w, "ok")
	})))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL, &n
}

func get(t *testing.T, url string, hdr ...string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// sfItem is one item of a Structured Field list: a string and integer
// parameters.
type sfItem struct {
	name   string
	params map[string]int64
}

var sfItemRE = regexp.MustCompile(`^"((?:[^"\\]|\\.)*)"((?:;[a-z]+=[0-9]+)*)$`)

// parseList parses a field value as the draft defines it: a list of
// quoted strings with integer parameters. It fails the test on anything
// else.
func parseList(t *testing.T, v string) []sfItem {
	t.Helper()
	var out []sfItem
	for _, part := range strings.Split(v, ", ") {
		m := sfItemRE.FindStringSubmatch(part)
		if m == nil {
			t.Fatalf("not a list of string items with integer parameters: %q", v)
		}
		it := sfItem{name: m[1], params: map[string]int64{}}
		for _, p := range strings.Split(m[2], ";")[1:] {
			k, val, _ := strings.Cut(p, "=")
			it.params[k], _ = strconv.ParseInt(val, 10, 64)
		}
		out = append(out, it)
	}
	return out
}

// bucket is an independent account of a token bucket holding rate tokens,
// refilled at rate per period, after taken tokens were taken at one
// instant: what is left, and the whole seconds until it is full again.
// levee's tokens arrive at fixed instants, every period/rate; the test
// clock starts on one of them for every rate used here.
type bucket struct {
	rate   int64
	period time.Duration
}

func (b bucket) remaining(taken int64) int64 { return b.rate - taken }

func (b bucket) fullIn(taken int64) int64 {
	return int64(math.Ceil(float64(taken) * b.period.Seconds() / float64(b.rate)))
}

// TestHTTP429AndFields: admitted responses carry the RateLimit fields, the
// request over a quota gets 429 with Retry-After, and every value matches
// an independent account of the buckets; a refused user is then refused
// without a call until the retry time, and served after it.
func TestHTTP429AndFields(t *testing.T) {
	sc := sidecartest.New(t, testRules, sidecartest.TCP)
	url, served := serve(t, middleware.New(newClient(t, sc, false), describe, middleware.Options{}))
	user := bucket{rate: 3, period: time.Minute}
	route := bucket{rate: 1000, period: time.Hour}
	wantPolicy := `"per_user";q=3;w=60, "web.route";q=1000;w=3600`
	for k := int64(1); k <= 3; k++ {
		resp := get(t, url+"/posts/7", "X-User", "ann")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d: %d", k, resp.StatusCode)
		}
		if got := resp.Header.Get("RateLimit-Policy"); got != wantPolicy {
			t.Fatalf("request %d: RateLimit-Policy %q, want %q", k, got, wantPolicy)
		}
		want := fmt.Sprintf(`"per_user";r=%d;t=%d, "web.route";r=%d;t=%d`,
			user.remaining(k), user.fullIn(k), route.remaining(k), route.fullIn(k))
		if got := resp.Header.Get("RateLimit"); got != want {
			t.Fatalf("request %d: RateLimit %q, want %q", k, got, want)
		}
		parseList(t, resp.Header.Get("RateLimit"))
	}

	// The fourth is over per_user: retry when its next token comes, in a
	// third of a minute; the route quota, still under, took its token.
	resp := get(t, url+"/posts/7", "X-User", "ann")
	retry := int64(user.period.Seconds()) / user.rate
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != strconv.FormatInt(retry, 10) {
		t.Fatalf("fourth request: %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	items := parseList(t, resp.Header.Get("RateLimit"))
	if len(items) != 2 || items[0].name != "per_user" || items[0].params["r"] != 0 || items[0].params["t"] != retry ||
		items[1].params["r"] != route.remaining(4) || items[1].params["t"] != route.fullIn(4) {
		t.Fatalf("fourth request: RateLimit %q", resp.Header.Get("RateLimit"))
	}
	if t0 := items[0].params["t"]; t0 > retry {
		t.Fatalf("Retry-After %d precedes the end of the refused quota's window %d", retry, t0)
	}

	// Refused again from the client's cache: no call, same answer.
	calls := sc.Calls()
	for range 5 {
		resp := get(t, url+"/posts/8", "X-User", "ann")
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "20" ||
			resp.Header.Get("RateLimit") != `"per_user";r=0;t=20` || resp.Header.Get("RateLimit-Policy") != `"per_user";q=3;w=60` {
			t.Fatalf("cached refusal: %d %v", resp.StatusCode, resp.Header)
		}
	}
	if sc.Calls() != calls {
		t.Fatalf("%d calls while the refusal was cached", sc.Calls()-calls)
	}
	if *served != 3 {
		t.Fatalf("the application served %d requests, want 3", *served)
	}
	sc.Clock.Add(20 * time.Second)
	if resp := get(t, url+"/posts/7", "X-User", "ann"); resp.StatusCode != http.StatusOK || sc.Calls() != calls+1 {
		t.Fatalf("after the retry time: %d, %d calls", resp.StatusCode, sc.Calls()-calls)
	}
}

// TestHTTPSeveralLimitsAndShadow: a rule with several limits advertises the
// tightest, with its window; a shadow rule is not advertised.
func TestHTTPSeveralLimitsAndShadow(t *testing.T) {
	sc := sidecartest.New(t, testRules, sidecartest.TCP)
	l := middleware.New(newClient(t, sc, false), middleware.All(
		middleware.Descriptor("web", middleware.Header("token", "X-Token")),
		middleware.Descriptor("web", middleware.Header("shadow", "X-Shadow")),
	), middleware.Options{})
	url, _ := serve(t, l)
	// fast: 2 per second; slow: 4 per 5 minutes (a token each 75 s).
	want := []string{
		`"fast";r=1;t=1`, // fast has 1 left, slow 3: fast is the tightest
		`"fast";r=0;t=1`,
	}
	for i, w := range want {
		resp := get(t, url+"/posts/1", "X-Token", "tk", "X-Shadow", "s")
		if resp.StatusCode != http.StatusOK || resp.Header.Get("RateLimit") != w {
			t.Fatalf("request %d: %d %q, want %q", i, resp.StatusCode, resp.Header.Get("RateLimit"), w)
		}
	}
	sc.Clock.Add(time.Second)
	// fast is full again; slow has 2 left, takes one, and is full again
	// when three tokens have come, 3 × 75 s after the first two requests.
	if resp := get(t, url+"/posts/1", "X-Token", "tk"); resp.Header.Get("RateLimit") != `"slow";r=1;t=224` ||
		resp.Header.Get("RateLimit-Policy") != `"slow";q=4;w=300` {
		t.Fatalf("third request: %v", resp.Header)
	}
	// A shadow rule over its limit answers OK and is not advertised.
	if resp := get(t, url+"/posts/1", "X-Shadow", "s"); resp.StatusCode != http.StatusOK || resp.Header.Get("RateLimit") != "" {
		t.Fatalf("shadow: %d %v", resp.StatusCode, resp.Header)
	}
}

// TestHTTPFailOpenAndClosed: with the sidecar stopped mid-test, a limiter
// whose client fails open serves without fields and one that fails closed
// answers 503; with the sidecar back, both enforce again.
func TestHTTPFailOpenAndClosed(t *testing.T) {
	sc := sidecartest.New(t, testRules, sidecartest.Unix)
	openURL, openServed := serve(t, middleware.New(newClient(t, sc, false), describe, middleware.Options{}))
	closedURL, closedServed := serve(t, middleware.New(newClient(t, sc, true), describe, middleware.Options{}))
	for _, url := range []string{openURL, closedURL} {
		if resp := get(t, url+"/posts/1", "X-User", "bo"); resp.StatusCode != http.StatusOK || resp.Header.Get("RateLimit") == "" {
			t.Fatalf("before the stop: %d %v", resp.StatusCode, resp.Header)
		}
	}
	sc.Stop()
	for range 3 {
		if resp := get(t, openURL+"/posts/1", "X-User", "bo"); resp.StatusCode != http.StatusOK || resp.Header.Get("RateLimit") != "" {
			t.Fatalf("fail open: %d %v", resp.StatusCode, resp.Header)
		}
		if resp := get(t, closedURL+"/posts/1", "X-User", "bo"); resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("fail closed: %d", resp.StatusCode)
		}
	}
	if *openServed != 4 || *closedServed != 1 {
		t.Fatalf("served open %d (want 4), closed %d (want 1)", *openServed, *closedServed)
	}
	if err := sc.Restart(); err != nil {
		t.Fatal(err)
	}
	shedtest.Eventually(t, waitFor, "a limited request served once the sidecar is back", func() error {
		if resp := get(t, closedURL+"/posts/1", "X-User", "cy"); resp.StatusCode != http.StatusOK || resp.Header.Get("RateLimit") == "" {
			return fmt.Errorf("after the restart: %d", resp.StatusCode)
		}
		return nil
	})
}

// TestHTTPUnlimitedRequests: a request no describer names makes no call.
func TestHTTPUnlimitedRequests(t *testing.T) {
	sc := sidecartest.New(t, testRules, sidecartest.TCP)
	l := middleware.New(newClient(t, sc, false), middleware.Descriptor("web", middleware.Header("user", "X-User")), middleware.Options{OnlyOnRefusal: true})
	url, _ := serve(t, l)
	if resp := get(t, url+"/posts/1"); resp.StatusCode != http.StatusOK || sc.Calls() != 0 {
		t.Fatalf("%d, %d calls", resp.StatusCode, sc.Calls())
	}
	if resp := get(t, url+"/posts/1", "X-User", "dee"); resp.StatusCode != http.StatusOK || resp.Header.Get("RateLimit") != "" || sc.Calls() != 1 {
		t.Fatalf("OnlyOnRefusal: %d %v, %d calls", resp.StatusCode, resp.Header, sc.Calls())
	}
}

// TestShedThenQuota: with the shedding guard outside the limiter, a shed
// request spends no quota and makes no call to the sidecar.
func TestShedThenQuota(t *testing.T) {
	sc := sidecartest.New(t, testRules, sidecartest.TCP)
	res, err := shed.New("web", shed.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := res.Pin(shed.CriticalOnly, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	l := middleware.New(newClient(t, sc, false), describe, middleware.Options{})
	app := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	srv := httptest.NewServer(shedmw.NewGuard(res, shedmw.GuardOptions{}).HTTP(l.HTTP(app)))
	t.Cleanup(srv.Close)
	for range 5 {
		if resp := get(t, srv.URL+"/x", "X-User", "eve", "X-Levee-Priority", "low"); resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("low under a critical-only pin: %d", resp.StatusCode)
		}
	}
	if sc.Calls() != 0 {
		t.Fatalf("shed requests made %d quota calls", sc.Calls())
	}
	resp := get(t, srv.URL+"/x", "X-User", "eve", "X-Levee-Priority", "critical")
	if resp.StatusCode != http.StatusOK || sc.Calls() != 1 || !strings.HasPrefix(resp.Header.Get("RateLimit"), `"per_user";r=2;`) {
		t.Fatalf("critical: %d, %d calls, %q", resp.StatusCode, sc.Calls(), resp.Header.Get("RateLimit"))
	}
}
