// Package output holds what the SIEM outputs (syslog, relp, hec) share: the
// Output interface, the TLS settings of an output's configuration, a TLS
// dialer that remembers what the handshake showed, and DescribeTLSError,
// which turns TLS failures into advice an operator can act on.
package output

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/bud-ecosystem/budfleet/siem"
)

// Output delivers batches of events. Send returns nil only when the whole
// batch is acknowledged (RELP: every message's rsp 200; syslog: written and
// flushed to the TLS connection). On error nothing in the batch may be
// assumed delivered (the caller resends: at-least-once). Implementations
// reconnect lazily on the next Send after an error.
type Output interface {
	Send(ctx context.Context, batch []siem.Event) error
	Close() error
}

// Pipeline is an Output that keeps writing while earlier batches await
// their acknowledgement, so that the receiver is never idle waiting for
// the sender to learn that the last batch arrived (RELP). Start writes
// batch and returns without waiting for its answers; the batch resolves,
// in the order batches were started, as acknowledged only once it and
// every batch started before it are. When one fails, every batch started
// after it on the same connection fails too, so the acknowledged batches
// are always a prefix of those started: what a caller resends after a
// failure starts at the first batch that did not resolve as acknowledged.
// Send is Start followed by waiting for the batch.
type Pipeline interface {
	Output
	Start(ctx context.Context, batch []siem.Event) (Pending, error)
}

// Pending is a batch started on a Pipeline.
type Pending interface {
	// Done is closed when the batch is resolved.
	Done() <-chan struct{}
	// Err, once Done is closed, is nil when the batch was acknowledged;
	// otherwise nothing in it may be assumed delivered.
	Err() error
}

// TLSConfig is the tls section of an output's configuration.
type TLSConfig struct {
	// CAFile holds the PEM certificates of the CAs that may sign the SIEM's
	// server certificate (pinning); empty means the system roots.
	CAFile string
	// CertFile and KeyFile are our client certificate and its key
	// (PEM); set both or neither.
	CertFile string
	KeyFile  string
	// ServerName is the name checked against the server certificate;
	// empty means the host part of the output's address.
	ServerName string
	// InsecureSkipVerify turns off checking the server certificate. For
	// tests only: anyone on the path can read and change the events.
	InsecureSkipVerify bool
}

// Load reads the files and returns a client tls.Config for TLS 1.2 or
// newer. Its errors name the setting to fix.
func (c TLSConfig) Load() (*tls.Config, error) {
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         c.ServerName,
		InsecureSkipVerify: c.InsecureSkipVerify, //nolint:gosec // documented as tests only
	}
	if c.CAFile != "" {
		pemBytes, err := readSetting("tls.ca_file", c.CAFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemBytes) {
			return nil, fmt.Errorf("tls.ca_file %q has no PEM certificates (expected -----BEGIN CERTIFICATE----- blocks)", c.CAFile)
		}
		cfg.RootCAs = pool
	}
	switch {
	case c.CertFile != "" && c.KeyFile == "":
		return nil, fmt.Errorf("tls.cert_file is set but tls.key_file is not: set both or neither")
	case c.CertFile == "" && c.KeyFile != "":
		return nil, fmt.Errorf("tls.key_file is set but tls.cert_file is not: set both or neither")
	case c.CertFile != "":
		certPEM, err := readSetting("tls.cert_file", c.CertFile)
		if err != nil {
			return nil, err
		}
		keyPEM, err := readSetting("tls.key_file", c.KeyFile)
		if err != nil {
			return nil, err
		}
		if !hasPEMBlock(certPEM, "CERTIFICATE") {
			return nil, fmt.Errorf("tls.cert_file %q has no PEM certificate (expected a -----BEGIN CERTIFICATE----- block)", c.CertFile)
		}
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			if strings.Contains(err.Error(), "does not match") {
				return nil, fmt.Errorf("tls.key_file %q does not match the certificate in tls.cert_file %q: they must be the key and certificate of one pair", c.KeyFile, c.CertFile)
			}
			return nil, fmt.Errorf("tls.cert_file %q / tls.key_file %q: %w", c.CertFile, c.KeyFile, err)
		}
		if pair.Leaf == nil && len(pair.Certificate) > 0 {
			pair.Leaf, _ = x509.ParseCertificate(pair.Certificate[0])
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

func readSetting(name, path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("%s %q: file does not exist", name, path)
	case errors.Is(err, fs.ErrPermission):
		return nil, fmt.Errorf("%s %q: permission denied (the forwarding process must be able to read it)", name, path)
	case err != nil:
		return nil, fmt.Errorf("%s %q: %w", name, path, err)
	}
	return b, nil
}

func hasPEMBlock(b []byte, typ string) bool {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return false
		}
		if blk.Type == typ {
			return true
		}
	}
}

