package manifests

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/levee-dev/levee/limiter/rules"
	"github.com/levee-dev/levee/shed/policy"
)

// The steps of a node's shutdown that --shutdown-grace bounds, one after
// the other: leaving the ring, handing the buckets off, draining in-flight
// calls, stopping the metrics server.
const graceSteps = 4

// Checker checks the resources of one build.
type Checker struct {
	// Serve is what levee serve accepts.
	Serve Serve
	// ImageUser is the numeric user levee's image runs as.
	ImageUser int64
	// ExternalIssuers are cert-manager issuers an installation provides
	// (named in the README); any other issuer must be in the build.
	ExternalIssuers []string
	// TempDir is where rule files are laid out to be loaded.
	TempDir string
}

// build is one build's resources, by kind.
type build struct {
	workloads  []workload
	services   []*corev1.Service
	configMaps map[string]*corev1.ConfigMap
	secrets    map[string]*corev1.Secret
	pdbs       []*policyv1.PodDisruptionBudget
	netpols    []*networkingv1.NetworkPolicy
	certs      []*Certificate
	issuers    map[string]*Issuer
	monitors   []*ServiceMonitor
}

// workload is a StatefulSet or Deployment.
type workload struct {
	id          string
	name        string
	replicas    int32
	selector    *metav1.LabelSelector
	pod         *corev1.PodTemplateSpec
	serviceName string // a StatefulSet's
}

func (w workload) selects(sel *metav1.LabelSelector) bool {
	if sel == nil {
		return false
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	return err == nil && !s.Empty() && s.Matches(labels.Set(w.pod.Labels))
}

// problems collects what a check finds.
type problems struct{ errs []error }

func (p *problems) add(what fmt.Stringer, format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf("%s: %s", what, fmt.Sprintf(format, args...)))
}

type name string

func (n name) String() string { return string(n) }

// Check checks a build's resources and returns every problem found, joined.
func (c Checker) Check(objs []Object) error {
	b := &build{configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{}, issuers: map[string]*Issuer{}}
	var p problems
	for _, o := range objs {
		switch v := o.Obj.(type) {
		case *appsv1.StatefulSet:
			b.workloads = append(b.workloads, workload{id: o.String(), name: v.Name, replicas: ptrOr(v.Spec.Replicas, 1), selector: v.Spec.Selector, pod: &v.Spec.Template, serviceName: v.Spec.ServiceName})
		case *appsv1.Deployment:
			b.workloads = append(b.workloads, workload{id: o.String(), name: v.Name, replicas: ptrOr(v.Spec.Replicas, 1), selector: v.Spec.Selector, pod: &v.Spec.Template})
		case *corev1.Service:
			b.services = append(b.services, v)
		case *corev1.ConfigMap:
			b.configMaps[v.Name] = v
		case *corev1.Secret:
			b.secrets[v.Name] = v
		case *corev1.ServiceAccount:
		case *policyv1.PodDisruptionBudget:
			b.pdbs = append(b.pdbs, v)
		case *networkingv1.NetworkPolicy:
			b.netpols = append(b.netpols, v)
		case *Certificate:
			b.certs = append(b.certs, v)
		case *Issuer:
			b.issuers[v.Name] = v
		case *ServiceMonitor:
			b.monitors = append(b.monitors, v)
		default:
			p.add(o, "no checks for this kind: add them to deploy/k8s/check.go")
		}
	}
	if len(b.workloads) == 0 {
		p.add(name("build"), "no StatefulSet or Deployment")
	}
	for _, w := range b.workloads {
		c.checkWorkload(&p, b, w)
	}
	c.checkServices(&p, b)
	c.checkPDBs(&p, b)
	c.checkNetworkPolicies(&p, b)
	c.checkMonitors(&p, b)
	c.checkCertificates(&p, b)
	return errors.Join(p.errs...)
}

func ptrOr[T any](v *T, def T) T {
	if v == nil {
		return def
	}
	return *v
}

// pods returns the workloads whose pods sel selects.
func (b *build) pods(sel *metav1.LabelSelector) []workload {
	var ws []workload
	for _, w := range b.workloads {
		if w.selects(sel) {
			ws = append(ws, w)
		}
	}
	return ws
}

