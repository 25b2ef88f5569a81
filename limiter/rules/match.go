package rules

import (
	"slices"
	"strings"
)

// Match is the result of matching one request descriptor.
type Match struct {
	// Rule is the rule that applies, or nil when none does. A Rule with
	// HasLimit false is an allow-list entry: no limit, but a known rule.
	Rule *Rule
	// DomainFound reports whether the domain exists, for the
	// domain_not_found stat.
	DomainFound bool
}

// Match finds the rule for one request descriptor in domain, as described
// in the package documentation. It allocates nothing. A nil Config matches
// nothing.
func (c *Config) Match(domain string, entries []Entry) Match {
	d := c.Domain(domain)
	if d == nil {
		return Match{}
	}
	m := Match{DomainFound: true}
	// A request deeper than the tree reaches a leaf before its last entry,
	// so it matches nothing: say so without walking.
	if len(entries) == 0 || len(entries) > d.depth {
		return m
	}
	m.Rule, _ = d.match(entries, nil)
	return m
}

// MatchKind says how one entry of a request descriptor picked its
// descriptor.
type MatchKind uint8

// The ways an entry can match, in the order they are tried.
const (
	// MatchNone: no descriptor fits the entry.
	MatchNone MatchKind = iota
	// MatchExact: a descriptor with the entry's key and value. A wildcard
	// descriptor whose pattern equals the value literally matches this way.
	MatchExact
	// MatchWildcard: the first descriptor, in file order, with the entry's
	// key and a pattern matching its value.
	MatchWildcard
	// MatchDefault: the descriptor with the entry's key and no value.
	MatchDefault
)

// String returns "exact", "wildcard", "default" or "none".
func (k MatchKind) String() string {
	switch k {
	case MatchExact:
		return "exact"
	case MatchWildcard:
		return "wildcard"
	case MatchDefault:
		return "default"
	}
	return "none"
}

// Step is one level of a walk down a domain's descriptor tree.
type Step struct {
	// Entry is the request entry at this level.
	Entry Entry
	// Kind is how it matched.
	Kind MatchKind
	// Rule is the descriptor it matched, or nil for MatchNone.
	Rule *Rule
}

// Stop says why a walk down the descriptor tree ended.
type Stop uint8

const (
	// StopNoDomain: the domain is not in the configuration.
	StopNoDomain Stop = iota
	// StopNoEntries: the descriptor has no entries.
	StopNoEntries
	// StopNoMatch: the last step's entry matched no descriptor.
	StopNoMatch
	// StopLeaf: the last step reached a descriptor without children, and
	// the request has more entries.
	StopLeaf
	// StopNoLimit: the request's last entry reached a descriptor that has
	// children but no rate_limit of its own, so nothing applies.
	StopNoLimit
	// StopMatched: the request's last entry reached a descriptor with a
	// rate_limit, or a leaf (an allow-list entry); it is the Match's Rule.
	StopMatched
)

// Trace is a Match together with the path that led to it.
type Trace struct {
	// Match is the result, the same as Config.Match gives.
	Match
	// Steps has one element per entry walked, in order; the walk ends at the
	// first entry that matches nothing or at a leaf.
	Steps []Step
	// Stop says why the walk ended.
	Stop Stop
	// Below lists, in file order, the descriptors one level under where the
	// walk ended: the children of the last descriptor matched, or the
	// domain's top level when the first entry matched nothing.
	Below []*Rule
}

// Trace matches one request descriptor as Match does and also reports the
// path it took, level by level, for explaining a decision. It shares
// Match's walk, so the two cannot disagree. Unlike Match it allocates.
func (c *Config) Trace(domain string, entries []Entry) Trace {
	d := c.Domain(domain)
	if d == nil {
		return Trace{Stop: StopNoDomain}
	}
	t := Trace{Match: Match{DomainFound: true}, Stop: StopNoEntries}
	if len(entries) == 0 {
		return t
	}
	var n *node
	t.Rule, n = d.match(entries, &t)
	t.Below = slices.Clone(n.children)
	return t
}

// match walks entries down d's tree, one level per entry, as the package
// documentation describes, and returns the rule that applies (or nil) and
// the node where the walk ended. With a non-nil t it records the walk.
// entries must not be empty.
func (d *Domain) match(entries []Entry, t *Trace) (*Rule, *node) {
	n := &d.root
	last := len(entries) - 1
	for i := range entries {
		c, kind := n.child(entries[i])
		if t != nil {
			t.Steps = append(t.Steps, Step{Entry: entries[i], Kind: kind})
		}
		if c == nil {
			if t != nil {
				t.Stop = StopNoMatch
			}
			return nil, n
		}
		n = c
		if t != nil {
			t.Steps[i].Rule = n.rule
		}
		if i == last {
			break
		}
		if n.leaf {
			if t != nil {
				t.Stop = StopLeaf
			}
			return nil, n
		}
	}
	if !n.rule.HasLimit && !n.leaf {
		if t != nil {
			t.Stop = StopNoLimit
		}
		return nil, n
	}
	if t != nil {
		t.Stop = StopMatched
	}
	return n.rule, n
}

// node is one level of the matching tree. Its children are grouped by key
// and then by value, so a lookup hashes the request's strings as they are
// and never joins them.
type node struct {
	rule *Rule
	keys map[string]*keyChildren
	leaf bool
	// children lists the children's rules in file order, for Trace.
	children []*Rule
}

// keyChildren are the children of a node that share one key.
type keyChildren struct {
	// exact holds children by value. Wildcard children are in it too, under
	// their literal pattern, as envoyproxy/ratelimit looks them up.
	exact map[string]*node
	// wild holds the wildcard children in file order.
	wild []wildChild
	// def is the child with the key and no value, if any.
	def *node
}

type wildChild struct {
	pat pattern
	n   *node
}

// child picks the child for one entry: exact, then the first matching
// wildcard, then the key's default.
func (n *node) child(e Entry) (*node, MatchKind) {
	k := n.keys[e.Key]
	if k == nil {
		return nil, MatchNone
	}
	if c := k.exact[e.Value]; c != nil {
		return c, MatchExact
	}
	for i := range k.wild {
		if k.wild[i].pat.match(e.Value) {
			return k.wild[i].n, MatchWildcard
		}
	}
	if k.def != nil {
		return k.def, MatchDefault
	}
	return nil, MatchNone
}

// pattern is a wildcard value split at its '*'s: parts[0] is a prefix, the
// last part a suffix and the parts between must appear in order.
type pattern struct {
	parts []string
}

func newPattern(s string) pattern {
	return pattern{parts: strings.Split(s, "*")}
}

// match reports whether s matches the pattern. Taking each middle part at
// its leftmost position is enough: a later position can only leave less of
// s for the parts after it.
func (p pattern) match(s string) bool {
	parts := p.parts
	if len(parts) == 1 {
		return s == parts[0]
	}
	first, last := parts[0], parts[len(parts)-1]
	if len(s) < len(first)+len(last) || !strings.HasPrefix(s, first) || !strings.HasSuffix(s, last) {
		return false
	}
	s = s[len(first) : len(s)-len(last)]
	for _, part := range parts[1 : len(parts)-1] {
		i := strings.Index(s, part)
		if i < 0 {
			return false
		}
		s = s[i+len(part):]
	}
	return true
}
