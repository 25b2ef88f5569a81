package limiter

import (
	"math/rand/v2"
	"testing"
)

// TestTableMatchesMap runs random operations against the table and a Go map
// side by side. Keys are drawn from a small set whose low bits collide, so
// probe sequences are long and wrap around the end of the array.
func TestTableMatchesMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	var tb table
	ref := map[uint64]int64{}
	key := func() uint64 { return uint64(rng.IntN(64))<<60 | uint64(rng.IntN(12)) | 1 }
	check := func(step int) {
		if tb.n != len(ref) {
			t.Fatalf("step %d: n = %d, map has %d", step, tb.n, len(ref))
		}
		for k, v := range ref {
			i := tb.find(k)
			if i < 0 || tb.slots[i].e.tat != v {
				t.Fatalf("step %d: key %x: find = %d", step, k, i)
			}
		}
	}
	for step := range 200_000 {
		k := key()
		switch op := rng.IntN(10); {
		case op < 5:
			if i := tb.find(k); i >= 0 {
				tb.slots[i].e.tat = int64(step)
			} else {
				tb.insert(k, entry{tat: int64(step)})
			}
			ref[k] = int64(step)
		case op < 8:
			if i := tb.find(k); i >= 0 {
				tb.remove(i)
			}
			delete(ref, k)
		case op < 9:
			cut := int64(rng.IntN(step + 1))
			tb.removeIf(func(_ uint64, e *entry) bool { return e.tat < cut })
			for k, v := range ref {
				if v < cut {
					delete(ref, k)
				}
			}
			tb.shrink()
		default:
			if i := tb.find(k); (i >= 0) != (func() bool { _, ok := ref[k]; return ok })() {
				t.Fatalf("step %d: find(%x) = %d disagrees with the map", step, k, i)
			}
		}
		if step%1000 == 0 {
			check(step)
		}
	}
	check(-1)
}
