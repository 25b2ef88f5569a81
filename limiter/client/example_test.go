package client_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/client"
	"github.com/levee-dev/levee/limiter/client/sidecartest"
	"github.com/levee-dev/levee/limiter/rules"
)

// sidecar starts an in-process sidecar with a rule file, standing in for
// `levee serve` next to the service.
func sidecar(ruleYAML string) *sidecartest.Sidecar {
	sc, err := sidecartest.Start(ruleYAML, sidecartest.Unix)
	if err != nil {
		log.Fatal(err)
	}
	return sc
}

// A service checks a rule from levee's rule files, here two posts a minute
// per user, before doing the work.
func Example() {
	sc := sidecar(`
domain: social
descriptors:
  - key: user
    descriptors:
      - key: action
        value: post
        rate_limit: {name: posts, unit: minute, requests_per_unit: 2}
`)
	defer sc.Close()

	c, err := client.New(client.Config{
		Target: sc.Target,   // e.g. "unix:///run/levee/levee.sock" or "127.0.0.1:8081"
		Budget: time.Second, // default 5 ms; generous here, where the first check may wait for the connection
		Now:    sc.Clock.Now,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	post := client.Rule("social", rules.Entry{Key: "user", Value: "alice"}, rules.Entry{Key: "action", Value: "post"})
	for range 3 {
		d := c.Check(context.Background(), post)
		st := d.Items[0]
		fmt.Printf("allowed=%v remaining=%d retry_after=%v policy=%s\n", d.Allowed, st.Remaining, d.RetryAfter, st.Policy)
	}
	// Output:
	// allowed=true remaining=1 retry_after=0s policy=posts
	// allowed=true remaining=0 retry_after=0s policy=posts
	// allowed=false remaining=0 retry_after=30s policy=posts
}

// A limit the caller defines itself needs no rule file: here ten exports an
// hour per tenant, in bursts of up to three.
func ExampleInline() {
	sc := sidecar("")
	defer sc.Close()
	c, err := client.New(client.Config{Target: sc.Target, Budget: time.Second, Now: sc.Clock.Now})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	exports := client.Inline("exports:tenant-42", limiter.Limit{Rate: 10, Period: time.Hour, Burst: 3})
	for range 4 {
		d := c.Check(context.Background(), exports)
		fmt.Println(d.Allowed, d.Items[0].Remaining)
	}
	// Output:
	// true 2
	// true 1
	// true 0
	// false 0
}

// Once a key is refused with a time to retry, the client refuses it again
// without calling the sidecar until then.
func ExampleClient_Stats() {
	sc := sidecar("")
	defer sc.Close()
	c, err := client.New(client.Config{Target: sc.Target, Budget: time.Second, Now: sc.Clock.Now})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	once := client.Inline("once-a-day", limiter.Limit{Rate: 1, Period: 24 * time.Hour})
	for range 10 {
		c.Check(context.Background(), once)
	}
	st := c.Stats()
	fmt.Printf("checks=%d calls=%d cached=%d\n", st.Checks, st.Calls, st.Cached)
	// Output:
	// checks=10 calls=2 cached=8
}

// When the sidecar cannot answer within the budget, the failure mode
// decides: here work is refused, and the reason is kept.
func ExampleConfig_failClosed() {
	sc := sidecar("")
	c, err := client.New(client.Config{Target: sc.Target, Budget: 5 * time.Millisecond, FailClosed: true})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	sc.Close() // the sidecar is gone

	d := c.Check(context.Background(), client.Inline("k", limiter.Limit{Rate: 1, Period: time.Second}))
	fmt.Println(d.Allowed, d.Err != nil, c.Stats().Failures)
	// Output:
	// false true 1
}
