package main

// Process tests of rule files: a real `levee serve` whose --config files
// change under it, checked through the levee.v1 API. They wait for
// conditions and log how long a change took to be enforced; they assert no
// times.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/levee-dev/levee/limiter/rules/rulestest"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
	"github.com/levee-dev/levee/shed/shedtest"
)

// hourlyRules is a rule file limiting each value of key "user" in domain
// to rph requests an hour: nothing refills during a test, so a bucket
// holds exactly rph.
func hourlyRules(domain string, rph int) string {
	return fmt.Sprintf("domain: %s\ndescriptors:\n  - key: user\n    rate_limit:\n      unit: hour\n      requests_per_unit: %d\n", domain, rph)
}

// probes numbers the fresh descriptor values enforced uses, so that each
// probe starts with a full bucket.
var probes atomic.Int64

// enforced returns the limit the node enforces on domain's "user" key: it
// takes the whole burst on a fresh value, and checks that one more request
// is refused. It returns -1 if no limit applies. A probe that a reload
// overtakes (the limit differs between its calls) is made again.
func (p *proc) enforced(t *testing.T, domain string) int64 {
	t.Helper()
	check := func(user string, hits int64) *leveev1.ItemStatus {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := p.client.Check(ctx, &leveev1.CheckRequest{Items: []*leveev1.CheckItem{{
			Target: &leveev1.CheckItem_Descriptor_{Descriptor_: &leveev1.RuleDescriptor{
				Domain: domain, Entries: []*leveev1.Entry{{Key: "user", Value: user}},
			}},
			Hits: proto.Int64(hits),
		}}})
		if err != nil {
			t.Fatalf("%s: Check: %v", p.id, err)
		}
		return resp.GetStatuses()[0]
	}
	same := func(a, b *leveev1.ItemStatus) bool {
		return a.GetLimited() == b.GetLimited() && a.GetLimit() == b.GetLimit()
	}
	for {
		user := fmt.Sprintf("probe-%d", probes.Add(1))
		first := check(user, 0)
		if !first.GetLimited() {
			return -1
		}
		limit := first.GetLimit()
		all, more := check(user, limit), check(user, 1)
		if !same(first, all) || !same(first, more) {
			continue // the rules changed during the probe
		}
		if all.GetCode() != leveev1.Code_CODE_OK {
			t.Fatalf("%s: %s limit %d: %d hits refused (%v)", p.id, domain, limit, limit, all)
		}
		if more.GetCode() != leveev1.Code_CODE_OVER_LIMIT {
			t.Fatalf("%s: %s limit %d: hit %d admitted (%v)", p.id, domain, limit, limit+1, more)
		}
		return limit
	}
}

// waitEnforced waits until the node enforces want on domain and returns
// how long that took.
func (p *proc) waitEnforced(t *testing.T, domain string, want int64) time.Duration {
	t.Helper()
	start := time.Now()
	shedtest.Eventually(t, procWait, fmt.Sprintf("%s enforcing %s limit %d", p.id, domain, want), func() error {
		if got := p.enforced(t, domain); got != want {
			return fmt.Errorf("limit is %d", got)
		}
		return nil
	})
	return time.Since(start)
}

