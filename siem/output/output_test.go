package output

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/internal/rsyslogtest"
)

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	fx, err := rsyslogtest.WriteFixtures(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty.pem")
	os.WriteFile(empty, []byte("not pem\n"), 0o644)
	missing := filepath.Join(dir, "missing.pem")

	cfg, err := TLSConfig{CAFile: fx.CAFile, CertFile: fx.ClientCertFile, KeyFile: fx.ClientKeyFile, ServerName: "siem"}.Load()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MinVersion != tls.VersionTLS12 || cfg.RootCAs == nil || len(cfg.Certificates) != 1 || cfg.Certificates[0].Leaf == nil || cfg.ServerName != "siem" {
		t.Fatalf("%+v", cfg)
	}
	if cfg, err := (TLSConfig{}).Load(); err != nil || cfg.RootCAs != nil {
		t.Fatalf("empty config: %v", err)
	}

	for _, tc := range []struct {
		c    TLSConfig
		want string
	}{
		{TLSConfig{CAFile: missing}, `tls.ca_file "` + missing + `": file does not exist`},
		{TLSConfig{CAFile: empty}, `tls.ca_file "` + empty + `" has no PEM certificates`},
		{TLSConfig{CAFile: fx.ClientKeyFile}, "has no PEM certificates"},
		{TLSConfig{CertFile: fx.ClientCertFile}, "tls.cert_file is set but tls.key_file is not"},
		{TLSConfig{KeyFile: fx.ClientKeyFile}, "tls.key_file is set but tls.cert_file is not"},
		{TLSConfig{CertFile: missing, KeyFile: fx.ClientKeyFile}, `tls.cert_file "` + missing + `": file does not exist`},
		{TLSConfig{CertFile: fx.ClientCertFile, KeyFile: missing}, `tls.key_file "` + missing + `": file does not exist`},
		{TLSConfig{CertFile: fx.ClientCertFile, KeyFile: fx.ServerKeyFile}, `tls.key_file "` + fx.ServerKeyFile + `" does not match the certificate in tls.cert_file`},
		{TLSConfig{CertFile: fx.ClientKeyFile, KeyFile: fx.ClientKeyFile}, "has no PEM certificate"},
		{TLSConfig{CertFile: fx.ClientCertFile, KeyFile: fx.ClientCertFile}, "tls.cert_file"},
	} {
		_, err := tc.c.Load()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.c, err, tc.want)
		}
	}
}

// pki makes a CA and leaves with chosen validity and names.
type pki struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newPKI(t *testing.T) *pki {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &pki{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func (p *pki) leaf(t *testing.T, notBefore, notAfter time.Time, dns []string, ips []net.IP) tls.Certificate {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "leaf"}, NotBefore: notBefore, NotAfter: notAfter,
		DNSNames: dns, IPAddresses: ips, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, &key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

func (p *pki) pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.cert)
	return pool
}

