// Package ca is the controller's certificate authority: the CA itself, the
// server certificate, operator and node client certificates, signing node
// CSRs, and minting and hashing join tokens. Only the controller links it;
// what agents and operators share with it is in pki.
package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/bud-ecosystem/budfleet/pki"
)

// File names inside the controller's data dir.
const (
	CACertFile     = "ca.crt"
	CAKeyFile      = "ca.key"
	ServerCertFile = "server.crt"
	ServerKeyFile  = "server.key"
)

// ErrCAExists is returned by Init when the data dir already holds a CA.
var ErrCAExists = errors.New("a CA already exists")

// CA signs the certificates of the fleet.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// NewCA makes a self-signed CA valid for ten years.
func NewCA(now time.Time) (*CA, error) {
	key, err := pki.NewKey()
	if err != nil {
		return nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: "budfleet CA", Organization: []string{"budfleet"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key}, nil
}

// backdate tolerates small clock skew between nodes without making short
// lived certificates start long before they were issued.
func backdate(ttl time.Duration) time.Duration {
	return min(5*time.Minute, ttl/4)
}

// IssueServer signs a server certificate for the given DNS names and IPs;
// localhost, 127.0.0.1 and ::1 are always included.
func (ca *CA) IssueServer(pub crypto.PublicKey, names []string, now time.Time, ttl time.Duration) (*x509.Certificate, error) {
	dns := []string{"localhost"}
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	seen := map[string]bool{"localhost": true, "127.0.0.1": true, "::1": true}
	cn := "bud-controller"
	for _, n := range names {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		key := n
		ip := net.ParseIP(n)
		if ip != nil {
			key = ip.String() // one spelling per address
		}
		if seen[key] {
			continue
		}
		seen[key] = true
		if cn == "bud-controller" {
			cn = n
		}
		if ip != nil {
			ips = append(ips, ip)
			continue
		}
		dns = append(dns, n)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn, Organization: []string{"budfleet"}},
		DNSNames:    dns,
		IPAddresses: ips,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	return ca.sign(tmpl, pub, now, ttl)
}

// IssueClient signs a client certificate with the given subject.
func (ca *CA) IssueClient(pub crypto.PublicKey, subject pkix.Name, now time.Time, ttl time.Duration) (*x509.Certificate, error) {
	tmpl := &x509.Certificate{
		Subject:     subject,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	return ca.sign(tmpl, pub, now, ttl)
}

func (ca *CA) sign(tmpl *x509.Certificate, pub crypto.PublicKey, now time.Time, ttl time.Duration) (*x509.Certificate, error) {
	if ttl <= 0 {
		return nil, fmt.Errorf("certificate lifetime must be positive, got %s", ttl)
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = sn
	tmpl.NotBefore = now.Add(-backdate(ttl))
	tmpl.NotAfter = now.Add(ttl)
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	if !tmpl.NotAfter.After(now) {
		return nil, fmt.Errorf("the CA expired at %s: it can no longer issue certificates", ca.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("sign certificate: %w", err)
	}
	return x509.ParseCertificate(der)
}

// ServerTLS is pki.ServerTLS for this CA.
func (ca *CA) ServerTLS(cert tls.Certificate) *tls.Config { return pki.ServerTLS(ca.Cert, cert) }

// SignNodeCSR checks a CSR's signature and issues a node certificate for it.
// The subject in the CSR is ignored: the controller decides the identity.
func (ca *CA) SignNodeCSR(csrDER []byte, nodeID string, now time.Time, ttl time.Duration) (*x509.Certificate, error) {
	csr, err := pki.ParseCSR(csrDER)
	if err != nil {
		return nil, err
	}
	return ca.IssueClient(csr.PublicKey, pki.NodeSubject(nodeID), now, ttl)
}

// Save writes the CA's certificate and key into dir. It refuses to replace an
// existing CA: every enrolled node and operator trusts it.
func (ca *CA) Save(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, CACertFile)); err == nil {
		return fmt.Errorf("%w in %s: refusing to overwrite it (every node and operator trusts it); use another --data-dir", ErrCAExists, dir)
	}
	kb, err := pki.EncodeKey(ca.Key)
	if err != nil {
		return err
	}
	if err := pki.WriteFile(filepath.Join(dir, CAKeyFile), kb, 0o600); err != nil {
		return err
	}
	return pki.WriteFile(filepath.Join(dir, CACertFile), pki.EncodeCert(ca.Cert), 0o644)
}

// LoadCA reads the CA from dir.
func LoadCA(dir string) (*CA, error) {
	cb, err := os.ReadFile(filepath.Join(dir, CACertFile))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("no CA in %s: run 'bud-controller init --data-dir %s' first", dir, dir)
		}
		return nil, err
	}
	kb, err := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, err
	}
	cert, err := pki.DecodeCert(cb)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", CACertFile, err)
	}
	key, err := pki.DecodeKey(kb)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", CAKeyFile, err)
	}
	return &CA{Cert: cert, Key: key}, nil
}
