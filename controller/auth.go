package controller

import (
	"context"
	"crypto/x509"
	"errors"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"

	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/pki"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	artifactv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/artifact/v1"
	backupv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/backup/v1"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
	kubev1 "github.com/bud-ecosystem/budfleet/proto/budfleet/kube/v1"
	machinev1 "github.com/bud-ecosystem/budfleet/proto/budfleet/machine/v1"
	maintv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/maint/v1"
)

// Who may call a method. The TLS layer has already checked that any client
// certificate chains to the CA; this decides which kind of certificate each
// method needs and, for operators, which role.
type access int

const (
	accessPublic access = iota
	accessNode
	accessOperator
)

// Pseudo-roles of the table: no certificate at all, and a node's.
const (
	needPublic = "public"
	needNode   = "node"
)

// methodRoles is the one table of what each RPC needs: needPublic,
// needNode, or the least operator role (pki.RoleAllows). A method missing
// from it is refused to everyone (TestEveryMethodHasARole walks the
// registered services so none is forgotten).
var methodRoles = map[string]string{
	agentv1.AgentService_Enroll_FullMethodName: needPublic,
	healthpb.Health_Check_FullMethodName:       needPublic,
	healthpb.Health_Watch_FullMethodName:       needPublic,
	"/grpc.health.v1.Health/List":              needPublic,

	agentv1.AgentService_Connect_FullMethodName: needNode,
	// Read only: a node fetches artifacts, never pushes or removes them.
	artifactv1.NodeArtifactService_Fetch_FullMethodName: needNode,

	reflectionv1.ServerReflection_ServerReflectionInfo_FullMethodName:      pki.RoleViewer,
	reflectionv1alpha.ServerReflection_ServerReflectionInfo_FullMethodName: pki.RoleViewer,

	fleetv1.FleetService_CreateToken_FullMethodName:     pki.RoleOperator,
	fleetv1.FleetService_ListTokens_FullMethodName:      pki.RoleViewer,
	fleetv1.FleetService_RevokeToken_FullMethodName:     pki.RoleOperator,
	fleetv1.FleetService_ListNodes_FullMethodName:       pki.RoleViewer,
	fleetv1.FleetService_GetNode_FullMethodName:         pki.RoleViewer,
	fleetv1.FleetService_DeleteNode_FullMethodName:      pki.RoleOperator,
	fleetv1.FleetService_CreateCommand_FullMethodName:   pki.RoleOperator,
	fleetv1.FleetService_ListCommands_FullMethodName:    pki.RoleViewer,
	fleetv1.FleetService_GetCommand_FullMethodName:      pki.RoleViewer,
	fleetv1.FleetService_CreateCommands_FullMethodName:  pki.RoleOperator,
	fleetv1.FleetService_GetCommandBatch_FullMethodName: pki.RoleViewer,
	fleetv1.FleetService_ListGpus_FullMethodName:        pki.RoleViewer,
	fleetv1.FleetService_GetGpuSummary_FullMethodName:   pki.RoleViewer,
	fleetv1.FleetService_ApplySiemConfig_FullMethodName: pki.RoleSIEMAdmin,
	fleetv1.FleetService_GetSiemStatus_FullMethodName:   pki.RoleViewer,
	fleetv1.FleetService_IssueOperator_FullMethodName:   pki.RoleAdmin,
	fleetv1.FleetService_ListOperators_FullMethodName:   pki.RoleAdmin,
	fleetv1.FleetService_RevokeOperator_FullMethodName:  pki.RoleAdmin,
	// Every operator renews its own certificate (same name, same role).
	fleetv1.FleetService_RenewOperator_FullMethodName: pki.RoleViewer,

	// Clusters carry Kubernetes credentials: admin.
	kubev1.ClusterService_AddCluster_FullMethodName:    pki.RoleAdmin,
	kubev1.ClusterService_ListClusters_FullMethodName:  pki.RoleViewer,
	kubev1.ClusterService_GetCluster_FullMethodName:    pki.RoleViewer,
	kubev1.ClusterService_RemoveCluster_FullMethodName: pki.RoleAdmin,
	kubev1.ClusterService_CordonNode_FullMethodName:    pki.RoleOperator,
	kubev1.ClusterService_UncordonNode_FullMethodName:  pki.RoleOperator,
	kubev1.ClusterService_DrainNode_FullMethodName:     pki.RoleOperator,
	kubev1.ClusterService_JoinNode_FullMethodName:      pki.RoleOperator,

	maintv1.MaintenanceService_StartCampaign_FullMethodName:  pki.RoleOperator,
	maintv1.MaintenanceService_ListCampaigns_FullMethodName:  pki.RoleViewer,
	maintv1.MaintenanceService_GetCampaign_FullMethodName:    pki.RoleViewer,
	maintv1.MaintenanceService_WatchCampaign_FullMethodName:  pki.RoleViewer,
	maintv1.MaintenanceService_PauseCampaign_FullMethodName:  pki.RoleOperator,
	maintv1.MaintenanceService_ResumeCampaign_FullMethodName: pki.RoleOperator,
	maintv1.MaintenanceService_AbortCampaign_FullMethodName:  pki.RoleOperator,

	artifactv1.ArtifactService_PushArtifact_FullMethodName:   pki.RoleOperator,
	artifactv1.ArtifactService_ListArtifacts_FullMethodName:  pki.RoleViewer,
	artifactv1.ArtifactService_GetArtifact_FullMethodName:    pki.RoleViewer,
	artifactv1.ArtifactService_RemoveArtifact_FullMethodName: pki.RoleOperator,

	machinev1.MachineService_ListProviders_FullMethodName:  pki.RoleViewer,
	machinev1.MachineService_CreateMachines_FullMethodName: pki.RoleOperator,
	machinev1.MachineService_ListMachines_FullMethodName:   pki.RoleViewer,
	machinev1.MachineService_GetMachine_FullMethodName:     pki.RoleViewer,
	machinev1.MachineService_DeleteMachine_FullMethodName:  pki.RoleOperator,
	machinev1.MachineService_PowerMachine_FullMethodName:   pki.RoleOperator,

	// A backup can carry the CA's key: admin only.
	backupv1.BackupService_CreateBackup_FullMethodName: pki.RoleAdmin,
}

