package rsyslogtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
}

func newCA(name string) (*ca, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"budfleet tests"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return &ca{cert: cert, key: key}, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

type leafSpec struct {
	cn        string
	server    bool
	notBefore time.Time
	notAfter  time.Time
}

// issue makes a key and a certificate signed by c and writes them as PEM
// to certFile and keyFile (PKCS #8).
func (c *ca) issue(spec leafSpec, certFile, keyFile string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	sn, err := serial()
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: spec.cn, Organization: []string{"budfleet tests"}},
		NotBefore:    spec.notBefore,
		NotAfter:     spec.notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if spec.server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
		tmpl.DNSNames = []string{"localhost"}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	return os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
}

// Fixtures are the certificate files Start writes into Server.Dir.
type Fixtures struct {
	// CAFile signed the server and client certificates; rsyslog trusts it.
	CAFile         string
	ServerCertFile string
	ServerKeyFile  string
	ClientCertFile string
	ClientKeyFile  string

	// Written only with Options.BadTLS:
	// OtherCAFile is a second CA that signed nothing the server uses (as
	// a client's tls.ca_file: "server signed by an unknown CA").
	OtherCAFile string
	// ForeignClientCertFile/KeyFile: a client certificate from OtherCA.
	ForeignClientCertFile string
	ForeignClientKeyFile  string
	// ExpiredClientCertFile/KeyFile: from the right CA, expired a day ago.
	ExpiredClientCertFile string
	ExpiredClientKeyFile  string
}

// WriteFixtures writes the certificates into dir (with bad, also the
// bad-TLS ones); Start uses it, and unit tests that run their own TLS
// servers can too.
func WriteFixtures(dir string, bad bool) (Fixtures, error) {
	f := Fixtures{
		CAFile:         filepath.Join(dir, "ca.crt"),
		ServerCertFile: filepath.Join(dir, "server.crt"),
		ServerKeyFile:  filepath.Join(dir, "server.key"),
		ClientCertFile: filepath.Join(dir, "client.crt"),
		ClientKeyFile:  filepath.Join(dir, "client.key"),
	}
	root, rootPEM, err := newCA("budfleet test CA")
	if err != nil {
		return f, err
	}
	if err := os.WriteFile(f.CAFile, rootPEM, 0o644); err != nil {
		return f, err
	}
	now := time.Now()
	if err := root.issue(leafSpec{cn: "localhost", server: true, notBefore: now.Add(-time.Hour), notAfter: now.Add(24 * time.Hour)}, f.ServerCertFile, f.ServerKeyFile); err != nil {
		return f, err
	}
	if err := root.issue(leafSpec{cn: "budfleet-agent", notBefore: now.Add(-time.Hour), notAfter: now.Add(24 * time.Hour)}, f.ClientCertFile, f.ClientKeyFile); err != nil {
		return f, err
	}
	if !bad {
		return f, nil
	}
	f.OtherCAFile = filepath.Join(dir, "other-ca.crt")
	f.ForeignClientCertFile = filepath.Join(dir, "foreign-client.crt")
	f.ForeignClientKeyFile = filepath.Join(dir, "foreign-client.key")
	f.ExpiredClientCertFile = filepath.Join(dir, "expired-client.crt")
	f.ExpiredClientKeyFile = filepath.Join(dir, "expired-client.key")
	other, otherPEM, err := newCA("some other CA")
	if err != nil {
		return f, err
	}
	if err := os.WriteFile(f.OtherCAFile, otherPEM, 0o644); err != nil {
		return f, err
	}
	if err := other.issue(leafSpec{cn: "budfleet-agent", notBefore: now.Add(-time.Hour), notAfter: now.Add(24 * time.Hour)}, f.ForeignClientCertFile, f.ForeignClientKeyFile); err != nil {
		return f, err
	}
	if err := root.issue(leafSpec{cn: "budfleet-agent", notBefore: now.Add(-48 * time.Hour), notAfter: now.Add(-24 * time.Hour)}, f.ExpiredClientCertFile, f.ExpiredClientKeyFile); err != nil {
		return f, err
	}
	return f, nil
}
