//go:build docker

package compose

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

var (
	imageTag = flag.String("faults.tag", envOr("LEVEE_TAG", "dev"), "tag of the levee and levee-etcd images (deploy/docker/build.sh)")
	keep     = flag.Bool("faults.keep", false, "leave the compose project running after the test (docker-compose -p NAME down -v removes it)")
)

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// composeFile is docker-compose.yaml beside this file.
func composeFile(t testing.TB) string {
	_, self, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the compose file")
	}
	return filepath.Join(filepath.Dir(self), "docker-compose.yaml")
}

// run runs a command and returns its trimmed standard output; the error
// carries its standard error.
func run(ctx context.Context, env []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return strings.TrimSpace(out.String()), nil
}

// docker runs the docker CLI with a timeout.
func docker(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return run(ctx, nil, "docker", args...)
}

// requireDocker skips the test when no Docker engine or docker-compose
// answers, and fails it when the images are missing.
func requireDocker(t *testing.T) {
	t.Helper()
	if _, err := docker("info", "--format", "{{.ServerVersion}}"); err != nil {
		t.Skipf("no Docker engine: %v", err)
	}
	if _, err := exec.LookPath("docker-compose"); err != nil {
		t.Skip("no docker-compose on PATH")
	}
	for _, img := range []string{"levee:" + *imageTag, "levee-etcd:" + *imageTag} {
		if _, err := docker("image", "inspect", "-f", "{{.Id}}", img); err != nil {
			t.Fatalf("image %s is missing: build it with TAG=%s deploy/docker/build.sh", img, *imageTag)
		}
	}
}

// freePort returns a loopback TCP port that was free a moment ago. The
// cluster's ports are fixed for the run (not left to Docker), so that a node
// restarted by the suite keeps its published port.
func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// project is one compose project: the cluster of docker-compose.yaml under
// its own name, with its own networks and published ports.
type project struct {
	t    testing.TB
	name string
	file string
	env  []string
	// grpc and metrics are the published loopback addresses of each levee
	// node's gRPC and metrics ports.
	grpc, metrics []string
	ids           map[string]string // service → container ID
}

var leveeNodes = []string{"levee-0", "levee-1", "levee-2"}
var etcdMembers = []string{"etcd-0", "etcd-1", "etcd-2"}

// newProject names a project and picks its ports; up starts it.
func newProject(t testing.TB) *project {
	p := &project{
		t:    t,
		name: fmt.Sprintf("leveefaults%d", os.Getpid()),
		file: composeFile(t),
		env:  []string{"LEVEE_TAG=" + *imageTag},
		ids:  map[string]string{},
	}
	for i := range leveeNodes {
		g, m := freePort(t), freePort(t)
		p.env = append(p.env, fmt.Sprintf("LEVEE_%d_GRPC=%d", i, g), fmt.Sprintf("LEVEE_%d_METRICS=%d", i, m))
		p.grpc = append(p.grpc, fmt.Sprintf("127.0.0.1:%d", g))
		p.metrics = append(p.metrics, fmt.Sprintf("127.0.0.1:%d", m))
	}
	return p
}

// compose runs docker-compose on the project.
func (p *project) compose(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	return run(ctx, p.env, "docker-compose", append([]string{"-p", p.name, "-f", p.file}, args...)...)
}

// up starts the services and removes the project when the test ends.
func (p *project) up(services ...string) {
	p.t.Helper()
	p.t.Cleanup(func() {
		if *keep {
			p.t.Logf("compose project %s left running", p.name)
			return
		}
		if p.t.Failed() {
			for _, s := range append(leveeNodes, etcdMembers...) {
				if out, _ := p.compose("logs", "--no-color", "--tail", "40", s); out != "" {
					p.t.Logf("logs of %s:\n%s", s, out)
				}
			}
		}
		if *dumpDir != "" {
			// The nodes' whole logs beside the phases' CSV (the last 40
			// lines above rarely reach back to a fault).
			if err := os.MkdirAll(*dumpDir, 0o755); err != nil {
				p.t.Log(err)
			}
			for _, s := range leveeNodes {
				out, _ := p.compose("logs", "--no-color", "--timestamps", s)
				if err := os.WriteFile(filepath.Join(*dumpDir, s+".log"), []byte(out), 0o644); err != nil {
					p.t.Log(err)
				}
			}
		}
		if _, err := p.compose("down", "-v", "--remove-orphans", "-t", "2"); err != nil {
			p.t.Logf("compose down: %v", err)
		}
	})
	if _, err := p.compose(append([]string{"up", "-d", "--no-build"}, services...)...); err != nil {
		p.t.Fatal(err)
	}
}

