package controller

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/pki"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
)

// Renewal keeps the key, comes only after half the certificate's life,
// and leaves the replaced certificate working for NodeCertGrace only.
func TestNodeRenewalKeyHalfLifeAndGrace(t *testing.T) {
	e := newTestServer(t)
	key, _ := pki.NewKey()
	cert, err := e.ca.IssueClient(key.Public(), pki.NodeSubject("n1"), base, DefaultAgentCertTTL)
	if err != nil {
		t.Fatal(err)
	}
	tok := store.Token{ID: "tok1", CreatedAt: base, ExpiresAt: base.Add(time.Hour)}
	if err := e.store.CreateToken(t.Context(), tok); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.Enroll(t.Context(), "tok1", func(store.Token) error { return nil }, store.Node{ID: "n1", Hostname: "h", CertSerial: cert.SerialNumber.Text(16), CertExpiresAt: cert.NotAfter}); err != nil {
		t.Fatal(err)
	}
	ctx := context.WithValue(t.Context(), identityKey{}, Identity{Name: "n1", Cert: cert})
	r := &renewal{srv: e.srv}
	csr, _ := pki.NewCSR(key, "n1")
	renew := func(csr []byte) *agentv1.RenewResponse {
		return r.renew(ctx, "n1", &agentv1.RenewRequest{CsrDer: csr}).GetRenewResponse()
	}
	if resp := renew(csr); !strings.Contains(resp.GetError(), "half way") {
		t.Fatalf("an early renewal: %v", resp)
	}
	e.clock.Advance(DefaultAgentCertTTL * 2 / 3)
	other, _ := pki.NewKey()
	otherCSR, _ := pki.NewCSR(other, "n1")
	if resp := renew(otherCSR); !strings.Contains(resp.GetError(), "keeps the node's key") {
		t.Fatalf("a renewal to another key: %v", resp)
	}
	resp := renew(csr)
	if resp.GetError() != "" || len(resp.GetCertificateDer()) == 0 {
		t.Fatalf("renewal: %v", resp)
	}
	// Straight away again: refused, however often asked.
	for i := 0; i < 5; i++ {
		if resp := renew(csr); !strings.Contains(resp.GetError(), "half way") {
			t.Fatalf("renewal right after a renewal: %v", resp)
		}
	}
	n, _ := e.store.GetNode(t.Context(), "n1")
	if n.PrevCertSerial != cert.SerialNumber.Text(16) || n.CertSerial == n.PrevCertSerial {
		t.Fatalf("node after renewal: %+v", n)
	}
	// The old certificate: fine within the grace, refused after it.
	if err := e.srv.nodeCertCurrent(t.Context(), "n1", cert, e.clock.Now()); err != nil {
		t.Fatalf("old certificate within the grace: %v", err)
	}
	e.clock.Advance(NodeCertGrace)
	if err := e.srv.nodeCertCurrent(t.Context(), "n1", cert, e.clock.Now()); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("old certificate after the grace: %v", err)
	}
}
