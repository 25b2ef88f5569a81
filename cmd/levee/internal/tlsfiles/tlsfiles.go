// Package tlsfiles loads the PEM files that levee's TLS flags name into
// crypto/tls configurations: the node's gRPC listener and its connections
// to peers, the admin API, etcd, and levee ctl all load them the same way.
// A certificate and key are read again when their files' content changes
// (looked at once a second at most, on a handshake), so rotating them needs
// no restart; CA files are read once.
package tlsfiles

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Files names the PEM files of one end of a TLS connection.
type Files struct {
	// CA holds the certificates that verify the other end: servers for a
	// client, clients for a server.
	CA string
	// Cert and Key are this end's certificate chain and private key.
	Cert, Key string
}

// IsZero reports whether no file is named.
func (f Files) IsZero() bool { return f == Files{} }

// Client returns the configuration of a client dialing with f: the server
// is verified against CA (the system's roots when CA is empty), and Cert
// and Key, when given, are presented to servers that ask for a client
// certificate. With no file named it returns nil: plaintext.
func (f Files) Client() (*tls.Config, error) {
	if f.IsZero() {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.CA != "" {
		pool, err := Pool(f.CA)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	if f.Cert != "" || f.Key != "" {
		kp, err := f.keyPair()
		if err != nil {
			return nil, err
		}
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return kp.get(), nil }
	}
	return cfg, nil
}

// Server returns the configuration of a server listening with f: Cert and
// Key are required. With CA, a client certificate is verified against it
// when the client presents one (tls.VerifyClientCertIfGiven): whether a
// call needs one is the service's decision, see [VerifiedClient]. With no file
// named it returns nil: plaintext.
func (f Files) Server() (*tls.Config, error) {
	if f.IsZero() {
		return nil, nil
	}
	if f.Cert == "" && f.Key == "" {
		return nil, errors.New("a TLS server needs its own certificate and key")
	}
	kp, err := f.keyPair()
	if err != nil {
		return nil, err
	}
	// Certificates stays empty: crypto/tls asks GetCertificate only then
	// (or when the client names a server).
	cfg := &tls.Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return kp.get(), nil },
		MinVersion:     tls.VersionTLS12,
	}
	if f.CA != "" {
		pool, err := Pool(f.CA)
		if err != nil {
			return nil, err
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return cfg, nil
}

func (f Files) keyPair() (*keyPair, error) {
	if f.Cert == "" {
		return nil, errors.New("a key file without its certificate: give both the cert file and the key file")
	}
	if f.Key == "" {
		return nil, errors.New("a cert file without its key: give both the cert file and the key file")
	}
	kp := &keyPair{cert: f.Cert, key: f.Key}
	if err := kp.load(); err != nil {
		return nil, err
	}
	return kp, nil
}

// reloadEvery is how often a certificate's files are looked at again.
var reloadEvery = time.Second

// keyPair is a certificate and key read from files, and read again when
// the files change, so that a rotated certificate (cert-manager, a
// short-lived CA) is served from the next handshake on without a restart.
// A pair that does not load (files caught half-written, a key that does
// not match) leaves the last good pair in use, and is tried again when
// the files change again.
//
// A change is told by the files' content, not their modification time and
// size: a rotation may keep both (a certificate of the same length written
// within the clock's granularity, a copy that preserves times), and the
// files are small enough to read once a second.
type keyPair struct {
	cert, key string

	mu      sync.Mutex
	pair    *tls.Certificate
	sum     [sha256.Size]byte // of the files as last read, loaded or not
	checked time.Time
}

// read returns the files' content and its digest.
func (k *keyPair) read() (certPEM, keyPEM []byte, sum [sha256.Size]byte, err error) {
	if certPEM, err = os.ReadFile(k.cert); err != nil {
		return nil, nil, sum, err
	}
	if keyPEM, err = os.ReadFile(k.key); err != nil {
		return nil, nil, sum, err
	}
	h := sha256.New()
	// Lengths first, so that no split of the same bytes between the two
	// files digests alike.
	_ = binary.Write(h, binary.BigEndian, [2]uint64{uint64(len(certPEM)), uint64(len(keyPEM))})
	h.Write(certPEM)
	h.Write(keyPEM)
	h.Sum(sum[:0])
	return certPEM, keyPEM, sum, nil
}

// load reads the pair.
func (k *keyPair) load() error {
	certPEM, keyPEM, sum, err := k.read()
	if err == nil {
		k.sum = sum
		err = k.parse(certPEM, keyPEM)
	}
	if err != nil {
		return fmt.Errorf("certificate %s with key %s: %w", k.cert, k.key, err)
	}
	return nil
}

// parse makes the pair of the files' content, as read once: a pair parsed
// from the bytes whose digest was taken is the pair that digest stands for.
func (k *keyPair) parse(certPEM, keyPEM []byte) error {
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return err
	}
	k.pair = &c
	return nil
}

