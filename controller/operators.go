package controller

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"regexp"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/pki"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

// Operator credentials.
const (
	DefaultOperatorTTL = 90 * 24 * time.Hour
	MaxOperatorTTL     = 365 * 24 * time.Hour
	// OperatorRenewGrace is how long an operator's previous certificate
	// still works after a renewal (budctl swaps its config in between).
	OperatorRenewGrace = 5 * time.Minute
)

var operatorNameRe = regexp.MustCompile(`^[a-z0-9]([-a-z0-9_.@]{0,62}[a-z0-9])?$`)

func operatorToProto(o store.Operator) *fleetv1.Operator {
	p := &fleetv1.Operator{Name: o.Name, Role: o.Role, Serial: o.Serial, Revoked: o.Revoked,
		IssuedAt: timestamppb.New(o.IssuedAt), ExpiresAt: timestamppb.New(o.ExpiresAt)}
	if o.Revoked {
		p.RevokedAt = timestamppb.New(o.RevokedAt)
	}
	return p
}

// RecordOperator stores an operator record for a certificate issued outside
// the API (init's admin).
func RecordOperator(ctx context.Context, st store.OperatorStore, cert *x509.Certificate, now time.Time) error {
	role := ""
	if len(cert.Subject.OrganizationalUnit) > 0 {
		role = cert.Subject.OrganizationalUnit[0]
	}
	return st.PutOperator(ctx, store.Operator{Name: cert.Subject.CommonName, Role: role,
		Serial: cert.SerialNumber.Text(16), IssuedAt: now, ExpiresAt: cert.NotAfter})
}

// IssueOperator signs an operator certificate for the CSR's key.
func (a *FleetAPI) IssueOperator(ctx context.Context, req *fleetv1.IssueOperatorRequest) (*fleetv1.IssueOperatorResponse, error) {
	s := a.s
	if !operatorNameRe.MatchString(req.GetName()) {
		return nil, status.Errorf(codes.InvalidArgument, "operator name %q: lower-case letters, digits, '-', '_', '.', '@', at most 64", truncate(req.GetName(), 64))
	}
	if !pki.ValidRole(req.GetRole()) {
		return nil, status.Errorf(codes.InvalidArgument, "role %q: one of %v", truncate(req.GetRole(), 32), pki.Roles)
	}
	ttl := DefaultOperatorTTL
	if req.GetTtl() != nil {
		ttl = req.GetTtl().AsDuration()
	}
	if ttl < time.Minute || ttl > MaxOperatorTTL {
		return nil, status.Errorf(codes.InvalidArgument, "ttl must be between 1m and %s, got %s", MaxOperatorTTL, ttl)
	}
	csr, err := pki.ParseCSR(req.GetCsr())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	now := s.opts.Now()
	cert, err := s.ca.IssueClient(csr.PublicKey, pki.OperatorSubject(req.GetName(), req.GetRole()), now, ttl)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	o := store.Operator{Name: req.GetName(), Role: req.GetRole(), Serial: cert.SerialNumber.Text(16), IssuedAt: now, ExpiresAt: cert.NotAfter}
	if err := s.store.PutOperator(ctx, o); err != nil {
		if errors.Is(err, store.ErrAlreadyExists) {
			return nil, status.Errorf(codes.AlreadyExists, "operator %s exists: revoke it first, or pick another name", o.Name)
		}
		return nil, storeErr(err)
	}
	a.audit(ctx, "operator.issue", "name", o.Name, "role", o.Role, "serial", o.Serial, "expires", o.ExpiresAt.UTC().Format(time.RFC3339))
	return &fleetv1.IssueOperatorResponse{Operator: operatorToProto(o), Certificate: string(pki.EncodeCert(cert)), Ca: string(pki.EncodeCert(s.ca.Cert))}, nil
}

