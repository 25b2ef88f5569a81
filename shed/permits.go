package shed

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// ErrUnknownPermit is returned when releasing a permit id that was never
// issued, was already released, or expired.
var ErrUnknownPermit = errors.New("shed: unknown or expired permit")

const permitShards = 16

// PermitTable hands out permits by id for callers across a process boundary
// (the sidecar API), where a caller that crashes or forgets would otherwise
// hold its slot forever. Each permit carries an expiry; the owner calls
// Sweep on its tick to release the expired ones. All methods are safe for
// concurrent use.
type PermitTable struct {
	r      *Resource
	next   atomic.Uint64
	shards [permitShards]permitShard
}

type permitShard struct {
	mu sync.Mutex
	m  map[uint64]leasedPermit
	_  [40]byte
}

type leasedPermit struct {
	permit  Permit
	expires time.Time
}

// NewPermitTable returns an empty table over r.
func NewPermitTable(r *Resource) *PermitTable {
	t := &PermitTable{r: r}
	// Ids start at a random point so that ids from before a restart are
	// unlikely to name a permit of the new process.
	t.next.Store(rand.Uint64() >> 1)
	for i := range t.shards {
		t.shards[i].m = make(map[uint64]leasedPermit)
	}
	return t
}

// Acquire admits a request at level l as Resource.Acquire does and, when
// admitted, records the permit under a fresh non-zero id that expires at
// now+ttl.
func (t *PermitTable) Acquire(ctx context.Context, l Level, now time.Time, ttl time.Duration) (uint64, error) {
	if ttl <= 0 {
		return 0, &FieldError{Field: "ttl", Value: ttl.String(), Reason: "a permit needs a positive time to live"}
	}
	p, err := t.r.Acquire(ctx, l)
	if err != nil {
		return 0, err
	}
	id := t.next.Add(1)
	if id == 0 {
		id = t.next.Add(1)
	}
	s := &t.shards[id%permitShards]
	s.mu.Lock()
	s.m[id] = leasedPermit{permit: p, expires: now.Add(ttl)}
	s.mu.Unlock()
	return id, nil
}

// Release releases permit id with the request's latency and outcome.
func (t *PermitTable) Release(id uint64, latency time.Duration, o Outcome) error {
	s := &t.shards[id%permitShards]
	s.mu.Lock()
	lp, ok := s.m[id]
	delete(s.m, id)
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("permit %d: %w", id, ErrUnknownPermit)
	}
	t.r.Release(lp.permit, latency, o)
	return nil
}

// Sweep releases every permit that expired at or before now, with
// OutcomeExpired, and returns how many it released.
func (t *PermitTable) Sweep(now time.Time) int {
	n := 0
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for id, lp := range s.m {
			if !now.Before(lp.expires) {
				delete(s.m, id)
				t.r.Release(lp.permit, 0, OutcomeExpired)
				n++
			}
		}
		s.mu.Unlock()
	}
	return n
}

// Len returns the number of outstanding permits.
func (t *PermitTable) Len() int {
	n := 0
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}
