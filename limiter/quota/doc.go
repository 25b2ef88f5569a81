// Package quota divides a global rate among the clients that report demand
// for it: the core of levee's rate limit quota service (RLQS), with no
// protobuf and no I/O. Every function takes the time as an argument.
//
// # Demand
//
// A Meter turns usage reports (requests allowed plus requests denied since
// the previous report) into a demand rate, timed with the server's clock:
// a client's own elapsed times are whole seconds at best, and its first
// report says 0 s. The first report only starts the clock (its requests
// cover an unknown time), so a client's demand is unknown until its second
// report; reports closer than MinElapsed to the last measurement are added
// to the next one rather than divided by a tiny interval. Arrivals are
// taken as Poisson: a demand counted from n requests has a standard error
// of √n requests over its interval (Noise).
//
// # Fair share
//
// MaxMin divides a rate by max-min fairness with equal weights (water
// filling): clients are served in increasing order of demand, each
// receiving its demand if it is no more than an equal split of what is
// left, and the rest split equally among the others. A client whose demand
// is unknown counts as unbounded. When the demands together ask for less
// than the rate, the slack is split equally on top of each demand, so the
// shares always add up to the rate: a client whose demand grows finds room
// at once, and the total admitted never exceeds the limit.
//
// A client's demand that fits under the level the others share is granted
// with headroom, rounded up to whole tokens (Divider): 5%, or Confidence
// standard errors of the measured demand (Meter.Noise) if more. It
// receives at least what it asks for, with room for its bursts, even when
// its demand was measured low, and a demand that jitters between reports
// leaves its grant unchanged. The headroom of all the clients under the
// level together stays within MaxHeadroom of the pool. The headroom is
// counted as unused: the clients above the level split what the limit
// holds beyond the others' demands, not beyond their grants, so the tokens
// used add up to the limit.
//
// # Tokens
//
// Shares become token buckets with a fill interval of a whole number of
// seconds, fixed per limit (FillInterval): Envoy truncates the interval to
// whole seconds and divides by zero below one. The pool of one fill —
// the limit's rate times the interval, rounded down — is split into whole
// tokens by the largest-remainder method (Quantize), so the tokens granted
// never add up to more than the pool, the headroom of clients below the
// level aside; a share below one token may round to none. Divider puts the two together.
//
// # Holding grants
//
// Envoy keeps a bucket's tokens across an assignment only when the token
// bucket is identical; any other replaces it with a new bucket that starts
// full. A client that spends all its tokens (one above the level) so
// receives up to a bucket of extra tokens at every change of its grant,
// and the shares of the clients above the level move at every division,
// with the measurement noise of the others' demands. So the Allocator
// holds each client's grant while its new share is within Hold (10%) of
// it (and, for a client under the level, whatever its share fell to: it
// does not use what it has beyond its demand), with three exceptions that
// keep the division honest:
//
//   - a client under the level whose grant no longer covers its demand
//     gets its new share at once (a rise of a client above the level may
//     wait: it loses a little for a while, nobody is refused what the
//     limit allows);
//   - the grants never add up to more than the shares do: while they would,
//     the grant furthest above its share takes the share, so holding never
//     admits more than the limit (a share that must shrink is pushed);
//   - nor to less than the shares less Hold/2: while they would, the grant
//     furthest below its share takes it.
//
// # Bucket size
//
// A token bucket refills continuously at its tokens per fill over the fill
// interval, so its size (MaxTokens) only bounds bursts, and bounds what a
// new, full bucket hands out beyond the rate. A client that spends every
// token (its demand exceeds its tokens by Spends) finds its bucket empty
// when a new one comes, so it gets a small one: BucketTime (0.25 s) of its
// tokens, at least MinBucket (5); with its arrivals above its rate, its
// bucket size costs it nothing. Any other client keeps its part of the
// limit's burst, at least one fill: its bucket is about full when a new
// one comes, so the new one adds little, and it absorbs the noise of its
// arrivals (with Poisson arrivals and a rate 5% above them, a bucket of B
// tokens refuses about 0.05/(e^(B/10)-1) of the requests whatever the
// rate: a small bucket would refuse what the client is granted).
//
// # Owner state
//
// An Allocator is the state of the buckets a node owns: for each bucket
// its limit and every (node, client) pair reporting it, with the pair's
// demand. Nodes send the whole demand of their clients for a bucket at once
// and get the tokens of those clients back; pairs a node no longer sends
// leave at once, pairs nobody refreshes leave after the idle time, and
// buckets with no pair left are dropped, so memory follows the clients
// that report.
//
// # Priorities
//
// Admitted says which fraction of a priority's cohorts a shedding
// threshold still admits: the front end shrinks an assignment by it, so
// while a protected resource sheds, the least important buckets' quotas
// shrink first, and in proportion to the shedding.
package quota
