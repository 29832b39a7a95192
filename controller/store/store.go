// Package store is what the controller keeps: the domain types (join
// tokens, nodes, their command queues, SIEM configurations), the sentinel
// errors, and the Store interface a backend implements.
//
// Backends live below: store/bolt keeps everything in one embedded bbolt
// file (the default, one controller); an etcd backend for several
// controllers comes later. store/storetest is the conformance suite every
// backend passes: it, not a backend, says what a Store does.
//
// The json tags on the types name the fields of the bolt backend's records,
// so they must not change; another backend may encode differently.
package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	hostv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/host/v1"
)

// Sentinel errors; callers map them to API status codes. Backends wrap them
// with the id they concern ("node n1: not found").
var (
	ErrNotFound      = errors.New("not found")
	ErrTokenInvalid  = errors.New("join token is not valid")
	ErrAlreadyExists = errors.New("already exists")
	// ErrUnavailable: the backend cannot serve the call now (etcd without
	// a quorum); nothing was changed, and the same call may succeed later.
	ErrUnavailable = errors.New("the controller's store is unavailable; nothing was changed")
	// ErrPartialBatch: EnqueueCommands stored only some of a batch's
	// commands (etcd, which splits a batch into transactions); the error
	// says how many. Those are queued and will be delivered.
	ErrPartialBatch = errors.New("only part of the batch was queued")
)

// DeliveryMark is Count sends of command ID to its node, the last at At.
type DeliveryMark struct {
	ID    string
	At    time.Time
	Count uint32
}

// DeliveryMarker is a Store that records many commands' deliveries in one
// write: a fan-out's 10,000 marks are then one transaction rather than
// 10,000 updates. A mark for a command that is gone or already has a
// result is skipped. Optional: the controller falls back to UpdateCommand.
type DeliveryMarker interface {
	MarkDelivered(ctx context.Context, marks []DeliveryMark) error
}

// NodeIDLister is a Store that lists its nodes' ids without decoding
// their records: a fan-out to every node needs only the ids, and decoding
// 10,000 records, inventories and all, was a third of its time. Optional:
// the controller falls back to ListNodes.
type NodeIDLister interface {
	// NodeIDs returns every node's id, in no particular order.
	NodeIDs(ctx context.Context) ([]string, error)
}

