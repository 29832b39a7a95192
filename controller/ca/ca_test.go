package ca

import (
	"github.com/bud-ecosystem/budfleet/pki"

	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// now is whole seconds, as certificates store them.
var fixedNow = time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)

func mustCA(t *testing.T, now time.Time) *CA {
	t.Helper()
	ca, err := NewCA(now)
	if err != nil {
		t.Fatalf("NewCA: %v", err)
	}
	return ca
}

func mustKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestNewCA(t *testing.T) {
	ca := mustCA(t, fixedNow)
	c := ca.Cert
	if !c.IsCA || !c.BasicConstraintsValid {
		t.Error("CA certificate is not a CA")
	}
	if !c.MaxPathLenZero || c.MaxPathLen != 0 {
		t.Errorf("CA path length: MaxPathLen=%d MaxPathLenZero=%v, want 0/true", c.MaxPathLen, c.MaxPathLenZero)
	}
	if c.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Error("CA lacks KeyUsageCertSign")
	}
	pub, ok := c.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Fatalf("CA key is %T, want ECDSA P-256", c.PublicKey)
	}
	if ca.Key.Curve != elliptic.P256() || !ca.Key.PublicKey.Equal(pub) {
		t.Error("CA private key does not match its certificate")
	}
	if c.SignatureAlgorithm != x509.ECDSAWithSHA256 {
		t.Errorf("signature algorithm = %v", c.SignatureAlgorithm)
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Errorf("CA is not self-signed: %v", err)
	}
	if !bytes.Equal(c.RawIssuer, c.RawSubject) {
		t.Error("CA issuer != subject")
	}
	if !c.NotBefore.Equal(fixedNow.Add(-time.Hour)) {
		t.Errorf("NotBefore = %v, want %v", c.NotBefore, fixedNow.Add(-time.Hour))
	}
	if want := fixedNow.AddDate(10, 0, 0); !c.NotAfter.Equal(want) {
		t.Errorf("NotAfter = %v, want %v", c.NotAfter, want)
	}
	if c.SerialNumber.Sign() <= 0 {
		t.Errorf("serial %v is not positive", c.SerialNumber)
	}
	other := mustCA(t, fixedNow)
	if other.Cert.SerialNumber.Cmp(c.SerialNumber) == 0 || pki.PublicKeyHash(other.Cert) == pki.PublicKeyHash(c) {
		t.Error("two CAs share a serial or a key")
	}
}

func TestPublicKeyHash(t *testing.T) {
	ca := mustCA(t, fixedNow)
	h := pki.PublicKeyHash(ca.Cert)
	if !caHashRe.MatchString(h) {
		t.Errorf("pki.PublicKeyHash = %q, want 64 lowercase hex digits (the form join tokens carry)", h)
	}
	// The hash is of the key alone: a second certificate for the same key
	// has the same pin.
	tmpl := *ca.Cert
	tmpl.SerialNumber = ca.Cert.SerialNumber.Add(ca.Cert.SerialNumber, ca.Cert.SerialNumber)
	tmpl.Subject = pkix.Name{CommonName: "renamed"}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, ca.Key.Public(), ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	again, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if pki.PublicKeyHash(again) != h {
		t.Error("pki.PublicKeyHash depends on more than the public key")
	}
	if _, err := NewJoinToken(h); err != nil {
		t.Fatal(err)
	}
}

