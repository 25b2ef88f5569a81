package quotasim

import (
	"sync"
	"time"
)

// binWidth is the resolution of the recorded demand and admissions.
const binWidth = 100 * time.Millisecond

// EventKind names what happened to an Envoy's stream or bucket.
type EventKind string

const (
	EventOpened     EventKind = "opened"      // a stream was opened to Node
	EventOpenFailed EventKind = "open-failed" // opening a stream to Node failed
	EventBroken     EventKind = "broken"      // the stream to Node ended
	EventAbandoned  EventKind = "abandoned"   // the server abandoned a bucket
)

// Event is one stream or bucket event.
type Event struct {
	At    time.Duration // since the start of the run
	Envoy int
	Kind  EventKind
	Node  string
	Err   string
}

// Assignment is one assignment an Envoy received and applied.
type Assignment struct {
	At     time.Duration
	Envoy  int
	Bucket int
	Rate   float64 // requests a second it admits at (+Inf: allow all)
	Live   bool    // false: it expired at once (TTL 0 or unset) or was not applied
	TTL    time.Duration
	Node   string
}

// envoyRecord is what one Envoy saw. Its mutex guards it against the
// Envoy's stream receivers.
type envoyRecord struct {
	mu          sync.Mutex
	offered     []int64 // per bin, first bucket
	admitted    []int64
	offeredAll  int64 // every bucket
	admittedAll int64
	sent, lost  int // bucket usage reports
	events      []Event
	assignments []Assignment
	failures    map[Failure]int
	demands     []demandSample // first bucket, one per report after the first
}

// demandSample is the demand one report of the first bucket told the
// server: requests a second since the previous report.
type demandSample struct {
	at   time.Duration
	rate float64
}

func newEnvoyRecord(d time.Duration) *envoyRecord {
	n := int(d/binWidth) + 2
	return &envoyRecord{offered: make([]int64, n), admitted: make([]int64, n), failures: map[Failure]int{}}
}

func (r *envoyRecord) add(bucket int, at time.Duration, offered, admitted int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.offeredAll += int64(offered)
	r.admittedAll += int64(admitted)
	if bucket != 0 {
		return
	}
	if i := int(at / binWidth); i >= 0 && i < len(r.offered) {
		r.offered[i] += int64(offered)
		r.admitted[i] += int64(admitted)
	}
}

func (r *envoyRecord) event(e Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

func (r *envoyRecord) assigned(a Assignment) {
	r.mu.Lock()
	r.assignments = append(r.assignments, a)
	r.mu.Unlock()
}

func (r *envoyRecord) reported(at time.Duration, rate float64) {
	r.mu.Lock()
	r.demands = append(r.demands, demandSample{at, rate})
	r.mu.Unlock()
}

func (r *envoyRecord) fail(f Failure) {
	r.mu.Lock()
	r.failures[f]++
	r.mu.Unlock()
}

func (r *envoyRecord) countReports(sent, lost int) {
	r.mu.Lock()
	r.sent += sent
	r.lost += lost
	r.mu.Unlock()
}
