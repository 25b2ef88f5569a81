package limiter

import (
	"errors"
	"sync"
	"sync/atomic"
)

// numShards spreads keys over independently locked maps so that concurrent
// decisions on different keys rarely contend. Keys are xxhash values, so the
// top byte is uniform.
const numShards = 256

// Store holds the buckets of many keys, bounded in number.
//
// Keys are 64-bit hashes of the descriptor (see the rules package), not the
// descriptor strings: a key costs the same few dozen bytes however long the
// descriptor is. Two descriptors colliding in 64 bits would share a bucket;
// with a million live keys the chance that any pair collides is about 3e-8.
//
// A bucket that is full holds no information (a fresh bucket is full too), so
// the store only keeps buckets that have tokens missing. When a shard is at
// its share of the key bound, inserting a key first drops a full bucket if it
// finds one, and otherwise evicts the sampled bucket closest to full — the one
// whose loss gives its owner the fewest extra tokens. Those lossy evictions
// are counted.
//
// A Store is safe for concurrent use.
type Store struct {
	shards    [numShards]shard
	perShard  int
	evictions atomic.Uint64
}

type shard struct {
	mu sync.Mutex
	t  table
	// Pad to a cache line so neighbouring shards' locks do not share one.
	_ [24]byte
}

// entry is one bucket: its GCRA state, when it will be full again (so eviction
// can compare buckets of different limits), and a fingerprint of the Limit the
// state is expressed in.
type entry struct {
	tat  int64
	full int64
	fp   uint32
}

// evictionSample is how many entries an insert into a full shard looks at
// when choosing a victim.
const evictionSample = 8

// NewStore returns a store that keeps at most about maxKeys buckets (the
// bound is enforced per shard, as maxKeys/256 each, rounded up).
func NewStore(maxKeys int) *Store {
	per := (maxKeys + numShards - 1) / numShards
	if per < 1 {
		per = 1
	}
	return &Store{perShard: per}
}

// MaxKeys returns the store's bound on buckets, as NewStore applies it
// (rounded up to a whole number per shard), so that a store kept beside
// this one can be bounded alike.
func (s *Store) MaxKeys() int { return s.perShard * numShards }

// fingerprint identifies a Limit, so a bucket stored under one limit is
// converted rather than misread when its rule changes.
func (l Limit) fingerprint() uint32 {
	h := l.Rate*0x9E3779B97F4A7C15 ^ uint64(l.Period)*0xC2B2AE3D27D4EB4F ^ l.Capacity()*0x165667B19E3779F9
	h ^= h >> 29
	return uint32(h) ^ uint32(h>>32)
}

// Take decides a request for hits tokens from the bucket of key under limit l
// at now (Unix nanoseconds).
func (s *Store) Take(key uint64, l Limit, hits uint64, now int64) Result {
	return s.TakeReserve(key, l, hits, 0, now)
}

// TakeReserve is Take for a request that must leave reserve tokens in the
// bucket (see Limit.TakeReserve).
func (s *Store) TakeReserve(key uint64, l Limit, hits, reserve uint64, now int64) Result {
	key = tableKey(key)
	sh := &s.shards[key>>56]
	fp := l.fingerprint()
	sh.mu.Lock()
	i := sh.t.find(key)
	var tat int64
	if i >= 0 {
		e := &sh.t.slots[i].e
		tat = e.tat
		if e.fp != fp {
			tat = l.convert(*e, now)
		}
	}
	newTat, res := l.TakeReserve(tat, hits, reserve, now)
	switch {
	case !l.Idle(newTat, now):
		e := entry{tat: newTat, full: now + int64(res.ResetAfter), fp: fp}
		if i >= 0 {
			sh.t.slots[i].e = e
			break
		}
		s.insert(sh, key, e, now)
	case i >= 0:
		sh.t.remove(i)
	}
	sh.mu.Unlock()
	return res
}

