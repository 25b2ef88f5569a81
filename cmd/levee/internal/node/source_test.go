package node

// Config sources in a cluster: a node enforcing its own files and a node
// following etcd report the same hash for the same files; a file-mode
// node follows its shedding policy file, refuses a broken one and keeps
// the last good, and publishes what it enforces. A real embedded etcd and
// whole nodes; the status is read where levee ctl reads it, in etcd.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/levee-dev/levee/cmd/levee/internal/admin"
	"github.com/levee-dev/levee/cmd/levee/internal/configstore"
	"github.com/levee-dev/levee/deploy/examples"
	"github.com/levee-dev/levee/limiter/cluster/clustertest"
	"github.com/levee-dev/levee/shed/shedtest"
)

// configInfo reads the labels of m's levee_config_info series.
func (m *member) configInfo() (map[string]string, error) {
	resp, err := http.Get("http://" + m.addrs.Metrics + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	line := regexp.MustCompile(`(?m)^levee_config_info\{(.*)\} 1$`).FindSubmatch(body)
	if line == nil {
		return nil, fmt.Errorf("%s: no levee_config_info series of value 1", m.id)
	}
	if !strings.Contains(string(body), "\nlevee_config_applied_timestamp_seconds ") {
		return nil, fmt.Errorf("%s: no levee_config_applied_timestamp_seconds", m.id)
	}
	labels := map[string]string{}
	for _, kv := range regexp.MustCompile(`(\w+)="([^"]*)"`).FindAllSubmatch(line[1], -1) {
		labels[string(kv[1])] = string(kv[2])
	}
	return labels, nil
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestFileAndEtcdSources(t *testing.T) {
	etcd := clustertest.StartEtcd(t)
	client := clustertest.Client(t, etcd.Endpoints())
	dir := t.TempDir()
	rulesDir, policyFile := filepath.Join(dir, "rules"), filepath.Join(dir, "shed.yaml")
	if err := os.MkdirAll(rulesDir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(rulesDir, "prop.yaml"), string(propRules(100)))
	writeFile(t, policyFile, string(examples.ShedPolicy))
	cfg := func(id, source string) Config {
		return Config{
			GRPCAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0",
			RulesPath: rulesDir, ShedPolicyPath: policyFile, RulesPoll: 20 * time.Millisecond,
			ConfigSource: source, ShutdownGrace: clusterWait,
			Cluster: &ClusterConfig{EtcdEndpoints: etcd.Endpoints(), MemberTTL: memberTTL, NodeID: id, PeerTimeout: 5 * time.Second},
		}
	}
	nf := startMemberConfig(t, cfg("nf", ""), nil) // --config given: file
	ne := startMemberConfig(t, cfg("ne", admin.SourceEtcd), nil)
	waitRing(t, 2, nf, ne)

	files, err := configstore.ReadRules(rulesDir)
	if err != nil {
		t.Fatal(err)
	}
	want := configstore.Bundle{Rules: files, Shed: examples.ShedPolicy}.Hash()
	for _, c := range []struct {
		m               *member
		source, version string
	}{{nf, "file", "0"}, {ne, "etcd", "1"}} {
		info, err := c.m.configInfo()
		if err != nil {
			t.Fatal(err)
		}
		if info["source"] != c.source || info["hash"] != want || info["version"] != c.version {
			t.Errorf("%s: levee_config_info%v, want source %s, hash %s, version %s", c.m.id, info, c.source, want, c.version)
		}
	}

	// The published status, as levee ctl status reads it.
	published := func(id string) (admin.MemberStatus, error) {
		var st admin.MemberStatus
		resp, err := client.Get(context.Background(), configstore.NewLayout("").StatusOf(id))
		if err != nil || len(resp.Kvs) == 0 {
			return st, fmt.Errorf("status of %s: %v (%d keys)", id, err, len(resp.Kvs))
		}
		return st, json.Unmarshal(resp.Kvs[0].Value, &st)
	}
	var resources []string
	statusOf := func(check func(admin.MemberStatus) error) {
		t.Helper()
		shedtest.Eventually(t, clusterWait, "nf's published status", func() error {
			st, err := published("nf")
			if err != nil {
				return err
			}
			resources = resources[:0]
			for _, th := range st.Thresholds {
				resources = append(resources, th.Resource)
			}
			slices.Sort(resources)
			return check(st)
		})
	}
	statusOf(func(st admin.MemberStatus) error {
		if st.ConfigSource != "file" || st.ConfigHash != want || st.ConfigAppliedAt.IsZero() || !slices.Equal(st.ConfigPaths, []string{rulesDir, policyFile}) {
			return fmt.Errorf("%+v", st)
		}
		return nil
	})

	// The policy file changes: the file-mode node follows it.
	writeFile(t, policyFile, "resources:\n  - name: search\n    shadow: true\n")
	statusOf(func(st admin.MemberStatus) error {
		if !slices.Equal(resources, []string{"search"}) || st.ConfigHash == want || st.ConfigError != "" {
			return fmt.Errorf("resources %v, hash %s, error %q", resources, st.ConfigHash, st.ConfigError)
		}
		return nil
	})
	changed, err := published("nf")
	if err != nil {
		t.Fatal(err)
	}
	// A broken policy is refused, naming the file; the last good one
	// keeps serving, with its hash.
	writeFile(t, policyFile, "resources:\n  - name: search\n    shadoww: true\n")
	statusOf(func(st admin.MemberStatus) error {
		if !strings.Contains(st.ConfigError, policyFile) || st.ConfigHash != changed.ConfigHash || !slices.Equal(resources, []string{"search"}) {
			return fmt.Errorf("error %q, hash %s, resources %v", st.ConfigError, st.ConfigHash, resources)
		}
		return nil
	})
	// Restored, the node is back on the same hash as the etcd node.
	writeFile(t, policyFile, string(examples.ShedPolicy))
	statusOf(func(st admin.MemberStatus) error {
		if st.ConfigHash != want || st.ConfigError != "" || !slices.Equal(resources, []string{"search", "timeline"}) {
			return fmt.Errorf("hash %s, error %q, resources %v", st.ConfigHash, st.ConfigError, resources)
		}
		return nil
	})
	// The etcd-mode node never read the file again.
	if st, err := published("ne"); err != nil || st.ConfigSource != "etcd" || st.ConfigVersion != 1 || st.ConfigHash != want || st.ConfigWarning != "" {
		t.Errorf("ne's status: %+v, %v", st, err)
	}
}

func TestConfigSourceResolution(t *testing.T) {
	cl := &ClusterConfig{}
	for _, c := range []struct {
		cfg       Config
		want, why string
	}{
		{Config{}, "file", "--standalone"},
		{Config{RulesPath: "r"}, "file", "--standalone"},
		{Config{Cluster: cl}, "etcd", "no --config"},
		{Config{Cluster: cl, ShedPolicyPath: "p"}, "etcd", "no --config"},
		{Config{Cluster: cl, RulesPath: "r"}, "file", "--config given"},
		{Config{Cluster: cl, RulesPath: "r", ConfigSource: "auto"}, "file", "--config given"},
		{Config{Cluster: cl, RulesPath: "r", ConfigSource: "etcd"}, "etcd", "--config-source etcd"},
		{Config{Cluster: cl, ConfigSource: "file"}, "file", "--config-source file"},
	} {
		src, why, err := c.cfg.source()
		if err != nil || src != c.want || why != c.why {
			t.Errorf("%+v: %s (%s), %v; want %s (%s)", c.cfg, src, why, err, c.want, c.why)
		}
	}
	if _, _, err := (Config{ConfigSource: "etcd"}).source(); err == nil || !strings.Contains(err.Error(), "--standalone") || !strings.Contains(err.Error(), "--config-source etcd") {
		t.Errorf("--standalone --config-source etcd: %v; want an error naming both", err)
	}
	if _, _, err := (Config{Cluster: cl, ConfigSource: "files"}).source(); err == nil {
		t.Error("an unknown config source was accepted")
	}
}
