package controller

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"

	"github.com/bud-ecosystem/budfleet/controller/ca"
	"github.com/bud-ecosystem/budfleet/pki"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	artifactv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/artifact/v1"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

var fleetMethods = []string{
	fleetv1.FleetService_CreateToken_FullMethodName,
	fleetv1.FleetService_ListTokens_FullMethodName,
	fleetv1.FleetService_RevokeToken_FullMethodName,
	fleetv1.FleetService_ListNodes_FullMethodName,
	fleetv1.FleetService_GetNode_FullMethodName,
	fleetv1.FleetService_DeleteNode_FullMethodName,
	fleetv1.FleetService_CreateCommand_FullMethodName,
	fleetv1.FleetService_ListCommands_FullMethodName,
	fleetv1.FleetService_GetCommand_FullMethodName,
	fleetv1.FleetService_CreateCommands_FullMethodName,
	fleetv1.FleetService_GetCommandBatch_FullMethodName,
	fleetv1.FleetService_ListGpus_FullMethodName,
	fleetv1.FleetService_GetGpuSummary_FullMethodName,
	fleetv1.FleetService_ApplySiemConfig_FullMethodName,
	fleetv1.FleetService_GetSiemStatus_FullMethodName,
	fleetv1.FleetService_IssueOperator_FullMethodName,
	fleetv1.FleetService_ListOperators_FullMethodName,
	fleetv1.FleetService_RevokeOperator_FullMethodName,
	fleetv1.FleetService_RenewOperator_FullMethodName,
}

// artifactMethods are the operators' artifact calls: a node certificate,
// which may fetch, may not push or remove.
var artifactMethods = []string{
	artifactv1.ArtifactService_PushArtifact_FullMethodName,
	artifactv1.ArtifactService_ListArtifacts_FullMethodName,
	artifactv1.ArtifactService_GetArtifact_FullMethodName,
	artifactv1.ArtifactService_RemoveArtifact_FullMethodName,
}

var reflectionMethods = []string{
	reflectionv1.ServerReflection_ServerReflectionInfo_FullMethodName,
	reflectionv1alpha.ServerReflection_ServerReflectionInfo_FullMethodName,
}

func TestMethodAccess(t *testing.T) {
	cases := map[string]access{
		agentv1.AgentService_Enroll_FullMethodName:          accessPublic,
		healthpb.Health_Check_FullMethodName:                accessPublic,
		healthpb.Health_Watch_FullMethodName:                accessPublic,
		agentv1.AgentService_Connect_FullMethodName:         accessNode,
		artifactv1.NodeArtifactService_Fetch_FullMethodName: accessNode,
		// Anything not named is closed: operators only.
		"/budfleet.fleet.v2.FleetService/CreateToken": accessOperator,
		"/budfleet.agent.v1.AgentService/NewMethod":   accessOperator,
		"/grpc.health.v1.HealthX/Check":               accessOperator,
		"":                                            accessOperator,
	}
	for _, m := range slices.Concat(fleetMethods, artifactMethods) {
		cases[m] = accessOperator
	}
	for _, m := range reflectionMethods {
		cases[m] = accessOperator
	}
	for m, want := range cases {
		if got := methodAccess(m); got != want {
			t.Errorf("methodAccess(%q) = %d, want %d", m, got, want)
		}
	}
}

type certs struct {
	ca       *ca.CA
	node     *x509.Certificate
	admin    *x509.Certificate
	viewer   *x509.Certificate
	operator *x509.Certificate
	siem     *x509.Certificate
	noRole   *x509.Certificate
	stranger *x509.Certificate // chains to the CA, neither node nor operator
}

