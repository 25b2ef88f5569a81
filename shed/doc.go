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
// threshold by the step that sheds a few percent of the traffic it currently
// admits (or the excess a signal measured, capped per tick), computed from a
// rolling histogram of recent request levels; when healthy, and no sooner
// than a hold period after the last raise, it lowers the threshold slowly.
// A raise that follows a failed probe (a lower that brought the overload
// back) doubles the hold, so a resource at its capacity settles instead of
// flapping. The threshold enters the critical band only when a signal says
// that critical demand alone exceeds capacity. An operator can pin the
// threshold until an expiry, after which automatic control resumes.
//
// # Signals
//
// A [Signal] reports overload once per tick; readings combine by OR/max.
// [CoDel] watches queueing delay against a target (a standing queue is one
// whose minimum delay over an interval stays above the target).
// [GradientLimit] is an adaptive concurrency limit from the latency gradient
// (as Netflix's Gradient2 and Envoy's adaptive concurrency): it gates
// requests priority-aware, so a flood of low priority traffic can never
// crowd out critical traffic, and it does not ratchet upward under sustained
// overload. [DeadlineGate] drops requests whose remaining deadline is shorter
// than the expected service time, rather than serving them late.
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
