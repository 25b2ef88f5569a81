package configstore

import (
	"fmt"
	"strings"
)

// DefaultPrefix is the cluster's key prefix when none is configured.
const DefaultPrefix = "/levee/"

// Layout names the keys of one cluster under its prefix, as the package
// documentation lists them. Create it with NewLayout; every key a levee
// binary reads or writes in etcd comes from one.
type Layout struct {
	prefix string
}

// NewLayout returns the layout under prefix. An empty prefix is
// DefaultPrefix and a missing trailing slash is added, so "/x" and "/x/"
// name the same cluster. This is the one place a prefix is normalised.
func NewLayout(prefix string) Layout {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return Layout{prefix: prefix}
}

// Prefix is the cluster's normalised prefix.
func (l Layout) Prefix() string { return l.prefix }

// Members is the prefix of the member keys, the cluster.Config.KeyPrefix
// of every node's membership.
func (l Layout) Members() string { return l.prefix + "members/" }

// Member is the key at which node id registers.
func (l Layout) Member(id string) string { return l.Members() + id }

// Status is the prefix of the figures the nodes publish.
func (l Layout) Status() string { return l.prefix + "status/" }

// StatusOf is the key at which node id publishes its figures.
func (l Layout) StatusOf(id string) string { return l.Status() + id }

// The configuration's keys are written by the Store alone.

func (l Layout) configCurrent() string { return l.prefix + "config/current" }

func (l Layout) configHistory() string { return l.prefix + "config/history/" }

// configHistoryEnd ends the range [configCurrent, configHistoryEnd), which
// holds the current key and every history key and nothing else: '0'
// follows '/'.
func (l Layout) configHistoryEnd() string { return l.prefix + "config/history0" }

// historyKey zero-pads the version so that keys sort in version order.
func (l Layout) historyKey(v int64) string { return fmt.Sprintf("%s%020d", l.configHistory(), v) }

func (l Layout) overrides() string { return l.prefix + "config/overrides/" }
