package peer

import "time"

// window is how long a batch opened now for one peer waits for more
// operations before it leaves: the ceiling (Config.BatchWindow) when it
// has company to wait for, and nothing otherwise. Company is a batch to
// the same peer in flight (callers are arriving faster than the peer
// answers) or a previous batch that carried several callers (a herd
// released by one answer comes back together). A caller alone — a quiet
// node, or one of many peers on a large fleet, which splits a node's
// forwarded traffic so thinly that batches rarely meet — is sent at once:
// waiting would only delay it. As soon as two callers overlap, the second
// finds the first's batch in flight and waits, and batching resumes.
// (An arrival rate would not do: a lone caller's rate is set by the
// window itself.)
func window(ceiling time.Duration, inFlight int, lastCallers int) time.Duration {
	if inFlight > 0 || lastCallers > 1 {
		return ceiling
	}
	return 0
}
