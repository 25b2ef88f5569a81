package middleware

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/levee-dev/levee/shed"
	"github.com/levee-dev/levee/shed/throttle"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// ClientOptions configures a Client. The zero value is usable.
type ClientOptions struct {
	// Throttle configures the adaptive throttle kept per priority, so that
	// refusals of sheddable traffic do not throttle critical traffic.
	Throttle throttle.AdaptiveConfig
	// Budget configures the retry budget shared by all calls.
	Budget throttle.RetryBudgetConfig
	// MaxAttempts caps attempts per call, the first included (3).
	MaxAttempts int
	// Backoff is the delay before retrying an Unavailable answer that came
	// without RetryInfo (50 ms). Retry delays get up to 20% random jitter.
	Backoff time.Duration
	// Clock, Rand (uniform in [0, 1)) and Sleep replace time.Now,
	// math/rand/v2.Float64 and a timer wait, for tests.
	Clock func() time.Time
	Rand  func() float64
	Sleep func(ctx context.Context, d time.Duration) error
}

// Client is the client half of load shedding for gRPC: adaptive throttling
// (requests rejected locally when the backend is refusing most of what it
// gets) and retries of overload refusals within a retry budget, after the
// delay the server asked for. Install Unary with grpc.WithUnaryInterceptor.
type Client struct {
	throttles   [shed.NumPriorities]*throttle.Adaptive
	budget      *throttle.RetryBudget
	maxAttempts int
	backoff     time.Duration
	clock       func() time.Time
	rand        func() float64
	sleep       func(context.Context, time.Duration) error
}

// NewClient returns a client interceptor.
func NewClient(o ClientOptions) (*Client, error) {
	c := &Client{maxAttempts: o.MaxAttempts, backoff: o.Backoff, clock: o.Clock, rand: o.Rand, sleep: o.Sleep}
	for i := range c.throttles {
		t, err := throttle.NewAdaptive(o.Throttle)
		if err != nil {
			return nil, err
		}
		c.throttles[i] = t
	}
	var err error
	if c.budget, err = throttle.NewRetryBudget(o.Budget); err != nil {
		return nil, err
	}
	if c.maxAttempts == 0 {
		c.maxAttempts = 3
	}
	if c.maxAttempts < 1 {
		return nil, fmt.Errorf("middleware: client MaxAttempts %d: want at least 1", c.maxAttempts)
	}
	if c.backoff == 0 {
		c.backoff = 50 * time.Millisecond
	}
	if c.clock == nil {
		c.clock = time.Now
	}
	if c.rand == nil {
		c.rand = rand.Float64
	}
	if c.sleep == nil {
		c.sleep = sleepCtx
	}
	return c, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Throttle returns the adaptive throttle used for priority p.
func (c *Client) Throttle(p shed.Priority) *throttle.Adaptive {
	return c.throttles[int(p.Normalize())-1]
}

// ErrThrottled is the status returned for a call the adaptive throttle
// rejected locally, without sending it.
var ErrThrottled = status.Error(codes.ResourceExhausted, "levee: request throttled locally by adaptive throttling")

// Unary is a grpc.UnaryClientInterceptor. The priority for the throttle is
// read from the outgoing x-levee-priority metadata.
func (c *Client) Unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	p, _ := shed.ParsePriority(first(metadata.ValueFromOutgoingContext(ctx, shed.HeaderPriority)))
	th := c.Throttle(p)
	now := c.clock()
	c.budget.Request(now)
	var err error
	for attempt := 1; ; attempt++ {
		if !th.Allow(now, c.rand()) {
			if err == nil {
				err = ErrThrottled
			}
			return err
		}
		err = invoker(ctx, method, req, reply, cc, opts...)
		now = c.clock()
		if !isOverload(err) {
			th.Accepted(now)
		}
		if err == nil || attempt >= c.maxAttempts {
			return err
		}
		delay, ok := c.retryDelay(err)
		if !ok {
			return err
		}
		delay += time.Duration(0.2 * c.rand() * float64(delay))
		if d, has := ctx.Deadline(); has && now.Add(delay).After(d) {
			return err // the retry could not finish in time
		}
		if !c.budget.TryRetry(now) {
			return err
		}
		if c.sleep(ctx, delay) != nil {
			return err
		}
		now = c.clock()
	}
}

func isOverload(err error) bool {
	switch status.Code(err) {
	case codes.ResourceExhausted, codes.Unavailable:
		return true
	}
	return false
}

// retryDelay says whether err is worth retrying and after how long:
// ResourceExhausted only with a RetryInfo asking for a retry (without one
// the server said retrying cannot help), Unavailable after RetryInfo's delay
// or the default backoff.
func (c *Client) retryDelay(err error) (time.Duration, bool) {
	st, _ := status.FromError(err)
	var hint time.Duration
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay() != nil {
			hint = ri.GetRetryDelay().AsDuration()
		}
	}
	switch st.Code() {
	case codes.ResourceExhausted:
		return hint, hint > 0
	case codes.Unavailable:
		if hint > 0 {
			return hint, true
		}
		return c.backoff, true
	}
	return 0, false
}
