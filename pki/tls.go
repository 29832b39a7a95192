package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
)

// Errors of a pinned handshake, recognised with errors.Is.
var (
	// ErrPinMismatch: the server's CA is not the one the join token names.
	ErrPinMismatch = errors.New("controller CA does not match the CA hash in the join token")
	// ErrNoPeerCertificate: the server presented no certificate at all.
	ErrNoPeerCertificate = errors.New("controller presented no certificate")
)

// ServerTLS returns the controller's TLS config: TLS 1.3 only, the server
// certificate with the CA in its chain (agents pin the CA from it), and
// client certificates verified against the CA when one is presented. Which
// calls need one is decided per method by the server.
func ServerTLS(ca *x509.Certificate, cert tls.Certificate) *tls.Config {
	if len(cert.Certificate) > 0 {
		cert.Certificate = append(cert.Certificate[:1:1], ca.Raw)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    Pool(ca),
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

// Pin is what a pinned handshake found: the CA that matched, or why none
// did. The handshake runs inside the gRPC transport, whose status carries
// only text; the caller reads the typed error from here.
type Pin struct {
	mu  sync.Mutex
	ca  *x509.Certificate
	err error
}

// CA is the matched CA, nil until a handshake succeeded.
func (p *Pin) CA() *x509.Certificate {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ca
}

// Err is why the last handshake was refused, nil if none was.
func (p *Pin) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

func (p *Pin) set(ca *x509.Certificate, err error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ca, p.err = ca, err
	return err
}

// PinnedTLS returns a TLS config for a client that knows the CA only by the
// hash of its public key (a join token). The handshake fails unless the
// server presents a chain whose CA matches the pin and that verifies for
// serverName, so nothing is sent to an impostor. The outcome is recorded in
// got.
func PinnedTLS(pin, serverName string, got *Pin) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: serverName,
		// Verification is done below against the pinned CA instead of the
		// system roots, which know nothing of a private fleet CA.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return got.set(nil, ErrNoPeerCertificate)
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
					return got.set(nil, fmt.Errorf("controller certificate does not verify against the pinned CA: %w", err))
				}
				return got.set(c, nil)
			}
			return got.set(nil, fmt.Errorf("%w (want sha256:%s): refusing to enroll", ErrPinMismatch, pin))
		},
	}
}
