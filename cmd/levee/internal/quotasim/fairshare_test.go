package quotasim

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestMaxMin(t *testing.T) {
	shares, level := MaxMin(100, []float64{10, 50, 200, 5})
	want := []float64{10, 42.5, 42.5, 5}
	for i := range want {
		if math.Abs(shares[i]-want[i]) > 1e-9 {
			t.Fatalf("shares %v, want %v", shares, want)
		}
	}
	if level != 42.5 {
		t.Fatalf("level %v, want 42.5", level)
	}
	if _, level := MaxMin(100, []float64{10, 20}); !math.IsInf(level, 1) {
		t.Fatalf("level %v with the limit covering all demand, want +Inf", level)
	}
}

// TestMaxMinProperties checks MaxMin against the definition on random
// demands: no share above its demand, the limit (or all demand) handed
// out, and every share short of its demand equal to the largest share.
func TestMaxMinProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		n := 1 + r.IntN(30)
		d := make([]float64, n)
		var sum float64
		for i := range d {
			d[i] = math.Floor(r.ExpFloat64() * 50)
			sum += d[i]
		}
		limit := r.Float64() * 2 * sum
		s, _ := MaxMin(limit, d)
		var got, top float64
		for i := range s {
			if s[i] > d[i]+1e-9 || s[i] < 0 {
				t.Fatalf("demands %v limit %v: share %v of demand %v", d, limit, s[i], d[i])
			}
			got += s[i]
			top = math.Max(top, s[i])
		}
		if math.Abs(got-math.Min(limit, sum)) > 1e-6 {
			t.Fatalf("demands %v limit %v: handed out %v", d, limit, got)
		}
		for i := range s {
			if s[i] < d[i]-1e-9 && math.Abs(s[i]-top) > 1e-9 {
				t.Fatalf("demands %v limit %v: share %v short of demand %v but under the top share %v", d, limit, s[i], d[i], top)
			}
		}
	}
}

func TestZipf(t *testing.T) {
	w := Zipf(4, 1)
	var sum float64
	for i, x := range w {
		sum += x
		if i > 0 && x >= w[i-1] {
			t.Fatalf("weights %v not decreasing", w)
		}
	}
	if math.Abs(sum-1) > 1e-12 || math.Abs(w[0]/w[1]-2) > 1e-12 {
		t.Fatalf("weights %v: want sum 1 and w0 = 2 w1", w)
	}
}

func TestPoissonMean(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, mean := range []float64{0.05, 2.5, 80} {
		var sum int
		const n = 20000
		for range n {
			sum += poisson(r, mean)
		}
		if got := float64(sum) / n; math.Abs(got-mean) > 0.05*mean+0.01 {
			t.Fatalf("mean of %d draws %v, want %v", n, got, mean)
		}
	}
}
