package client

import (
	"encoding/binary"
	"math"
	"sync"

	"github.com/cespare/xxhash/v2"

	"github.com/levee-dev/levee/limiter/rules"
	"github.com/levee-dev/levee/shed"
)

// refusals remembers items the sidecar refused, until their retry_after.
// Times are Unix nanoseconds passed in; nothing here reads the clock.
type refusals struct {
	shards   [refusalShards]refusalShard
	perShard int
}

const refusalShards = 16

type refusalShard struct {
	mu sync.Mutex
	m  map[uint64]refusal
}

// refusal is one cached refusal: until when, for how many hits (a check
// for fewer might fit), and the status to answer with.
type refusal struct {
	until int64
	hits  uint64
	st    Status
}

// newRefusals returns a cache of about size items, or nil for size < 1.
func newRefusals(size int) *refusals {
	if size < 1 {
		return nil
	}
	return &refusals{perShard: max(1, (size+refusalShards-1)/refusalShards)}
}

func (c *refusals) shard(key uint64) *refusalShard { return &c.shards[key%refusalShards] }

// lookup returns the refusal of key that still holds at now for hits.
func (c *refusals) lookup(key uint64, hits uint64, now int64) (refusal, bool) {
	sh := c.shard(key)
	sh.mu.Lock()
	r, ok := sh.m[key]
	if ok && r.until <= now {
		delete(sh.m, key)
		ok = false
	}
	sh.mu.Unlock()
	return r, ok && hits >= r.hits
}

// add records a refusal of key for hits until until. A later refusal for
// fewer hits replaces an earlier one: it refuses more checks.
func (c *refusals) add(key uint64, r refusal, now int64) {
	sh := c.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.m == nil {
		sh.m = make(map[uint64]refusal)
	}
	if _, ok := sh.m[key]; !ok && len(sh.m) >= c.perShard {
		// Make room from a small sample, so a flood of keys costs little:
		// drop the expired refusals in it, or else the one that expires
		// first.
		var victim uint64
		first := int64(math.MaxInt64)
		n := 0
		for k, old := range sh.m {
			if old.until <= now {
				delete(sh.m, k)
			} else if old.until < first {
				victim, first = k, old.until
			}
			if n++; n == 8 {
				break
			}
		}
		if len(sh.m) >= c.perShard {
			delete(sh.m, victim)
		}
	}
	sh.m[key] = r
}

// len returns the number of refusals held, expired or not.
func (c *refusals) len() int {
	n := 0
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}

// itemKey identifies an item at a priority for the cache: its rule
// descriptor, or its inline key and limit. Hits are kept beside the key.
func itemKey(it *Item, p shed.Priority) uint64 {
	var d xxhash.Digest
	d.Reset()
	var b [25]byte
	b[0] = byte(p.Normalize())
	if it.Key != "" {
		b[0] |= 0x80
		binary.LittleEndian.PutUint64(b[1:], it.Limit.Rate)
		binary.LittleEndian.PutUint64(b[9:], uint64(it.Limit.Period))
		binary.LittleEndian.PutUint64(b[17:], it.Limit.Capacity())
		_, _ = d.Write(b[:])
		rules.WriteField(&d, it.Key)
		return d.Sum64()
	}
	_, _ = d.Write(b[:1])
	rules.WriteField(&d, it.Domain)
	for _, e := range it.Entries {
		rules.WriteField(&d, e.Key)
		rules.WriteField(&d, e.Value)
	}
	return d.Sum64()
}

// cacheable reports whether a refusal of st may be cached: a refusal that
// refuses the check by itself and says when it could pass.
func cacheable(st *Status) bool {
	return st.OverLimit && !st.Shadow && !st.QuotaMode && st.RetryAfter > 0
}
