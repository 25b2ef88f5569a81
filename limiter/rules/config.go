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
