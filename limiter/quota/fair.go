package quota

import (
	"cmp"
	"math"
	"slices"
	"time"

	"github.com/levee-dev/levee/limiter"
)

// Unknown is the demand of a client whose demand is not measured yet: it
// counts as unbounded.
var Unknown = math.Inf(1)

// MaxMin sets shares[i] to the max-min fair share of total for demands[i]
// (see the package doc) and returns shares. A negative or NaN demand counts
// as 0. order is scratch space; it may be nil.
func MaxMin(total float64, demands, shares []float64, order []int) []float64 {
	n := len(demands)
	shares = resize(shares, n)
	if n == 0 {
		return shares
	}
	if total < 0 || math.IsNaN(total) {
		total = 0
	}
	order = resize(order, n)
	for i := range order {
		order[i] = i
	}
	d := func(i int) float64 {
		v := demands[i]
		if v < 0 || math.IsNaN(v) {
			return 0
		}
		return v
	}
	slices.SortFunc(order, func(a, b int) int {
		if c := cmp.Compare(d(a), d(b)); c != 0 {
			return c
		}
		return a - b
	})
	left := total
	for k, i := range order {
		fair := left / float64(n-k)
		if d(i) > fair {
			// Everyone from here on asks for more than an equal split.
			for _, j := range order[k:] {
				shares[j] = fair
			}
			return shares
		}
		shares[i] = d(i)
		left -= d(i)
	}
	// Every demand is met: split the slack equally on top.
	slack := left / float64(n)
	for i := range shares {
		shares[i] += slack
	}
	return shares
}

// Quantize splits pool whole tokens in proportion to shares, which should
// add up to pool: each gets its share rounded down, and the tokens left go
// one each to the largest fractional parts (the lower index first on a
// tie). The result never adds up to more than pool. order is scratch space;
// it may be nil.
func Quantize(shares []float64, pool uint64, out []uint64, order []int) []uint64 {
	n := len(shares)
	out = resize(out, n)
	var sum uint64
	frac := func(i int) float64 {
		s := shares[i]
		if !(s > 0) {
			return 0
		}
		return s - math.Floor(s)
	}
	for i, s := range shares {
		switch {
		case !(s > 0): // negative, zero or NaN
			out[i] = 0
		case s >= float64(pool):
			out[i] = pool
		default:
			out[i] = uint64(s)
		}
		sum += out[i]
	}
	if sum > pool {
		// Shares adding up to more than the pool (or rounding errors):
		// take back from the largest grants.
		for sum > pool {
			big := 0
			for i := range out {
				if out[i] > out[big] {
					big = i
				}
			}
			out[big]--
			sum--
		}
		return out
	}
	order = resize(order, n)
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		if c := cmp.Compare(frac(b), frac(a)); c != 0 {
			return c
		}
		return a - b
	})
	for _, i := range order {
		if sum >= pool || frac(i) <= 0 {
			break
		}
		out[i]++
		sum++
	}
	return out
}

