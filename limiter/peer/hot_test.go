package peer

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/ring"
)

// TestLeaseDecision walks one key's hot-key state through a lease's life
// with the pure decision alone: counting towards hotness, one ask at a
// time, admitting from the grant, asking again when it runs out, and
// giving up a failed ask.
func TestLeaseDecision(t *testing.T) {
	pol := hotPolicy{threshold: 8, period: int64(100 * time.Millisecond)}
	l := limiter.Limit{Rate: 400, Period: time.Hour} // capacity 400: at most 400 ÷ (4 × 2 nodes) = 50 a lease
	one := limiter.Request{Key: 1, Limit: l, Hits: 1}
	t0 := time.Unix(1_700_000_000, 0).UnixNano()
	st := &keyState{limit: l, window: t0}
	decide := func(req limiter.Request, now int64) (limiter.Result, bool, leaseAsk) {
		t.Helper()
		return st.decide(&req, now, 2, pol)
	}

	for i := range 7 {
		if _, decided, ask := decide(one, t0); decided || ask != (leaseAsk{}) {
			t.Fatalf("check %d below the threshold: decided %v, ask %+v", i, decided, ask)
		}
	}
	if _, decided, ask := decide(one, t0); decided || ask != (leaseAsk{want: 8}) {
		t.Fatalf("check reaching the threshold: decided %v, ask %+v, want an ask for the 8 forwarded", decided, ask)
	}
	if _, _, ask := decide(one, t0); ask != (leaseAsk{}) {
		t.Fatalf("asked again (%+v) while a lease is outstanding", ask)
	}

	if n := st.settle(leaseGrant{granted: 3, remaining: 300, resetAfter: time.Second}, nil, false, t0, pol); n != 3 {
		t.Fatalf("settle counted %d tokens granted, want 3", n)
	}
	for i := range 3 {
		res, decided, ask := decide(one, t0+1)
		if want := uint64(300 + 2 - i); !decided || !res.Allowed || res.Remaining != want || ask != (leaseAsk{}) {
			t.Fatalf("check %d on the lease: %+v decided %v ask %+v, want allowed with %d remaining", i, res, decided, ask, want)
		}
	}
	// The lease is spent: the check is forwarded, and the key, still hot
	// (10 forwarded in this window), asks for another.
	if _, decided, ask := decide(one, t0+2); decided || ask != (leaseAsk{want: 10}) {
		t.Fatalf("check after the lease ran out: decided %v, ask %+v", decided, ask)
	}
	// The ask never reaches the owner: the next check may ask again.
	if n := st.settle(leaseGrant{}, errors.New("owner unreachable"), false, t0+3, pol); n != 0 || st.renewing {
		t.Fatalf("failed lease: %d granted, renewing %v", n, st.renewing)
	}
	if _, _, ask := decide(one, t0+3); ask != (leaseAsk{want: 11}) {
		t.Fatalf("check after a failed lease: ask %+v, want 11", ask)
	}

	// A grant of nothing with a retry time is a cached refusal for
	// one-token checks; larger checks still go to the owner.
	st.settle(leaseGrant{remaining: 0, resetAfter: time.Minute, retryAfter: 50 * time.Millisecond}, nil, false, t0+4, pol)
	if res, decided, _ := decide(one, t0+4+int64(10*time.Millisecond)); !decided || res.Allowed || res.RetryAfter != 40*time.Millisecond {
		t.Fatalf("one-token check during a cached refusal: %+v decided %v", res, decided)
	}
	if _, decided, _ := decide(limiter.Request{Key: 1, Limit: l, Hits: 2}, t0+5); decided {
		t.Fatal("a two-token check was refused from the cache")
	}
	// A check with a reserve is always the owner's, and does not count.
	count := st.count
	if _, decided, ask := decide(limiter.Request{Key: 1, Limit: l, Hits: 1, Reserve: 5}, t0+int64(time.Second)); decided || ask != (leaseAsk{}) || st.count != count {
		t.Fatalf("reserve check: decided %v, ask %+v, count %d → %d", decided, ask, count, st.count)
	}
}

