package bolt

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

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
		locs := make([][]byte, len(cs))
		for i, c := range cs {
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
			locs[i] = indexValue(c.NodeID, u64(seq))
		}
		// The index and the batch's states in key order: bbolt splits a
		// node only at commit, so random ids (UUIDs) went into one growing
		// node each, every insert moving half of it; 10,000 of them were
		// most of a fan-out's store write.
		order := make([]int, len(cs))
		for i := range order {
			order[i] = i
		}
		slices.SortFunc(order, func(a, b int) int { return strings.Compare(cs[a].ID, cs[b].ID) })
		for k, i := range order {
			c := cs[i]
			if k > 0 && cs[order[k-1]].ID == c.ID {
				return fmt.Errorf("command %s: named twice in the batch: %w", c.ID, store.ErrAlreadyExists)
			}
			if err := idx.Put([]byte(c.ID), locs[i]); err != nil {
				return err
			}
			if err := states.Put([]byte(c.ID), []byte(c.State)); err != nil {
				return err
			}
		}
		return nil
	})
}

// ListBatchCommands returns the batch's commands from its own bucket and
// the command index, sorted by location (node id, then queue sequence):
// the order ListCommands walks the node buckets in.
func (s *Store) ListBatchCommands(ctx context.Context, id string) ([]store.Command, error) {
	var out []store.Command
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		if tx.Bucket(bucketCommandBatches).Get([]byte(id)) == nil {
			return fmt.Errorf("command batch %s: %w", id, store.ErrNotFound)
		}
		states := tx.Bucket(bucketBatchCommands).Bucket([]byte(id))
		if states == nil {
			return nil
		}
		idx := tx.Bucket(bucketCommandIndex)
		var locs [][]byte
		if err := states.ForEach(func(k, _ []byte) error {
			if v := idx.Get(k); v != nil {
				locs = append(locs, v)
			}
			return nil
		}); err != nil {
			return err
		}
		slices.SortFunc(locs, bytes.Compare)
		cb := tx.Bucket(bucketCommands)
		var q *bbolt.Bucket
		cur := ""
		out = make([]store.Command, 0, len(locs))
		for _, loc := range locs {
			nodeID, key, err := splitIndex(loc)
			if err != nil {
				return err
			}
			if q == nil || nodeID != cur {
				q, cur = cb.Bucket([]byte(nodeID)), nodeID
			}
			if q == nil {
				continue
			}
			v := q.Get(key)
			if v == nil {
				continue
			}
			var c store.Command
			if err := json.Unmarshal(v, &c); err != nil {
				return err
			}
			if c.BatchID == id {
				out = append(out, c)
			}
		}
		return nil
	})
	return out, err
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
