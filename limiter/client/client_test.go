package client_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/client"
	"github.com/levee-dev/levee/limiter/client/sidecartest"
	"github.com/levee-dev/levee/limiter/rules"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
	"github.com/levee-dev/levee/shed"
	"github.com/levee-dev/levee/shed/shedtest"
)

const testRules = `
domain: api
descriptors:
  - key: user
    rate_limit: {name: per_user, unit: hour, requests_per_unit: 2}
  - key: token
    rate_limits:
      - {name: per_second, unit: second, requests_per_unit: 5}
      - {name: per_5_minutes, unit: minute, unit_multiplier: 5, requests_per_unit: 3}
  - key: budget
    rate_limit: {unit: hour, requests_per_unit: 10, reserve: {low: 50%}}
  - key: shadow
    shadow_mode: true
    rate_limit: {unit: hour, requests_per_unit: 1}
  - key: quota
    quota_mode: true
    rate_limit: {unit: hour, requests_per_unit: 1}
  - key: blocked
    rate_limit: {unit: hour, requests_per_unit: 0}
`

// waitFor bounds waits on the sidecar coming back; it guards against
// hangs only.
const waitFor = 30 * time.Second

func newClient(t *testing.T, sc *sidecartest.Sidecar, cfg client.Config) *client.Client {
	t.Helper()
	cfg.Target = sc.Target
	cfg.Now = sc.Clock.Now
	// Reconnect quickly once a stopped sidecar is back.
	cfg.DialOptions = append(cfg.DialOptions, grpc.WithConnectParams(grpc.ConnectParams{MinConnectTimeout: 10 * time.Second,
		Backoff: backoff.Config{BaseDelay: 10 * time.Millisecond, Multiplier: 1.6, MaxDelay: 100 * time.Millisecond}}))
	if cfg.Budget == 0 {
		// Generous: these tests are about outcomes, and a loaded machine
		// with the race detector is slow.
		cfg.Budget = 10 * time.Second
	}
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func user(name string) client.Item {
	return client.Rule("api", rules.Entry{Key: "user", Value: name})
}

// TestCheckDecides: decisions and statuses come back as plain Go values,
// for rules (one limit or several) and inline limits.
func TestCheckDecides(t *testing.T) {
	for _, network := range []sidecartest.Network{sidecartest.TCP, sidecartest.Unix} {
		t.Run(string(network), func(t *testing.T) {
			sc := sidecartest.New(t, testRules, network)
			c := newClient(t, sc, client.Config{})
			d := c.Check(t.Context(), user("ann"), client.Inline("job:7", limiter.Limit{Rate: 10, Period: time.Minute}))
			if !d.Allowed || d.Err != nil || len(d.Items) != 2 {
				t.Fatalf("decision %+v", d)
			}
			if st := d.Items[0]; !st.Limited || st.OverLimit || st.Rate != 2 || st.Period != time.Hour || st.Remaining != 1 ||
				st.ResetAfter != 30*time.Minute || st.Policy != "per_user" {
				t.Errorf("rule status %+v", st)
			}
			if st := d.Items[1]; !st.Limited || st.Rate != 10 || st.Period != time.Minute || st.Remaining != 9 || st.Policy != "inline" {
				t.Errorf("inline status %+v", st)
			}
			d = c.Check(t.Context(), client.Rule("api", rules.Entry{Key: "nobody", Value: "x"}))
			if !d.Allowed || d.Items[0].Limited {
				t.Errorf("unmatched descriptor %+v", d)
			}
			// Several limits: the tightest is reported.
			tok := client.Rule("api", rules.Entry{Key: "token", Value: "t"})
			for range 3 {
				c.Check(t.Context(), tok)
			}
			d = c.Check(t.Context(), tok)
			if d.Allowed || d.Items[0].Policy != "per_5_minutes" || d.Items[0].Period != 5*time.Minute || d.RetryAfter != 100*time.Second {
				t.Errorf("several limits %+v", d)
			}
		})
	}
}

// TestRefusalCacheMakesNoCalls: a refused item is refused locally, with no
// call, until its retry_after, and that is exact: just before it the
// sidecar itself still refuses, at it the sidecar admits.
func TestRefusalCacheMakesNoCalls(t *testing.T) {
	sc := sidecartest.New(t, testRules, sidecartest.TCP)
	c := newClient(t, sc, client.Config{})
	for range 2 {
		if d := c.Check(t.Context(), user("bob")); !d.Allowed {
			t.Fatalf("refused early: %+v", d)
		}
	}
	d := c.Check(t.Context(), user("bob"))
	// 2 per hour: the next token is 30 minutes away.
	if d.Allowed || d.Cached || d.RetryAfter != 30*time.Minute || d.Items[0].RetryAfter != 30*time.Minute {
		t.Fatalf("third check %+v", d)
	}
	calls := sc.Calls()
	if calls != 3 {
		t.Fatalf("%d calls for 3 checks", calls)
	}
	for i := range 100 {
		if i == 50 {
			sc.Clock.Add(30*time.Minute - time.Nanosecond - 1000*time.Second)
		}
		d := c.Check(t.Context(), user("bob"), client.Inline("other", limiter.Limit{Rate: 1, Period: time.Second}))
		if d.Allowed || !d.Cached || d.Err != nil || !d.Items[0].OverLimit || d.Items[0].Policy != "per_user" || d.Items[1].Limited {
			t.Fatalf("check %d: %+v", i, d)
		}
		if i == 99 && d.RetryAfter != 1000*time.Second+time.Nanosecond {
			t.Fatalf("cached retry %v", d.RetryAfter)
		}
	}
	if sc.Calls() != calls {
		t.Fatalf("the cache let %d calls through", sc.Calls()-calls)
	}
	if st := c.Stats(); st.Checks != 103 || st.Calls != 3 || st.Cached != 100 || st.Failures != 0 {
		t.Fatalf("stats %+v", st)
	}
	// Exact: one nanosecond before retry_after the sidecar agrees.
	sc.Clock.Add(1000 * time.Second)
	raw := leveev1.NewRateLimitServiceClient(dial(t, sc.Target))
	look := &leveev1.CheckRequest{Items: []*leveev1.CheckItem{{
		Target: &leveev1.CheckItem_Descriptor_{Descriptor_: &leveev1.RuleDescriptor{Domain: "api", Entries: []*leveev1.Entry{{Key: "user", Value: "bob"}}}},
	}}}
	if resp, err := raw.Check(t.Context(), look); err != nil || resp.OverallCode != leveev1.Code_CODE_OVER_LIMIT ||
		resp.Statuses[0].RetryAfter.AsDuration() != time.Nanosecond {
		t.Fatalf("the sidecar at retry_after - 1ns: %v %v", resp, err)
	}
	if d := c.Check(t.Context(), user("bob")); !d.Cached {
		t.Fatalf("cache expired early: %+v", d)
	}
	sc.Clock.Add(time.Nanosecond)
	calls = sc.Calls()
	if d := c.Check(t.Context(), user("bob")); !d.Allowed || d.Cached || sc.Calls() != calls+1 {
		t.Fatalf("at retry_after: %+v, %d calls", d, sc.Calls()-calls)
	}
}

// TestRefusalCacheKeys: a cached refusal refuses only what the sidecar
// would: the same item at the same priority for as many or more hits; and
// refusals that do not refuse a check alone are never cached.
func TestRefusalCacheKeys(t *testing.T) {
	sc := sidecartest.New(t, testRules, sidecartest.TCP)
	c := newClient(t, sc, client.Config{})
	ctx := t.Context()

	// A capacity budget: low may draw while half the bucket remains.
	budget := client.Rule("api", rules.Entry{Key: "budget", Value: "b"})
	for range 5 {
		if d := c.CheckPriority(ctx, shed.Low, budget); !d.Allowed {
			t.Fatalf("low refused early: %+v", d)
		}
	}
	if d := c.CheckPriority(ctx, shed.Low, budget); d.Allowed || d.Cached {
		t.Fatalf("low past its reserve: %+v", d)
	}
	if d := c.CheckPriority(ctx, shed.Low, budget); d.Allowed || !d.Cached {
		t.Fatalf("low again: %+v", d)
	}
	if d := c.CheckPriority(ctx, shed.Critical, budget); !d.Allowed || d.Cached {
		t.Fatalf("critical was refused by low's cached refusal: %+v", d)
	}

	// Hits: a refusal of 3 tokens does not refuse 1.
	three := user("cy")
	three.Hits = 3
	if d := c.Check(ctx, three); d.Allowed || d.Cached || d.Items[0].RetryAfter != limiter.Never {
		t.Fatalf("3 hits of a 2-token bucket: %+v", d)
	}
	if d := c.Check(ctx, user("cy")); !d.Allowed {
		t.Fatalf("1 hit after a refusal that can never pass: %+v", d)
	}
	c.Check(ctx, user("cy"))
	two := user("cy")
	two.Hits = 2
	if d := c.Check(ctx, two); d.Allowed || d.Cached {
		t.Fatalf("2 hits on an empty bucket: %+v", d)
	}
	if d := c.Check(ctx, user("cy")); d.Allowed || d.Cached {
		t.Fatalf("a 2-hit refusal refused 1 hit from the cache: %+v", d)
	}
	if d := c.Check(ctx, two); !d.Cached {
		t.Fatalf("a 1-hit refusal did not refuse 2 hits from the cache: %+v", d)
	}

	// Shadow, quota mode and block lists are never cached.
	for _, key := range []string{"shadow", "quota", "blocked"} {
		it := client.Rule("api", rules.Entry{Key: key, Value: "x"})
		c.Check(ctx, it)
		calls := sc.Calls()
		c.Check(ctx, it)
		c.Check(ctx, it)
		if sc.Calls() != calls+2 {
			t.Errorf("%s: %d calls for 2 checks", key, sc.Calls()-calls)
		}
	}
	// A quota-mode item over its limit does not refuse a check whose other
	// quota-mode item is under it, and the client does not pretend so.
	q := client.Rule("api", rules.Entry{Key: "quota", Value: "x"})
	if d := c.Check(ctx, q, client.Rule("api", rules.Entry{Key: "quota", Value: "fresh"})); !d.Allowed || !d.Items[0].OverLimit || !d.Items[0].QuotaMode {
		t.Fatalf("quota mode: %+v", d)
	}
}

// TestFailOpenAndClosed: with the sidecar stopped mid-test, checks are
// decided by each client's failure mode and counted, with the reason; once
// it is back, they are decided by levee again.
func TestFailOpenAndClosed(t *testing.T) {
	for _, network := range []sidecartest.Network{sidecartest.TCP, sidecartest.Unix} {
		t.Run(string(network), func(t *testing.T) {
			sc := sidecartest.New(t, testRules, network)
			open := newClient(t, sc, client.Config{})
			closed := newClient(t, sc, client.Config{FailClosed: true})
			it := client.Inline("k", limiter.Limit{Rate: 1000, Period: time.Second})
			for _, c := range []*client.Client{open, closed} {
				if d := c.Check(t.Context(), it); !d.Allowed || d.Err != nil {
					t.Fatalf("before the stop: %+v", d)
				}
			}
			sc.Stop()
			for range 5 {
				if d := open.Check(t.Context(), it); !d.Allowed || d.Err == nil || d.Items != nil {
					t.Fatalf("fail open: %+v", d)
				}
				if d := closed.Check(t.Context(), it); d.Allowed || d.Err == nil || d.Items != nil {
					t.Fatalf("fail closed: %+v", d)
				}
			}
			if st := open.Stats(); st.Failures != 5 || st.Checks != 6 {
				t.Errorf("open stats %+v", st)
			}
			if st := closed.Stats(); st.Failures != 5 || st.Checks != 6 {
				t.Errorf("closed stats %+v", st)
			}
			if err := sc.Restart(); err != nil {
				t.Fatal(err)
			}
			shedtest.Eventually(t, waitFor, "a check allowed once the sidecar is back", func() error {
				if d := closed.Check(t.Context(), it); !d.Allowed || d.Err != nil {
					return fmt.Errorf("after the restart: %+v", d)
				}
				return nil
			})
		})
	}
}

// TestBudget: a sidecar slower than the budget does not hold the caller;
// the failure mode decides, and the reason says the deadline passed.
func TestBudget(t *testing.T) {
	sc := sidecartest.New(t, testRules, sidecartest.TCP)
	c := newClient(t, sc, client.Config{Budget: 20 * time.Millisecond, FailClosed: true})
	it := client.Inline("k", limiter.Limit{Rate: 1000, Period: time.Second})
	if d := c.Check(t.Context(), it); !d.Allowed {
		t.Fatalf("before the stall: %+v", d)
	}
	sc.Stall(true)
	d := c.Check(t.Context(), it)
	if d.Allowed || status.Code(errors.Unwrap(d.Err)) != codes.DeadlineExceeded {
		t.Fatalf("stalled: %+v", d)
	}
	// The caller's own deadline, when shorter, bounds the check too.
	ctx, cancel := context.WithTimeout(t.Context(), time.Millisecond)
	defer cancel()
	if d := c.Check(ctx, it); d.Allowed || d.Err == nil {
		t.Fatalf("with the caller's deadline: %+v", d)
	}
	sc.Stall(false)
	if d := c.Check(t.Context(), it); !d.Allowed || d.Err != nil {
		t.Fatalf("after the stall: %+v", d)
	}
	if st := c.Stats(); st.Failures != 2 {
		t.Fatalf("stats %+v", st)
	}
}

// TestInvalidItemIsAFailure: a request the sidecar refuses as invalid is
// not decided by levee; Err names the field.
func TestInvalidItemIsAFailure(t *testing.T) {
	sc := sidecartest.New(t, testRules, sidecartest.TCP)
	c := newClient(t, sc, client.Config{FailClosed: true})
	d := c.Check(t.Context(), client.Rule("api", rules.Entry{Key: "", Value: "x"}))
	if d.Allowed || status.Code(errors.Unwrap(d.Err)) != codes.InvalidArgument {
		t.Fatalf("%+v", d)
	}
}

func dial(t *testing.T, target string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestNoItems: a check of nothing is allowed without a call.
func TestNoItems(t *testing.T) {
	sc := sidecartest.New(t, testRules, sidecartest.TCP)
	c := newClient(t, sc, client.Config{FailClosed: true})
	if d := c.Check(t.Context()); !d.Allowed || d.Err != nil || sc.Calls() != 0 {
		t.Fatalf("%+v, %d calls", d, sc.Calls())
	}
}