// TestLeaseAskIsBounded: a lease asks for what the key was forwarded, at
// most the capacity ÷ (4 × nodes) and at least one token, and gives back
// what is left of the previous lease.
func TestLeaseAskIsBounded(t *testing.T) {
	pol := hotPolicy{threshold: 1, period: int64(100 * time.Millisecond)}
	now := time.Unix(1_700_000_000, 0).UnixNano()
	for _, tc := range []struct {
		l     limiter.Limit
		hits  uint64
		nodes int
		want  uint64
	}{
		{limiter.Limit{Rate: 1000, Period: time.Second}, 7, 2, 7},              // what was forwarded
		{limiter.Limit{Rate: 1000, Period: time.Second}, 900, 2, 125},          // 1000 ÷ 8
		{limiter.Limit{Rate: 10, Period: time.Second, Burst: 400}, 900, 4, 25}, // the burst, not the rate
		{limiter.Limit{Rate: 4, Period: time.Second}, 3, 4, 1},                 // never less than one
	} {
		st := &keyState{limit: tc.l, window: now}
		if _, _, ask := st.decide(&limiter.Request{Key: 1, Limit: tc.l, Hits: tc.hits}, now, tc.nodes, pol); ask != (leaseAsk{want: tc.want}) {
			t.Errorf("%+v, %d hits, %d nodes: ask %+v, want %d", tc.l, tc.hits, tc.nodes, ask, tc.want)
		}
	}
	// A check larger than what is left of the lease is forwarded, and the
	// next ask gives the rest back.
	l := limiter.Limit{Rate: 1000, Period: time.Second}
	st := &keyState{limit: l, window: now, lease: 3, leaseUntil: now + pol.period}
	if _, decided, ask := st.decide(&limiter.Request{Key: 1, Limit: l, Hits: 5}, now, 2, pol); decided || ask != (leaseAsk{want: 5, returned: 3}) || st.lease != 0 {
		t.Fatalf("decided %v, ask %+v, lease left %d; want the 3 left given back", decided, ask, st.lease)
	}
}

// TestHotnessWindow: forwarded tokens count for two lease periods, and a
// window with nothing in it forgets the one before.
func TestHotnessWindow(t *testing.T) {
	pol := hotPolicy{threshold: 10, period: int64(100 * time.Millisecond)}
	l := limiter.Limit{Rate: 1000, Period: time.Second}
	req := limiter.Request{Key: 1, Limit: l, Hits: 6}
	now := time.Unix(1_700_000_000, 0).UnixNano()
	st := &keyState{limit: l, window: now}
	st.decide(&req, now, 2, pol)
	if _, _, ask := st.decide(&req, now+pol.period, 2, pol); ask.want == 0 {
		t.Fatal("6 + 6 tokens in consecutive windows did not make the key hot")
	}
	st = &keyState{limit: l, window: now}
	st.decide(&req, now, 2, pol)
	if _, _, ask := st.decide(&req, now+2*pol.period, 2, pol); ask.want != 0 {
		t.Fatalf("6 tokens two windows apart made the key hot (ask %+v)", ask)
	}
}

// TestLocalStartsNoIO: deciding a hot key under its shard's lock returns
// the lease to ask for and starts nothing — no goroutine, no connection;
// the lease goes out with the forwarded check, and when the owner cannot
// be reached the ask is given up at once so that the key may ask again.
func TestLocalStartsNoIO(t *testing.T) {
	var dials atomic.Int64
	self := ring.Member{ID: "self", Addr: "127.0.0.1:1"}
	r := NewRouter(Config{
		Self:         self,
		Store:        limiter.NewStore(1 << 10),
		HotThreshold: 2,
		Dial: func(string) (*grpc.ClientConn, error) {
			dials.Add(1)
			return nil, errors.New("no network in this test")
		},
	})
	defer r.Close()
	rg := ring.New([]ring.Member{self, {ID: "owner", Addr: "127.0.0.1:2"}})
	r.SetRing(rg)
	key := keyOwnedBy(t, rg, "owner", 0)
	req := limiter.Request{Key: key, Limit: limiter.Limit{Rate: 1000, Period: time.Hour}, Hits: 1}
	now := time.Now().UnixNano()

	r.local(&req, 2, now)
	_, decided, ask := r.local(&req, 2, now)
	if ask.gen == 0 {
		t.Fatal("the ask carries no entry generation")
	}
	if ask.gen = 0; decided || ask != (leaseAsk{want: 2}) {
		t.Fatalf("hot key: decided %v, ask %+v, want a lease of 2", decided, ask)
	}
	// Anything local had started would be in the router's WaitGroup (the
	// old design started the lease's RPC there) and would have dialled.
	r.wg.Wait()
	if n := dials.Load(); n != 0 {
		t.Fatalf("deciding dialled the owner %d times", n)
	}
	if n := r.Stats().Leases.Load(); n != 1 {
		t.Fatalf("%d leases counted, want 1", n)
	}

	// Through Take: the lease rides with the forwarded check; the owner is
	// out of reach, so the check falls back and the ask is settled as
	// failed before Take returns.
	fresh := limiter.Request{Key: keyOwnedBy(t, rg, "owner", 1), Limit: req.Limit, Hits: 2}
	res := make([]limiter.Result, 1)
	if err := r.Take(t.Context(), now, []limiter.Request{fresh}, res); err != nil || !res[0].Allowed {
		t.Fatalf("take with the owner unreachable: %+v %v", res[0], err)
	}
	if n := r.Stats().Fallbacks.Load(); n != 1 {
		t.Fatalf("%d fallbacks, want 1", n)
	}
	if n := r.Stats().Leases.Load(); n != 2 {
		t.Fatalf("%d leases counted, want 2", n)
	}
	sh := r.hot.shard(fresh.Key)
	sh.mu.Lock()
	renewing := sh.m[fresh.Key].renewing
	sh.mu.Unlock()
	if renewing {
		t.Fatal("a lease that could not be sent is still outstanding: the key would never ask again")
	}
}

