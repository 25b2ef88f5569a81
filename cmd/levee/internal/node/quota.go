package node

import (
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/metric"

	"github.com/levee-dev/levee/limiter/engine"
	"github.com/levee-dev/levee/limiter/rlqs"
	"github.com/levee-dev/levee/shed"
)

// newQuota builds the node's rate limit quota service: its rules are the
// engine's (so every reload applies), its owners the cluster's ring, and
// its shedding threshold the highest of the node's protected resources.
func newQuota(cfg Config, eng *engine.Engine, cl *clusterNode, set *shedSet, meter metric.Meter, log *slog.Logger) (*rlqs.Server, error) {
	unmatched, err := rlqs.ParseUnmatched(cfg.Quota.Unmatched)
	if err != nil {
		return nil, fmt.Errorf("quota service: unmatched: %w", err)
	}
	if cfg.Quota.TTL < 0 || cfg.Quota.TTL%time.Second != 0 {
		return nil, fmt.Errorf("quota service: ttl: %v is not a whole number of seconds (Envoy reads only the seconds)", cfg.Quota.TTL)
	}
	m, err := rlqs.NewMetrics(meter)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	qc := rlqs.Config{
		Rules:     eng.Rules,
		Now:       cfg.Now,
		Unmatched: unmatched,
		TTL:       cfg.Quota.TTL,
		Sync:      cfg.Quota.Sync,
		Abandon:   cfg.Quota.Abandon,
		Threshold: set.threshold,
		Metrics:   m,
		Logger:    log,
	}
	if cl != nil {
		qc.Self, qc.Peers = cl.self.ID, cl.router
	}
	s := rlqs.New(qc)
	if err := m.Observe(meter, s); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	return s, nil
}

// threshold is the highest shedding threshold in force among the node's
// resources: the quota service shrinks assignments by what it sheds.
func (s *shedSet) threshold(now time.Time) shed.Level {
	var th shed.Level
	for _, r := range s.Resources() {
		th = max(th, r.Controller().Effective(now))
	}
	return th
}
