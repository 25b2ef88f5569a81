package quota

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/levee-dev/levee/limiter"
)

// modelMaxMin is an independent model of MaxMin: it finds the water level
// w at which min(demand, w) adds up to total by bisection, and splits the
// slack equally when every demand is met.
func modelMaxMin(total float64, demands []float64) []float64 {
	out := make([]float64, len(demands))
	sum := 0.0
	for _, d := range demands {
		sum += d
	}
	if sum <= total {
		for i, d := range demands {
			out[i] = d + (total-sum)/float64(len(demands))
		}
		return out
	}
	lo, hi := 0.0, total
	for range 200 {
		w := (lo + hi) / 2
		s := 0.0
		for _, d := range demands {
			s += math.Min(d, w)
		}
		if s > total {
			hi = w
		} else {
			lo = w
		}
	}
	for i, d := range demands {
		out[i] = math.Min(d, lo)
	}
	return out
}

func TestMaxMinExamples(t *testing.T) {
	for _, c := range []struct {
		total   float64
		demands []float64
		want    []float64
	}{
		{100, []float64{10, 1000}, []float64{10, 90}},
		{100, []float64{1000, 10}, []float64{90, 10}},
		{100, []float64{10, 20}, []float64{45, 55}},                  // slack split on top
		{90, []float64{Unknown, 10, Unknown}, []float64{40, 10, 40}}, // unknown is unbounded
		{100, []float64{0, 0, 0, 0}, []float64{25, 25, 25, 25}},
		{100, []float64{-5, math.NaN()}, []float64{50, 50}},
		{0, []float64{10}, []float64{0}},
		{100, nil, []float64{}},
	} {
		got := MaxMin(c.total, c.demands, nil, nil)
		if len(got) != len(c.want) {
			t.Fatalf("MaxMin(%v, %v) = %v, want %v", c.total, c.demands, got, c.want)
		}
		for i := range got {
			if math.Abs(got[i]-c.want[i]) > 1e-9 {
				t.Errorf("MaxMin(%v, %v) = %v, want %v", c.total, c.demands, got, c.want)
				break
			}
		}
	}
}

func TestMaxMinModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var shares []float64
	var order []int
	for range 5000 {
		n := 1 + rng.IntN(30)
		d := make([]float64, n)
		for i := range d {
			// Zipf-like skew: a few large demands, many small ones.
			d[i] = math.Floor(1000 * math.Pow(rng.Float64(), 4))
		}
		total := math.Floor(rng.Float64() * 3000)
		shares = MaxMin(total, d, shares, order)
		want := modelMaxMin(total, d)
		sum := 0.0
		for i := range d {
			sum += shares[i]
			if math.Abs(shares[i]-want[i]) > 1e-6*math.Max(1, total) {
				t.Fatalf("MaxMin(%v, %v)[%d] = %v, model %v", total, d, i, shares[i], want[i])
			}
		}
		if math.Abs(sum-total) > 1e-6*math.Max(1, total) {
			t.Fatalf("MaxMin(%v, %v) adds up to %v", total, d, sum)
		}
	}
}

func TestQuantize(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 5000 {
		n := 1 + rng.IntN(20)
		pool := uint64(rng.IntN(200))
		d := make([]float64, n)
		for i := range d {
			d[i] = rng.Float64() * 100
		}
		shares := MaxMin(float64(pool), d, nil, nil)
		out := Quantize(shares, pool, nil, nil)
		var sum uint64
		for i := range out {
			sum += out[i]
			if math.Abs(float64(out[i])-shares[i]) >= 1 {
				t.Fatalf("Quantize(%v, %d) = %v: %d is a token or more from its share", shares, pool, out, i)
			}
		}
		if sum != pool {
			t.Fatalf("Quantize(%v, %d) = %v adds up to %d", shares, pool, out, sum)
		}
	}
	// Shares adding up to more than the pool never grant more than it.
	out := Quantize([]float64{5, 5, 5}, 10, nil, nil)
	if out[0]+out[1]+out[2] != 10 {
		t.Errorf("Quantize over the pool = %v", out)
	}
	// Largest remainders first; ties to the lower index.
	if got := Quantize([]float64{0.5, 0.5, 1.0}, 2, nil, nil); got[0] != 1 || got[1] != 0 || got[2] != 1 {
		t.Errorf("Quantize ties = %v, want [1 0 1]", got)
	}
}