func issueCerts(t *testing.T) certs {
	t.Helper()
	now := time.Now()
	authority, err := ca.NewCA(now)
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	issue := func(sub pkix.Name) *x509.Certificate {
		c, err := authority.IssueClient(key.Public(), sub, now, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	return certs{
		ca:       authority,
		node:     issue(pki.NodeSubject("node-1")),
		admin:    issue(pki.OperatorSubject("alice", pki.RoleAdmin)),
		viewer:   issue(pki.OperatorSubject("bob", "viewer")),
		operator: issue(pki.OperatorSubject("olga", pki.RoleOperator)),
		siem:     issue(pki.OperatorSubject("sam", pki.RoleSIEMAdmin)),
		noRole:   issue(pkix.Name{CommonName: "carol", Organization: []string{pki.OrgOperator}}),
		stranger: issue(pkix.Name{CommonName: "eve", Organization: []string{"budfleet"}}),
	}
}

// withPeer returns a context as gRPC gives a handler for a TLS connection
// whose client presented cert (none if nil), verified against ca.
func withPeer(cert, ca *x509.Certificate) context.Context {
	var st tls.ConnectionState
	if cert != nil {
		st.PeerCertificates = []*x509.Certificate{cert}
		st.VerifiedChains = [][]*x509.Certificate{{cert, ca}}
	}
	return peer.NewContext(context.Background(), &peer.Peer{
		Addr:     &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 40000},
		AuthInfo: credentials.TLSInfo{State: st},
	})
}

// roleCode is what authorize answers role on method.
func roleCode(role, method string) codes.Code {
	if pki.RoleAllows(role, methodRoles[method]) {
		return codes.OK
	}
	return codes.PermissionDenied
}

func TestAuthorize(t *testing.T) {
	c := issueCerts(t)
	connect := agentv1.AgentService_Connect_FullMethodName
	enroll := agentv1.AgentService_Enroll_FullMethodName
	health := healthpb.Health_Check_FullMethodName
	create := fleetv1.FleetService_CreateToken_FullMethodName
	fetch := artifactv1.NodeArtifactService_Fetch_FullMethodName

	type tc struct {
		name     string
		ctx      context.Context
		method   string
		want     codes.Code
		wantName string
		wantRole string
	}
	cases := []tc{
		{"node on Connect", withPeer(c.node, c.ca.Cert), connect, codes.OK, "node-1", ""},
		{"admin on Connect", withPeer(c.admin, c.ca.Cert), connect, codes.PermissionDenied, "", ""},
		{"stranger on Connect", withPeer(c.stranger, c.ca.Cert), connect, codes.PermissionDenied, "", ""},
		{"no cert on Connect", withPeer(nil, nil), connect, codes.Unauthenticated, "", ""},
		{"no peer on Connect", context.Background(), connect, codes.Unauthenticated, "", ""},
		{"node on Fetch", withPeer(c.node, c.ca.Cert), fetch, codes.OK, "node-1", ""},
		{"admin on Fetch", withPeer(c.admin, c.ca.Cert), fetch, codes.PermissionDenied, "", ""},
		{"no cert on Fetch", withPeer(nil, nil), fetch, codes.Unauthenticated, "", ""},
		{"no cert on Enroll", withPeer(nil, nil), enroll, codes.OK, "", ""},
		{"no peer on Enroll", context.Background(), enroll, codes.OK, "", ""},
		{"no cert on health", withPeer(nil, nil), health, codes.OK, "", ""},
		{"unverified cert on fleet", peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: []*x509.Certificate{c.admin}}}}), create, codes.Unauthenticated, "", ""},
		{"non-TLS peer on fleet", peer.NewContext(context.Background(), &peer.Peer{}), create, codes.Unauthenticated, "", ""},
	}
	for _, m := range slices.Concat(fleetMethods, artifactMethods, reflectionMethods) {
		cases = append(cases,
			tc{"admin on " + m, withPeer(c.admin, c.ca.Cert), m, codes.OK, "alice", pki.RoleAdmin},
			tc{"viewer on " + m, withPeer(c.viewer, c.ca.Cert), m, roleCode(pki.RoleViewer, m), "bob", "viewer"},
			tc{"operator on " + m, withPeer(c.operator, c.ca.Cert), m, roleCode(pki.RoleOperator, m), "olga", pki.RoleOperator},
			tc{"siem-admin on " + m, withPeer(c.siem, c.ca.Cert), m, roleCode(pki.RoleSIEMAdmin, m), "sam", pki.RoleSIEMAdmin},
			tc{"operator without role on " + m, withPeer(c.noRole, c.ca.Cert), m, codes.PermissionDenied, "", ""},
			tc{"node on " + m, withPeer(c.node, c.ca.Cert), m, codes.PermissionDenied, "", ""},
			tc{"stranger on " + m, withPeer(c.stranger, c.ca.Cert), m, codes.PermissionDenied, "", ""},
			tc{"no cert on " + m, withPeer(nil, nil), m, codes.Unauthenticated, "", ""},
		)
	}
	for _, tc := range cases {
		ctx, err := authorize(tc.ctx, tc.method)
		if got := status.Code(err); got != tc.want {
			t.Errorf("%s: code %s (%v), want %s", tc.name, got, err, tc.want)
			continue
		}
		if err != nil {
			if ctx != nil {
				t.Errorf("%s: refused but returned a context", tc.name)
			}
			continue
		}
		id, ok := IdentityFrom(ctx)
		if tc.wantName == "" {
			if ok {
				t.Errorf("%s: public method got an identity %+v", tc.name, id)
			}
			continue
		}
		if !ok || id.Name != tc.wantName || id.Role != tc.wantRole || id.Cert == nil {
			t.Errorf("%s: identity %+v (ok %v), want name %q role %q", tc.name, id, ok, tc.wantName, tc.wantRole)
		}
	}
}

