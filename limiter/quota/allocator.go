package quota

import (
	"cmp"
	"slices"
	"time"

	"github.com/levee-dev/levee/limiter"
)

// Demand is one client's demand for a bucket, as a node sends it to the
// bucket's owner.
type Demand struct {
	// ID names the client (a stream's subscription) on its node.
	ID uint64
	// Rate is the demand in requests per second, or Unknown.
	Rate float64
}

// Grant is what the owner gives a bucket's clients: every fill interval,
// each client gets its tokens out of the pool.
type Grant struct {
	FillInterval time.Duration
	Pool         uint64
	// Tokens are the clients' tokens per fill, in the order of the demands
	// reported.
	Tokens []uint64
}

// Allocator divides the limits of the buckets a node owns among the
// clients that report demand for them (see the package doc). It is not safe
// for concurrent use.
type Allocator struct {
	idle    time.Duration
	buckets map[uint64]*bucket

	// scratch for allocate
	demands []float64
	tokens  []uint64
	keys    []partKey
	div     Divider
}

type partKey struct {
	node string
	id   uint64
}

type bucket struct {
	limit    limiter.Limit
	parts    map[partKey]*part
	gen      uint64
	fill     time.Duration
	pool     uint64
	demand   float64 // measured demand, all clients (unknown ones not counted)
	assigned uint64  // tokens per fill granted, all clients
}

type part struct {
	rate   float64
	seen   int64 // Unix nanoseconds of the last report
	gen    uint64
	tokens uint64
}

// NewAllocator returns an Allocator that forgets a client no node has
// reported for idle.
func NewAllocator(idle time.Duration) *Allocator {
	return &Allocator{idle: idle, buckets: make(map[uint64]*bucket)}
}

// Report records at now the demands of node's clients for bucket key under
// limit l, which replace what node reported for it before (a client of
// node's that is not in ds has gone), and returns their grants, in the
// order of ds; g.Tokens reuses tokens.
func (a *Allocator) Report(now time.Time, key uint64, l limiter.Limit, node string, ds []Demand, tokens []uint64) Grant {
	t := now.UnixNano()
	b := a.buckets[key]
	if b == nil {
		if len(ds) == 0 {
			return Grant{Tokens: tokens[:0]}
		}
		b = &bucket{parts: make(map[partKey]*part, len(ds))}
		a.buckets[key] = b
	}
	b.limit = l
	b.gen++
	for _, d := range ds {
		k := partKey{node, d.ID}
		p := b.parts[k]
		if p == nil {
			p = &part{}
			b.parts[k] = p
		}
		p.rate, p.seen, p.gen = d.Rate, t, b.gen
	}
	for k, p := range b.parts {
		if (k.node == node && p.gen != b.gen) || time.Duration(t-p.seen) > a.idle {
			delete(b.parts, k)
		}
	}
	if len(b.parts) == 0 {
		delete(a.buckets, key)
		return Grant{Tokens: tokens[:0]}
	}
	a.allocate(b)
	g := Grant{FillInterval: b.fill, Pool: b.pool, Tokens: resize(tokens, len(ds))}
	for i, d := range ds {
		g.Tokens[i] = b.parts[partKey{node, d.ID}].tokens
	}
	return g
}

// allocate recomputes every client's tokens in b, in a fixed order of the
// clients so that ties break the same way on every call.
func (a *Allocator) allocate(b *bucket) {
	a.keys = a.keys[:0]
	for k := range b.parts {
		a.keys = append(a.keys, k)
	}
	slices.SortFunc(a.keys, func(x, y partKey) int {
		if c := cmp.Compare(x.node, y.node); c != 0 {
			return c
		}
		return cmp.Compare(x.id, y.id)
	})
	a.demands = resize(a.demands, len(a.keys))
	b.demand = 0
	for i, k := range a.keys {
		r := b.parts[k].rate
		a.demands[i] = r
		if r != Unknown {
			b.demand += r
		}
	}
	b.fill, b.pool = FillInterval(b.limit)
	a.tokens = a.div.Divide(b.pool, b.fill, a.demands, a.tokens)
	b.assigned = 0
	for i, k := range a.keys {
		b.parts[k].tokens = a.tokens[i]
		b.assigned += a.tokens[i]
	}
}

// Expire forgets the clients nobody reported for the idle time and the
// buckets left with none.
func (a *Allocator) Expire(now time.Time) {
	t := now.UnixNano()
	for key, b := range a.buckets {
		for k, p := range b.parts {
			if time.Duration(t-p.seen) > a.idle {
				delete(b.parts, k)
			}
		}
		if len(b.parts) == 0 {
			delete(a.buckets, key)
		} else {
			a.allocate(b)
		}
	}
}

// Forget drops bucket key (its owner changed).
func (a *Allocator) Forget(key uint64) { delete(a.buckets, key) }

// Len returns the buckets and the (node, client) pairs held.
func (a *Allocator) Len() (buckets, pairs int) {
	for _, b := range a.buckets {
		pairs += len(b.parts)
	}
	return len(a.buckets), pairs
}

// BucketStats is one bucket's state, for metrics.
type BucketStats struct {
	Key     uint64
	Limit   limiter.Limit
	Clients int
	// Demand is the measured demand of all clients, requests per second
	// (clients not measured yet are not counted); Assigned is the rate
	// granted to them all.
	Demand, Assigned float64
}

// Each calls f with every bucket's state.
func (a *Allocator) Each(f func(BucketStats)) {
	for key, b := range a.buckets {
		f(BucketStats{Key: key, Limit: b.limit, Clients: len(b.parts), Demand: b.demand,
			Assigned: float64(b.assigned) / b.fill.Seconds()})
	}
}
