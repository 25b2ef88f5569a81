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
// next handshake on, by servers and clients, even when the rotation keeps
// the files' times and sizes; one that does not load leaves the last good
// one in use.
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
	// A rotation that keeps the files' times and sizes: a certificate and
	// key of the same lengths, written in place, the times put back.
	sameStamp(t, "latest", cert, key, func(cn string) (string, string) { return ca.Issue(t, cn, tlstest.Server|tlstest.Client) })
	if s, p := served(), presented(); s != "latest" || p != "latest" {
		t.Fatalf("after a rotation keeping times and sizes: served %q, presented %q; want latest", s, p)
	}
	if err := os.WriteFile(cert, []byte("half a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if s, p := served(), presented(); s != "latest" || p != "latest" {
		t.Fatalf("after a broken rotation: served %q, presented %q; want the last good, latest", s, p)
	}
}

// sameStamp overwrites cert and key in place with a certificate for cn
// (issued by issue) and its key, of the same lengths as the files hold,
// and puts the files' modification times back: to a look at the files'
// times and sizes, nothing changed.
func sameStamp(t *testing.T, cn, cert, key string, issue func(cn string) (cert, key string)) {
	t.Helper()
	stat := func(p string) os.FileInfo {
		t.Helper()
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return fi
	}
	before := [2]os.FileInfo{stat(cert), stat(key)}
	// ECDSA signatures vary in length by a byte or two: issue until the
	// new files are as long as the old.
	var certPEM, keyPEM []byte
	for i := 0; ; i++ {
		if i == 100 {
			t.Fatalf("no certificate for %s of the lengths of %s and %s in %d tries", cn, cert, key, i)
		}
		c, k := issue(cn)
		var err error
		if certPEM, err = os.ReadFile(c); err != nil {
			t.Fatal(err)
		}
		if keyPEM, err = os.ReadFile(k); err != nil {
			t.Fatal(err)
		}
		if int64(len(certPEM)) == before[0].Size() && int64(len(keyPEM)) == before[1].Size() {
			break
		}
	}
	for i, w := range []struct {
		path string
		b    []byte
	}{{cert, certPEM}, {key, keyPEM}} {
		if err := os.WriteFile(w.path, w.b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(w.path, before[i].ModTime(), before[i].ModTime()); err != nil {
			t.Fatal(err)
		}
		if after := stat(w.path); !after.ModTime().Equal(before[i].ModTime()) || after.Size() != before[i].Size() {
			t.Fatalf("%s: modified %v, %d bytes after the rewrite; want %v, %d as before", w.path, after.ModTime(), after.Size(), before[i].ModTime(), before[i].Size())
		}
	}
}
