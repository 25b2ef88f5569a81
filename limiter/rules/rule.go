package rules

import (
	"encoding/binary"
	"strings"
	"time"

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
	// With rate_limits each limit carries its own name (RateLimit.Name) and
	// Name is empty.
	Name string
	// File and Line locate the descriptor in its rule file.
	File string
	Line int

	// HasLimit reports whether the node has a rate_limit (or rate_limits).
	// A matched leaf without one is an allow-list entry: the request gets no
	// limit.
	HasLimit bool
	// Unlimited is rate_limit.unlimited: the status is always OK and no
	// counter is touched.
	Unlimited bool
	// Limits lists the limits that all apply to a matching request, in file
	// order: the one rate_limit, or every element of rate_limits (a levee
	// extension). It is empty when the rule has no limit or is unlimited.
	// Each limit counts in its own bucket (see LimitKeyHash).
	Limits []RateLimit
	// Replaces lists the names of the limits this one drops from the same
	// request when it applies: rate_limit.replaces, or with rate_limits the
	// replaces of all its limits.
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

// MaxLimits is the most limits one descriptor may carry in rate_limits.
const MaxLimits = 8

// RateLimit is one limit of a descriptor: its rate_limit, or one element of
// its rate_limits.
type RateLimit struct {
	// Name is the limit's name (name inside rate_limit or the rate_limits
	// element): what other rules' replaces refer to, and what responses
	// report as current_limit.name.
	Name string
	// Unit, UnitMultiplier and RequestsPerUnit are the limit as written:
	// RequestsPerUnit per UnitMultiplier Units. UnitMultiplier is 1 unless
	// the file gives unit_multiplier, or a period (then Unit is the largest
	// of week, day, hour, minute and second that divides it).
	// RequestsPerUnit 0 refuses every request (a block list).
	Unit            Unit
	UnitMultiplier  uint32
	RequestsPerUnit uint32
	// Limit is the token bucket: Rate is RequestsPerUnit per Window, Burst
	// is the file's burst or else RequestsPerUnit.
	Limit limiter.Limit
	// Reserve is the capacity-budget reserve (reserve), indexed by
	// shed.Priority: the tokens that must remain in this limit's bucket
	// after a request of that priority takes its own. All zero without a
	// reserve.
	Reserve [shed.Sheddable + 1]uint64
}

// Window returns the length of the limit's window, UnitMultiplier Units.
func (l *RateLimit) Window() time.Duration { return l.Limit.Period }

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
	r.keyDigest(&d, domain, entries)
	return d.Sum64()
}

// keyDigest writes the counter key's fields to d, reset first.
func (r *Rule) keyDigest(d *xxhash.Digest, domain string, entries []Entry) {
	d.Reset()
	WriteField(d, domain)
	for i := range entries {
		v := entries[i].Value
		if i < len(r.levels) && r.levels[i].share {
			v = r.levels[i].value
		}
		WriteField(d, entries[i].Key)
		WriteField(d, v)
	}
}

// LimitKeyHash returns the counter key of the rule's k-th limit (an index
// into Limits) for a request descriptor that matched r. The first limit's
// key is KeyHash's, so a rule that gains limits keeps its counter; every
// other limit hashes one more field, whose length prefix no string can
// have, so that its key differs from every descriptor's. It allocates
// nothing.
func (r *Rule) LimitKeyHash(domain string, entries []Entry, k int) uint64 {
	var d xxhash.Digest
	r.keyDigest(&d, domain, entries)
	if k > 0 {
		_, _ = d.Write([]byte{0xff, 0xff, 0xff, 0xff, byte(k)})
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