func TestIssueServer(t *testing.T) {
	ca := mustCA(t, fixedNow)
	cases := []struct {
		name    string
		names   []string
		wantDNS []string
		wantIPs []string
		wantCN  string
	}{
		{
			name:    "defaults only",
			wantDNS: []string{"localhost"},
			wantIPs: []string{"127.0.0.1", "::1"},
			wantCN:  "bud-controller",
		},
		{
			name:    "names and ips",
			names:   []string{"ctl.example.com", "10.1.2.3", " other.example ", "", "fd00::5", "ctl.example.com", "10.1.2.3", "localhost"},
			wantDNS: []string{"localhost", "ctl.example.com", "other.example"},
			wantIPs: []string{"127.0.0.1", "::1", "10.1.2.3", "fd00::5"},
			wantCN:  "ctl.example.com",
		},
		{
			name:    "first name is an ip",
			names:   []string{"192.0.2.7"},
			wantDNS: []string{"localhost"},
			wantIPs: []string{"127.0.0.1", "::1", "192.0.2.7"},
			wantCN:  "192.0.2.7",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			key := mustKey(t)
			cert, err := ca.IssueServer(key.Public(), tc.names, fixedNow, 24*time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(cert.DNSNames, tc.wantDNS) {
				t.Errorf("DNSNames = %q, want %q", cert.DNSNames, tc.wantDNS)
			}
			var ips []string
			for _, ip := range cert.IPAddresses {
				ips = append(ips, ip.String())
			}
			if !slices.Equal(ips, tc.wantIPs) {
				t.Errorf("IPAddresses = %q, want %q", ips, tc.wantIPs)
			}
			if cert.Subject.CommonName != tc.wantCN {
				t.Errorf("CN = %q, want %q", cert.Subject.CommonName, tc.wantCN)
			}
			if cert.IsCA {
				t.Error("server certificate is a CA")
			}
			if !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) {
				t.Errorf("ExtKeyUsage = %v, want server auth only", cert.ExtKeyUsage)
			}
			if !cert.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
				t.Error("certificate is not for the given key")
			}
			for _, name := range append(tc.wantDNS, tc.wantIPs...) {
				_, err := cert.Verify(x509.VerifyOptions{
					Roots:       pki.Pool(ca.Cert),
					DNSName:     name,
					CurrentTime: fixedNow,
					KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
				})
				if err != nil {
					t.Errorf("Verify(%s): %v", name, err)
				}
			}
			if _, err := cert.Verify(x509.VerifyOptions{Roots: pki.Pool(ca.Cert), DNSName: "not-listed.example", CurrentTime: fixedNow}); err == nil {
				t.Error("certificate verifies for a name it was not issued for")
			}
			if _, err := cert.Verify(x509.VerifyOptions{Roots: pki.Pool(mustCA(t, fixedNow).Cert), DNSName: "localhost", CurrentTime: fixedNow}); err == nil {
				t.Error("certificate verifies against another CA")
			}
		})
	}
}

// The loopback addresses are always present and must not be listed twice
// when the caller passes them too.
func TestIssueServerDedupesLoopbackIPs(t *testing.T) {
	// Known bug in pki.go IssueServer: seen starts with only "localhost", so
	// "127.0.0.1" and "::1" given by the caller are appended a second time.
	// Remove this skip once IssueServer seeds seen with the loopback IPs.
	ca := mustCA(t, fixedNow)
	cert, err := ca.IssueServer(mustKey(t).Public(), []string{"127.0.0.1", "::1", "localhost"}, fixedNow, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var ips []string
	for _, ip := range cert.IPAddresses {
		ips = append(ips, ip.String())
	}
	if want := []string{"127.0.0.1", "::1"}; !slices.Equal(ips, want) {
		t.Errorf("IPAddresses = %q, want %q (no duplicates)", ips, want)
	}
	if want := []string{"localhost"}; !slices.Equal(cert.DNSNames, want) {
		t.Errorf("DNSNames = %q, want %q", cert.DNSNames, want)
	}
}

// testCSR makes a DER CSR with an arbitrary key type.
func testCSR(t *testing.T, key any, subject pkix.Name) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: subject}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestSignNodeCSR(t *testing.T) {
	ca := mustCA(t, fixedNow)
	key := mustKey(t)
	// The CSR asks for an operator identity; the controller must ignore it.
	csr := testCSR(t, key, pkix.Name{CommonName: "admin", Organization: []string{pki.OrgOperator}, OrganizationalUnit: []string{pki.RoleAdmin}})
	cert, err := ca.SignNodeCSR(csr, "node-123", fixedNow, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != "node-123" {
		t.Errorf("CN = %q, want node-123", cert.Subject.CommonName)
	}
	if !slices.Equal(cert.Subject.Organization, []string{pki.OrgNode}) {
		t.Errorf("O = %q, want [%s]", cert.Subject.Organization, pki.OrgNode)
	}
	if len(cert.Subject.OrganizationalUnit) != 0 {
		t.Errorf("OU = %q, want none", cert.Subject.OrganizationalUnit)
	}
	if !cert.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Error("certificate is not for the CSR's key")
	}
	if !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
		t.Errorf("ExtKeyUsage = %v, want client auth only", cert.ExtKeyUsage)
	}
	if cert.IsCA {
		t.Error("node certificate is a CA")
	}
	if _, err := cert.Verify(x509.VerifyOptions{
		Roots:       pki.Pool(ca.Cert),
		CurrentTime: fixedNow,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		t.Errorf("node certificate does not verify: %v", err)
	}

	// pki.NewCSR is what agents use; it must be accepted.
	own, err := pki.NewCSR(key, "whatever")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.SignNodeCSR(own, "n2", fixedNow, time.Hour); err != nil {
		t.Errorf("SignNodeCSR(pki.NewCSR): %v", err)
	}
}

