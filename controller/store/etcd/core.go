package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/bud-ecosystem/budfleet/controller/store"
)

func (s *Store) tokenKey(id string) string { return s.p + "tokens/" + id }
func (s *Store) nodeKey(id string) string  { return s.p + "nodes/" + id }
func (s *Store) queuePrefix(node string) string {
	return s.p + "commands/" + node + "\x00"
}
func (s *Store) cmdSeqKey(node string) string { return s.p + "cmdseq/" + node }
func (s *Store) indexKey(id string) string    { return s.p + "command_index/" + id }

// CreateToken stores a new token.
func (s *Store) CreateToken(ctx context.Context, tok store.Token) error {
	return s.update(ctx, func(t *tx) error {
		if ok, err := t.exists(s.tokenKey(tok.ID)); err != nil {
			return err
		} else if ok {
			return fmt.Errorf("token %s: %w", tok.ID, store.ErrAlreadyExists)
		}
		return t.putJSON(s.tokenKey(tok.ID), tok)
	})
}

// GetToken returns the token with id.
func (s *Store) GetToken(ctx context.Context, id string) (store.Token, error) {
	var tok store.Token
	err := getJSON(ctx, s, s.tokenKey(id), &tok)
	if errors.Is(err, store.ErrNotFound) {
		return tok, fmt.Errorf("token %s: %w", id, store.ErrNotFound)
	}
	return tok, err
}

// ListTokens returns every token, oldest first.
func (s *Store) ListTokens(ctx context.Context) ([]store.Token, error) {
	var out []store.Token
	err := s.list(ctx, s.p+"tokens/", func(_ string, v []byte) error {
		var tok store.Token
		if err := json.Unmarshal(v, &tok); err != nil {
			return err
		}
		out = append(out, tok)
		return nil
	})
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out, err
}

// RevokeToken marks a token revoked; revoking twice keeps the first time.
func (s *Store) RevokeToken(ctx context.Context, id string, now time.Time) (store.Token, error) {
	var tok store.Token
	err := s.update(ctx, func(t *tx) error {
		tok = store.Token{}
		if err := t.getJSON(s.tokenKey(id), &tok); err != nil {
			return fmt.Errorf("token %s: %w", id, err)
		}
		if !tok.RevokedAt.IsZero() {
			return nil
		}
		tok.RevokedAt = now
		return t.putJSON(s.tokenKey(id), tok)
	})
	return tok, err
}

// Enroll checks the token, spends one use of it and stores node, in one
// transaction that compares the token's revision: two enrollments racing
// for the last use cannot both win.
func (s *Store) Enroll(ctx context.Context, tokenID string, check func(store.Token) error, node store.Node) (store.Token, error) {
	var tok store.Token
	err := s.update(ctx, func(t *tx) error {
		tok = store.Token{}
		n := node
		if err := t.getJSON(s.tokenKey(tokenID), &tok); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("%w: unknown token or wrong secret", store.ErrTokenInvalid)
			}
			return err
		}
		if err := check(tok); err != nil {
			return err
		}
		if ok, err := t.exists(s.nodeKey(n.ID)); err != nil {
			return err
		} else if ok {
			return fmt.Errorf("node %s: %w", n.ID, store.ErrAlreadyExists)
		}
		tok.Uses++
		if len(tok.Labels) > 0 {
			n.Labels = maps.Clone(tok.Labels)
		}
		if err := t.putJSON(s.tokenKey(tokenID), tok); err != nil {
			return err
		}
		raw, err := encodeNode(n)
		if err != nil {
			return err
		}
		t.put(s.nodeKey(n.ID), raw)
		return nil
	})
	return tok, err
}

// GetNode returns the node with id.
func (s *Store) GetNode(ctx context.Context, id string) (store.Node, error) {
	raw, ok, err := s.get(ctx, s.nodeKey(id))
	if err != nil {
		return store.Node{}, err
	}
	if !ok {
		return store.Node{}, fmt.Errorf("node %s: %w", id, store.ErrNotFound)
	}
	return decodeNode(raw)
}

// ListNodes returns every node, by hostname then id.
func (s *Store) ListNodes(ctx context.Context) ([]store.Node, error) {
	var out []store.Node
	err := s.list(ctx, s.p+"nodes/", func(_ string, v []byte) error {
		n, err := decodeNode(v)
		if err != nil {
			return err
		}
		out = append(out, n)
		return nil
	})
	sort.Slice(out, func(i, j int) bool {
		if out[i].Hostname != out[j].Hostname {
			return out[i].Hostname < out[j].Hostname
		}
		return out[i].ID < out[j].ID
	})
	return out, err
}