// containerPort finds a port of the pod's containers by name (a string
// IntOrString) or number.
func containerPort(pod *corev1.PodTemplateSpec, port intstr.IntOrString) (corev1.ContainerPort, bool) {
	for _, c := range pod.Spec.Containers {
		for _, cp := range c.Ports {
			if port.Type == intstr.String && cp.Name == port.StrVal || port.Type == intstr.Int && cp.ContainerPort == port.IntVal {
				return cp, true
			}
		}
	}
	return corev1.ContainerPort{}, false
}

func (c Checker) checkWorkload(p *problems, b *build, w workload) {
	id := name(w.id)
	if !w.selects(w.selector) {
		p.add(id, "selector %v does not select its own pod labels %v", metav1.FormatLabelSelector(w.selector), w.pod.Labels)
	}
	if w.serviceName != "" {
		found := false
		for _, s := range b.services {
			if s.Name == w.serviceName {
				found = true
				if s.Spec.ClusterIP != corev1.ClusterIPNone {
					p.add(id, "serviceName %s is not a headless Service (clusterIP: None)", s.Name)
				}
				if !w.selects(&metav1.LabelSelector{MatchLabels: s.Spec.Selector}) {
					p.add(id, "serviceName %s does not select its pods", s.Name)
				}
			}
		}
		if !found {
			p.add(id, "serviceName %s: no such Service", w.serviceName)
		}
	}
	spec := &w.pod.Spec
	if ptrOr(spec.EnableServiceLinks, true) {
		p.add(id, "enableServiceLinks must be false: service links put LEVEE_* variables (LEVEE_SERVICE_HOST, LEVEE_PORT...) in levee's environment")
	}
	if ptrOr(spec.AutomountServiceAccountToken, true) {
		p.add(id, "automountServiceAccountToken should be false: levee calls no Kubernetes API")
	}
	spread := false
	for _, t := range spec.TopologySpreadConstraints {
		if w.selects(t.LabelSelector) {
			spread = true
		} else {
			p.add(id, "topology spread on %s: its labelSelector does not select the pods", t.TopologyKey)
		}
	}
	if !spread {
		p.add(id, "no topologySpreadConstraints: every node could land in one zone or on one host")
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
		if v.ConfigMap != nil && !ptrOr(v.ConfigMap.Optional, false) && b.configMaps[v.ConfigMap.Name] == nil {
			p.add(id, "volume %s: ConfigMap %s is not in the build", v.Name, v.ConfigMap.Name)
		}
		if v.Secret != nil && !c.secretMade(b, v.Secret.SecretName) {
			p.add(id, "volume %s: nothing in the build makes Secret %s (a Secret or a Certificate)", v.Name, v.Secret.SecretName)
		}
	}
	for _, ct := range spec.Containers {
		c.checkContainer(p, b, w, ct, volumes)
	}
}

func (c Checker) secretMade(b *build, secret string) bool {
	if b.secrets[secret] != nil {
		return true
	}
	for _, cert := range b.certs {
		if cert.Spec.SecretName == secret {
			return true
		}
	}
	return false
}

// podPlaceholders stand for the downward API's values in a pod of w.
func podPlaceholders(w workload) map[string]string {
	return map[string]string{
		"metadata.name":      w.name + "-0",
		"metadata.namespace": "default",
		"status.podIP":       "10.1.2.3",
		"status.hostIP":      "10.0.0.1",
		"spec.nodeName":      "node-a",
	}
}

var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// setting is a levee serve flag's value in a container, and where it is set.
type setting struct {
	value, from string
}

