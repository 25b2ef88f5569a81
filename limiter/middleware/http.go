package middleware

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/levee-dev/levee/limiter/client"
	"github.com/levee-dev/levee/shed"
)

var httpPriority = http.CanonicalHeaderKey(shed.HeaderPriority)

// HTTP wraps next: a request over a quota gets 429 Too Many Requests with
// Retry-After (whole seconds, rounded up) and the RateLimit fields; one
// levee did not decide gets 503 Service Unavailable if the client fails
// closed, and is served otherwise.
func (l *Limiter) HTTP(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		items := l.describe(&Request{HTTP: req, Context: req.Context()})
		if len(items) == 0 {
			next.ServeHTTP(w, req)
			return
		}
		p, _ := shed.ParsePriority(first(req.Header[httpPriority]))
		d := l.client.CheckPriority(req.Context(), p, items...)
		switch {
		case d.Err != nil && !d.Allowed:
			http.Error(w, d.Err.Error(), http.StatusServiceUnavailable)
			return
		case !d.Allowed:
			h := w.Header()
			setFields(h, &d)
			if d.RetryAfter > 0 {
				h.Set("Retry-After", strconv.FormatInt(ceilSeconds(d.RetryAfter), 10))
			}
			http.Error(w, "rate limit exceeded: "+strings.Join(refused(&d), ", "), http.StatusTooManyRequests)
			return
		}
		if !l.opts.OnlyOnRefusal {
			setFields(w.Header(), &d)
		}
		next.ServeHTTP(w, req)
	})
}

func setFields(h http.Header, d *client.Decision) {
	if policy, limit, ok := fields(d); ok {
		h.Set(PolicyField, policy)
		h.Set(RateLimitField, limit)
	}
}

// refused names the quotas that refused d.
func refused(d *client.Decision) []string {
	var out []string
	for i := range d.Items {
		if d.Items[i].OverLimit {
			out = append(out, d.Items[i].Policy)
		}
	}
	return out
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}