// id returns the container ID of a service.
func (p *project) id(service string) string {
	p.t.Helper()
	if id, ok := p.ids[service]; ok {
		return id
	}
	id, err := p.compose("ps", "-q", service)
	if err != nil || id == "" {
		p.t.Fatalf("container of %s: %q %v", service, id, err)
	}
	p.ids[service] = id
	return id
}

// network is the Docker name of one of the project's networks.
func (p *project) network(name string) string { return p.name + "_" + name }

// disconnect cuts a levee node from the named networks.
func (p *project) disconnect(node int, networks ...string) error {
	for _, n := range networks {
		if _, err := docker("network", "disconnect", p.network(n), p.id(leveeNodes[node])); err != nil {
			return err
		}
	}
	return nil
}

// connect attaches a levee node to the named networks again, with the
// alias its peers dial on the peers network.
func (p *project) connect(node int, networks ...string) error {
	for _, n := range networks {
		args := []string{"network", "connect"}
		if n == "peers" {
			args = append(args, "--alias", leveeNodes[node]+".peers")
		}
		if _, err := docker(append(args, p.network(n), p.id(leveeNodes[node]))...); err != nil {
			return err
		}
	}
	return nil
}

// exec runs a command in a service's container (the images have no shell:
// the command is one of their binaries).
func (p *project) exec(service string, args ...string) (string, error) {
	return docker(append([]string{"exec", p.id(service)}, args...)...)
}

// health is a container's health status (starting, healthy, unhealthy).
func (p *project) health(service string) string {
	out, _ := docker("inspect", "-f", "{{if .State.Health}}{{.State.Health.Status}}{{end}}", p.id(service))
	return out
}

// etcdLeader returns the etcd member that leads, asking the members that
// answer.
func (p *project) etcdLeader() (string, error) {
	var lastErr error
	for _, m := range etcdMembers {
		out, err := p.exec(m, "etcdctl", "endpoint", "status", "--cluster", "-w", "json", "--command-timeout=2s")
		if err != nil {
			lastErr = err
			continue
		}
		var st []struct {
			Endpoint string `json:"Endpoint"`
			Status   struct {
				Header struct {
					MemberID uint64 `json:"member_id"`
				} `json:"header"`
				Leader uint64 `json:"leader"`
			} `json:"Status"`
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return "", fmt.Errorf("etcdctl endpoint status: %w: %s", err, out)
		}
		for _, s := range st {
			if s.Status.Header.MemberID == s.Status.Leader {
				// http://etcd-1:2379 → etcd-1
				host := strings.TrimPrefix(s.Endpoint, "http://")
				host, _, _ = strings.Cut(host, ":")
				return host, nil
			}
		}
		lastErr = fmt.Errorf("no leader in %s", out)
	}
	return "", lastErr
}

// etcdHealthy reports whether every etcd member answers a health check.
func (p *project) etcdHealthy() bool {
	for _, m := range etcdMembers {
		if _, err := p.exec(m, "etcdctl", "endpoint", "health", "--command-timeout=2s"); err != nil {
			return false
		}
	}
	return true
}

// ctlStatus is the part of `levee ctl status -o json` the suite reads.
type ctlStatus struct {
	ConfigVersion uint64 `json:"config_version"`
	Members       []struct {
		ID            string  `json:"id"`
		Reachable     bool    `json:"reachable"`
		RingShare     float64 `json:"ring_share"`
		ConfigVersion uint64  `json:"config_version"`
	} `json:"members"`
}

// status runs levee ctl status in a node's container, against its admin
// API on the container's loopback.
func (p *project) status(node int) (string, error) {
	return p.exec(leveeNodes[node], "/levee", "ctl", "status", "-o", "json", "--timeout", "5s")
}
