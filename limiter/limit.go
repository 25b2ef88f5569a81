package limiter

import "time"

// Limit describes a token bucket: Rate tokens are added every Period, and the
// bucket holds at most Burst tokens. A fresh bucket is full.
//
// A Limit with Rate 0 refuses every non-zero request (a block list). Burst 0
// means "the same as Rate", as envoyproxy/ratelimit users expect: a limit of
// 100 per minute admits 100 at once, then one every 600 ms.
type Limit struct {
	Rate   uint64
	Period time.Duration
	Burst  uint64
}