func TestFillInterval(t *testing.T) {
	for _, c := range []struct {
		l    limiter.Limit
		fill time.Duration
		pool uint64
	}{
		{limiter.Limit{Rate: 100, Period: time.Second}, time.Second, 100},
		{limiter.Limit{Rate: 100, Period: time.Minute}, 3 * time.Second, 5},
		{limiter.Limit{Rate: 5, Period: 2 * time.Second}, 2 * time.Second, 5},
		{limiter.Limit{Rate: 10, Period: time.Minute}, 6 * time.Second, 1},
		{limiter.Limit{Rate: 7, Period: time.Hour}, 515 * time.Second, 1}, // ceil(3600/7)
		{limiter.Limit{Rate: 1, Period: 24 * time.Hour}, MaxFillInterval, 0},
		{limiter.Limit{Rate: 0, Period: time.Second}, time.Second, 0},
		{limiter.Limit{Rate: 1<<63 + 5, Period: time.Second}, time.Second, 1<<63 + 5},
	} {
		fill, pool := FillInterval(c.l)
		if fill != c.fill || pool != c.pool {
			t.Errorf("FillInterval(%+v) = %v, %d; want %v, %d", c.l, fill, pool, c.fill, c.pool)
		}
		if fill%time.Second != 0 || fill < time.Second {
			t.Errorf("FillInterval(%+v) = %v: not a whole number of seconds >= 1 s", c.l, fill)
		}
	}
}

func TestMaxTokens(t *testing.T) {
	l := limiter.Limit{Rate: 100, Period: time.Minute, Burst: 100}
	if got := MaxTokens(l, 5, 2, 3*time.Second, Unknown); got != MinBucket {
		t.Errorf("MaxTokens = %d, want MinBucket, below 2/5 of the burst", got)
	}
	if got := MaxTokens(l, 5, 2, 3*time.Second, 0.5); got != 40 {
		t.Errorf("MaxTokens = %d, want 2/5 of the burst (40) under the level", got)
	}
	if got := MaxTokens(limiter.Limit{Rate: 100, Period: time.Minute, Burst: 10}, 5, 2, 3*time.Second, Unknown); got != 4 {
		t.Errorf("MaxTokens = %d, want 2/5 of the burst (4), below MinBucket", got)
	}
	if got := MaxTokens(limiter.Limit{Rate: 100, Period: time.Second, Burst: 10}, 100, 4, time.Second, Unknown); got != 4 {
		t.Errorf("MaxTokens = %d, want one fill (4), below MinBucket", got)
	}
	if got := MaxTokens(limiter.Limit{Rate: 10000, Period: time.Second}, 10000, 1000, time.Second, Unknown); got != uint64(1000*BucketTime.Seconds()) {
		t.Errorf("MaxTokens = %d, want BucketTime of the tokens", got)
	}
	if got := MaxTokens(limiter.Limit{Rate: 10000, Period: time.Second}, 10000, 1000, 2*time.Second, Unknown); got != uint64(500*BucketTime.Seconds()) {
		t.Errorf("MaxTokens = %d, want BucketTime of the tokens at 2 s fills", got)
	}
}

