package store

import (
	"context"
	"time"
)

// Operator is an operator credential the controller issued: who, which
// role, and which certificate is current. The authorisation interceptor
// refuses a revoked operator's certificates and, once it has been renewed,
// any certificate but the current one (the previous one for a short grace).
type Operator struct {
	Name      string    `json:"name"`
	Role      string    `json:"role"`
	Serial    string    `json:"serial"` // hex, of the current certificate
	IssuedAt  time.Time `json:"issued_at"`
	ExpiresAt time.Time `json:"expires_at"`
	// PrevSerial is the certificate a renewal replaced; it is accepted
	// until PrevUntil.
	PrevSerial string    `json:"prev_serial,omitempty"`
	PrevUntil  time.Time `json:"prev_until,omitempty"`
	Revoked    bool      `json:"revoked,omitempty"`
	RevokedAt  time.Time `json:"revoked_at,omitempty"`
}

// OperatorStore holds operator credentials (since bolt schema version 7).
type OperatorStore interface {
	// PutOperator stores o under its name. When an operator of that name
	// exists and is not revoked it is ErrAlreadyExists and nothing changes.
	PutOperator(ctx context.Context, o Operator) error
	// GetOperator returns the operator named name; ErrNotFound naming it.
	GetOperator(ctx context.Context, name string) (Operator, error)
	// ListOperators returns every operator by name.
	ListOperators(ctx context.Context) ([]Operator, error)
	// UpdateOperator applies fn to the stored operator and saves it;
	// ErrNotFound naming it (fn is not called); an error from fn changes
	// nothing.
	UpdateOperator(ctx context.Context, name string, fn func(*Operator) error) (Operator, error)
}
