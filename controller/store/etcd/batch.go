package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/bud-ecosystem/budfleet/controller/store"
)

func (s *Store) batchKey(id string) string { return s.p + "command_batches/" + id }
func (s *Store) batchStatePrefix(batch string) string {
	return s.p + "batch_commands/" + batch + "/"
}

// batchChunk is how many commands go in one transaction. etcd refuses a
// transaction of more than --max-txn-ops (default 128) operations in its
// comparisons or in its writes; each command is three reads compared
// (node, sequence, index) and four writes (sequence, index, command, its
// batch state), so 25 stays inside the default with room for the batch
// record.
const batchChunk = 25

// getMany reads keys in one round trip (a read-only transaction) into t,
// as get would one by one. len(keys) must stay within etcd's --max-txn-ops.
func (t *tx) getMany(keys []string) error {
	var ops []clientv3.Op
	var want []string
	for _, k := range keys {
		if _, seen := t.vals[k]; !seen {
			ops = append(ops, clientv3.OpGet(k))
			want = append(want, k)
		}
	}
	if len(ops) == 0 {
		return nil
	}
	rctx, cancel := context.WithTimeout(t.ctx, t.s.timeout)
	defer cancel()
	resp, err := t.s.cli.Txn(rctx).Then(ops...).Commit()
	if err != nil {
		return t.s.wrapErr(t.ctx, err)
	}
	for i, r := range resp.Responses {
		var v []byte
		var rev int64
		if kvs := r.GetResponseRange().GetKvs(); len(kvs) > 0 {
			v, rev = kvs[0].Value, kvs[0].ModRevision
		}
		t.reads[want[i]], t.vals[want[i]] = rev, v
	}
	return nil
}

// EnqueueCommands records the batch and queues its commands in
// transactions of batchChunk commands, the batch record in the first.
// Every node is checked first, so an unknown node changes nothing. A
// later transaction that fails (etcd lost its quorum, a node deleted
// meanwhile) leaves the earlier chunks queued: the error wraps
// store.ErrPartialBatch and says how many; those commands are real, are
// delivered, and count in GetCommandBatch.
func (s *Store) EnqueueCommands(ctx context.Context, b store.CommandBatch, cs []store.Command) error {
	for i := 0; i < len(cs); i += 100 {
		part := cs[i:min(i+100, len(cs))]
		keys := make([]string, len(part))
		for j, c := range part {
			if c.BatchID != b.ID {
				return fmt.Errorf("command %s: batch id %q is not the batch's %q", c.ID, c.BatchID, b.ID)
			}
			keys[j] = s.nodeKey(c.NodeID)
		}
		t := &tx{s: s, ctx: ctx, reads: map[string]int64{}, vals: map[string][]byte{}}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("controller store: %w", err)
		}
		if err := t.getMany(keys); err != nil {
			return err
		}
		for _, c := range part {
			if t.vals[s.nodeKey(c.NodeID)] == nil {
				return fmt.Errorf("node %s: %w", c.NodeID, store.ErrNotFound)
			}
		}
	}
	done := 0
	for first := true; first || done < len(cs); first = false {
		chunk := cs[done:min(done+batchChunk, len(cs))]
		err := s.update(ctx, func(t *tx) error {
			var keys []string
			if first {
				keys = append(keys, s.batchKey(b.ID))
			}
			for _, c := range chunk {
				keys = append(keys, s.nodeKey(c.NodeID), s.cmdSeqKey(c.NodeID), s.indexKey(c.ID))
			}
			if err := t.getMany(keys); err != nil {
				return err
			}
			if first {
				if t.vals[s.batchKey(b.ID)] != nil {
					return fmt.Errorf("command batch %s: %w", b.ID, store.ErrAlreadyExists)
				}
				if err := t.putJSON(s.batchKey(b.ID), b); err != nil {
					return err
				}
			}
			seqs := map[string]uint64{}
			for _, c := range chunk {
				if t.vals[s.nodeKey(c.NodeID)] == nil {
					return fmt.Errorf("node %s: %w", c.NodeID, store.ErrNotFound)
				}
				if _, _, err := s.locate(t, c.ID); err == nil {
					return fmt.Errorf("command %s: %w", c.ID, store.ErrAlreadyExists)
				} else if !errors.Is(err, store.ErrNotFound) {
					return err
				}
				seq, seen := seqs[c.NodeID]
				if !seen {
					if raw := t.vals[s.cmdSeqKey(c.NodeID)]; raw != nil {
						var err error
						if seq, err = strconv.ParseUint(string(raw), 10, 64); err != nil {
							return fmt.Errorf("node %s: command sequence %q: %w", c.NodeID, raw, err)
						}
					}
				}
				seq++
				seqs[c.NodeID] = seq
				loc := c.NodeID + "\x00" + seqKey(seq)
				t.put(s.indexKey(c.ID), []byte(loc))
				t.put(s.batchStatePrefix(b.ID)+c.ID, []byte(c.State))
				if err := t.putJSON(s.p+"commands/"+loc, c); err != nil {
					return err
				}
			}
			for node, seq := range seqs {
				t.put(s.cmdSeqKey(node), []byte(strconv.FormatUint(seq, 10)))
			}
			return nil
		})
		if err != nil {
			if done > 0 {
				return fmt.Errorf("command batch %s: %w: %d of %d commands are queued: %w", b.ID, store.ErrPartialBatch, done, len(cs), err)
			}
			return err
		}
		done += len(chunk)
	}
	return nil
}

