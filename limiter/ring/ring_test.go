package ring

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"testing"
)

const numKeys = 1_000_000

// randomMembers returns n members with random, unique IDs of the shapes
// operators use (pod names, UUID-like strings).
func randomMembers(rng *rand.Rand, n int) []Member {
	seen := make(map[string]bool, n)
	out := make([]Member, 0, n)
	for len(out) < n {
		var id string
		switch rng.IntN(3) {
		case 0:
			id = "levee-" + strconv.Itoa(rng.IntN(1000))
		case 1:
			id = fmt.Sprintf("%08x-%04x", rng.Uint32(), rng.Uint32()&0xffff)
		default:
			id = "node-" + strconv.FormatUint(rng.Uint64(), 36)
		}
		if seen[id] {
			continue
		}
		seen[id] = true
		out = append(out, Member{ID: id, Addr: "10.0.0." + strconv.Itoa(len(out)) + ":7000"})
	}
	return out
}

func randomKeys(rng *rand.Rand, n int) []uint64 {
	keys := make([]uint64, n)
	for i := range keys {
		keys[i] = rng.Uint64()
	}
	return keys
}

// owners returns, for each key, the index in r.members of its owner.
func owners(t testing.TB, r *Ring, keys []uint64) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		m, ok := r.Owner(k)
		if !ok {
			t.Fatalf("Owner(%d) on a ring of %d members reported no owner", k, r.Len())
		}
		out[i] = m.ID
	}
	return out
}

// TestBalance checks that with 3 to 20 members the most-loaded member owns at
// most 1.15 x the mean share of a million random keys, for random member IDs
// and for the sequential pod names a StatefulSet produces.
func TestBalance(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	keys := randomKeys(rng, numKeys)
	worst := 0.0
	check := func(name string, ms []Member) {
		r := New(ms)
		counts := make(map[string]int, len(ms))
		for _, id := range owners(t, r, keys) {
			counts[id]++
		}
		if len(counts) != len(ms) {
			t.Errorf("%s: %d of %d members own keys", name, len(counts), len(ms))
		}
		mean := float64(numKeys) / float64(len(ms))
		maxC := 0
		for _, c := range counts {
			maxC = max(maxC, c)
		}
		ratio := float64(maxC) / mean
		worst = max(worst, ratio)
		if ratio > 1.15 {
			t.Errorf("%s: most-loaded member owns %.3f x the mean share, want <= 1.15", name, ratio)
		}
	}
	for n := 3; n <= 20; n++ {
		check(fmt.Sprintf("random IDs, n=%d", n), randomMembers(rng, n))
		seq := make([]Member, n)
		for i := range seq {
			seq[i] = Member{ID: "levee-" + strconv.Itoa(i)}
		}
		check(fmt.Sprintf("levee-0..%d", n-1), seq)
	}
	for range 10 { // extra random trials at random sizes
		n := 3 + rng.IntN(18)
		check(fmt.Sprintf("random IDs, n=%d (extra)", n), randomMembers(rng, n))
	}
	t.Logf("worst max/mean over all trials: %.4f", worst)

	// Keys that are not well mixed (a caller passing counters instead of
	// hashes) still spread: mix avalanches every input bit.
	r := New(randomMembers(rng, 10))
	counts := map[string]int{}
	for k := range uint64(numKeys) {
		m, _ := r.Owner(k)
		counts[m.ID]++
	}
	for id, c := range counts {
		if ratio := float64(c) / (numKeys / 10); ratio > 1.15 {
			t.Errorf("sequential keys: %s owns %.3f x the mean share", id, ratio)
		}
	}
	if len(counts) != 10 {
		t.Errorf("sequential keys: only %d of 10 members own keys", len(counts))
	}
}

