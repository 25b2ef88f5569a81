// Package limiter is levee's rate limiting engine: token buckets expressed as
// GCRA (the generic cell rate algorithm), and a bounded, sharded store of them.
//
// # The algorithm
//
// A token bucket with rate r tokens per period p and capacity b is fully
// described by one number, its theoretical arrival time (TAT): the instant at
// which the bucket would be full again. A request for n tokens at time t fits
// when the bucket holds n tokens, that is when max(TAT, t) + n/r - t ≤ b/r;
// if it fits, TAT becomes max(TAT, t) + n/r.
//
// levee keeps TAT in token units rather than nanoseconds: time is mapped to
// "token time" T(t) = ⌊(t - epoch) × r / p⌋, the number of tokens the bucket
// would have earned since a fixed epoch. In those units every step is an
// exact integer operation (n/r is just n), so a limit of 3 per second admits
// exactly 3 per second forever, with no rounding drift. Converting back to
// durations (for reset and retry times) uses 128-bit intermediate products and
// rounds up, so a caller told to retry after d is never refused for being too
// early.
//
// All functions take the current time as an argument; nothing here reads the
// clock, starts goroutines or does I/O. That keeps decisions deterministic in
// tests and lets the cluster layer move bucket state between nodes.
package limiter

import (
	"math"
	"math/bits"
	"time"
)

// Limit describes a token bucket: Rate tokens are added every Period, and the
// bucket holds at most Burst tokens. A fresh bucket is full.
//
// A Limit with Rate 0 refuses every non-zero request (a block list). Burst 0
// means "the same as Rate", as envoyproxy/ratelimit users expect: a limit of
// 100 per minute admits 100 at once, then one every 600 ms. Capacity applies
// that default; read the bucket's size through it, never from Burst.
type Limit struct {
	Rate   uint64
	Period time.Duration
	Burst  uint64
}

// Result is the outcome of one request against one bucket.
type Result struct {
	// Allowed reports whether the tokens were taken.
	Allowed bool
	// Remaining is the number of tokens left in the bucket after the
	// decision (after taking them when Allowed).
	Remaining uint64
	// ResetAfter is the time until the bucket is full again.
	ResetAfter time.Duration
	// RetryAfter is the time until the same request would fit, when it was
	// refused; zero when Allowed. It is Never when the request can never fit
	// (more tokens than the burst, or a Rate of zero).
	RetryAfter time.Duration
}

// Never is the RetryAfter of a request that no amount of waiting will admit.
const Never time.Duration = -1

// epoch is the origin of token time. Counting from 2026 rather than 1970
// leaves room in an int64 for rates of billions of tokens per second: at
// MaxTokensPerSecond token time saturates in 2093. Every node must use the
// same epoch, since bucket state moves between nodes.
var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()

// Capacity returns the most tokens the bucket holds: Burst, or Rate when
// Burst is 0.
func (l Limit) Capacity() uint64 {
	if l.Burst == 0 {
		return l.Rate
	}
	return l.Burst
}

// Valid reports whether l can be used: a positive period, a rate and burst
// of at most MaxRate, and at most MaxTokensPerSecond, so that token time
// fits in an int64 until the 2090s.
func (l Limit) Valid() bool {
	if l.Period <= 0 || l.Rate > MaxRate || l.Capacity() > MaxRate {
		return false
	}
	hi, lo := bits.Mul64(l.Rate, uint64(time.Second))
	if hi >= uint64(l.Period) {
		return false
	}
	perSecond, _ := bits.Div64(hi, lo, uint64(l.Period))
	return perSecond <= MaxTokensPerSecond
}

// MaxRate is the largest Rate and Burst a Limit may have.
const MaxRate = 1 << 40

// MaxTokensPerSecond is the fastest refill a Limit may have: the largest
// requests_per_unit envoyproxy/ratelimit accepts (2^32 - 1) per second.
const MaxTokensPerSecond = 1 << 32

