package limiter

import (
	"math/big"
	"math/rand/v2"
	"testing"
	"time"
)

// t0 is an arbitrary whole second well after the epoch.
var t0 = time.Date(2026, 11, 21, 6, 0, 0, 0, time.UTC).UnixNano()

func TestTakeBurstThenRate(t *testing.T) {
	l := Limit{Rate: 3, Period: time.Second}
	var tat int64
	for i := range 3 {
		var r Result
		tat, r = l.Take(tat, 1, t0)
		if !r.Allowed || r.Remaining != uint64(2-i) {
			t.Fatalf("take %d: %+v", i, r)
		}
	}
	_, r := l.Take(tat, 1, t0)
	if r.Allowed || r.Remaining != 0 {
		t.Fatalf("4th take allowed: %+v", r)
	}
	// One token every 1/3 s, rounded up to the nanosecond.
	if r.RetryAfter != 333333334 {
		t.Fatalf("RetryAfter = %d, want 333333334", r.RetryAfter)
	}
	if r.ResetAfter != time.Second {
		t.Fatalf("ResetAfter = %v, want 1s", r.ResetAfter)
	}
	// One nanosecond early is still refused; on time is admitted.
	if _, r := l.Take(tat, 1, t0+int64(r.RetryAfter)-1); r.Allowed {
		t.Fatal("admitted before RetryAfter")
	}
	if _, r := l.Take(tat, 1, t0+int64(r.RetryAfter)); !r.Allowed {
		t.Fatal("refused at RetryAfter")
	}
}

func TestTakeHitsAndBurst(t *testing.T) {
	l := Limit{Rate: 10, Period: time.Minute, Burst: 20}
	tat, r := l.Take(0, 15, t0)
	if !r.Allowed || r.Remaining != 5 {
		t.Fatalf("first: %+v", r)
	}
	// 15 tokens missing at 6 s each: full again in 90 s.
	if r.ResetAfter != 90*time.Second {
		t.Fatalf("ResetAfter = %v", r.ResetAfter)
	}
	_, r = l.Take(tat, 8, t0)
	if r.Allowed || r.Remaining != 5 || r.RetryAfter != 18*time.Second {
		t.Fatalf("over: %+v", r)
	}
	// Zero hits only looks.
	tat2, r := l.Take(tat, 0, t0)
	if !r.Allowed || r.Remaining != 5 || tat2 != tat {
		t.Fatalf("look: %+v", r)
	}
	// More than the burst can never fit.
	if _, r := l.Take(0, 21, t0); r.Allowed || r.RetryAfter != Never {
		t.Fatalf("hits > burst: %+v", r)
	}
}

func TestBlockList(t *testing.T) {
	l := Limit{Rate: 0, Period: time.Second}
	if _, r := l.Take(0, 1, t0); r.Allowed || r.RetryAfter != Never {
		t.Fatalf("rate 0 admitted: %+v", r)
	}
}

// TestExactOverLongRuns checks the bucket against an independent model over
// hundreds of thousands of random requests: tokens arrive one at a time at the
// instants k × period / rate after the epoch (computed with big integers), the
// bucket holds at most burst of them, and a request takes one if there is one.
func TestExactOverLongRuns(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, l := range []Limit{
		{Rate: 3, Period: time.Second},
		{Rate: 7, Period: time.Minute, Burst: 2},
		{Rate: 1000, Period: time.Minute},
		{Rate: 1_000_000_007, Period: time.Second, Burst: 5},
		{Rate: 1, Period: 24 * time.Hour},
	} {
		var tat int64
		now := t0 + rng.Int64N(int64(time.Second)) // start off the token grid
		tokens, last := l.Capacity(), tokenTime(l, now)
		for i := range 200_000 {
			now += rng.Int64N(int64(l.Period)/int64(l.Rate)*3 + 2)
			if now > t0+100*365*24*int64(time.Hour) {
				break // int64 nanoseconds end in 2262
			}
			tt := tokenTime(l, now)
			earned := new(big.Int).Sub(tt, last)
			last = tt
			if earned.Cmp(new(big.Int).SetUint64(l.Capacity())) >= 0 {
				tokens = l.Capacity()
			} else {
				tokens = min(l.Capacity(), tokens+earned.Uint64())
			}
			want := tokens > 0
			if want {
				tokens--
			}
			var r Result
			tat, r = l.Take(tat, 1, now)
			if r.Allowed != want || r.Remaining != tokens {
				t.Fatalf("%+v request %d: got %+v, model says allowed=%v remaining=%d", l, i, r, want, tokens)
			}
		}
	}
}

func tokenTime(l Limit, now int64) *big.Int {
	x := new(big.Int).Mul(big.NewInt(now-epoch), new(big.Int).SetUint64(l.Rate))
	return x.Quo(x, big.NewInt(int64(l.Period)))
}

