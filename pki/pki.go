// Package pki holds what every budfleet binary needs to speak the fleet's
// TLS: keys, CSRs and PEM, the CA pin (the hash of its public key), the TLS
// configs of servers, clients and pinned enrollment clients, the certificate
// subjects the controller authorises by, and the join-token format. Issuing
// certificates is the CA's job and lives with the controller
// (controller/ca); nothing here can sign.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Organisations written into client certificates; the controller authorises
// by them.
const (
	OrgNode     = "budfleet:node"
	OrgOperator = "budfleet:operator"
)

// Roles of operator certificates, carried as their OrganizationalUnit.
// viewer reads; operator also runs the fleet (tokens, nodes, commands,
// maintenance, machines, artifacts); siem-admin also configures audit
// forwarding; admin may do everything, credentials and clusters included.
const (
	RoleViewer    = "viewer"
	RoleOperator  = "operator"
	RoleSIEMAdmin = "siem-admin"
	RoleAdmin     = "admin"
)

// Roles lists the operator roles, least privileged first.
var Roles = []string{RoleViewer, RoleOperator, RoleSIEMAdmin, RoleAdmin}

// ValidRole reports whether r is one of Roles.
func ValidRole(r string) bool {
	for _, x := range Roles {
		if x == r {
			return true
		}
	}
	return false
}

// RoleAllows reports whether an operator with role have may call a method
// that needs role need: admin may call everything, operator and
// siem-admin what viewer may and their own, viewer only reads.
func RoleAllows(have, need string) bool {
	switch {
	case !ValidRole(have) || !ValidRole(need):
		return false
	case have == need, have == RoleAdmin:
		return true
	case need == RoleViewer:
		return have == RoleOperator || have == RoleSIEMAdmin
	}
	return false
}

// NodeSubject is the subject of a node's client certificate.
func NodeSubject(nodeID string) pkix.Name {
	return pkix.Name{CommonName: nodeID, Organization: []string{OrgNode}}
}

// OperatorSubject is the subject of an operator's client certificate.
func OperatorSubject(name, role string) pkix.Name {
	return pkix.Name{CommonName: name, Organization: []string{OrgOperator}, OrganizationalUnit: []string{role}}
}

// NewKey makes an ECDSA P-256 private key.
func NewKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
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
// crash never leaves half a key behind. The directory is synced after the
// rename so the new name survives a power cut too.
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
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// PrivateDir makes dir (and its parents) for keys and state, mode 0700,
// and tightens it to 0700 when it exists with a looser mode: MkdirAll
// leaves an existing directory's mode alone.
func PrivateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("tighten %s to 0700 (it is %#o): %w", dir, fi.Mode().Perm(), err)
		}
	}
	return nil
}
