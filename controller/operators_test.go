package controller

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/bud-ecosystem/budfleet/pki"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

// Every method the controller serves has an entry in the access table, and
// the table names no method that is not served: adding an RPC without
// deciding who may call it fails here.
func TestEveryMethodHasARole(t *testing.T) {
	e := newTestServer(t)
	gs := grpc.NewServer()
	e.srv.RegisterServices(gs)
	served := map[string]bool{}
	for svc, info := range gs.GetServiceInfo() {
		for _, m := range info.Methods {
			full := "/" + svc + "/" + m.Name
			served[full] = true
			need, ok := methodRoles[full]
			if !ok {
				t.Errorf("%s is served but has no entry in methodRoles (controller/auth.go): say which role it needs", full)
				continue
			}
			if need != needPublic && need != needNode && !pki.ValidRole(need) {
				t.Errorf("%s needs %q, neither a role nor public/node", full, need)
			}
		}
	}
	for m := range methodRoles {
		if !served[m] {
			t.Errorf("methodRoles names %s, which the controller does not serve", m)
		}
	}
	if len(served) < 50 {
		t.Errorf("only %d methods served: is RegisterServices registering everything?", len(served))
	}
}

// An admin certificate may not call a method missing from the table.
func TestUnknownMethodRefusedToAdmin(t *testing.T) {
	c := issueCerts(t)
	if _, err := authorize(withPeer(c.admin, c.ca.Cert), "/budfleet.fleet.v1.FleetService/NewMethod"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("admin on an unlisted method: %v", err)
	}
}

func TestRoleAllows(t *testing.T) {
	for _, tc := range []struct {
		have, need string
		want       bool
	}{
		{"viewer", "viewer", true}, {"viewer", "operator", false}, {"viewer", "siem-admin", false}, {"viewer", "admin", false},
		{"operator", "viewer", true}, {"operator", "operator", true}, {"operator", "siem-admin", false}, {"operator", "admin", false},
		{"siem-admin", "viewer", true}, {"siem-admin", "operator", false}, {"siem-admin", "siem-admin", true}, {"siem-admin", "admin", false},
		{"admin", "viewer", true}, {"admin", "operator", true}, {"admin", "siem-admin", true}, {"admin", "admin", true},
		{"", "viewer", false}, {"Admin", "viewer", false}, {"admin", "public", false},
	} {
		if got := pki.RoleAllows(tc.have, tc.need); got != tc.want {
			t.Errorf("RoleAllows(%q, %q) = %v", tc.have, tc.need, got)
		}
	}
}

type opEnv struct {
	*testEnv
	api *FleetAPI
}

// as returns the context the interceptor gives a handler of method called
// with cert, or the interceptor's error.
func (e opEnv) as(cert *x509.Certificate, method string) (context.Context, error) {
	return e.srv.authorize(withPeer(cert, e.ca.Cert), method)
}

func (e opEnv) issue(t *testing.T, admin *x509.Certificate, name, role string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	ctx, err := e.as(admin, fleetv1.FleetService_IssueOperator_FullMethodName)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := pki.NewKey()
	csr, _ := pki.NewCSR(key, "ignored")
	resp, err := e.api.IssueOperator(ctx, &fleetv1.IssueOperatorRequest{Name: name, Role: role, Ttl: durationpb.New(24 * time.Hour), Csr: csr})
	if err != nil {
		t.Fatalf("IssueOperator(%s, %s): %v", name, role, err)
	}
	cert, err := pki.DecodeCert([]byte(resp.GetCertificate()))
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != name || cert.Subject.OrganizationalUnit[0] != role || !cert.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Fatalf("issued %+v", cert.Subject)
	}
	return cert, key
}

