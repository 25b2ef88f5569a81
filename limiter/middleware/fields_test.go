package middleware

import (
	"context"
	"net"
	"net/http/httptest"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/client"
	"github.com/levee-dev/levee/limiter/rules"
)

func TestFields(t *testing.T) {
	d := client.Decision{Items: []client.Status{
		{Limited: true, Rate: 10, Period: time.Second, Remaining: 4, ResetAfter: 600 * time.Millisecond, Policy: `we"ird\name`},
		{}, // not limited
		{Limited: true, Shadow: true, Rate: 1, Period: time.Hour, Policy: "shadow"},
		{Limited: true, Rate: 5, Period: 1500 * time.Millisecond, OverLimit: true, RetryAfter: limiter.Never, Policy: "naïve"},
		{Limited: true, Rate: 2, Period: time.Minute, OverLimit: true, Remaining: 1, RetryAfter: 30 * time.Second, ResetAfter: time.Minute, Policy: "p"},
	}}
	policy, limit, ok := fields(&d)
	wantPolicy := `"we\"ird\\name";q=10;w=1, "na__ve";q=5, "p";q=2;w=60`
	wantLimit := `"we\"ird\\name";r=4;t=1, "na__ve";r=0, "p";r=1;t=30`
	if !ok || policy != wantPolicy || limit != wantLimit {
		t.Fatalf("fields:\n%s\n%s\nwant\n%s\n%s", policy, limit, wantPolicy, wantLimit)
	}
	if _, _, ok := fields(&client.Decision{Items: []client.Status{{}}}); ok {
		t.Fatal("fields for no limited item")
	}
	for d, want := range map[time.Duration]int64{0: 0, 1: 1, time.Second: 1, time.Second + 1: 2, 90 * time.Second: 90} {
		if got := ceilSeconds(d); got != want {
			t.Errorf("ceilSeconds(%v) = %d, want %d", d, got, want)
		}
	}
}

func TestEntries(t *testing.T) {
	hr := httptest.NewRequest("GET", "/posts/9", nil)
	hr.RemoteAddr = "[::ffff:192.0.2.7]:5123"
	hr.Header.Set("X-User", "ann")
	h := &Request{HTTP: hr, Context: hr.Context()}
	md := metadata.NewIncomingContext(context.Background(), metadata.Pairs("x-user", "bo"))
	g := &Request{Context: peer.NewContext(md, &peer.Peer{Addr: &net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 9}}), Method: "/svc.S/M"}
	for _, tc := range []struct {
		name string
		e    Entry
		r    *Request
		want string
		ok   bool
	}{
		{"http header", Header("user", "X-User"), h, "ann", true},
		{"http header any case", Header("user", "x-user"), h, "ann", true},
		{"grpc metadata any case", Header("user", "X-User"), g, "bo", true},
		{"missing header", Header("t", "X-Token"), h, "", false},
		{"http ip", ClientIP("ip"), h, "192.0.2.7", true},
		{"grpc ip", ClientIP("ip"), g, "2001:db8::1", true},
		{"grpc route", Route("route"), g, "/svc.S/M", true},
		{"http route without mux", Route("route"), h, "GET /posts/9", true},
		{"value", Value("api", "v1"), g, "v1", true},
	} {
		e, ok := tc.e(tc.r)
		if ok != tc.ok || (ok && e.Value != tc.want) {
			t.Errorf("%s: %+v %v, want %q %v", tc.name, e, ok, tc.want, tc.ok)
		}
	}
	hr.Pattern = "GET /posts/{id}"
	if e, _ := Route("route")(h); e.Value != "GET /posts/{id}" {
		t.Errorf("route with a pattern: %q", e.Value)
	}
	d := All(Descriptor("api", Header("user", "X-User"), Route("route")), Descriptor("api", Header("t", "X-Token")))
	items := d(h)
	if len(items) != 1 || items[0].Domain != "api" || len(items[0].Entries) != 2 ||
		items[0].Entries[0] != (rules.Entry{Key: "user", Value: "ann"}) || items[0].Entries[1].Key != "route" {
		t.Fatalf("describer: %+v", items)
	}
}
