// Package shed is levee's priority load shedder: it keeps a protected
// resource (a service, a database, a dependency) inside its capacity by
// refusing the least important requests first.
//
// # Levels
//
// Every request carries a [Priority] (critical, high, default, low,
// sheddable) and a cohort, a number 0–127 derived from a hash of the user or
// tenant id with a salt that rotates hourly ([CohortSalter]). Together they
// form a [Level]; levels are totally ordered, sheddable cohort 0 lowest and
// critical cohort 127 highest. Cohorts make shedding sticky per user: within
// a priority whole cohorts go together, so a user is either served or not
// rather than failing at random, and the hourly salt changes who is unlucky.
//
// # Admission
//
// A [Controller] holds a threshold level per resource. Requests below it are
// refused at once: the check is two atomic loads and one atomic add, with no
// lock and no allocation. On each control tick (every 100–250 ms, driven by
// the owner with the time passed in) the controller reads a [Reading] from
// the overload signals. When the resource is overloaded it raises the
// threshold by the step that sheds the excess a signal measured (a few
// percent when none did, a quarter at most per tick), computed from the
// most recent request levels; one raise sheds at most the rest of the
// least important priority still admitted, the marginal priority, so the
// next one up is touched only if the overload outlasts it. A reading that
// says the more important traffic alone overloads the resource
// (Reading.MarginUnfit) sheds all that is left of the marginal priority in
// one raise, however large a share that is: none of it fits, and partial
// raises would keep admitting some of it while the next one up already
// queues behind the gate. When the
// resource is saturated (at capacity but not past it) the threshold holds;
// when healthy, and no sooner than a hold period after the last raise, it
// falls slowly. A raise that follows a failed probe (a lower that brought
// the overload back) doubles the hold, so a resource at its capacity
// settles instead of flapping; a fresh surge starts again from the short
// hold. The threshold enters the critical band only when a signal says that
// critical demand alone exceeds capacity. An operator can pin the threshold
// until an expiry, after which automatic control resumes.
//
// # Signals
//
// A [Signal] reports overload once per tick; readings combine by OR/max.
// [CoDel] watches queueing delay against a target (a standing queue is one
// whose minimum delay over an interval stays above the target).
// [GradientLimit] is an adaptive concurrency limit from the latency gradient
// (as Netflix's Gradient2 and Envoy's adaptive concurrency), and the gate
// that enforces it; it does not ratchet upward under sustained overload.
// [DeadlineGate] drops requests whose remaining deadline is shorter than the
// expected service time, rather than serving them late.
//
// A [Resource] applies the concurrency gate (and the deadline gate) to the
// marginal priority only: more important requests take their slot without
// being refused (or held to their deadline), so a priority never loses a
// request to a gate while a less important one is still admitted, and the
// gate's refusals, which fall on randomly chosen requests, stay within the
// priority the threshold is shedding by cohorts anyway. The gate trims the
// bursts of the marginal priority; its refusals count as overload only
// beyond a tolerance (what a full gate refuses from randomness alone) and
// not in the few ticks after a raise, while the queue the surge built
// drains, and in between they read as saturated. When the traffic the gate
// does not refuse alone keeps more than twice the limit in flight, that is
// overload too, and the marginal priority does not fit (MarginUnfit); while
// that queue still grows with the resource working, it counts even just
// after a raise. It does not count while the admitted requests keep their
// deadlines (at least 20 of them released in the tick with a deadline, and
// no more than 1% of those took over half of it, were dropped or expired),
// the queue itself keeps them (in flight at the tick, drained at the tick's
// rate of completions, it takes at most a third of the budgets, the harmonic
// mean of what was left of their deadlines at Acquire: a queue that a
// slowing host builds shows a tick before any release is late) and that
// traffic fits the throughput target below, measured since the last move: a
// resource held near its target keeps such a queue at times, and shedding
// for it would hunt across the marginal priority's edge. The target's rate,
// over a few ticks, says better than one tick's arrivals and completions
// whether the margin fits. Requests without a deadline, a resource without
// deadline awareness (NoDeadline) or without a throughput target (Headroom <
// 0) keep the rule without the exception. The latency given to Release is
// what the caller waited, from its arrival if it queued before Acquire. Once
// critical is all that is left, the gate trims critical, and its refusals
// beyond the tolerance are the evidence that critical demand alone exceeds
// capacity.
//
// # Throughput target
//
// With the gate on, a Resource also learns the throughput it sustains: the
// requests served while the gate is full (at least limit − 1 in flight),
// over the time it is full — what the resource can do, not what it was
// offered, and not only the ticks that stayed full throughout, which are
// the ticks whose service happened to be slow. A tick that served at under
// a quarter of the measured rate is a stall and left out. The measure is
// trusted once 100 requests were served from a full gate (300 before a
// surge is shed by it in one move). It steers what the
// threshold lets through to (1 − Headroom) × that throughput, 90% by
// default. When the traffic the gate does not refuse alone passes the
// target beyond the noise of its count, the threshold sheds the measured
// excess in one move, rather than creeping up while the queue stands. A
// surge, the traffic past the gate outrunning the target by a quarter and
// four standard deviations over the last tick or two, is shed at once
// (Reading.Fit), 80% of it, on the demand per level of the last two ticks,
// across as many priorities as it takes, so that what is admitted does not
// queue to its deadline while the threshold climbs a priority at a time;
// the gate trims what the raise leaves. A raise that would leave the rest
// of a priority admitted, 15% or less of what it admits, sheds that
// rest too: the traffic above so small a remainder keeps the resource
// near its target, and its standing queue would shed the remainder
// seconds later, moving the threshold again after it seemed settled. Such
// a sliver (snapped, or shed by a raise for a queue) is readmitted within
// 10 s only by a room that holds it with a tenth of the traffic above it
// to spare: the capacity is measured to a few percent, and a sliver
// readmitted on a room read high queues and is shed again. A
// step in demand that the gate absorbs is a surge too: all the traffic at
// the gate outrunning the target by a tenth and three standard deviations over the last three
// ticks, and the rate of the last seconds by a quarter, with the gate
// refusing at least half the difference; all of that excess is shed, as it is
// measured against what the resource served as well as the capacity, and
// the gate's refusals bear it out. Left to the gate, whose tolerance at a
// small limit is a large share, it would move the threshold only seconds
// later, when the decayed rate caught up, and the acceptance would change
// then. It is read once the threshold stood still for a second, so that
// it answers a step rather than the noise of the capacity measured. The
// critical band opens the same way only when critical demand alone
// outruns the target as clearly; until then a fitted raise stops at the
// last non-critical level that saw demand, so that the gate, which
// refuses only the marginal priority, never turns on critical because
// one reading sized a burst as larger than all the rest. When what it lets through falls short of
// the target beyond the noise (and the last three ticks did too), it
// readmits most of the measured room at once, without waiting out its
// hold. A fall by a third or more shows in the last three ticks alone, so
// the end of a surge is not waited out for the two seconds the decayed
// count takes. Between the two it holds, so it settles instead of probing.
// Each move restarts the count, and the next one waits for three ticks of
// it. A capacity not measured for CapacityMemory (30 s) is forgotten, and
// the threshold probes upward as before.
//
// # Composition
//
// [Resource] composes these for in-process use: Acquire and Release around a
// request, Tick from the owner's loop (or Run), a shadow mode that counts
// "would shed" but admits, and refusals that carry a reason and a suggested
// retry delay. [PermitTable] hands out permits that expire if never
// released, for callers across a process boundary. [Metrics] exports the
// counters through OpenTelemetry without touching the hot path. The
// middleware sub-package adapts a Resource to gRPC and net/http, and the
// throttle sub-package holds the client half (adaptive throttling, retry
// budgets).
//
// All algorithms here are state machines with time passed in; none starts a
// goroutine.
package shed
