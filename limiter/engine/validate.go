package engine

import (
	"fmt"
	"time"

	"github.com/levee-dev/levee/limiter"
)

// Bounds on one request. They keep a single caller from making levee do
// unbounded work or hold unbounded memory; each is far above real use.
const (
	// MaxItems is the most items (descriptors) in one request.
	MaxItems = 1000
	// MaxEntries is the most entries in one descriptor.
	MaxEntries = 1000
	// MaxStringBytes is the longest key, value, domain or inline key.
	MaxStringBytes = 4096
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
type Fields struct {
	Items, Domain, Descriptor, Inline, Hits string
}

// Validate checks items against the bounds above and returns a *FieldError
// for the first problem, named per f.
func Validate(items []Item, f Fields) error {
	if len(items) == 0 {
		return &FieldError{f.Items, "must not be empty"}
	}
	if len(items) > MaxItems {
		return &FieldError{f.Items, fmt.Sprintf("%d items, at most %d allowed", len(items), MaxItems)}
	}
	for i := range items {
		it := &items[i]
		at := fmt.Sprintf("%s[%d]", f.Items, i)
		if it.Hits > MaxHits {
			return &FieldError{at + f.Hits, fmt.Sprintf("%d hits, at most %d allowed", it.Hits, uint64(MaxHits))}
		}
		if it.Inline {
			if err := validateInline(it, at+f.Inline); err != nil {
				return err
			}
			continue
		}
		if it.Domain == "" {
			return &FieldError{at + f.Domain, "must not be empty"}
		}
		if len(it.Domain) > MaxStringBytes {
			return tooLong(at+f.Domain, it.Domain)
		}
		if len(it.Entries) == 0 {
			return &FieldError{at + f.Descriptor + ".entries", "must not be empty"}
		}
		if len(it.Entries) > MaxEntries {
			return &FieldError{at + f.Descriptor + ".entries", fmt.Sprintf("%d entries, at most %d allowed", len(it.Entries), MaxEntries)}
		}
		for j, e := range it.Entries {
			ef := fmt.Sprintf("%s%s.entries[%d]", at, f.Descriptor, j)
			if e.Key == "" {
				return &FieldError{ef + ".key", "must not be empty"}
			}
			if len(e.Key) > MaxStringBytes {
				return tooLong(ef+".key", e.Key)
			}
			if len(e.Value) > MaxStringBytes {
				return tooLong(ef+".value", e.Value)
			}
		}
	}
	return nil
}

func validateInline(it *Item, at string) error {
	switch {
	case it.InlineKey == "":
		return &FieldError{at + ".key", "must not be empty"}
	case len(it.InlineKey) > MaxStringBytes:
		return tooLong(at+".key", it.InlineKey)
	case it.InlineUnlimited:
		return nil
	case it.InlineLimit.Period < MinPeriod:
		return &FieldError{at + ".period", fmt.Sprintf("must be at least %v", MinPeriod)}
	case it.InlineLimit.Rate > limiter.MaxRate:
		return &FieldError{at + ".limit", fmt.Sprintf("must be at most %d", uint64(limiter.MaxRate))}
	case it.InlineLimit.Burst > limiter.MaxRate:
		return &FieldError{at + ".burst", fmt.Sprintf("must be at most %d", uint64(limiter.MaxRate))}
	}
	return nil
}

func tooLong(field, s string) error {
	return &FieldError{field, fmt.Sprintf("%d bytes, at most %d allowed", len(s), MaxStringBytes)}
}
