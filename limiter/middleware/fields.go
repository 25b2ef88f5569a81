package middleware

import (
	"strconv"
	"time"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/client"
)

// The response fields of draft-ietf-httpapi-ratelimit-headers.
const (
	PolicyField    = "RateLimit-Policy"
	RateLimitField = "RateLimit"
)

// fields formats the RateLimit-Policy and RateLimit field values of d: one
// item per limited, enforced quota. ok is false when there is none.
func fields(d *client.Decision) (policy, limit string, ok bool) {
	var p, l []byte
	for i := range d.Items {
		st := &d.Items[i]
		if !st.Limited || st.Shadow {
			continue
		}
		if len(p) > 0 {
			p, l = append(p, ", "...), append(l, ", "...)
		}
		p = sfString(p, st.Policy)
		p = append(p, ";q="...)
		p = strconv.AppendUint(p, st.Rate, 10)
		if st.Period >= time.Second && st.Period%time.Second == 0 {
			p = append(p, ";w="...)
			p = strconv.AppendInt(p, int64(st.Period/time.Second), 10)
		}
		l = sfString(l, st.Policy)
		l = append(l, ";r="...)
		l = strconv.AppendUint(l, st.Remaining, 10)
		t := st.ResetAfter
		if st.OverLimit {
			t = st.RetryAfter
		}
		if t != limiter.Never {
			l = append(l, ";t="...)
			l = strconv.AppendInt(l, ceilSeconds(t), 10)
		}
	}
	return string(p), string(l), len(p) > 0
}

// sfString appends s as a Structured Field string: quoted, with '"' and
// '\' escaped; characters a String cannot hold (outside printable ASCII)
// become '_'.
func sfString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20 || c > 0x7e:
			b = append(b, '_')
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

// ceilSeconds rounds d up to whole seconds, as delay-seconds are.
func ceilSeconds(d time.Duration) int64 {
	s := int64(d / time.Second)
	if d%time.Second > 0 {
		s++
	}
	return s
}
