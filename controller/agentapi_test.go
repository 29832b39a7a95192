package controller

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/bud-ecosystem/budfleet/pki"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

// mintToken creates a token through the fleet API and returns it parsed.
func mintToken(t *testing.T, e *testEnv, req *fleetv1.CreateTokenRequest) pki.JoinToken {
	t.Helper()
	resp, err := e.srv.FleetAPI().CreateToken(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	jt, err := pki.ParseJoinToken(resp.GetJoinToken())
	if err != nil {
		t.Fatal(err)
	}
	return jt
}

func newCSR(t *testing.T) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.NewCSR(key, "ignored-cn")
	if err != nil {
		t.Fatal(err)
	}
	return csr, key
}

func tokenUses(t *testing.T, e *testEnv, id string) uint32 {
	t.Helper()
	tok, err := e.store.GetToken(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	return tok.Uses
}

func nodeCount(t *testing.T, e *testEnv) int {
	t.Helper()
	ns, err := e.store.ListNodes(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return len(ns)
}

func TestEnrollSuccess(t *testing.T) {
	e := newTestServer(t)
	labels := map[string]string{"env": "prod", "example.com/rack": "r12"}
	jt := mintToken(t, e, &fleetv1.CreateTokenRequest{Labels: labels})
	csr, key := newCSR(t)

	resp, err := e.srv.AgentAPI().Enroll(context.Background(), &agentv1.EnrollRequest{
		TokenId: jt.ID, TokenSecret: jt.Secret, CsrDer: csr, Hostname: "node-a.example.com", MachineId: "0123456789abcdef",
	})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(resp.GetCertificateDer())
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != resp.GetNodeId() || !slices.Contains(cert.Subject.Organization, pki.OrgNode) {
		t.Errorf("certificate subject %v, want CN %s in org %s (not the CSR's)", cert.Subject, resp.GetNodeId(), pki.OrgNode)
	}
	if !cert.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Error("certificate is not for the CSR's key")
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pki.Pool(e.ca.Cert), CurrentTime: base, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("node certificate does not verify as a client cert: %v", err)
	}
	if got := cert.NotAfter.Sub(base); got != DefaultAgentCertTTL {
		t.Errorf("certificate lifetime %s, want %s", got, DefaultAgentCertTTL)
	}
	if !slices.Equal(resp.GetCaCertificateDer(), e.ca.Cert.Raw) {
		t.Error("response does not carry the CA")
	}

	n, err := e.store.GetNode(t.Context(), resp.GetNodeId())
	if err != nil {
		t.Fatal(err)
	}
	if n.Hostname != "node-a.example.com" || n.MachineID != "0123456789abcdef" || n.TokenID != jt.ID || !n.EnrolledAt.Equal(base) {
		t.Errorf("stored node = %+v", n)
	}
	if len(n.Labels) != 2 || n.Labels["env"] != "prod" || n.Labels["example.com/rack"] != "r12" {
		t.Errorf("node labels = %v, want the token's %v", n.Labels, labels)
	}
	if n.CertSerial != cert.SerialNumber.Text(16) || !n.CertExpiresAt.Equal(cert.NotAfter) {
		t.Errorf("stored cert serial/expiry %s %s, want %s %s", n.CertSerial, n.CertExpiresAt, cert.SerialNumber.Text(16), cert.NotAfter)
	}
	if u := tokenUses(t, e, jt.ID); u != 1 {
		t.Errorf("token uses = %d, want 1", u)
	}

	// A second enrollment with the same token makes another node.
	csr2, _ := newCSR(t)
	resp2, err := e.srv.AgentAPI().Enroll(context.Background(), &agentv1.EnrollRequest{TokenId: jt.ID, TokenSecret: jt.Secret, CsrDer: csr2, Hostname: "node-b"})
	if err != nil {
		t.Fatal(err)
	}
	if resp2.GetNodeId() == resp.GetNodeId() {
		t.Error("two enrollments got the same node id")
	}
	if u := tokenUses(t, e, jt.ID); u != 2 {
		t.Errorf("token uses = %d, want 2", u)
	}
}

func TestEnrollRefusals(t *testing.T) {
	e := newTestServer(t)
	jt := mintToken(t, e, &fleetv1.CreateTokenRequest{})
	csr, _ := newCSR(t)
	rsaLike := func() []byte {
		// A valid CSR for a key budfleet does not issue for (P-384).
		k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "x"}}, k)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}()
	tampered := append([]byte(nil), csr...)
	tampered[len(tampered)-5] ^= 0xff

	ok := func() *agentv1.EnrollRequest {
		return &agentv1.EnrollRequest{TokenId: jt.ID, TokenSecret: jt.Secret, CsrDer: csr, Hostname: "node-a"}
	}
	wrongSecret := strings.Repeat("0", 32)
	if wrongSecret == jt.Secret {
		wrongSecret = strings.Repeat("1", 32)
	}
	for name, tc := range map[string]struct {
		mutate func(*agentv1.EnrollRequest)
		code   codes.Code
	}{
		"garbage CSR":      {func(r *agentv1.EnrollRequest) { r.CsrDer = []byte("not a csr") }, codes.InvalidArgument},
		"empty CSR":        {func(r *agentv1.EnrollRequest) { r.CsrDer = nil }, codes.InvalidArgument},
		"bad signature":    {func(r *agentv1.EnrollRequest) { r.CsrDer = tampered }, codes.InvalidArgument},
		"P-384 key":        {func(r *agentv1.EnrollRequest) { r.CsrDer = rsaLike }, codes.InvalidArgument},
		"bad hostname":     {func(r *agentv1.EnrollRequest) { r.Hostname = "bad host" }, codes.InvalidArgument},
		"empty hostname":   {func(r *agentv1.EnrollRequest) { r.Hostname = "" }, codes.InvalidArgument},
		"bad machine id":   {func(r *agentv1.EnrollRequest) { r.MachineId = "../etc" }, codes.InvalidArgument},
		"malformed id":     {func(r *agentv1.EnrollRequest) { r.TokenId = "XYZ" }, codes.InvalidArgument},
		"wrong secret":     {func(r *agentv1.EnrollRequest) { r.TokenSecret = wrongSecret }, codes.PermissionDenied},
		"empty secret":     {func(r *agentv1.EnrollRequest) { r.TokenSecret = "" }, codes.PermissionDenied},
		"unknown token id": {func(r *agentv1.EnrollRequest) { r.TokenId = "0123456789ab" }, codes.PermissionDenied},
	} {
		req := ok()
		tc.mutate(req)
		resp, err := e.srv.AgentAPI().Enroll(context.Background(), req)
		if status.Code(err) != tc.code {
			t.Errorf("%s: %v, want %s", name, err, tc.code)
		}
		if resp != nil {
			t.Errorf("%s: refused enrollment returned %v", name, resp)
		}
		if u := tokenUses(t, e, jt.ID); u != 0 {
			t.Fatalf("%s: token uses = %d after a refusal, want 0", name, u)
		}
		if n := nodeCount(t, e); n != 0 {
			t.Fatalf("%s: %d nodes after a refusal", name, n)
		}
	}
	// A wrong secret and an unknown id read alike, so ids cannot be probed.
	_, err1 := e.srv.AgentAPI().Enroll(context.Background(), &agentv1.EnrollRequest{TokenId: jt.ID, TokenSecret: wrongSecret, CsrDer: csr, Hostname: "h"})
	_, err2 := e.srv.AgentAPI().Enroll(context.Background(), &agentv1.EnrollRequest{TokenId: "0123456789ab", TokenSecret: wrongSecret, CsrDer: csr, Hostname: "h"})
	if status.Convert(err1).Message() != status.Convert(err2).Message() {
		t.Errorf("wrong secret %q and unknown id %q are told apart", status.Convert(err1).Message(), status.Convert(err2).Message())
	}
}