// ListBatchCommands reads the batch's command ids from its state keys,
// their locations from the index and then the commands, each step in
// read-only transactions of listChunk keys; sorted by location, the
// order of ListCommands' prefix scan.
func (s *Store) ListBatchCommands(ctx context.Context, id string) ([]store.Command, error) {
	var b store.CommandBatch
	if err := getJSON(ctx, s, s.batchKey(id), &b); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, fmt.Errorf("command batch %s: %w", id, store.ErrNotFound)
		}
		return nil, err
	}
	prefix := s.batchStatePrefix(id)
	var ids []string
	if err := s.list(ctx, prefix, func(k string, _ []byte) error {
		ids = append(ids, strings.TrimPrefix(k, prefix))
		return nil
	}); err != nil {
		return nil, err
	}
	t := &tx{s: s, ctx: ctx, reads: map[string]int64{}, vals: map[string][]byte{}}
	read := func(keys []string) error {
		for i := 0; i < len(keys); i += listChunk {
			if err := t.getMany(keys[i:min(i+listChunk, len(keys))]); err != nil {
				return err
			}
		}
		return nil
	}
	keys := make([]string, len(ids))
	for i, cid := range ids {
		keys[i] = s.indexKey(cid)
	}
	if err := read(keys); err != nil {
		return nil, err
	}
	keys = keys[:0]
	for _, cid := range ids {
		if loc := t.vals[s.indexKey(cid)]; loc != nil {
			keys = append(keys, s.p+"commands/"+string(loc))
		}
	}
	slices.Sort(keys)
	if err := read(keys); err != nil {
		return nil, err
	}
	out := make([]store.Command, 0, len(keys))
	for _, k := range keys {
		raw := t.vals[k]
		if raw == nil {
			continue
		}
		var c store.Command
		if err := json.Unmarshal(raw, &c); err != nil {
			return nil, err
		}
		if c.BatchID == id {
			out = append(out, c)
		}
	}
	return out, nil
}

// listChunk is how many keys a listing reads in one transaction, within
// etcd's default --max-txn-ops of 128.
const listChunk = 100

// GetCommandBatch returns the batch and counts its commands from the
// batch's own keys.
func (s *Store) GetCommandBatch(ctx context.Context, id string) (store.CommandBatch, store.BatchCounts, error) {
	var b store.CommandBatch
	var n store.BatchCounts
	if err := getJSON(ctx, s, s.batchKey(id), &b); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return b, n, fmt.Errorf("command batch %s: %w", id, store.ErrNotFound)
		}
		return b, n, err
	}
	err := s.list(ctx, s.batchStatePrefix(id), func(_ string, v []byte) error {
		n.Add(store.CommandState(v))
		return nil
	})
	return b, n, err
}