func TestSignNodeCSRRejects(t *testing.T) {
	ca := mustCA(t, fixedNow)

	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}

	// A valid P-256 CSR whose signed subject is altered after signing: the
	// DER still parses, the signature no longer matches.
	good := testCSR(t, mustKey(t), pkix.Name{CommonName: "csr-subject-marker"})
	tampered := bytes.Replace(good, []byte("csr-subject-marker"), []byte("csr-subject-markex"), 1)
	if bytes.Equal(good, tampered) {
		t.Fatal("could not tamper with the CSR")
	}
	if _, err := x509.ParseCertificateRequest(tampered); err != nil {
		t.Fatalf("tampered CSR does not parse, so the test would not reach the signature check: %v", err)
	}
	// A CSR whose signature bytes are flipped.
	badSig := bytes.Clone(good)
	badSig[len(badSig)-1] ^= 0xff

	cases := []struct {
		name    string
		der     []byte
		wantErr string
	}{
		{"empty", nil, "empty"},
		{"garbage", []byte("definitely not DER"), "malformed"},
		{"truncated", good[:len(good)/2], "malformed"},
		{"pem instead of der", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: good}), "malformed"},
		{"rsa key", testCSR(t, rsaKey, pkix.Name{CommonName: "n"}), "P-256"},
		{"p384 key", testCSR(t, p384, pkix.Name{CommonName: "n"}), "P-256"},
		{"ed25519 key", testCSR(t, edKey, pkix.Name{CommonName: "n"}), "P-256"},
		{"tampered subject", tampered, "signature"},
		{"flipped signature", badSig, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cert, err := ca.SignNodeCSR(tc.der, "node-1", fixedNow, time.Hour)
			if err == nil {
				t.Fatalf("SignNodeCSR accepted it and issued %v", cert.Subject)
			}
			if cert != nil {
				t.Error("SignNodeCSR returned a certificate with an error")
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("err = %q, want it to mention %q", err, tc.wantErr)
			}
		})
	}
}

func TestValidityBackdate(t *testing.T) {
	ca := mustCA(t, fixedNow)
	cases := []struct {
		ttl      time.Duration
		backdate time.Duration
	}{
		{40 * time.Second, 10 * time.Second},
		{time.Minute, 15 * time.Second},
		{4 * time.Minute, time.Minute},
		{20 * time.Minute, 5 * time.Minute},
		{21 * time.Minute, 5 * time.Minute},
		{24 * time.Hour, 5 * time.Minute},
		{365 * 24 * time.Hour, 5 * time.Minute},
	}
	for _, tc := range cases {
		t.Run(tc.ttl.String(), func(t *testing.T) {
			if got := backdate(tc.ttl); got != tc.backdate {
				t.Errorf("backdate(%v) = %v, want %v", tc.ttl, got, tc.backdate)
			}
			issue := map[string]func() (*x509.Certificate, error){
				"server": func() (*x509.Certificate, error) {
					return ca.IssueServer(mustKey(t).Public(), nil, fixedNow, tc.ttl)
				},
				"client": func() (*x509.Certificate, error) {
					return ca.IssueClient(mustKey(t).Public(), pki.OperatorSubject("op", pki.RoleAdmin), fixedNow, tc.ttl)
				},
				"node": func() (*x509.Certificate, error) {
					return ca.SignNodeCSR(testCSR(t, mustKey(t), pkix.Name{}), "n", fixedNow, tc.ttl)
				},
			}
			for kind, f := range issue {
				cert, err := f()
				if err != nil {
					t.Fatalf("%s: %v", kind, err)
				}
				if want := fixedNow.Add(-tc.backdate); !cert.NotBefore.Equal(want) {
					t.Errorf("%s NotBefore = %v, want %v", kind, cert.NotBefore, want)
				}
				if want := fixedNow.Add(tc.ttl); !cert.NotAfter.Equal(want) {
					t.Errorf("%s NotAfter = %v, want %v", kind, cert.NotAfter, want)
				}
			}
		})
	}
}

