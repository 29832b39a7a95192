package agent

import (
	"crypto/x509"
	"time"

	"github.com/bud-ecosystem/budfleet/pki"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
)

// renewAt is two thirds into a certificate's life.
func renewAt(c *x509.Certificate) time.Time {
	life := c.NotAfter.Sub(c.NotBefore)
	return c.NotBefore.Add(life * 2 / 3)
}

// renewLoop asks for a new certificate, signed for the key the node already
// has, once two thirds of the current one's life have passed, and again
// every minute until one arrives.
func (s *sessionState) renewLoop(cert *x509.Certificate) error {
	for {
		wait := renewAt(cert).Sub(s.a.opts.Now())
		if wait < 0 {
			wait = 0
		}
		select {
		case <-s.ctx.Done():
			return nil
		case <-time.After(wait):
		}
		id, err := s.a.state.Identity()
		if err != nil {
			return err
		}
		if c, err := x509.ParseCertificate(id.CertDER); err == nil && renewAt(c).After(s.a.opts.Now()) {
			cert = c // renewed meanwhile
			continue
		}
		key, err := pki.DecodeKey(id.KeyPEM)
		if err != nil {
			return err
		}
		csr, err := pki.NewCSR(key, s.a.nodeID)
		if err != nil {
			return err
		}
		s.a.log.Info("renewing node certificate", "expires", cert.NotAfter)
		if s.send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_RenewRequest{RenewRequest: &agentv1.RenewRequest{CsrDer: csr}}}) != nil {
			return nil
		}
		select {
		case <-s.ctx.Done():
			return nil
		case <-time.After(time.Minute):
		case <-s.a.renewed:
		}
		if id, err := s.a.state.Identity(); err == nil {
			if c, err := x509.ParseCertificate(id.CertDER); err == nil {
				cert = c
			}
		}
	}
}

func (a *Agent) handleRenewal(r *agentv1.RenewResponse) {
	if r.GetError() != "" {
		a.log.Error("controller refused to renew the node certificate", "error", r.GetError())
		return
	}
	c, err := x509.ParseCertificate(r.GetCertificateDer())
	if err != nil {
		a.log.Error("controller sent a bad renewed certificate", "error", err)
		return
	}
	id, err := a.state.Identity()
	if err != nil {
		a.log.Error("load identity", "error", err)
		return
	}
	ca, err := x509.ParseCertificate(id.CADER)
	if err != nil {
		return
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: pki.Pool(ca), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil || c.Subject.CommonName != a.nodeID {
		a.log.Error("renewed certificate does not verify or names another node; keeping the current one", "error", err)
		return
	}
	if err := a.state.UpdateCertificate(c.Raw); err != nil {
		a.log.Error("store renewed certificate", "error", err)
		return
	}
	a.log.Info("node certificate renewed", "expires", c.NotAfter)
	select {
	case a.renewed <- struct{}{}:
	default:
	}
}
