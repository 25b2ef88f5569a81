package shed

import "sync/atomic"

// levelHistogram counts request arrivals per level in a ring of windows.
// Writers add to the current window with one atomic add; the controller sums
// all windows and rotates the ring on its tick. A writer that read the old
// window index just before a rotation adds to a window that is still summed,
// so nothing is lost; only a writer stalled for a whole ring could add to a
// window being cleared, which merely drops one count.
type levelHistogram struct {
	cur     atomic.Uint32
	windows [][NumLevels]atomic.Uint32
}

func newLevelHistogram(windows int) levelHistogram {
	return levelHistogram{windows: make([][NumLevels]atomic.Uint32, windows)}
}

// add records one arrival at level l (l must be ≤ MaxLevel).
func (h *levelHistogram) add(l Level) {
	h.windows[h.cur.Load()][l].Add(1)
}

// sum writes the count per level over all windows into dst and returns the
// total.
func (h *levelHistogram) sum(dst *[NumLevels]uint64) uint64 {
	*dst = [NumLevels]uint64{}
	var total uint64
	for w := range h.windows {
		win := &h.windows[w]
		for l := range win {
			n := uint64(win[l].Load())
			dst[l] += n
			total += n
		}
	}
	return total
}

// rotate clears the oldest window and makes it current.
func (h *levelHistogram) rotate() {
	next := (h.cur.Load() + 1) % uint32(len(h.windows))
	win := &h.windows[next]
	for l := range win {
		win[l].Store(0)
	}
	h.cur.Store(next)
}

// sumRecent writes the count per level over the current window and the one
// before it into dst: the traffic of the last one to two windows, what a
// raise must act on when demand changes abruptly.
func (h *levelHistogram) sumRecent(dst *[NumLevels]uint64) {
	*dst = [NumLevels]uint64{}
	n := uint32(len(h.windows))
	cur := h.cur.Load()
	for i := range min(n, 2) {
		win := &h.windows[(cur+n-i)%n]
		for l := range win {
			dst[l] += uint64(win[l].Load())
		}
	}
}