// UpdateNode applies fn to the stored node and saves it.
func (s *Store) UpdateNode(ctx context.Context, id string, fn func(*store.Node) error) (store.Node, error) {
	var n store.Node
	err := s.update(ctx, func(t *tx) error {
		raw, ok, err := t.get(s.nodeKey(id))
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("node %s: %w", id, store.ErrNotFound)
		}
		if n, err = decodeNode(raw); err != nil {
			return err
		}
		if err := fn(&n); err != nil {
			return err
		}
		enc, err := encodeNode(n)
		if err != nil {
			return err
		}
		t.put(s.nodeKey(id), enc)
		return nil
	})
	return n, err
}

// DeleteNode removes a node and its command queue.
func (s *Store) DeleteNode(ctx context.Context, id string) error {
	var ids, batchKeys []string
	err := s.update(ctx, func(t *tx) error {
		ids, batchKeys = ids[:0], batchKeys[:0]
		if ok, err := t.exists(s.nodeKey(id)); err != nil {
			return err
		} else if !ok {
			return fmt.Errorf("node %s: %w", id, store.ErrNotFound)
		}
		// Reading the sequence makes a racing EnqueueCommand conflict.
		if _, _, err := t.get(s.cmdSeqKey(id)); err != nil {
			return err
		}
		if err := s.list(t.ctx, s.queuePrefix(id), func(_ string, v []byte) error {
			var c store.Command
			if err := json.Unmarshal(v, &c); err != nil {
				return err
			}
			ids = append(ids, c.ID)
			if c.BatchID != "" {
				batchKeys = append(batchKeys, s.batchStatePrefix(c.BatchID)+c.ID)
			}
			return nil
		}); err != nil {
			return err
		}
		t.del(s.nodeKey(id))
		t.del(s.cmdSeqKey(id))
		t.delPrefix(s.queuePrefix(id))
		return nil
	})
	if err != nil {
		return err
	}
	// The index entries go after the node, in batches (etcd bounds the
	// operations of one transaction); one left over is harmless.
	s.dropIndex(ctx, id, ids)
	// Likewise the commands' places in their batches' counts.
	for len(batchKeys) > 0 {
		n := min(len(batchKeys), 100)
		part := batchKeys[:n]
		batchKeys = batchKeys[n:]
		_ = s.update(ctx, func(t *tx) error {
			for _, k := range part {
				t.del(k)
			}
			return nil
		})
	}
	return nil
}

func (s *Store) dropIndex(ctx context.Context, nodeID string, ids []string) {
	for len(ids) > 0 {
		n := min(len(ids), 100)
		batch := ids[:n]
		ids = ids[n:]
		_ = s.update(ctx, func(t *tx) error {
			for _, cid := range batch {
				v, ok, err := t.get(s.indexKey(cid))
				if err != nil {
					return err
				}
				if ok && strings.HasPrefix(string(v), nodeID+"\x00") {
					if _, live, err := t.get(s.p + "commands/" + string(v)); err != nil {
						return err
					} else if !live {
						t.del(s.indexKey(cid))
					}
				}
			}
			return nil
		})
	}
}

// locate finds the command with id inside t: its key and value.
func (s *Store) locate(t *tx, id string) (string, store.Command, error) {
	var c store.Command
	loc, ok, err := t.get(s.indexKey(id))
	if err != nil {
		return "", c, err
	}
	if !ok {
		return "", c, fmt.Errorf("command %s: %w", id, store.ErrNotFound)
	}
	key := s.p + "commands/" + string(loc)
	raw, ok, err := t.get(key)
	if err != nil {
		return "", c, err
	}
	if !ok {
		return "", c, fmt.Errorf("command %s: %w", id, store.ErrNotFound)
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return "", c, err
	}
	if c.ID != id { // a stale index entry; the slot holds another command
		return "", store.Command{}, fmt.Errorf("command %s: %w", id, store.ErrNotFound)
	}
	return key, c, nil
}