// logRecords returns the node's JSON log records with message msg.
func (p *proc) logRecords(msg string) []map[string]any {
	var out []map[string]any
	for line := range strings.Lines(p.logText()) {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

// writeRuleFile replaces a rule file in one step, as editors and kubectl
// do, so that no poll reads half of it.
func writeRuleFile(t *testing.T, path, data string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	must(t, os.WriteFile(tmp, []byte(data), 0o644))
	must(t, os.Rename(tmp, path))
}

const notReloaded = "rules not reloaded; keeping the last good rules"

// TestProcessRuleFileEdits: a node serving --config DIR enforces an edited
// rule file, refuses a broken one (the log names its path and line) while
// the last good rules keep serving, and enforces the fix.
func TestProcessRuleFileEdits(t *testing.T) {
	bin := buildLevee(t)
	for _, mode := range []struct {
		name string
		args []string
	}{
		{"standalone", []string{"--standalone"}},
		// A clustered node given --config enforces its files too.
		{"default", embeddedEtcd},
	} {
		t.Run(mode.name, func(t *testing.T) {
			dir := t.TempDir()
			api := filepath.Join(dir, "api.yaml")
			writeRuleFile(t, api, hourlyRules("api", 3))
			writeRuleFile(t, filepath.Join(dir, "web.yaml"), hourlyRules("web", 4))
			p := startProc(t, bin, "r1", append([]string{"--config", dir}, mode.args...)...)
			if got := p.enforced(t, "api"); got != 3 {
				t.Fatalf("api limit %d at start, want 3", got)
			}

			writeRuleFile(t, api, hourlyRules("api", 5))
			t.Logf("edit enforced after %v", p.waitEnforced(t, "api", 5))

			// A broken edit: refused, reported with path and line, and the
			// last good rules keep serving.
			writeRuleFile(t, api, hourlyRules("api", 6)+"    burst: 0\n")
			shedtest.Eventually(t, procWait, "the broken file reported", func() error {
				if len(p.logRecords(notReloaded)) == 0 {
					return fmt.Errorf("not in the log:\n%s", p.logText())
				}
				return nil
			})
			rec := p.logRecords(notReloaded)[0]
			if rec["path"] != api || rec["line"] != float64(7) || rec["level"] != "ERROR" {
				t.Errorf("refusal logged as %v; want level ERROR, path %s, line 7", rec, api)
			}
			if got, web := p.enforced(t, "api"), p.enforced(t, "web"); got != 5 || web != 4 {
				t.Fatalf("with a broken file the node enforces api %d, web %d; want the last good 5 and 4", got, web)
			}

			writeRuleFile(t, api, hourlyRules("api", 7))
			t.Logf("fix enforced after %v", p.waitEnforced(t, "api", 7))
			if n := len(p.logRecords(notReloaded)); n != 1 {
				t.Errorf("%d refusals logged for one broken edit", n)
			}
			p.stop(t)
		})
	}
}

// TestProcessConfigMapSwap: a node serving a Kubernetes ConfigMap volume
// (--config the mount) enforces each atomic update: a changed limit, an
// added and a dropped file. The hidden directories are never read as rule
// files and the removal of the old one breaks nothing.
func TestProcessConfigMapSwap(t *testing.T) {
	bin := buildLevee(t)
	m := rulestest.NewConfigMap(t, map[string]string{"api.yaml": hourlyRules("api", 3), "web.yaml": hourlyRules("web", 4)})
	p := startProc(t, bin, "cm", "--standalone", "--config", m.Dir)
	if api, web, extra := p.enforced(t, "api"), p.enforced(t, "web"), p.enforced(t, "extra"); api != 3 || web != 4 || extra != -1 {
		t.Fatalf("at start: api %d, web %d, extra %d; want 3, 4, none", api, web, extra)
	}

	m.Update(map[string]string{"api.yaml": hourlyRules("api", 8), "web.yaml": hourlyRules("web", 4), "extra.yaml": hourlyRules("extra", 2)})
	t.Logf("ConfigMap update enforced after %v", p.waitEnforced(t, "api", 8))
	if extra := p.enforced(t, "extra"); extra != 2 {
		t.Errorf("the added file's limit is %d, want 2", extra)
	}

	m.Update(map[string]string{"api.yaml": hourlyRules("api", 8), "extra.yaml": hourlyRules("extra", 2)})
	p.waitEnforced(t, "web", -1)
	if api := p.enforced(t, "api"); api != 8 {
		t.Errorf("after dropping web.yaml api is %d, want 8", api)
	}

	if recs := p.logRecords(notReloaded); len(recs) != 0 {
		t.Errorf("the updates were refused: %v", recs)
	}
	if strings.Contains(p.logText(), "..2026") {
		t.Errorf("a hidden directory is named in the log")
	}
	p.stop(t)
}
