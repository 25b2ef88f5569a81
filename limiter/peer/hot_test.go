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

	if n := st.settle(leaseGrant{granted: 3, remaining: 300, resetAfter: time.Second}, nil, t0, pol); n != 3 {
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
	if n := st.settle(leaseGrant{}, errors.New("owner unreachable"), t0+3, pol); n != 0 || st.renewing {
		t.Fatalf("failed lease: %d granted, renewing %v", n, st.renewing)
	}
	if _, _, ask := decide(one, t0+3); ask != (leaseAsk{want: 11}) {
		t.Fatalf("check after a failed lease: ask %+v, want 11", ask)
	}

	// A grant of nothing with a retry time is a cached refusal for
	// one-token checks; larger checks still go to the owner.
	st.settle(leaseGrant{remaining: 0, resetAfter: time.Minute, retryAfter: 50 * time.Millisecond}, nil, t0+4, pol)
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
	if decided || ask != (leaseAsk{want: 2}) {
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
