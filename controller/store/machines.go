package store

import (
	"context"
	"time"
)

// MachineStore keeps the machines the controller asked provider plugins to
// make or enroll (controller/providers), each linked to the node its agent
// enrolled as.
type MachineStore interface {
	// CreateMachine stores a new machine; ErrAlreadyExists naming the id
	// when it is taken (the stored machine is kept).
	CreateMachine(ctx context.Context, m Machine) error
	// GetMachine returns the machine with id; ErrNotFound naming the id.
	GetMachine(ctx context.Context, id string) (Machine, error)
	// ListMachines returns every machine, oldest (CreatedAt) first, then
	// by id.
	ListMachines(ctx context.Context) ([]Machine, error)
	// UpdateMachine applies fn to the stored machine, saves and returns it.
	// ErrNotFound naming the id (fn is not called). fn must not change the
	// machine's ID; when it returns an error, UpdateMachine returns that
	// error and changes nothing.
	UpdateMachine(ctx context.Context, id string, fn func(*Machine) error) (Machine, error)
	// DeleteMachine removes the machine; ErrNotFound naming the id.
	DeleteMachine(ctx context.Context, id string) error
}

// MachineState is where a machine is in its life on the controller's side.
type MachineState string

// Machine states.
const (
	// MachineCreating: stored, the provider's CreateMachine not yet
	// answered. A machine left here by a controller restart may or may not
	// exist at the provider.
	MachineCreating MachineState = "creating"
	// MachineCreated: the provider made it; its agent has not enrolled.
	MachineCreated MachineState = "created"
	// MachineEnrolled: its agent enrolled with the machine's token; NodeID
	// is the node.
	MachineEnrolled MachineState = "enrolled"
	// MachineDeleting: the provider's DeleteMachine was asked and has not
	// answered, or failed (Error says why); delete again.
	MachineDeleting MachineState = "deleting"
)

// Machine is a machine a provider made or enrolled.
type Machine struct {
	// ID is the controller's id, which budctl names it by.
	ID string `json:"id"`
	// Provider is the name of the provider in the providers file.
	Provider string `json:"provider"`
	// ProviderID is the provider's own id; empty until it answered.
	ProviderID string `json:"provider_id,omitempty"`
	Name       string `json:"name"`
	// Spec is the provider-specific spec it was made with (JSON).
	Spec      []byte            `json:"spec,omitempty"`
	State     MachineState      `json:"state"`
	Error     string            `json:"error,omitempty"`
	Addresses []string          `json:"addresses,omitempty"`
	Power     string            `json:"power,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	// TokenID is the machine's single-use join token; the node that
	// enrolls with it is the machine's.
	TokenID   string    `json:"token_id"`
	NodeID    string    `json:"node_id,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	CreatedBy string    `json:"created_by,omitempty"`
}
