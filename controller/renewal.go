package controller

import (
	"context"

	"github.com/bud-ecosystem/budfleet/controller/store"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
)

// renewal signs a connected node's CSR for a fresh certificate, so the
// node's key never leaves it and a node that stays connected never has to
// join again.
type renewal struct{ srv *Server }

func (*renewal) name() string                          { return "renewal" }
func (m *renewal) handlers() []handler                 { return []handler{on(m.handleRequest)} }
func (*renewal) start(context.Context, *session) error { return nil }

func (m *renewal) handleRequest(ctx context.Context, sess *session, msg *agentv1.ConnectRequest_RenewRequest) error {
	sess.send(m.renew(ctx, sess.nodeID, msg.RenewRequest))
	return nil
}

func (m *renewal) renew(ctx context.Context, nodeID string, r *agentv1.RenewRequest) *agentv1.ConnectResponse {
	s := m.srv
	fail := func(err error) *agentv1.ConnectResponse {
		s.log.WarnContext(ctx, "certificate renewal refused", "node_id", nodeID, "error", err)
		return &agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_RenewResponse{RenewResponse: &agentv1.RenewResponse{Error: err.Error()}}}
	}
	now := s.opts.Now()
	cert, err := s.ca.SignNodeCSR(r.GetCsrDer(), nodeID, now, s.opts.AgentCertTTL)
	if err != nil {
		return fail(err)
	}
	if _, err := s.store.UpdateNode(ctx, nodeID, func(n *store.Node) error {
		n.CertSerial = cert.SerialNumber.Text(16)
		n.CertExpiresAt = cert.NotAfter
		return nil
	}); err != nil {
		return fail(err)
	}
	s.metrics.renewals.Inc()
	s.log.InfoContext(ctx, "node certificate renewed", "node_id", nodeID, "expires", cert.NotAfter)
	return &agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_RenewResponse{RenewResponse: &agentv1.RenewResponse{CertificateDer: cert.Raw}}}
}
