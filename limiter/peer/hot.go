package peer

import (
	"sync"
	"time"

	"github.com/levee-dev/levee/limiter"
)

// hotShards spreads hot-key state over independently locked maps.
const hotShards = 64

// maxHotPerShard bounds the hot-key table (64 × 1024 keys).
const maxHotPerShard = 1024

// hotKeys is what this node knows of the remote keys it forwards. One key
// can take a large share of all traffic (a global capacity budget, a viral
// account). Forwarding every check for it would pin its owner, so a node
// that forwards one key often does two things instead:
//
//   - Refusal cache. When the owner refuses a one-token check because its
//     bucket is empty, it also says when the next token arrives; until then
//     one-token checks for that key are refused here without asking. Other
//     nodes' checks can only push that instant later; only tokens given
//     back (an unused lease, a refund) can bring it earlier, so the cache
//     errs toward refusing, for at most one token interval.
//
//   - Leases (as Google's Doorman does). The node asks the owner for a batch
//     of tokens — about what it forwarded in the last lease period, at most
//     capacity ÷ (4 × nodes) — and admits from it locally for the lease
//     period (100 ms by default), giving unused tokens back with its next
//     request. Leased tokens leave the owner's bucket when granted, so no
//     token is ever admitted twice; the error is only in *when* a token is
//     used. Over any time window the cluster admits at most what one exact
//     bucket would, plus the tokens leased out at the window's start: at
//     most capacity ÷ 4 per key across the cluster, and in steady state
//     about one lease period of the key's traffic. Tokens leased but never
//     used (the traffic stops before the lease ends) are given back on the
//     next lease or lapse, which errs toward refusing, never toward
//     admitting.
//
//   - Warm leases. Most keys are far from their limits, and a node that
//     forwards such a key a few times a second pays a peer hop for each
//     check although the answer is never in doubt. With a warm lease period
//     set, a key's second and later forwarded checks also ask for a few
//     tokens in the same take — twice what the node used of its last
//     lease, at least warmMin, at most capacity ÷ (4 × nodes) — and the
//     owner grants them only while the bucket keeps at least half its
//     capacity after the grant. The node admits from them for the warm
//     lease period (seconds, where a hot lease lasts 100 ms). Once half is
//     used, or the period's last quarter has begun, a check the lease
//     admits also asks for a renewal, topping the lease up to twice what
//     was used, which rides in the next batch to the owner (see
//     peerConn.renew); what it grants joins the lease, within the same
//     share, and the period starts again. (While the ring grows, leases
//     sized for fewer nodes stay until they lapse: for one period up to
//     capacity ÷ 4 × (2 − old nodes ÷ new nodes) can be out.) A lease that lapses
//     gives its rest back with the key's next ask. The bounds are the hot
//     leases': leased tokens leave the bucket, at most capacity ÷ 4 per
//     key is out at any time, and a bucket near its limit grants none, so
//     its checks are forwarded and decided exactly. A key too small for
//     warmMin tokens a node is never warm-leased, and a key forwarded once
//     (a scanner's) never leaves tokens parked.
//
// A key's state is a small state machine: keyState.decide takes a check
// and says whether it is answered here and whether to ask for a lease;
// keyState.settle takes the owner's answer to that lease. Neither does
// I/O: the router sends the lease once the shard's lock is released.
type hotKeys struct {
	shards [hotShards]hotShard
}

type hotShard struct {
	mu   sync.Mutex
	m    map[uint64]*keyState
	gens uint64 // entries made, for keyState.gen
}

// keyState is what this node knows of one remote key. All fields are
// guarded by the shard's lock.
type keyState struct {
	limit  limiter.Limit
	window int64  // start of the current counting window
	count  uint64 // tokens forwarded in the window
	last   uint64 // tokens forwarded in the previous window

	denyUntil int64 // refuse locally until then
	resetAt   int64 // owner's bucket full again at (last we heard)

	lease   uint64 // leased tokens left
	granted uint64 // tokens of the current lease when granted or renewed
	warm    bool   // the current lease is a warm one
	seen    bool   // forwarded before: a warm ask waits for the second check
	norenew bool   // a renewal of the current lease came back empty or failed
	// gen tells this entry from a later one for the same key (after an
	// eviction or a new limit): a grant settles only on the entry that
	// asked for it.
	gen        uint64
	leaseUntil int64
	remaining  uint64 // owner's bucket after the last grant
	renewing   bool   // a lease was asked for and is not settled yet
}

// hotPolicy is the router's hot-key configuration.
type hotPolicy struct {
	threshold uint64 // tokens forwarded within two periods that make a key hot
	period    int64  // lease period, nanoseconds
	warm      int64  // warm lease period, nanoseconds; 0: no warm leases
}

// leaseShare is the most tokens of a bucket under l one of nodes may
// hold leased: all of them together hold at most a quarter of it.
func leaseShare(l limiter.Limit, nodes int) uint64 {
	return l.Capacity() / uint64(4*max(nodes, 1))
}

