// Package middleware applies levee quotas to net/http and gRPC servers,
// through the Go client (limiter/client) and the levee sidecar.
//
// A Limiter asks, for each request, which quotas it draws on (a Describer:
// any function of the request, usually built from Descriptor and the
// entry helpers Header, ClientIP, Route and Value), checks them in one
// call, and then:
//
//   - admits the request, adding the RateLimit-Policy and RateLimit
//     response header fields (unless Options.OnlyOnRefusal);
//   - refuses it when over a quota: HTTP 429 Too Many Requests with
//     Retry-After and the same fields; gRPC ResourceExhausted with
//     errdetails.RetryInfo and errdetails.QuotaFailure details;
//   - when levee did not decide in time, follows the client's failure mode:
//     admits (without fields), or refuses with HTTP 503 or gRPC
//     Unavailable.
//
// A request's priority, which selects a capacity budget's reserve, is read
// from x-levee-priority, as shed/middleware reads it; a bad value counts as
// default here (the shedding guard refuses it).
//
// # Response fields
//
// The fields follow the IETF httpapi working group's "RateLimit header
// fields for HTTP", draft-ietf-httpapi-ratelimit-headers-11 (both fields
// are lists of items named by a String, with Integer parameters): one item
// per limited quota of the request, named by the limit's name in the rule
// file (or the rule's path, or "inline"):
//
//	RateLimit-Policy: "per_user";q=100;w=60
//	RateLimit: "per_user";r=42;t=25
//
// q and w are the limit as written, requests per window (w is left out for
// a window that is not a whole number of seconds). r is the tokens left,
// t the seconds (rounded up) until the bucket is full again, or, on a
// refused quota, until it can be retried, so that Retry-After, the
// furthest of those, never precedes the end of a quota's window, as the
// draft asks. levee's limits are token buckets that refill continuously,
// so a client that spends no more than r within t stays within its quota.
// Shadow-mode quotas are not advertised. With several limits on one rule,
// the fields describe the tightest.
//
// # Order with shedding
//
// Put the shedding guard (shed/middleware) outside the Limiter, so that
// shedding comes first and quotas second:
//
//	h := guard.HTTP(limiter.HTTP(app))
//	srv := grpc.NewServer(grpc.InTapHandle(guard.Tap),
//		grpc.ChainUnaryInterceptor(guard.Unary, limiter.Unary),
//		grpc.ChainStreamInterceptor(guard.Stream, limiter.Stream))
//
// A request shed for overload then spends none of its caller's quota, and
// an overloaded server refuses it with a local decision instead of a call
// to the sidecar.
package middleware

import (
	"context"
	"net/http"

	"github.com/levee-dev/levee/limiter/client"
	"github.com/levee-dev/levee/limiter/rules"
)

// Request is what a Describer reads: an HTTP request, or a gRPC call's
// context (with its incoming metadata and peer) and method.
type Request struct {
	// HTTP is the HTTP request, or nil for a gRPC call.
	HTTP *http.Request
	// Context is the request's context.
	Context context.Context
	// Method is the gRPC method, "/package.Service/Method"; empty for HTTP.
	Method string
}

// A Describer returns the quotas a request draws on. None leaves the
// request unlimited, with no call to the sidecar.
type Describer func(*Request) []client.Item

// An Entry returns one descriptor entry taken from a request, or false
// when the request has nothing for it.
type Entry func(*Request) (rules.Entry, bool)

// Options configures a Limiter.
type Options struct {
	// OnlyOnRefusal leaves the RateLimit fields out of admitted responses.
	OnlyOnRefusal bool
}

// Limiter applies levee quotas to requests.
type Limiter struct {
	client   *client.Client
	describe Describer
	opts     Options
}

// New returns a Limiter checking the quotas describe names with c.
func New(c *client.Client, describe Describer, o Options) *Limiter {
	return &Limiter{client: c, describe: describe, opts: o}
}

// Descriptor describes one rule descriptor in domain whose entries are
// taken from the request in order. A request lacking any entry draws on
// no quota of this descriptor.
func Descriptor(domain string, entries ...Entry) Describer {
	return func(r *Request) []client.Item {
		es := make([]rules.Entry, len(entries))
		for i, f := range entries {
			e, ok := f(r)
			if !ok {
				return nil
			}
			es[i] = e
		}
		return []client.Item{client.Rule(domain, es...)}
	}
}

// All combines describers: a request draws on all their quotas.
func All(ds ...Describer) Describer {
	return func(r *Request) []client.Item {
		var items []client.Item
		for _, d := range ds {
			items = append(items, d(r)...)
		}
		return items
	}
}
