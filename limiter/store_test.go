package limiter

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
)

func TestStoreKeepsOnlyPartialBuckets(t *testing.T) {
	s := NewStore(1000)
	l := Limit{Rate: 2, Period: time.Second}
	if r := s.Take(1, l, 1, t0); !r.Allowed || r.Remaining != 1 {
		t.Fatalf("%+v", r)
	}
	if s.Len() != 1 {
		t.Fatalf("Len = %d, want 1", s.Len())
	}
	if r := s.Take(1, l, 1, t0); !r.Allowed || r.Remaining != 0 {
		t.Fatalf("%+v", r)
	}
	if r := s.Take(1, l, 1, t0); r.Allowed {
		t.Fatalf("third take admitted: %+v", r)
	}
	// A look at a full bucket stores nothing, and a refilled bucket is dropped
	// when touched.
	if r := s.Take(2, l, 0, t0); !r.Allowed || r.Remaining != 2 || s.Len() != 1 {
		t.Fatalf("look: %+v, Len %d", r, s.Len())
	}
	if n := s.Sweep(t0 + int64(time.Second) - 1); n != 0 {
		t.Fatalf("swept %d partial buckets", n)
	}
	if n := s.Sweep(t0 + int64(time.Second)); n != 1 || s.Len() != 0 {
		t.Fatalf("Sweep dropped %d, Len %d", n, s.Len())
	}
}

func TestStoreLimitChangeKeepsDebt(t *testing.T) {
	s := NewStore(1000)
	old := Limit{Rate: 10, Period: time.Second}
	for range 10 {
		s.Take(7, old, 1, t0)
	}
	// Same refill time (1 s) expressed under a limit twice as large: the
	// bucket is empty either way, then refills at the new rate.
	bigger := Limit{Rate: 20, Period: time.Second}
	if r := s.Take(7, bigger, 1, t0); r.Allowed {
		t.Fatalf("empty bucket admitted after limit change: %+v", r)
	}
	if r := s.Take(7, bigger, 1, t0+int64(50*time.Millisecond)); !r.Allowed {
		t.Fatalf("refused after one new-rate interval: %+v", r)
	}
}

func TestStoreBoundAndEviction(t *testing.T) {
	const maxKeys = 1024
	s := NewStore(maxKeys)
	l := Limit{Rate: 1, Period: time.Hour}
	for i := range uint64(100_000) {
		s.Take(xxhash.Sum64(u64bytes(i)), l, 1, t0)
	}
	if n := s.Len(); n > maxKeys || n < maxKeys*9/10 {
		t.Fatalf("Len = %d, want about %d", n, maxKeys)
	}
	if ev := s.Evictions(); ev < 100_000-maxKeys {
		t.Fatalf("Evictions = %d, want >= %d", ev, 100_000-maxKeys)
	}
	// Full buckets are dropped before partial ones: after they refill, new
	// keys take their room without lossy evictions.
	before := s.Evictions()
	later := t0 + int64(2*time.Hour)
	for sh := range uint64(numShards) {
		s.Take(sh<<56|12345, l, 1, later) // one new key in every shard
	}
	if ev := s.Evictions() - before; ev != 0 {
		t.Fatalf("%d lossy evictions while idle buckets were available", ev)
	}
}