// ListOperators lists the operators the controller issued.
func (a *FleetAPI) ListOperators(ctx context.Context, req *fleetv1.ListOperatorsRequest) (*fleetv1.ListOperatorsResponse, error) {
	os, err := a.s.store.ListOperators(ctx)
	if err != nil {
		return nil, storeErr(err)
	}
	ops, next, err := page(os, func(o store.Operator) string { return o.Name }, operatorToProto, req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	return &fleetv1.ListOperatorsResponse{Operators: ops, NextPageToken: next}, nil
}

// RevokeOperator refuses the operator's certificates from the next call on.
func (a *FleetAPI) RevokeOperator(ctx context.Context, req *fleetv1.RevokeOperatorRequest) (*fleetv1.RevokeOperatorResponse, error) {
	now := a.s.opts.Now()
	o, err := a.s.store.UpdateOperator(ctx, req.GetName(), func(o *store.Operator) error {
		if !o.Revoked {
			o.Revoked, o.RevokedAt = true, now
		}
		return nil
	})
	if errors.Is(err, store.ErrNotFound) {
		// A certificate from before operator records: revoking its name
		// still has to hold.
		o = store.Operator{Name: req.GetName(), Revoked: true, RevokedAt: now}
		err = a.s.store.PutOperator(ctx, o)
	}
	if err != nil {
		return nil, storeErr(err)
	}
	a.audit(ctx, "operator.revoke", "name", o.Name, "serial", o.Serial)
	return &fleetv1.RevokeOperatorResponse{Operator: operatorToProto(o)}, nil
}

// RenewOperator renews the caller's own certificate: same name, same role,
// a fresh lifetime as long as the old one's. The key stays unless
// rotate_key is set; the old certificate works for OperatorRenewGrace.
func (a *FleetAPI) RenewOperator(ctx context.Context, req *fleetv1.RenewOperatorRequest) (*fleetv1.RenewOperatorResponse, error) {
	s := a.s
	id, ok := IdentityFrom(ctx)
	if !ok || id.Cert == nil || id.Role == "" {
		return nil, status.Error(codes.PermissionDenied, "only an operator certificate can be renewed")
	}
	csr, err := pki.ParseCSR(req.GetCsr())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if !req.GetRotateKey() {
		old, ok1 := id.Cert.PublicKey.(*ecdsa.PublicKey)
		nk, ok2 := csr.PublicKey.(*ecdsa.PublicKey)
		if !ok1 || !ok2 || !old.Equal(nk) {
			return nil, status.Error(codes.InvalidArgument, "the CSR carries another key than the calling certificate: set rotate_key (budctl operators renew --rotate-key) to change it")
		}
	}
	now := s.opts.Now()
	ttl := id.Cert.NotAfter.Sub(id.Cert.NotBefore)
	if ttl > MaxOperatorTTL || ttl <= 0 {
		ttl = DefaultOperatorTTL
	}
	cert, err := s.ca.IssueClient(csr.PublicKey, pki.OperatorSubject(id.Name, id.Role), now, ttl)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	oldSerial := id.Cert.SerialNumber.Text(16)
	o, err := s.store.UpdateOperator(ctx, id.Name, func(o *store.Operator) error {
		if o.Revoked {
			return status.Errorf(codes.PermissionDenied, "operator %s is revoked", id.Name)
		}
		o.PrevSerial, o.PrevUntil = oldSerial, now.Add(OperatorRenewGrace)
		o.Serial, o.IssuedAt, o.ExpiresAt, o.Role = cert.SerialNumber.Text(16), now, cert.NotAfter, id.Role
		return nil
	})
	if errors.Is(err, store.ErrNotFound) {
		o = store.Operator{Name: id.Name, Role: id.Role, Serial: cert.SerialNumber.Text(16), IssuedAt: now, ExpiresAt: cert.NotAfter,
			PrevSerial: oldSerial, PrevUntil: now.Add(OperatorRenewGrace)}
		err = s.store.PutOperator(ctx, o)
	}
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return nil, err
		}
		return nil, storeErr(err)
	}
	a.audit(ctx, "operator.renew", "name", o.Name, "role", o.Role, "serial", o.Serial, "previous_serial", oldSerial, "rotate_key", req.GetRotateKey())
	return &fleetv1.RenewOperatorResponse{Operator: operatorToProto(o), Certificate: string(pki.EncodeCert(cert))}, nil
}
