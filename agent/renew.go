package agent

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"time"

	"github.com/bud-ecosystem/budfleet/agent/session"
	"github.com/bud-ecosystem/budfleet/agent/state"
	"github.com/bud-ecosystem/budfleet/pki"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
)

// renewal keeps the node certificate fresh over the session, for the key
// the node already has: the key never leaves the node.
type renewal struct {
	state  *state.DB
	nodeID string
	now    func() time.Time
	log    *slog.Logger
	// renewed tells the loop a renewed certificate was stored.
	renewed chan struct{}
}

func (*renewal) Name() string { return "renewal" }

func (m *renewal) Handlers() []session.Handler {
	return []session.Handler{session.On(m.handleResponse)}
}

// renewAt is two thirds into a certificate's life.
func renewAt(c *x509.Certificate) time.Time {
	life := c.NotAfter.Sub(c.NotBefore)
	return c.NotBefore.Add(life * 2 / 3)
}

// Run asks for a new certificate once two thirds of the current one's life
// have passed, and again every minute until one arrives.
func (m *renewal) Run(ctx context.Context, s *session.Session) error {
	id, err := m.state.Identity()
	if err != nil {
		return err
	}
	cert, err := x509.ParseCertificate(id.CertDER)
	if err != nil {
		return fmt.Errorf("stored certificate: %w", err)
	}
	for {
		wait := renewAt(cert).Sub(m.now())
		if wait < 0 {
			wait = 0
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		id, err := m.state.Identity()
		if err != nil {
			return err
		}
		if c, err := x509.ParseCertificate(id.CertDER); err == nil && renewAt(c).After(m.now()) {
			cert = c // renewed meanwhile
			continue
		}
		key, err := pki.DecodeKey(id.KeyPEM)
		if err != nil {
			return err
		}
		csr, err := pki.NewCSR(key, m.nodeID)
		if err != nil {
			return err
		}
		m.log.Info("renewing node certificate", "expires", cert.NotAfter)
		if s.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_RenewRequest{RenewRequest: &agentv1.RenewRequest{CsrDer: csr}}}) != nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Minute):
		case <-m.renewed:
		}
		if id, err := m.state.Identity(); err == nil {
			if c, err := x509.ParseCertificate(id.CertDER); err == nil {
				cert = c
			}
		}
	}
}

// handleResponse stores a renewed certificate that verifies against the
// pinned CA and names this node; anything else keeps the current one.
func (m *renewal) handleResponse(_ context.Context, _ *session.Session, msg *agentv1.ConnectResponse_RenewResponse) error {
	r := msg.RenewResponse
	if r.GetError() != "" {
		m.log.Error("controller refused to renew the node certificate", "error", r.GetError())
		return nil
	}
	c, err := x509.ParseCertificate(r.GetCertificateDer())
	if err != nil {
		m.log.Error("controller sent a bad renewed certificate", "error", err)
		return nil
	}
	id, err := m.state.Identity()
	if err != nil {
		m.log.Error("load identity", "error", err)
		return nil
	}
	ca, err := x509.ParseCertificate(id.CADER)
	if err != nil {
		return nil
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: pki.Pool(ca), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil || c.Subject.CommonName != m.nodeID {
		m.log.Error("renewed certificate does not verify or names another node; keeping the current one", "error", err)
		return nil
	}
	if err := m.state.UpdateCertificate(c.Raw); err != nil {
		m.log.Error("store renewed certificate", "error", err)
		return nil
	}
	m.log.Info("node certificate renewed", "expires", c.NotAfter)
	select {
	case m.renewed <- struct{}{}:
	default:
	}
	return nil
}
