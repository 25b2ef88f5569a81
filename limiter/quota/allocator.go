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
	// Noise is the standard error of Rate (Meter.Noise); 0 if not known.
	Noise float64
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
	noise   []float64
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
	rate    float64
	noise   float64
	seen    int64 // Unix nanoseconds of the last report
	gen     uint64
	tokens  uint64 // granted
	granted bool
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
		p.rate, p.noise, p.seen, p.gen = d.Rate, d.Noise, t, b.gen
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
	a.noise = resize(a.noise, len(a.keys))
	b.demand = 0
	for i, k := range a.keys {
		r := b.parts[k].rate
		a.demands[i], a.noise[i] = r, b.parts[k].noise
		if r != Unknown {
			b.demand += r
		}
	}
	b.fill, b.pool = FillInterval(b.limit)
	a.tokens = a.div.Divide(b.pool, b.fill, a.demands, a.noise, a.tokens)
	// Keep a client's grant while it is within Hold of its new share, as
	// long as the grants still add up to no more than the shares do.
	var budget, sum uint64
	for i, k := range a.keys {
		p, t := b.parts[k], a.tokens[i]
		budget += t
		need := (p.rate + Confidence*p.noise) * b.fill.Seconds()
		if !p.granted || !Holds(p.tokens, t, need) {
			p.tokens = t
		}
		p.granted = true
		sum += p.tokens
	}
	for sum > budget {
		// The held grants above their shares take too much: the largest
		// excess goes to its share first.
		big, over := -1, uint64(0)
		for i, k := range a.keys {
			if p := b.parts[k]; p.tokens > a.tokens[i] && p.tokens-a.tokens[i] > over {
				big, over = i, p.tokens-a.tokens[i]
			}
		}
		b.parts[a.keys[big]].tokens = a.tokens[big]
		sum -= over
	}
	// What the grants admit is at most the shares: a grant held above its
	// share (a client under the level whose demand fell) leaves the excess
	// unused.
	var used uint64
	for i, k := range a.keys {
		used += min(b.parts[k].tokens, a.tokens[i])
	}
	for float64(used) < (1-Hold/2)*float64(budget) {
		// The held grants below their shares leave too much unused: the
		// largest shortfall goes to its share first.
		big, under := -1, uint64(0)
		for i, k := range a.keys {
			if p := b.parts[k]; p.tokens < a.tokens[i] && a.tokens[i]-p.tokens > under {
				big, under = i, a.tokens[i]-p.tokens
			}
		}
		if big < 0 {
			break
		}
		b.parts[a.keys[big]].tokens = a.tokens[big]
		sum += under
		used += under
	}
	b.assigned = sum
}

// Hold is the relative change of a client's share that leaves its grant
// as it is (see the package doc).
const Hold = 0.10

// Holds reports whether a grant of granted tokens per fill may stay for a
// new share of share tokens, for a client that needs need tokens per fill
// (its demand and Confidence standard errors of it; Unknown: unbounded): it
// is within Hold of the share, and if it is below the share, it still
// covers the need of a client under the level (the share covers the need).
func Holds(granted, share uint64, need float64) bool {
	under := need <= float64(share)
	if granted >= share {
		// A client under the level does not use what it has beyond its
		// demand: its grant may stay (the grants adding up to no more
		// than the shares, Allocator cuts it first).
		return under || float64(granted-share) <= Hold*float64(share)
	}
	if under && float64(granted) < need {
		return false
	}
	return float64(share-granted) <= Hold*float64(share)
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
