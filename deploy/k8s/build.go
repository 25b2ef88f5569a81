// Package manifests validates levee's Kubernetes manifests with no cluster:
// it builds the kustomizations with kustomize's Go API, decodes every
// resource strictly into the Kubernetes API types (an unknown or repeated
// field is an error), and checks what a reviewer would (see [Checker]).
//
// Resources of other projects' CRDs (cert-manager's Certificate and Issuer,
// the Prometheus Operator's ServiceMonitor) are decoded as strictly into
// the subset of their schema that levee's manifests use: a field outside it
// is refused until it is added here.
package manifests

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// Object is one resource of a build, decoded.
type Object struct {
	Kind, Name string
	// Obj is a Kubernetes API type (*appsv1.StatefulSet, ...) or one of
	// this package's CRD types (*Certificate, *Issuer, *ServiceMonitor).
	Obj any
}

func (o Object) String() string { return o.Kind + "/" + o.Name }

// LoadTree copies the directory tree at dir on disk into an in-memory file
// system under root, so that tests can build it, and mutate it, without
// touching the files.
func LoadTree(dir, root string) (filesys.FileSystem, error) {
	mem := filesys.MakeFsInMemory()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		dst := filepath.Join(root, rel)
		if d.IsDir() {
			return mem.MkdirAll(dst)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return mem.WriteFile(dst, data)
	})
	return mem, err
}

// Build runs kustomize on the kustomization at dir of fsys and decodes its
// output strictly.
func Build(fsys filesys.FileSystem, dir string) ([]Object, error) {
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	var objs []Object
	var errs []error
	for _, r := range m.Resources() {
		data, err := r.AsYAML()
		if err != nil {
			return nil, err
		}
		name := r.GetKind() + "/" + r.GetName()
		obj, err := Decode(data)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s (built from %s): %w", name, dir, err))
			continue
		}
		objs = append(objs, Object{Kind: r.GetKind(), Name: r.GetName(), Obj: obj})
	}
	return objs, errors.Join(errs...)
}

// decoder decodes the Kubernetes API's own types, refusing unknown and
// duplicate fields.
var decoder = serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()

// Decode decodes one resource, in YAML or JSON, strictly.
func Decode(data []byte) (any, error) {
	var head metav1.TypeMeta
	if err := yaml.Unmarshal(data, &head); err != nil {
		return nil, err
	}
	var crd any
	switch head.APIVersion + " " + head.Kind {
	case "cert-manager.io/v1 Certificate":
		crd = &Certificate{}
	case "cert-manager.io/v1 Issuer":
		crd = &Issuer{}
	case "monitoring.coreos.com/v1 ServiceMonitor":
		crd = &ServiceMonitor{}
	}
	if crd != nil {
		// As the API server decodes: field names are case-sensitive, and
		// unknown or repeated fields are refused.
		j, err := yaml.YAMLToJSONStrict(data)
		if err != nil {
			return nil, fmt.Errorf("strict decoding %s: %w", head.Kind, err)
		}
		strict, err := json.UnmarshalStrict(j, crd, json.DisallowDuplicateFields, json.DisallowUnknownFields)
		if err == nil && len(strict) > 0 {
			err = errors.Join(strict...)
		}
		if err != nil {
			return nil, fmt.Errorf("strict decoding %s: %w", head.Kind, err)
		}
		return crd, nil
	}
	obj, _, err := decoder.Decode(data, nil, nil)
	if err != nil {
		return nil, err
	}
	return obj, nil
}

// DecodeSources decodes strictly every YAML document with an apiVersion
// and a kind in the files under dir of fsys, except kustomizations: the
// sources as written, before kustomize (whose YAML library may have merged
// what the strict decoder would refuse).
func DecodeSources(fsys filesys.FileSystem, dir string) error {
	var errs []error
	err := fsys.Walk(dir, func(p string, info fs.FileInfo, err error) error {
		if err != nil || info.IsDir() || !strings.HasSuffix(p, ".yaml") {
			return err
		}
		switch filepath.Base(p) {
		case "kustomization.yaml", "kustomization.yml", "Kustomization":
			return nil
		}
		data, err := fsys.ReadFile(p)
		if err != nil {
			return err
		}
		for i, doc := range strings.Split(string(data), "\n---") {
			var v any
			if err := yaml.Unmarshal([]byte(doc), &v); err != nil {
				errs = append(errs, fmt.Errorf("%s, document %d: %w", p, i+1, err))
				continue
			}
			head, ok := v.(map[string]any)
			if !ok || head["apiVersion"] == nil || head["kind"] == nil {
				continue // a rule file, a JSON patch
			}
			if _, err := yaml.YAMLToJSONStrict([]byte(doc)); err != nil {
				errs = append(errs, fmt.Errorf("%s, document %d: %w", p, i+1, err))
				continue
			}
			if _, err := Decode([]byte(doc)); err != nil {
				errs = append(errs, fmt.Errorf("%s, document %d: %w", p, i+1, err))
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return errors.Join(errs...)
}

// Certificate is the subset of cert-manager.io/v1 Certificate that levee's
// manifests use.
type Certificate struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		SecretName  string   `json:"secretName"`
		CommonName  string   `json:"commonName,omitempty"`
		DNSNames    []string `json:"dnsNames,omitempty"`
		IPAddresses []string `json:"ipAddresses,omitempty"`
		Usages      []string `json:"usages,omitempty"`
		IsCA        bool     `json:"isCA,omitempty"`
		Duration    string   `json:"duration,omitempty"`
		RenewBefore string   `json:"renewBefore,omitempty"`
		PrivateKey  *struct {
			Algorithm      string `json:"algorithm,omitempty"`
			Size           int    `json:"size,omitempty"`
			Encoding       string `json:"encoding,omitempty"`
			RotationPolicy string `json:"rotationPolicy,omitempty"`
		} `json:"privateKey,omitempty"`
		IssuerRef struct {
			Name  string `json:"name"`
			Kind  string `json:"kind,omitempty"`
			Group string `json:"group,omitempty"`
		} `json:"issuerRef"`
	} `json:"spec"`
}

// Issuer is the subset of cert-manager.io/v1 Issuer that levee's manifests
// use.
type Issuer struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		SelfSigned *struct{} `json:"selfSigned,omitempty"`
		CA         *struct {
			SecretName string `json:"secretName"`
		} `json:"ca,omitempty"`
	} `json:"spec"`
}

// ServiceMonitor is the subset of monitoring.coreos.com/v1 ServiceMonitor
// that levee's manifests use.
type ServiceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector *struct {
			Any        bool     `json:"any,omitempty"`
			MatchNames []string `json:"matchNames,omitempty"`
		} `json:"namespaceSelector,omitempty"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path,omitempty"`
			Scheme        string `json:"scheme,omitempty"`
			Interval      string `json:"interval,omitempty"`
			ScrapeTimeout string `json:"scrapeTimeout,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}
