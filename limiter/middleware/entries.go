package middleware

import (
	"net"
	"net/netip"
	"strings"

	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/levee-dev/levee/limiter/rules"
)

// Value is an entry with a fixed value, such as the name of an API.
func Value(key, value string) Entry {
	return func(*Request) (rules.Entry, bool) { return rules.Entry{Key: key, Value: value}, true }
}

// Header is an entry whose value is the request's header name (HTTP) or
// metadata key name (gRPC), such as an authenticated user or an API
// token; a request without it has no such entry. Only use headers the
// server sets or verifies: a client can put anything in its own.
func Header(key, name string) Entry {
	lower := strings.ToLower(name)
	return func(r *Request) (rules.Entry, bool) {
		var v string
		if r.HTTP != nil {
			v = r.HTTP.Header.Get(name)
		} else if md, ok := metadata.FromIncomingContext(r.Context); ok {
			if vs := md[lower]; len(vs) > 0 {
				v = vs[0]
			}
		}
		return rules.Entry{Key: key, Value: v}, v != ""
	}
}

// ClientIP is an entry whose value is the address of the connection's
// peer (the HTTP request's RemoteAddr, the gRPC peer), without the port.
// Behind a proxy that is the proxy; take the client's address from a
// header the proxy sets, with Header, instead.
func ClientIP(key string) Entry {
	return func(r *Request) (rules.Entry, bool) {
		var addr string
		if r.HTTP != nil {
			addr = r.HTTP.RemoteAddr
		} else if p, ok := peer.FromContext(r.Context); ok && p.Addr != nil {
			addr = p.Addr.String()
		}
		if ap, err := netip.ParseAddrPort(addr); err == nil {
			return rules.Entry{Key: key, Value: ap.Addr().Unmap().String()}, true
		}
		if host, _, err := net.SplitHostPort(addr); err == nil {
			addr = host
		}
		return rules.Entry{Key: key, Value: addr}, addr != ""
	}
}

// Route is an entry whose value names the operation: the gRPC method, or
// the pattern of the net/http ServeMux route that matched ("GET
// /posts/{id}"), or else the method and path. The pattern is known only to
// a Limiter wrapping a handler inside the mux; wrapping the mux itself
// sees paths, one value per distinct path.
func Route(key string) Entry {
	return func(r *Request) (rules.Entry, bool) {
		switch {
		case r.HTTP == nil:
			return rules.Entry{Key: key, Value: r.Method}, r.Method != ""
		case r.HTTP.Pattern != "":
			return rules.Entry{Key: key, Value: r.HTTP.Pattern}, true
		}
		return rules.Entry{Key: key, Value: r.HTTP.Method + " " + r.HTTP.URL.Path}, true
	}
}
