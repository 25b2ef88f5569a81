package node

import (
	"log/slog"
	"time"

	"github.com/levee-dev/levee/cmd/levee/internal/configstore"
	"github.com/levee-dev/levee/deploy/examples"
	"github.com/levee-dev/levee/shed"
	"github.com/levee-dev/levee/shed/policy"
	"github.com/levee-dev/levee/shed/sidecar"
)

// shedSet is the node's protected resources: a policy.Set, which keeps the
// state of resources a new policy leaves unchanged, fed from the node's
// configuration, with the sidecar that serves it. The node owns both and
// runs the Set's control loop.
type shedSet struct {
	*policy.Set
	log     *slog.Logger
	sidecar *sidecar.Server
}

func newShedSet(m *shed.Metrics, now func() time.Time, log *slog.Logger) *shedSet {
	set := policy.NewSet(now, m)
	return &shedSet{Set: set, log: log, sidecar: sidecar.NewServer(set, shed.CohortSalter{}, now)}
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

// setOverrides pins resources as operators asked; resources without an
// override follow their controller again.
func (s *shedSet) setOverrides(os []configstore.Override) {
	pins := make([]policy.Pin, 0, len(os))
	for _, o := range os {
		p, err := shed.ParsePriority(o.MinPriority)
		if err != nil {
			s.log.Warn("override with an unknown priority ignored", "resource", o.Resource, "min_priority", o.MinPriority)
			continue
		}
		// Cohort 0 is the lowest level of the priority: it and everything
		// above it stay admitted.
		pins = append(pins, policy.Pin{Resource: o.Resource, Level: shed.LevelOf(p, 0), Until: o.Until})
	}
	if err := s.Pin(pins); err != nil {
		s.log.Warn("override not applied", "err", err)
	}
}