func newOpEnv(t *testing.T) (opEnv, *x509.Certificate) {
	e := opEnv{testEnv: newTestServer(t)}
	e.api = e.srv.FleetAPI()
	key, _ := pki.NewKey()
	admin, err := e.ca.IssueClient(key.Public(), pki.OperatorSubject("root", pki.RoleAdmin), base, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := RecordOperator(t.Context(), e.store, admin, base); err != nil {
		t.Fatal(err)
	}
	return e, admin
}

func TestOperatorIssueAndRoles(t *testing.T) {
	e, admin := newOpEnv(t)
	viewer, _ := e.issue(t, admin, "vera", pki.RoleViewer)
	siem, _ := e.issue(t, admin, "sid", pki.RoleSIEMAdmin)
	op, _ := e.issue(t, admin, "otto", pki.RoleOperator)
	for _, tc := range []struct {
		who    string
		cert   *x509.Certificate
		method string
		want   codes.Code
	}{
		{"viewer lists nodes", viewer, fleetv1.FleetService_ListNodes_FullMethodName, codes.OK},
		{"viewer deletes a node", viewer, fleetv1.FleetService_DeleteNode_FullMethodName, codes.PermissionDenied},
		{"viewer mints a token", viewer, fleetv1.FleetService_CreateToken_FullMethodName, codes.PermissionDenied},
		{"viewer applies SIEM", viewer, fleetv1.FleetService_ApplySiemConfig_FullMethodName, codes.PermissionDenied},
		{"operator mints a token", op, fleetv1.FleetService_CreateToken_FullMethodName, codes.OK},
		{"operator applies SIEM", op, fleetv1.FleetService_ApplySiemConfig_FullMethodName, codes.PermissionDenied},
		{"operator issues an operator", op, fleetv1.FleetService_IssueOperator_FullMethodName, codes.PermissionDenied},
		{"siem-admin applies SIEM", siem, fleetv1.FleetService_ApplySiemConfig_FullMethodName, codes.OK},
		{"siem-admin queues a command", siem, fleetv1.FleetService_CreateCommand_FullMethodName, codes.PermissionDenied},
		{"admin revokes", admin, fleetv1.FleetService_RevokeOperator_FullMethodName, codes.OK},
	} {
		if _, err := e.as(tc.cert, tc.method); status.Code(err) != tc.want {
			t.Errorf("%s: %v, want %s", tc.who, err, tc.want)
		}
	}

	// Bad requests are refused and store nothing.
	ctx, _ := e.as(admin, fleetv1.FleetService_IssueOperator_FullMethodName)
	key, _ := pki.NewKey()
	csr, _ := pki.NewCSR(key, "x")
	for _, req := range []*fleetv1.IssueOperatorRequest{
		{Name: "x", Role: "root", Csr: csr},
		{Name: "Bad\nName", Role: "viewer", Csr: csr},
		{Name: "x", Role: "viewer", Csr: []byte("junk")},
		{Name: "x", Role: "viewer", Csr: csr, Ttl: durationpb.New(400 * 24 * time.Hour)},
		{Name: "vera", Role: "admin", Csr: csr}, // exists
	} {
		if _, err := e.api.IssueOperator(ctx, req); err == nil {
			t.Errorf("IssueOperator(%+v) accepted", req)
		}
	}
	list, err := e.api.ListOperators(ctx, &fleetv1.ListOperatorsRequest{})
	if err != nil || len(list.GetOperators()) != 4 {
		t.Fatalf("ListOperators = %v, %v", list, err)
	}
}

func TestOperatorRevokedRefusedOnNextCall(t *testing.T) {
	e, admin := newOpEnv(t)
	bob, _ := e.issue(t, admin, "bob", pki.RoleOperator)
	if _, err := e.as(bob, fleetv1.FleetService_ListNodes_FullMethodName); err != nil {
		t.Fatal(err)
	}
	ctx, _ := e.as(admin, fleetv1.FleetService_RevokeOperator_FullMethodName)
	if _, err := e.api.RevokeOperator(ctx, &fleetv1.RevokeOperatorRequest{Name: "bob"}); err != nil {
		t.Fatal(err)
	}
	_, err := e.as(bob, fleetv1.FleetService_ListNodes_FullMethodName)
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("revoked operator's next call: %v", err)
	}
	// A certificate the controller has no record of (issued by an older
	// init) is revoked by name too.
	key, _ := pki.NewKey()
	legacy, _ := e.ca.IssueClient(key.Public(), pki.OperatorSubject("legacy", pki.RoleAdmin), base, time.Hour)
	if _, err := e.as(legacy, fleetv1.FleetService_ListNodes_FullMethodName); err != nil {
		t.Fatal(err)
	}
	if _, err := e.api.RevokeOperator(ctx, &fleetv1.RevokeOperatorRequest{Name: "legacy"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.as(legacy, fleetv1.FleetService_ListNodes_FullMethodName); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("revoked legacy operator: %v", err)
	}
	// Issuing the name again makes a new, working credential.
	bob2, _ := e.issue(t, admin, "bob", pki.RoleViewer)
	if _, err := e.as(bob2, fleetv1.FleetService_ListNodes_FullMethodName); err != nil {
		t.Fatalf("re-issued bob: %v", err)
	}
	if _, err := e.as(bob, fleetv1.FleetService_ListNodes_FullMethodName); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("the revoked bob certificate works after a re-issue: %v", err)
	}
}