func TestRetryAfterIsTight(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 10_000 {
		l := Limit{Rate: 1 + rng.Uint64N(1000), Period: time.Duration(1+rng.Int64N(3600)) * time.Second}
		l.Burst = 1 + rng.Uint64N(l.Rate*2)
		now := t0 + rng.Int64N(int64(time.Hour))
		tat, _ := l.Take(0, l.Capacity(), now)
		hits := 1 + rng.Uint64N(l.Capacity())
		_, r := l.Take(tat, hits, now)
		if r.Allowed {
			t.Fatalf("%+v: empty bucket admitted %d", l, hits)
		}
		at := now + int64(r.RetryAfter)
		if _, r2 := l.Take(tat, hits, at-1); r2.Allowed {
			t.Fatalf("%+v hits %d: admitted 1ns before RetryAfter %v", l, hits, r.RetryAfter)
		}
		if _, r2 := l.Take(tat, hits, at); !r2.Allowed {
			t.Fatalf("%+v hits %d: refused at RetryAfter %v", l, hits, r.RetryAfter)
		}
		full := now + int64(r.ResetAfter)
		if l.Idle(tat, full-1) || !l.Idle(tat, full) {
			t.Fatalf("%+v: ResetAfter %v is not the moment the bucket is full", l, r.ResetAfter)
		}
	}
}

func TestValid(t *testing.T) {
	for _, tc := range []struct {
		l    Limit
		want bool
	}{
		{Limit{Rate: 1, Period: time.Second}, true},
		{Limit{Rate: 0, Period: time.Second}, true},
		{Limit{Rate: 1, Period: 0}, false},
		{Limit{Rate: MaxRate + 1, Period: time.Second}, false},
		{Limit{Rate: 1, Period: time.Second, Burst: MaxRate + 1}, false},
	} {
		if got := tc.l.Valid(); got != tc.want {
			t.Errorf("%+v.Valid() = %v", tc.l, got)
		}
	}
}

func BenchmarkLimitTake(b *testing.B) {
	l := Limit{Rate: 1_000_000_000, Period: time.Second}
	var tat int64
	now := t0
	for i := 0; i < b.N; i++ {
		now += 3
		tat, _ = l.Take(tat, 1, now)
	}
}

func TestGive(t *testing.T) {
	l := Limit{Rate: 10, Period: time.Second}
	tat, _ := l.Take(0, 10, t0)
	tat = l.Give(tat, 4, t0)
	if _, r := l.Take(tat, 0, t0); r.Remaining != 4 {
		t.Fatalf("after giving 4 back: remaining %d", r.Remaining)
	}
	// Giving back more than was taken fills the bucket and no more.
	tat = l.Give(tat, 100, t0)
	if _, r := l.Take(tat, 0, t0); r.Remaining != 10 || !l.Idle(tat, t0) {
		t.Fatalf("overfilled: %+v", r)
	}
}

func TestTakeReserve(t *testing.T) {
	l := Limit{Rate: 100, Period: time.Second}
	tat, r := l.TakeReserve(0, 60, 30, t0)
	if !r.Allowed || r.Remaining != 40 {
		t.Fatalf("first: %+v", r)
	}
	// 40 left: 15 more with a reserve of 30 would leave 25.
	if _, r := l.TakeReserve(tat, 15, 30, t0); r.Allowed || r.Remaining != 40 || r.RetryAfter != 50*time.Millisecond {
		t.Fatalf("into the reserve: %+v", r)
	}
	// Without a reserve it fits.
	if _, r := l.TakeReserve(tat, 15, 0, t0); !r.Allowed || r.Remaining != 25 {
		t.Fatalf("no reserve: %+v", r)
	}
	// A reserve larger than the burst can never be met.
	if _, r := l.TakeReserve(0, 1, 100, t0); r.Allowed || r.RetryAfter != Never {
		t.Fatalf("reserve = burst: %+v", r)
	}
}

func TestValidBoundsTokensPerSecond(t *testing.T) {
	if !(Limit{Rate: 1<<32 - 1, Period: time.Second}).Valid() {
		t.Error("envoy's largest requests_per_unit per second is invalid")
	}
	if (Limit{Rate: 1 << 36, Period: time.Second, Burst: 2}).Valid() {
		t.Error("2^36 per second is valid")
	}
	if (Limit{Rate: 1 << 23, Period: time.Millisecond}).Valid() {
		t.Error("2^23 per millisecond is valid")
	}
	// The fastest valid limit still refills decades from now.
	l := Limit{Rate: 1<<32 - 1, Period: time.Second, Burst: 2}
	far := time.Date(2090, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	tat, _ := l.Take(0, 2, far)
	if _, r := l.Take(tat, 1, far+int64(time.Microsecond)); !r.Allowed {
		t.Fatalf("no refill in 2090: %+v", r)
	}
}

func TestCapacity(t *testing.T) {
	for _, tc := range []struct {
		l    Limit
		want uint64
	}{
		{Limit{Rate: 100, Period: time.Minute}, 100},         // Burst 0: the rate
		{Limit{Rate: 2, Period: time.Minute, Burst: 10}, 10}, // an explicit burst
		{Limit{Rate: 50, Period: time.Minute, Burst: 1}, 1},  // smaller than the rate
		{Limit{Rate: 0, Period: time.Minute}, 0},             // a block list holds nothing
	} {
		if got := tc.l.Capacity(); got != tc.want {
			t.Errorf("%+v.Capacity() = %d, want %d", tc.l, got, tc.want)
		}
		// A fresh bucket admits exactly its capacity at once.
		if tc.want > 0 {
			if _, r := tc.l.Take(0, tc.want, epoch); !r.Allowed || r.Remaining != 0 {
				t.Errorf("%+v: a fresh bucket refused its capacity: %+v", tc.l, r)
			}
		}
	}
}