// methodAccess is the kind of certificate a method needs; a method the
// table does not name is operator-only (and then refused to every role).
func methodAccess(fullMethod string) access {
	switch methodRoles[fullMethod] {
	case needPublic:
		return accessPublic
	case needNode:
		return accessNode
	}
	return accessOperator
}

// Identity is the verified caller of a method.
type Identity struct {
	Name string // node id or operator name
	Role string // operator role
	Cert *x509.Certificate
}

type identityKey struct{}

// IdentityFrom returns the caller's identity placed by the interceptors.
func IdentityFrom(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(Identity)
	return id, ok
}

func peerCert(ctx context.Context) *x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return nil
	}
	return ti.State.VerifiedChains[0][0]
}

// authorize checks the caller's certificate against the table (what the
// certificate says; Server.authorize also asks the store whether it is
// still current).
func authorize(ctx context.Context, fullMethod string) (context.Context, error) {
	need, known := methodRoles[fullMethod]
	if need == needPublic {
		return ctx, nil
	}
	cert := peerCert(ctx)
	if cert == nil {
		return nil, status.Error(codes.Unauthenticated, "this call needs a client certificate issued by the controller CA")
	}
	orgs := cert.Subject.Organization
	if need == needNode {
		if !slices.Contains(orgs, pki.OrgNode) {
			return nil, status.Errorf(codes.PermissionDenied, "only enrolled nodes may call %s", fullMethod)
		}
		return context.WithValue(ctx, identityKey{}, Identity{Name: cert.Subject.CommonName, Cert: cert}), nil
	}
	if !slices.Contains(orgs, pki.OrgOperator) {
		return nil, status.Error(codes.PermissionDenied, "this call needs an operator certificate")
	}
	role := ""
	if len(cert.Subject.OrganizationalUnit) > 0 {
		role = cert.Subject.OrganizationalUnit[0]
	}
	if !known {
		return nil, status.Errorf(codes.PermissionDenied, "%s is not in the controller's access table: refused to every role", fullMethod)
	}
	if !pki.RoleAllows(role, need) {
		return nil, status.Errorf(codes.PermissionDenied, "operator role %q may not call %s (it needs %s)", role, fullMethod, need)
	}
	return context.WithValue(ctx, identityKey{}, Identity{Name: cert.Subject.CommonName, Role: role, Cert: cert}), nil
}