// settings works out the flags a container gives levee serve (arguments
// win over the environment), checking that every LEVEE_* variable and flag
// is one levee serve accepts and that every $(VAR) is defined before use.
func (c Checker) settings(p *problems, b *build, w workload, ct corev1.Container, id name) map[string]setting {
	set := map[string]setting{}
	env := map[string]string{}
	levee := func(n, v, from string) {
		if !strings.HasPrefix(n, "LEVEE_") {
			return
		}
		if !c.Serve.Env[n] {
			p.add(id, "%s: levee serve reads no variable %s", from, n)
			return
		}
		if f, ok := c.Serve.EnvFlag(n); ok {
			set[f] = setting{v, from}
		}
	}
	for _, ef := range ct.EnvFrom {
		if ef.ConfigMapRef == nil {
			p.add(id, "envFrom other than a ConfigMap is not checked")
			continue
		}
		cm := b.configMaps[ef.ConfigMapRef.Name]
		if cm == nil {
			p.add(id, "envFrom: ConfigMap %s is not in the build", ef.ConfigMapRef.Name)
			continue
		}
		for _, k := range slices.Sorted(maps.Keys(cm.Data)) {
			n := ef.Prefix + k
			env[n] = cm.Data[k]
			levee(n, cm.Data[k], "ConfigMap "+cm.Name+" key "+k)
		}
	}
	expand := func(s, what string) string {
		return varRef.ReplaceAllStringFunc(s, func(ref string) string {
			v := varRef.FindStringSubmatch(ref)[1]
			val, ok := env[v]
			if !ok {
				p.add(id, "%s refers to $(%s), which is not defined before it (Kubernetes leaves it unexpanded)", what, v)
				return ref
			}
			return val
		})
	}
	ph := podPlaceholders(w)
	for _, e := range ct.Env {
		var v string
		switch {
		case e.ValueFrom == nil:
			v = expand(e.Value, "env "+e.Name)
		case e.ValueFrom.FieldRef != nil:
			var ok bool
			if v, ok = ph[e.ValueFrom.FieldRef.FieldPath]; !ok {
				p.add(id, "env %s: field %s is not checked", e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
		case e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			cm := b.configMaps[ref.Name]
			if cm == nil {
				p.add(id, "env %s: ConfigMap %s is not in the build", e.Name, ref.Name)
			} else if _, ok := cm.Data[ref.Key]; !ok {
				p.add(id, "env %s: ConfigMap %s has no key %s", e.Name, ref.Name, ref.Key)
			}
			v = cm.Data[ref.Key]
		case e.ValueFrom.SecretKeyRef != nil:
			v = "secret"
		}
		env[e.Name] = v
		levee(e.Name, v, "env "+e.Name)
	}
	if len(ct.Command) > 0 && !slices.Equal(ct.Command, []string{"/levee"}) {
		p.add(id, "command %v: the image holds only /levee", ct.Command)
	}
	args := make([]string, len(ct.Args))
	for i, a := range ct.Args {
		args[i] = expand(a, "args")
	}
	if len(args) == 0 || args[0] != "serve" {
		p.add(id, "args %v: want levee serve", args)
		return set
	}
	for i := 1; i < len(args); i++ {
		f, ok := strings.CutPrefix(args[i], "--")
		if !ok {
			p.add(id, "args: %q is not a flag", args[i])
			continue
		}
		f, v, hasValue := strings.Cut(f, "=")
		if !hasValue && i+1 < len(args) && !strings.HasPrefix(args[i+1], "--") {
			i++
			v = args[i]
		}
		if !c.Serve.Flags[f] {
			p.add(id, "args: levee serve has no flag --%s", f)
			continue
		}
		if !hasValue && v == "" {
			v = "true"
		}
		set[f] = setting{v, "--" + f}
	}
	return set
}

// get returns a flag's value: as set, or its default.
func (c Checker) get(set map[string]setting, flag string) setting {
	if s, ok := set[flag]; ok {
		return s
	}
	return setting{c.Serve.Defaults[flag], "default of --" + flag}
}

// pathFlags are the flags that name files in the container.
var pathFlags = []string{
	"config", "shed-policy", "tls-cert", "tls-key", "tls-client-ca", "peer-ca",
	"etcd-ca-file", "etcd-cert-file", "etcd-key-file",
	"admin-token-file", "admin-tls-cert", "admin-tls-key", "admin-client-ca",
}

// certFiles are the keys of a cert-manager (kubernetes.io/tls) Secret.
var certFiles = []string{"tls.crt", "tls.key", "ca.crt"}

func (c Checker) checkContainer(p *problems, b *build, w workload, ct corev1.Container, volumes map[string]corev1.Volume) {
	id := name(w.id + " container " + ct.Name)
	set := c.settings(p, b, w, ct, id)

	// Ports and listeners.
	names := map[string]bool{}
	for _, cp := range ct.Ports {
		if cp.Name != "" && names[cp.Name] {
			p.add(id, "port name %s used twice", cp.Name)
		}
		names[cp.Name] = true
	}
	listeners := map[string]int32{}
	for _, l := range []string{"grpc-addr", "metrics-addr", "admin-addr"} {
		s := c.get(set, l)
		if s.value == "" {
			continue
		}
		host, port, err := net.SplitHostPort(s.value)
		n, perr := strconv.Atoi(port)
		if err != nil || perr != nil {
			p.add(id, "%s %q: not host:port", s.from, s.value)
			continue
		}
		ip := net.ParseIP(host)
		loopback := host == "localhost" || ip != nil && ip.IsLoopback()
		declared := false
		for _, cp := range ct.Ports {
			if cp.ContainerPort == int32(n) {
				declared = true
				if loopback {
					p.add(id, "containerPort %s (%d): %s=%s listens on loopback only", cp.Name, n, s.from, s.value)
				}
			}
		}
		if !loopback {
			listeners[l] = int32(n)
			if !declared {
				p.add(id, "%s=%s: no containerPort %d", s.from, s.value, n)
			}
		}
	}
	grpcPort, ok := listeners["grpc-addr"]
	if !ok {
		p.add(id, "the gRPC listener (--grpc-addr) must listen beyond loopback")
	}

	// Probes.
	for _, pr := range []struct {
		kind  string
		probe *corev1.Probe
	}{{"startupProbe", ct.StartupProbe}, {"readinessProbe", ct.ReadinessProbe}, {"livenessProbe", ct.LivenessProbe}} {
		if pr.probe == nil {
			if pr.kind != "startupProbe" {
				p.add(id, "no %s", pr.kind)
			}
			continue
		}
		h := pr.probe.ProbeHandler
		switch {
		case h.GRPC != nil:
			if h.GRPC.Port != grpcPort {
				p.add(id, "%s: gRPC probe on port %d, but levee's gRPC listener is on %d", pr.kind, h.GRPC.Port, grpcPort)
			}
		case h.Exec != nil:
			if len(h.Exec.Command) < 2 || h.Exec.Command[0] != "/levee" || h.Exec.Command[1] != "probe" {
				p.add(id, "%s: exec %v: the image has no shell; want /levee probe", pr.kind, h.Exec.Command)
			}
		case h.HTTPGet != nil:
			if _, ok := containerPort(w.pod, h.HTTPGet.Port); !ok {
				p.add(id, "%s: httpGet port %s is not a container port", pr.kind, h.HTTPGet.Port.String())
			}
		case h.TCPSocket != nil:
			if _, ok := containerPort(w.pod, h.TCPSocket.Port); !ok {
				p.add(id, "%s: tcpSocket port %s is not a container port", pr.kind, h.TCPSocket.Port.String())
			}
		}
	}

	// A clustered node must be reachable by its peers.
	if c.get(set, "standalone").value != "true" {
		adv := c.get(set, "advertise-addr")
		if adv.value == "" {
			p.add(id, "a clustered node listening on every address needs --advertise-addr (the pod IP or its name under the headless Service)")
		} else if host, port, err := net.SplitHostPort(adv.value); err != nil {
			p.add(id, "%s %q: not host:port", adv.from, adv.value)
		} else if ip := net.ParseIP(host); ip != nil && (ip.IsUnspecified() || ip.IsLoopback()) {
			p.add(id, "%s %q: peers cannot dial it", adv.from, adv.value)
		} else if port != strconv.Itoa(int(grpcPort)) {
			p.add(id, "%s %q: not the gRPC port %d", adv.from, adv.value, grpcPort)
		}
		if c.get(set, "etcd-endpoints").value == "" {
			p.add(id, "no --etcd-endpoints: each node would start its own embedded etcd")
		}
	}

	// Files named by flags are in mounted volumes.
	mounts := slices.Clone(ct.VolumeMounts)
	slices.SortFunc(mounts, func(a, b corev1.VolumeMount) int { return len(b.MountPath) - len(a.MountPath) })
	for _, f := range pathFlags {
		s, ok := set[f]
		if !ok || s.value == "" {
			continue
		}
		c.checkFile(p, b, id, f, s, mounts, volumes)
	}
	tmp := false
	for _, m := range ct.VolumeMounts {
		if m.MountPath == "/tmp" && !m.ReadOnly {
			tmp = true
		}
		if _, ok := volumes[m.Name]; !ok {
			p.add(id, "volumeMount %s: no such volume", m.Name)
		}
	}

	// Security.
	psc := w.pod.Spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	sc := ct.SecurityContext
	if sc == nil {
		sc = &corev1.SecurityContext{}
	}
	if !ptrOr(sc.RunAsNonRoot, ptrOr(psc.RunAsNonRoot, false)) {
		p.add(id, "runAsNonRoot is not true")
	}
	if u := sc.RunAsUser; u != nil || psc.RunAsUser != nil {
		if uid := ptrOr(u, ptrOr(psc.RunAsUser, 0)); uid != c.ImageUser {
			p.add(id, "runAsUser %d is not the image's user %d", uid, c.ImageUser)
		}
	}
	if ptrOr(sc.AllowPrivilegeEscalation, true) {
		p.add(id, "allowPrivilegeEscalation is not false")
	}
	if !ptrOr(sc.ReadOnlyRootFilesystem, false) {
		p.add(id, "readOnlyRootFilesystem is not true")
	} else if !tmp {
		p.add(id, "read-only root file system and no writable volume at /tmp (the image's TMPDIR)")
	}
	if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		p.add(id, "capabilities: ALL is not dropped")
	}
	if sc.Capabilities != nil && len(sc.Capabilities.Add) > 0 {
		p.add(id, "capabilities added: %v", sc.Capabilities.Add)
	}
	seccomp := sc.SeccompProfile
	if seccomp == nil {
		seccomp = psc.SeccompProfile
	}
	if seccomp == nil || seccomp.Type == corev1.SeccompProfileTypeUnconfined {
		p.add(id, "no seccomp profile (want RuntimeDefault)")
	}

	// Resources, and Go's memory limit derived from them.
	for _, r := range []struct {
		list corev1.ResourceList
		res  corev1.ResourceName
		what string
	}{{ct.Resources.Requests, corev1.ResourceCPU, "requests.cpu"}, {ct.Resources.Requests, corev1.ResourceMemory, "requests.memory"}, {ct.Resources.Limits, corev1.ResourceMemory, "limits.memory"}} {
		if _, ok := r.list[r.res]; !ok {
			p.add(id, "no resources.%s", r.what)
		}
	}
	if ml := c.get(set, "memory-limit"); ml.value == "off" {
		p.add(id, "%s=off: with GOGC=400 the heap grows to several times what is live and the memory limit kills the node", ml.from)
	}

	// Shutdown: the kubelet must not kill a node mid hand-off.
	gs := c.get(set, "shutdown-grace")
	grace, err := time.ParseDuration(gs.value)
	if err != nil {
		p.add(id, "%s %q: %v", gs.from, gs.value, err)
	}
	var preStop time.Duration
	if ct.Lifecycle != nil && ct.Lifecycle.PreStop != nil {
		switch h := ct.Lifecycle.PreStop; {
		case h.Sleep != nil:
			preStop = time.Duration(h.Sleep.Seconds) * time.Second
		case h.Exec != nil:
			p.add(id, "preStop exec %v: the image has no shell or sleep; use the sleep action", h.Exec.Command)
		}
	}
	tgp := time.Duration(ptrOr(w.pod.Spec.TerminationGracePeriodSeconds, 30)) * time.Second
	if need := preStop + graceSteps*grace; tgp < need {
		p.add(id, "terminationGracePeriodSeconds %v < preStop %v + %d × %s %v (leave, hand-off, drain, metrics) = %v", tgp, preStop, graceSteps, gs.from, grace, need)
	}
}

// checkFile checks that the file a flag names is in a mounted volume that
// provides it, and loads the rules and the shedding policy as levee does.
func (c Checker) checkFile(p *problems, b *build, id name, flag string, s setting, mounts []corev1.VolumeMount, volumes map[string]corev1.Volume) {
	var m *corev1.VolumeMount
	for i := range mounts {
		mp := strings.TrimSuffix(mounts[i].MountPath, "/")
		if s.value == mp || strings.HasPrefix(s.value, mp+"/") {
			m = &mounts[i]
			break
		}
	}
	if m == nil {
		p.add(id, "%s=%s is in no mounted volume (the image holds only /levee)", s.from, s.value)
		return
	}
	rel := strings.TrimPrefix(strings.TrimPrefix(s.value, strings.TrimSuffix(m.MountPath, "/")), "/")
	key, _, _ := strings.Cut(rel, "/")
	v, ok := volumes[m.Name]
	if !ok {
		return // reported with the mounts
	}
	switch {
	case v.ConfigMap != nil:
		cm := b.configMaps[v.ConfigMap.Name]
		if cm == nil {
			return // reported with the volumes
		}
		if key != "" && !hasKey(cm.Data, key, v.ConfigMap.Items) {
			p.add(id, "%s=%s: ConfigMap %s has no key %s", s.from, s.value, cm.Name, key)
			return
		}
		dir, err := c.layOut(cm, v.ConfigMap.Items)
		if err != nil {
			p.add(id, "laying out ConfigMap %s: %v", cm.Name, err)
			return
		}
		file := filepath.Join(dir, filepath.FromSlash(rel))
		switch flag {
		case "config":
			cfg, err := rules.Load(file)
			if err != nil {
				p.add(id, "%s=%s: ConfigMap %s does not load as levee's rules: %v", s.from, s.value, cm.Name, err)
			} else if key == "" && len(cfg.Domains()) != len(cm.Data) {
				p.add(id, "%s=%s: ConfigMap %s has %d files but loads %d domains", s.from, s.value, cm.Name, len(cm.Data), len(cfg.Domains()))
			}
		case "shed-policy":
			if _, err := policy.Load(file); err != nil {
				p.add(id, "%s=%s: ConfigMap %s does not load as levee's shedding policy: %v", s.from, s.value, cm.Name, err)
			}
		}
	case v.Secret != nil:
		if sec := b.secrets[v.Secret.SecretName]; sec != nil {
			if !hasKey(sec.StringData, key, v.Secret.Items) && !hasKey(sec.Data, key, v.Secret.Items) {
				p.add(id, "%s=%s: Secret %s has no key %s", s.from, s.value, sec.Name, key)
			}
		} else if !slices.Contains(certFiles, key) {
			p.add(id, "%s=%s: a certificate Secret holds %v, not %s", s.from, s.value, certFiles, key)
		}
	case v.EmptyDir != nil:
		p.add(id, "%s=%s is in an empty directory", s.from, s.value)
	}
}

func hasKey[V any](data map[string]V, key string, items []corev1.KeyToPath) bool {
	if len(items) > 0 {
		for _, it := range items {
			if it.Path == key {
				return true
			}
		}
		return false
	}
	_, ok := data[key]
	return ok
}

// layOut writes a ConfigMap's files as the kubelet does: into a
// timestamped directory, with a ..data link to it and a link per key, so
// that levee reads them as it will in a pod.
func (c Checker) layOut(cm *corev1.ConfigMap, items []corev1.KeyToPath) (string, error) {
	dir, err := os.MkdirTemp(c.TempDir, "configmap-")
	if err != nil {
		return "", err
	}
	const stamp = "..2026_01_02_03_04_05.000000001"
	if err := os.Mkdir(filepath.Join(dir, stamp), 0o755); err != nil {
		return "", err
	}
	files := map[string]string{}
	if len(items) == 0 {
		for k, v := range cm.Data {
			files[k] = v
		}
	}
	for _, it := range items {
		files[it.Path] = cm.Data[it.Key]
	}
	for p, data := range files {
		full := filepath.Join(dir, stamp, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return "", err
		}
		if err := os.WriteFile(full, []byte(data), 0o644); err != nil {
			return "", err
		}
	}
	if err := os.Symlink(stamp, filepath.Join(dir, "..data")); err != nil {
		return "", err
	}
	for p := range files {
		top, _, _ := strings.Cut(p, "/")
		link := filepath.Join(dir, top)
		if _, err := os.Lstat(link); err == nil {
			continue
		}
		if err := os.Symlink(path.Join("..data", top), link); err != nil {
			return "", err
		}
	}
	return dir, nil
}

func (c Checker) checkServices(p *problems, b *build) {
	for _, s := range b.services {
		id := name("Service/" + s.Name)
		if len(s.Spec.Selector) == 0 {
			p.add(id, "no selector")
			continue
		}
		ws := b.pods(&metav1.LabelSelector{MatchLabels: s.Spec.Selector})
		if len(ws) != 1 {
			p.add(id, "selector %v selects the pods of %d workloads, want 1", s.Spec.Selector, len(ws))
			continue
		}
		for _, sp := range s.Spec.Ports {
			target := sp.TargetPort
			if target.Type == intstr.Int && target.IntVal == 0 {
				target = intstr.FromInt32(sp.Port)
			}
			if _, ok := containerPort(ws[0].pod, target); !ok {
				p.add(id, "port %s: targetPort %s is not a port of %s's containers", sp.Name, target.String(), ws[0].id)
			}
		}
	}
}

func (c Checker) checkPDBs(p *problems, b *build) {
	for _, pdb := range b.pdbs {
		id := name("PodDisruptionBudget/" + pdb.Name)
		ws := b.pods(pdb.Spec.Selector)
		if len(ws) != 1 {
			p.add(id, "selector selects the pods of %d workloads, want 1", len(ws))
			continue
		}
		if m := pdb.Spec.MinAvailable; m != nil && m.Type == intstr.Int && m.IntVal >= ws[0].replicas {
			p.add(id, "minAvailable %d of %d replicas: no node could ever be drained", m.IntVal, ws[0].replicas)
		}
		if m := pdb.Spec.MaxUnavailable; m != nil && m.Type == intstr.Int && m.IntVal < 1 {
			p.add(id, "maxUnavailable %d: no node could ever be drained", m.IntVal)
		}
	}
}

// checkNetworkPolicies: every policy selects levee's pods and names real
// ports; every container port is reachable through some rule; the gRPC
// port is open to the pods' peers; the admin port only to chosen pods.
func (c Checker) checkNetworkPolicies(p *problems, b *build) {
	for _, w := range b.workloads {
		covered := map[string]bool{}
		peers := false
		for _, np := range b.netpols {
			id := name("NetworkPolicy/" + np.Name)
			if !w.selects(&np.Spec.PodSelector) {
				continue
			}
			for _, rule := range np.Spec.Ingress {
				for _, port := range rule.Ports {
					if port.Port == nil {
						p.add(id, "a rule without a port opens every port")
						continue
					}
					cp, ok := containerPort(w.pod, *port.Port)
					if !ok {
						p.add(id, "port %s is not a port of %s's containers", port.Port.String(), w.id)
						continue
					}
					covered[cp.Name] = true
					fromSelf := false
					for _, peer := range rule.From {
						if peer.NamespaceSelector == nil && w.selects(peer.PodSelector) {
							fromSelf = true
						}
						if cp.Name == "admin" && (peer.IPBlock != nil || isEmpty(peer.PodSelector) || peer.NamespaceSelector != nil && isEmpty(peer.NamespaceSelector)) {
							p.add(id, "the admin port is open beyond the pods chosen to run levee ctl")
						}
					}
					if cp.Name == "admin" && len(rule.From) == 0 {
						p.add(id, "the admin port is open to everyone")
					}
					if cp.Name == "grpc" && fromSelf {
						peers = true
					}
				}
			}
		}
		if len(b.netpols) == 0 {
			p.add(name(w.id), "no NetworkPolicy")
			continue
		}
		for _, ct := range w.pod.Spec.Containers {
			for _, cp := range ct.Ports {
				if !covered[cp.Name] {
					p.add(name(w.id), "container port %s (%d) is reachable through no NetworkPolicy rule", cp.Name, cp.ContainerPort)
				}
			}
		}
		if !peers {
			p.add(name(w.id), "no NetworkPolicy rule lets levee's pods reach each other's gRPC port (the peer API)")
		}
	}
}

// isEmpty reports whether sel is missing or selects everything.
func isEmpty(sel *metav1.LabelSelector) bool {
	return sel == nil || len(sel.MatchLabels)+len(sel.MatchExpressions) == 0
}

func (c Checker) checkMonitors(p *problems, b *build) {
	for _, m := range b.monitors {
		id := name("ServiceMonitor/" + m.Name)
		var svcs []*corev1.Service
		sel, err := metav1.LabelSelectorAsSelector(&m.Spec.Selector)
		if err != nil {
			p.add(id, "selector: %v", err)
			continue
		}
		for _, s := range b.services {
			if !sel.Empty() && sel.Matches(labels.Set(s.Labels)) {
				svcs = append(svcs, s)
			}
		}
		if len(svcs) != 1 {
			p.add(id, "selector %v selects %d Services, want 1", metav1.FormatLabelSelector(&m.Spec.Selector), len(svcs))
			continue
		}
		for _, ep := range m.Spec.Endpoints {
			if !slices.ContainsFunc(svcs[0].Spec.Ports, func(sp corev1.ServicePort) bool { return sp.Name == ep.Port }) {
				p.add(id, "endpoint port %s is not a port of Service %s", ep.Port, svcs[0].Name)
			}
		}
	}
}

// checkCertificates: issuers resolve; the node certificate is usable as
// levee refuses at start otherwise (server and client use, the advertised
// name); --peer-names and --admin-allowed-clients name certificates.
func (c Checker) checkCertificates(p *problems, b *build) {
	for _, cert := range b.certs {
		id := name("Certificate/" + cert.Name)
		ref := cert.Spec.IssuerRef
		if ref.Kind != "" && ref.Kind != "Issuer" && ref.Kind != "ClusterIssuer" {
			p.add(id, "issuerRef kind %s", ref.Kind)
		}
		if b.issuers[ref.Name] == nil && !slices.Contains(c.ExternalIssuers, ref.Name) {
			p.add(id, "issuer %s is not in the build nor a documented external issuer", ref.Name)
		}
		if cert.Spec.SecretName == "" {
			p.add(id, "no secretName")
		}
	}
	for _, is := range b.issuers {
		if is.Spec.CA != nil && !c.secretMade(b, is.Spec.CA.SecretName) {
			p.add(name("Issuer/"+is.Name), "CA Secret %s: nothing in the build makes it", is.Spec.CA.SecretName)
		}
	}
	for _, w := range b.workloads {
		for _, ct := range w.pod.Spec.Containers {
			id := name(w.id + " container " + ct.Name)
			var discard problems
			set := c.settings(&discard, b, w, ct, id) // problems reported by checkContainer
			tlsCert, ok := set["tls-cert"]
			if !ok {
				continue
			}
			cert := c.certFor(b, w, ct, tlsCert.value)
			if cert == nil {
				continue // a Secret made otherwise: nothing to check it against
			}
			u := cert.Spec.Usages
			if !slices.Contains(u, "server auth") || c.get(set, "standalone").value != "true" && !slices.Contains(u, "client auth") {
				p.add(id, "Certificate %s usages %v: a clustered node's certificate serves and dials its peers (server auth, client auth)", cert.Name, u)
			}
			adv := c.get(set, "advertise-addr").value
			if adv == "" {
				adv = c.get(set, "grpc-addr").value
			}
			if host, _, err := net.SplitHostPort(adv); err == nil && !certCovers(cert, host) {
				p.add(id, "advertise address %s: Certificate %s (dnsNames %v, ipAddresses %v) does not cover %s, and peers verify it for that name", adv, cert.Name, cert.Spec.DNSNames, cert.Spec.IPAddresses, host)
			}
			if pn := set["peer-names"].value; pn != "" {
				for _, n := range strings.Split(pn, ",") {
					if !certNamed(cert, n) {
						p.add(id, "--peer-names %s: the nodes' Certificate %s is not named so: the peer API would refuse every peer", n, cert.Name)
					}
				}
			}
			if ac := set["admin-allowed-clients"].value; ac != "" {
				for _, n := range strings.Split(ac, ",") {
					if !slices.ContainsFunc(b.certs, func(c *Certificate) bool { return certNamed(c, n) && slices.Contains(c.Spec.Usages, "client auth") }) {
						p.add(id, "--admin-allowed-clients %s: no client Certificate in the build is named so", n)
					}
				}
			}
		}
	}
}

// certFor finds the Certificate whose Secret is mounted where file is.
func (c Checker) certFor(b *build, w workload, ct corev1.Container, file string) *Certificate {
	for _, m := range ct.VolumeMounts {
		if !strings.HasPrefix(file, strings.TrimSuffix(m.MountPath, "/")+"/") {
			continue
		}
		for _, v := range w.pod.Spec.Volumes {
			if v.Name != m.Name || v.Secret == nil {
				continue
			}
			for _, cert := range b.certs {
				if cert.Spec.SecretName == v.Secret.SecretName {
					return cert
				}
			}
		}
	}
	return nil
}

func certNamed(c *Certificate, n string) bool {
	return c.Spec.CommonName == n || slices.Contains(c.Spec.DNSNames, n)
}

// certCovers reports whether the certificate is valid for host, as Go's
// TLS client verifies it (a wildcard stands for one whole label).
func certCovers(c *Certificate, host string) bool {
	if ip := net.ParseIP(host); ip != nil {
		return slices.ContainsFunc(c.Spec.IPAddresses, func(s string) bool { return net.ParseIP(s).Equal(ip) })
	}
	for _, d := range c.Spec.DNSNames {
		if d == host {
			return true
		}
		if rest, ok := strings.CutPrefix(d, "*."); ok {
			if _, after, ok := strings.Cut(host, "."); ok && after == rest {
				return true
			}
		}
	}
	return false
}