// Conn is a TLS connection made by Dial. Besides the connection it keeps
// what the handshake showed, so that a failure right after the handshake
// (servers such as rsyslog check the client certificate only then and
// just close the connection) can be explained by PostHandshakeError.
type Conn struct {
	*tls.Conn
	// Addr is the address dialled.
	Addr string
	// CertRequested reports that the server asked for a client certificate.
	CertRequested bool
	// ClientCert is the client certificate offered, nil when none was.
	ClientCert *x509.Certificate
}

// HandshakeError is a failed TLS connection: the handshake itself failed,
// or (AfterHandshake) the server closed the connection or sent an alert
// right after it, which is how a server that rejects the client certificate
// after the handshake (TLS 1.3, or rsyslog's own checks) answers.
type HandshakeError struct {
	Addr           string
	Err            error
	AfterHandshake bool
	CertRequested  bool
	ClientCert     *x509.Certificate
}

func (e *HandshakeError) Error() string {
	if e.AfterHandshake {
		return fmt.Sprintf("TLS to %s: server closed the connection right after the handshake: %v", e.Addr, e.Err)
	}
	return fmt.Sprintf("TLS handshake with %s: %v", e.Addr, e.Err)
}

func (e *HandshakeError) Unwrap() error { return e.Err }

// PostHandshakeError wraps err, a read or write failure seen soon after
// the handshake, in a *HandshakeError with what the handshake showed.
func (c *Conn) PostHandshakeError(err error) error {
	var he *HandshakeError
	if errors.As(err, &he) {
		return err
	}
	return &HandshakeError{Addr: c.Addr, Err: err, AfterHandshake: true, CertRequested: c.CertRequested, ClientCert: c.ClientCert}
}

// Dial connects to addr over TCP and completes a TLS handshake with cfg,
// both bounded by ctx and timeout (0: no limit of its own). An empty
// cfg.ServerName becomes the host part of addr. Handshake failures are
// returned as *HandshakeError.
func Dial(ctx context.Context, addr string, cfg *tls.Config, timeout time.Duration) (*Conn, error) {
	if cfg == nil {
		return nil, errors.New("output: TLS config is nil")
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	c := &Conn{Addr: addr}
	cfg = cfg.Clone()
	if cfg.ServerName == "" && !cfg.InsecureSkipVerify {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			host = addr
		}
		cfg.ServerName = host
	}
	if cfg.GetClientCertificate == nil {
		// Offer the first certificate whatever the server asks for (the
		// server's checks give the better error), and remember that it
		// asked: "no client certificate" is a common misconfiguration.
		var offer *tls.Certificate
		if len(cfg.Certificates) > 0 {
			offer = &cfg.Certificates[0]
			c.ClientCert = offer.Leaf
			if c.ClientCert == nil && len(offer.Certificate) > 0 {
				c.ClientCert, _ = x509.ParseCertificate(offer.Certificate[0])
			}
		}
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c.CertRequested = true
			if offer == nil {
				return &tls.Certificate{}, nil
			}
			return offer, nil
		}
	}
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, &HandshakeError{Addr: addr, Err: err, CertRequested: c.CertRequested, ClientCert: c.ClientCert}
	}
	c.Conn = tc
	return c, nil
}

// DeadlineWriter writes to Conn giving each Write Timeout, so that a peer
// that stops reading fails the write after Timeout without progress
// rather than blocking forever; it returns Ctx's error once Ctx is done.
// Whoever cancels Ctx should also set a past deadline on Conn (for
// example with context.AfterFunc) to interrupt a Write in progress;
// Write re-checks Ctx after setting its own deadline so that it cannot
// undo that.
type DeadlineWriter struct {
	Conn    net.Conn
	Timeout time.Duration
	Ctx     context.Context
}

// LongAgo is a deadline in the past, to interrupt I/O on a connection.
var LongAgo = time.Unix(1, 0)

func (d *DeadlineWriter) Write(p []byte) (int, error) {
	if err := d.Ctx.Err(); err != nil {
		return 0, err
	}
	d.Conn.SetWriteDeadline(time.Now().Add(d.Timeout))
	if d.Ctx.Err() != nil {
		d.Conn.SetWriteDeadline(LongAgo)
	}
	return d.Conn.Write(p)
}

