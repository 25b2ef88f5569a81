package admin

import (
	"fmt"
	"sort"
	"strings"

	"github.com/levee-dev/levee/limiter/rules"
)

// MatchKind says how one descriptor level was matched.
type MatchKind uint8

// The ways a level can match, in the order Match tries them.
const (
	MatchNone MatchKind = iota
	MatchExact
	MatchWildcard
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

// Step is one level of an explained descriptor walk.
type Step struct {
	// Entry is the request entry at this level.
	Entry rules.Entry
	// Kind is how it matched.
	Kind MatchKind
	// Rule is the descriptor it matched, nil for MatchNone.
	Rule *rules.Rule
	// Note adds detail: why a limit here does not count, or which keys
	// were available.
	Note string
}

// Explanation says which rule a descriptor hits and why.
type Explanation struct {
	// DomainFound reports whether the domain exists.
	DomainFound bool
	// Rule is the rule that applies (as rules.Config.Match returns it), or
	// nil.
	Rule *rules.Rule
	// Steps is the walk, one per entry until it stopped.
	Steps []Step
	// Summary is one sentence: what applies, or why nothing does.
	Summary string
}

// tnode is a descriptor node rebuilt from Domain.Rules.
type tnode struct {
	rule     *rules.Rule
	comp     string // this level's part of the rule ID: "key" or "key_value"
	children []*tnode
}

// tree rebuilds a domain's descriptor tree from its rules, which are listed
// depth first in file order: a rule's parent is the last rule before it one
// level up, and its level's key and value are its ID after the parent's.
func tree(d *rules.Domain) (*tnode, bool) {
	root := &tnode{}
	stack := []*tnode{root}
	for _, r := range d.Rules {
		depth := r.Depth()
		if depth < 1 || depth > len(stack) {
			return nil, false
		}
		parent := stack[depth-1]
		prefix := d.Name + "."
		if parent.rule != nil {
			prefix = parent.rule.ID + "."
		}
		if !strings.HasPrefix(r.ID, prefix) {
			return nil, false
		}
		n := &tnode{rule: r, comp: r.ID[len(prefix):]}
		parent.children = append(parent.children, n)
		stack = append(stack[:depth], n)
	}
	return root, true
}

// child picks n's child for e as rules.Config.Match does: exact, then the
// first matching wildcard in file order, then the key's default.
func (n *tnode) child(e rules.Entry) (*tnode, MatchKind) {
	if e.Value != "" {
		for _, c := range n.children {
			if c.comp == e.Key+"_"+e.Value {
				return c, MatchExact
			}
		}
		for _, c := range n.children {
			if v, ok := strings.CutPrefix(c.comp, e.Key+"_"); ok && strings.Contains(v, "*") && wildcard(v, e.Value) {
				return c, MatchWildcard
			}
		}
	}
	for _, c := range n.children {
		if c.comp == e.Key {
			return c, MatchDefault
		}
	}
	return nil, MatchNone
}

// wildcard reports whether s matches pattern, where each '*' matches any
// run of characters.
func wildcard(pattern, s string) bool {
	parts := strings.Split(pattern, "*")
	first, last := parts[0], parts[len(parts)-1]
	if len(s) < len(first)+len(last) || !strings.HasPrefix(s, first) || !strings.HasSuffix(s, last) {
		return false
	}
	s = s[len(first) : len(s)-len(last)]
	for _, p := range parts[1 : len(parts)-1] {
		i := strings.Index(s, p)
		if i < 0 {
			return false
		}
		s = s[i+len(p):]
	}
	return true
}

func location(r *rules.Rule) string { return fmt.Sprintf("%s:%d", r.File, r.Line) }

// Explain walks a descriptor down cfg's domain and says, level by level,
// which descriptor each entry matched and how, then which rule applies or
// why none does. The rule reported is always the one cfg.Match returns;
// the levels are rebuilt from rule IDs, which cannot tell a key containing
// '_' from a key and value in every case, so if the walk disagrees with
// Match the summary says so.
func Explain(cfg *rules.Config, domain string, entries []rules.Entry) Explanation {
	m := cfg.Match(domain, entries)
	ex := Explanation{DomainFound: m.DomainFound, Rule: m.Rule}
	d := cfg.Domain(domain)
	if d == nil {
		names := make([]string, 0)
		for _, d := range cfg.Domains() {
			names = append(names, d.Name)
		}
		ex.Summary = fmt.Sprintf("no limit: domain %q is not in the configuration (domains: %s)", domain, listOrNone(names))
		return ex
	}
	if len(entries) == 0 {
		ex.Summary = "no limit: the descriptor has no entries"
		return ex
	}
	root, ok := tree(d)
	if !ok {
		ex.Summary = matchedSummary(m.Rule, "")
		return ex
	}
	n := root
	var walked *tnode
	for i, e := range entries {
		c, kind := n.child(e)
		st := Step{Entry: e, Kind: kind}
		if c == nil {
			st.Note = "available here: " + available(n)
			ex.Steps = append(ex.Steps, st)
			where := "at the top of domain " + domain
			if n.rule != nil {
				where = "under " + n.rule.ID
			}
			walked = nil
			ex.Summary = fmt.Sprintf("no limit: no descriptor %s matches %s=%s", where, e.Key, e.Value)
			break
		}
		st.Rule = c.rule
		last := i == len(entries)-1
		switch {
		case !last && len(c.children) == 0:
			st.Note = "this descriptor has no children, and the request goes deeper"
			ex.Summary = fmt.Sprintf("no limit: the request has %d entries but %s is a leaf at level %d; a limit counts only where the request ends", len(entries), c.rule.ID, i+1)
		case !last && c.rule.HasLimit:
			st.Note = "its limit does not count: the request goes deeper"
		case last && !c.rule.HasLimit && len(c.children) > 0:
			st.Note = "no rate_limit here, and the descriptor has children"
			ex.Summary = fmt.Sprintf("no limit: %s has no rate_limit of its own; only its children (%s) have limits", c.rule.ID, available(c))
		}
		ex.Steps = append(ex.Steps, st)
		walked = c
		if ex.Summary != "" {
			walked = nil
			break
		}
		n = c
	}
	var got *rules.Rule
	if walked != nil {
		got = walked.rule
	}
	if got != m.Rule {
		// The rebuilt walk and the matcher disagree (an ambiguous ID):
		// trust the matcher.
		ex.Summary = matchedSummary(m.Rule, " (the level-by-level walk above is approximate for this rule set)")
		return ex
	}
	if m.Rule != nil {
		ex.Summary = matchedSummary(m.Rule, "")
	}
	return ex
}

// available lists the keys and values under n.
func available(n *tnode) string {
	var out []string
	for _, c := range n.children {
		out = append(out, c.comp)
	}
	sort.Strings(out)
	return listOrNone(out)
}

func listOrNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	const most = 20
	if len(s) > most {
		return strings.Join(s[:most], ", ") + fmt.Sprintf(" and %d more", len(s)-most)
	}
	return strings.Join(s, ", ")
}

// matchedSummary describes the rule that applies.
func matchedSummary(r *rules.Rule, suffix string) string {
	if r == nil {
		return "no limit: no rule matches" + suffix
	}
	var what string
	switch {
	case !r.HasLimit:
		what = "no limit (an allow-list entry: the rule has no rate_limit)"
	case r.Unlimited:
		what = "unlimited"
	case r.RequestsPerUnit == 0:
		what = "every request refused (requests_per_unit: 0)"
	default:
		what = fmt.Sprintf("%d per %s", r.RequestsPerUnit, strings.ToLower(r.Unit.String()))
		if r.Limit.Burst != uint64(r.RequestsPerUnit) {
			what += fmt.Sprintf(", burst %d", r.Limit.Burst)
		}
	}
	s := fmt.Sprintf("rule %s (%s): %s", r.ID, location(r), what)
	if r.ShadowMode {
		s += "; shadow mode: counted and reported, never enforced"
	}
	if len(r.Replaces) > 0 {
		s += "; replaces " + strings.Join(r.Replaces, ", ")
	}
	return s + suffix
}
