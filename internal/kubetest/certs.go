package kubetest

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"path/filepath"
	"time"

	"github.com/bud-ecosystem/budfleet/pki"
)

// clusterCA is the one CA of a test cluster: it signs the apiserver's
// serving certificate and every client certificate, the apiserver trusts
// it for client certificates, and the controller manager signs approved
// CSRs with it.
type clusterCA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
}

func newClusterCA() (*clusterCA, error) {
	key, err := pki.NewKey()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "kubetest-ca", Organization: []string{"budfleet tests"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(7 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &clusterCA{cert: cert, key: key, certPEM: pki.EncodeCert(cert)}, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

// leaf is what issue makes a certificate for.
type leaf struct {
	cn     string
	orgs   []string
	server bool
	dns    []string
	ips    []net.IP
}

// issue makes a key and a certificate for l signed by the CA, as PEM.
func (ca *clusterCA) issue(l leaf) (certPEM, keyPEM []byte, err error) {
	key, err := pki.NewKey()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: l.cn, Organization: l.orgs},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		DNSNames:     l.dns,
		IPAddresses:  l.ips,
	}
	if l.server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err = pki.EncodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

// issueFiles issues for l and writes DIR/NAME.crt and DIR/NAME.key.
func (ca *clusterCA) issueFiles(dir, name string, l leaf) (certFile, keyFile string, err error) {
	certPEM, keyPEM, err := ca.issue(l)
	if err != nil {
		return "", "", fmt.Errorf("certificate %s: %w", name, err)
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := pki.WriteFile(certFile, certPEM, 0o644); err != nil {
		return "", "", err
	}
	if err := pki.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

// writeFiles writes the CA as DIR/ca.crt and DIR/ca.key.
func (ca *clusterCA) writeFiles(dir string) (certFile, keyFile string, err error) {
	keyPEM, err := pki.EncodeKey(ca.key)
	if err != nil {
		return "", "", err
	}
	certFile, keyFile = filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if err := pki.WriteFile(certFile, ca.certPEM, 0o644); err != nil {
		return "", "", err
	}
	if err := pki.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

// writeServiceAccountKeys writes the key pair service-account tokens are
// signed (sa.key, ES256) and checked (sa.pub) with.
func writeServiceAccountKeys(dir string) (privFile, pubFile string, err error) {
	key, err := pki.NewKey()
	if err != nil {
		return "", "", err
	}
	keyPEM, err := pki.EncodeKey(key)
	if err != nil {
		return "", "", err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return "", "", err
	}
	privFile, pubFile = filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	if err := pki.WriteFile(privFile, keyPEM, 0o600); err != nil {
		return "", "", err
	}
	if err := pki.WriteFile(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
		return "", "", err
	}
	return privFile, pubFile, nil
}