// Give returns n unused tokens to the bucket of key under l at now.
func (s *Store) Give(key uint64, l Limit, n uint64, now int64) {
	key = tableKey(key)
	sh := &s.shards[key>>56]
	fp := l.fingerprint()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	i := sh.t.find(key)
	if i < 0 || sh.t.slots[i].e.fp != fp {
		return // full, or under another limit: nothing to give back to
	}
	e := &sh.t.slots[i].e
	tat := l.Give(e.tat, n, now)
	if l.Idle(tat, now) {
		sh.t.remove(i)
		return
	}
	*e = entry{tat: tat, full: l.instantOf(tat), fp: fp}
}

// Seed starts key's bucket under l as one that is full again at full (Unix
// nanoseconds), unless the store already holds a bucket for key or full is
// not after now. A node deciding for an owner it cannot reach seeds its
// fallback bucket with what the owner last reported, instead of starting
// from a full one that would admit a burst the owner already spent.
func (s *Store) Seed(key uint64, l Limit, full int64, now int64) {
	if full <= now || !l.Valid() {
		return
	}
	key = tableKey(key)
	sh := &s.shards[key>>56]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.t.find(key) >= 0 {
		return
	}
	tat := l.convert(entry{full: full}, now)
	s.insert(sh, key, entry{tat: tat, full: l.instantOf(tat), fp: l.fingerprint()}, now)
}

// FullAt returns when key's bucket is full again, if the store holds one
// that is not full at now. It only reads: the bucket stays as it is, in the
// limit it is expressed in (a Take under another limit would convert it).
func (s *Store) FullAt(key uint64, now int64) (int64, bool) {
	key = tableKey(key)
	sh := &s.shards[key>>56]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	i := sh.t.find(key)
	if i < 0 || sh.t.slots[i].e.full <= now {
		return 0, false
	}
	return sh.t.slots[i].e.full, true
}

// insert adds a key sh does not hold, first making room if the shard is at
// its bound. The caller holds sh.mu.
func (s *Store) insert(sh *shard, key uint64, e entry, now int64) {
	if sh.t.n >= s.perShard {
		s.evict(sh, now)
	}
	sh.t.insert(key, e)
}

// convert re-expresses a bucket stored under another limit in l's token time,
// keeping the time until it is full again.
func (l Limit) convert(e entry, now int64) int64 {
	if e.full <= now || l.Rate == 0 {
		return 0
	}
	return l.tokensAt(now) + l.tokensAt(epoch+(e.full-now))
}

// evict makes room in sh for one more key: the first full bucket among a
// sample of the table, else the sampled bucket closest to full. The sample
// starts at a pseudo-random slot so that eviction does not always hit the
// same region. The caller holds sh.mu.
func (s *Store) evict(sh *shard, now int64) {
	t := &sh.t
	size := len(t.slots)
	start := int(uint64(now) * 0x9E3779B97F4A7C15 >> 32 % uint64(size))
	victim, oldest, seen := -1, int64(0), 0
	for k := 0; k < size && seen < evictionSample; k++ {
		i := (start + k) % size
		sl := &t.slots[i]
		if sl.key == 0 {
			continue
		}
		if sl.e.full <= now {
			t.remove(i)
			return
		}
		if victim < 0 || sl.e.full < oldest {
			victim, oldest = i, sl.e.full
		}
		seen++
	}
	if victim >= 0 {
		t.remove(victim)
		s.evictions.Add(1)
	}
}

// Sweep forgets every bucket that is full at now and returns how many it
// dropped. Buckets that refill are otherwise only dropped when touched or when
// their shard runs out of room; the owner of a Store calls Sweep from time to
// time to give that memory back.
func (s *Store) Sweep(now int64) int {
	dropped := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		sh.t.removeIf(func(_ uint64, e *entry) bool {
			if e.full <= now {
				dropped++
				return true
			}
			return false
		})
		sh.t.shrink()
		sh.mu.Unlock()
	}
	return dropped
}