// Store is the controller's persistent state.
//
// Every method takes the caller's context first: called with a context
// that is done, it returns an error wrapping ctx.Err() and changes nothing.
// Values passed in and returned are the
// caller's: a backend keeps no reference to them, and changing a returned
// value changes nothing stored.
//
// The update funcs (Enroll's check, UpdateNode's and UpdateCommand's fn)
// run inside the backend's transaction and may run more than once (a
// backend with optimistic concurrency retries on a conflict), so they must
// have no effect beyond their argument. When one returns an error the
// method returns that error (errors.Is-able) and changes nothing.
type Store interface {
	// CreateToken stores a new token; ErrAlreadyExists when its id is
	// taken (the stored token is kept).
	CreateToken(ctx context.Context, t Token) error
	// GetToken returns the token with id; ErrNotFound naming the id.
	GetToken(ctx context.Context, id string) (Token, error)
	// ListTokens returns every token, oldest (CreatedAt) first, then by id.
	ListTokens(ctx context.Context) ([]Token, error)
	// RevokeToken marks the token revoked at now and returns it; revoking
	// twice keeps the first time. ErrNotFound naming the id.
	RevokeToken(ctx context.Context, id string, now time.Time) (Token, error)
	// Enroll atomically checks the token tokenID with check, spends one use
	// of it and stores node, with the token's labels when it has any. An
	// unknown token is ErrTokenInvalid worded like a wrong secret (the id
	// is not named, so ids cannot be probed), and check is not called; a
	// node id that exists is ErrAlreadyExists. On any error nothing changes
	// and no use is spent. It returns the token after the use.
	Enroll(ctx context.Context, tokenID string, check func(Token) error, node Node) (Token, error)

	// GetNode returns the node with id; ErrNotFound naming the id.
	GetNode(ctx context.Context, id string) (Node, error)
	// ListNodes returns every node, by hostname then id (byte order).
	ListNodes(ctx context.Context) ([]Node, error)
	// UpdateNode applies fn to the stored node, saves and returns it.
	// ErrNotFound naming the id (fn is not called). fn must not change the
	// node's ID.
	UpdateNode(ctx context.Context, id string, fn func(*Node) error) (Node, error)
	// DeleteNode removes the node and its whole command queue (the
	// commands' ids may then be used again); ErrNotFound naming the id.
	DeleteNode(ctx context.Context, id string) error

	// EnqueueCommand appends c to the queue of node c.NodeID. ErrNotFound
	// naming the node when it does not exist; ErrAlreadyExists when the
	// command id is taken, on any node.
	EnqueueCommand(ctx context.Context, c Command) error
	// PendingCommands returns the node's commands without a result
	// (State.Done is false: pending and delivered ones), in queue order:
	// what a (re)connecting node is to be sent. None for an unknown node.
	PendingCommands(ctx context.Context, nodeID string) ([]Command, error)
	// ListCommands returns the commands of one node in queue order, or,
	// when nodeID is empty, of every node: by node id, each node's in queue
	// order. None for an unknown node.
	ListCommands(ctx context.Context, nodeID string) ([]Command, error)
	// GetCommand returns the command with id; ErrNotFound naming the id.
	GetCommand(ctx context.Context, id string) (Command, error)
	// UpdateCommand applies fn to the stored command, saves and returns it;
	// the command keeps its place in the queue. ErrNotFound naming the id
	// (fn is not called). fn must not change the command's ID or NodeID.
	UpdateCommand(ctx context.Context, id string, fn func(*Command) error) (Command, error)

	// AddSIEMConfig stores c under the next version and returns it with
	// that version: versions start above 0 and only increase (c.Version is
	// ignored).
	AddSIEMConfig(ctx context.Context, c SIEMConfig) (SIEMConfig, error)
	// SIEMConfigFor returns the newest configuration whose selector matches
	// labels (see SIEMConfig.Selects); ok is false when none does.
	SIEMConfigFor(ctx context.Context, labels map[string]string) (c SIEMConfig, ok bool, err error)

	CommandBatchStore // fan-outs of one command to many nodes (batch.go)
	ClusterStore      // Kubernetes clusters and their credentials (clusters.go)
	CampaignStore     // maintenance campaigns (campaign.go)
	ArtifactStore     // the artifact store's metadata (artifact.go)
	MachineStore      // machines of provider plugins (machines.go)
	OperatorStore     // operator credentials and their roles (operators.go)

	// Close releases the backend. No method may be called after it.
	Close() error
}

// Token is a stored join token. Only the secret's hash is kept.
type Token struct {
	ID          string            `json:"id"`
	SecretHash  string            `json:"secret_hash"`
	CreatedAt   time.Time         `json:"created_at"`
	ExpiresAt   time.Time         `json:"expires_at"`
	MaxUses     uint32            `json:"max_uses,omitempty"`
	Uses        uint32            `json:"uses"`
	Labels      map[string]string `json:"labels,omitempty"`
	Description string            `json:"description,omitempty"`
	RevokedAt   time.Time         `json:"revoked_at,omitzero"`
}

// Revoked reports whether the token was revoked.
func (t Token) Revoked() bool { return !t.RevokedAt.IsZero() }

// Usable says why t cannot enroll a node at now, or nil.
func (t Token) Usable(now time.Time) error {
	switch {
	case t.Revoked():
		return fmt.Errorf("%w: token %s was revoked", ErrTokenInvalid, t.ID)
	case !now.Before(t.ExpiresAt):
		return fmt.Errorf("%w: token %s expired at %s", ErrTokenInvalid, t.ID, t.ExpiresAt.UTC().Format(time.RFC3339))
	case t.MaxUses > 0 && t.Uses >= t.MaxUses:
		return fmt.Errorf("%w: token %s is used up (%d of %d uses)", ErrTokenInvalid, t.ID, t.Uses, t.MaxUses)
	}
	return nil
}

