// Package quotasim is a simulated fleet of Envoys that talk to a rate
// limit quota service (RLQS, envoy.service.rate_limit_quota.v3) the way
// Envoy's envoy.filters.http.rate_limit_quota filter does, to test levee's
// quota service from the outside (`levee quota-sim`, and the process tests
// of cmd/levee).
//
// # What each simulated Envoy does
//
// It is the filter as of 2026, quirks included, since those are what a
// quota server has to live with:
//
//   - One stream per Envoy per domain, to one node at a time. Envoy i
//     starts on node i mod n; when its stream breaks it opens the next
//     one, to the next node in the list, when it next has a report to
//     send (as Envoy recreates the stream on its next report).
//   - The first request into a bucket id subscribes it: a report is sent
//     at once, with time_elapsed 0 s (which the proto's own validation
//     rule rejects). After that every tracked bucket is reported on one
//     fixed timer, whatever reporting_interval says, with time_elapsed in
//     whole seconds (truncated). Reports are built and their counters
//     reset whether or not a stream takes them: reports are lost while a
//     stream is down.
//   - Every assignment applied restarts the TTL, read in whole seconds;
//     an unset TTL expires at once. A token bucket with the same
//     max_tokens, tokens_per_fill and fill_interval nanos as the live one
//     keeps its tokens (and its old rate, should only fill_interval's
//     seconds differ: Envoy does not compare them); any other starts a
//     new token bucket, full.
//   - token_bucket: max_tokens, tokens_per_fill (unset reads as 0: no
//     refill) and fill_interval truncated to whole seconds; a
//     fill_interval under a second divides by zero in Envoy.
//     blanket_rule ALLOW_ALL / DENY_ALL. requests_per_time_unit and an
//     unset strategy are ignored.
//   - With no assignment the bucket allows or denies all
//     (no_assignment_behavior); once an assignment has expired it allows
//     all, denies all or reuses the last assignment
//     (expired_assignment_behavior, optionally for a limited time, after
//     which the bucket is abandoned), or else falls back to the
//     no-assignment behaviour. abandon_action forgets the bucket: no more
//     reports until a request subscribes it again.
//
// This follows Envoy's source (GlobalRateLimitClientImpl in
// source/extensions/filters/http/rate_limit_quota/global_client_impl.cc).
// Whatever in the server's answers breaks on a real Envoy (a sub-second
// or fractional fill_interval, an unset or fractional TTL, an unset
// strategy or tokens_per_fill, a requests_per_time_unit strategy, an
// action for a bucket the Envoy does not track) is counted as a conformance failure; the simulation carries
// on as Envoy would, or, for the division by zero, keeps the bucket as it
// was.
//
// The one deviation: the report timer's period is an option
// (Options.ReportInterval, default 5 s, Envoy's fixed period) so that
// tests run in seconds.
//
// # Demand and judgement
//
// Each Envoy's demand is open loop: Poisson arrivals, drawn from the
// run's seed, at a rate set by Zipf weights across the Envoys times the
// fleet's total demand (a multiple of the limit L), which steps may
// change during the run. The report measures every phase between steps
// after its first two report intervals: total admitted against L, and
// each Envoy's admissions against its max-min fair share of L over the
// demands the Envoys actually offered, computed by the simulation's own
// model (MaxMin), not levee's allocator. It also reports how long
// assignments took to settle after a step, streams broken and reopened,
// buckets left past an assignment's TTL, and conformance failures, and
// checks them against the bounds of issue 15 (Result.Checks).
package quotasim
