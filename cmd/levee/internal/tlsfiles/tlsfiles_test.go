package tlsfiles_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/levee-dev/levee/cmd/levee/internal/tlsfiles"
	"github.com/levee-dev/levee/cmd/levee/internal/tlsfiles/tlstest"
)

func TestNoFilesIsPlaintext(t *testing.T) {
	for name, f := range map[string]func() (*tls.Config, error){
		"Client": tlsfiles.Files{}.Client,
		"Server": tlsfiles.Files{}.Server,
	} {
		if cfg, err := f(); cfg != nil || err != nil {
			t.Errorf("%s with no files = %v, %v; want nil, nil (plaintext)", name, cfg, err)
		}
	}
}

func TestLoads(t *testing.T) {
	ca := tlstest.NewCA(t, "test")
	cert, key := ca.Issue(t, "node", tlstest.Server|tlstest.Client)

	srv, err := tlsfiles.Files{CA: ca.File, Cert: cert, Key: key}.Server()
	if err != nil {
		t.Fatal(err)
	}
	if c, err := srv.GetCertificate(&tls.ClientHelloInfo{}); err != nil || c == nil || srv.ClientCAs == nil || srv.ClientAuth != tls.VerifyClientCertIfGiven {
		t.Errorf("Server: certificate %v (%v), client CAs %v, client auth %v; want one, a pool, VerifyClientCertIfGiven",
			c != nil, err, srv.ClientCAs != nil, srv.ClientAuth)
	}
	srv, err = tlsfiles.Files{Cert: cert, Key: key}.Server()
	if err != nil || srv.ClientAuth != tls.NoClientCert {
		t.Errorf("Server without a CA: %v, %v; want no client certificates asked for", srv, err)
	}

	cl, err := tlsfiles.Files{CA: ca.File, Cert: cert, Key: key}.Client()
	if err != nil {
		t.Fatal(err)
	}
	if cl.GetClientCertificate == nil || cl.RootCAs == nil {
		t.Errorf("Client: certificate %v, root CAs %v; want one and a pool", cl.GetClientCertificate != nil, cl.RootCAs != nil)
	}
	cl, err = tlsfiles.Files{CA: ca.File}.Client()
	if err != nil || cl.GetClientCertificate != nil || len(cl.Certificates) != 0 || cl.RootCAs == nil {
		t.Errorf("Client with a CA only = %v, %v; want the CA and no certificate", cl, err)
	}
}