// TestWarmLeaseDecision walks a key far from its limit through warm
// leases with the pure decision alone: its first forwarded check asks for
// nothing, the next asks, one ask at a time; a grant is admitted from for
// the warm period; a lease half used, or in its last quarter-period, asks
// for a renewal topping it up to twice what was used, while it still
// admits; a lapsed lease gives its rest back with the next ask, which is
// twice what was used; and a key too small for warmMin tokens a node is
// never warm-leased.
func TestWarmLeaseDecision(t *testing.T) {
	pol := hotPolicy{threshold: 1 << 20, period: int64(100 * time.Millisecond), warm: int64(10 * time.Second)}
	l := limiter.Limit{Rate: 1000, Period: time.Hour} // 1000 ÷ (4 × 2 nodes) = 125 a lease at most
	one := limiter.Request{Key: 1, Limit: l, Hits: 1}
	t0 := time.Unix(1_700_000_000, 0).UnixNano()
	sec := int64(time.Second)
	st := &keyState{limit: l, window: t0}
	decide := func(now int64) (limiter.Result, bool, leaseAsk) {
		t.Helper()
		return st.decide(&one, now, 2, pol)
	}

	if _, decided, ask := decide(t0); decided || ask != (leaseAsk{}) {
		t.Fatalf("first forwarded check: decided %v, ask %+v, want none (a key seen once parks nothing)", decided, ask)
	}
	if _, decided, ask := decide(t0); decided || ask != (leaseAsk{want: warmMin, warm: true}) {
		t.Fatalf("second forwarded check: decided %v, ask %+v, want a warm ask for %d", decided, ask, warmMin)
	}
	if _, decided, ask := decide(t0); decided || ask != (leaseAsk{}) {
		t.Fatalf("check while the warm ask is outstanding: decided %v, ask %+v", decided, ask)
	}
	st.settle(leaseGrant{granted: warmMin, remaining: 900, resetAfter: time.Minute}, nil, true, t0, pol)
	// Two of four used, early in the period: no renewal yet.
	for i := range 2 {
		if res, decided, ask := decide(t0 + sec); !decided || !res.Allowed || ask != (leaseAsk{}) {
			t.Fatalf("check %d on the warm lease: %+v decided %v ask %+v", i, res, decided, ask)
		}
	}
	// The third leaves one of four: a renewal topping the lease up to
	// twice the three used, the lease still admitting.
	if res, decided, ask := decide(t0 + sec); !decided || !res.Allowed || ask != (leaseAsk{want: 5, warm: true}) {
		t.Fatalf("check leaving a quarter: %+v decided %v ask %+v, want admitted and a renewal for 5", res, decided, ask)
	}
	if res, decided, ask := decide(t0 + sec); !decided || !res.Allowed || ask != (leaseAsk{}) {
		t.Fatalf("last token while the renewal is out: %+v decided %v ask %+v", res, decided, ask)
	}
	// Spent, the renewal not back yet: forwarded, asking nothing more.
	if _, decided, ask := decide(t0 + sec); decided || ask != (leaseAsk{}) {
		t.Fatalf("check after the lease ran out: decided %v, ask %+v", decided, ask)
	}
	// The owner's bucket is at half: nothing granted; the next check asks
	// again (a grant of nothing is no refusal), for twice the four used.
	st.settle(leaseGrant{remaining: 500, resetAfter: time.Minute}, nil, true, t0+sec, pol)
	if _, decided, ask := decide(t0 + sec); decided || ask != (leaseAsk{want: 8, warm: true}) {
		t.Fatalf("check after an empty grant: decided %v, ask %+v", decided, ask)
	}
	st.settle(leaseGrant{granted: 100, remaining: 800, resetAfter: time.Minute}, nil, true, t0+2*sec, pol)
	for i := range 30 {
		if _, decided, ask := decide(t0 + 3*sec); !decided || ask != (leaseAsk{}) {
			t.Fatalf("check %d on the second lease: decided %v ask %+v", i, decided, ask)
		}
	}
	// In the last quarter of the period a check asks for a renewal even
	// with most of the lease left: the 69 held are more than twice the 31
	// used, so it asks for one token, whose grant restarts the period.
	if _, decided, ask := decide(t0 + 10*sec); !decided || ask != (leaseAsk{want: 1, warm: true}) {
		t.Fatalf("check late in the period: decided %v ask %+v, want a renewal for 1", decided, ask)
	}
	st.settle(leaseGrant{}, errors.New("owner unreachable"), true, t0+10*sec, pol)
	// A failed (or empty) renewal is not asked again for this lease.
	if _, decided, ask := decide(t0 + 11*sec); !decided || ask != (leaseAsk{}) {
		t.Fatalf("check after a failed renewal: decided %v ask %+v, want admitted and no ask", decided, ask)
	}
	// The lease lapsed with 68 unused: they go back with the next ask,
	// twice the 32 used.
	if _, decided, ask := decide(t0 + 13*sec); decided || ask != (leaseAsk{want: 64, returned: 68, warm: true}) {
		t.Fatalf("check after the lease lapsed: decided %v, ask %+v, want 64 asked and 68 returned", decided, ask)
	}

	small := limiter.Limit{Rate: 31, Period: time.Hour} // 31 ÷ 8 = 3 < warmMin
	st2 := &keyState{limit: small, window: t0}
	for range 2 {
		if _, decided, ask := st2.decide(&limiter.Request{Key: 2, Limit: small, Hits: 1}, t0, 2, pol); decided || ask != (leaseAsk{}) {
			t.Fatalf("small key: decided %v, ask %+v, want no warm lease", decided, ask)
		}
	}
	// Without a warm period nothing changes: no ask below the threshold.
	cold := &keyState{limit: l, window: t0}
	for range 2 {
		if _, _, ask := cold.decide(&one, t0, 2, hotPolicy{threshold: 8, period: pol.period}); ask != (leaseAsk{}) {
			t.Fatalf("warm leases off: ask %+v", ask)
		}
	}
}

