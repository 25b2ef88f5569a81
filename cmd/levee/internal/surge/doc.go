// Package surge is levee's reproducible overload test (`levee surge`): it
// offers the same open-loop load to a backend under three shedding
// policies, side by side, and records what each one kept alive.
//
// # The harnesses
//
// Three harnesses offer the same schedules (Options.Harness). The grpc
// harness (the default) calls a backend over gRPC, where levee is the shed
// middleware. The library harness (Local) drops gRPC and runs the shape a
// service that imports shed has: in process, one goroutine per request
// started at its scheduled time, Resource.Acquire with a deadline 100 ms
// after the scheduled arrival, an unbounded first come, first served queue
// in front of one worker that burns CPU for the service time (WorkSpin,
// which `levee surge --harness library` picks unless told otherwise) on
// the process's own GOMAXPROCS, a request dropped when the worker dequeues
// it past its deadline, and Release with the latency since the scheduled
// arrival and Success or Dropped. levee's resource there has the default configuration,
// is ticked every 100 ms by Resource.Run and is told nothing else (no
// queueing delay). The retry scenario needs gRPC clients and is left out
// of it. The sidecar harness is the library harness with levee reached as
// a service in another language reaches it: levee.v1.ShedService's Admit
// and Release over gRPC on loopback, served in the same process, with the
// caller's remaining time budget (and a permit_ttl of that budget plus one
// deadline) and the latency it saw.
//
// The gRPC backend is a server over loopback with one worker that serves
// requests first come, first served, each for the service time it carries
// (exponential, 1 ms mean: "one 1 ms worker"). By default the worker is
// kept on the wall clock (WorkTimed): each request's start and end are
// computed as it arrives, so capacity is exactly one over the mean service
// time whatever else runs on a shared machine; WorkSpin burns CPU instead,
// for a quiet machine. A request whose deadline passed while it queued is
// skipped when the worker reaches it. The backend runs in a child process
// with GOMAXPROCS of its own (1 by default: the backend and its shedder on
// one core), or in process for tests, and reports its goroutines, heap,
// CPU time and levee's state through a Stats method that is never shed.
//
// The load generator is open loop: arrivals are a Poisson process drawn
// from a seed, each with a priority (x-levee-priority), a user id
// (x-levee-user, hashed into a cohort by levee) and a service time, so the
// three policies are offered exactly the same calls. Every attempt carries
// a 100 ms gRPC deadline; goodput is the calls answered OK before it.
//
// C, the capacity every load is expressed in, is measured first (unless
// given): the worker's service rate μ from a light run, then runs without
// shedding at 0.9μ, stepping down 5% until p99 ≤ 50 mean service times
// (50 ms) and success ≥ 99.9% hold.
//
// # Policies
//
//   - none: every request queues for the worker.
//   - static: a priority-blind token bucket (levee's GCRA) at C with a
//     20 ms burst, refusing in the gRPC tap handle.
//   - levee: levee's shed middleware (tap handle and interceptor) over a
//     shed.Resource with its defaults, ticked every 100 ms.
//
// # Scenarios
//
// flood (critical 0.5C steady, sheddable 0.25C then 3C), ramp (five
// priorities at 20%, 0.5C to 6C), step (0.7C to 1.4C, four times), retry
// (2C with clients that retry: a naive three-attempt client against the
// baselines, levee's throttling client against levee) and calm (0.5C, plus
// the sidecar's admit/release round trip and an in-process benchmark of
// the refusal path).
//
// # Report
//
// Each scenario's levee run is held to its targets, one table of
// (scenario, metric, comparison, bound) rows that the report walks
// (targets.go), with the other policies' figures beside them. Every
// scenario is written as a markdown table, a CSV with one row per second,
// policy and priority, and an SVG of goodput, p99, goroutines and levee's
// threshold over time.
package surge
