package quotasim

import (
	"math"
	"sort"
)

// MaxMin divides limit among demands by max-min fairness (water filling):
// a demand under the level gets all it asks for, and the rest of the limit
// is split equally among the others. It returns each demand's share and
// the level (+Inf when the limit covers every demand). It is the
// simulation's own model, written apart from levee's allocator, to judge
// what levee hands out.
func MaxMin(limit float64, demands []float64) (shares []float64, level float64) {
	shares = make([]float64, len(demands))
	order := make([]int, len(demands))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return demands[order[a]] < demands[order[b]] })
	left := math.Max(limit, 0)
	for k, i := range order {
		even := left / float64(len(order)-k)
		if d := math.Max(demands[i], 0); d <= even {
			shares[i] = d
			left -= d
			continue
		}
		// Every demand from here on is above the level.
		for _, j := range order[k:] {
			shares[j] = even
		}
		return shares, even
	}
	return shares, math.Inf(1)
}

// Zipf returns n weights summing to 1, the i-th proportional to
// 1/(i+1)^s: demand skewed across Envoys, the first the heaviest.
func Zipf(n int, s float64) []float64 {
	w := make([]float64, n)
	var sum float64
	for i := range w {
		w[i] = 1 / math.Pow(float64(i+1), s)
		sum += w[i]
	}
	for i := range w {
		w[i] /= sum
	}
	return w
}