func TestStoreConcurrentExact(t *testing.T) {
	s := NewStore(1 << 16)
	l := Limit{Rate: 500, Period: time.Hour}
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1000 {
				if s.Take(uint64(i%4), l, 1, t0+int64(g)).Allowed {
					admitted.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	// Four keys, 500 each; 8 ns of elapsed time earns no token.
	if got := admitted.Load(); got != 4*500 {
		t.Fatalf("admitted %d, want %d", got, 4*500)
	}
}

func TestTakeAllocatesNothing(t *testing.T) {
	s := NewStore(1000)
	l := Limit{Rate: 1e9, Period: time.Second}
	now := t0
	s.Take(42, l, 1, now)
	allocs := testing.AllocsPerRun(1000, func() {
		now += 10
		s.Take(42, l, 1, now)
	})
	if allocs != 0 {
		t.Fatalf("Take allocates %v times per call", allocs)
	}
}

func u64bytes(i uint64) []byte {
	b := make([]byte, 8)
	for j := range b {
		b[j] = byte(i >> (8 * j))
	}
	return b
}

func BenchmarkStoreTakeSingleKey(b *testing.B) {
	s := NewStore(1000)
	l := Limit{Rate: 1e9, Period: time.Second}
	now := t0
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		now += 3
		s.Take(42, l, 1, now)
	}
}

// BenchmarkStoreTakeMillionKeys decides on a store holding 1,000,000 partial
// buckets, spread across goroutines (run with -cpu 2 for the two-core
// figure). Keys are derived from an index by a mixing function, as a
// request's key is hashed from its descriptor, rather than read from a
// million-entry slice, which would add a cache miss of its own.
func BenchmarkStoreTakeMillionKeys(b *testing.B) {
	const n = 1_000_000
	s := NewStore(2 * n)
	l := Limit{Rate: 1e6, Period: time.Hour}
	for i := range uint64(n) {
		s.Take(mix(i), l, 1, t0)
	}
	if s.Len() != n {
		b.Fatalf("Len = %d", s.Len())
	}
	b.ReportAllocs()
	b.ResetTimer()
	var seq atomic.Uint64
	b.RunParallel(func(pb *testing.PB) {
		i := seq.Add(1) * 7919
		for pb.Next() {
			i += 104729
			s.Take(mix(i%n), l, 1, t0+1)
		}
	})
}

// mix is the splitmix64 finaliser: distinct indexes give distinct,
// well-spread keys.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// BenchmarkStoreBytesPerKey reports the heap held per stored bucket.
func BenchmarkStoreBytesPerKey(b *testing.B) {
	const n = 1_000_000
	l := Limit{Rate: 1, Period: time.Hour}
	for i := 0; i < b.N; i++ {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		s := NewStore(2 * n) // room for an uneven spread over shards
		for k := range uint64(n) {
			s.Take(xxhash.Sum64(u64bytes(k)), l, 1, t0)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if s.Len() != n {
			b.Fatalf("Len = %d", s.Len())
		}
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "bytes/key")
		runtime.KeepAlive(s)
	}
}

func TestExtractAdoptMovesQuota(t *testing.T) {
	a, b := NewStore(1000), NewStore(1000)
	l := Limit{Rate: 10, Period: time.Minute}
	for k := range uint64(20) {
		for range 7 {
			a.Take(k<<56|0x10|k, l, 1, t0)
		}
	}
	moved := a.Extract(t0, func(key uint64) bool { return key&1 == 1 })
	if len(moved) != 10 || a.Len() != 10 {
		t.Fatalf("extracted %d, left %d", len(moved), a.Len())
	}
	// b already saw one check for key 1 (before the hand-off arrived): the
	// more used state wins.
	b.Take(1<<56|0x10|1, l, 1, t0)
	if n := b.Adopt(moved, t0); n != 10 {
		t.Fatalf("adopted %d", n)
	}
	for _, key := range []uint64{1<<56 | 0x11, 3<<56 | 0x13} {
		if r := b.Take(key, l, 0, t0); r.Remaining != 3 {
			t.Fatalf("key %x: remaining %d after hand-off, want 3", key, r.Remaining)
		}
	}
	// Buckets full by the time they arrive are not kept.
	if n := NewStore(10).Adopt(moved, t0+int64(time.Hour)); n != 0 {
		t.Fatalf("adopted %d refilled buckets", n)
	}
}

func TestStoreGive(t *testing.T) {
	s := NewStore(100)
	l := Limit{Rate: 10, Period: time.Minute}
	s.Take(5, l, 8, t0)
	s.Give(5, l, 3, t0)
	if r := s.Take(5, l, 0, t0); r.Remaining != 5 {
		t.Fatalf("remaining %d, want 5", r.Remaining)
	}
	s.Give(5, l, 50, t0)
	if s.Len() != 0 {
		t.Fatal("a bucket given back in full is still stored")
	}
}

func TestSeedStartsFromTheOwnersState(t *testing.T) {
	s := NewStore(1 << 10)
	l := Limit{Rate: 10, Period: 10 * time.Second} // a token a second, burst 10
	now := epoch + int64(time.Hour)
	// Full again in 4 s: 6 tokens now, and a seed does not overwrite.
	s.Seed(1, l, now+int64(4*time.Second), now)
	s.Seed(1, l, now+int64(9*time.Second), now)
	if r := s.Take(1, l, 0, now); r.Remaining != 6 || r.ResetAfter != 4*time.Second {
		t.Fatalf("seeded bucket: %+v, want 6 left, full in 4s", r)
	}
	// A seed in the past, or for a bucket already held, changes nothing.
	s.Seed(2, l, now-1, now)
	if r := s.Take(2, l, 0, now); r.Remaining != 10 {
		t.Fatalf("seed in the past: %+v, want a full bucket", r)
	}
	s.Take(3, l, 3, now)
	s.Seed(3, l, now+int64(10*time.Second), now)
	if r := s.Take(3, l, 0, now); r.Remaining != 7 {
		t.Fatalf("seed over a held bucket: %+v, want its 7 left", r)
	}
}

// TestFullAtOnlyReads: FullAt tells when a held bucket is full again and
// leaves it in its own limit, which a look by Take under another limit
// would not (it converts the bucket, rounding).
func TestFullAtOnlyReads(t *testing.T) {
	s := NewStore(1 << 10)
	l := Limit{Rate: 10, Period: 10 * time.Second}
	now := epoch + int64(time.Hour)
	if _, ok := s.FullAt(1, now); ok {
		t.Fatal("FullAt of a key never taken: ok")
	}
	s.Take(1, l, 3, now)
	full, ok := s.FullAt(1, now)
	if !ok || full != now+int64(3*time.Second) {
		t.Fatalf("FullAt = %v, %v; want 3s on", time.Duration(full-now), ok)
	}
	if _, ok := s.FullAt(1, full); ok {
		t.Fatal("FullAt once the bucket is full again: ok")
	}
	if r := s.Take(1, l, 0, now); r.Remaining != 7 {
		t.Fatalf("after FullAt: %+v, want 7 left", r)
	}
	if got := NewStore(s.MaxKeys()).MaxKeys(); got != s.MaxKeys() {
		t.Fatalf("a store sized by MaxKeys bounds %d keys, want %d", got, s.MaxKeys())
	}
}