// TestMovement checks that adding or removing one member moves at most
// 1/N + 2% of the keys (N the larger member count), and that every moved key
// moves to the added member or away from the removed one.
func TestMovement(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	keys := randomKeys(rng, numKeys)
	worstExcess := math.Inf(-1)
	for n := 3; n <= 20; n++ {
		ms := randomMembers(rng, n+1)
		small, big := New(ms[:n]), New(ms)
		added := ms[n].ID
		before, after := owners(t, small, keys), owners(t, big, keys)
		moved := 0
		for i := range keys {
			if before[i] != after[i] {
				moved++
				if after[i] != added {
					t.Fatalf("add n=%d: key %d moved %s -> %s, not to the added member %s",
						n, keys[i], before[i], after[i], added)
				}
			}
		}
		frac, bound := float64(moved)/numKeys, 1/float64(n+1)+0.02
		worstExcess = max(worstExcess, frac-1/float64(n+1))
		if frac > bound {
			t.Errorf("add to n=%d: moved %.4f of keys, want <= %.4f", n, frac, bound)
		}

		// Remove a random member of the bigger ring.
		gone := ms[rng.IntN(n+1)].ID
		var rest []Member
		for _, m := range ms {
			if m.ID != gone {
				rest = append(rest, m)
			}
		}
		after = owners(t, New(rest), keys)
		before = owners(t, big, keys)
		moved = 0
		for i := range keys {
			if before[i] != after[i] {
				moved++
				if before[i] != gone {
					t.Fatalf("remove n=%d: key %d moved %s -> %s, not from the removed member %s",
						n+1, keys[i], before[i], after[i], gone)
				}
			}
			if after[i] == gone {
				t.Fatalf("remove n=%d: key %d still owned by removed member", n+1, keys[i])
			}
		}
		frac = float64(moved) / numKeys
		worstExcess = max(worstExcess, frac-1/float64(n+1))
		if frac > bound {
			t.Errorf("remove from n=%d: moved %.4f of keys, want <= %.4f", n+1, frac, bound)
		}
	}
	t.Logf("worst moved fraction minus 1/N: %+.4f", worstExcess)
}

// TestShares checks the advertised shares against the shares measured on
// random keys.
func TestShares(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	keys := randomKeys(rng, numKeys/4)
	r := New(randomMembers(rng, 7))
	counts := map[string]int{}
	for _, id := range owners(t, r, keys) {
		counts[id]++
	}
	shares := r.Shares()
	if len(shares) != 7 {
		t.Fatalf("Shares() has %d entries, want 7", len(shares))
	}
	total := 0.0
	for _, s := range shares {
		total += s.Fraction
		got := float64(counts[s.Member.ID]) / float64(len(keys))
		if math.Abs(got-s.Fraction) > 0.01 {
			t.Errorf("member %s: Shares says %.4f, measured %.4f", s.Member.ID, s.Fraction, got)
		}
	}
	if math.Abs(total-1) > 1e-9 {
		t.Errorf("shares sum to %v, want 1", total)
	}
	if New(nil).Shares() != nil {
		t.Errorf("Shares of an empty ring is not nil")
	}
}

// TestDeterministic checks that input order and duplicate entries do not
// change the ring.
func TestDeterministic(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	keys := randomKeys(rng, 10_000)
	for trial := range 20 {
		ms := randomMembers(rng, 3+rng.IntN(18))
		a := New(ms)
		shuffled := append([]Member(nil), ms...)
		// Duplicates with a larger Addr must lose to the original entry
		// wherever they appear.
		for range 3 {
			d := ms[rng.IntN(len(ms))]
			d.Addr += "-dup"
			shuffled = append(shuffled, d)
		}
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		b := New(shuffled)
		if !a.Equal(b) || !b.Equal(a) {
			t.Fatalf("trial %d: rings from shuffled input differ:\n%v\n%v", trial, a.Members(), b.Members())
		}
		for _, k := range keys {
			ma, _ := a.Owner(k)
			mb, _ := b.Owner(k)
			if ma != mb {
				t.Fatalf("trial %d: key %d owned by %v and %v", trial, k, ma, mb)
			}
		}
	}
}

