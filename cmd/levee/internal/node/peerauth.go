package node

import (
	"context"
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

// peersOnlyUnary and peersOnlyStream refuse calls to the peer API from
// clients whose certificate the TLS listener did not verify. The other
// APIs share the listener and need no client certificate.
func peersOnlyUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if strings.HasPrefix(info.FullMethod, peerMethods) && tlsfiles.VerifiedClient(ctx) == nil {
		return nil, errNotPeer
	}
	return handler(ctx, req)
}

func peersOnlyStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if strings.HasPrefix(info.FullMethod, peerMethods) && tlsfiles.VerifiedClient(ss.Context()) == nil {
		return errNotPeer
	}
	return handler(srv, ss)
}

// isLoopback reports whether a listener's address is on loopback only.
func isLoopback(a net.Addr) bool {
	tcp, ok := a.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}
