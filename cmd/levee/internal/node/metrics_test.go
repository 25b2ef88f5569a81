package node_test

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"

	"github.com/levee-dev/levee/limiter/engine"
)

// maxFloodedMetricsBytes is the documented bound (README, "Metrics") on
// /metrics of a node whose detailed_metric rule was flooded with distinct
// values: the flooded rule's budget, the other rules, and the Go runtime's
// and the process's metrics.
const maxFloodedMetricsBytes = 128 << 10

// TestMetricsSurviveDetailedFlood floods a detailed_metric rule with
// 100,000 distinct values, then checks that another domain's rule is
// counted under its own domain, result and rule labels (its first
// over-limit included), that the flood shows on its own rule's overflow
// series, that the runtime's own metrics are there, and that /metrics
// stays small.
func TestMetricsSurviveDetailedFlood(t *testing.T) {
	n := startNode(t, map[string]string{
		"flood.yaml": `
domain: flood
descriptors:
  - key: user
    detailed_metric: true
    rate_limit: {unit: minute, requests_per_unit: 1}
`,
		"calm.yaml": `
domain: calm
descriptors:
  - key: tenant
    rate_limit: {unit: minute, requests_per_unit: 1}
`,
	})
	const flood = 100_000
	for i := 0; i < flood; i += engine.MaxItems {
		ds := make([]*ratelimitv3.RateLimitDescriptor, 0, engine.MaxItems)
		for j := i; j < i+engine.MaxItems; j++ {
			ds = append(ds, d("user="+strconv.Itoa(j)))
		}
		n.should(t, req("flood", 1, ds...))
	}
	n.should(t, req("calm", 1, d("tenant=acme"), d("tenant=acme")))

	resp, err := http.Get("http://" + n.addrs.Metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("/metrics after the flood: %d bytes, %d lines", len(body), strings.Count(string(body), "\n"))
	if len(body) > maxFloodedMetricsBytes {
		t.Errorf("/metrics is %d bytes after the flood, documented bound %d", len(body), maxFloodedMetricsBytes)
	}

	m := n.scrape(t)
	for _, c := range []struct {
		labels map[string]string
		want   float64
	}{
		{map[string]string{"domain": "calm", "result": "ok", "rule": "calm.tenant"}, 1},
		{map[string]string{"domain": "calm", "result": "over_limit", "rule": "calm.tenant"}, 1},
		{map[string]string{"domain": "flood", "result": "ok", "rule": "flood.user_0"}, 1},
		{map[string]string{"domain": "flood", "result": "ok", "rule": "flood.user/overflow"}, flood - engine.DetailedSeriesPerRule},
	} {
		if got := metric(t, m, "levee_decisions_total", c.labels); got != c.want {
			t.Errorf("levee_decisions_total%v = %v, want %v", c.labels, got, c.want)
		}
	}
	series := 0
	for _, s := range m {
		if s.name == "levee_decisions_total" {
			series++
		}
		if s.labels["otel_metric_overflow"] != "" {
			t.Errorf("the SDK's overflow series appeared: %v", s)
		}
	}
	if want := engine.DetailedSeriesPerRule + 3; series > want {
		t.Errorf("%d decision series, want at most %d", series, want)
	}
	for _, name := range []string{"go_goroutines", "go_memstats_heap_alloc_bytes", "process_resident_memory_bytes", "process_open_fds"} {
		if metric(t, m, name, nil) <= 0 {
			t.Errorf("%s is missing or zero", name)
		}
	}
}