// serve runs a TLS server that completes handshakes and reads until EOF.
func serve(t *testing.T, cfg *tls.Config) string {
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 1024)
				for {
					if _, err := c.Read(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// dialAndRead dials and reads once, to see alerts a TLS 1.3 server sends
// after the client's handshake is done.
func dialAndRead(addr string, cfg *tls.Config) error {
	c, err := Dial(context.Background(), addr, cfg, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.Write([]byte("x"))
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err = c.Read(make([]byte, 1))
	return c.PostHandshakeError(err)
}

func TestDescribeTLSError(t *testing.T) {
	ca, other := newPKI(t), newPKI(t)
	now := time.Now()
	ip := []net.IP{net.IPv4(127, 0, 0, 1)}
	good := ca.leaf(t, now.Add(-time.Hour), now.Add(time.Hour), []string{"localhost"}, ip)
	expired := ca.leaf(t, now.Add(-2*time.Hour), now.Add(-time.Hour), []string{"localhost"}, ip)
	future := ca.leaf(t, now.Add(time.Hour), now.Add(2*time.Hour), []string{"localhost"}, ip)
	wrongName := ca.leaf(t, now.Add(-time.Hour), now.Add(time.Hour), []string{"siem.example"}, nil)
	foreign := other.leaf(t, now.Add(-time.Hour), now.Add(time.Hour), nil, nil)

	mtls := func(server tls.Certificate) string {
		return serve(t, &tls.Config{Certificates: []tls.Certificate{server}, ClientCAs: ca.pool(), ClientAuth: tls.RequireAndVerifyClientCert})
	}
	client := func(roots *x509.CertPool, cert *tls.Certificate, max uint16) *tls.Config {
		c := &tls.Config{RootCAs: roots, MaxVersion: max}
		if cert != nil {
			c.Certificates = []tls.Certificate{*cert}
		}
		return c
	}
	goodAddr := mtls(good)
	cases := []struct {
		name string
		addr string
		cfg  *tls.Config
		want string
	}{
		{"unknown CA", goodAddr, client(other.pool(), &good, 0), "server certificate is signed by an unknown CA: check tls.ca_file"},
		{"server expired", mtls(expired), client(ca.pool(), &good, 0), "server certificate expired at " + expired.Leaf.NotAfter.UTC().Format(time.RFC3339) + ": renew"},
		{"server not yet valid", mtls(future), client(ca.pool(), &good, 0), "server certificate is not valid before"},
		{"wrong name", mtls(wrongName), client(ca.pool(), &good, 0), `server certificate is not valid for "127.0.0.1" (it is valid for siem.example): set tls.server_name`},
		{"no client cert 1.3", goodAddr, client(ca.pool(), nil, 0), "server asked for a client certificate: set tls.cert_file/key_file"},
		{"no client cert 1.2", goodAddr, client(ca.pool(), nil, tls.VersionTLS12), "server asked for a client certificate: set tls.cert_file/key_file"},
		{"foreign client cert 1.3", goodAddr, client(ca.pool(), &foreign, 0), "remote error: unknown certificate authority (the SIEM rejected our client certificate"},
		{"foreign client cert 1.2", goodAddr, client(ca.pool(), &foreign, tls.VersionTLS12), "remote error: unknown certificate authority (the SIEM rejected our client certificate"},
		{"expired client cert", goodAddr, client(ca.pool(), &expired, 0), "our client certificate (tls.cert_file) expired at"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := dialAndRead(tc.addr, tc.cfg)
			if err == nil {
				t.Fatal("no error")
			}
			d := DescribeTLSError(err)
			t.Logf("%v\n  -> %s", err, d)
			if !strings.Contains(d, tc.want) {
				t.Fatalf("got %q, want %q", d, tc.want)
			}
		})
	}

	// Not TLS at all.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Write([]byte("SSH-2.0-OpenSSH_9.2\r\n"))
			time.Sleep(100 * time.Millisecond)
			c.Close()
		}
	}()
	_, err := Dial(context.Background(), ln.Addr().String(), client(ca.pool(), &good, 0), time.Second)
	if d := DescribeTLSError(err); !strings.Contains(d, "did not answer with TLS") {
		t.Fatalf("plain TCP: %q", d)
	}
	if d := DescribeTLSError(errors.New("write: remote error: tls: bad certificate")); !strings.HasPrefix(d, "remote error: bad certificate (the SIEM rejected our client certificate: ") {
		t.Fatalf("bare alert: %q", d)
	}
	if DescribeTLSError(nil) != "" || DescribeTLSError(errors.New("x")) != "x" {
		t.Fatal("non-TLS errors")
	}
}

func TestDialFillsServerName(t *testing.T) {
	ca := newPKI(t)
	now := time.Now()
	srv := ca.leaf(t, now.Add(-time.Hour), now.Add(time.Hour), []string{"localhost"}, nil)
	addr := serve(t, &tls.Config{Certificates: []tls.Certificate{srv}})
	_, port, _ := net.SplitHostPort(addr)
	c, err := Dial(context.Background(), net.JoinHostPort("localhost", port), &tls.Config{RootCAs: ca.pool()}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.CertRequested || c.ClientCert != nil {
		t.Fatalf("%+v", c)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Dial(ctx, addr, &tls.Config{}, 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled ctx: %v", err)
	}
}
