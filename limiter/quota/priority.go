package quota

import "github.com/levee-dev/levee/shed"

// Admitted returns the fraction of priority p's cohorts that a shedding
// threshold admits: 1 when it admits them all, 0 when it sheds them all.
// Thresholds rise through the cohorts of sheddable first and critical
// last, so the least important priorities shrink first.
func Admitted(p shed.Priority, threshold shed.Level) float64 {
	lo := shed.LevelOf(p, 0)
	hi := lo + shed.NumCohorts - 1
	switch {
	case threshold <= lo:
		return 1
	case threshold > hi:
		return 0
	}
	return float64(hi-threshold+1) / shed.NumCohorts
}

// Shrink returns tokens scaled by the fraction f in [0, 1], rounded down.
func Shrink(tokens uint64, f float64) uint64 {
	if f >= 1 {
		return tokens
	}
	if !(f > 0) {
		return 0
	}
	return uint64(float64(tokens) * f)
}
