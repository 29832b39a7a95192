// Package pki holds the controller's certificate authority: the CA itself, the
// server certificate, operator and node client certificates, and the helpers
// both sides use to pin the CA by the hash of its public key.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Organisations written into client certificates; the controller authorises
// by them.
const (
	OrgNode     = "budfleet:node"
	OrgOperator = "budfleet:operator"
)

// Role of an operator certificate, carried as its OrganizationalUnit.
const RoleAdmin = "admin"

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

// NewKey makes an ECDSA P-256 private key.
func NewKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// NewCA makes a self-signed CA valid for ten years.
func NewCA(now time.Time) (*CA, error) {
	key, err := NewKey()
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

// NodeSubject is the subject of a node's client certificate.
func NodeSubject(nodeID string) pkix.Name {
	return pkix.Name{CommonName: nodeID, Organization: []string{OrgNode}}
}

// OperatorSubject is the subject of an operator's client certificate.
func OperatorSubject(name, role string) pkix.Name {
	return pkix.Name{CommonName: name, Organization: []string{OrgOperator}, OrganizationalUnit: []string{role}}
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

// SignNodeCSR checks a CSR's signature and issues a node certificate for it.
// The subject in the CSR is ignored: the controller decides the identity.
func (ca *CA) SignNodeCSR(csrDER []byte, nodeID string, now time.Time, ttl time.Duration) (*x509.Certificate, error) {
	csr, err := ParseCSR(csrDER)
	if err != nil {
		return nil, err
	}
	return ca.IssueClient(csr.PublicKey, NodeSubject(nodeID), now, ttl)
}

// ParseCSR parses a DER CSR, checks its signature and that its key is ECDSA
// P-256, the only kind of key budfleet issues for.
func ParseCSR(der []byte) (*x509.CertificateRequest, error) {
	if len(der) == 0 {
		return nil, errors.New("empty certificate signing request")
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("malformed certificate signing request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("certificate signing request signature: %w", err)
	}
	k, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || k.Curve != elliptic.P256() {
		return nil, errors.New("certificate signing request must carry an ECDSA P-256 key")
	}
	return csr, nil
}

// NewCSR makes a CSR for key, DER.
func NewCSR(key *ecdsa.PrivateKey, cn string) ([]byte, error) {
	return x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
}

// PublicKeyHash is the pin of a CA: the hex SHA-256 of its
// SubjectPublicKeyInfo, as kubeadm's discovery-token-ca-cert-hash (which
// shows it with a "sha256:" prefix).
func PublicKeyHash(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}

// Pool returns a pool holding only cert.
func Pool(cert *x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(cert)
	return p
}

// EncodeCert returns cert as PEM.
func EncodeCert(cert *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
}

// EncodeKey returns key as PKCS#8 PEM.
func EncodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// DecodeCert parses the first PEM certificate in b.
func DecodeCert(b []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate found")
	}
	return x509.ParseCertificate(block.Bytes)
}

// DecodeKey parses a PKCS#8 or SEC1 PEM ECDSA key.
func DecodeKey(b []byte) (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no PEM private key found")
	}
	if block.Type == "EC PRIVATE KEY" {
		return x509.ParseECPrivateKey(block.Bytes)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, errors.New("private key is not ECDSA")
	}
	return ek, nil
}

// WriteFile writes b to path with mode, atomically through a temp file so a
// crash never leaves half a key behind.
func WriteFile(path string, b []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// Save writes the CA's certificate and key into dir. It refuses to replace an
// existing CA: every enrolled node and operator trusts it.
func (ca *CA) Save(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, CACertFile)); err == nil {
		return fmt.Errorf("%w in %s: refusing to overwrite it (every node and operator trusts it); use another --data-dir", ErrCAExists, dir)
	}
	kb, err := EncodeKey(ca.Key)
	if err != nil {
		return err
	}
	if err := WriteFile(filepath.Join(dir, CAKeyFile), kb, 0o600); err != nil {
		return err
	}
	return WriteFile(filepath.Join(dir, CACertFile), EncodeCert(ca.Cert), 0o644)
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
	cert, err := DecodeCert(cb)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", CACertFile, err)
	}
	key, err := DecodeKey(kb)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", CAKeyFile, err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// ServerTLS returns the controller's TLS config: TLS 1.3 only, the server
// certificate with the CA in its chain (agents pin the CA from it), and
// client certificates verified against the CA when one is presented. Which
// calls need one is decided per method by the server.
func ServerTLS(ca *CA, cert tls.Certificate) *tls.Config {
	if len(cert.Certificate) > 0 {
		cert.Certificate = append(cert.Certificate[:1:1], ca.Cert.Raw)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    Pool(ca.Cert),
		NextProtos:   []string{"h2"},
	}
}

// ClientTLS returns a TLS 1.3 config that trusts only ca, presenting cert
// when it is not nil.
func ClientTLS(ca *x509.Certificate, cert *tls.Certificate, serverName string) *tls.Config {
	c := &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    Pool(ca),
		ServerName: serverName,
	}
	if cert != nil {
		c.Certificates = []tls.Certificate{*cert}
	}
	return c
}

// PinnedTLS returns a TLS config for a client that knows the CA only by the
// hash of its public key (a join token). The handshake fails unless the
// server presents a chain whose CA matches the pin and that verifies for
// serverName, so nothing is sent to an impostor. The matched CA is stored in
// *gotCA.
func PinnedTLS(pin, serverName string, gotCA **x509.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: serverName,
		// Verification is done below against the pinned CA instead of the
		// system roots, which know nothing of a private fleet CA.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("controller presented no certificate")
			}
			for _, c := range cs.PeerCertificates[1:] {
				if !c.IsCA || PublicKeyHash(c) != pin {
					continue
				}
				_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
					Roots:     Pool(c),
					DNSName:   serverName,
					KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
				})
				if err != nil {
					return fmt.Errorf("controller certificate does not verify against the pinned CA: %w", err)
				}
				*gotCA = c
				return nil
			}
			return fmt.Errorf("controller CA does not match the CA hash in the join token (want sha256:%s): refusing to enroll", pin)
		},
	}
}