func TestCertificatesNeverOutliveCA(t *testing.T) {
	ca := mustCA(t, fixedNow)
	for _, tc := range []struct {
		name string
		now  time.Time
		ttl  time.Duration
	}{
		{"ttl beyond ca", fixedNow, 20 * 365 * 24 * time.Hour},
		{"issued near ca expiry", ca.Cert.NotAfter.Add(-time.Hour), 24 * time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, err := ca.IssueServer(mustKey(t).Public(), nil, tc.now, tc.ttl)
			if err != nil {
				t.Fatal(err)
			}
			node, err := ca.SignNodeCSR(testCSR(t, mustKey(t), pkix.Name{}), "n", tc.now, tc.ttl)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range []*x509.Certificate{srv, node} {
				if !c.NotAfter.Equal(ca.Cert.NotAfter) {
					t.Errorf("%s NotAfter = %v, want clamped to CA NotAfter %v", c.Subject.CommonName, c.NotAfter, ca.Cert.NotAfter)
				}
			}
		})
	}
}

func TestSaveLoadCA(t *testing.T) {
	dir := t.TempDir()
	ca := mustCA(t, fixedNow)
	if err := ca.Save(dir); err != nil {
		t.Fatalf("Save: %v", err)
	}
	fi, err := os.Stat(filepath.Join(dir, CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s mode = %o, want 600", CAKeyFile, fi.Mode().Perm())
	}
	if _, err := os.Stat(filepath.Join(dir, CACertFile)); err != nil {
		t.Fatal(err)
	}
	// No temp files are left behind.
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{CACertFile, CAKeyFile}; !slices.Equal(names, want) {
		t.Errorf("dir holds %q, want %q", names, want)
	}

	loaded, err := LoadCA(dir)
	if err != nil {
		t.Fatalf("LoadCA: %v", err)
	}
	if !loaded.Cert.Equal(ca.Cert) {
		t.Error("loaded certificate differs")
	}
	if !loaded.Key.Equal(ca.Key) {
		t.Error("loaded key differs")
	}
	// The loaded CA can sign.
	leaf, err := loaded.IssueServer(mustKey(t).Public(), nil, fixedNow, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := leaf.CheckSignatureFrom(ca.Cert); err != nil {
		t.Errorf("certificate from the loaded CA: %v", err)
	}

	certBefore, _ := os.ReadFile(filepath.Join(dir, CACertFile))
	keyBefore, _ := os.ReadFile(filepath.Join(dir, CAKeyFile))
	other := mustCA(t, fixedNow)
	err = other.Save(dir)
	if !errors.Is(err, ErrCAExists) {
		t.Fatalf("second Save = %v, want ErrCAExists", err)
	}
	if !strings.Contains(err.Error(), dir) {
		t.Errorf("err = %q, want it to name %s", err, dir)
	}
	certAfter, _ := os.ReadFile(filepath.Join(dir, CACertFile))
	keyAfter, _ := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if !bytes.Equal(certBefore, certAfter) || !bytes.Equal(keyBefore, keyAfter) {
		t.Error("refused Save changed the CA files")
	}
}

func TestLoadCAErrors(t *testing.T) {
	ca := mustCA(t, fixedNow)
	keyPEM, err := pki.EncodeKey(ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pki.EncodeCert(ca.Cert)

	t.Run("empty dir", func(t *testing.T) {
		dir := t.TempDir()
		_, err := LoadCA(dir)
		if err == nil {
			t.Fatal("LoadCA on an empty dir succeeded")
		}
		for _, want := range []string{"bud-controller init", dir} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("err = %q, want it to mention %q", err, want)
			}
		}
	})
	for _, tc := range []struct {
		name    string
		cert    []byte // nil: no file
		key     []byte
		wantErr string
	}{
		{name: "missing key", cert: certPEM, wantErr: CAKeyFile},
		{name: "garbage cert", cert: []byte("junk"), key: keyPEM, wantErr: CACertFile},
		{name: "key in cert file", cert: keyPEM, key: keyPEM, wantErr: CACertFile},
		{name: "garbage key", cert: certPEM, key: []byte("junk"), wantErr: CAKeyFile},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.cert != nil {
				os.WriteFile(filepath.Join(dir, CACertFile), tc.cert, 0o644)
			}
			if tc.key != nil {
				os.WriteFile(filepath.Join(dir, CAKeyFile), tc.key, 0o600)
			}
			_, err := LoadCA(dir)
			if err == nil {
				t.Fatal("LoadCA succeeded")
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("err = %q, want it to mention %q", err, tc.wantErr)
			}
		})
	}
}