// Len returns the number of buckets held (those not full).
func (s *Store) Len() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += sh.t.n
		sh.mu.Unlock()
	}
	return n
}

// Evictions returns how many buckets were dropped for room while not full.
func (s *Store) Evictions() uint64 { return s.evictions.Load() }

// Request is one bucket operation of a batch: take Hits tokens from the
// bucket of Key under Limit.
type Request struct {
	Key   uint64
	Limit Limit
	Hits  uint64
	// Reserve is the tokens that must remain after the take (a capacity
	// budget's reserve for more important traffic); usually 0.
	Reserve uint64
	// Refund gives Hits tokens back instead of taking them.
	Refund bool
	// Fallback says what to do when the bucket lives on another node that
	// cannot be reached. A local Store ignores it.
	Fallback Fallback
}

// ErrUndecided reports a request whose bucket could not be reached and whose
// Fallback is FallbackClosed.
var ErrUndecided = errors.New("rate limit could not be decided: the bucket's owner is unreachable and the rule is fail-closed")

// Fallback says how a request is decided when the node that owns its bucket
// cannot be reached.
type Fallback uint8

const (
	// FallbackLocal decides on the receiving node with a fair share of the
	// limit (the limit divided by the number of live nodes). The default.
	FallbackLocal Fallback = iota
	// FallbackOpen admits the request.
	FallbackOpen
	// FallbackClosed reports the request as undecidable.
	FallbackClosed
)

// TakeBatch decides every request at now, writing results[i] for reqs[i].
// Requests are decided in order, so two requests on one key see each other.
func (s *Store) TakeBatch(reqs []Request, results []Result, now int64) {
	for i := range reqs {
		results[i] = s.Do(&reqs[i], now)
	}
}

// Do decides one request at now: a take (with its reserve) or a refund.
func (s *Store) Do(r *Request, now int64) Result {
	if r.Refund {
		s.Give(r.Key, r.Limit, r.Hits, now)
		return s.Take(r.Key, r.Limit, 0, now)
	}
	return s.TakeReserve(r.Key, r.Limit, r.Hits, r.Reserve, now)
}

// Bucket is one stored bucket's whole state, for moving it to another node.
// Fingerprint identifies the limit TAT is expressed in; nodes compute it the
// same way, so a bucket means the same on its new owner.
type Bucket struct {
	Key         uint64
	TAT         int64
	Full        int64
	Fingerprint uint32
}

// Extract removes and returns the buckets that are not full at now and whose
// key moves selects — the buckets this node no longer owns.
func (s *Store) Extract(now int64, moves func(key uint64) bool) []Bucket {
	var out []Bucket
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		sh.t.removeIf(func(k uint64, e *entry) bool {
			if e.full <= now {
				return true
			}
			if moves(k) {
				out = append(out, Bucket{Key: k, TAT: e.tat, Full: e.full, Fingerprint: e.fp})
				return true
			}
			return false
		})
		sh.t.shrink()
		sh.mu.Unlock()
	}
	return out
}

// Adopt takes in buckets handed over by another node and returns how many
// it kept. Where this store already holds a key (checks arrived here before
// the hand-off did), the bucket with more tokens missing wins, so a hand-off
// never gives anybody extra quota.
func (s *Store) Adopt(buckets []Bucket, now int64) int {
	n := 0
	for _, b := range buckets {
		if b.Full <= now {
			continue
		}
		key := tableKey(b.Key)
		sh := &s.shards[key>>56]
		sh.mu.Lock()
		e := entry{tat: b.TAT, full: b.Full, fp: b.Fingerprint}
		switch i := sh.t.find(key); {
		case i < 0:
			s.insert(sh, key, e, now)
			n++
		case sh.t.slots[i].e.full < b.Full:
			sh.t.slots[i].e = e
			n++
		}
		sh.mu.Unlock()
	}
	return n
}