// DescribeTLSError turns an error from connecting to or talking with a SIEM
// into one line that says what to fix when the cause is TLS (CA, expiry,
// name, client certificate). Other errors are returned as err.Error().
func DescribeTLSError(err error) string {
	if err == nil {
		return ""
	}
	var he *HandshakeError
	errors.As(err, &he)

	var unknownCA x509.UnknownAuthorityError
	if errors.As(err, &unknownCA) {
		issuer := ""
		if unknownCA.Cert != nil {
			issuer = fmt.Sprintf("; the SIEM's certificate was issued by %q", unknownCA.Cert.Issuer.String())
		}
		return fmt.Sprintf("server certificate is signed by an unknown CA: check tls.ca_file holds the CA that signed the SIEM's certificate%s (%v)", issuer, err)
	}
	var invalid x509.CertificateInvalidError
	if errors.As(err, &invalid) {
		if invalid.Reason == x509.Expired && invalid.Cert != nil {
			now := time.Now()
			if now.Before(invalid.Cert.NotBefore) {
				return fmt.Sprintf("server certificate is not valid before %s (now %s): fix this host's clock or the SIEM's certificate", invalid.Cert.NotBefore.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
			}
			return fmt.Sprintf("server certificate expired at %s: renew the SIEM's certificate (or fix this host's clock if it is wrong; now %s)", invalid.Cert.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
		}
		return fmt.Sprintf("server certificate is not acceptable: %v: check the SIEM's certificate and tls.ca_file", err)
	}
	var hostErr x509.HostnameError
	if errors.As(err, &hostErr) {
		valid := ""
		if hostErr.Certificate != nil {
			names := append([]string{}, hostErr.Certificate.DNSNames...)
			for _, ip := range hostErr.Certificate.IPAddresses {
				names = append(names, ip.String())
			}
			valid = " (it is valid for " + strings.Join(names, ", ") + ")"
		}
		return fmt.Sprintf("server certificate is not valid for %q%s: set tls.server_name to a name in the certificate or connect by that name", hostErr.Host, valid)
	}
	var recErr tls.RecordHeaderError
	if errors.As(err, &recErr) {
		return fmt.Sprintf("the server did not answer with TLS: check that the address is the SIEM's TLS port, not a plain-TCP one (%v)", err)
	}

	msg := err.Error()
	alert := ""
	if i := strings.Index(msg, "remote error: tls: "); i >= 0 {
		alert = msg[i+len("remote error: tls: "):]
	}
	clientCertAlert := false
	for _, a := range []string{
		// Go's names for the TLS alerts about certificates.
		"bad certificate", "unsupported certificate", "revoked certificate", "expired certificate",
		"unknown certificate", "unknown certificate authority", "access denied", "certificate required",
		"handshake failure",
	} {
		if strings.HasPrefix(alert, a) {
			clientCertAlert = true
		}
	}
	if he == nil {
		if clientCertAlert {
			return fmt.Sprintf("remote error: %s (the SIEM rejected our client certificate: check that tls.cert_file is issued by a CA the SIEM trusts and is not expired)", alert)
		}
		if alert != "" {
			return fmt.Sprintf("remote error: %s (the SIEM refused the TLS connection; check the SIEM's log)", alert)
		}
		return msg
	}

	closed := he.AfterHandshake || errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.ErrUnexpectedEOF)
	what := "remote error: " + alert
	if alert == "" {
		var ne net.Error
		timeout := errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
		switch {
		case timeout && he.AfterHandshake:
			what = "the SIEM did not answer after the TLS handshake"
		case timeout:
			what = "the TLS handshake timed out"
		case he.AfterHandshake:
			what = "the SIEM closed the connection right after the TLS handshake"
		default:
			what = "the SIEM closed the connection during the TLS handshake"
		}
	}
	switch {
	case he.ClientCert == nil && (he.CertRequested || strings.HasPrefix(alert, "certificate required")) && (clientCertAlert || closed):
		return fmt.Sprintf("server asked for a client certificate: set tls.cert_file/key_file (%s)", what)
	case he.ClientCert != nil && time.Now().After(he.ClientCert.NotAfter) && (clientCertAlert || closed):
		return fmt.Sprintf("our client certificate (tls.cert_file) expired at %s: renew it (%s)", he.ClientCert.NotAfter.UTC().Format(time.RFC3339), what)
	case he.ClientCert != nil && time.Now().Before(he.ClientCert.NotBefore) && (clientCertAlert || closed):
		return fmt.Sprintf("our client certificate (tls.cert_file) is not valid before %s: fix this host's clock or reissue it (%s)", he.ClientCert.NotBefore.UTC().Format(time.RFC3339), what)
	case he.ClientCert != nil && (clientCertAlert || closed):
		issuer := he.ClientCert.Issuer.String()
		return fmt.Sprintf("%s (the SIEM rejected our client certificate: check that tls.cert_file, issued by %q, is signed by a CA the SIEM trusts (for rsyslog: its CA file) and allowed by its permitted peers; the SIEM's log says why)", what, issuer)
	case strings.HasPrefix(alert, "protocol version"):
		return fmt.Sprintf("%s (no common TLS version: the SIEM must offer TLS 1.2 or newer)", what)
	case alert != "":
		return fmt.Sprintf("%s (the SIEM refused the TLS connection; check the SIEM's log)", what)
	}
	return msg
}