func TestMeter(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var m Meter
	if m.Known() || m.Demand() != Unknown {
		t.Fatal("a new meter knows a demand")
	}
	m.Report(t0, 1) // the first report, time_elapsed 0: starts the clock
	if m.Known() {
		t.Fatal("demand known after the first report")
	}
	m.Report(t0.Add(5*time.Second), 50)
	if !m.Known() || m.Demand() != 10 {
		t.Fatalf("demand %v after 50 in 5 s, want 10", m.Demand())
	}
	// A report 100 ms later adds to the next measurement.
	m.Report(t0.Add(5100*time.Millisecond), 100)
	if m.Demand() != 10 {
		t.Fatalf("demand %v after a report 100 ms later, want 10 still", m.Demand())
	}
	m.Report(t0.Add(10*time.Second), 400)
	if m.Demand() != 100 {
		t.Fatalf("demand %v, want 100 (500 in 5 s)", m.Demand())
	}
	if got, want := m.Noise(), math.Sqrt(500)/5; math.Abs(got-want) > 1e-9 {
		t.Fatalf("noise %v after 500 in 5 s, want √500/5 = %v", got, want)
	}
	// No request in a window still leaves an error of about one request.
	m.Report(t0.Add(15*time.Second), 0)
	if m.Demand() != 0 || m.Noise() != 0.2 {
		t.Fatalf("demand %v ± %v after none in 5 s, want 0 ± 0.2", m.Demand(), m.Noise())
	}
}

// TestDivide checks Divide against the model's level: when demands fit,
// the pool is divided exactly; when they do not, every client under the
// level gets at least its demand (at most its demand with headroom, or the
// level, rounded up), and the clients above it split what the pool holds
// beyond the others' demands, so that the tokens expected to be used add
// up to the pool (less under one token of rounding).
func TestDivide(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	var div Divider
	var out []uint64
	for range 5000 {
		n := 1 + rng.IntN(30)
		d := make([]float64, n)
		var noise []float64
		if rng.IntN(2) == 0 {
			noise = make([]float64, n)
		}
		for i := range d {
			d[i] = 1000 * math.Pow(rng.Float64(), 4)
			if noise != nil {
				noise[i] = math.Sqrt(d[i]) * rng.Float64()
			}
			if rng.IntN(20) == 0 {
				d[i] = Unknown
			}
		}
		pool := uint64(rng.IntN(3000))
		out = div.Divide(pool, time.Second, d, noise, out)
		model := modelMaxMin(float64(pool), d)
		sumD, known := 0.0, true
		for _, x := range d {
			sumD += x
			known = known && x != Unknown
		}
		var sum uint64
		for _, x := range out {
			sum += x
		}
		if known && sumD <= float64(pool) {
			if sum != pool {
				t.Fatalf("Divide(%d, %v) = %v adds up to %d, want the pool", pool, d, out, sum)
			}
			continue
		}
		level, extra, under := 0.0, 0.0, 0
		for i := range d {
			if d[i] > model[i]+1e-9 {
				level = model[i]
			}
		}
		expected := 0.0
		for i, x := range d {
			if x > level+1e-9 {
				expected += float64(out[i])
				if float64(out[i]) > math.Ceil(level) || float64(out[i]) < math.Floor(level)-1 {
					t.Fatalf("Divide(%d, %v) = %v: client %d above the level %v got %d", pool, d, out, i, level, out[i])
				}
				continue
			}
			expected += x
			// Its headroom: 5%, or Confidence standard errors if more, up
			// to the level.
			h := x * Headroom
			if noise != nil {
				h = math.Max(h, Confidence*noise[i])
			}
			// The standard errors' part may be scaled down to fit
			// MaxHeadroom, never the 5%.
			lo, hi := math.Min(x*(1+Headroom), math.Max(x, level)), math.Min(x+h, math.Max(x, level))
			if float64(out[i]) < lo-1e-9 || float64(out[i]) > math.Ceil(hi)+1e-9 {
				t.Fatalf("Divide(%d, %v, %v) = %v: client %d under the level (%v) got %d for %v, want %v to %v rounded up", pool, d, noise, out, i, level, out[i], x, lo, hi)
			}
			extra += float64(out[i]) - x
			under++
		}
		if extra > MaxHeadroom*float64(pool)+float64(under)+1e-6 {
			t.Fatalf("Divide(%d, %v, %v) = %v: the clients under the level got %v beyond their demands, want at most %v of the pool and a token each", pool, d, noise, out, extra, MaxHeadroom)
		}
		if expected > float64(pool)+1e-6 || expected < float64(pool)-1-1e-6 {
			t.Fatalf("Divide(%d, %v) = %v: %v tokens expected in use, want the pool", pool, d, out, expected)
		}
	}
}