// Node is an enrolled node.
type Node struct {
	ID            string            `json:"id"`
	Hostname      string            `json:"hostname"`
	MachineID     string            `json:"machine_id,omitempty"`
	Labels        map[string]string `json:"labels,omitempty"`
	TokenID       string            `json:"token_id"`
	EnrolledAt    time.Time         `json:"enrolled_at"`
	CertSerial    string            `json:"cert_serial"`
	CertExpiresAt time.Time         `json:"cert_expires_at"`
	LastHeartbeat time.Time         `json:"last_heartbeat,omitzero"`
	// Inventory is the node's last host inventory report. It is a protobuf
	// message: backends encode it themselves (bolt as protobuf JSON).
	Inventory         *hostv1.Inventory `json:"-"`
	InventoryUpdateAt time.Time         `json:"inventory_updated_at,omitzero"`
	// GPUs is the node's GPU inventory and health as the protobuf encoding
	// of budfleet.fleet.v1.NodeGpus: a versioned wire schema that new
	// fields extend without a store migration.
	GPUs []byte `json:"gpus,omitempty"`
	// BootID is the node's kernel boot id as last reported, at connect or
	// in an inventory: a new one means the node rebooted.
	BootID string `json:"boot_id,omitempty"`
	// HostnameConflict says why the node's last hostname change was
	// refused (another node has that name); empty when none was.
	HostnameConflict string `json:"hostname_conflict,omitempty"`
	// PrevCertSerial is the certificate the last renewal replaced; it is
	// accepted until PrevCertUntil, then only CertSerial is.
	PrevCertSerial string    `json:"prev_cert_serial,omitempty"`
	PrevCertUntil  time.Time `json:"prev_cert_until,omitzero"`
}

// CommandState is where a command is in its life.
type CommandState string

// Command states.
const (
	CommandPending   CommandState = "pending"
	CommandDelivered CommandState = "delivered"
	CommandSucceeded CommandState = "succeeded"
	CommandFailed    CommandState = "failed"
)

// Done reports whether the command has a final result.
func (s CommandState) Done() bool { return s == CommandSucceeded || s == CommandFailed }

// Command is a unit of work queued for one node.
type Command struct {
	ID          string            `json:"id"`
	NodeID      string            `json:"node_id"`
	Kind        string            `json:"kind"`
	Params      map[string]string `json:"params,omitempty"`
	State       CommandState      `json:"state"`
	CreatedAt   time.Time         `json:"created_at"`
	DeliveredAt time.Time         `json:"delivered_at,omitzero"`
	FinishedAt  time.Time         `json:"finished_at,omitzero"`
	Deliveries  uint32            `json:"deliveries"`
	Message     string            `json:"message,omitempty"`
	Output      map[string]string `json:"output,omitempty"`
	// OutputTail is what the command streamed while it ran
	// (maintenance.task); nil for commands that stream nothing.
	OutputTail *OutputTail `json:"output_tail,omitempty"`
	// BatchID is the fan-out (EnqueueCommands) the command belongs to; ""
	// for one queued alone.
	BatchID string `json:"batch_id,omitempty"`
}

// OutputTail is the end of a running command's stdout and stderr, as the
// agent streamed them: raw bytes, not necessarily UTF-8.
type OutputTail struct {
	Stdout []byte `json:"stdout,omitempty"`
	Stderr []byte `json:"stderr,omitempty"`
	// StdoutBytes and StderrBytes count what the command wrote to each
	// stream so far, including what the tail no longer holds.
	StdoutBytes uint64    `json:"stdout_bytes,omitempty"`
	StderrBytes uint64    `json:"stderr_bytes,omitempty"`
	UpdatedAt   time.Time `json:"updated_at,omitzero"`
}

// SIEMConfig is an audit-forwarding configuration applied by an operator.
type SIEMConfig struct {
	Version   uint64            `json:"version"`
	YAML      []byte            `json:"yaml"`
	Selector  map[string]string `json:"selector,omitempty"`
	CreatedAt time.Time         `json:"created_at"`
	CreatedBy string            `json:"created_by,omitempty"`
}

// Selects reports whether the configuration applies to a node with labels:
// every selector label is among them (an empty selector selects all).
func (c SIEMConfig) Selects(labels map[string]string) bool {
	for k, v := range c.Selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}
