package rules

import (
	"fmt"
	"sort"
)

// Config is a set of domains, ready for matching. It is immutable and safe
// for concurrent use; a reload builds a new Config.
type Config struct {
	domains map[string]*Domain
	names   []string
}

// NewConfig builds a Config from parsed domains. Two domains with the same
// name are an error, as in envoyproxy/ratelimit without domain merging.
func NewConfig(domains ...*Domain) (*Config, error) {
	c := &Config{domains: make(map[string]*Domain, len(domains))}
	for _, d := range domains {
		if d == nil {
			return nil, fmt.Errorf("rules: NewConfig: nil domain")
		}
		if prev, dup := c.domains[d.Name]; dup {
			return nil, &ParseError{
				File: d.File, Line: d.Line, Field: "domain",
				Reason: fmt.Sprintf("duplicate domain '%s' in config file (also in %s:%d)", d.Name, prev.File, prev.Line),
			}
		}
		c.domains[d.Name] = d
		c.names = append(c.names, d.Name)
	}
	sort.Strings(c.names)
	return c, nil
}

// Domain returns the named domain, or nil.
func (c *Config) Domain(name string) *Domain {
	if c == nil {
		return nil
	}
	return c.domains[name]
}

// Domains returns the domains sorted by name.
func (c *Config) Domains() []*Domain {
	if c == nil {
		return nil
	}
	out := make([]*Domain, len(c.names))
	for i, n := range c.names {
		out[i] = c.domains[n]
	}
	return out
}

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
	if c == nil {
		return Match{}
	}
	d := c.domains[domain]
	if d == nil {
		return Match{}
	}
	m := Match{DomainFound: true}
	if len(entries) == 0 || len(entries) > d.depth {
		return m
	}
	n := &d.root
	last := len(entries) - 1
	for i := range entries {
		n = n.child(entries[i])
		if n == nil {
			return m
		}
		if i == last {
			if n.rule.HasLimit || n.leaf {
				m.Rule = n.rule
			}
			return m
		}
		if n.leaf {
			return m
		}
	}
	return m
}