func TestEnrollTokenLimits(t *testing.T) {
	e := newTestServer(t)
	api := e.srv.AgentAPI()
	enroll := func(jt pki.JoinToken) error {
		csr, _ := newCSR(t)
		_, err := api.Enroll(context.Background(), &agentv1.EnrollRequest{TokenId: jt.ID, TokenSecret: jt.Secret, CsrDer: csr, Hostname: "h"})
		return err
	}

	once := mintToken(t, e, &fleetv1.CreateTokenRequest{MaxUses: 1})
	if err := enroll(once); err != nil {
		t.Fatal(err)
	}
	if err := enroll(once); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "used up") {
		t.Errorf("second use of a one-use token: %v", err)
	}
	if u := tokenUses(t, e, once.ID); u != 1 {
		t.Errorf("uses = %d, want 1", u)
	}

	revoked := mintToken(t, e, &fleetv1.CreateTokenRequest{})
	if _, err := e.srv.FleetAPI().RevokeToken(context.Background(), &fleetv1.RevokeTokenRequest{Id: revoked.ID}); err != nil {
		t.Fatal(err)
	}
	if err := enroll(revoked); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "revoked") {
		t.Errorf("revoked token: %v", err)
	}

	short := mintToken(t, e, &fleetv1.CreateTokenRequest{Ttl: durationpb.New(time.Hour)})
	e.clock.Advance(time.Hour)
	if err := enroll(short); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired token: %v", err)
	}
	if n := nodeCount(t, e); n != 1 {
		t.Errorf("%d nodes, want 1", n)
	}
}
