package node

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"testing"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/levee-dev/levee/cmd/levee/internal/tlsfiles"
	"github.com/levee-dev/levee/cmd/levee/internal/tlsfiles/tlstest"
	"github.com/levee-dev/levee/limiter/cluster/clustertest"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
	"github.com/levee-dev/levee/shed/shedtest"
)

// TestClusterPeerTLS runs two nodes serving TLS whose peer API answers only
// client certificates the cluster's CA signs for the two nodes' names. A
// key owned by one node and taken through the other is still one bucket:
// the forwarding runs over mutual TLS. A caller without a certificate
// reaches the public APIs but not the peer API; one with a certificate
// for another name is refused; one with another CA's certificate, or in
// plain text, reaches nothing.
func TestClusterPeerTLS(t *testing.T) {
	e := clustertest.StartEtcd(t)
	ca := tlstest.NewCA(t, "levee cluster")
	ids := []string{"t1", "t2"}
	var ms []*member
	for _, id := range ids {
		cert, key := ca.Issue(t, id, tlstest.Server|tlstest.Client)
		files := tlsfiles.Files{CA: ca.File, Cert: cert, Key: key}
		srv, err := files.Server()
		if err != nil {
			t.Fatal(err)
		}
		peerTLS, err := files.Client()
		if err != nil {
			t.Fatal(err)
		}
		// The test's clients trust the CA and present no certificate, as
		// Envoy or a service would.
		ms = append(ms, startMemberTLS(t, e.Endpoints(), id, "", memberTLS{server: srv, peer: peerTLS, client: ca.ClientTLS(t, ""), names: ids}))
	}
	waitRing(t, 2, ms...)

	ctx, cancel := context.WithTimeout(context.Background(), clusterWait)
	defer cancel()
	key := keyOwned(t, "tls", "t2", ids, "")
	for range 3 {
		st, err := ms[0].checkInline(ctx, inlineItem(key, 10, time.Minute, 1))
		if err != nil {
			t.Fatal(err)
		}
		if st[0].Code != leveev1.Code_CODE_OK {
			t.Fatalf("take through t1: %v; want OK", st[0])
		}
	}
	if got := ms[1].remaining(t, key, 10, time.Minute); got != 7 {
		t.Errorf("remaining at the owner t2 after 3 taken through t1: %d; want 7 (one bucket)", got)
	}
	g, err := ms[0].gauges()
	if err != nil {
		t.Fatal(err)
	}
	if g["levee_peer_forwarded_total"] < 3 || g["levee_peer_fallbacks_total"] != 0 || g["levee_peer_batch_errors_total"] != 0 {
		t.Errorf("t1: forwarded %v, fallbacks %v, batch errors %v; want >= 3 forwarded over TLS and no failures",
			g["levee_peer_forwarded_total"], g["levee_peer_fallbacks_total"], g["levee_peer_batch_errors_total"])
	}

	// A caller without a client certificate: Envoy's API answers, the
	// peer API refuses every method.
	if resp, err := ms[1].envoy.ShouldRateLimit(ctx, &rlsv3.RateLimitRequest{
		Domain: "example", Descriptors: []*ratelimitv3.RateLimitDescriptor{{Entries: []*ratelimitv3.RateLimitDescriptor_Entry{{Key: "user", Value: "alice"}}}},
	}); err != nil || resp.OverallCode != rlsv3.RateLimitResponse_OK {
		t.Errorf("ShouldRateLimit over TLS without a client certificate = %v, %v; want OK", resp, err)
	}
	// Envoy's quota service over TLS without a client certificate: an
	// Envoy on each node, one bucket; the owner divides it for both, its
	// Quota calls answered over mutual TLS (no owner fallback).
	var qs []*quotaStream
	for _, m := range ms {
		q := openQuotaCreds(t, m.addrs.GRPC, credentials.NewTLS(ca.ClientTLS(t, "")))
		q.report(map[string]string{"name": "api"}, 1, 0)
		qs = append(qs, q)
	}
	shedtest.Eventually(t, clusterWait, "quota divided by the owner over mTLS", func() error {
		pairs, fallbacks := 0.0, 0.0
		for _, m := range ms {
			pairs += labelled(t, m.addrs.Metrics, `levee_rlqs_buckets{role="pairs"`)
			fallbacks += labelled(t, m.addrs.Metrics, "levee_rlqs_owner_fallbacks_total")
		}
		if fallbacks != 0 {
			t.Fatalf("%v quota syncs fell back: the owner was not reached over TLS", fallbacks)
		}
		if pairs != 2 {
			return fmt.Errorf("the owner holds %v (node, Envoy) pairs, want 2", pairs)
		}
		return nil
	})
	for _, q := range qs {
		q.await("assignment over TLS", tokensPerFill(50))
	}
	anon := leveev1.NewPeerServiceClient(ms[1].conn)
	if _, err := anon.Quota(ctx, &leveev1.QuotaRequest{From: "mallory"}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("Quota without a client certificate: %v; want Unauthenticated", err)
	}
	if _, err := anon.Handoff(ctx, &leveev1.HandoffRequest{From: "mallory"}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("Handoff without a client certificate: %v; want Unauthenticated", err)
	}
	if _, err := anon.Lease(ctx, &leveev1.LeaseRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("Lease without a client certificate: %v; want Unauthenticated", err)
	}
	stream, err := anon.Take(ctx)
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("Take without a client certificate: %v; want Unauthenticated", err)
	}

	dial := func(creds credentials.TransportCredentials) leveev1.PeerServiceClient {
		conn, err := grpc.NewClient(ms[1].addrs.GRPC, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		return leveev1.NewPeerServiceClient(conn)
	}
	// A certificate the cluster's CA signs for a node's name is a node;
	// for another name, it is not.
	if resp, err := dial(credentials.NewTLS(ca.ClientTLS(t, "t1"))).Handoff(ctx, &leveev1.HandoffRequest{From: "t1"}); err != nil || resp.Adopted != 0 {
		t.Errorf("empty Handoff with a node certificate = %v, %v; want 0 adopted", resp, err)
	}
	if _, err := dial(credentials.NewTLS(ca.ClientTLS(t, "t3"))).Handoff(ctx, &leveev1.HandoffRequest{From: "t3"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("Handoff with a certificate for a name not in --peer-names: %v; want PermissionDenied", err)
	}
	// Another CA's certificate, sent although the server asks for its own
	// CA's, fails the handshake.
	foreign := ca.ClientTLS(t, "")
	mallory := tlstest.NewCA(t, "other").ClientTLS(t, "mallory").Certificates[0]
	foreign.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &mallory, nil }
	if _, err := dial(credentials.NewTLS(foreign)).Handoff(ctx, &leveev1.HandoffRequest{From: "mallory"}); status.Code(err) != codes.Unavailable {
		t.Errorf("Handoff with another CA's certificate: %v; want Unavailable (handshake refused)", err)
	}
	// Plain text reaches nothing.
	if _, err := dial(insecure.NewCredentials()).Handoff(ctx, &leveev1.HandoffRequest{From: "plain"}); status.Code(err) != codes.Unavailable {
		t.Errorf("Handoff in plain text to a TLS listener: %v; want Unavailable", err)
	}
}

