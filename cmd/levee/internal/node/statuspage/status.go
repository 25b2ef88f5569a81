// Package statuspage serves a node's status page: /status, an HTML page
// with its style sheet and script embedded in the binary (no build step, no
// external assets), and /status.json, the document the page reads every
// second.
//
// The document is the cluster as the answering node sees it: the members of
// its ring with what each last published to etcd (a node that leaves the
// ring stays listed as "gone" until it ages out), every protected resource
// with its threshold, concurrency limit, in-flight count and the last five
// minutes of threshold and admission rates, the operators' overrides, and
// the configuration version with its last changes.
//
// # The JSON document
//
// /status.json is a stable interface for scripts (and `levee ctl`): field
// names are snake_case, times are RFC 3339, rates are per second, and
// schema_version changes only if a field changes meaning or goes away;
// fields are only ever added. Absent optional fields are omitted; lists are
// never null.
//
//	schema_version        1
//	generated_at          when the answering node built the document
//	node                  the answering node's ID
//	clustered             false for a standalone node (no etcd, no ring)
//	refresh_seconds       how often the page polls
//	alerts[]              {level: "bad" or "warn", text}: what needs attention, worst first
//	members[]             the nodes, sorted by id:
//	  id, addr, self      ring ID and gRPC address; self marks the answering node
//	  state               "up", "no_status" (in the ring, nothing published) or "gone"
//	  gone_since          when it left the ring (gone only)
//	  ring_share          share of the key space it owns, 0 to 1
//	  last_heartbeat      when its published figures last changed, as this node saw it
//	  heartbeat_age_seconds
//	  decisions_per_second
//	  refusals_per_second {priority: rate}, critical … sheddable
//	  config              {version, error, source, hash, applied_at}: what it enforces
//	  thresholds[]        {resource, priority, cohort, level, pinned, pinned_until}
//	  error               why its figures are missing, if they are
//	resources[]           the answering node's protected resources, sorted by name:
//	  name
//	  threshold, auto_threshold  levels {level, priority, cohort, text}: traffic below is refused
//	  shedding            the threshold refuses some priority
//	  pinned, pinned_until  an override holds the threshold
//	  shadow, overloaded
//	  concurrency_limit   0 when the adaptive limit is off
//	  inflight
//	  queue_delay_seconds, capacity_per_second
//	  history[]           {t, threshold_level, admitted_per_second, refused_per_second}, oldest first
//	peer                  the answering node's checks of keys other nodes own (clustered only):
//	  forwarded_per_second     sent to their owners
//	  from_leases_per_second   decided here from leased tokens (or a cached refusal)
//	  fallbacks_per_second     decided by their failure_mode: the owner did not answer
//	overrides[]           {resource, min_priority, author, reason, set_at, until, seconds_left}
//	config                {version, error, changes[]}: changes are {version, author, reason, time, rollback_of}, newest first
//	warnings[]            what the answering node could not read (etcd unreachable, …)
//
// Levels: a threshold is a (priority, cohort) pair in one order, from 0
// (sheddable cohort 0: admit everything, text "all") to shed.NumLevels
// (admit nothing, text "none"); everything at or above it is admitted.
package statuspage

import "time"

// SchemaVersion is the version of the /status.json document.
const SchemaVersion = 1

// Status is the /status.json document.
type Status struct {
	SchemaVersion  int        `json:"schema_version"`
	GeneratedAt    time.Time  `json:"generated_at"`
	Node           string     `json:"node"`
	Clustered      bool       `json:"clustered"`
	RefreshSeconds float64    `json:"refresh_seconds"`
	Alerts         []Alert    `json:"alerts"`
	Members        []Member   `json:"members"`
	Resources      []Resource `json:"resources"`
	Peer           *Peer      `json:"peer,omitempty"`
	Overrides      []Override `json:"overrides"`
	Config         NodeConfig `json:"config"`
	Warnings       []string   `json:"warnings"`
}

// Peer is what the answering node did with checks of keys other nodes
// own, per second.
type Peer struct {
	ForwardedPerSecond  float64 `json:"forwarded_per_second"`
	FromLeasesPerSecond float64 `json:"from_leases_per_second"`
	FallbacksPerSecond  float64 `json:"fallbacks_per_second"`
}

