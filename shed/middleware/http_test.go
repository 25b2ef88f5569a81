package middleware

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/levee-dev/levee/shed"
)

func newHTTP(t *testing.T, cfg shed.Config) (*shed.Resource, *httptest.Server, *atomic.Int64) {
	t.Helper()
	res, err := shed.New("web", cfg)
	if err != nil {
		t.Fatal(err)
	}
	var served atomic.Int64
	h := NewGuard(res, GuardOptions{}).HTTP(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		if r.URL.Path == "/busy" {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok")
	}))
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return res, srv, &served
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
	t.Cleanup(func() { _ = resp.Body.Close() })
	return resp
}

func TestHTTPShedIs503WithRetryAfter(t *testing.T) {
	res, srv, served := newHTTP(t, shed.Config{RetryAfter: 1500 * time.Millisecond, MaxRetryAfter: time.Minute})
	if err := res.Pin(shed.CriticalOnly, time.Now().Add(20*time.Second)); err != nil {
		t.Fatal(err)
	}
	resp := get(t, srv.URL, "X-Levee-Priority", "low", "X-Levee-User", "alice")
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("low under a critical-only pin: %d, want 503", resp.StatusCode)
	}
	if ra := resp.Header.Get("Retry-After"); ra != "20" {
		t.Fatalf("Retry-After %q, want 20 (seconds left on the pin)", ra)
	}
	if served.Load() != 0 {
		t.Fatal("a shed request reached the handler")
	}
	// Header names are case-insensitive.
	resp = get(t, srv.URL, "x-levee-priority", "CRITICAL")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("critical: %d, want 200", resp.StatusCode)
	}
	res.Unpin()
	// Threshold refusals suggest RetryAfter, rounded up to whole seconds.
	if err := res.Pin(shed.CriticalOnly, time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	resp = get(t, srv.URL)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "2" {
		t.Fatalf("unlabelled under a 1 s pin: %d, Retry-After %q; want 503, 2", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}

func TestHTTPBadLabelIs400(t *testing.T) {
	_, srv, served := newHTTP(t, shed.Config{})
	resp := get(t, srv.URL, "X-Levee-Priority", "urgent")
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), shed.HeaderPriority) {
		t.Fatalf("unknown priority: %d %q; want 400 naming %s", resp.StatusCode, body, shed.HeaderPriority)
	}
	if served.Load() != 0 {
		t.Fatal("a bad request reached the handler")
	}
}

func TestHTTPReleasesPermits(t *testing.T) {
	res, srv, served := newHTTP(t, shed.Config{})
	for _, path := range []string{"/", "/busy", "/"} {
		get(t, srv.URL+path, "X-Levee-Priority", "high")
	}
	if served.Load() != 3 {
		t.Fatalf("served %d, want 3", served.Load())
	}
	if res.Inflight() != 0 {
		t.Fatalf("inflight %d after all requests finished", res.Inflight())
	}
	if c := res.Counts(shed.High); c.Admitted != 3 {
		t.Fatalf("high counts %+v, want 3 admitted", c)
	}
}

func TestHTTPOutcome(t *testing.T) {
	ctx := httptest.NewRequest(http.MethodGet, "/", nil).Context()
	if httpOutcome(ctx, 200) != shed.OutcomeSuccess || httpOutcome(ctx, 503) != shed.OutcomeDropped ||
		httpOutcome(ctx, 504) != shed.OutcomeDropped || httpOutcome(ctx, 404) != shed.OutcomeSuccess {
		t.Fatal("httpOutcome misclassifies status codes")
	}
	// A caller that went away is no sample; one whose deadline passed saw
	// a timeout, as the gRPC middleware counts it.
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	expired, cancel2 := context.WithDeadline(ctx, time.Now().Add(-time.Second))
	defer cancel2()
	if o := httpOutcome(cancelled, 200); o != shed.OutcomeIgnored {
		t.Errorf("cancelled: %v, want OutcomeIgnored", o)
	}
	if o := httpOutcome(expired, 200); o != shed.OutcomeDropped {
		t.Errorf("deadline passed: %v, want OutcomeDropped", o)
	}
}
