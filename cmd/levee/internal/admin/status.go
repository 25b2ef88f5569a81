package admin

import (
	"context"
	"time"
)

// StatusSource gives the cluster figures that Status reports. The node
// implements it: it knows the ring, its own counters, and how to reach the
// other members.
type StatusSource interface {
	// ClusterStatus returns the cluster as this node sees it. It should
	// answer within ctx's deadline with what it has, marking members it
	// could not reach rather than failing.
	ClusterStatus(ctx context.Context) (ClusterStatus, error)
}

// StatusFunc adapts a function to StatusSource.
type StatusFunc func(ctx context.Context) (ClusterStatus, error)

// ClusterStatus implements StatusSource.
func (f StatusFunc) ClusterStatus(ctx context.Context) (ClusterStatus, error) { return f(ctx) }

// ClusterStatus is the cluster as one node sees it.
type ClusterStatus struct {
	// Self is the ID of the node answering.
	Self string
	// Members are the live members, in any order.
	Members []MemberStatus
}

// MemberStatus is one node's figures.
type MemberStatus struct {
	// ID and Addr identify the node as in the ring.
	ID, Addr string
	// Reachable reports whether the figures below are known; when false,
	// Error says why.
	Reachable bool
	Error     string
	// RingShare is the share of the key space the node owns, 0 to 1.
	RingShare float64
	// ConfigVersion is the configstore version the node runs, 0 for its
	// bootstrap rule files.
	ConfigVersion int64
	// ConfigError is the last configuration the node refused, if any,
	// such as "version 7: api.yaml:3: ...".
	ConfigError string
	// ConfigSource is where the node takes its configuration from:
	// SourceFile or SourceEtcd (empty from a node that predates it).
	ConfigSource string `json:"config_source,omitempty"`
	// ConfigHash is configstore's Bundle.Hash of what the node enforces,
	// comparable across sources; ConfigAppliedAt is when it began to.
	ConfigHash      string    `json:"config_hash,omitempty"`
	ConfigAppliedAt time.Time `json:"config_applied_at,omitzero"`
	// ConfigPaths are the files a node with SourceFile enforces.
	ConfigPaths []string `json:"config_paths,omitempty"`
	// ConfigWarning is something an operator should know about the
	// node's configuration that is not a refusal: its --config differs
	// from the stored version, or the current-version key is missing.
	ConfigWarning string `json:"config_warning,omitempty"`
	// ConfigDivergedSince is set by FlagDivergent, on the answering node,
	// when the node's hash has differed from the majority's for longer
	// than DivergenceAfter; it is never published.
	ConfigDivergedSince time.Time `json:"-"`
	// DecisionsPerSecond is the node's recent decision rate.
	DecisionsPerSecond float64
	// RefusalsPerSecond maps a priority name ("critical" … "sheddable") to
	// the node's recent refusal rate for it.
	RefusalsPerSecond map[string]float64
	// Thresholds are the node's shedding thresholds, one per resource.
	Thresholds []Threshold
}

// Threshold is a resource's admission level on one node: traffic below
// (Priority, Cohort) is refused.
type Threshold struct {
	// Resource is the shedding resource.
	Resource string
	// Priority is the least important priority admitted, by name.
	Priority string
	// Cohort: cohorts of Priority below it are refused.
	Cohort uint32
	// Pinned reports an operator override, lapsing at PinnedUntil.
	Pinned      bool
	PinnedUntil time.Time
}

// DivergenceAfter is how long a node's configuration may differ from the
// majority's before FlagDivergent flags it: longer than a rolling change
// takes, or a Kubernetes ConfigMap update, which reaches pods up to about a
// minute apart.
const DivergenceAfter = 2 * time.Minute

// FlagDivergent sets ConfigDivergedSince on each member whose ConfigHash has
// differed from the majority's for longer than DivergenceAfter at now, and
// clears it on the others. Members without a hash (unreachable, or older
// nodes) take no part.
//
// The majority is the hash more than half of the members report. A member
// differs from it since the later of its own ConfigAppliedAt and the
// earliest ConfigAppliedAt among the majority's members: a node left
// behind by a change diverges from when the majority changed, a node that
// changed alone from when it changed. When no hash has a majority, every
// member differs since the latest ConfigAppliedAt among them, when the
// disagreement took its present shape.
func FlagDivergent(members []MemberStatus, now time.Time) {
	count := map[string]int{}
	since := map[string]time.Time{} // earliest applied time per hash
	var latest time.Time
	n := 0
	for i := range members {
		m := &members[i]
		m.ConfigDivergedSince = time.Time{}
		if m.ConfigHash == "" {
			continue
		}
		n++
		count[m.ConfigHash]++
		if t, ok := since[m.ConfigHash]; !ok || m.ConfigAppliedAt.Before(t) {
			since[m.ConfigHash] = m.ConfigAppliedAt
		}
		if m.ConfigAppliedAt.After(latest) {
			latest = m.ConfigAppliedAt
		}
	}
	majority := ""
	for h, c := range count {
		if 2*c > n {
			majority = h
		}
	}
	if len(count) < 2 {
		return
	}
	for i := range members {
		m := &members[i]
		if m.ConfigHash == "" || m.ConfigHash == majority {
			continue
		}
		start := latest
		if majority != "" {
			start = m.ConfigAppliedAt
			if t := since[majority]; t.After(start) {
				start = t
			}
		}
		if now.Sub(start) > DivergenceAfter {
			m.ConfigDivergedSince = start
		}
	}
}
