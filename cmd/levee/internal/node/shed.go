package node

import (
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"go.opentelemetry.io/otel/metric"

	"github.com/levee-dev/levee/cmd/levee/internal/configstore"
	"github.com/levee-dev/levee/deploy/examples"
	"github.com/levee-dev/levee/shed"
	"github.com/levee-dev/levee/shed/policy"
	"github.com/levee-dev/levee/shed/sidecar"
)

// shedSet is the node's protected resources. A new policy rebuilds only the
// resources whose settings changed, so the others keep their thresholds and
// in-flight permits; operator overrides are re-applied to every resource.
type shedSet struct {
	log     *slog.Logger
	metrics *shed.Metrics
	sidecar *sidecar.Server
	now     func() time.Time

	mu        sync.Mutex
	entries   map[string]*shedEntry
	overrides []configstore.Override
}

type shedEntry struct {
	spec policy.Resource
	res  *shed.Resource
	reg  metric.Registration
}

func newShedSet(m *shed.Metrics, now func() time.Time, log *slog.Logger) *shedSet {
	return &shedSet{
		log:     log,
		metrics: m,
		now:     now,
		entries: map[string]*shedEntry{},
		sidecar: sidecar.NewServer(nil, shed.CohortSalter{}, now),
	}
}

// parseShedPolicy parses a policy file's contents, or the built-in example
// policy when data is nil.
func parseShedPolicy(name string, data []byte) (*policy.Policy, error) {
	if data == nil {
		return policy.Parse("builtin/shed/policy.yaml", examples.ShedPolicy)
	}
	return policy.Parse(name, data)
}

// validateShedPolicy is configstore's validator: the code the nodes use.
func validateShedPolicy(data []byte) ([]string, error) {
	if len(data) == 0 {
		return nil, nil
	}
	p, err := policy.Parse(configstore.ShedName, data)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(p.Resources))
	for i, r := range p.Resources {
		names[i] = r.Name
	}
	return names, nil
}

// apply switches to policy p. Nothing changes if any resource fails to build.
func (s *shedSet) apply(p *policy.Policy) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := make(map[string]*shedEntry, len(p.Resources))
	var fresh []*shedEntry
	undo := func() {
		for _, e := range fresh {
			if e.reg != nil {
				_ = e.reg.Unregister()
			}
		}
	}
	for _, spec := range p.Resources {
		if old, ok := s.entries[spec.Name]; ok && sameSettings(old.spec, spec) {
			next[spec.Name] = old
			continue
		}
		cfg := spec.Config()
		cfg.Clock = s.now
		r, err := shed.New(spec.Name, cfg)
		if err != nil {
			undo()
			return fmt.Errorf("resource %q (line %d): %w", spec.Name, spec.Line, err)
		}
		e := &shedEntry{spec: spec, res: r}
		if s.metrics != nil {
			if e.reg, err = s.metrics.Register(r); err != nil {
				undo()
				return fmt.Errorf("metrics for resource %q: %w", spec.Name, err)
			}
		}
		fresh = append(fresh, e)
		next[spec.Name] = e
	}
	for name, old := range s.entries {
		if next[name] != old && old.reg != nil {
			_ = old.reg.Unregister()
		}
	}
	s.entries = next
	list := make([]*shed.Resource, 0, len(next))
	for _, e := range next {
		list = append(list, e.res)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Name() < list[j].Name() })
	s.sidecar.SetResources(list)
	s.pinLocked()
	return nil
}

// sameSettings reports whether two policy entries configure a resource the
// same way; where they sit in the file does not matter.
func sameSettings(a, b policy.Resource) bool {
	a.Line, b.Line = 0, 0
	return a == b
}

// setOverrides pins resources as operators asked; resources without an
// override follow their controller again.
func (s *shedSet) setOverrides(os []configstore.Override) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.overrides = os
	s.pinLocked()
}

func (s *shedSet) pinLocked() {
	now := s.now()
	pinned := map[string]bool{}
	for _, o := range s.overrides {
		e, ok := s.entries[o.Resource]
		if !ok || !o.Active(now) {
			continue
		}
		p, err := shed.ParsePriority(o.MinPriority)
		if err != nil {
			s.log.Warn("override with an unknown priority ignored", "resource", o.Resource, "min_priority", o.MinPriority)
			continue
		}
		if err := e.res.Pin(shed.LevelOf(p, 0), o.Until); err != nil {
			s.log.Warn("override not applied", "resource", o.Resource, "err", err)
			continue
		}
		pinned[o.Resource] = true
	}
	for name, e := range s.entries {
		if !pinned[name] {
			e.res.Unpin()
		}
	}
}

// resources returns the resources sorted by name.
func (s *shedSet) resources() []*shed.Resource {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*shed.Resource, 0, len(s.entries))
	for _, e := range s.entries {
		out = append(out, e.res)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out
}

// close unregisters the resources' metrics.
func (s *shedSet) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.entries {
		if e.reg != nil {
			_ = e.reg.Unregister()
		}
	}
}
