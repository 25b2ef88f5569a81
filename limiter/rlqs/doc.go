// Package rlqs serves envoy.service.rate_limit_quota.v3.RateLimitQuotaService,
// the quota service of Envoy's rate_limit_quota filter: Envoys enforce
// token-bucket assignments locally and stream usage reports; the service
// divides each bucket's global limit among every Envoy reporting it, across
// the cluster. The algorithms are limiter/quota's; this package translates
// the streams and the peer calls to them.
//
// # Buckets and rules
//
// A stream's domain (its first report's) names a rule domain. A bucket id,
// an unordered map, becomes a descriptor by sorting its entries by key, and
// is matched like any descriptor (rules.Config.Match), so a rule tree for
// quota buckets lists its keys in ascending order from the root. The
// matched descriptor's limit (the tightest, with rate_limits) is the
// bucket's global limit; its counter key (rules.Rule.LimitKeyHash) names the
// bucket, so the ring gives it one owner in the cluster. A descriptor that
// is unlimited, in shadow mode, or a leaf without a limit, is answered
// ALLOW_ALL; a limit
// of 0 DENY_ALL; a bucket id no rule matches gets Config.Unmatched. Every
// report is matched again, so a rule edit applies at the next report.
//
// # Demand and fair share
//
// Each (stream, bucket id) pair is one client. Its demand is measured from
// its reports with the server's clock (quota.Meter): time_elapsed is never
// read, as Envoy sends whole seconds and 0 s in its first report. About
// once a second (Config.Sync, and at once when a client subscribes) the
// node sends, for each bucket, the demand of all its clients to the
// bucket's owner (peer.Router, one Quota call per owner) and gets their
// tokens back; the owner divides the limit among every client of every
// node (quota.Allocator). When the owner cannot be reached the node divides
// a fair share of the limit (the limit over the live nodes) among its own
// clients.
//
// # Assignments
//
// An assignment is a token bucket whose fill interval is a whole number of
// seconds, fixed per limit (quota.FillInterval), never a sub-second one
// (Envoy truncates it to seconds and divides by zero) and never
// requests_per_time_unit (Envoy ignores it); a client whose share rounds to
// no token per fill gets DENY_ALL. The TTL is Config.TTL in whole seconds,
// at least 1 s (Envoy reads whole seconds and expires an unset TTL at
// once). An assignment is pushed when the owner's grant changes (the owner holds
// grants through small changes of the shares, quota.Holds, because Envoy
// starts a new, full, token bucket for every change of strategy) and sent
// again every third of its TTL, so it never expires while the
// node serves. While a
// protected resource sheds (Config.Threshold), a bucket's tokens shrink by
// the fraction of its priority's cohorts shed (quota.Admitted): the least
// important buckets shrink first.
//
// # Streams ending
//
// A client that reports nothing for Config.Idle is forgotten, and one whose
// reports carry no request for Config.Abandon is sent abandon_action (Envoy
// erases the bucket until a request matches it again) and forgotten, so
// buckets nobody uses cost neither side memory. A stream that
// ends takes its clients with it, and the owner hands their share to the
// others at the next sync. Drain, when the node stops, sends every
// assignment again with a TTL of 0 s (expired at once, so Envoys apply
// their expired_assignment_behavior instead of a stale share) and ends the
// streams with UNAVAILABLE, so Envoys reconnect to another node.
package rlqs