func TestEncodeDecode(t *testing.T) {
	ca := mustCA(t, fixedNow)
	c, err := pki.DecodeCert(pki.EncodeCert(ca.Cert))
	if err != nil || !c.Equal(ca.Cert) {
		t.Errorf("pki.DecodeCert(pki.EncodeCert) = %v, %v", c, err)
	}
	pkcs8, err := pki.EncodeKey(ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(pkcs8, []byte("BEGIN PRIVATE KEY")) {
		t.Errorf("pki.EncodeKey is not PKCS#8 PEM: %s", pkcs8)
	}
	sec1DER, err := x509.MarshalECPrivateKey(ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaDER, err := x509.MarshalPKCS8PrivateKey(rsaKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		pem     []byte
		wantErr string // "" for success, "?" for any error
	}{
		{"pkcs8", pkcs8, ""},
		{"sec1", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1DER}), ""},
		{"rsa pkcs8", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: rsaDER}), "not ECDSA"},
		{"no pem", []byte("junk"), "no PEM"},
		{"bad der", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}}), "?"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := pki.DecodeKey(tc.pem)
			if tc.wantErr == "" {
				if err != nil || !k.Equal(ca.Key) {
					t.Errorf("pki.DecodeKey = %v, %v", k, err)
				}
				return
			}
			if err == nil || (tc.wantErr != "?" && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("pki.DecodeKey err = %v, want it to mention %q", err, tc.wantErr)
			}
		})
	}
	if _, err := pki.DecodeCert(pkcs8); err == nil {
		t.Error("pki.DecodeCert accepted a key")
	}
	if _, err := pki.DecodeCert(nil); err == nil {
		t.Error("pki.DecodeCert accepted nothing")
	}
}