// TestCheckPeerTLS: TLS settings under which nodes could not reach each
// other, or anyone could reach the peer API, stop a node at start.
func TestCheckPeerTLS(t *testing.T) {
	ca := tlstest.NewCA(t, "levee cluster")
	cert, key := ca.Issue(t, "n", tlstest.Server|tlstest.Client)
	load := func(f func() (*tls.Config, error)) *tls.Config {
		c, err := f()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	files := tlsfiles.Files{CA: ca.File, Cert: cert, Key: key}
	srv, peerTLS := load(files.Server), load(files.Client)
	noCA := load(tlsfiles.Files{Cert: cert, Key: key}.Server)
	for _, c := range []struct {
		name      string
		tls, peer *tls.Config
		names     []string
		want      string // "" for no error
	}{
		{"plain text", nil, nil, nil, ""},
		{"mutual TLS", srv, peerTLS, nil, ""},
		{"mutual TLS with names", srv, peerTLS, []string{"n"}, ""},
		{"serving TLS, dialing plain text", srv, nil, nil, "dial its peers over TLS too"},
		{"serving plain text, dialing TLS", nil, peerTLS, nil, "must serve TLS itself"},
		{"no client CA", noCA, peerTLS, nil, "--tls-client-ca"},
		{"names without TLS", nil, nil, []string{"n"}, "--peer-names needs TLS"},
	} {
		err := checkPeerTLS(Config{GRPCAddr: "127.0.0.1:0", TLS: c.tls, Cluster: &ClusterConfig{PeerTLS: c.peer, PeerNames: c.names}})
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: %v; want %q", c.name, err, c.want)
		}
	}
	// Peers dial the advertised address: its host must be in the
	// certificate (127.0.0.1 and localhost are), the bound one need not.
	for _, c := range []struct {
		grpc, adv string
		want      []string // nil for no error
	}{
		{"10.0.0.5:8081", "127.0.0.1:8081", nil},
		{"0.0.0.0:8081", "localhost:8081", nil},
		{"127.0.0.1:8081", "10.0.0.5:8081", []string{"--advertise-addr 10.0.0.5:8081", "10.0.0.5"}},
		{"127.0.0.1:8081", "levee-0.example:8081", []string{"--advertise-addr levee-0.example:8081"}},
		{"10.0.0.5:8081", "", []string{"--grpc-addr 10.0.0.5:8081"}},
	} {
		err := checkPeerTLS(Config{GRPCAddr: c.grpc, TLS: srv, Cluster: &ClusterConfig{AdvertiseAddr: c.adv, PeerTLS: peerTLS}})
		if c.want == nil && err != nil || c.want != nil && err == nil {
			t.Errorf("--grpc-addr %s --advertise-addr %q: %v; want %q", c.grpc, c.adv, err, c.want)
		}
		for _, w := range c.want {
			if err != nil && !strings.Contains(err.Error(), w) {
				t.Errorf("--grpc-addr %s --advertise-addr %q: %v; want an error with %q", c.grpc, c.adv, err, w)
			}
		}
	}
	// --peer-names must list the node itself (by its common or a DNS
	// name): its peers share the list.
	for _, c := range []struct {
		names []string
		want  []string // nil for no error
	}{
		{[]string{"n", "m"}, nil},
		{[]string{"m", "localhost"}, nil},
		{[]string{" ", ""}, nil}, // no name: any certificate the CA signs
		{[]string{"m", "o"}, []string{"--peer-names m,o", "n, localhost"}},
	} {
		err := checkPeerTLS(Config{GRPCAddr: "127.0.0.1:0", TLS: srv, Cluster: &ClusterConfig{PeerTLS: peerTLS, PeerNames: c.names}})
		if c.want == nil && err != nil || c.want != nil && err == nil {
			t.Errorf("--peer-names %q: %v; want %q", c.names, err, c.want)
		}
		for _, w := range c.want {
			if err != nil && !strings.Contains(err.Error(), w) {
				t.Errorf("--peer-names %q: %v; want an error with %q", c.names, err, w)
			}
		}
	}
	// A standalone node has no peers: TLS without a client CA is fine.
	if err := checkPeerTLS(Config{TLS: noCA}); err != nil {
		t.Errorf("standalone with TLS and no client CA: %v", err)
	}
}