// authorize is authorize plus the store's word on operators: a revoked
// operator's certificates are refused, and so is any certificate but the
// current one once an operator renewed (the previous one during a grace).
func (s *Server) authorize(ctx context.Context, fullMethod string) (context.Context, error) {
	ctx, err := authorize(ctx, fullMethod)
	if err != nil {
		return nil, err
	}
	id, ok := IdentityFrom(ctx)
	if !ok {
		return ctx, nil
	}
	if id.Role == "" {
		if err := s.nodeCertCurrent(ctx, id.Name, id.Cert, s.opts.Now()); err != nil {
			return nil, err
		}
		return ctx, nil
	}
	if err := s.operatorCurrent(ctx, id.Name, id.Cert, s.opts.Now()); err != nil {
		return nil, err
	}
	return ctx, nil
}

func (s *Server) operatorCurrent(ctx context.Context, name string, cert *x509.Certificate, now time.Time) error {
	o, err := s.store.GetOperator(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		// An operator the controller has no record of is one from before
		// operator records (a store older than schema 7, or init's
		// admin from an older init): its certificate is what it says.
		return nil
	}
	if err != nil {
		// A store that cannot answer cannot say the operator was not
		// revoked: refuse rather than let a revoked certificate through
		// while etcd has no quorum or the disk fails.
		return status.Errorf(codes.Unavailable, "cannot check operator %s against the store, try again: %v", name, err)
	}
	serial := cert.SerialNumber.Text(16)
	switch {
	case o.Revoked:
		return status.Errorf(codes.PermissionDenied, "operator %s was revoked at %s", name, o.RevokedAt.UTC().Format(time.RFC3339))
	case serial == o.Serial:
		return nil
	case serial == o.PrevSerial && now.Before(o.PrevUntil):
		return nil
	}
	return status.Errorf(codes.PermissionDenied, "this certificate of operator %s was replaced by a renewal; use the renewed one", name)
}

// nodeCertCurrent refuses a node certificate a renewal replaced, once its
// grace is over. A node the store does not know is left to the handler
// (Connect says it was deleted).
func (s *Server) nodeCertCurrent(ctx context.Context, nodeID string, cert *x509.Certificate, now time.Time) error {
	n, err := s.store.GetNode(ctx, nodeID)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return status.Errorf(codes.Unavailable, "cannot check node %s's certificate against the store, try again: %v", nodeID, err)
	}
	if n.CertSerial == "" {
		return nil
	}
	serial := cert.SerialNumber.Text(16)
	if serial == n.CertSerial || (serial == n.PrevCertSerial && now.Before(n.PrevCertUntil)) {
		return nil
	}
	return status.Errorf(codes.PermissionDenied, "this certificate of node %s was replaced by a renewal: use the current one (or enroll again)", nodeID)
}

// UnaryAuth and StreamAuth are the controller's interceptors.
func (s *Server) UnaryAuth(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := s.authorize(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// StreamAuth: see UnaryAuth.
func (s *Server) StreamAuth(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, err := s.authorize(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	return handler(srv, authStream{ServerStream: ss, ctx: ctx})
}

func unaryAuth(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := authorize(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

type authStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s authStream) Context() context.Context { return s.ctx }

func streamAuth(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, err := authorize(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	return handler(srv, authStream{ServerStream: ss, ctx: ctx})
}
