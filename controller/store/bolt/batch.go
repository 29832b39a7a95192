package bolt

import (
	"context"
	"encoding/json"
	"fmt"

	bbolt "go.etcd.io/bbolt"

	"github.com/bud-ecosystem/budfleet/controller/store"
)

// Fan-outs (since schema version 8):
//
//	command_batches/
//	  <batch id>             -> JSON store.CommandBatch
//	batch_commands/
//	  <batch id>/            (one bucket per batch)
//	    <command id>         -> the command's state ("pending", ...), kept
//	                            in step by UpdateCommand, so a batch is
//	                            counted without decoding its commands
var (
	bucketCommandBatches = []byte("command_batches")
	bucketBatchCommands  = []byte("batch_commands")
)

// migrateBatches is the migration 7 -> 8: the fan-out buckets.
func migrateBatches(tx *bbolt.Tx) error {
	for _, b := range [][]byte{bucketCommandBatches, bucketBatchCommands} {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return err
		}
	}
	return nil
}

// EnqueueCommands records the batch and queues every command in one
// transaction (one fsync for the whole fan-out): all or nothing.
func (s *Store) EnqueueCommands(ctx context.Context, b store.CommandBatch, cs []store.Command) error {
	return s.update(ctx, func(tx *bbolt.Tx) error {
		bb := tx.Bucket(bucketCommandBatches)
		if bb.Get([]byte(b.ID)) != nil {
			return fmt.Errorf("command batch %s: %w", b.ID, store.ErrAlreadyExists)
		}
		if err := putJSON(bb, []byte(b.ID), b); err != nil {
			return err
		}
		states, err := tx.Bucket(bucketBatchCommands).CreateBucket([]byte(b.ID))
		if err != nil {
			return err
		}
		nodes := tx.Bucket(bucketNodes)
		idx := tx.Bucket(bucketCommandIndex)
		cb := tx.Bucket(bucketCommands)
		for _, c := range cs {
			if c.BatchID != b.ID {
				return fmt.Errorf("command %s: batch id %q is not the batch's %q", c.ID, c.BatchID, b.ID)
			}
			if nodes.Get([]byte(c.NodeID)) == nil {
				return fmt.Errorf("node %s: %w", c.NodeID, store.ErrNotFound)
			}
			if idx.Get([]byte(c.ID)) != nil {
				return fmt.Errorf("command %s: %w", c.ID, store.ErrAlreadyExists)
			}
			q, err := cb.CreateBucketIfNotExists([]byte(c.NodeID))
			if err != nil {
				return err
			}
			seq, err := q.NextSequence()
			if err != nil {
				return err
			}
			if err := putJSON(q, u64(seq), c); err != nil {
				return err
			}
			if err := idx.Put([]byte(c.ID), indexValue(c.NodeID, u64(seq))); err != nil {
				return err
			}
			if err := states.Put([]byte(c.ID), []byte(c.State)); err != nil {
				return err
			}
		}
		return nil
	})
}

// GetCommandBatch returns the batch and counts its commands' states from
// the batch's own bucket.
func (s *Store) GetCommandBatch(ctx context.Context, id string) (store.CommandBatch, store.BatchCounts, error) {
	var b store.CommandBatch
	var n store.BatchCounts
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		if err := getJSON(tx.Bucket(bucketCommandBatches), []byte(id), &b); err != nil {
			return fmt.Errorf("command batch %s: %w", id, err)
		}
		states := tx.Bucket(bucketBatchCommands).Bucket([]byte(id))
		if states == nil {
			return nil
		}
		return states.ForEach(func(_, v []byte) error {
			n.Add(store.CommandState(v))
			return nil
		})
	})
	return b, n, err
}

// syncBatchState keeps the batch index in step with c's state; called in
// every transaction that writes a command of a batch.
func syncBatchState(tx *bbolt.Tx, c store.Command) error {
	if c.BatchID == "" {
		return nil
	}
	states := tx.Bucket(bucketBatchCommands).Bucket([]byte(c.BatchID))
	if states == nil {
		return nil
	}
	if string(states.Get([]byte(c.ID))) == string(c.State) {
		return nil
	}
	return states.Put([]byte(c.ID), []byte(c.State))
}

// dropBatchEntry removes a deleted node's command from its batch's count.
func dropBatchEntry(tx *bbolt.Tx, raw []byte) error {
	var c struct {
		ID      string `json:"id"`
		BatchID string `json:"batch_id"`
	}
	if err := json.Unmarshal(raw, &c); err != nil || c.BatchID == "" {
		return err
	}
	if states := tx.Bucket(bucketBatchCommands).Bucket([]byte(c.BatchID)); states != nil {
		return states.Delete([]byte(c.ID))
	}
	return nil
}
