package peer

import (
	"context"
	"sync"
	"time"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/ring"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
)

// Hot keys.
//
// One key can take a large share of all traffic (a global capacity budget, a
// viral account). Forwarding every check for it would pin its owner, so a
// node that forwards one key often does two things instead:
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
//     burst ÷ (4 × nodes) — and admits from it locally for the lease period
//     (100 ms by default), giving unused tokens back with its next request.
//     Leased tokens leave the owner's bucket when granted, so no token is
//     ever admitted twice; the error is only in *when* a token is used.
//     Over any time window the cluster admits at most what one exact bucket
//     would, plus the tokens leased out at the window's start: at most
//     burst ÷ 4 per key across the cluster, and in steady state about one
//     lease period of the key's traffic. Tokens leased but never used (the
//     traffic stops before the lease ends) are given back on the next lease
//     or lapse, which errs toward refusing, never toward admitting.

// hotShards spreads hot-key state over independently locked maps.
const hotShards = 64

// maxHotPerShard bounds the hot-key table (64 × 1024 keys).
const maxHotPerShard = 1024

type hotKeys struct {
	shards [hotShards]hotShard
}

type hotShard struct {
	mu sync.Mutex
	m  map[uint64]*keyState
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

	lease      uint64 // leased tokens left
	leaseUntil int64
	remaining  uint64 // owner's bucket after the last grant
	renewing   bool
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
				if now-old.window > 10*period && now >= old.leaseUntil && now >= old.denyUntil {
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
		st = &keyState{limit: l, window: now}
		sh.m[key] = st
	}
	if st.limit != l {
		*st = keyState{limit: l, window: now}
	}
	return st
}

// local decides req on this node if its key's state allows (a cached
// refusal or a lease), and otherwise counts it towards hotness and starts a
// lease request when the key is hot.
func (r *Router) local(req *limiter.Request, owner ring.Member, nodes int, now int64) (limiter.Result, bool) {
	if r.cfg.HotThreshold < 0 || req.Hits == 0 || req.Refund {
		return limiter.Result{}, false
	}
	period := int64(r.cfg.LeasePeriod)
	sh := r.hot.shard(req.Key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	st := sh.state(req.Key, req.Limit, now, period)
	if st == nil {
		return limiter.Result{}, false
	}
	if now < st.denyUntil && req.Hits == 1 {
		return limiter.Result{RetryAfter: time.Duration(st.denyUntil - now), ResetAfter: until(st.resetAt, now)}, true
	}
	if req.Reserve > 0 {
		// Leases do not know reserves; a capacity budget's lower priorities
		// are always decided by the owner.
		return limiter.Result{}, false
	}
	if now < st.leaseUntil && st.lease >= req.Hits {
		st.lease -= req.Hits
		return limiter.Result{Allowed: true, Remaining: st.remaining + st.lease, ResetAfter: until(st.resetAt, now)}, true
	}
	if gap := now - st.window; gap >= period {
		st.last, st.count, st.window = st.count, 0, now
		if gap >= 2*period {
			st.last = 0 // the previous window was empty
		}
	}
	st.count += req.Hits
	if st.count+st.last >= uint64(r.cfg.HotThreshold) && !st.renewing {
		returned := st.lease
		st.lease, st.leaseUntil = 0, 0
		st.renewing = true
		want := max(st.count, st.last)
		burst := req.Limit.Burst
		if burst == 0 {
			burst = req.Limit.Rate
		}
		want = min(want, max(1, burst/uint64(4*max(nodes, 1))))
		key, l := req.Key, req.Limit
		r.stats.Leases.Add(1)
		r.wg.Go(func() { r.renew(owner, key, l, want, returned) })
	}
	return limiter.Result{}, false
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
		st.denyUntil = now + int64(res.RetryAfter)
		st.resetAt = now + int64(res.ResetAfter)
	}
	sh.mu.Unlock()
}

// renew asks owner for a lease on key and records the grant.
func (r *Router) renew(owner ring.Member, key uint64, l limiter.Limit, want, returned uint64) {
	p := r.peer(owner)
	var resp *leveev1.LeaseResponse
	err := errBreakerOpen
	if p.acquire() {
		defer p.release()
	} else {
		p = nil
	}
	if p != nil && p.breaker.allow(r.cfg.Now()) {
		ctx, cancel := context.WithTimeout(r.ctx, r.cfg.Timeout)
		resp, err = p.client.Lease(ctx, &leveev1.LeaseRequest{
			Key:      key,
			Limit:    &leveev1.BucketLimit{Rate: l.Rate, PeriodNanos: int64(l.Period), Burst: l.Burst},
			Tokens:   want,
			Returned: returned,
			From:     r.cfg.Self.ID,
		})
		cancel()
		p.breaker.record(err == nil, r.cfg.Now())
	}
	now := r.cfg.Now().UnixNano()
	sh := r.hot.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	st := sh.m[key]
	if st == nil || st.limit != l {
		return // evicted or re-limited meanwhile; the grant lapses
	}
	st.renewing = false
	if err != nil {
		return
	}
	r.stats.Leased.Add(resp.GetGranted())
	st.resetAt = now + resp.GetResetAfterNanos()
	st.remaining = resp.GetRemaining()
	if resp.GetGranted() == 0 {
		if d := resp.GetRetryAfterNanos(); d > 0 {
			st.denyUntil = now + d
		}
		return
	}
	st.lease += resp.GetGranted()
	st.leaseUntil = now + int64(r.cfg.LeasePeriod)
}

func until(at, now int64) time.Duration {
	if at <= now {
		return 0
	}
	return time.Duration(at - now)
}
