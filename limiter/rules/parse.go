package rules

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/shed"
)

// Bounds on the work Parse does for one file. Real rule files are far
// below them; they exist so that a hostile or broken file fails fast.
const (
	// MaxFileSize is the largest rule file Parse accepts.
	MaxFileSize = 4 << 20
	// MaxDepth is the deepest nesting of YAML maps and lists Parse accepts.
	// Descriptors take two levels each, so this allows about 30 levels of
	// descriptors.
	MaxDepth = 64
	// maxNodes bounds the YAML nodes one pass visits, counting every use of
	// an alias, so that alias expansion cannot blow up.
	maxNodes = 1 << 21
	// MaxRules bounds the descriptors in one file; maxLevels bounds the sum
	// of their depths. A Config's memory grows with both.
	MaxRules  = 1 << 17
	maxLevels = 1 << 20
	// MaxStringBytes is the longest domain, descriptor key or value, here
	// and in a request (engine.Validate refuses longer ones): a rule longer
	// than a request can carry could never match.
	MaxStringBytes = 4096
)

// validKeys is envoyproxy/ratelimit's key set plus levee's additions.
// envoyproxy/ratelimit checks every map key against this one flat set,
// wherever the map is; Parse does the same and warns about a known key in a
// place where it has no effect.
var validKeys = map[string]bool{
	"domain":            true,
	"key":               true,
	"value":             true,
	"descriptors":       true,
	"rate_limit":        true,
	"unit":              true,
	"requests_per_unit": true,
	"unlimited":         true,
	"shadow_mode":       true,
	"quota_mode":        true,
	"name":              true,
	"replaces":          true,
	"detailed_metric":   true,
	"value_to_metric":   true,
	"share_threshold":   true,
	"metadata":          true,
	// levee's additions.
	"burst":           true,
	"reserve":         true,
	"priority":        true,
	"failure_mode":    true,
	"rate_limits":     true,
	"unit_multiplier": true,
	"period":          true,
}

// leveeKeys are levee's additions. envoyproxy/ratelimit refuses them
// outright, so no file written for it has them in the wrong place, and
// levee refuses a misplaced one rather than ignore it.
var leveeKeys = map[string]string{
	"burst":           "rate_limit",
	"reserve":         "rate_limit",
	"unit_multiplier": "rate_limit",
	"period":          "rate_limit",
	"priority":        "a descriptor",
	"failure_mode":    "a descriptor",
	"rate_limits":     "a descriptor",
}

// misplaced handles a known key where it has no effect: an error for
// levee's own keys, a warning for envoyproxy/ratelimit's, which it ignores.
func (p *parser) misplaced(pr pair, field, where string) error {
	if home, ok := leveeKeys[pr.key]; ok {
		return p.errorf(pr.kn, field, "'%s' is not valid %s; it belongs in %s", pr.key, where, home)
	}
	p.warnf(pr.kn, field, "'%s' has no effect %s and is ignored", pr.key, where)
	return nil
}

// Parse parses one rule file. name is used in errors and should be the
// file's path. On failure the error is a *ParseError.
//
// Within the bounds MaxFileSize, MaxDepth, MaxRules and MaxStringBytes,
// Parse accepts the files envoyproxy/ratelimit accepts and refuses what it
// refuses, with its wording; values of the wrong type (such as
// requests_per_unit: "abc"), which envoyproxy/ratelimit reports as YAML
// decoding errors, get a message naming the field. levee's own keys are checked strictly.
func Parse(name string, data []byte) (*Domain, error) {
	if len(data) > MaxFileSize {
		return nil, &ParseError{File: name, Line: 1, Reason: fmt.Sprintf("file is larger than %d bytes", MaxFileSize)}
	}
	var doc yaml.Node
	if err := unmarshal(data, &doc); err != nil {
		return nil, &ParseError{File: name, Line: yamlErrorLine(err), Reason: "error loading config file: " + err.Error()}
	}
	p := &parser{file: name}
	root := &doc
	switch root.Kind {
	case 0: // no document at all
		root = nil
	case yaml.DocumentNode:
		if len(root.Content) == 0 {
			root = nil
		} else {
			root = root.Content[0]
		}
	}
	if root != nil {
		var err error
		if root, err = p.resolve(root); err != nil {
			return nil, err
		}
		if root.Kind == yaml.ScalarNode && root.ShortTag() == "!!null" {
			root = nil
		}
	}
	if root == nil {
		// An empty document decodes to an empty map, as in envoyproxy/ratelimit.
		return nil, &ParseError{File: name, Line: 1, Field: "domain", Reason: "config file cannot have empty domain"}
	}
	if root.Kind != yaml.MappingNode {
		return nil, p.errorf(root, "", "error loading config file: the document must be a map, not %s", kindName(root))
	}
	if err := p.validate(root, "", 0); err != nil {
		return nil, err
	}
	p.visited = 0
	p.typed = true
	d, err := p.domain(root)
	if err != nil {
		return nil, err
	}
	d.Warnings = p.warnings
	return d, nil
}