// get returns the pair, read again first if the files changed since.
//
// It is the only certificate there is, and it is offered whatever the
// other end says it supports (ClientHelloInfo.SupportsCertificate,
// CertificateRequestInfo.SupportsCertificate are not asked). A server:
// crypto/tls does the same with a single Config.Certificates entry; a
// certificate that really cannot be used fails the handshake anyway, with
// crypto/tls's error naming why, while SupportsCertificate refuses some
// clients that complete the handshake (a TLS 1.2 client listing no curve
// of an ECDSA certificate). A client: crypto/tls with Config.Certificates
// would send no certificate when the server's request does not fit (a CA
// it does not list), and the call would pass the handshake only to be
// refused for presenting none ("present a client certificate signed
// by ..."); sent anyway, the server fails the handshake with "unknown
// certificate authority", which names the fault. See
// TestOnlyCertificateIsOffered.
func (k *keyPair) get() *tls.Certificate {
	k.mu.Lock()
	defer k.mu.Unlock()
	if now := time.Now(); now.Sub(k.checked) >= reloadEvery {
		k.checked = now
		if certPEM, keyPEM, sum, err := k.read(); err == nil && sum != k.sum {
			k.sum = sum
			_ = k.parse(certPEM, keyPEM) // on failure the last good pair stays
		}
	}
	return k.pair
}

// Pool reads a file of PEM certificates into a pool.
func Pool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA file %s holds no PEM certificate", file)
	}
	return pool, nil
}

// VerifiedClient returns the client certificate that the TLS connection
// of a gRPC call verified, or nil when the client presented none or the
// connection is not TLS.
func VerifiedClient(ctx context.Context) *x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return nil
	}
	return ti.State.VerifiedChains[0][0]
}

// Names lists the names a certificate can be allowed by: its common name
// and its DNS names.
func Names(c *x509.Certificate) []string {
	names := make([]string, 0, 1+len(c.DNSNames))
	if c.Subject.CommonName != "" {
		names = append(names, c.Subject.CommonName)
	}
	return append(names, c.DNSNames...)
}

// CheckUsable verifies the certificate cfg presents as the other end of a
// connection would: against roots (the system's when nil), for host when
// it is not empty, and for each of usages. A node's certificate that its
// peers would refuse is better refused at start than found by the first
// forwarded check.
func CheckUsable(cfg *tls.Config, roots *x509.CertPool, host string, usages ...x509.ExtKeyUsage) error {
	chain, leaf, err := presented(cfg)
	if err != nil {
		return err
	}
	inter := x509.NewCertPool()
	for _, der := range chain[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return fmt.Errorf("parsing the certificate chain: %w", err)
		}
		inter.AddCert(c)
	}
	for _, u := range usages {
		// A chain passes when it allows any of the usages asked for, so
		// each is checked on its own.
		opts := x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: host, KeyUsages: []x509.ExtKeyUsage{u}}
		if _, err := leaf.Verify(opts); err != nil {
			return fmt.Errorf("certificate %q for %s: %w", leaf.Subject.CommonName, usageName(u), err)
		}
	}
	return nil
}

// Leaf returns the certificate cfg presents (as a server or as a client),
// parsed.
func Leaf(cfg *tls.Config) (*x509.Certificate, error) {
	_, leaf, err := presented(cfg)
	return leaf, err
}

// presented returns the chain cfg presents and its leaf, parsed.
func presented(cfg *tls.Config) ([][]byte, *x509.Certificate, error) {
	var cert *tls.Certificate
	var err error
	switch {
	case len(cfg.Certificates) > 0:
		cert = &cfg.Certificates[0]
	case cfg.GetCertificate != nil:
		cert, err = cfg.GetCertificate(&tls.ClientHelloInfo{})
	case cfg.GetClientCertificate != nil:
		cert, err = cfg.GetClientCertificate(&tls.CertificateRequestInfo{})
	}
	if err != nil {
		return nil, nil, err
	}
	if cert == nil || len(cert.Certificate) == 0 {
		return nil, nil, errors.New("no certificate")
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, nil, fmt.Errorf("parsing the certificate: %w", err)
	}
	return cert.Certificate, leaf, nil
}

func usageName(u x509.ExtKeyUsage) string {
	switch u {
	case x509.ExtKeyUsageServerAuth:
		return "server use"
	case x509.ExtKeyUsageClientAuth:
		return "client use"
	}
	return fmt.Sprintf("usage %d", u)
}
