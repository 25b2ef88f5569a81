package examples

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"gopkg.in/yaml.v3"

	// The extensions the examples name in typed_config: importing them
	// registers their types, so that the Any fields resolve. An example
	// using another extension fails until it is added here.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rate_limit_quota/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ratelimit/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// envoyExamples are the Envoy configurations the repository ships.
var envoyExamples = []string{"envoy.yaml", "envoy-kubernetes.yaml", "envoy-rlqs.yaml"}

// TestEnvoyExamples decodes each example into Envoy's Bootstrap as Envoy
// would: unknown fields refused, every typed_config resolved to its type,
// and every message checked against the API's validation rules. A typo in
// an example fails here rather than at Envoy's start.
func TestEnvoyExamples(t *testing.T) {
	for _, name := range envoyExamples {
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		b, err := decodeBootstrap(data)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		// What the README says the example does: levee is the rate limit
		// service, and the filter asks for the example rules' domain.
		levee := "levee"
		if name == "envoy-rlqs.yaml" {
			levee = "rlqs_server"
		}
		if !hasCluster(b, levee) {
			t.Errorf("%s: no cluster named %s", name, levee)
		}
	}
	files, _ := filepath.Glob("envoy*.yaml")
	if len(files) != len(envoyExamples) {
		t.Errorf("Envoy examples %v, tested %v: add the new one to envoyExamples", files, envoyExamples)
	}
}

// TestEnvoyExampleBroken: the decoding refuses what Envoy would.
func TestEnvoyExampleBroken(t *testing.T) {
	data, err := os.ReadFile("envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, old, new, want string }{
		{"unknown field", "stat_prefix: ingress", "stat_prefx: ingress", "stat_prefx"},
		{"unknown type", "filters.http.router.v3.Router", "filters.http.router.v3.Routr", "Routr"},
		{"wrong type for a field", "port_value: 10000", "port_value: ten", "portValue"},
		{"validation rule", "domain: example", "domain: \"\"", "Domain"},
		{"duplicate key", "stat_prefix: ingress", "stat_prefix: ingress\n                stat_prefix: egress", "already defined"},
	} {
		if !strings.Contains(string(data), c.old) {
			t.Fatalf("%s: envoy.yaml has no %q: update the mutation", c.name, c.old)
		}
		_, err := decodeBootstrap([]byte(strings.Replace(string(data), c.old, c.new, 1)))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want an error with %q", c.name, err, c.want)
		}
	}
}

// decodeBootstrap decodes an Envoy bootstrap in YAML strictly and
// validates every message, the ones inside typed_config included.
func decodeBootstrap(data []byte) (*bootstrapv3.Bootstrap, error) {
	var v any
	if err := yaml.Unmarshal(data, &v); err != nil {
		return nil, err
	}
	j, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	b := &bootstrapv3.Bootstrap{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(j, b); err != nil {
		return nil, err
	}
	if err := validateAll(b.ProtoReflect(), "bootstrap"); err != nil {
		return nil, err
	}
	return b, nil
}

// validateAll checks m against its validation rules and does the same for
// the message inside every Any below it, which the generated validation
// leaves unchecked.
func validateAll(m protoreflect.Message, where string) error {
	if v, ok := m.Interface().(interface{ ValidateAll() error }); ok {
		if err := v.ValidateAll(); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
	}
	return eachAny(m, func(a *anypb.Any) error {
		inner, err := a.UnmarshalNew()
		if err != nil {
			return fmt.Errorf("%s: typed_config %s: %w", where, a.GetTypeUrl(), err)
		}
		return validateAll(inner.ProtoReflect(), a.GetTypeUrl())
	})
}

// eachAny calls f for each Any in m, not descending into them.
func eachAny(m protoreflect.Message, f func(*anypb.Any) error) error {
	var err error
	visit := func(v protoreflect.Message) bool {
		if a, ok := v.Interface().(*anypb.Any); ok {
			err = f(a)
		} else {
			err = eachAny(v, f)
		}
		return err == nil
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Message() != nil:
			for i := 0; i < v.List().Len() && err == nil; i++ {
				visit(v.List().Get(i).Message())
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool { return visit(mv.Message()) })
		case fd.Message() != nil && !fd.IsList() && !fd.IsMap():
			visit(v.Message())
		}
		return err == nil
	})
	return err
}

func hasCluster(b *bootstrapv3.Bootstrap, name string) bool {
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() == name {
			return true
		}
	}
	return false
}