// TestOwnerGolden pins the hash: nodes running different levee versions
// during a rolling upgrade must agree on owners, so any change to the scheme
// is a breaking change and must fail here.
func TestOwnerGolden(t *testing.T) {
	r := New([]Member{{ID: "levee-0"}, {ID: "levee-1"}, {ID: "levee-2"}, {ID: "levee-3"}})
	want := map[uint64]string{
		0:                  "levee-2",
		1:                  "levee-3",
		0xdeadbeef:         "levee-0",
		0xffffffffffffffff: "levee-2",
		0x0123456789abcdef: "levee-1",
		0x8000000000000000: "levee-2",
		0x9e3779b97f4a7c15: "levee-3",
		0x0000000100000000: "levee-2",
	}
	for k, id := range want {
		m, ok := r.Owner(k)
		if !ok || m.ID != id {
			t.Errorf("Owner(%#x) = %q, %v; want %q", k, m.ID, ok, id)
		}
	}
}

func TestEmptyAndAccessors(t *testing.T) {
	var nilRing *Ring
	for _, r := range []*Ring{nilRing, {}, New(nil), New([]Member{{ID: "", Addr: "x"}})} {
		if _, ok := r.Owner(42); ok {
			t.Errorf("Owner on empty ring reported an owner")
		}
		if r.Len() != 0 || len(r.Members()) != 0 || r.Contains("") {
			t.Errorf("empty ring: Len=%d Members=%v", r.Len(), r.Members())
		}
		if !r.Equal(New(nil)) || !New(nil).Equal(r) {
			t.Errorf("empty rings are not Equal")
		}
	}

	r := New([]Member{{ID: "b", Addr: "b:1"}, {ID: "a", Addr: "a:1"}, {ID: "a", Addr: "a:0"}})
	if got := r.Members(); len(got) != 2 || got[0] != (Member{"a", "a:0"}) || got[1] != (Member{"b", "b:1"}) {
		t.Errorf("Members() = %v, want [{a a:0} {b b:1}]", got)
	}
	r.Members()[0].ID = "mutated"
	if !r.Contains("a") || r.Contains("mutated") || r.Contains("c") {
		t.Errorf("Contains is wrong or Members() aliases the ring")
	}
	if m, ok := r.Member("b"); !ok || m.Addr != "b:1" {
		t.Errorf("Member(b) = %v, %v", m, ok)
	}
	if r.Len() != 2 {
		t.Errorf("Len() = %d, want 2", r.Len())
	}
	if r.Equal(New([]Member{{ID: "a", Addr: "a:0"}, {ID: "b", Addr: "other"}})) {
		t.Errorf("rings with different addresses are Equal")
	}
	if r.Equal(New([]Member{{ID: "a", Addr: "a:0"}})) {
		t.Errorf("rings with different members are Equal")
	}
	single := New([]Member{{ID: "only", Addr: "x"}})
	for _, k := range []uint64{0, 1, math.MaxUint64} {
		if m, ok := single.Owner(k); !ok || m.ID != "only" {
			t.Errorf("single-member ring: Owner(%d) = %v, %v", k, m, ok)
		}
	}
}

func TestOwnerDoesNotAllocate(t *testing.T) {
	r := New(randomMembers(rand.New(rand.NewPCG(9, 10)), 20))
	var sink Member
	key := uint64(12345)
	allocs := testing.AllocsPerRun(1000, func() {
		m, _ := r.Owner(key)
		sink = m
		key = key*6364136223846793005 + 1442695040888963407
	})
	if allocs != 0 {
		t.Errorf("Owner allocates %.1f times per call, want 0", allocs)
	}
	_ = sink
}

func BenchmarkOwner(b *testing.B) {
	for _, n := range []int{3, 5, 10, 20, 50, 100} {
		b.Run("members="+strconv.Itoa(n), func(b *testing.B) {
			rng := rand.New(rand.NewPCG(11, 12))
			r := New(randomMembers(rng, n))
			keys := randomKeys(rng, 1<<12)
			b.ReportAllocs()
			var sink Member
			i := 0
			for b.Loop() {
				sink, _ = r.Owner(keys[i&(len(keys)-1)])
				i++
			}
			_ = sink
		})
	}
}

func BenchmarkNew(b *testing.B) {
	ms := randomMembers(rand.New(rand.NewPCG(13, 14)), 20)
	b.ReportAllocs()
	for b.Loop() {
		New(ms)
	}
}
