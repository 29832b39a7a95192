package agent

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"path/filepath"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/agent/state"
	"github.com/bud-ecosystem/budfleet/pki"
)

// testCA signs node certificates the way the controller's CA does, for
// tests that need an identity that parses and verifies (renewal) without a
// controller.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test CA"},
		NotBefore:             now.Add(-24 * time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key}
}

var serial int64 = 100

// sign issues a client certificate for pub naming cn, valid in [from, to].
func (ca *testCA) sign(t *testing.T, pub any, cn string, from, to time.Time) *x509.Certificate {
	t.Helper()
	serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    from,
		NotAfter:     to,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// identityState returns an open state holding node-1's identity, its
// certificate valid in [from, to], and the CA that signed it.
func identityState(t *testing.T, from, to time.Time) (*state.DB, *testCA) {
	t.Helper()
	ca := newTestCA(t)
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := pki.EncodeKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert := ca.sign(t, key.Public(), "node-1", from, to)
	st := openState(t, filepath.Join(t.TempDir(), "state"))
	t.Cleanup(func() { st.Close() })
	if err := st.SaveIdentity(state.Identity{NodeID: "node-1", Controller: "127.0.0.1:1", ServerName: "127.0.0.1", KeyPEM: keyPEM, CertDER: cert.Raw, CADER: ca.cert.Raw}); err != nil {
		t.Fatal(err)
	}
	return st, ca
}