func serverCert(t *testing.T, ca *CA) tls.Certificate {
	t.Helper()
	key := mustKey(t)
	leaf, err := ca.IssueServer(key.Public(), []string{"ctl.test"}, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
}

func clientCert(t *testing.T, ca *CA, subject pkix.Name) *tls.Certificate {
	t.Helper()
	key := mustKey(t)
	leaf, err := ca.IssueClient(key.Public(), subject, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
}

type handshakeResult struct {
	serverErr   error
	serverState tls.ConnectionState
	clientErr   error
	clientState tls.ConnectionState
}

// handshake runs one TLS connection over loopback TCP. The server writes
// "ok" after its handshake; the client's result includes reading it, so a
// client certificate the server rejects (which TLS 1.3 reports to the
// client only after its own handshake) shows up as a client error too.
func handshake(t *testing.T, server, client *tls.Config) handshakeResult {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	type srvOut struct {
		err   error
		state tls.ConnectionState
	}
	done := make(chan srvOut, 1)
	go func() {
		raw, err := ln.Accept()
		if err != nil {
			done <- srvOut{err: err}
			return
		}
		raw.SetDeadline(time.Now().Add(10 * time.Second))
		conn := tls.Server(raw, server)
		defer conn.Close()
		if err := conn.Handshake(); err != nil {
			done <- srvOut{err: err}
			return
		}
		_, err = conn.Write([]byte("ok"))
		done <- srvOut{err: err, state: conn.ConnectionState()}
	}()

	var res handshakeResult
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	conn := tls.Client(raw, client)
	res.clientErr = conn.Handshake()
	if res.clientErr == nil {
		buf := make([]byte, 2)
		_, res.clientErr = conn.Read(buf)
		if res.clientErr == nil && string(buf) != "ok" {
			res.clientErr = errors.New("unexpected payload " + string(buf))
		}
		res.clientState = conn.ConnectionState()
	}
	conn.Close()
	out := <-done
	res.serverErr, res.serverState = out.err, out.state
	return res
}

func TestServerTLSChain(t *testing.T) {
	ca := mustCA(t, time.Now())
	sc := serverCert(t, ca)
	sc.Certificate = append(sc.Certificate, []byte("stale intermediate"))
	orig := slices.Clone(sc.Certificate)
	cfg := pki.ServerTLS(ca.Cert, sc)
	if cfg.MinVersion != tls.VersionTLS13 {
		t.Errorf("MinVersion = %x, want TLS 1.3", cfg.MinVersion)
	}
	if cfg.ClientAuth != tls.VerifyClientCertIfGiven {
		t.Errorf("ClientAuth = %v", cfg.ClientAuth)
	}
	chain := cfg.Certificates[0].Certificate
	if len(chain) != 2 || !bytes.Equal(chain[0], sc.Certificate[0]) || !bytes.Equal(chain[1], ca.Cert.Raw) {
		t.Errorf("server chain is not [leaf, CA]")
	}
	if !slices.EqualFunc(sc.Certificate, orig, bytes.Equal) {
		t.Error("pki.ServerTLS modified the caller's certificate chain")
	}
}

func TestPinnedTLS(t *testing.T) {
	ca := mustCA(t, time.Now())
	otherCA := mustCA(t, time.Now())
	pin := pki.PublicKeyHash(ca.Cert)

	// A plain server config presenting only a leaf, without the CA.
	leafOnly := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{serverCert(t, ca)}}

	cases := []struct {
		name       string
		server     *tls.Config
		pin        string
		serverName string
		wantErr    string // "" for success
	}{
		{"right pin", pki.ServerTLS(ca.Cert, serverCert(t, ca)), pin, "localhost", ""},
		{"right pin, extra SAN", pki.ServerTLS(ca.Cert, serverCert(t, ca)), pin, "ctl.test", ""},
		{"wrong pin", pki.ServerTLS(ca.Cert, serverCert(t, ca)), pki.PublicKeyHash(otherCA.Cert), "localhost", pki.PublicKeyHash(otherCA.Cert)},
		{"leaf from another CA with pinned CA in chain", pki.ServerTLS(ca.Cert, serverCert(t, otherCA)), pin, "localhost", "does not verify"},
		{"impostor CA and leaf", pki.ServerTLS(otherCA.Cert, serverCert(t, otherCA)), pin, "localhost", pin},
		{"no CA in chain", leafOnly, pin, "localhost", pin},
		{"wrong server name", pki.ServerTLS(ca.Cert, serverCert(t, ca)), pin, "elsewhere.test", "does not verify"},
		{"empty pin", pki.ServerTLS(ca.Cert, serverCert(t, ca)), "", "localhost", "does not match"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var pin pki.Pin
			res := handshake(t, tc.server, pki.PinnedTLS(tc.pin, tc.serverName, &pin))
			got := pin.CA()
			if tc.wantErr == "" {
				if res.clientErr != nil || res.serverErr != nil {
					t.Fatalf("handshake: client %v, server %v", res.clientErr, res.serverErr)
				}
				if got == nil || !got.Equal(ca.Cert) {
					t.Errorf("pki.PinnedTLS reported CA %v, want the pinned CA", got)
				}
				if res.clientState.Version != tls.VersionTLS13 {
					t.Errorf("negotiated %x, want TLS 1.3", res.clientState.Version)
				}
				return
			}
			if res.clientErr == nil {
				t.Fatal("handshake with the wrong controller succeeded")
			}
			if !strings.Contains(res.clientErr.Error(), tc.wantErr) {
				t.Errorf("client err = %q, want it to mention %q", res.clientErr, tc.wantErr)
			}
			if got != nil {
				t.Errorf("pki.PinnedTLS reported CA %v on failure", got.Subject)
			}
			if pin.Err() == nil {
				t.Error("pki.PinnedTLS recorded no error for a refused handshake")
			}
			if tc.wantErr == tc.pin && tc.pin != "" && !errors.Is(pin.Err(), pki.ErrPinMismatch) {
				t.Errorf("pin error %v does not wrap pki.ErrPinMismatch", pin.Err())
			}
			if res.serverErr == nil {
				t.Error("server completed a handshake the client rejected")
			}
		})
	}
}

