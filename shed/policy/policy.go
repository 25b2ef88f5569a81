// Package policy is levee's shedding policy: the protected resources a node
// sheds load for, and how. A [Set] holds the resources a policy describes
// and keeps them across policy changes; the policy itself is a small YAML
// file:
//
//	resources:
//	  - name: timeline          # required, unique
//	    shadow: false           # count "would shed", refuse nothing
//	    concurrency:            # adaptive concurrency limit (latency gradient)
//	      initial: 20
//	      min: 5
//	      max: 1000
//	    latency_ceiling: 250ms  # cut the limit whenever p90 passes this
//	    headroom: 0.1           # share of the measured capacity kept free, or off
//	    deadline: true          # refuse work that cannot finish in time
//	    retry_after: 1s         # delay suggested with threshold refusals
//
// Every field but name is optional; the defaults are shed.Config's. Errors
// name the file, line and field, like the rule files'.
//
// The owner of a Set drives it: Apply with each new policy, Pin with the
// operators' overrides, and Run (or Tick) for the resources' control loop.
// Adapters such as the sidecar only look resources up.
package policy

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/levee-dev/levee/shed"
)

// Policy is a parsed shedding policy.
type Policy struct {
	Resources []Resource
}

// Resource is one protected resource.
type Resource struct {
	Name           string
	Shadow         bool
	Concurrency    shed.GradientConfig
	NoConcurrency  bool
	NoDeadline     bool
	LatencyCeiling time.Duration
	RetryAfter     time.Duration
	// Headroom is shed.Config.Headroom: 0 the default, negative off.
	Headroom float64
	// Line is where the resource is defined.
	Line int
}

// Config returns the shed.Config for the resource.
func (r Resource) Config() shed.Config {
	c := shed.Config{
		Concurrency:        r.Concurrency,
		NoConcurrencyLimit: r.NoConcurrency,
		NoDeadline:         r.NoDeadline,
		RetryAfter:         r.RetryAfter,
		Shadow:             r.Shadow,
		Headroom:           r.Headroom,
	}
	c.Concurrency.LatencyCeiling = r.LatencyCeiling
	return c
}

// Error is a policy file that cannot be used.
type Error struct {
	File   string
	Line   int
	Field  string
	Reason string
}

// Error formats the error as "file:line: field: reason".
func (e *Error) Error() string {
	return fmt.Sprintf("%s:%d: %s: %s", e.File, e.Line, e.Field, e.Reason)
}

// MaxFileSize bounds a policy file.
const MaxFileSize = 1 << 20