// unmarshal shields Parse from a panic inside the YAML library, so that no
// input can crash the process that reloads rules.
func unmarshal(data []byte, doc *yaml.Node) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("yaml: %v", r)
		}
	}()
	return yaml.Unmarshal(data, doc)
}

var yamlLine = regexp.MustCompile(`line (\d+)`)

func yamlErrorLine(err error) int {
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		if n, convErr := strconv.Atoi(m[1]); convErr == nil && n > 0 {
			return n
		}
	}
	return 1
}

type parser struct {
	file     string
	visited  int
	typed    bool // in the second pass, which reports warnings
	levels   int  // the sum of the depths of the rules so far
	warnings []*ParseError
}

func (p *parser) errorf(n *yaml.Node, field, format string, args ...any) *ParseError {
	line := 1
	if n != nil && n.Line > 0 {
		line = n.Line
	}
	return &ParseError{File: p.file, Line: line, Field: field, Reason: fmt.Sprintf(format, args...)}
}

func (p *parser) warnf(n *yaml.Node, field, format string, args ...any) {
	if !p.typed {
		return
	}
	p.warnings = append(p.warnings, p.errorf(n, field, format, args...))
}

// resolve follows aliases and counts the node against the work budget.
func (p *parser) resolve(n *yaml.Node) (*yaml.Node, error) {
	for hops := 0; n.Kind == yaml.AliasNode; hops++ {
		if n.Alias == nil || hops > MaxDepth {
			return nil, p.errorf(n, "", "error loading config file: unresolvable alias")
		}
		n = n.Alias
	}
	p.visited++
	if p.visited > maxNodes {
		return nil, p.errorf(n, "", "error loading config file: the document has more than %d nodes (counting alias expansions)", maxNodes)
	}
	return n, nil
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a map"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.ShortTag() == "!!null" {
			return "null"
		}
		return fmt.Sprintf("%s %q", strings.TrimPrefix(n.ShortTag(), "!!"), n.Value)
	}
	return "an unsupported node"
}

// pair is one key and value of a map, with aliases resolved.
type pair struct {
	key   string
	kn    *yaml.Node
	value *yaml.Node
}

// pairs returns the entries of map node n in file order, with "<<" merge
// keys expanded (explicit keys win over merged ones, earlier merged maps
// over later ones) and with a duplicate key's last value winning, as in
// envoyproxy/ratelimit's YAML library. Keys must be strings.
func (p *parser) pairs(n *yaml.Node, field string, depth int) ([]pair, error) {
	var explicit, merged []pair
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, err := p.resolve(n.Content[i])
		if err != nil {
			return nil, err
		}
		v, err := p.resolve(n.Content[i+1])
		if err != nil {
			return nil, err
		}
		if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			m, err := p.mergeSources(v, field, depth)
			if err != nil {
				return nil, err
			}
			merged = append(merged, m...)
			continue
		}
		if k.Kind != yaml.ScalarNode || k.ShortTag() != "!!str" {
			return nil, p.errorf(k, field, "config error, key is not of type string: %s", keyText(k))
		}
		explicit = append(explicit, pair{key: k.Value, kn: k, value: v})
	}
	out := make([]pair, 0, len(explicit)+len(merged))
	index := make(map[string]int, len(explicit)+len(merged))
	for _, pr := range explicit {
		if i, dup := index[pr.key]; dup {
			p.warnf(pr.kn, join(field, pr.key), "key given twice in one map; the last one wins")
			out[i] = pr
			continue
		}
		index[pr.key] = len(out)
		out = append(out, pr)
	}
	for _, pr := range merged {
		if _, dup := index[pr.key]; !dup {
			index[pr.key] = len(out)
			out = append(out, pr)
		}
	}
	return out, nil
}