func TestOperatorRenew(t *testing.T) {
	e, admin := newOpEnv(t)
	carol, key := e.issue(t, admin, "carol", pki.RoleSIEMAdmin)
	ctx, err := e.as(carol, fleetv1.FleetService_RenewOperator_FullMethodName)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := pki.NewKey()
	otherCSR, _ := pki.NewCSR(other, "carol")
	if _, err := e.api.RenewOperator(ctx, &fleetv1.RenewOperatorRequest{Csr: otherCSR}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("renewal to another key without rotate_key: %v", err)
	}
	csr, _ := pki.NewCSR(key, "carol")
	e.clock.Advance(time.Hour)
	resp, err := e.api.RenewOperator(ctx, &fleetv1.RenewOperatorRequest{Csr: csr})
	if err != nil {
		t.Fatal(err)
	}
	renewed, _ := pki.DecodeCert([]byte(resp.GetCertificate()))
	if renewed.Subject.CommonName != "carol" || renewed.Subject.OrganizationalUnit[0] != pki.RoleSIEMAdmin || !renewed.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Fatalf("renewed %+v", renewed.Subject)
	}
	if _, err := e.as(renewed, fleetv1.FleetService_ListNodes_FullMethodName); err != nil {
		t.Fatalf("renewed cert: %v", err)
	}
	if _, err := e.as(carol, fleetv1.FleetService_ListNodes_FullMethodName); err != nil {
		t.Fatalf("old cert within the grace: %v", err)
	}
	e.clock.Advance(OperatorRenewGrace)
	if _, err := e.as(carol, fleetv1.FleetService_ListNodes_FullMethodName); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("old cert after the grace: %v", err)
	}
	// rotate_key takes another key.
	ctx, _ = e.as(renewed, fleetv1.FleetService_RenewOperator_FullMethodName)
	if _, err := e.api.RenewOperator(ctx, &fleetv1.RenewOperatorRequest{Csr: otherCSR, RotateKey: true}); err != nil {
		t.Fatalf("rotate_key renewal: %v", err)
	}
}

// A store that cannot answer cannot vouch that a certificate was not
// revoked or replaced: the call is refused (Unavailable, so the caller
// retries), never let through as if the operator were unknown.
func TestOperatorCheckFailsClosedOnStoreError(t *testing.T) {
	e, admin := newOpEnv(t)
	key, _ := pki.NewKey()
	node, err := e.ca.IssueClient(key.Public(), pki.NodeSubject("node-1"), base, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.as(admin, fleetv1.FleetService_ListNodes_FullMethodName); err != nil {
		t.Fatal(err)
	}
	if err := e.store.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = e.as(admin, fleetv1.FleetService_ListNodes_FullMethodName)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "operator root") {
		t.Fatalf("operator call with the store down: %v, want Unavailable", err)
	}
	_, err = e.as(node, agentv1.AgentService_Connect_FullMethodName)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "node-1") {
		t.Fatalf("node call with the store down: %v, want Unavailable", err)
	}
}
