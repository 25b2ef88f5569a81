package limiter

// table is one shard's hash table: open addressing with linear probing over
// a power-of-two array of slots, each holding its key and its bucket inline.
//
// A lookup in a store of millions of buckets is dominated by cache misses;
// keeping key and bucket in one 32-byte slot makes a hit cost one cache line
// (Go's map keeps control bytes and slots apart, which costs two). Keys are
// xxhash values, already uniform, so the low bits index the array directly.
// Deletion shifts the following entries back instead of leaving tombstones,
// so probe sequences stay short however keys come and go.
type table struct {
	slots []slot
	n     int
}

type slot struct {
	key uint64 // 0: empty
	e   entry
}

const minTableSize = 8

// tableKey maps the one key value the table cannot store, 0, to another;
// a descriptor colliding this way is as unlikely as any 64-bit collision.
func tableKey(key uint64) uint64 {
	if key == 0 {
		return zeroKey
	}
	return key
}

const zeroKey = 0x9E3779B97F4A7C15

func (t *table) mask() uint64 { return uint64(len(t.slots) - 1) }

// find returns the index of key, or -1.
func (t *table) find(key uint64) int {
	if t.n == 0 {
		return -1
	}
	m := t.mask()
	for i := key & m; ; i = (i + 1) & m {
		switch t.slots[i].key {
		case key:
			return int(i)
		case 0:
			return -1
		}
	}
}

// insert adds key, which must be absent.
func (t *table) insert(key uint64, e entry) {
	if (t.n+1)*4 > len(t.slots)*3 {
		t.resize(max(minTableSize, len(t.slots)*2))
	}
	m := t.mask()
	i := key & m
	for t.slots[i].key != 0 {
		i = (i + 1) & m
	}
	t.slots[i] = slot{key: key, e: e}
	t.n++
}

// remove deletes the entry at index i, shifting back the entries after it
// that probed past i.
func (t *table) remove(i int) {
	m := t.mask()
	hole := uint64(i)
	for j := (hole + 1) & m; t.slots[j].key != 0; j = (j + 1) & m {
		home := t.slots[j].key & m
		// The entry at j may move into the hole unless its home lies
		// cyclically in (hole, j].
		if (j-home)&m >= (j-hole)&m {
			t.slots[hole] = t.slots[j]
			hole = j
		}
	}
	t.slots[hole] = slot{}
	t.n--
}

// resize rehashes into size slots (a power of two above n).
func (t *table) resize(size int) {
	old := t.slots
	t.slots = make([]slot, size)
	t.n = 0
	m := t.mask()
	for _, s := range old {
		if s.key == 0 {
			continue
		}
		i := s.key & m
		for t.slots[i].key != 0 {
			i = (i + 1) & m
		}
		t.slots[i] = s
		t.n++
	}
}

// shrink gives memory back after many removals.
func (t *table) shrink() {
	if len(t.slots) > minTableSize && t.n*8 < len(t.slots) {
		size := minTableSize
		for size*3 < t.n*4*2 {
			size *= 2
		}
		t.resize(size)
	}
}

// removeIf deletes every entry for which drop returns true.
func (t *table) removeIf(drop func(key uint64, e *entry) bool) {
	for i := 0; i < len(t.slots); {
		s := &t.slots[i]
		if s.key != 0 && drop(s.key, &s.e) {
			t.remove(i) // an entry may have shifted into i: look again
			continue
		}
		i++
	}
}