// mergeSources returns the pairs a "<<" key merges in: from a map, or from
// a list of maps.
func (p *parser) mergeSources(v *yaml.Node, field string, depth int) ([]pair, error) {
	if depth+1 > MaxDepth {
		return nil, p.errorf(v, field, "nested deeper than %d levels", MaxDepth)
	}
	switch v.Kind {
	case yaml.MappingNode:
		return p.pairs(v, field, depth+1)
	case yaml.SequenceNode:
		var out []pair
		for _, e := range v.Content {
			e, err := p.resolve(e)
			if err != nil {
				return nil, err
			}
			if e.Kind != yaml.MappingNode {
				return nil, p.errorf(e, field, "error loading config file: a merge key (<<) needs maps, not %s", kindName(e))
			}
			m, err := p.pairs(e, field, depth+1)
			if err != nil {
				return nil, err
			}
			out = append(out, m...)
		}
		return out, nil
	}
	return nil, p.errorf(v, field, "error loading config file: a merge key (<<) needs a map, not %s", kindName(v))
}

func keyText(k *yaml.Node) string {
	if k.Kind != yaml.ScalarNode {
		return kindName(k)
	}
	if k.ShortTag() == "!!null" {
		return "<nil>"
	}
	return k.Value
}

func join(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

// validate checks the whole tree the way envoyproxy/ratelimit's
// validateYamlKeys does before anything else: every map key is a known
// string, every list holds maps, and scalars are strings, integers, booleans
// or null. The contents of metadata are free-form and skipped.
func (p *parser) validate(n *yaml.Node, field string, depth int) error {
	if depth > MaxDepth {
		return p.errorf(n, field, "nested deeper than %d levels", MaxDepth)
	}
	switch n.Kind {
	case yaml.MappingNode:
		prs, err := p.pairs(n, field, depth)
		if err != nil {
			return err
		}
		for _, pr := range prs {
			if !validKeys[pr.key] {
				return p.errorf(pr.kn, pr.key, "config error, unknown key '%s'", pr.key)
			}
			if pr.key == "metadata" || pr.key == "reserve" {
				continue // free-form, or checked by its own parser
			}
			if err := p.validate(pr.value, pr.key, depth+1); err != nil {
				return err
			}
		}
	case yaml.SequenceNode:
		for _, e := range n.Content {
			e, err := p.resolve(e)
			if err != nil {
				return err
			}
			if e.Kind != yaml.MappingNode {
				return p.errorf(e, field, "config error, yaml file contains list of type other than map: %s", scalarText(e))
			}
			if err := p.validate(e, field, depth+1); err != nil {
				return err
			}
		}
	case yaml.ScalarNode:
		switch tag := n.ShortTag(); tag {
		case "!!str", "!!int", "!!bool", "!!null", "!!timestamp", "!!binary":
		case "!!float":
			return p.errorf(n, field, "error checking config: %q is a float; quote it to use it as a string", n.Value)
		default:
			return p.errorf(n, field, "error checking config: unsupported YAML tag %s", tag)
		}
	}
	return nil
}

func scalarText(n *yaml.Node) string {
	if n.Kind == yaml.ScalarNode {
		if n.ShortTag() == "!!null" {
			return "<nil>"
		}
		return n.Value
	}
	return kindName(n)
}

// domain builds the Domain from the validated root map.
func (p *parser) domain(root *yaml.Node) (*Domain, error) {
	prs, err := p.pairs(root, "", 0)
	if err != nil {
		return nil, err
	}
	d := &Domain{File: p.file, Line: root.Line}
	var descriptors *yaml.Node
	domainNode := root
	for _, pr := range prs {
		switch pr.key {
		case "domain":
			if d.Name, err = p.matchable(pr.value, "domain"); err != nil {
				return nil, err
			}
			domainNode = pr.kn
			d.Line = pr.kn.Line
		case "descriptors":
			descriptors = pr.value
		default:
			if err := p.misplaced(pr, pr.key, "at the top level"); err != nil {
				return nil, err
			}
		}
	}
	if d.Name == "" {
		return nil, p.errorf(domainNode, "domain", "config file cannot have empty domain")
	}
	if err := p.descriptors(d, &d.root, descriptors, d.Name, nil, 1); err != nil {
		return nil, err
	}
	return d, nil
}

// descriptors adds the descriptors of list node list as children of parent.
// parentID is the composite key of parent and levels the path to it.
func (p *parser) descriptors(d *Domain, parent *node, list *yaml.Node, parentID string, levels []level, depth int) error {
	parent.leaf = true
	if list == nil || isNull(list) {
		return nil
	}
	if list.Kind != yaml.SequenceNode {
		return p.errorf(list, "descriptors", "must be a list of maps, not %s", kindName(list))
	}
	if depth > MaxDepth {
		return p.errorf(list, "descriptors", "nested deeper than %d levels", MaxDepth)
	}
	seen := map[string]bool{} // envoyproxy/ratelimit's "key" or "key_value" form
	for _, item := range list.Content {
		item, err := p.resolve(item)
		if err != nil {
			return err
		}
		if item.Kind != yaml.MappingNode {
			return p.errorf(item, "descriptors", "config error, yaml file contains list of type other than map: %s", scalarText(item))
		}
		parent.leaf = false
		if err := p.descriptor(d, parent, item, parentID, levels, depth, seen); err != nil {
			return err
		}
	}
	return nil
}

func (p *parser) descriptor(d *Domain, parent *node, item *yaml.Node, parentID string, levels []level, depth int, seen map[string]bool) error {
	prs, err := p.pairs(item, "", depth)
	if err != nil {
		return err
	}
	r := &Rule{Domain: d.Name, File: p.file, Line: item.Line}
	var (
		key, value    string
		keyNode       = item
		rateLimit     *yaml.Node
		rateLimitKey  *yaml.Node
		rateLimits    *yaml.Node
		rateLimitsKey *yaml.Node
		children      *yaml.Node
		shareNode     *yaml.Node
		valueToMetric bool
	)
	for _, pr := range prs {
		v := pr.value
		switch pr.key {
		case "key":
			key, err = p.matchable(v, "key")
			keyNode = pr.kn
		case "value":
			value, err = p.matchable(v, "value")
		case "rate_limit":
			rateLimit, rateLimitKey = v, pr.kn
		case "rate_limits":
			rateLimits, rateLimitsKey = v, pr.kn
		case "descriptors":
			children = v
		case "shadow_mode":
			r.ShadowMode, err = p.boolean(v, pr.key)
		case "quota_mode":
			r.QuotaMode, err = p.boolean(v, pr.key)
		case "detailed_metric":
			r.DetailedMetric, err = p.boolean(v, pr.key)
		case "value_to_metric":
			r.ValueToMetric, err = p.boolean(v, pr.key)
			valueToMetric = r.ValueToMetric
		case "share_threshold":
			r.ShareThreshold, err = p.boolean(v, pr.key)
			shareNode = pr.kn
		case "metadata":
			r.Metadata, err = p.metadata(v, depth+1)
		case "priority":
			var s string
			if s, err = p.str(v, pr.key); err == nil && s != "" {
				if r.Priority, err = shed.ParsePriority(s); err != nil {
					err = p.errorf(v, pr.key, "invalid priority '%s' (want critical, high, default, low or sheddable)", s)
				}
			}
		case "failure_mode":
			var s string
			if s, err = p.str(v, pr.key); err == nil && s != "" {
				if r.FailureMode, err = ParseFailureMode(s); err != nil {
					err = p.errorf(v, pr.key, "%v", err)
				}
			}
		default:
			err = p.misplaced(pr, pr.key, "on a descriptor")
		}
		if err != nil {
			return err
		}
	}
	if key == "" {
		return p.errorf(keyNode, "key", "descriptor has empty key")
	}
	finalKey := key
	if value != "" {
		finalKey += "_" + value
	}
	r.ID = parentID + "." + finalKey
	if seen[finalKey] {
		return p.errorf(keyNode, "key", "duplicate descriptor composite key '%s'", r.ID)
	}
	seen[finalKey] = true

	hasRateLimit := rateLimit != nil && !isNull(rateLimit)
	if rateLimits != nil && !isNull(rateLimits) {
		if hasRateLimit {
			return p.errorf(rateLimitsKey, "rate_limits", "a descriptor takes rate_limit or rate_limits, not both: list every limit in rate_limits")
		}
		if err := p.rateLimits(r, rateLimitsKey, rateLimits); err != nil {
			return err
		}
	} else if hasRateLimit {
		if err := p.rateLimit(r, rateLimitKey, rateLimit); err != nil {
			return err
		}
	}
	wildcard := strings.Contains(value, "*")
	if r.ShareThreshold && !wildcard {
		return p.errorf(shareNode, "share_threshold", "share_threshold can only be used with wildcard values (containing '*'), but found key '%s'", finalKey)
	}

	l := level{key: key, value: value, kind: levelExact, share: r.ShareThreshold, valueToMetric: valueToMetric}
	switch {
	case value == "":
		l.kind = levelDefault
	case wildcard:
		l.kind = levelWildcard
	}
	p.levels += len(levels) + 1
	if len(d.Rules) >= MaxRules || p.levels > maxLevels {
		return p.errorf(keyNode, "key", "too many descriptors: the limit is %d per file", MaxRules)
	}
	r.levels = make([]level, len(levels)+1)
	copy(r.levels, levels)
	r.levels[len(levels)] = l
	r.dynamicMetric = r.DetailedMetric
	for _, pl := range r.levels {
		r.dynamicMetric = r.dynamicMetric || pl.valueToMetric
	}

	n := &node{rule: r}
	if parent.keys == nil {
		parent.keys = map[string]*keyChildren{}
	}
	kc := parent.keys[key]
	if kc == nil {
		kc = &keyChildren{}
		parent.keys[key] = kc
	}
	if l.kind == levelDefault {
		kc.def = n
	} else {
		if kc.exact == nil {
			kc.exact = map[string]*node{}
		}
		kc.exact[value] = n
		if wildcard {
			kc.wild = append(kc.wild, wildChild{pat: newPattern(value), n: n})
		}
	}
	parent.children = append(parent.children, r)
	d.Rules = append(d.Rules, r)
	d.depth = max(d.depth, len(r.levels))
	return p.descriptors(d, n, children, r.ID, r.levels, depth+1)
}

// rateLimit fills r from a rate_limit map, with envoyproxy/ratelimit's
// checks. A missing field is reported at key, the rate_limit key.
func (p *parser) rateLimit(r *Rule, key, n *yaml.Node) error {
	l, err := p.limit("rate_limit", key, n, false)
	if err != nil {
		return err
	}
	r.Name, r.Unlimited, r.Replaces = l.Name, l.unlimited, l.replaces
	if !l.unlimited {
		r.Limits = []RateLimit{l.RateLimit}
	}
	r.HasLimit = true
	return nil
}

// rateLimits fills r from a rate_limits list, levee's extension: limits
// that all apply to the descriptor, each written as a rate_limit is.
func (p *parser) rateLimits(r *Rule, key, n *yaml.Node) error {
	const field = "rate_limits"
	if n.Kind != yaml.SequenceNode {
		return p.errorf(n, field, "must be a list of limits such as [{unit: second, requests_per_unit: 10}, {unit: hour, requests_per_unit: 600}], not %s", kindName(n))
	}
	if len(n.Content) == 0 {
		return p.errorf(key, field, "must list at least one limit")
	}
	if len(n.Content) > MaxLimits {
		return p.errorf(key, field, "%d limits, at most %d allowed", len(n.Content), MaxLimits)
	}
	names := map[string]bool{}
	for i, e := range n.Content {
		e, err := p.resolve(e)
		if err != nil {
			return err
		}
		f := fmt.Sprintf("%s[%d]", field, i)
		l, err := p.limit(f, e, e, true)
		if err != nil {
			return err
		}
		if l.Name != "" {
			if names[l.Name] {
				return p.errorf(e, f+".name", "two limits of one descriptor are both named '%s'", l.Name)
			}
			names[l.Name] = true
		}
		r.Limits = append(r.Limits, l.RateLimit)
		r.Replaces = append(r.Replaces, l.replaces...)
	}
	for _, name := range r.Replaces {
		if names[name] {
			return p.errorf(key, field, "replaces should not contain name of same descriptor ('%s' is one of its limits)", name)
		}
	}
	r.HasLimit = true
	return nil
}

// parsedLimit is one limit as written, with the fields that belong to its
// rule rather than to the limit.
type parsedLimit struct {
	RateLimit
	unlimited bool
	replaces  []string
}

// limit parses one limit map: rate_limit, or an element of rate_limits
// (inList; field names it, such as "rate_limits[1]"). A missing field is
// reported at key.
func (p *parser) limit(field string, key, n *yaml.Node, inList bool) (parsedLimit, error) {
	var l parsedLimit
	if n.Kind != yaml.MappingNode {
		return l, p.errorf(n, field, "must be a map, not %s", kindName(n))
	}
	prs, err := p.pairs(n, field, 0)
	if err != nil {
		return l, err
	}
	var (
		unit       string
		unitNode   = key
		burst      uint32
		burstNode  *yaml.Node
		replaces   *yaml.Node
		reserve    *yaml.Node
		multNode   *yaml.Node
		periodNode *yaml.Node
		period     time.Duration
	)
	l.UnitMultiplier = 1
	for _, pr := range prs {
		v := pr.value
		f := field + "." + pr.key
		switch pr.key {
		case "unit":
			unit, err = p.str(v, f)
			unitNode = v
		case "requests_per_unit":
			l.RequestsPerUnit, err = p.uint32(v, f)
		case "unlimited":
			l.unlimited, err = p.boolean(v, f)
			if err == nil && inList {
				err = p.errorf(pr.kn, f, "a limit in rate_limits cannot be unlimited; use rate_limit: {unlimited: true}")
			}
		case "name":
			l.Name, err = p.str(v, f)
		case "replaces":
			replaces = v
		case "reserve":
			reserve = v
		case "burst":
			burstNode = v
			if burst, err = p.uint32(v, f); err == nil && burst == 0 {
				err = p.errorf(v, f, "burst must be at least 1")
			}
		case "unit_multiplier":
			multNode = v
			if l.UnitMultiplier, err = p.uint32(v, f); err == nil && l.UnitMultiplier == 0 {
				err = p.errorf(v, f, "unit_multiplier must be at least 1")
			}
		case "period":
			periodNode = v
			period, err = p.period(v, f)
		default:
			err = p.misplaced(pr, f, "in "+field)
		}
		if err != nil {
			return l, err
		}
	}
	if l.unlimited {
		u, unitErr := ParseUnit(unit)
		switch {
		case unitErr == nil && u != UnitUnknown:
			return l, p.errorf(unitNode, field+".unit", "should not specify rate limit unit when unlimited")
		case burstNode != nil:
			return l, p.errorf(burstNode, field+".burst", "should not specify burst when unlimited")
		case reserve != nil:
			return l, p.errorf(reserve, field+".reserve", "should not specify reserve when unlimited")
		case multNode != nil:
			return l, p.errorf(multNode, field+".unit_multiplier", "should not specify unit_multiplier when unlimited")
		case periodNode != nil:
			return l, p.errorf(periodNode, field+".period", "should not specify period when unlimited")
		}
	} else {
		if err := p.window(&l.RateLimit, field, unit, unitNode, multNode, period, periodNode); err != nil {
			return l, err
		}
		b := burst
		if burstNode == nil {
			b = l.RequestsPerUnit
		}
		l.Limit = limiter.Limit{Rate: uint64(l.RequestsPerUnit), Period: l.Window(), Burst: uint64(b)}
		if reserve != nil && !isNull(reserve) {
			if err := p.reserve(&l.RateLimit, field, reserve, uint64(b)); err != nil {
				return l, err
			}
		}
	}
	if replaces != nil && !isNull(replaces) {
		if l.replaces, err = p.replaces(field, l.Name, replaces); err != nil {
			return l, err
		}
	}
	return l, nil
}

// window sets l's unit, multiplier and window from unit and
// unit_multiplier, or from a period, which excludes both.
func (p *parser) window(l *RateLimit, field, unit string, unitNode, multNode *yaml.Node, period time.Duration, periodNode *yaml.Node) error {
	if periodNode != nil {
		if unit != "" {
			return p.errorf(unitNode, field+".unit", "give unit (with unit_multiplier) or period, not both")
		}
		if multNode != nil {
			return p.errorf(multNode, field+".unit_multiplier", "give unit_multiplier (with unit) or period, not both")
		}
		for _, u := range []Unit{UnitWeek, UnitDay, UnitHour, UnitMinute, UnitSecond} {
			if period%u.Duration() == 0 {
				l.Unit, l.UnitMultiplier = u, uint32(period/u.Duration())
				break
			}
		}
		l.Limit.Period = period
		return nil
	}
	u, err := ParseUnit(unit)
	if err != nil {
		return p.errorf(unitNode, field+".unit", "%v", err)
	}
	if time.Duration(l.UnitMultiplier) > maxWindow/u.Duration() {
		return p.errorf(multNode, field+".unit_multiplier", "%d %ss is longer than levee can count (%d years)", l.UnitMultiplier, strings.ToLower(u.String()), int64(maxWindow/(365*24*time.Hour)))
	}
	l.Unit = u
	l.Limit.Period = time.Duration(l.UnitMultiplier) * u.Duration()
	return nil
}

// maxWindow is the longest window a limit may have: what fits in a
// time.Duration, and a whole number of units of every kind below a month.
const maxWindow = math.MaxInt64 / time.Duration(7*24*time.Hour) * time.Duration(7*24*time.Hour)

// period reads a period: a Go duration such as "90s", "5m" or "36h", at
// least one second and a whole number of seconds (the unit responses can
// describe), and at most maxWindow.
func (p *parser) period(n *yaml.Node, field string) (time.Duration, error) {
	s, err := p.str(n, field)
	if err != nil {
		return 0, err
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < time.Second || d%time.Second != 0 || d > maxWindow {
		return 0, p.errorf(n, field, "must be a whole number of seconds, at least 1s, written as a duration such as 90s, 5m or 36h; got '%s'", s)
	}
	return d, nil
}

// reserve parses rate_limit.reserve: for each priority below critical, the
// share of the bucket (a fraction such as 0.2, or "20%") that must remain
// after a request of that priority takes its tokens. Less important
// priorities must keep at least as much as more important ones, so they run
// dry first.
func (p *parser) reserve(r *RateLimit, parent string, n *yaml.Node, burst uint64) error {
	field := parent + ".reserve"
	if n.Kind != yaml.MappingNode {
		return p.errorf(n, field, "must be a map of priority to share, such as {low: 20%%, sheddable: 50%%}, not %s", kindName(n))
	}
	prs, err := p.pairs(n, field, 0)
	if err != nil {
		return err
	}
	var share [shed.Sheddable + 1]float64
	var set [shed.Sheddable + 1]bool
	for _, pr := range prs {
		f := field + "." + pr.key
		pri, err := shed.ParsePriority(pr.key)
		if err != nil || pr.key == "" {
			return p.errorf(pr.kn, f, "unknown priority '%s' (want high, default, low or sheddable)", pr.key)
		}
		if pri == shed.Critical {
			return p.errorf(pr.kn, f, "critical has no reserve: it may always draw while tokens remain")
		}
		if pr.value.Kind != yaml.ScalarNode {
			return p.errorf(pr.value, f, "must be a fraction such as 0.2 or a percentage such as 20%%, not %s", kindName(pr.value))
		}
		v := strings.TrimSpace(pr.value.Value)
		scale := 1.0
		if strings.HasSuffix(v, "%") {
			v, scale = strings.TrimSpace(strings.TrimSuffix(v, "%")), 100
		}
		x, err := strconv.ParseFloat(v, 64)
		if err != nil || math.IsNaN(x) || x/scale < 0 || x/scale >= 1 {
			return p.errorf(pr.value, f, "must be a fraction from 0 to below 1 (or 0%% to below 100%%), got '%s'", pr.value.Value)
		}
		share[pri], set[pri] = x/scale, true
	}
	// Unset priorities inherit the reserve of the next more important one.
	for pri := shed.High; pri <= shed.Sheddable; pri++ {
		if !set[pri] {
			share[pri] = share[pri-1]
		}
		if share[pri] < share[pri-1] {
			return p.errorf(n, field, "%s keeps less (%g) than %s (%g): a less important priority must keep at least as much", pri, share[pri], pri-1, share[pri-1])
		}
		r.Reserve[pri] = uint64(math.Ceil(share[pri] * float64(burst)))
	}
	r.Reserve[shed.Unspecified] = r.Reserve[shed.Default]
	return nil
}

func (p *parser) replaces(parent, self string, n *yaml.Node) ([]string, error) {
	field := parent + ".replaces"
	if n.Kind != yaml.SequenceNode {
		return nil, p.errorf(n, field, "must be a list of maps, not %s", kindName(n))
	}
	var out []string
	for _, e := range n.Content {
		e, err := p.resolve(e)
		if err != nil {
			return nil, err
		}
		if e.Kind != yaml.MappingNode {
			return nil, p.errorf(e, field, "config error, yaml file contains list of type other than map: %s", scalarText(e))
		}
		prs, err := p.pairs(e, field, 0)
		if err != nil {
			return nil, err
		}
		name := ""
		for _, pr := range prs {
			if pr.key != "name" {
				if err := p.misplaced(pr, field+"."+pr.key, "in replaces"); err != nil {
					return nil, err
				}
				continue
			}
			if name, err = p.str(pr.value, field+".name"); err != nil {
				return nil, err
			}
		}
		if name == "" {
			return nil, p.errorf(e, field, "should not have an empty replaces entry")
		}
		if name == self {
			return nil, p.errorf(e, field, "replaces should not contain name of same descriptor")
		}
		out = append(out, name)
	}
	return out, nil
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// str reads a string field. Like envoyproxy/ratelimit's YAML library it
// takes the text of any non-float scalar (value: 123 is "123") and reads
// null as "".
func (p *parser) str(n *yaml.Node, field string) (string, error) {
	if n.Kind != yaml.ScalarNode {
		return "", p.errorf(n, field, "must be a string, not %s", kindName(n))
	}
	switch n.ShortTag() {
	case "!!null":
		return "", nil
	case "!!float":
		return "", p.errorf(n, field, "error checking config: %q is a float; quote it to use it as a string", n.Value)
	}
	return n.Value, nil
}

// matchable reads a string that requests are matched against: the domain,
// a key or a value. It may be no longer than a request can carry.
func (p *parser) matchable(n *yaml.Node, field string) (string, error) {
	s, err := p.str(n, field)
	if err == nil && len(s) > MaxStringBytes {
		err = p.errorf(n, field, "%d bytes, more than the %d a request may carry", len(s), MaxStringBytes)
	}
	return s, err
}

// boolean reads a bool field; null is false. YAML 1.1 spellings (yes, on)
// are accepted because envoyproxy/ratelimit's YAML library accepts them.
func (p *parser) boolean(n *yaml.Node, field string) (bool, error) {
	if n.Kind == yaml.ScalarNode {
		tag := n.ShortTag()
		if tag == "!!null" {
			return false, nil
		}
		if tag == "!!bool" || (tag == "!!str" && n.Style&(yaml.SingleQuotedStyle|yaml.DoubleQuotedStyle) == 0) {
			switch n.Value {
			case "true", "True", "TRUE", "y", "Y", "yes", "Yes", "YES", "on", "On", "ON":
				return true, nil
			case "false", "False", "FALSE", "n", "N", "no", "No", "NO", "off", "Off", "OFF":
				return false, nil
			}
		}
	}
	return false, p.errorf(n, field, "must be true or false, not %s", kindName(n))
}

// uint32 reads an unsigned 32-bit integer field; null is 0.
func (p *parser) uint32(n *yaml.Node, field string) (uint32, error) {
	if n.Kind == yaml.ScalarNode {
		switch n.ShortTag() {
		case "!!null":
			return 0, nil
		case "!!int":
			var v uint32
			if err := n.Decode(&v); err == nil {
				return v, nil
			}
		}
	}
	return 0, p.errorf(n, field, "must be an integer from 0 to 4294967295, not %s", kindName(n))
}

// metadata converts a free-form metadata map into Go values: maps with
// string keys, lists, strings, integers, floats, booleans and nil.
func (p *parser) metadata(n *yaml.Node, depth int) (map[string]any, error) {
	if isNull(n) {
		return nil, nil
	}
	if n.Kind != yaml.MappingNode {
		return nil, p.errorf(n, "metadata", "must be a map, not %s", kindName(n))
	}
	v, err := p.anyValue(n, depth)
	if err != nil {
		return nil, err
	}
	return v.(map[string]any), nil
}

func (p *parser) anyValue(n *yaml.Node, depth int) (any, error) {
	if depth > MaxDepth {
		return nil, p.errorf(n, "metadata", "nested deeper than %d levels", MaxDepth)
	}
	switch n.Kind {
	case yaml.MappingNode:
		prs, err := p.pairs(n, "metadata", depth)
		if err != nil {
			return nil, err
		}
		m := make(map[string]any, len(prs))
		for _, pr := range prs {
			if m[pr.key], err = p.anyValue(pr.value, depth+1); err != nil {
				return nil, err
			}
		}
		return m, nil
	case yaml.SequenceNode:
		s := make([]any, 0, len(n.Content))
		for _, e := range n.Content {
			e, err := p.resolve(e)
			if err != nil {
				return nil, err
			}
			v, err := p.anyValue(e, depth+1)
			if err != nil {
				return nil, err
			}
			s = append(s, v)
		}
		return s, nil
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return nil, nil
		case "!!bool", "!!int", "!!float":
			var v any
			if err := n.Decode(&v); err == nil {
				switch v.(type) {
				case bool, int, int64, uint64, float64:
					return v, nil
				}
			}
		}
		return n.Value, nil
	}
	return nil, p.errorf(n, "metadata", "unsupported YAML node")
}
