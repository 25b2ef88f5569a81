package node

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/levee-dev/levee/limiter/cluster/clustertest"
)

// dashboardFile is the Grafana dashboard shipped in deploy/grafana.
const dashboardFile = "../../../../deploy/grafana/levee.json"

var (
	// metricRE finds levee's metrics and the Go runtime's and the
	// process's.
	metricRE = regexp.MustCompile(`\b(?:levee|go|process)_[a-z0-9_]+`)
	// byRE and matcherRE find the label names a PromQL expression groups
	// by or selects on.
	byRE      = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	matcherRE = regexp.MustCompile(`([a-z_]+)\s*(?:=~|!~|!=|=)\s*"`)
	labelVals = regexp.MustCompile(`label_values\((levee_[a-z0-9_]+),\s*([a-z_]+)\)`)
	// rateRE finds what rate() and increase() are taken of.
	rateRE = regexp.MustCompile(`\b(rate|increase|irate)\(\s*((?:levee|go|process)_[a-z0-9_]+)`)
)

// dashPanel is a Grafana panel or row, as far as the test reads it.
type dashPanel struct {
	Title   string `json:"title"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []dashPanel `json:"panels"`
}

// TestDashboardQueriesExportedMetrics reads every query of the Grafana
// dashboard and checks it against what a clustered node that has served
// calls exports: each metric exists, and each label a query groups by or
// selects on is one that metric carries, and rate() and increase() are
// only taken of counters. A renamed metric or label breaks this test, not
// a dashboard on the night it is needed.
func TestDashboardQueriesExportedMetrics(t *testing.T) {
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels     []dashPanel `json:"panels"`
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}

	e := clustertest.StartEtcd(t)
	m := startMember(t, e.Endpoints(), "dash", "")
	ctx, cancel := context.WithTimeout(context.Background(), clusterWait)
	defer cancel()
	for range 3 {
		if _, err := m.envoy.ShouldRateLimit(ctx, &rlsv3.RateLimitRequest{Domain: "example", Descriptors: []*ratelimitv3.RateLimitDescriptor{
			{Entries: []*ratelimitv3.RateLimitDescriptor_Entry{{Key: "user", Value: "alice"}}},
		}}); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := http.Get("http://" + m.addrs.Metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	// labels[name] holds the label names of a series name as queries
	// write it (a histogram's _bucket, _count and _sum included).
	labels := map[string]map[string]bool{}
	// counters holds the series names rate() and increase() may take:
	// counters and a histogram's series.
	counters := map[string]bool{}
	for name, f := range families {
		names := []string{name}
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM:
			names = []string{name + "_bucket", name + "_count", name + "_sum"}
			for _, n := range names {
				counters[n] = true
			}
		case dto.MetricType_SUMMARY:
			names = []string{name, name + "_count", name + "_sum"}
			counters[name+"_count"], counters[name+"_sum"] = true, true
		case dto.MetricType_COUNTER:
			counters[name] = true
		}
		set := map[string]bool{}
		for _, s := range f.GetMetric() {
			for _, l := range s.GetLabel() {
				set[l.GetName()] = true
			}
		}
		for _, n := range names {
			labels[n] = set
		}
	}
	// Prometheus adds these at scrape or query time.
	implicit := map[string]bool{"instance": true, "job": true, "le": true}

	var queries int
	check := func(where, expr string) {
		queries++
		metrics := slices.Compact(slices.Sorted(slices.Values(metricRE.FindAllString(expr, -1))))
		if len(metrics) == 0 {
			t.Errorf("%s: %q queries no metric levee exports", where, expr)
			return
		}
		for _, name := range metrics {
			if labels[name] == nil {
				t.Errorf("%s: %s is not exported (query %q)", where, name, expr)
			}
		}
		for _, r := range rateRE.FindAllStringSubmatch(expr, -1) {
			if !counters[r[2]] {
				t.Errorf("%s: %s of %s, which is not a counter (query %q)", where, r[1], r[2], expr)
			}
		}
		var used []string
		for _, g := range byRE.FindAllStringSubmatch(expr, -1) {
			for _, l := range strings.Split(g[1], ",") {
				used = append(used, strings.TrimSpace(l))
			}
		}
		for _, mm := range matcherRE.FindAllStringSubmatch(expr, -1) {
			used = append(used, mm[1])
		}
		for _, l := range used {
			if implicit[l] {
				continue
			}
			found := false
			for _, name := range metrics {
				found = found || labels[name][l]
			}
			if !found {
				t.Errorf("%s: no metric of %q carries the label %q", where, expr, l)
			}
		}
	}
	var walk func([]dashPanel)
	walk = func(ps []dashPanel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				check("panel "+p.Title, tg.Expr)
			}
			walk(p.Panels) // a collapsed row holds its panels
		}
	}
	walk(dash.Panels)
	for _, v := range dash.Templating.List {
		if lv := labelVals.FindStringSubmatch(v.Definition); lv != nil {
			check("variable "+v.Name, lv[1]+`{`+lv[2]+`="x"}`)
		}
	}
	if queries < 20 {
		t.Errorf("%d queries checked; the dashboard has more", queries)
	}
}
