package engine

import (
	"fmt"
	"time"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/rules"
)

// Bounds on one request. They keep a single caller from making levee do
// unbounded work or hold unbounded memory; each is far above real use.
const (
	// MaxItems is the most items (descriptors) in one request.
	MaxItems = 1000
	// MaxEntries is the most entries in one descriptor.
	MaxEntries = 1000
	// MaxStringBytes is the longest key, value, domain or inline key; rule
	// files are held to the same bound.
	MaxStringBytes = rules.MaxStringBytes
	// MaxHits is the most tokens one item may take.
	MaxHits = 1<<32 - 1
	// MinPeriod is the shortest inline limit period.
	MinPeriod = time.Millisecond
)

// FieldError is a request that cannot be decided as it stands. Field names
// the offending field the way the wire API spells it, such as
// "descriptors[2].entries[0].key".
type FieldError struct {
	Field  string
	Reason string
}

// Error formats the error as "field: reason".
func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// Fields names the wire fields of an API's items so FieldErrors read in its
// terms: Items is the repeated field ("descriptors" for Envoy, "items" for
// levee.v1), Descriptor the path from an item to its entries ("" or
// ".descriptor"), Inline the path to an inline limit's fields.
// AllowEmptyEntries accepts a descriptor with no entries (it matches no
// rule), as envoyproxy/ratelimit does.
type Fields struct {
	Items, Domain, Descriptor, Inline, Hits string
	AllowEmptyEntries                       bool
}

// item names a field of item i; it is only called to report an error, so
// valid requests build no strings.
func (f *Fields) item(i int, sub string) string {
	return fmt.Sprintf("%s[%d]%s", f.Items, i, sub)
}

// Validate checks items against the bounds above and returns a *FieldError
// for the first problem, named per f. It allocates nothing for a valid
// request.
func Validate(items []Item, f Fields) error {
	if len(items) == 0 {
		return &FieldError{f.Items, "must not be empty"}
	}
	if len(items) > MaxItems {
		return &FieldError{f.Items, fmt.Sprintf("%d items, at most %d allowed", len(items), MaxItems)}
	}
	for i := range items {
		it := &items[i]
		if it.Hits > MaxHits {
			return &FieldError{f.item(i, f.Hits), fmt.Sprintf("%d hits, at most %d allowed", it.Hits, uint64(MaxHits))}
		}
		if it.Inline {
			if field, reason := validateInline(it); field != "" {
				return &FieldError{f.item(i, f.Inline+field), reason}
			}
			continue
		}
		if it.Domain == "" {
			return &FieldError{f.item(i, f.Domain), "must not be empty"}
		}
		if len(it.Domain) > MaxStringBytes {
			return tooLong(f.item(i, f.Domain), it.Domain)
		}
		if len(it.Entries) == 0 && !f.AllowEmptyEntries {
			return &FieldError{f.item(i, f.Descriptor+".entries"), "must not be empty"}
		}
		if len(it.Entries) > MaxEntries {
			return &FieldError{f.item(i, f.Descriptor+".entries"), fmt.Sprintf("%d entries, at most %d allowed", len(it.Entries), MaxEntries)}
		}
		for j, e := range it.Entries {
			switch {
			case e.Key == "":
				return &FieldError{f.item(i, fmt.Sprintf("%s.entries[%d].key", f.Descriptor, j)), "must not be empty"}
			case len(e.Key) > MaxStringBytes:
				return tooLong(f.item(i, fmt.Sprintf("%s.entries[%d].key", f.Descriptor, j)), e.Key)
			case len(e.Value) > MaxStringBytes:
				return tooLong(f.item(i, fmt.Sprintf("%s.entries[%d].value", f.Descriptor, j)), e.Value)
			}
		}
	}
	return nil
}

// validateInline returns the offending field (".key", ".period" ...) and the
// reason, or "" when the inline limit is good.
func validateInline(it *Item) (field, reason string) {
	switch {
	case it.InlineKey == "":
		return ".key", "must not be empty"
	case len(it.InlineKey) > MaxStringBytes:
		return ".key", fmt.Sprintf("%d bytes, at most %d allowed", len(it.InlineKey), MaxStringBytes)
	case it.InlineUnlimited:
		return "", ""
	case it.InlineLimit.Period < MinPeriod:
		return ".period", fmt.Sprintf("must be at least %v", MinPeriod)
	case it.InlineLimit.Rate > limiter.MaxRate:
		return ".limit", fmt.Sprintf("must be at most %d", uint64(limiter.MaxRate))
	case it.InlineLimit.Burst > limiter.MaxRate:
		return ".burst", fmt.Sprintf("must be at most %d", uint64(limiter.MaxRate))
	case !it.InlineLimit.Valid():
		return ".limit", fmt.Sprintf("more than %d tokens per second", uint64(limiter.MaxTokensPerSecond))
	}
	return "", ""
}

func tooLong(field, s string) error {
	return &FieldError{field, fmt.Sprintf("%d bytes, at most %d allowed", len(s), MaxStringBytes)}
}
