package shed

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// Latency buckets are log-linear: four sub-buckets per power of two of
// nanoseconds, so a quantile is within 12.5% of the truth, which is well
// inside the noise of any latency signal, and recording costs one atomic add.
const (
	latSubBits = 2
	latSub     = 1 << latSubBits
	latBuckets = 64 * latSub
)

// latencyHistogram accumulates latencies between drains.
type latencyHistogram struct {
	n       atomic.Uint64
	buckets [latBuckets]atomic.Uint32
}

func latIndex(d time.Duration) int {
	if d < latSub {
		if d < 0 {
			return 0
		}
		return int(d)
	}
	u := uint64(d)
	e := bits.Len64(u) - 1 // ≥ latSubBits
	return e*latSub + int((u>>(e-latSubBits))&(latSub-1))
}

// latValue is the midpoint of bucket i.
func latValue(i int) time.Duration {
	e := i / latSub
	if e < latSubBits {
		return time.Duration(i)
	}
	sub := uint64(i % latSub)
	width := uint64(1) << (e - latSubBits)
	return time.Duration((latSub+sub)*width + width/2)
}

func (h *latencyHistogram) observe(d time.Duration) {
	h.buckets[latIndex(d)].Add(1)
	h.n.Add(1)
}

// count is the number of samples since the last drain.
func (h *latencyHistogram) count() uint64 { return h.n.Load() }

// drain moves the buckets into dst, resets them and returns the number of
// samples moved.
func (h *latencyHistogram) drain(dst *[latBuckets]uint32) uint64 {
	h.n.Store(0)
	var total uint64
	for i := range h.buckets {
		v := h.buckets[i].Swap(0)
		dst[i] = v
		total += uint64(v)
	}
	return total
}

// quantile returns the q-quantile (0 < q ≤ 1) of a drained histogram holding
// total samples, or 0 when it is empty.
func quantile(b *[latBuckets]uint32, total uint64, q float64) time.Duration {
	if total == 0 {
		return 0
	}
	rank := uint64(q*float64(total) + 0.5)
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for i, v := range b {
		seen += uint64(v)
		if seen >= rank {
			return latValue(i)
		}
	}
	return latValue(latBuckets - 1)
}
