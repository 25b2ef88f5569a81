package node

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/levee-dev/levee/cmd/levee/internal/tlsfiles"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
)

// peerMethods prefixes the full method names of the peer API.
var peerMethods = "/" + leveev1.PeerService_ServiceDesc.ServiceName + "/"

var errNotPeer = status.Error(codes.Unauthenticated,
	"the peer API answers only levee nodes: present a client certificate signed by this node's --tls-client-ca")

// peerGuard refuses calls to the peer API from clients whose certificate
// the TLS listener did not verify, or, with an allow-list, whose
// certificate names none of the allowed nodes. The other APIs share the
// listener and need no client certificate.
type peerGuard struct {
	allowed map[string]bool // nil: any certificate the client CA signs
}

func newPeerGuard(names []string) *peerGuard {
	g := &peerGuard{}
	for _, n := range names {
		if n = strings.TrimSpace(n); n != "" {
			if g.allowed == nil {
				g.allowed = map[string]bool{}
			}
			g.allowed[n] = true
		}
	}
	return g
}

func (g *peerGuard) check(ctx context.Context, method string) error {
	if !strings.HasPrefix(method, peerMethods) {
		return nil
	}
	leaf := tlsfiles.VerifiedClient(ctx)
	if leaf == nil {
		return errNotPeer
	}
	if g.allows(leaf) {
		return nil
	}
	return status.Errorf(codes.PermissionDenied, "client certificate %q names no levee node of --peer-names", leaf.Subject.CommonName)
}

// allows reports whether a verified client certificate is a node's.
func (g *peerGuard) allows(leaf *x509.Certificate) bool {
	if g.allowed == nil {
		return true
	}
	for _, n := range tlsfiles.Names(leaf) {
		if g.allowed[n] {
			return true
		}
	}
	return false
}

func (g *peerGuard) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := g.check(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (g *peerGuard) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := g.check(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
}

// checkPeerTLS refuses TLS settings under which the nodes of a cluster
// could not reach each other, or anyone could reach the peer API: a node
// serving TLS dials its peers over TLS, asks them for a certificate its
// client CA verifies, and holds a certificate that its peers will accept
// both ways: signed for the host they dial (--advertise-addr, else
// --grpc-addr), and, with --peer-names, for one of those names.
func checkPeerTLS(cfg Config) error {
	c := cfg.Cluster
	if c == nil {
		return nil
	}
	switch {
	case cfg.TLS == nil && c.PeerTLS == nil:
		if len(c.PeerNames) > 0 {
			return errors.New("--peer-names needs TLS with a client CA (--tls-cert, --tls-key, --tls-client-ca)")
		}
		return nil
	case cfg.TLS == nil:
		return errors.New("a node dialing its peers over TLS must serve TLS itself (--tls-cert, --tls-key): its peers dial it the same way")
	case c.PeerTLS == nil:
		return errors.New("a clustered node serving TLS must dial its peers over TLS too")
	case cfg.TLS.ClientCAs == nil || cfg.TLS.ClientAuth < tls.VerifyClientCertIfGiven:
		return errors.New("a clustered node serving TLS needs a client CA (--tls-client-ca): its peer API must only answer other nodes")
	}
	// Peers dial the address the node advertises, so its host is the name
	// they verify; the address it binds may be another (0.0.0.0, a pod's
	// IP behind a stable DNS name).
	host := ""
	addr, flag := c.AdvertiseAddr, "--advertise-addr"
	if addr == "" {
		addr, flag = cfg.GRPCAddr, "--grpc-addr"
	}
	if h, _, err := net.SplitHostPort(addr); err == nil {
		if ip := net.ParseIP(h); ip == nil || !ip.IsUnspecified() {
			host = h
		}
	}
	if err := tlsfiles.CheckUsable(cfg.TLS, c.PeerTLS.RootCAs, host, x509.ExtKeyUsageServerAuth); err != nil {
		return fmt.Errorf("--tls-cert: peers dialing this node at %s %s and verifying it with --peer-ca (or --tls-client-ca) would refuse it: %w", flag, addr, err)
	}
	if err := tlsfiles.CheckUsable(c.PeerTLS, cfg.TLS.ClientCAs, "", x509.ExtKeyUsageClientAuth); err != nil {
		return fmt.Errorf("--tls-cert: peers verifying it as a client with --tls-client-ca would refuse it: %w", err)
	}
	// The nodes of a cluster share one list, and every node calls every
	// other: a node not on its own list is refused by all its peers.
	if g := newPeerGuard(c.PeerNames); g.allowed != nil {
		leaf, err := tlsfiles.Leaf(c.PeerTLS)
		if err != nil {
			return fmt.Errorf("--tls-cert: %w", err)
		}
		if !g.allows(leaf) {
			names := tlsfiles.Names(leaf)
			if len(names) == 0 {
				names = []string{"no common or DNS name"}
			}
			return fmt.Errorf("--peer-names %s does not list this node's certificate (--tls-cert, for %s): its peers, given the same list, would refuse it; add one of its names",
				strings.Join(c.PeerNames, ","), strings.Join(names, ", "))
		}
	}
	return nil
}

// isLoopback reports whether a listener's address is on loopback only (or
// a Unix socket, which only this host reaches).
func isLoopback(a net.Addr) bool {
	if a.Network() == "unix" {
		return true
	}
	tcp, ok := a.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}
