package manifests

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"

	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// repoRoot is levee's module, two directories up.
const repoRoot = "../.."

// targets are the kustomizations every check builds: the base, the TLS
// overlay, and the base with the optional ServiceMonitor component.
var targets = []string{"/k8s/base", "/k8s/overlays/tls", "/k8s/test/monitoring"}

// externalIssuers are the cert-manager issuers the README asks an
// installation for.
var externalIssuers = []string{"etcd-ca"}

var serveOnce struct {
	sync.Once
	s   Serve
	err error
}

// serveOptions reads what levee serve accepts from the help of the levee
// built from this repository.
func serveOptions(t *testing.T) Serve {
	t.Helper()
	serveOnce.Do(func() {
		cmd := exec.Command("go", "run", "./cmd/levee", "serve", "--help")
		cmd.Dir = repoRoot
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			serveOnce.err = err
			t.Logf("go run ./cmd/levee serve --help: %s", stderr.String())
			return
		}
		serveOnce.s, serveOnce.err = ParseServeHelp(string(out))
	})
	if serveOnce.err != nil {
		t.Fatalf("levee serve --help: %v", serveOnce.err)
	}
	return serveOnce.s
}

// imageUser reads the numeric USER of levee's image.
func imageUser(t *testing.T) int64 {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "deploy/docker/levee.Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^USER\s+(\d+)`).FindSubmatch(data)
	if m == nil {
		t.Fatal("levee.Dockerfile: no numeric USER")
	}
	uid, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return uid
}

