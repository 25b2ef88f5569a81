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
