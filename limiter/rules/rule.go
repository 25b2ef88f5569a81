package rules

import (
	"encoding/binary"
	"strings"

	"github.com/cespare/xxhash/v2"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/shed"
)

// Rule is one descriptor node of a rule file. Match returns the Rule that
// applies to a request descriptor. A Rule is immutable once its Config is
// built; its fields must not be modified.
type Rule struct {
	// Domain is the domain the rule belongs to.
	Domain string
	// ID is envoyproxy/ratelimit's composite key, such as
	// "messaging.message_type_marketing.to_number": the domain, then each
	// level's key, with "_value" where the level has a value (or a pattern).
	// It names the rule in stats.
	ID string
	// Name is rate_limit.name, the name that other rules' Replaces refer to.
	Name string
	// File and Line locate the descriptor in its rule file.
	File string
	Line int

	// HasLimit reports whether the node has a rate_limit. A matched leaf
	// without one is an allow-list entry: the request gets no limit.
	HasLimit bool
	// Unlimited is rate_limit.unlimited: the status is always OK and no
	// counter is touched.
	Unlimited bool
	// Unit and RequestsPerUnit are the limit as written in the file.
	// RequestsPerUnit 0 refuses every request (a block list).
	Unit            Unit
	RequestsPerUnit uint32
	// Limit is the token bucket for the rule: Rate is RequestsPerUnit per
	// Unit, Burst is the file's burst or else RequestsPerUnit. It is zero
	// when the rule has no limit or is unlimited.
	Limit limiter.Limit
	// Reserve is the capacity-budget reserve (rate_limit.reserve), indexed
	// by shed.Priority: the tokens that must remain in the bucket after a
	// request of that priority takes its own. All zero without a reserve.
	Reserve [shed.Sheddable + 1]uint64
	// Replaces lists the names of the limits this one drops from the same
	// request when it applies.
	Replaces []string

	// ShadowMode counts and reports the rule but always answers OK.
	ShadowMode bool
	// QuotaMode makes an over-limit answer count only if every quota-mode
	// descriptor of the request is over its limit.
	QuotaMode bool
	// DetailedMetric puts runtime values into the stats key (see MetricKey).
	DetailedMetric bool
	// ValueToMetric puts this level's runtime value into the stats key.
	ValueToMetric bool
	// ShareThreshold (wildcard values only) makes every value matching the
	// pattern share one counter (see KeyHash).
	ShareThreshold bool

	// Priority is the levee priority of traffic matching this rule, or
	// shed.Unspecified when the file gives none.
	Priority shed.Priority
	// FailureMode says how to decide when the counter's owner is unreachable.
	FailureMode FailureMode
	// Metadata is the descriptor's free-form metadata map, or nil.
	Metadata map[string]any

	// levels describes the path from the domain to this node, one element
	// per request entry, so that KeyHash and MetricKey need only the entries.
	levels []level
	// dynamicMetric is set when the stats key depends on runtime values
	// (detailed_metric on the rule or value_to_metric on its path).
	dynamicMetric bool
}

type levelKind uint8

const (
	levelExact levelKind = iota
	levelWildcard
	levelDefault
)

// level is one node on the path to a rule.
type level struct {
	key           string
	value         string // the value or the pattern; "" for a key's default
	kind          levelKind
	share         bool // share_threshold: the counter key uses the pattern
	valueToMetric bool
}

// Depth returns the number of entries a request descriptor has when it
// matches this rule.
func (r *Rule) Depth() int { return len(r.levels) }

// Key returns the key of the rule's own descriptor, the last level of its
// path.
func (r *Rule) Key() string { return r.levels[len(r.levels)-1].key }

// Value returns the value or wildcard pattern of the rule's own descriptor,
// or "" for a key's default.
func (r *Rule) Value() string { return r.levels[len(r.levels)-1].value }

// KeyHash returns the counter key for a request descriptor that matched r:
// an xxhash of the domain and of every entry's key and value, each
// length-prefixed so that no two descriptors run together. At a wildcard
// level with share_threshold the pattern stands in for the value, so all
// values matching it share one counter. entries must be the descriptor that
// Match matched to r and domain its domain. KeyHash allocates nothing.
func (r *Rule) KeyHash(domain string, entries []Entry) uint64 {
	var d xxhash.Digest
	d.Reset()
	WriteField(&d, domain)
	for i := range entries {
		v := entries[i].Value
		if i < len(r.levels) && r.levels[i].share {
			v = r.levels[i].value
		}
		WriteField(&d, entries[i].Key)
		WriteField(&d, v)
	}
	return d.Sum64()
}

// WriteField writes s to d after its length, so that consecutive fields
// never run together: ("ab", "c") and ("a", "bc") hash differently. Every
// bucket key levee hashes from strings is built from such fields.
func WriteField(d *xxhash.Digest, s string) {
	var n [4]byte
	binary.LittleEndian.PutUint32(n[:], uint32(len(s)))
	_, _ = d.Write(n[:])
	_, _ = d.WriteString(s)
}

// MetricKey returns envoyproxy/ratelimit's stats key for a request
// descriptor that matched r. It is r.ID unless the rule has detailed_metric
// (then every level shows its runtime value, or its pattern under
// share_threshold) or a level on its path has value_to_metric (then that
// level shows its runtime value). Only in those cases does it allocate.
func (r *Rule) MetricKey(entries []Entry) string {
	if !r.dynamicMetric || len(entries) != len(r.levels) {
		return r.ID
	}
	var b strings.Builder
	n := len(r.Domain)
	for _, e := range entries {
		n += 2 + len(e.Key) + len(e.Value)
	}
	b.Grow(n)
	b.WriteString(r.Domain)
	anyShare := false
	for _, l := range r.levels {
		anyShare = anyShare || l.share
	}
	for i, e := range entries {
		l := r.levels[i]
		b.WriteByte('.')
		b.WriteString(e.Key)
		switch {
		case r.DetailedMetric && !anyShare:
			// envoyproxy/ratelimit writes "key_" even for an empty value here.
			b.WriteByte('_')
			b.WriteString(e.Value)
		case l.share:
			b.WriteByte('_')
			b.WriteString(l.value)
		case r.DetailedMetric, l.kind == levelExact, l.valueToMetric:
			if e.Value != "" {
				b.WriteByte('_')
				b.WriteString(e.Value)
			}
		case l.kind == levelWildcard:
			b.WriteByte('_')
			b.WriteString(l.value)
		}
	}
	return b.String()
}

// Domain is the parsed rules of one file.
type Domain struct {
	// Name is the domain requests name.
	Name string
	// File and Line locate the domain field.
	File string
	Line int
	// Rules lists every descriptor node in file order (depth first). It must
	// not be modified.
	Rules []*Rule
	// Warnings lists things in the file that envoyproxy/ratelimit silently
	// accepts but that are probably mistakes: a known key where it has no
	// effect, or a key given twice in one map. They do not stop loading.
	Warnings []*ParseError

	root  node
	depth int // the deepest level, so deeper requests stop at once
}
