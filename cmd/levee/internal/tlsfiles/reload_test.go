package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"

	"github.com/levee-dev/levee/cmd/levee/internal/tlsfiles/tlstest"
)

// TestCertificateReload: a certificate rotated in place is served from the
// next handshake on, by servers and clients; one that does not load leaves
// the last good one in use.
func TestCertificateReload(t *testing.T) {
	old := reloadEvery
	reloadEvery = 0
	t.Cleanup(func() { reloadEvery = old })

	ca := tlstest.NewCA(t, "test")
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "node.pem"), filepath.Join(dir, "node-key.pem")
	install := func(cn string) {
		t.Helper()
		c, k := ca.Issue(t, cn, tlstest.Server|tlstest.Client)
		for src, dst := range map[string]string{c: cert, k: key} {
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			// A rename, as cert-manager and most rotators replace files.
			tmp := dst + ".tmp"
			if err := os.WriteFile(tmp, b, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, dst); err != nil {
				t.Fatal(err)
			}
		}
	}
	install("first")
	files := Files{CA: ca.File, Cert: cert, Key: key}
	srv, err := files.Server()
	if err != nil {
		t.Fatal(err)
	}
	cl, err := files.Client()
	if err != nil {
		t.Fatal(err)
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
	// served returns the name of the certificate a TLS handshake sees, and
	// presented the one a client sends.
	served := func() string {
		t.Helper()
		c, err := tls.Dial("tcp", lis.Addr().String(), ca.ClientTLS(t, ""))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	presented := func() string {
		t.Helper()
		c, err := cl.GetClientCertificate(&tls.CertificateRequestInfo{})
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(c.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		return leaf.Subject.CommonName
	}
	if s, p := served(), presented(); s != "first" || p != "first" {
		t.Fatalf("before rotation: served %q, presented %q; want first", s, p)
	}
	install("second")
	if s, p := served(), presented(); s != "second" || p != "second" {
		t.Fatalf("after rotation: served %q, presented %q; want second", s, p)
	}
	if err := os.WriteFile(cert, []byte("half a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if s, p := served(), presented(); s != "second" || p != "second" {
		t.Fatalf("after a broken rotation: served %q, presented %q; want the last good, second", s, p)
	}
}