// TestGrantSettlesOnItsOwnEntry: a grant for an entry that was evicted
// (or re-limited) meanwhile lapses instead of landing on the entry that
// replaced it, which may have an ask of its own out: two grants on one
// entry could hold more than the key's share.
func TestGrantSettlesOnItsOwnEntry(t *testing.T) {
	r := NewRouter(Config{Self: ring.Member{ID: "self", Addr: "127.0.0.1:1"}, Store: limiter.NewStore(16), WarmLease: 10 * time.Second})
	defer r.Close()
	l := limiter.Limit{Rate: 1000, Period: time.Hour}
	req := limiter.Request{Key: 42, Limit: l, Hits: 1}
	now := time.Now().UnixNano()
	r.local(&req, 2, now)
	_, _, old := r.local(&req, 2, now) // the second check asks
	if !old.warm || old.gen == 0 {
		t.Fatalf("ask %+v, want a warm one with its entry's generation", old)
	}
	sh := r.hot.shard(req.Key)
	sh.mu.Lock()
	delete(sh.m, req.Key) // evicted
	sh.mu.Unlock()
	r.local(&req, 2, now)
	_, _, fresh := r.local(&req, 2, now)
	if !fresh.warm || fresh.gen == old.gen {
		t.Fatalf("the new entry's ask %+v, want a warm one of another generation than %d", fresh, old.gen)
	}
	r.settle(&lease{key: req.Key, limit: l, leaseAsk: old}, leaseGrant{granted: 100, remaining: 800}, nil)
	sh.mu.Lock()
	st := *sh.m[req.Key]
	sh.mu.Unlock()
	if st.lease != 0 || !st.renewing {
		t.Fatalf("the evicted entry's grant landed on its successor: lease %d, renewing %v", st.lease, st.renewing)
	}
	r.settle(&lease{key: req.Key, limit: l, leaseAsk: fresh}, leaseGrant{granted: 4, remaining: 800}, nil)
	sh.mu.Lock()
	st = *sh.m[req.Key]
	sh.mu.Unlock()
	if st.lease != 4 || st.renewing {
		t.Fatalf("the entry's own grant: lease %d, renewing %v; want 4 and settled", st.lease, st.renewing)
	}
}
