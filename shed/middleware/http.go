package middleware

import (
	"context"
	"errors"
	"net/http"
	"net/textproto"
	"strconv"
	"time"

	"github.com/levee-dev/levee/shed"
)

var (
	httpPriority = textproto.CanonicalMIMEHeaderKey(shed.HeaderPriority)
	httpCohort   = textproto.CanonicalMIMEHeaderKey(shed.HeaderCohort)
	httpUser     = textproto.CanonicalMIMEHeaderKey(shed.HeaderUser)
)

// HTTP wraps next: requests take their level from the X-Levee-Priority,
// X-Levee-Cohort and X-Levee-User headers; a shed request gets 503 Service
// Unavailable with Retry-After (whole seconds, rounded up), a bad label 400
// naming the header.
func (g *Guard) HTTP(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		start := g.clock()
		l, err := g.level(shed.Labels{
			Priority: first(req.Header[httpPriority]),
			Cohort:   first(req.Header[httpCohort]),
			User:     first(req.Header[httpUser]),
		}, start)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		p, err := g.res.Acquire(req.Context(), l)
		if err != nil {
			writeShed(w, err)
			return
		}
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			g.res.Release(p, g.clock().Sub(start), httpOutcome(req.Context(), sw.code))
		}()
		next.ServeHTTP(sw, req)
	})
}

func writeShed(w http.ResponseWriter, err error) {
	var ref *shed.Refusal
	if errors.As(err, &ref) && ref.RetryAfter > 0 {
		secs := (ref.RetryAfter + time.Second - 1) / time.Second
		w.Header().Set("Retry-After", strconv.FormatInt(int64(secs), 10))
	}
	http.Error(w, err.Error(), http.StatusServiceUnavailable)
}

func httpOutcome(ctx context.Context, code int) shed.Outcome {
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		// The caller's deadline passed: what the caller saw was a
		// timeout, as the gRPC middleware counts it.
		return shed.OutcomeDropped
	case ctx.Err() != nil:
		return shed.OutcomeIgnored
	case code == http.StatusServiceUnavailable, code == http.StatusGatewayTimeout, code == http.StatusTooManyRequests:
		return shed.OutcomeDropped
	}
	return shed.OutcomeSuccess
}

// statusWriter remembers the status code the handler sent.
type statusWriter struct {
	http.ResponseWriter
	code int
}

// WriteHeader records the first status code sent.
func (s *statusWriter) WriteHeader(code int) {
	if s.code == 0 {
		s.code = code
	}
	s.ResponseWriter.WriteHeader(code)
}

// Write records an implicit 200 if no status code was sent.
func (s *statusWriter) Write(b []byte) (int, error) {
	if s.code == 0 {
		s.code = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Flush passes through to the underlying writer, if it can flush.
func (s *statusWriter) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }
