package quotasim

import (
	"math"
	"time"
)

// TokenBucket is the local bucket Envoy builds from a token_bucket
// assignment (its AtomicTokenBucketImpl): it starts full with MaxTokens,
// refills continuously at tokens_per_fill / fill_interval tokens a second
// (fill_interval in whole seconds), never holds more than MaxTokens, and
// admits a request when a whole token is there. Time is passed in.
type TokenBucket struct {
	max    float64
	rate   float64 // tokens per second
	tokens float64
	last   time.Time
}

// NewTokenBucket returns a full bucket of max tokens refilled at rate
// tokens a second from now.
func NewTokenBucket(now time.Time, max uint32, rate float64) *TokenBucket {
	return &TokenBucket{max: float64(max), rate: rate, tokens: float64(max), last: now}
}

// Take takes one token at now and reports whether there was one. A clock
// that goes backwards refills nothing.
func (b *TokenBucket) Take(now time.Time) bool {
	if el := now.Sub(b.last); el > 0 {
		b.tokens = math.Min(b.max, b.tokens+el.Seconds()*b.rate)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true
	}
	return false
}

// Rate returns the refill rate in tokens a second.
func (b *TokenBucket) Rate() float64 { return b.rate }
