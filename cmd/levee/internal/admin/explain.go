package admin

import (
	"fmt"
	"sort"
	"strings"

	"github.com/levee-dev/levee/limiter/rules"
)

// Step is one level of an explained descriptor walk: the level as
// rules.Config.Trace walked it, and a note for the reader.
type Step struct {
	rules.Step
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

// Explain walks a descriptor down cfg's domain with rules.Config.Trace,
// which matches the way the engine does, and puts the walk into words:
// level by level, which descriptor each entry matched and how, then which
// rule applies or why none does.
func Explain(cfg *rules.Config, domain string, entries []rules.Entry) Explanation {
	tr := cfg.Trace(domain, entries)
	ex := Explanation{DomainFound: tr.DomainFound, Rule: tr.Rule}
	for _, st := range tr.Steps {
		ex.Steps = append(ex.Steps, Step{Step: st})
	}
	// Every step but the last went deeper: a limit there does not count.
	for i := 0; i < len(ex.Steps)-1; i++ {
		if ex.Steps[i].Rule.HasLimit {
			ex.Steps[i].Note = "its limit does not count: the request goes deeper"
		}
	}
	var last *Step
	if len(ex.Steps) > 0 {
		last = &ex.Steps[len(ex.Steps)-1]
	}
	switch tr.Stop {
	case rules.StopNoDomain:
		names := make([]string, 0)
		for _, d := range cfg.Domains() {
			names = append(names, d.Name)
		}
		ex.Summary = fmt.Sprintf("no limit: domain %q is not in the configuration (domains: %s)", domain, listOrNone(names))
	case rules.StopNoEntries:
		ex.Summary = "no limit: the descriptor has no entries"
	case rules.StopNoMatch:
		last.Note = "available here: " + available(tr.Below)
		where := "at the top of domain " + domain
		if len(ex.Steps) > 1 {
			where = "under " + ex.Steps[len(ex.Steps)-2].Rule.ID
		}
		ex.Summary = fmt.Sprintf("no limit: no descriptor %s matches %s=%s", where, last.Entry.Key, last.Entry.Value)
	case rules.StopLeaf:
		last.Note = "this descriptor has no children, and the request goes deeper"
		ex.Summary = fmt.Sprintf("no limit: the request has %d entries but %s is a leaf at level %d; a limit counts only where the request ends", len(entries), last.Rule.ID, len(ex.Steps))
	case rules.StopNoLimit:
		last.Note = "no rate_limit here, and the descriptor has children"
		ex.Summary = fmt.Sprintf("no limit: %s has no rate_limit of its own; only its children (%s) have limits", last.Rule.ID, available(tr.Below))
	default:
		ex.Summary = matchedSummary(tr.Rule)
	}
	return ex
}

// available lists descriptors as their rule IDs name them: "key", or
// "key_value" with the value or pattern.
func available(rs []*rules.Rule) string {
	var out []string
	for _, r := range rs {
		s := r.Key()
		if r.Value() != "" {
			s += "_" + r.Value()
		}
		out = append(out, s)
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

func location(r *rules.Rule) string { return fmt.Sprintf("%s:%d", r.File, r.Line) }

// matchedSummary describes the rule that applies, with every limit that
// applies to a matching request.
func matchedSummary(r *rules.Rule) string {
	var what string
	switch {
	case !r.HasLimit:
		what = "no limit (an allow-list entry: the rule has no rate_limit)"
	case r.Unlimited:
		what = "unlimited"
	case len(r.Limits) == 1:
		what = limitText(&r.Limits[0])
	default:
		parts := make([]string, len(r.Limits))
		for i := range r.Limits {
			parts[i] = limitText(&r.Limits[i])
			if n := r.Limits[i].Name; n != "" {
				parts[i] += " (" + n + ")"
			}
		}
		what = fmt.Sprintf("%d limits, all apply: %s", len(r.Limits), strings.Join(parts, "; "))
	}
	s := fmt.Sprintf("rule %s (%s): %s", r.ID, location(r), what)
	if r.ShadowMode {
		s += "; shadow mode: counted and reported, never enforced"
	}
	if len(r.Replaces) > 0 {
		s += "; replaces " + strings.Join(r.Replaces, ", ")
	}
	return s
}

// limitText puts one limit into words: "10 per second", "5 per 5 minutes,
// burst 8", or "every request refused (requests_per_unit: 0)".
func limitText(l *rules.RateLimit) string {
	if l.RequestsPerUnit == 0 {
		return "every request refused (requests_per_unit: 0)"
	}
	unit := strings.ToLower(l.Unit.String())
	s := fmt.Sprintf("%d per %s", l.RequestsPerUnit, unit)
	if l.UnitMultiplier > 1 {
		s = fmt.Sprintf("%d per %d %ss", l.RequestsPerUnit, l.UnitMultiplier, unit)
	}
	if l.Limit.Capacity() != uint64(l.RequestsPerUnit) {
		s += fmt.Sprintf(", burst %d", l.Limit.Capacity())
	}
	return s
}
