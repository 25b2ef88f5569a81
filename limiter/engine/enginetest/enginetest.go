// Package enginetest builds rule configurations and engines from rule text
// for the tests of the front ends that translate a wire API into engine
// calls (limiter/envoy, limiter/native) and of the tools built on them.
//
// The engine's own tests cannot use it (it imports the engine) and keep
// their own rules.
package enginetest

import (
	"context"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/metric/noop"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/engine"
	"github.com/levee-dev/levee/limiter/rules"
)

// Domain is the domain of Rules.
const Domain = "app"

// Rules exercise every rule feature, in one file of domain Domain. Every
// burst is at most its rate, so a limit's rate is also its bucket's size.
const Rules = `
domain: app
descriptors:
  - key: user
    rate_limit: {unit: second, requests_per_unit: 5, name: per_user}
    descriptors:
      - key: action
        value: post
        rate_limit: {unit: hour, requests_per_unit: 60, burst: 5}
      - key: action
        value: "get*"
        share_threshold: true
        rate_limit: {unit: minute, requests_per_unit: 100}
  - key: ip
    value: "10.*.*.1"
    detailed_metric: true
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: ip
    rate_limit: {unit: day, requests_per_unit: 1000, replaces: [{name: per_user}]}
  - key: blocked
    rate_limit: {unit: week, requests_per_unit: 0}
  - key: free
    rate_limit: {unlimited: true}
  - key: shadow
    shadow_mode: true
    rate_limit: {unit: month, requests_per_unit: 1}
  - key: quota
    quota_mode: true
    value_to_metric: true
    rate_limit: {unit: year, requests_per_unit: 2}
  - key: allow
    value: me
  - key: many
    rate_limit: {unit: second, requests_per_unit: 1000000}
  - key: windows
    rate_limits:
      - {name: burst, unit: second, requests_per_unit: 2}
      - {name: five_minutes, unit: minute, unit_multiplier: 5, requests_per_unit: 3}
`

// Now is a clock that never moves.
func Now() time.Time { return time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC) }

// Config parses yaml as the rule file named file and returns its Config,
// failing tb if it does not parse.
func Config(tb testing.TB, file, yaml string) *rules.Config {
	tb.Helper()
	d, err := rules.Parse(file, []byte(yaml))
	if err != nil {
		tb.Fatal(err)
	}
	cfg, err := rules.NewConfig(d)
	if err != nil {
		tb.Fatal(err)
	}
	return cfg
}

// rulesConfig is Rules parsed once: fuzz targets build an engine per input.
var rulesConfig = sync.OnceValues(func() (*rules.Config, error) {
	d, err := rules.Parse("rules.yaml", []byte(Rules))
	if err != nil {
		return nil, err
	}
	return rules.NewConfig(d)
})

// RulesConfig returns the Config of Rules, parsed once for the whole test
// binary; a Config is immutable, so engines may share it.
func RulesConfig(tb testing.TB) *rules.Config {
	tb.Helper()
	cfg, err := rulesConfig()
	if err != nil {
		tb.Fatal(err)
	}
	return cfg
}

// New returns an engine, without metrics, on the rule file yaml, deciding
// with b, or with a local store of 100,000 buckets when b is nil.
func New(tb testing.TB, yaml string, b engine.Buckets) *engine.Engine {
	tb.Helper()
	if b == nil {
		b = engine.LocalBuckets{Store: limiter.NewStore(100_000)}
	}
	return engine.New(b, Config(tb, "rules.yaml", yaml), nil)
}

// BucketErrors are errors the buckets may fail with and the gRPC code a
// front end must answer each with (limiter/internal/rpc maps them).
var BucketErrors = []struct {
	Err  error
	Code codes.Code
}{
	{limiter.ErrUndecided, codes.Unavailable},
	{fmt.Errorf("owner unreachable: %w", limiter.ErrUndecided), codes.Unavailable},
	{context.Canceled, codes.Canceled},
	{fmt.Errorf("forwarding: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
}

// FailingBuckets cannot decide anything: every Take returns Err.
type FailingBuckets struct{ Err error }

// Take returns f.Err.
func (f FailingBuckets) Take(context.Context, int64, []limiter.Request, []limiter.Result) error {
	return f.Err
}

// ForFuzz returns what a fuzz target builds for each input: an engine on
// Rules with a fresh store of 1,000 buckets, counting into no-op metrics so
// that the metrics code runs too.
func ForFuzz(tb testing.TB) *engine.Engine {
	tb.Helper()
	m, err := engine.NewMetrics(noop.NewMeterProvider().Meter("fuzz"))
	if err != nil {
		tb.Fatal(err)
	}
	return engine.New(engine.LocalBuckets{Store: limiter.NewStore(1000)}, RulesConfig(tb), m)
}

// fuzzEnd bounds fuzz clocks: 2090-01-01, in Unix nanoseconds.
var fuzzEnd = time.Date(2090, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()

// FuzzTime maps any fuzzed int64 to a time from 1970 to 2090: the limiter's
// token time is only promised until then (see limiter.MaxTokensPerSecond),
// and levee is never run with a clock before 1970.
func FuzzTime(ns int64) time.Time {
	return time.Unix(0, (ns&math.MaxInt64)%fuzzEnd)
}

// FuzzAdvance moves a fuzz clock by any step, staying from 1970 to 2090.
func FuzzAdvance(t time.Time, step int64) time.Time {
	ns := t.UnixNano()
	switch {
	case step > 0 && ns > fuzzEnd-step:
		ns = fuzzEnd
	case ns+step < 0:
		ns = 0
	default:
		ns += step
	}
	return time.Unix(0, ns)
}

// CheckRefusal checks a front end's error for a request that a fuzz
// target's own model of the request contract judges valid or not: a
// refusal is InvalidArgument with a message of 1 to 512 bytes, and only an
// invalid request is refused. size describes the request for the failure
// message. It reports whether the request was answered, so that the caller
// goes on to check the statuses.
func CheckRefusal(tb testing.TB, valid bool, err error, size string) (answered bool) {
	tb.Helper()
	if err != nil {
		if status.Code(err) != codes.InvalidArgument {
			tb.Fatalf("error is not InvalidArgument: %v", err)
		}
		if msg := status.Convert(err).Message(); msg == "" || len(msg) > 512 {
			tb.Fatalf("error message of %d bytes: %.600q", len(msg), msg)
		}
		if valid {
			tb.Fatalf("valid request refused: %v", err)
		}
		return false
	}
	if !valid {
		tb.Fatalf("invalid request accepted (%s)", size)
	}
	return true
}
