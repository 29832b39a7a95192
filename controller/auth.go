package controller

import (
	"context"
	"crypto/x509"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/bud-ecosystem/budfleet/pki"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	artifactv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/artifact/v1"
)

// Who may call a method. The TLS layer has already checked that any client
// certificate chains to the CA; this decides which kind of certificate each
// method needs.
type access int

const (
	accessPublic access = iota
	accessNode
	accessOperator
)

func methodAccess(fullMethod string) access {
	switch {
	case fullMethod == agentv1.AgentService_Enroll_FullMethodName,
		strings.HasPrefix(fullMethod, "/grpc.health.v1.Health/"):
		return accessPublic
	case fullMethod == agentv1.AgentService_Connect_FullMethodName,
		// Read only: a node fetches artifacts, never pushes or removes
		// them (ArtifactService is the operators').
		fullMethod == artifactv1.NodeArtifactService_Fetch_FullMethodName:
		return accessNode
	default:
		// The operator API, reflection and anything added later: closed
		// unless said otherwise.
		return accessOperator
	}
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

func authorize(ctx context.Context, fullMethod string) (context.Context, error) {
	need := methodAccess(fullMethod)
	if need == accessPublic {
		return ctx, nil
	}
	cert := peerCert(ctx)
	if cert == nil {
		return nil, status.Error(codes.Unauthenticated, "this call needs a client certificate issued by the controller CA")
	}
	orgs := cert.Subject.Organization
	switch need {
	case accessNode:
		if !slices.Contains(orgs, pki.OrgNode) {
			return nil, status.Errorf(codes.PermissionDenied, "only enrolled nodes may call %s", fullMethod)
		}
		return context.WithValue(ctx, identityKey{}, Identity{Name: cert.Subject.CommonName, Cert: cert}), nil
	default:
		if !slices.Contains(orgs, pki.OrgOperator) {
			return nil, status.Error(codes.PermissionDenied, "this call needs an operator certificate")
		}
		role := ""
		if len(cert.Subject.OrganizationalUnit) > 0 {
			role = cert.Subject.OrganizationalUnit[0]
		}
		if role != pki.RoleAdmin {
			return nil, status.Errorf(codes.PermissionDenied, "operator role %q may not call %s", role, fullMethod)
		}
		return context.WithValue(ctx, identityKey{}, Identity{Name: cert.Subject.CommonName, Role: role, Cert: cert}), nil
	}
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
