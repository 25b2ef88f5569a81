package quota

import (
	"math"
	"time"
)

// MinElapsed is the shortest time a demand is measured over: reports
// closer than this to the last measurement add to the next one.
const MinElapsed = time.Second

// Meter measures one client's demand for one bucket from its usage reports.
// The zero value has seen no report.
type Meter struct {
	since   int64   // Unix nanoseconds of the last measurement; 0: no report yet
	pending uint64  // requests reported since
	rate    float64 // requests per second, once known
	noise   float64 // the rate's standard error
	known   bool
}

// Report records a usage report of requests (allowed plus denied) received
// at now. The first report only starts the clock.
func (m *Meter) Report(now time.Time, requests uint64) {
	t := now.UnixNano()
	if m.since == 0 {
		m.since = t
		return
	}
	m.pending += requests
	el := time.Duration(t - m.since)
	if el < MinElapsed {
		return
	}
	m.rate = float64(m.pending) / el.Seconds()
	// Arrivals counted over a window are about Poisson: n of them have a
	// standard error of √n, and no request seen still leaves an error of
	// about one.
	m.noise = math.Sqrt(max(float64(m.pending), 1)) / el.Seconds()
	m.known = true
	m.pending = 0
	m.since = t
}

// Demand returns the measured demand in requests per second, or Unknown
// before one is measured.
func (m *Meter) Demand() float64 {
	if !m.known {
		return Unknown
	}
	return m.rate
}

// Known reports whether a demand has been measured.
func (m *Meter) Known() bool { return m.known }

// Noise returns the standard error of the measured demand in requests per
// second, 0 before one is measured.
func (m *Meter) Noise() float64 {
	if !m.known {
		return 0
	}
	return m.noise
}
