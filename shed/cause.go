package shed

// Cause is what moved a resource's threshold at a tick: the signal that
// read overload when it rose, or why it fell. Counted per resource
// (Status.Moves, levee_shed_threshold_moves_total), it answers an
// operator's first question on a bad night — why is it shedding — and
// shows which signal moves the threshold late in a step.
type Cause uint8

// When several signals read overload at the same tick, the raise is put
// down to the first of these that did.
const (
	// CauseSurge: the throughput target measured a surge and shed it in
	// one raise (Reading.Fit).
	CauseSurge Cause = iota
	// CauseStanding: traffic taken past the concurrency gate kept a queue
	// of more than twice its limit for a whole tick.
	CauseStanding
	// CauseGate: the concurrency gate refused more than its tolerance.
	CauseGate
	// CauseThroughput: the traffic the gate does not refuse outran the
	// throughput target.
	CauseThroughput
	// CauseQueue: the queueing delay fed by ObserveQueueDelay (CoDel).
	CauseQueue
	// CauseSignal: one of Config.Signals.
	CauseSignal
	// CauseRoom: the throughput target measured room, and the threshold
	// fell at once by most of it.
	CauseRoom
	// CauseProbe: the hold after the last raise ran out with no signal
	// reading overload, and the threshold fell a step to probe.
	CauseProbe
	// NumCauses is the number of causes.
	NumCauses
)

var causeNames = [NumCauses]string{"surge", "standing", "gate", "throughput", "queue", "signal", "room", "probe"}

// String returns the cause's name, as in metrics.
func (c Cause) String() string {
	if c < NumCauses {
		return causeNames[c]
	}
	return "unknown"
}
