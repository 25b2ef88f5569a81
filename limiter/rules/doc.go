// Package rules reads envoyproxy/ratelimit rule files and matches request
// descriptors against them.
//
// # Files
//
// A rule file is the YAML that envoyproxy/ratelimit reads, unchanged: one
// domain per file and a tree of descriptors, each with a key, an optional
// value and an optional rate_limit. levee adds optional fields, which
// envoyproxy/ratelimit refuses, so a file written for it never has them:
// burst, reserve, and a window of several units (unit_multiplier, or a
// period such as "90s") inside rate_limit; priority, failure_mode and
// rate_limits on a descriptor. Parse
// checks a file the way envoyproxy/ratelimit does and keeps its error
// wording; every error is a *ParseError that names the file, the line and the
// field. Load reads a file or a directory tree all-or-nothing, and Watcher
// polls it so that a bad edit never replaces the last good rules.
//
// # Matching
//
// A request names a domain and carries descriptors, each a list of
// (key, value) entries. Match walks one descriptor down the domain's tree, one
// level per entry. At each level it picks the child for the entry in this
// order:
//
//  1. the node whose key and value equal the entry's (exact match);
//  2. the first node, in file order, whose key equals the entry's key and
//     whose value is a wildcard pattern matching the entry's value;
//  3. the node with the entry's key and no value (the key's default).
//
// So a specific value beats a wildcard, which beats the default. If no child
// fits, nothing matches. A limit counts only if it sits on the node reached
// by the last entry: a limit on an intermediate node is ignored when the
// request goes deeper, and a request deeper than the tree matches nothing. A
// leaf node without a limit matches as "no limit" (an allow-list entry); Match
// returns its Rule with HasLimit false so that the caller can still count it.
// An unknown domain matches nothing.
//
// Trace takes the same walk and also reports it: how each entry matched,
// the descriptor it reached, why the walk stopped and what lay below. It is
// what explains a decision to an operator, and since Match and Trace share
// one walk, an explanation cannot differ from what is enforced.
//
// A wildcard value contains one or more '*', each matching any run of
// characters, including none; there is no other syntax. Patterns are split
// once at load time and matched without allocating.
//
// The tree groups each node's children by key and then by value, instead
// of by envoyproxy/ratelimit's concatenated "key_value" string, so matching
// builds no strings and allocates nothing. One consequence differs from
// envoyproxy/ratelimit on purpose: there, key "a" with value "b_c" and key
// "a_b" with value "c" are the same string, so a request for one can match a
// rule for the other, and a wildcard "b*" under key "a" also matches key
// "a_b". Here keys and values are compared separately. Loading still refuses
// two descriptors whose concatenated forms collide, as envoyproxy/ratelimit
// does, so every file it accepts loads and matches the same way except for
// requests that rely on that confusion.
//
// # Limits
//
// A descriptor's rate_limit is one limit, Rule.Limits[0]. In its place a
// descriptor may list several in rate_limits, each written as a rate_limit
// is ("10 per second and 600 per hour"); they all apply to a matching
// request. envoyproxy/ratelimit cannot put two limits on one descriptor, so
// its users send the descriptor twice; rate_limits does the same work from
// one descriptor. A limit's window is its unit, or unit_multiplier units
// (the name Envoy's limit overrides use), or a period: "5 per 5 minutes" is
// five tokens, one arriving each minute, exactly.
//
// # Counters
//
// Each matched descriptor counts against its own bucket, identified by
// Rule.KeyHash: a hash of the domain and of every entry's key and value. A
// key-only or wildcard node therefore gives each runtime value its own
// counter, except that a wildcard node with share_threshold hashes its
// pattern, so all values it matches share one counter. Each further limit
// of a rule counts in a bucket of its own, Rule.LimitKeyHash.
package rules