// EnqueueCommand appends c to its node's queue. The node must exist.
func (s *Store) EnqueueCommand(ctx context.Context, c store.Command) error {
	return s.update(ctx, func(t *tx) error {
		if ok, err := t.exists(s.nodeKey(c.NodeID)); err != nil {
			return err
		} else if !ok {
			return fmt.Errorf("node %s: %w", c.NodeID, store.ErrNotFound)
		}
		if _, _, err := s.locate(t, c.ID); err == nil {
			return fmt.Errorf("command %s: %w", c.ID, store.ErrAlreadyExists)
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		var seq uint64
		if raw, ok, err := t.get(s.cmdSeqKey(c.NodeID)); err != nil {
			return err
		} else if ok {
			if seq, err = strconv.ParseUint(string(raw), 10, 64); err != nil {
				return fmt.Errorf("node %s: command sequence %q: %w", c.NodeID, raw, err)
			}
		}
		seq++
		t.put(s.cmdSeqKey(c.NodeID), []byte(strconv.FormatUint(seq, 10)))
		loc := c.NodeID + "\x00" + seqKey(seq)
		t.put(s.indexKey(c.ID), []byte(loc))
		return t.putJSON(s.p+"commands/"+loc, c)
	})
}

// PendingCommands returns the commands of a node that have no result yet,
// in queue order.
func (s *Store) PendingCommands(ctx context.Context, nodeID string) ([]store.Command, error) {
	return s.listCommands(ctx, nodeID, func(c store.Command) bool { return !c.State.Done() })
}

// ListCommands returns the commands of one node, or of all nodes when
// nodeID is empty, in queue order per node.
func (s *Store) ListCommands(ctx context.Context, nodeID string) ([]store.Command, error) {
	return s.listCommands(ctx, nodeID, func(store.Command) bool { return true })
}

func (s *Store) listCommands(ctx context.Context, nodeID string, keep func(store.Command) bool) ([]store.Command, error) {
	prefix := s.p + "commands/"
	if nodeID != "" {
		prefix = s.queuePrefix(nodeID)
	}
	var out []store.Command
	err := s.list(ctx, prefix, func(_ string, v []byte) error {
		var c store.Command
		if err := json.Unmarshal(v, &c); err != nil {
			return err
		}
		if keep(c) {
			out = append(out, c)
		}
		return nil
	})
	return out, err
}

// GetCommand returns the command with id.
func (s *Store) GetCommand(ctx context.Context, id string) (store.Command, error) {
	if err := ctx.Err(); err != nil {
		return store.Command{}, fmt.Errorf("controller store: %w", err)
	}
	t := &tx{s: s, ctx: ctx, reads: map[string]int64{}, vals: map[string][]byte{}}
	_, c, err := s.locate(t, id)
	return c, err
}

// UpdateCommand applies fn to the stored command and saves it, compare-and-
// swap on the command's revision.
func (s *Store) UpdateCommand(ctx context.Context, id string, fn func(*store.Command) error) (store.Command, error) {
	var c store.Command
	err := s.update(ctx, func(t *tx) error {
		key, cur, err := s.locate(t, id)
		if err != nil {
			return err
		}
		c = cur
		if err := fn(&c); err != nil {
			return err
		}
		if c.BatchID != "" && c.State != cur.State {
			// The batch's count moves in the same transaction.
			t.put(s.batchStatePrefix(c.BatchID)+c.ID, []byte(c.State))
		}
		return t.putJSON(key, c)
	})
	return c, err
}

// AddSIEMConfig stores c under the next version and returns it.
func (s *Store) AddSIEMConfig(ctx context.Context, c store.SIEMConfig) (store.SIEMConfig, error) {
	err := s.update(ctx, func(t *tx) error {
		var v uint64
		if raw, ok, err := t.get(s.p + "siem_seq"); err != nil {
			return err
		} else if ok {
			if v, err = strconv.ParseUint(string(raw), 10, 64); err != nil {
				return fmt.Errorf("SIEM config sequence %q: %w", raw, err)
			}
		}
		v++
		c.Version = v
		t.put(s.p+"siem_seq", []byte(strconv.FormatUint(v, 10)))
		return t.putJSON(s.p+"siem_configs/"+seqKey(v), c)
	})
	return c, err
}

// SIEMConfigFor returns the newest configuration whose selector matches
// labels; ok is false when none does.
func (s *Store) SIEMConfigFor(ctx context.Context, labels map[string]string) (c store.SIEMConfig, ok bool, err error) {
	var all []store.SIEMConfig
	err = s.list(ctx, s.p+"siem_configs/", func(_ string, v []byte) error {
		var cand store.SIEMConfig
		if err := json.Unmarshal(v, &cand); err != nil {
			return err
		}
		all = append(all, cand)
		return nil
	})
	if err != nil {
		return c, false, err
	}
	for i := len(all) - 1; i >= 0; i-- {
		if all[i].Selects(labels) {
			return all[i], true, nil
		}
	}
	return c, false, nil
}