// tree is deploy/k8s in memory, with a kustomization that adds the
// ServiceMonitor component to the base.
func tree(t *testing.T) filesys.FileSystem {
	t.Helper()
	fsys, err := LoadTree(".", "/k8s")
	if err != nil {
		t.Fatal(err)
	}
	err = fsys.WriteFile("/k8s/test/monitoring/kustomization.yaml", []byte(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [../../base]
components: [../../components/servicemonitor]
`))
	if err != nil {
		t.Fatal(err)
	}
	return fsys
}

// validate decodes the sources, builds every target and checks each build.
func validate(t *testing.T, fsys filesys.FileSystem) (map[string][]Object, error) {
	t.Helper()
	c := Checker{Serve: serveOptions(t), ImageUser: imageUser(t), ExternalIssuers: externalIssuers, TempDir: t.TempDir()}
	var errs []string
	if err := DecodeSources(fsys, "/k8s"); err != nil {
		errs = append(errs, err.Error())
	}
	builds := map[string][]Object{}
	for _, target := range targets {
		objs, err := Build(fsys, target)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		builds[target] = objs
		if err := c.Check(objs); err != nil {
			errs = append(errs, target+":\n"+err.Error())
		}
	}
	if len(errs) > 0 {
		return builds, &joined{errs}
	}
	return builds, nil
}

type joined struct{ errs []string }

func (j *joined) Error() string { return strings.Join(j.errs, "\n") }

func TestManifests(t *testing.T) {
	builds, err := validate(t, tree(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, target := range targets {
		var kinds []string
		for _, o := range builds[target] {
			kinds = append(kinds, o.String())
		}
		t.Logf("%s: %s", target, strings.Join(kinds, ", "))
	}
	// What each build must hold, so that a check cannot pass by having
	// nothing to look at.
	for target, want := range map[string][]string{
		"/k8s/base":            {"StatefulSet/levee", "Service/levee", "Service/levee-peers", "PodDisruptionBudget/levee", "NetworkPolicy/levee"},
		"/k8s/overlays/tls":    {"StatefulSet/levee", "Certificate/levee-node", "Certificate/levee-ctl", "NetworkPolicy/levee-admin"},
		"/k8s/test/monitoring": {"ServiceMonitor/levee"},
	} {
		for _, w := range want {
			found := false
			for _, o := range builds[target] {
				found = found || o.String() == w
			}
			if !found {
				t.Errorf("%s: no %s", target, w)
			}
		}
	}
}

// TestRulesCopies: kustomize reads no file outside its root, so the base
// holds copies of deploy/examples' rules and shedding policy; they must not
// drift, and every copy is in a ConfigMap the nodes mount.
func TestRulesCopies(t *testing.T) {
	kustomization, err := os.ReadFile(filepath.Join("base", "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{"rules", "shed"} {
		orig, _ := filepath.Glob(filepath.Join(repoRoot, "deploy/examples", dir, "*.yaml"))
		copies, _ := filepath.Glob(filepath.Join("base", dir, "*.yaml"))
		if len(orig) == 0 || len(orig) != len(copies) {
			t.Errorf("deploy/examples/%s has %d files, deploy/k8s/base/%s %d", dir, len(orig), dir, len(copies))
		}
		for _, o := range orig {
			want, err := os.ReadFile(o)
			if err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(filepath.Join("base", dir, filepath.Base(o)))
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("base/%s/%s differs from deploy/examples (%v): cp deploy/examples/%s/*.yaml deploy/k8s/base/%s/", dir, filepath.Base(o), err, dir, dir)
			}
			if entry := "- " + dir + "/" + filepath.Base(o) + "\n"; !bytes.Contains(kustomization, []byte(entry)) {
				t.Errorf("base/kustomization.yaml's configMapGenerator lacks %q: the nodes would not get %s", entry, filepath.Base(o))
			}
		}
	}
}

// TestBrokenManifests: each mutation of a correct manifest, one at a time,
// is caught, with a message that names the fault.
func TestBrokenManifests(t *testing.T) {
	for _, m := range []struct {
		name, file, old, new, want string
		also                       [2]string // a second edit of the same file, old and new
	}{
		{"container port renamed", "base/statefulset.yaml", "- name: grpc\n              containerPort: 8081", "- name: grcp\n              containerPort: 8081", "targetPort grpc is not a port", [2]string{}},
		{"unknown field", "base/statefulset.yaml", "  replicas: 3", "  replica: 3", `unknown field "spec.replica"`, [2]string{}},
		{"duplicate field", "base/statefulset.yaml", "  serviceName: levee-peers\n", "  serviceName: levee-peers\n  serviceName: levee\n", `"serviceName" already`, [2]string{}},
		{"unknown field in a patch", "overlays/tls/statefulset-tls.yaml", "          volumeMounts:", "          volumeMount:\n            - name: x\n              mountPath: /x\n          volumeMounts:", `unknown field "spec.template.spec.containers[0].volumeMount"`, [2]string{}},
		{"variable levee does not read", "base/statefulset.yaml", "name: LEVEE_SHUTDOWN_GRACE", "name: LEVEE_SHUTDOWN_GRACEE", "levee serve reads no variable LEVEE_SHUTDOWN_GRACEE", [2]string{}},
		{"ConfigMap key levee does not read", "base/kustomization.yaml", "LEVEE_MAX_KEYS=", "LEVEE_MAXKEYS=", "reads no variable LEVEE_MAXKEYS", [2]string{}},
		{"flag levee does not have", "base/statefulset.yaml", `args: ["serve"]`, `args: ["serve", "--shutdown-grase=5s"]`, "levee serve has no flag --shutdown-grase", [2]string{}},
		{"Service selector matches no pod", "base/service.yaml", "  selector:\n    app.kubernetes.io/name: levee", "  selector:\n    app.kubernetes.io/name: leve", "selects the pods of 0 workloads", [2]string{}},
		{"probe on another port", "base/statefulset.yaml", "readinessProbe:\n            grpc:\n              port: 8081", "readinessProbe:\n            grpc:\n              port: 8082", "readinessProbe: gRPC probe on port 8082", [2]string{}},
		{"rule levee refuses", "base/rules/example.yaml", "unit: minute", "unit: fortnight", "does not load as levee's rules", [2]string{}},
		{"grace shorter than the shutdown", "base/statefulset.yaml", "terminationGracePeriodSeconds: 50", "terminationGracePeriodSeconds: 30", "terminationGracePeriodSeconds 30s < preStop 5s + 4", [2]string{}},
		{"variable used before it is defined", "base/statefulset.yaml", "$(POD_IP):8081", "$(POD_ADDR):8081", "refers to $(POD_ADDR)", [2]string{}},
		{"writable root file system", "base/statefulset.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "readOnlyRootFilesystem is not true", [2]string{}},
		{"root user", "base/statefulset.yaml", "runAsUser: 65532", "runAsUser: 0", "runAsUser 0 is not the image's user 65532", [2]string{}},
		{"service links", "base/statefulset.yaml", "enableServiceLinks: false", "enableServiceLinks: true", "enableServiceLinks must be false", [2]string{}},
		{"rules mounted elsewhere", "base/statefulset.yaml", "mountPath: /etc/levee/rules", "mountPath: /etc/levee/rulez", "/etc/levee/rules is in no mounted volume", [2]string{}},
		{"peers cut off by the NetworkPolicy", "base/networkpolicy.yaml", "        - podSelector:\n            matchLabels:\n              app.kubernetes.io/name: levee\n", "", "reach each other's gRPC port", [2]string{}},
		{"pod IP advertised over TLS", "overlays/tls/statefulset-tls.yaml", "$(POD_NAME).levee-peers:8081", "$(POD_IP):8081", "does not cover 10.1.2.3", [2]string{"- name: POD_NAME\n              valueFrom:\n                fieldRef:\n                  fieldPath: metadata.name", "- name: POD_IP\n              valueFrom:\n                fieldRef:\n                  fieldPath: status.podIP"}},
		{"peer names no certificate has", "overlays/tls/statefulset-tls.yaml", "value: levee-node", "value: levee-nodes", "--peer-names levee-nodes", [2]string{}},
		{"node certificate without client use", "overlays/tls/certificates.yaml", "    - server auth\n    - client auth\n", "    - server auth\n", "(server auth, client auth)", [2]string{}},
		{"unknown field in a Certificate", "overlays/tls/certificates.yaml", "  isCA: true", "  isCa: true", `unknown field "spec.isCa"`, [2]string{}},
		{"admin API open to every namespace", "overlays/tls/networkpolicy-admin.yaml", "        - podSelector:", "        - namespaceSelector: {}\n          podSelector:", "admin port is open beyond", [2]string{}},
		{"TLS file not in the Secret", "overlays/tls/statefulset-tls.yaml", "/etc/levee/tls/ca.crt", "/etc/levee/tls/ca.pem", "not ca.pem", [2]string{}},
		{"ServiceMonitor on a missing port", "components/servicemonitor/servicemonitor.yaml", "- port: metrics", "- port: metric", "endpoint port metric is not a port", [2]string{}},
		{"exec probe needing a shell", "overlays/tls/probes-tls.yaml", `command: ["/levee", "probe"]`, `command: ["sh", "-c", "levee probe"]`, "the image has no shell", [2]string{}},
	} {
		t.Run(m.name, func(t *testing.T) {
			fsys := tree(t)
			p := "/k8s/" + m.file
			data, err := fsys.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(data, []byte(m.old)) {
				t.Fatalf("%s does not contain %q: update the mutation", m.file, m.old)
			}
			data = bytes.Replace(data, []byte(m.old), []byte(m.new), 1)
			if m.also[0] != "" {
				if !bytes.Contains(data, []byte(m.also[0])) {
					t.Fatalf("%s does not contain %q: update the mutation", m.file, m.also[0])
				}
				data = bytes.Replace(data, []byte(m.also[0]), []byte(m.also[1]), 1)
			}
			if err := fsys.WriteFile(p, data); err != nil {
				t.Fatal(err)
			}
			_, err = validate(t, fsys)
			if err == nil {
				t.Fatalf("the mutated manifests pass every check; want %q", m.want)
			}
			if !strings.Contains(err.Error(), m.want) {
				t.Fatalf("caught, but not as %q:\n%v", m.want, err)
			}
			t.Logf("caught:\n%v", err)
		})
	}
}