// maxTokenTime is where token time saturates, leaving room to add a burst
// and hits without overflowing.
const maxTokenTime = math.MaxInt64 - 1<<42

// tokensAt converts the instant now (Unix nanoseconds) into token time.
func (l Limit) tokensAt(now int64) int64 {
	since := now - epoch
	if since <= 0 {
		return 0
	}
	hi, lo := bits.Mul64(uint64(since), l.Rate)
	if hi >= uint64(l.Period) {
		return maxTokenTime
	}
	q, _ := bits.Div64(hi, lo, uint64(l.Period))
	if q > maxTokenTime {
		return maxTokenTime
	}
	return int64(q)
}

// instantOf returns the first Unix nanosecond at which token time reaches t.
func (l Limit) instantOf(t int64) int64 {
	if t <= 0 {
		return epoch
	}
	hi, lo := bits.Mul64(uint64(t), uint64(l.Period))
	if hi >= l.Rate {
		return math.MaxInt64
	}
	q, r := bits.Div64(hi, lo, l.Rate)
	if r != 0 {
		q++
	}
	if q > math.MaxInt64-uint64(epoch) {
		return math.MaxInt64
	}
	return epoch + int64(q)
}

// until returns the time from now until token time reaches t, never negative.
func (l Limit) until(t int64, now int64) time.Duration {
	at := l.instantOf(t)
	if at <= now {
		return 0
	}
	return time.Duration(at - now)
}

// Take decides a request for hits tokens at now (Unix nanoseconds) against a
// bucket whose state is tat, and returns the new state with the result. A
// tat of zero (or any tat in the past) is a full bucket. Take is a pure
// function: the caller stores the returned state.
//
// A request for zero hits only looks: it is always allowed and reports the
// bucket as it is.
func (l Limit) Take(tat int64, hits uint64, now int64) (int64, Result) {
	return l.TakeReserve(tat, hits, 0, now)
}

// TakeReserve is Take for a request that may only draw while the bucket
// keeps reserve tokens after it: a capacity budget's lower priorities run dry
// while the higher ones still have tokens. Remaining counts all tokens left,
// reserve included.
func (l Limit) TakeReserve(tat int64, hits, reserve uint64, now int64) (int64, Result) {
	if l.Rate == 0 || l.Period <= 0 {
		if hits == 0 {
			return tat, Result{Allowed: true}
		}
		return tat, Result{RetryAfter: Never}
	}
	now = max(now, epoch) // token time starts at the epoch
	burst := int64(l.Capacity())
	nowT := l.tokensAt(now)
	t := max(tat, nowT)
	available := burst - (t - nowT)
	if available < 0 {
		// Only after the limit shrank under an existing bucket.
		available = 0
	}
	need := hits + reserve
	if need < hits {
		need = math.MaxUint64
	}
	if hits == 0 || need <= uint64(available) {
		t += int64(hits)
		return t, Result{
			Allowed:    true,
			Remaining:  uint64(available) - hits,
			ResetAfter: l.until(t, now),
		}
	}
	res := Result{Remaining: uint64(available), ResetAfter: l.until(t, now), RetryAfter: Never}
	if need <= uint64(burst) {
		res.RetryAfter = l.until(t+int64(need)-burst, now)
	}
	return tat, res
}

// Give returns n tokens to a bucket with state tat at now — tokens taken
// earlier and not used, such as the unused part of a lease — and returns the
// new state. A bucket never holds more than its burst.
func (l Limit) Give(tat int64, n uint64, now int64) int64 {
	if l.Rate == 0 || l.Period <= 0 {
		return tat
	}
	nowT := l.tokensAt(now)
	if n >= uint64(math.MaxInt64) || tat-int64(n) <= nowT {
		return 0
	}
	return tat - int64(n)
}

// Idle reports whether a bucket with state tat is full at now, so that
// forgetting it loses nothing.
func (l Limit) Idle(tat int64, now int64) bool {
	return l.Rate == 0 || tat <= l.tokensAt(now)
}