// warmMin is the fewest tokens a warm lease asks for: a key whose share
// of capacity ÷ (4 × nodes) is smaller is never warm-leased.
const warmMin = 4

// leaseAsk is a lease the hot-key decision asks for: want tokens from the
// key's owner, giving back returned unused ones. A warm ask rides in the
// forwarded check's take; a hot one is a Lease call of its own. The zero
// leaseAsk asks for nothing.
type leaseAsk struct {
	want, returned uint64
	warm           bool
	gen            uint64 // keyState.gen of the entry that asks
}

// leaseGrant is an owner's answer to a lease request.
type leaseGrant struct {
	granted    uint64        // tokens granted, already taken from the owner's bucket
	remaining  uint64        // tokens left in the owner's bucket
	resetAfter time.Duration // until the owner's bucket is full again
	retryAfter time.Duration // when nothing was granted: until one token is available
}

// decide decides req at now for the key st describes, nodes being the
// ring's size. A cached refusal or the lease may answer it here (decided),
// and a warm lease that answers may ask for its renewal (see renewal).
// Otherwise it counts towards the key's hotness, and once the key is hot,
// or with warm leases on, and no lease is outstanding, decide gives up the
// unused lease and asks for a new one; the caller forwards req and sends
// ask to the owner (a hot ask) or with req (a warm one).
func (st *keyState) decide(req *limiter.Request, now int64, nodes int, pol hotPolicy) (res limiter.Result, decided bool, ask leaseAsk) {
	if now < st.denyUntil && req.Hits == 1 {
		return limiter.Result{RetryAfter: time.Duration(st.denyUntil - now), ResetAfter: until(st.resetAt, now)}, true, leaseAsk{}
	}
	if req.Reserve > 0 {
		// Leases do not know reserves; a capacity budget's lower priorities
		// are always decided by the owner.
		return limiter.Result{}, false, leaseAsk{}
	}
	if now < st.leaseUntil && st.lease >= req.Hits {
		st.lease -= req.Hits
		res = limiter.Result{Allowed: true, Remaining: st.remaining + st.lease, ResetAfter: until(st.resetAt, now)}
		return res, true, st.renewal(req, now, nodes, pol)
	}
	if gap := now - st.window; gap >= pol.period {
		st.last, st.count, st.window = st.count, 0, now
		if gap >= 2*pol.period {
			st.last = 0 // the previous window was empty
		}
	}
	st.count += req.Hits
	if st.count+st.last >= pol.threshold && !st.renewing {
		ask = leaseAsk{
			want:     min(max(st.count, st.last), max(1, leaseShare(req.Limit, nodes))),
			returned: st.lease,
			gen:      st.gen,
		}
		st.lease, st.leaseUntil, st.granted = 0, 0, 0
		st.renewing = true
	} else if pol.warm > 0 && !st.renewing && st.seen {
		if share := leaseShare(req.Limit, nodes); share >= warmMin {
			used := st.granted - min(st.lease, st.granted)
			ask = leaseAsk{want: min(share, max(warmMin, 2*used)), returned: st.lease, warm: true, gen: st.gen}
			st.lease, st.leaseUntil, st.granted = 0, 0, 0
			st.renewing = true
		}
	}
	st.seen = true
	return limiter.Result{}, false, ask
}

// renewal is the ask, if any, that renews a warm lease st still admits
// from, once half of it is used or its last quarter-period has begun: so
// that a key in steady use is not forwarded when its lease runs out. The
// current lease stays, and the renewal tops it up to twice what was used
// (at least warmMin; at least one token, so that a grant restarts the
// period), within the key's share; what the owner grants is added to it.
// A renewal that came back empty (the bucket is at half) or failed is not
// asked again for the same lease.
func (st *keyState) renewal(req *limiter.Request, now int64, nodes int, pol hotPolicy) leaseAsk {
	if !st.warm || pol.warm <= 0 || st.renewing || st.norenew || 2*st.lease >= st.granted && st.leaseUntil-now >= pol.warm/4 {
		return leaseAsk{}
	}
	share := leaseShare(req.Limit, nodes)
	if st.lease >= share {
		return leaseAsk{}
	}
	used := st.granted - min(st.lease, st.granted)
	target := max(warmMin, 2*used)
	want := min(share-st.lease, max(1, target-min(target, st.lease)))
	st.renewing = true
	return leaseAsk{want: want, warm: true, gen: st.gen}
}

// settle records at now the outcome of the lease st asked for, warm or
// hot: the owner's grant, or err when the request failed or was never sent
// (then the key asks again on its next forwarded check). It returns the
// tokens granted.
func (st *keyState) settle(g leaseGrant, err error, warm bool, now int64, pol hotPolicy) uint64 {
	st.renewing = false
	st.norenew = warm && (err != nil || g.granted == 0)
	if err != nil {
		return 0
	}
	st.resetAt = now + int64(g.resetAfter)
	st.remaining = g.remaining
	if g.granted == 0 {
		if g.retryAfter > 0 {
			st.denyUntil = now + int64(g.retryAfter)
		}
		return 0
	}
	st.lease += g.granted
	st.granted = st.lease
	st.warm = warm
	st.leaseUntil = now + pol.period
	if warm {
		st.leaseUntil = now + pol.warm
	}
	return g.granted
}