func resize[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

// MaxFillInterval bounds the fill interval of very slow limits; one slower
// than a token in this long fills none.
const MaxFillInterval = time.Hour

// FillInterval returns the fill interval for l, a whole number of seconds,
// and the pool of tokens one fill adds across all clients. It is the
// smallest interval from 1 s to 60 s over which the limit adds a whole
// number of tokens (so that nothing is lost to rounding: 100 per minute
// fills 5 tokens every 3 s); failing that, 1 s with the pool rounded down
// when the limit allows at least one token a second, or else the time one
// token takes, rounded up to whole seconds (at most MaxFillInterval). A
// limit with no rate has pool 0.
func FillInterval(l limiter.Limit) (time.Duration, uint64) {
	if l.Rate == 0 || l.Period <= 0 {
		return time.Second, 0
	}
	for s := int64(1); s <= 60; s++ {
		// tokens in s seconds: Rate·s / Period, exact in integers.
		num := new128(l.Rate, uint64(s)*uint64(time.Second))
		if q, r, ok := num.div(uint64(l.Period)); ok && r == 0 && q >= 1 {
			return time.Duration(s) * time.Second, q
		}
	}
	perSec := float64(l.Rate) / l.Period.Seconds()
	if perSec >= 1 {
		return time.Second, uint64(perSec)
	}
	s := math.Ceil(1 / perSec)
	if s > MaxFillInterval.Seconds() {
		return MaxFillInterval, uint64(perSec * MaxFillInterval.Seconds())
	}
	return time.Duration(s) * time.Second, 1
}

// BucketTime and MinBucket size the token bucket of a client that spends
// every token (see the package doc): BucketTime of its tokens, and at
// least MinBucket.
const (
	BucketTime = 250 * time.Millisecond
	MinBucket  = 5
)

// Spends is how far a client's demand must exceed its tokens for it to
// count as spending every token: a client near the level, whose measured
// demand crosses its tokens with the noise of its arrivals, keeps the
// larger bucket (a small one would waste the tokens its bursts need).
const Spends = 0.10

// MaxTokens is the bucket size for tokens per fill over fill out of pool,
// for a client whose demand is demand requests per second (Unknown: not
// measured). The size for a client under the level (its tokens cover its
// demand) is its part of the limit's burst, and at least one fill: its
// bucket stays about full, so a new one adds little, and it absorbs the
// noise of its arrivals. The size for a client above the level is
// BucketTime of its tokens, at least MinBucket, and no more than the first.
func MaxTokens(l limiter.Limit, pool, tokens uint64, fill time.Duration, demand float64) uint64 {
	if pool == 0 || tokens == 0 {
		return tokens
	}
	burst := l.Burst
	if burst == 0 {
		burst = l.Rate
	}
	most := max(uint64(float64(burst)*float64(tokens)/float64(pool)), tokens)
	sec := max(fill.Seconds(), 1)
	if demand != Unknown && demand*sec < (1+Spends)*float64(tokens) {
		return most
	}
	m := uint64(math.Ceil(float64(tokens) * BucketTime.Seconds() / sec))
	return min(most, max(m, MinBucket))
}

// Headroom is added to the demand of a client below the level the others
// share: it gets its demand and this much more, rounded up, so that the
// bursts of its traffic fit in its token bucket and measurement noise does
// not take requests it makes.
const Headroom = 0.05

// Confidence is the headroom, in standard errors of its measured demand,
// of a client below the level when that is more than Headroom: a demand
// measured from a few dozen requests is off by 10-20% as often as not (a
// Poisson count n has a standard error of √n), and a grant of the measured
// demand plus 5% would refuse the client what it asks for whenever it was
// measured low.
const Confidence = 2.0

// MaxHeadroom bounds the headroom of all the clients below the level of a
// bucket together, as a share of the pool: beyond their 5% (which adds up
// to at most 5% of the pool), the standard errors' part is scaled down to
// fit. The tokens assigned so exceed a fill's pool by at most this share
// and the rounding up of each client's grant.
const MaxHeadroom = 0.10

// headroom returns the tokens per fill a client below the level gets on top
// of its demand r (tokens per fill) whose standard error is noise.
func headroom(r, noise float64) float64 {
	if math.IsNaN(noise) || noise < 0 {
		noise = 0
	}
	return max(r*Headroom, Confidence*noise)
}

// Divider divides a pool of tokens among clients by their demands; its
// scratch space makes Divide allocate nothing once warm. The zero value is
// ready to use; it is not safe for concurrent use.
type Divider struct {
	raw, shares, sub []float64
	head             []float64
	idx              []int
	order            []int
	subTokens        []uint64
}

// Divide sets out[i] to client i's tokens per fill out of pool, for
// demands in requests per second (Unknown: unbounded) over fill, whose
// standard errors are noise (requests per second; nil: none), and returns
// out:
//
//   - The pool is divided by MaxMin over the demands in tokens per fill.
//   - If every demand fits, the shares (each demand and an equal part of
//     the slack) are rounded by Quantize: they add up to the pool.
//   - Otherwise a client whose demand fits under the level the others
//     share gets its demand with Headroom, or Confidence standard errors
//     if more, rounded up (but not above the level, rounded up), so that
//     it receives at least what it asks for;
//     the clients above the level split what the pool holds beyond the
//     demands of the others, rounded by Quantize. The headroom is counted
//     as unused: a client only takes it in bursts, so the tokens admitted
//     add up to the pool, not to the pool less the headroom, while the
//     tokens assigned may exceed it by the headroom.
func (d *Divider) Divide(pool uint64, fill time.Duration, demands, noise []float64, out []uint64) []uint64 {
	n := len(demands)
	out = resize(out, n)
	d.raw = resize(d.raw, n)
	sec := fill.Seconds()
	for i, r := range demands {
		switch {
		case r == Unknown:
			d.raw[i] = Unknown
		case r > 0:
			d.raw[i] = r * sec
		default: // zero, negative or NaN
			d.raw[i] = 0
		}
	}
	d.shares = MaxMin(float64(pool), d.raw, d.shares, d.order)
	level, fits := 0.0, true
	for i := range d.raw {
		if d.raw[i] > d.shares[i] {
			fits = false
			level = d.shares[i] // every client above the level has it
		}
	}
	if fits {
		return Quantize(d.shares, pool, out, d.order)
	}
	left := float64(pool)
	d.idx, d.sub = d.idx[:0], d.sub[:0]
	d.head = resize(d.head, n)
	var noisy, base float64 // headroom beyond Headroom, and Headroom's own
	for i, r := range d.raw {
		if r > level {
			d.idx = append(d.idx, i)
			d.sub = append(d.sub, level)
			continue
		}
		left -= r
		var se float64
		if i < len(noise) {
			se = noise[i] * sec
		}
		d.head[i] = headroom(r, se)
		base += r * Headroom
		noisy += d.head[i] - r*Headroom
	}
	// The headroom is granted on top of the pool: keep it all within
	// MaxHeadroom of the pool, taking it from the noisy part, so that
	// clients under the level who all rise at once cannot take much more
	// than the limit before their next report.
	scale := 1.0
	if room := MaxHeadroom*float64(pool) - base; noisy > 0 && noisy > room {
		scale = max(room, 0) / noisy
	}
	for i, r := range d.raw {
		if r > level {
			continue
		}
		h := r*Headroom + (d.head[i]-r*Headroom)*scale
		out[i] = uint64(math.Ceil(min(r+h, max(r, level))))
	}
	subPool := uint64(max(0, math.Floor(left+1e-9)))
	d.subTokens = Quantize(d.sub, subPool, d.subTokens, d.order)
	for j, i := range d.idx {
		out[i] = d.subTokens[j]
	}
	return out
}