func TestAuthorizeMessageNamesRole(t *testing.T) {
	c := issueCerts(t)
	_, err := authorize(withPeer(c.viewer, c.ca.Cert), fleetv1.FleetService_DeleteNode_FullMethodName)
	st, _ := status.FromError(err)
	if want := `operator role "viewer" may not call ` + fleetv1.FleetService_DeleteNode_FullMethodName + ` (it needs operator)`; st.Message() != want {
		t.Errorf("message %q, want %q", st.Message(), want)
	}
}

type fakeStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s fakeStream) Context() context.Context { return s.ctx }

func TestInterceptors(t *testing.T) {
	c := issueCerts(t)
	called := false
	handler := func(ctx context.Context, req any) (any, error) {
		called = true
		id, _ := IdentityFrom(ctx)
		return id.Name, nil
	}
	info := &grpc.UnaryServerInfo{FullMethod: fleetv1.FleetService_ListNodes_FullMethodName}
	if _, err := unaryAuth(withPeer(c.node, c.ca.Cert), nil, info, handler); status.Code(err) != codes.PermissionDenied || called {
		t.Fatalf("unaryAuth with a node cert: %v, handler called %v", err, called)
	}
	got, err := unaryAuth(withPeer(c.admin, c.ca.Cert), nil, info, handler)
	if err != nil || !called || got != "alice" {
		t.Fatalf("unaryAuth with an admin cert: %v %v called %v", got, err, called)
	}

	sinfo := &grpc.StreamServerInfo{FullMethod: agentv1.AgentService_Connect_FullMethodName}
	var name string
	shandler := func(_ any, ss grpc.ServerStream) error {
		id, _ := IdentityFrom(ss.Context())
		name = id.Name
		return nil
	}
	if err := streamAuth(nil, fakeStream{ctx: withPeer(nil, nil)}, sinfo, shandler); status.Code(err) != codes.Unauthenticated || name != "" {
		t.Fatalf("streamAuth without a cert: %v, handler saw %q", err, name)
	}
	if err := streamAuth(nil, fakeStream{ctx: withPeer(c.node, c.ca.Cert)}, sinfo, shandler); err != nil || name != "node-1" {
		t.Fatalf("streamAuth with a node cert: %v, handler saw %q", err, name)
	}
}
