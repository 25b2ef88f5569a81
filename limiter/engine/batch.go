package engine

import (
	"sync"

	"github.com/levee-dev/levee/limiter/rules"
)

// Batch is one request decoded for Check: its items, room for their
// statuses, and one backing array for every item's entries. Front ends take
// a Batch from GetBatch and return it with PutBatch, so decoding a request
// allocates nothing once the pool has warmed up.
type Batch struct {
	Items    []Item
	Statuses []Status
	entries  []rules.Entry
}

var batches = sync.Pool{New: func() any { return new(Batch) }}

// GetBatch returns a Batch sized for n items with up to entries entries in
// all.
func GetBatch(n, entries int) *Batch {
	b := batches.Get().(*Batch)
	b.Items = resize(b.Items, n)
	b.Statuses = resize(b.Statuses, n)
	b.entries = resize(b.entries, entries)[:0]
	return b
}

// PutBatch returns b to the pool; b must not be used afterwards.
func PutBatch(b *Batch) { batches.Put(b) }

// Entries carves n entries out of the batch's backing array, for the caller
// to fill. Together the calls may take at most the entries given to
// GetBatch.
func (b *Batch) Entries(n int) []rules.Entry {
	start := len(b.entries)
	b.entries = b.entries[:start+n]
	return b.entries[start : start+n : start+n]
}

func resize[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}
