package controller

import (
	"context"
	"time"

	"github.com/bud-ecosystem/budfleet/controller/store"
)

// The controller's parts each need a slice of the store; Options.Store (a
// store.Store) satisfies all of them. A capability module takes only the
// one it uses.

// tokenStore holds join tokens and spends them: the operator's token calls
// (fleetapi.go) and enrollment (agentapi.go).
type tokenStore interface {
	CreateToken(ctx context.Context, t store.Token) error
	GetToken(ctx context.Context, id string) (store.Token, error)
	ListTokens(ctx context.Context) ([]store.Token, error)
	RevokeToken(ctx context.Context, id string, now time.Time) (store.Token, error)
	Enroll(ctx context.Context, tokenID string, check func(store.Token) error, node store.Node) (store.Token, error)
}

// nodeStore holds enrolled nodes: sessions and their reports (agentapi.go,
// sessions.go, gpus.go, siem.go) and the operator's node calls
// (fleetapi.go).
type nodeStore interface {
	GetNode(ctx context.Context, id string) (store.Node, error)
	ListNodes(ctx context.Context) ([]store.Node, error)
	UpdateNode(ctx context.Context, id string, fn func(*store.Node) error) (store.Node, error)
	DeleteNode(ctx context.Context, id string) error
}

// commandStore is the durable command queue: the operator queues and reads
// (fleetapi.go), sessions deliver and record results (agentapi.go).
type commandStore interface {
	EnqueueCommand(ctx context.Context, c store.Command) error
	PendingCommands(ctx context.Context, nodeID string) ([]store.Command, error)
	ListCommands(ctx context.Context, nodeID string) ([]store.Command, error)
	GetCommand(ctx context.Context, id string) (store.Command, error)
	UpdateCommand(ctx context.Context, id string, fn func(*store.Command) error) (store.Command, error)
}

// siemConfigStore holds fleet-managed forwarding configurations (siem.go).
type siemConfigStore interface {
	AddSIEMConfig(ctx context.Context, c store.SIEMConfig) (store.SIEMConfig, error)
	SIEMConfigFor(ctx context.Context, labels map[string]string) (store.SIEMConfig, bool, error)
}

// serverStore is every slice: what the Server itself holds.
type serverStore interface {
	tokenStore
	nodeStore
	commandStore
	siemConfigStore
	store.OperatorStore
	store.CommandBatchStore // fan-outs (fanout.go)
}

var _ serverStore = store.Store(nil)