// refused records an owner's refusal of a one-token check at now.
func (st *keyState) refused(res limiter.Result, now int64) {
	st.denyUntil = now + int64(res.RetryAfter)
	st.resetAt = now + int64(res.ResetAfter)
}

func (h *hotKeys) shard(key uint64) *hotShard { return &h.shards[key%hotShards] }

// state returns key's state, creating it unless the shard is full of live
// entries. The caller holds sh.mu.
func (sh *hotShard) state(key uint64, l limiter.Limit, now int64, period int64) *keyState {
	if sh.m == nil {
		sh.m = make(map[uint64]*keyState)
	}
	st := sh.m[key]
	if st == nil {
		if len(sh.m) >= maxHotPerShard {
			// Make room from a small sample, not a scan of the shard: with
			// many distinct keys this runs on every new one.
			n := 0
			for k, old := range sh.m {
				// A warm lease does not pin its entry: its checks are
				// answered without counting, so the entry looks idle, and
				// dropping it costs two forwarded checks (the first asks
				// for nothing) and its unused tokens (which errs toward
				// refusing). An entry with an ask out stays until the
				// answer settles.
				if now-old.window > 10*period && (now >= old.leaseUntil || old.warm) && now >= old.denyUntil && !old.renewing {
					delete(sh.m, k)
					break
				}
				if n++; n == 8 {
					break
				}
			}
			if len(sh.m) >= maxHotPerShard {
				return nil
			}
		}
		sh.gens++
		st = &keyState{limit: l, window: now, gen: sh.gens}
		sh.m[key] = st
	}
	if st.limit != l {
		sh.gens++
		*st = keyState{limit: l, window: now, gen: sh.gens}
	}
	return st
}

func (r *Router) hotPolicy() hotPolicy {
	return hotPolicy{threshold: uint64(r.cfg.HotThreshold), period: int64(r.cfg.LeasePeriod), warm: int64(r.cfg.WarmLease)}
}

// local decides req, whose key another node owns, here if its key's state
// allows (a cached refusal or a lease). Otherwise req is forwarded, and
// ask, when not zero, is a lease to send its owner along with it. local
// only takes the shard's lock and decides; it does no I/O.
func (r *Router) local(req *limiter.Request, nodes int, now int64) (res limiter.Result, decided bool, ask leaseAsk) {
	if r.cfg.HotThreshold < 0 || req.Hits == 0 || req.Refund {
		return limiter.Result{}, false, leaseAsk{}
	}
	pol := r.hotPolicy()
	sh := r.hot.shard(req.Key)
	sh.mu.Lock()
	if st := sh.state(req.Key, req.Limit, now, pol.period); st != nil {
		res, decided, ask = st.decide(req, now, nodes, pol)
	}
	sh.mu.Unlock()
	if ask.want > 0 {
		r.stats.Leases.Add(1)
	}
	return res, decided, ask
}

// ownerFullAt returns when the owner last said key's bucket under l would
// be full again, if that is after now.
func (r *Router) ownerFullAt(key uint64, l limiter.Limit, now int64) (int64, bool) {
	sh := r.hot.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	st := sh.m[key]
	if st == nil || st.limit != l || st.resetAt <= now {
		return 0, false
	}
	return st.resetAt, true
}

// refused records an owner's refusal of a one-token check on an empty
// bucket, so later checks are refused here until the next token.
func (r *Router) refused(req *limiter.Request, res limiter.Result, now int64) {
	if r.cfg.HotThreshold < 0 || req.Hits != 1 || req.Refund || res.Allowed || res.Remaining != 0 || res.RetryAfter <= 0 {
		return
	}
	sh := r.hot.shard(req.Key)
	sh.mu.Lock()
	if st := sh.state(req.Key, req.Limit, now, int64(r.cfg.LeasePeriod)); st != nil {
		st.refused(res, now)
	}
	sh.mu.Unlock()
}

// settle records the outcome of lease l: the owner's grant, or err.
func (r *Router) settle(l *lease, g leaseGrant, err error) {
	now := r.cfg.Now().UnixNano()
	sh := r.hot.shard(l.key)
	sh.mu.Lock()
	var granted uint64
	if st := sh.m[l.key]; st != nil && st.gen == l.gen {
		granted = st.settle(g, err, l.warm, now, r.hotPolicy())
	} // else evicted or re-limited meanwhile (a new generation): the grant lapses
	sh.mu.Unlock()
	r.stats.Leased.Add(granted)
}

func until(at, now int64) time.Duration {
	if at <= now {
		return 0
	}
	return time.Duration(at - now)
}
