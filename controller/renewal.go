package controller

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"time"

	"github.com/bud-ecosystem/budfleet/pki"

	"github.com/bud-ecosystem/budfleet/controller/store"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
)

// NodeCertGrace is how long a node's previous certificate still works
// after a renewal.
const NodeCertGrace = 10 * time.Minute

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
	csr, err := pki.ParseCSR(r.GetCsrDer())
	if err != nil {
		return fail(err)
	}
	// A renewal keeps the node's key: a stolen credential cannot move to
	// a key of its own and live beside the real node. Rotating the key is
	// a new enrollment.
	if id, ok := IdentityFrom(ctx); ok && id.Cert != nil {
		cur, ok1 := id.Cert.PublicKey.(*ecdsa.PublicKey)
		nk, ok2 := csr.PublicKey.(*ecdsa.PublicKey)
		if !ok1 || !ok2 || !cur.Equal(nk) {
			return fail(errors.New("a renewal keeps the node's key: the CSR carries another one (to rotate the key, enroll the node again)"))
		}
	}
	node, err := s.store.GetNode(ctx, nodeID)
	if err != nil {
		return fail(err)
	}
	// One renewal per half certificate life, however often a node asks.
	if half := node.CertExpiresAt.Add(-s.opts.AgentCertTTL / 2); !node.CertExpiresAt.IsZero() && now.Before(half) {
		s.refusals.note(ctx, "renewal", nodeID, fmt.Errorf("too early: renew after %s", half.UTC().Format(time.RFC3339)))
		return &agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_RenewResponse{RenewResponse: &agentv1.RenewResponse{
			Error: fmt.Sprintf("renewal refused: the current certificate is not half way through its life; renew after %s", half.UTC().Format(time.RFC3339))}}}
	}
	cert, err := s.ca.IssueClient(csr.PublicKey, pki.NodeSubject(nodeID), now, s.opts.AgentCertTTL)
	if err != nil {
		return fail(err)
	}
	prev := ""
	if _, err := s.store.UpdateNode(ctx, nodeID, func(n *store.Node) error {
		prev = n.CertSerial
		// The replaced certificate works for a short grace only (the
		// agent stores the new one and uses it from its next connection).
		n.PrevCertSerial, n.PrevCertUntil = n.CertSerial, now.Add(NodeCertGrace)
		n.CertSerial = cert.SerialNumber.Text(16)
		n.CertExpiresAt = cert.NotAfter
		return nil
	}); err != nil {
		return fail(err)
	}
	s.metrics.renewals.Inc()
	s.log.InfoContext(ctx, "node certificate renewed", "node_id", nodeID, "expires", cert.NotAfter)
	s.auditRecord(ctx, "node.renew", nodeID, "node_id", nodeID, "serial", cert.SerialNumber.Text(16), "previous_serial", prev, "expires", cert.NotAfter.UTC().Format(time.RFC3339))
	return &agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_RenewResponse{RenewResponse: &agentv1.RenewResponse{CertificateDer: cert.Raw}}}
}