// Member is one node of the cluster.
type Member struct {
	ID                  string             `json:"id"`
	Addr                string             `json:"addr"`
	Self                bool               `json:"self"`
	State               string             `json:"state"`
	GoneSince           *time.Time         `json:"gone_since,omitempty"`
	RingShare           float64            `json:"ring_share"`
	LastHeartbeat       *time.Time         `json:"last_heartbeat,omitempty"`
	HeartbeatAgeSeconds *float64           `json:"heartbeat_age_seconds,omitempty"`
	DecisionsPerSecond  float64            `json:"decisions_per_second"`
	RefusalsPerSecond   map[string]float64 `json:"refusals_per_second"`
	Config              MemberConfig       `json:"config"`
	Thresholds          []Threshold        `json:"thresholds"`
	Error               string             `json:"error,omitempty"`
}

// MemberConfig is the configuration a member enforces.
type MemberConfig struct {
	// Version is the configstore version, 0 for its bootstrap files.
	Version int64 `json:"version"`
	// Error is the last version it refused, if any.
	Error string `json:"error,omitempty"`
	// Source, Hash and AppliedAt say where the configuration came from,
	// its content hash and when the member applied it, when the member
	// publishes them.
	Source    string     `json:"source,omitempty"`
	Hash      string     `json:"hash,omitempty"`
	AppliedAt *time.Time `json:"applied_at,omitempty"`
}

// Threshold is a member's threshold on one resource.
type Threshold struct {
	Resource    string     `json:"resource"`
	Priority    string     `json:"priority"`
	Cohort      uint32     `json:"cohort"`
	Pinned      bool       `json:"pinned"`
	PinnedUntil *time.Time `json:"pinned_until,omitempty"`
}

// Level is a threshold: everything at or above it is admitted.
type Level struct {
	Level    int    `json:"level"`
	Priority string `json:"priority"`
	Cohort   int    `json:"cohort"`
	Text     string `json:"text"`
}

// Resource is one protected resource of the answering node.
type Resource struct {
	Name              string      `json:"name"`
	Threshold         Level       `json:"threshold"`
	AutoThreshold     Level       `json:"auto_threshold"`
	Shedding          bool        `json:"shedding"`
	Pinned            bool        `json:"pinned"`
	PinnedUntil       *time.Time  `json:"pinned_until,omitempty"`
	Shadow            bool        `json:"shadow"`
	Overloaded        bool        `json:"overloaded"`
	ConcurrencyLimit  int         `json:"concurrency_limit"`
	Inflight          int         `json:"inflight"`
	QueueDelaySeconds float64     `json:"queue_delay_seconds"`
	CapacityPerSecond float64     `json:"capacity_per_second"`
	History           []HistPoint `json:"history"`
}

// HistPoint is a Point as the document carries it.
type HistPoint struct {
	T                 time.Time `json:"t"`
	ThresholdLevel    int       `json:"threshold_level"`
	AdmittedPerSecond float64   `json:"admitted_per_second"`
	RefusedPerSecond  float64   `json:"refused_per_second"`
}

// Override is an operator's override in force.
type Override struct {
	Resource    string    `json:"resource"`
	MinPriority string    `json:"min_priority"`
	Author      string    `json:"author"`
	Reason      string    `json:"reason"`
	SetAt       time.Time `json:"set_at"`
	Until       time.Time `json:"until"`
	SecondsLeft float64   `json:"seconds_left"`
}

// NodeConfig is the configuration the answering node runs and the latest
// stored versions.
type NodeConfig struct {
	Version int64    `json:"version"`
	Error   string   `json:"error,omitempty"`
	Changes []Change `json:"changes"`
}

// Change is one stored configuration version.
type Change struct {
	Version    int64     `json:"version"`
	Author     string    `json:"author"`
	Reason     string    `json:"reason"`
	Time       time.Time `json:"time"`
	RollbackOf int64     `json:"rollback_of,omitempty"`
}