func TestErrorsNameTheFile(t *testing.T) {
	ca := tlstest.NewCA(t, "test")
	cert, key := ca.Issue(t, "node", tlstest.Server)
	notPEM := filepath.Join(t.TempDir(), "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "missing.pem")
	for _, c := range []struct {
		name string
		load func() (*tls.Config, error)
		want string
	}{
		{"server without a key", tlsfiles.Files{Cert: cert}.Server, "a cert file without its key"},
		{"server with only a CA", tlsfiles.Files{CA: ca.File}.Server, "its own certificate and key"},
		{"client without a cert", tlsfiles.Files{Key: key}.Client, "a key file without its certificate"},
		{"CA that is not PEM", tlsfiles.Files{CA: notPEM, Cert: cert, Key: key}.Server, notPEM + " holds no PEM certificate"},
		{"missing CA", tlsfiles.Files{CA: missing}.Client, "missing.pem"},
		{"key of another certificate", tlsfiles.Files{Cert: cert, Key: ca.File}.Server, "certificate " + cert},
	} {
		if cfg, err := c.load(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, %v; want an error with %q", c.name, cfg, err, c.want)
		}
	}
}

func TestVerifiedClientOutsideTLS(t *testing.T) {
	if c := tlsfiles.VerifiedClient(context.Background()); c != nil {
		t.Errorf("VerifiedClient of a context with no peer = %v; want nil", c)
	}
}

func TestCheckUsable(t *testing.T) {
	ca := tlstest.NewCA(t, "test")
	node, nodeKey := ca.Issue(t, "node", tlstest.Server|tlstest.Client)
	srvOnly, srvOnlyKey := ca.Issue(t, "server-only", tlstest.Server)
	roots, err := tlsfiles.Pool(ca.File)
	if err != nil {
		t.Fatal(err)
	}
	other, err := tlsfiles.Pool(tlstest.NewCA(t, "other").File)
	if err != nil {
		t.Fatal(err)
	}
	load := func(cert, key string) *tls.Config {
		c, err := tlsfiles.Files{Cert: cert, Key: key}.Server()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	both := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	for _, c := range []struct {
		name  string
		cfg   *tls.Config
		roots *x509.CertPool
		host  string
		want  string // "" for no error
	}{
		{"node certificate", load(node, nodeKey), roots, "127.0.0.1", ""},
		{"any host", load(node, nodeKey), roots, "", ""},
		{"server-only certificate", load(srvOnly, srvOnlyKey), roots, "", "for client use"},
		{"another host", load(node, nodeKey), roots, "levee-0.example", "levee-0.example"},
		{"another CA", load(node, nodeKey), other, "", "unknown authority"},
		{"no certificate", &tls.Config{}, roots, "", "no certificate"},
	} {
		err := tlsfiles.CheckUsable(c.cfg, c.roots, c.host, both...)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: %v; want %q", c.name, err, c.want)
		}
	}
}

// TestOnlyCertificateIsOffered: a node's one certificate is offered
// whatever the other end says it supports, because refusing it would be
// worse both ways: a server would turn away clients that complete the
// handshake, and a client sending none would pass a handshake that a
// certificate of another CA should fail.
func TestOnlyCertificateIsOffered(t *testing.T) {
	ca := tlstest.NewCA(t, "test")
	cert, key := ca.Issue(t, "node", tlstest.Server|tlstest.Client)
	srv, err := tlsfiles.Files{CA: ca.File, Cert: cert, Key: key}.Server()
	if err != nil {
		t.Fatal(err)
	}
	// What SupportsCertificate said of the last client hello.
	hello := make(chan error, 1)
	get := srv.GetCertificate
	srv.GetCertificate = func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
		c, err := get(h)
		select {
		case <-hello:
		default:
		}
		hello <- h.SupportsCertificate(c)
		return c, err
	}
	lis, err := tls.Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			_ = c.(*tls.Conn).Handshake()
			_ = c.Close()
		}
	}()

	// A TLS 1.2 client that lists no curve of the (P-256) certificate:
	// SupportsCertificate says no, and the handshake works.
	cfg := ca.ClientTLS(t, "")
	cfg.MaxVersion = tls.VersionTLS12
	cfg.CurvePreferences = []tls.CurveID{tls.X25519}
	c, err := tls.Dial("tcp", lis.Addr().String(), cfg)
	if err != nil {
		t.Fatalf("TLS 1.2 client with X25519 only: %v; want a handshake", err)
	}
	_ = c.Close()
	if err := <-hello; err == nil {
		t.Errorf("SupportsCertificate for a TLS 1.2 client with X25519 only = nil; want an error (else this test shows nothing)")
	}

	// A client whose certificate another CA signs: SupportsCertificate
	// says the server would not take it; sent anyway, the server fails
	// the handshake naming the cause.
	mallory, malloryKey := tlstest.NewCA(t, "other").Issue(t, "mallory", tlstest.Client)
	cl, err := tlsfiles.Files{CA: ca.File, Cert: mallory, Key: malloryKey}.Client()
	if err != nil {
		t.Fatal(err)
	}
	var supported error
	present := cl.GetClientCertificate
	cl.GetClientCertificate = func(r *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		c, err := present(r)
		supported = r.SupportsCertificate(c)
		return c, err
	}
	c, err = tls.Dial("tcp", lis.Addr().String(), cl)
	if err == nil {
		// TLS 1.3: the server's verdict on the client arrives after.
		_, err = c.Read(make([]byte, 1))
		_ = c.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "unknown certificate authority") {
		t.Errorf("client with another CA's certificate: %v; want the handshake failed for an unknown certificate authority", err)
	}
	if supported == nil {
		t.Errorf("SupportsCertificate for another CA's certificate = nil; want an error (else this test shows nothing)")
	}
}
