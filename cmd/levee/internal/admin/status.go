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
