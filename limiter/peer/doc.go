// Package peer makes a set of levee nodes act as one rate limiter. Every
// bucket has exactly one owner, chosen by the ring (limiter/ring) from the
// live members (limiter/cluster); Router sends each bucket operation to its
// owner and Server answers operations sent here.
//
// # Batching
//
// Operations for the same owner are micro-batched, and no goroutine runs
// the batches: callers do. The first operation for an idle peer opens a
// batch; callers that come while it is open join it. The batch leaves, on
// the goroutine of the caller that makes it leave, when it holds the batch
// cap, when its window ends (the caller that opened it sends it), or when
// a caller in it must be answered sooner (its deadline, less the peer's
// usual answer time). The window is the batch window (Config.BatchWindow,
// 500 µs by default) when the batch has company to wait for — a batch to
// the same peer in flight, or a last batch that carried several callers —
// and nothing otherwise, so a lone caller is never delayed for batching
// that cannot happen. Under load one RPC carries many callers' operations,
// so the peer path costs a fraction of an RPC per decision. Each peer has
// one Take stream; a batch is one message on it, and its answer comes
// back under the batch's id, read by one goroutine per stream.
//
// # Failure
//
// An owner that fails or is slow must not turn into errors for callers. A
// batch that fails (error, or no answer within the timeout or the callers'
// deadline) is decided by each operation's fallback: FallbackLocal decides
// on this node with a fair share of the limit (limit ÷ live nodes), open
// admits, closed reports the operation undecidable. Fair shares are
// buckets of their own, kept apart from the owner buckets this node holds
// and never handed off (Router.FallbackStore). A caller with a
// deadline is answered before it: operations whose owner has not answered
// by the last tenth of the time left (at most 2 ms before the deadline)
// are decided by their fallback, since an answer after the deadline
// reaches nobody. After a few consecutive
// failures a per-peer circuit breaker opens: operations for that peer go
// straight to their fallback, costing no timeouts, and one probe batch per
// cool-down tests whether the peer is back. A Take stream that answers
// nothing for a whole peer timeout (an owner's handler wedged while the
// process lives on), or an open or send stuck on it as long, is cancelled,
// and the next batch opens a new one. Membership (a lease in etcd)
// removes a dead node from the ring within its TTL; its keys then have live
// owners again.
//
// # Hot keys
//
// A node that forwards one key heavily stops forwarding every check for
// it: it caches the owner's refusals until the next token, and leases
// batches of the key's tokens to admit locally, as Google's Doorman does.
// Leased tokens leave the owner's bucket when granted, so none is admitted
// twice. The hot-key state only decides: under its shard's lock it says
// whether a check is answered here and whether to ask the owner for a
// lease. The lease request rides in the batch with the forwarded check
// that made the key hot, and the batch's sender asks for it after sending
// the checks, holding no lock.
//
// With a warm lease period (Config.WarmLease), keys far from their limits
// are leased too, for seconds: a key's forwarded checks after its first
// ask for a few tokens in their own take, which the owner grants only
// while the bucket keeps half its capacity. A lease half used, or in its
// last quarter-period, asks for its renewal, which rides in the next batch
// to the owner with no caller waiting; a batch's worth of renewals goes
// out on its own. A new ring drops the renewals not yet sent.
//
// # Hand-off
//
// When ownership moves — a node joins, or leaves gracefully — the buckets
// this node holds but no longer owns are sent to their new owners, so a
// rolling restart of the fleet does not reset anybody's quota. A hand-off
// whose new owner cannot be reached yet is tried again with capped,
// jittered backoff (Config.HandoffRetryMin to HandoffRetryMax) until it
// goes through or a newer ring replaces the one it was for; until then the
// buckets stay here.
//
// # Quota
//
// Envoy's quota service (limiter/rlqs) uses the same owners for its
// buckets: Router.Owner names a bucket's owner, and Router.Quota sends a
// node's demand for the buckets an owner holds in one unary call, about
// once a second per owner, so it needs no batching, breaker or stream of
// its own. Server answers Quota calls with the QuotaHandler it is given.
//
// # Clocks
//
// Every decision reads the injected clock, Config.Now (or the now a
// caller passes to Take): bucket state (fallbacks, hand-off, leases
// granted), the hot-key state, and the circuit breaker's cool-down. Server
// decides at the clock NewServer is given. Tests drive those with a clock
// of their own.
//
// The wall clock (time.Now and the runtime's timers) is read only where
// it bounds real I/O, and nowhere else: the batch window (a timer of the
// caller that opened the batch), the batch, lease and hand-off timeouts
// and the waits between hand-off attempts (which meet the
// callers' context deadlines, themselves wall-clock times), and the stream
// watchdog, which judges whether a stream or a send has made progress for
// a whole peer timeout. A clock frozen in a test must not stall a network
// call, and a network that stalls must be noticed whatever a test's clock
// says. The watchdog's judgements take the time as an argument, like the
// breaker's.
package peer
