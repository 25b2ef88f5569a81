// Package client checks levee quotas from a Go service: it calls the levee
// sidecar next to the service (levee.v1 over loopback TCP or a Unix socket)
// with plain Go values, and decides alone, the way the caller chose, when
// the sidecar cannot answer in time.
//
// A check names the quotas one unit of work draws on, each an Item: a rule
// from levee's rule files, found by domain and descriptor entries as Envoy
// finds them (Rule), or a limit the caller defines itself (Inline). The
// answer is a Decision: whether to proceed, one Status per item (the limit
// that applied, tokens left, when the bucket is full again, when to retry),
// and why levee did not decide, if it did not.
//
// # Time budget and failure mode
//
// A check waits at most Config.Budget (5 ms unless set) for the sidecar,
// within the caller's own deadline. A sidecar that is slower, unreachable
// or refuses the request does not decide: the caller's failure mode does
// (admit unless Config.FailClosed), Decision.Err says why, and Stats counts
// it. A check never returns without a decision to apply.
//
// # Refusal cache
//
// When the sidecar refuses an item and says when it could pass
// (retry_after), the client refuses any check with that item, at the same
// priority, for as many or more hits, until then, without a call. This is
// exact, as levee's own cache of its owners' refusals is: the refused
// bucket gained no tokens from the refusal, other callers can only take
// more, so before retry_after the sidecar would refuse it too. The instant
// is measured from when the call was sent, before the sidecar decided, so
// the client never refuses longer than the sidecar would; it assumes the
// sidecar shares the host's clock, as a sidecar does. Two things can make
// a cached refusal outlast the sidecar's: tokens given back (a refund) and
// a rule change raising the limit, each for at most one retry_after. Items
// of shadow-mode and quota-mode rules are never cached: their refusal does
// not refuse the check on its own.
//
// The cache holds at most Config.CacheSize items and forgets refusals once
// they expire. A Client is safe for concurrent use; it starts no
// goroutines of its own beyond gRPC's connection, which Close releases.
package client
