package policy

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/metric"

	"github.com/levee-dev/levee/shed"
)

// Set is the protected resources of a process, built from a Policy.
//
// Apply switches to a new policy and rebuilds only the resources whose
// settings changed: the others keep their thresholds, their measurements
// and the permits their callers hold, so a policy edit does not reset the
// shedding of resources it did not touch. Pin holds resources at
// operators' thresholds until the pins lapse; pins outlive Apply. Tick (or
// Run) drives every resource's control step and expires the permits their
// callers never released.
//
// Apply, Pin and Close are serialised; Resources, Permits and Tick read a
// snapshot without locking, since the request path looks resources up.
type Set struct {
	clock   func() time.Time
	metrics *shed.Metrics

	mu      sync.Mutex // serialises Apply, Pin and Close
	pins    []Pin
	members atomic.Pointer[map[string]*member]
}

// member is one resource of a Set.
type member struct {
	spec    Resource
	res     *shed.Resource
	permits *shed.PermitTable
	reg     metric.Registration // nil without metrics
}

// Pin holds a resource's threshold at Level until Until, whatever its
// controller measures: an operator's override.
type Pin struct {
	// Resource names the resource. A pin for a resource the policy does not
	// hold waits for a policy that does.
	Resource string
	// Level is the threshold: the least important level still admitted.
	// shed.NumLevels admits nothing.
	Level shed.Level
	// Until is when the pin lapses and automatic control resumes.
	Until time.Time
}

// NewSet returns an empty Set. clock is the resources' clock (nil:
// time.Now); m, if not nil, exports every resource the Set holds.
func NewSet(clock func() time.Time, m *shed.Metrics) *Set {
	if clock == nil {
		clock = time.Now
	}
	s := &Set{clock: clock, metrics: m}
	s.members.Store(&map[string]*member{})
	return s
}

// Apply switches to policy p. Resources whose settings did not change keep
// their state and permits; resources p no longer names are dropped. Nothing
// changes if any resource fails to build.
func (s *Set) Apply(p *Policy) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := *s.members.Load()
	next := make(map[string]*member, len(p.Resources))
	var fresh []*member
	undo := func() {
		for _, m := range fresh {
			m.unregister()
		}
	}
	for _, spec := range p.Resources {
		if old, ok := cur[spec.Name]; ok && sameSettings(old.spec, spec) {
			next[spec.Name] = old
			continue
		}
		cfg := spec.Config()
		cfg.Clock = s.clock
		r, err := shed.New(spec.Name, cfg)
		if err != nil {
			undo()
			return fmt.Errorf("resource %q (line %d): %w", spec.Name, spec.Line, err)
		}
		m := &member{spec: spec, res: r, permits: shed.NewPermitTable(r)}
		if s.metrics != nil {
			if m.reg, err = s.metrics.Register(r); err != nil {
				undo()
				return fmt.Errorf("metrics for resource %q: %w", spec.Name, err)
			}
		}
		fresh = append(fresh, m)
		next[spec.Name] = m
	}
	for name, old := range cur {
		if next[name] != old {
			old.unregister()
		}
	}
	s.members.Store(&next)
	s.pinLocked()
	return nil
}

// sameSettings reports whether two policy entries configure a resource the
// same way; where they sit in the file does not matter.
func sameSettings(a, b Resource) bool {
	a.Line, b.Line = 0, 0
	return a == b
}

// Pin replaces the pins: resources with a pin in force are held at its
// level, and every other resource follows its controller again. A pin
// whose level is out of range is left out and reported; the others apply.
func (s *Set) Pin(pins []Pin) error {
	var errs []error
	valid := make([]Pin, 0, len(pins))
	for _, p := range pins {
		if p.Level > shed.NumLevels {
			errs = append(errs, fmt.Errorf("pin on resource %q: level %d: want a level from 0 to %d", p.Resource, p.Level, shed.NumLevels))
			continue
		}
		valid = append(valid, p)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pins = valid
	s.pinLocked()
	return errors.Join(errs...)
}

// pinLocked applies the pins in force now to the current resources.
func (s *Set) pinLocked() {
	now := s.clock()
	members := *s.members.Load()
	pinned := make(map[string]bool, len(s.pins))
	for _, p := range s.pins {
		m, ok := members[p.Resource]
		if !ok || !now.Before(p.Until) {
			continue
		}
		// Pin checked the level, the only thing Resource.Pin refuses.
		if err := m.res.Pin(p.Level, p.Until); err != nil {
			continue
		}
		pinned[p.Resource] = true
	}
	for name, m := range members {
		if !pinned[name] {
			m.res.Unpin()
		}
	}
}

// Resources returns the resources sorted by name.
func (s *Set) Resources() []*shed.Resource {
	members := *s.members.Load()
	out := make([]*shed.Resource, 0, len(members))
	for _, m := range members {
		out = append(out, m.res)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out
}

// Permits returns the permit table of the resource named name, for its
// callers across a process boundary, or nil if the Set holds no such
// resource.
func (s *Set) Permits(name string) *shed.PermitTable {
	if m, ok := (*s.members.Load())[name]; ok {
		return m.permits
	}
	return nil
}

// Tick runs every resource's control step and expires unreleased permits;
// the owner calls it every 100 ms or so.
func (s *Set) Tick(now time.Time) {
	for _, m := range *s.members.Load() {
		m.res.Tick(now)
		m.permits.Sweep(now)
	}
}

// Run calls Tick every interval until ctx is done, and returns ctx's error.
// It runs in the caller's goroutine, which owns the loop.
func (s *Set) Run(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		return fmt.Errorf("shedding policy: tick interval %v must be positive", interval)
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case now := <-t.C:
			s.Tick(now)
		}
	}
}

// Close stops exporting the resources' metrics. The Set still answers, but
// its owner is done with it.
func (s *Set) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range *s.members.Load() {
		m.unregister()
	}
}

func (m *member) unregister() {
	if m.reg != nil {
		_ = m.reg.Unregister()
	}
}
