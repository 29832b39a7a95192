package store

import (
	"context"
	"time"
)

// CommandBatchStore keeps fan-outs: one command kind queued for many nodes
// at once (CreateCommands).
type CommandBatchStore interface {
	// EnqueueCommands records batch b and appends each of cs to its node's
	// queue (each c.BatchID must be b.ID). ErrNotFound naming the node
	// when one does not exist; ErrAlreadyExists when b.ID or a command id
	// is taken. On bolt it is one transaction: all or nothing. A backend
	// that must split it (etcd bounds the operations of a transaction)
	// says so in an error wrapping ErrPartialBatch when only a part was
	// stored: those commands stay queued and count in the batch.
	EnqueueCommands(ctx context.Context, b CommandBatch, cs []Command) error
	// GetCommandBatch returns the batch with id and its commands counted
	// by state, from an index kept by batch (no scan of other commands);
	// ErrNotFound naming the id. A deleted node's commands no longer
	// count.
	GetCommandBatch(ctx context.Context, id string) (CommandBatch, BatchCounts, error)
	// ListBatchCommands returns the commands of batch id in ListCommands'
	// order (by node, then queue order), read through the batch's index:
	// listing a 10,000-node fan-out reads its 10,000 commands, not every
	// command every node ever had. ErrNotFound naming the id. A deleted
	// node's commands are gone from it.
	ListBatchCommands(ctx context.Context, id string) ([]Command, error)
}

// CommandBatch is a fan-out as the operator asked for it.
type CommandBatch struct {
	ID     string            `json:"id"`
	Kind   string            `json:"kind"`
	Params map[string]string `json:"params,omitempty"`
	// Selector says how the nodes were chosen, as the operator wrote it:
	// "all", "selector: <label selector>" or "nodes: <n> named".
	Selector  string    `json:"selector"`
	CreatedAt time.Time `json:"created_at"`
	CreatedBy string    `json:"created_by,omitempty"`
}

// BatchCounts counts a batch's commands by state.
type BatchCounts struct {
	Total, Pending, Delivered, Succeeded, Failed uint32
}

// Add counts one command in state st.
func (c *BatchCounts) Add(st CommandState) {
	c.Total++
	switch st {
	case CommandPending:
		c.Pending++
	case CommandDelivered:
		c.Delivered++
	case CommandSucceeded:
		c.Succeeded++
	case CommandFailed:
		c.Failed++
	}
}