var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$`)

// Load reads and parses the policy file at path.
func Load(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("shedding policy: %w", err)
	}
	return Parse(path, data)
}

// Parse parses a policy file; name is used in errors.
func Parse(name string, data []byte) (*Policy, error) {
	if len(data) > MaxFileSize {
		return nil, &Error{name, 1, "", fmt.Sprintf("file is %d bytes, at most %d allowed", len(data), MaxFileSize)}
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, &Error{name, 1, "", err.Error()}
	}
	p := &Policy{}
	if len(doc.Content) == 0 {
		return p, nil // an empty file protects nothing
	}
	root := doc.Content[0]
	f := func(n *yaml.Node, field, format string, args ...any) error {
		return &Error{name, n.Line, field, fmt.Sprintf(format, args...)}
	}
	if root.Kind != yaml.MappingNode {
		return nil, f(root, "", "must be a map with a 'resources' list")
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if k.Value != "resources" {
			return nil, f(k, k.Value, "unknown key '%s' (want resources)", k.Value)
		}
		if v.Kind != yaml.SequenceNode {
			return nil, f(v, "resources", "must be a list")
		}
		for j, rn := range v.Content {
			field := fmt.Sprintf("resources[%d]", j)
			r, err := parseResource(rn, field, f)
			if err != nil {
				return nil, err
			}
			if prev, dup := seen[r.Name]; dup {
				return nil, f(rn, field+".name", "duplicate resource '%s' (also at line %d)", r.Name, prev)
			}
			seen[r.Name] = r.Line
			p.Resources = append(p.Resources, r)
		}
	}
	return p, nil
}

type errorf func(n *yaml.Node, field, format string, args ...any) error

func parseResource(n *yaml.Node, field string, f errorf) (Resource, error) {
	r := Resource{Line: n.Line}
	if n.Kind != yaml.MappingNode {
		return r, f(n, field, "must be a map")
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		kf := field + "." + k.Value
		var err error
		switch k.Value {
		case "name":
			r.Name = v.Value
			if v.Kind != yaml.ScalarNode || !validName.MatchString(r.Name) {
				err = f(v, kf, "must be 1-128 letters, digits or _.:/- starting with a letter or digit")
			}
		case "shadow":
			r.Shadow, err = boolean(v, kf, f)
		case "deadline":
			var on bool
			on, err = boolean(v, kf, f)
			r.NoDeadline = !on
		case "retry_after":
			r.RetryAfter, err = duration(v, kf, f)
		case "latency_ceiling":
			r.LatencyCeiling, err = duration(v, kf, f)
		case "concurrency":
			err = concurrency(&r, v, kf, f)
		case "headroom":
			r.Headroom, err = headroom(v, kf, f)
		default:
			err = f(k, kf, "unknown key '%s'", k.Value)
		}
		if err != nil {
			return r, err
		}
	}
	if r.Name == "" {
		return r, f(n, field+".name", "is required")
	}
	return r, nil
}

func concurrency(r *Resource, n *yaml.Node, field string, f errorf) error {
	if n.Kind == yaml.ScalarNode && (n.Value == "off" || n.Value == "false") {
		r.NoConcurrency = true
		return nil
	}
	if n.Kind != yaml.MappingNode {
		return f(n, field, "must be a map {initial, min, max} or 'off'")
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		kf := field + "." + k.Value
		x, err := strconv.Atoi(v.Value)
		if v.Kind != yaml.ScalarNode || err != nil || x < 1 || x > 1_000_000 {
			return f(v, kf, "must be a whole number from 1 to 1000000")
		}
		switch k.Value {
		case "initial":
			r.Concurrency.InitialLimit = x
		case "min":
			r.Concurrency.MinLimit = x
		case "max":
			r.Concurrency.MaxLimit = x
		default:
			return f(k, kf, "unknown key '%s' (want initial, min, max)", k.Value)
		}
	}
	c := r.Concurrency
	if c.MinLimit != 0 && c.MaxLimit != 0 && c.MinLimit > c.MaxLimit {
		return f(n, field, "min %d is above max %d", c.MinLimit, c.MaxLimit)
	}
	return nil
}

// headroom reads a share from 0.01 to 0.9, or off (no throughput target).
func headroom(n *yaml.Node, field string, f errorf) (float64, error) {
	if n.Kind == yaml.ScalarNode && (n.Value == "off" || n.Value == "false") {
		return -1, nil
	}
	x, err := strconv.ParseFloat(n.Value, 64)
	if n.Kind != yaml.ScalarNode || err != nil || !(x >= 0.01 && x <= 0.9) {
		return 0, f(n, field, "must be a share from 0.01 to 0.9, or off")
	}
	return x, nil
}

func boolean(n *yaml.Node, field string, f errorf) (bool, error) {
	var b bool
	if n.Kind != yaml.ScalarNode || n.Decode(&b) != nil {
		return false, f(n, field, "must be true or false")
	}
	return b, nil
}

func duration(n *yaml.Node, field string, f errorf) (time.Duration, error) {
	d, err := time.ParseDuration(n.Value)
	if n.Kind != yaml.ScalarNode || err != nil || d < 0 {
		return 0, f(n, field, "must be a duration such as 250ms or 1s")
	}
	return d, nil
}