func TestClientTLS(t *testing.T) {
	ca := mustCA(t, time.Now())
	otherCA := mustCA(t, time.Now())
	server := func() *tls.Config { return pki.ServerTLS(ca.Cert, serverCert(t, ca)) }

	t.Run("with node certificate", func(t *testing.T) {
		cc := clientCert(t, ca, pki.NodeSubject("node-7"))
		res := handshake(t, server(), pki.ClientTLS(ca.Cert, cc, "localhost"))
		if res.clientErr != nil || res.serverErr != nil {
			t.Fatalf("handshake: client %v, server %v", res.clientErr, res.serverErr)
		}
		peers := res.serverState.PeerCertificates
		if len(peers) == 0 || peers[0].Subject.CommonName != "node-7" || !slices.Equal(peers[0].Subject.Organization, []string{pki.OrgNode}) {
			t.Errorf("server saw peer %v", peers)
		}
		if len(res.serverState.VerifiedChains) == 0 {
			t.Error("server did not verify the client chain")
		}
		if res.clientState.NegotiatedProtocol != "" {
			t.Errorf("ALPN %q negotiated without the client asking", res.clientState.NegotiatedProtocol)
		}
	})
	t.Run("without client certificate", func(t *testing.T) {
		res := handshake(t, server(), pki.ClientTLS(ca.Cert, nil, "127.0.0.1"))
		if res.clientErr != nil || res.serverErr != nil {
			t.Fatalf("handshake: client %v, server %v", res.clientErr, res.serverErr)
		}
		if len(res.serverState.PeerCertificates) != 0 {
			t.Error("server saw a client certificate that was not sent")
		}
	})
	t.Run("h2 alpn", func(t *testing.T) {
		cfg := pki.ClientTLS(ca.Cert, nil, "localhost")
		cfg.NextProtos = []string{"h2"}
		res := handshake(t, server(), cfg)
		if res.clientErr != nil || res.clientState.NegotiatedProtocol != "h2" {
			t.Errorf("ALPN = %q, err %v; want h2", res.clientState.NegotiatedProtocol, res.clientErr)
		}
	})
	t.Run("client certificate from another CA", func(t *testing.T) {
		cc := clientCert(t, otherCA, pki.NodeSubject("node-7"))
		res := handshake(t, server(), pki.ClientTLS(ca.Cert, cc, "localhost"))
		if res.serverErr == nil {
			t.Fatal("server accepted a client certificate from another CA")
		}
		if res.clientErr == nil {
			t.Error("client was able to read from a server that rejected it")
		}
	})
	t.Run("server from another CA", func(t *testing.T) {
		res := handshake(t, pki.ServerTLS(otherCA.Cert, serverCert(t, otherCA)), pki.ClientTLS(ca.Cert, nil, "localhost"))
		if res.clientErr == nil {
			t.Fatal("client trusted a server from another CA")
		}
		var uae x509.UnknownAuthorityError
		if !errors.As(res.clientErr, &uae) {
			var ve *tls.CertificateVerificationError
			if !errors.As(res.clientErr, &ve) {
				t.Errorf("client err = %v, want a verification error", res.clientErr)
			}
		}
	})
	t.Run("wrong server name", func(t *testing.T) {
		res := handshake(t, server(), pki.ClientTLS(ca.Cert, nil, "elsewhere.test"))
		if res.clientErr == nil {
			t.Fatal("client accepted a certificate for another name")
		}
	})
}

func TestTLS12Refused(t *testing.T) {
	ca := mustCA(t, time.Now())
	client := pki.ClientTLS(ca.Cert, nil, "localhost")
	client.MinVersion = tls.VersionTLS12
	client.MaxVersion = tls.VersionTLS12
	res := handshake(t, pki.ServerTLS(ca.Cert, serverCert(t, ca)), client)
	if res.clientErr == nil || res.serverErr == nil {
		t.Fatalf("TLS 1.2 handshake: client %v, server %v; want both to fail", res.clientErr, res.serverErr)
	}
	if !strings.Contains(res.serverErr.Error(), "version") {
		t.Errorf("server err = %q, want a protocol version error", res.serverErr)
	}

	// And the clients refuse a TLS 1.2 server.
	srv := pki.ServerTLS(ca.Cert, serverCert(t, ca))
	srv.MinVersion = tls.VersionTLS12
	srv.MaxVersion = tls.VersionTLS12
	var pin pki.Pin
	for name, c := range map[string]*tls.Config{
		"pki.ClientTLS": pki.ClientTLS(ca.Cert, nil, "localhost"),
		"pki.PinnedTLS": pki.PinnedTLS(pki.PublicKeyHash(ca.Cert), "localhost", &pin),
	} {
		if res := handshake(t, srv, c); res.clientErr == nil {
			t.Errorf("%s completed a TLS 1.2 handshake", name)
		}
	}
	if pin.CA() != nil {
		t.Error("pki.PinnedTLS reported a CA over TLS 1.2")
	}
}
