package controller

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/bud-ecosystem/budfleet/controller/ca"
	"github.com/bud-ecosystem/budfleet/pki"
)

// ServerCertTTL is the lifetime of the controller's server certificate; a
// running controller replaces it after two thirds of it, and
// `bud-controller rotate-server-cert` does at once.
const ServerCertTTL = 365 * 24 * time.Hour

// RotateServerCert issues a new server certificate (and key) for the names
// of the current one and writes it into dataDir; a running controller
// picks it up within seconds. Agents and budctl pin the CA, not the
// server certificate, so nothing else changes.
func RotateServerCert(dataDir string, now time.Time) (*x509.Certificate, error) {
	authority, err := ca.LoadCA(dataDir)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(dataDir, ca.ServerCertFile))
	if err != nil {
		return nil, fmt.Errorf("read the server certificate: %w", err)
	}
	old, err := pki.DecodeCert(b)
	if err != nil {
		return nil, fmt.Errorf("server certificate: %w", err)
	}
	var names []string
	if old.Subject.CommonName != "" && old.Subject.CommonName != "bud-controller" {
		names = append(names, old.Subject.CommonName)
	}
	names = append(names, old.DNSNames...)
	for _, ip := range old.IPAddresses {
		names = append(names, ip.String())
	}
	if err := writeServerCert(dataDir, authority, names, now); err != nil {
		return nil, err
	}
	b, err = os.ReadFile(filepath.Join(dataDir, ca.ServerCertFile))
	if err != nil {
		return nil, err
	}
	return pki.DecodeCert(b)
}

// serverCerts serves the server certificate from the data dir, reloading it
// when the files change and rotating it after two thirds of its life.
type serverCerts struct {
	dir   string
	caDER []byte
	log   *slog.Logger
	now   func() time.Time

	mu      sync.Mutex
	cert    *tls.Certificate
	leaf    *x509.Certificate
	modTime time.Time
	checked time.Time
}

func newServerCerts(dir string, caCert *x509.Certificate, log *slog.Logger, now func() time.Time) (*serverCerts, error) {
	c := &serverCerts{dir: dir, caDER: caCert.Raw, log: log, now: now}
	if err := c.reload(true); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *serverCerts) reload(force bool) error {
	certPath := filepath.Join(c.dir, ca.ServerCertFile)
	fi, err := os.Stat(certPath)
	if err != nil {
		return err
	}
	if !force && fi.ModTime().Equal(c.modTime) {
		return nil
	}
	kp, err := tls.LoadX509KeyPair(certPath, filepath.Join(c.dir, ca.ServerKeyFile))
	if err != nil {
		return fmt.Errorf("load server certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(kp.Certificate[0])
	if err != nil {
		return err
	}
	kp.Certificate = append(kp.Certificate[:1:1], c.caDER)
	kp.Leaf = leaf
	if c.cert != nil {
		c.log.Info("server certificate reloaded", "serial", leaf.SerialNumber.Text(16), "expires", leaf.NotAfter)
	}
	c.cert, c.leaf, c.modTime = &kp, leaf, fi.ModTime()
	return nil
}

// get is tls.Config.GetCertificate: the files are looked at again at most
// every 2 seconds.
func (c *serverCerts) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now := time.Now(); now.Sub(c.checked) > 2*time.Second {
		c.checked = now
		if err := c.reload(false); err != nil {
			// A half-written pair (key before certificate): keep serving
			// the one loaded.
			c.log.Warn("server certificate not reloaded", "error", err)
		}
	}
	return c.cert, nil
}

// due reports whether the certificate is past two thirds of its life.
func (c *serverCerts) due() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	life := c.leaf.NotAfter.Sub(c.leaf.NotBefore)
	return !c.now().Before(c.leaf.NotBefore.Add(life * 2 / 3))
}

// rotate runs until ctx ends, replacing the certificate when due.
func (c *serverCerts) rotate(ctx context.Context, every time.Duration) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if c.due() {
			if cert, err := RotateServerCert(c.dir, c.now()); err != nil {
				c.log.Error("rotate the server certificate", "error", err)
			} else {
				c.log.Info("server certificate rotated", "serial", cert.SerialNumber.Text(16), "expires", cert.NotAfter)
				c.mu.Lock()
				if err := c.reload(true); err != nil {
					c.log.Error("load the rotated server certificate", "error", err)
				}
				c.mu.Unlock()
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
