package quota

import "math/bits"

// u128 is an unsigned 128-bit product, so that FillInterval's exact
// arithmetic cannot overflow.
type u128 struct{ hi, lo uint64 }

func new128(a, b uint64) u128 {
	hi, lo := bits.Mul64(a, b)
	return u128{hi, lo}
}

// div returns the quotient and remainder of x / d; ok is false when d is 0
// or the quotient does not fit in 64 bits.
func (x u128) div(d uint64) (q, r uint64, ok bool) {
	if d == 0 || x.hi >= d {
		return 0, 0, false
	}
	q, r = bits.Div64(x.hi, x.lo, d)
	return q, r, true
}
