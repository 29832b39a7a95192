// Package bolt is the controller's embedded store: a store.Store in one
// bbolt file, for a single controller.
//
// Schema (version 8):
//
//	meta/
//	  schema_version         -> uint64 big-endian (internal/boltdb)
//	tokens/
//	  <token id>             -> JSON store.Token
//	nodes/
//	  <node id>              -> JSON store.Node, its inventory as protobuf
//	                            JSON under the proto field names (node.go)
//	commands/
//	  <node id>/             (one bucket per node)
//	    <seq uint64 BE>      -> JSON store.Command, in the order they were queued;
//	                            a running command's streamed output under
//	                            "output_tail" (stdout/stderr base64)
//	command_index/
//	  <command id>           -> <node id> NUL <seq uint64 BE>
//	siem_configs/            (since version 2)
//	  <version uint64 BE>    -> JSON store.SIEMConfig, newest last
//	clusters/                (since version 3; clusters.go)
//	  <cluster name>         -> JSON store.Cluster, its kubeconfig (a
//	                            credential) included
//	campaigns/               (since version 4; campaign.go)
//	  <campaign id>          -> JSON store.Campaign (maintenance.Campaign)
//	artifacts/               (since version 5; artifact.go)
//	  <digest>               -> JSON store.Artifact ("sha256:<hex>")
//	artifact_names/          (since version 5)
//	  <name> NUL <version> NUL <platform> -> <digest>
//	machines/                (since version 6; machines.go)
//	  <machine id>           -> JSON store.Machine
//	operators/               (since version 7; operators.go)
//	  <operator name>        -> JSON store.Operator
//	command_batches/         (since version 8; batch.go)
//	  <batch id>             -> JSON store.CommandBatch
//	batch_commands/          (since version 8)
//	  <batch id>/<command id> -> the command's state
//
// The file is opened through internal/boltdb: an upgrade first copies it to
// <path>.v<old version>.bak and runs the migrations below in one
// transaction; a file from a newer bud-controller is refused. Values are
// copied out of transactions before they are returned. Writes are
// serialised by bbolt, so every method is atomic on its own.
package bolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"sort"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/internal/boltdb"
)

var (
	bucketMeta         = boltdb.BucketMeta
	bucketTokens       = []byte("tokens")
	bucketNodes        = []byte("nodes")
	bucketCommands     = []byte("commands")
	bucketCommandIndex = []byte("command_index")
	bucketSIEMConfigs  = []byte("siem_configs")

	keySchemaVersion = boltdb.KeySchemaVersion
)

// Errors of Open, for errors.Is.
var (
	// ErrLocked: another process holds the file (boltdb.ErrLocked).
	ErrLocked = boltdb.ErrLocked
	// ErrNewerSchema: a newer bud-controller wrote the file
	// (boltdb.ErrNewerSchema).
	ErrNewerSchema = boltdb.ErrNewerSchema
)

// migrations[i] brings a store from schema version i to i+1. Append only.
var migrations = []boltdb.Migration{
	// 0 -> 1: the initial buckets.
	func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bucketTokens, bucketNodes, bucketCommands, bucketCommandIndex} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	},
	// 1 -> 2: fleet-managed audit forwarding configurations.
	func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketSIEMConfigs)
		return err
	},
	// 2 -> 3: Kubernetes clusters (clusters.go).
	migrateClusters,
	// 3 -> 4: maintenance campaigns (campaign.go).
	migrateCampaigns,
	// 4 -> 5: the artifact store's metadata (artifact.go).
	migrateArtifacts,
	// 5 -> 6: machines of provider plugins (machines.go).
	migrateMachines,
	// 6 -> 7: operator credentials (operators.go).
	migrateOperators,
	// 7 -> 8: fan-outs of one command to many nodes (batch.go).
	migrateBatches,
}

// SchemaVersion is the version this build writes.
func SchemaVersion() uint64 { return uint64(len(migrations)) }

// Options configure Open.
type Options struct {
	// LockTimeout bounds the wait for another process's lock on the file
	// (default 1s).
	LockTimeout time.Duration
}

// Store is the controller's state in one bbolt file.
type Store struct {
	db    *bbolt.DB
	group *groupCommit
}

var _ store.Store = (*Store)(nil)

// Open opens (creating if needed) the store at path and migrates it.
func Open(path string, opts Options) (*Store, error) {
	db, err := boltdb.Open(path, boltdb.Options{
		Name:        "controller store",
		LockTimeout: opts.LockTimeout,
		LockHint:    "is another bud-controller running with the same --data-dir?",
		UpgradeHint: "upgrade bud-controller",
		Migrations:  migrations,
	})
	if err != nil {
		return nil, err
	}
	return &Store{db: db, group: &groupCommit{db: db}}, nil
}

// Close closes the store.
func (s *Store) Close() error { return s.db.Close() }

// view and update run fn in a transaction unless ctx is already done: a
// bbolt transaction is local and short, so it is not interrupted once begun.
func (s *Store) view(ctx context.Context, fn func(tx *bbolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("controller store: %w", err)
	}
	return s.db.View(fn)
}

func (s *Store) update(ctx context.Context, fn func(tx *bbolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("controller store: %w", err)
	}
	return s.db.Update(fn)
}

// batch is update for the writes many sessions make at once (a command's
// delivery and result, a node's reports): groupCommit folds the
// concurrent calls into shared transactions and fsyncs, so 10,000 agents
// acknowledging a fan-out are a few commits rather than 10,000. fn may
// run more than once (the Store contract already allows it).
func (s *Store) batch(ctx context.Context, fn func(tx *bbolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("controller store: %w", err)
	}
	return s.group.do(fn)
}

func u64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

// getJSON decodes the value at key, or returns store.ErrNotFound.
func getJSON(b *bbolt.Bucket, key []byte, v any) error {
	found, err := boltdb.GetJSON(b, key, v)
	if err == nil && !found {
		err = store.ErrNotFound
	}
	return err
}

func putJSON(b *bbolt.Bucket, key []byte, v any) error { return boltdb.PutJSON(b, key, v) }

// CreateToken stores a new token.
func (s *Store) CreateToken(ctx context.Context, t store.Token) error {
	return s.update(ctx, func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketTokens)
		if b.Get([]byte(t.ID)) != nil {
			return fmt.Errorf("token %s: %w", t.ID, store.ErrAlreadyExists)
		}
		return putJSON(b, []byte(t.ID), t)
	})
}

// GetToken returns the token with id.
func (s *Store) GetToken(ctx context.Context, id string) (store.Token, error) {
	var t store.Token
	err := s.view(ctx, func(tx *bbolt.Tx) error { return getJSON(tx.Bucket(bucketTokens), []byte(id), &t) })
	if errors.Is(err, store.ErrNotFound) {
		return t, fmt.Errorf("token %s: %w", id, store.ErrNotFound)
	}
	return t, err
}

// ListTokens returns every token, oldest first.
func (s *Store) ListTokens(ctx context.Context) ([]store.Token, error) {
	var out []store.Token
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketTokens).ForEach(func(_, v []byte) error {
			var t store.Token
			if err := json.Unmarshal(v, &t); err != nil {
				return err
			}
			out = append(out, t)
			return nil
		})
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
	var t store.Token
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketTokens)
		if err := getJSON(b, []byte(id), &t); err != nil {
			return fmt.Errorf("token %s: %w", id, err)
		}
		if t.RevokedAt.IsZero() {
			t.RevokedAt = now
		}
		return putJSON(b, []byte(id), t)
	})
	return t, err
}

// Enroll checks the token with the given id and secret check, spends one
// use of it and stores node with the token's labels, all in one
// transaction: a failed check changes nothing.
func (s *Store) Enroll(ctx context.Context, tokenID string, check func(store.Token) error, node store.Node) (store.Token, error) {
	var t store.Token
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		tb := tx.Bucket(bucketTokens)
		if err := getJSON(tb, []byte(tokenID), &t); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				// Worded as a wrong secret, so token ids cannot be probed.
				return fmt.Errorf("%w: unknown token or wrong secret", store.ErrTokenInvalid)
			}
			return err
		}
		if err := check(t); err != nil {
			return err
		}
		nb := tx.Bucket(bucketNodes)
		if nb.Get([]byte(node.ID)) != nil {
			return fmt.Errorf("node %s: %w", node.ID, store.ErrAlreadyExists)
		}
		t.Uses++
		if len(t.Labels) > 0 {
			node.Labels = maps.Clone(t.Labels)
		}
		if err := putJSON(tb, []byte(tokenID), t); err != nil {
			return err
		}
		return putNode(nb, []byte(node.ID), node)
	})
	return t, err
}

// GetNode returns the node with id.
func (s *Store) GetNode(ctx context.Context, id string) (store.Node, error) {
	var n store.Node
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		var err error
		n, err = getNode(tx.Bucket(bucketNodes), []byte(id))
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return n, fmt.Errorf("node %s: %w", id, store.ErrNotFound)
	}
	return n, err
}

var _ store.NodeIDLister = (*Store)(nil)

// NodeIDs returns every node's id (the nodes bucket's keys), by id.
func (s *Store) NodeIDs(ctx context.Context) ([]string, error) {
	var out []string
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketNodes).ForEach(func(k, _ []byte) error {
			out = append(out, string(k))
			return nil
		})
	})
	return out, err
}

// ListNodes returns every node, by hostname then id.
func (s *Store) ListNodes(ctx context.Context) ([]store.Node, error) {
	var out []store.Node
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketNodes).ForEach(func(_, v []byte) error {
			n, err := decodeNode(v)
			if err != nil {
				return err
			}
			out = append(out, n)
			return nil
		})
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
	err := s.batch(ctx, func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketNodes)
		var err error
		if n, err = getNode(b, []byte(id)); err != nil {
			return fmt.Errorf("node %s: %w", id, err)
		}
		if err := fn(&n); err != nil {
			return err
		}
		return putNode(b, []byte(id), n)
	})
	return n, err
}

// DeleteNode removes a node and its command queue.
func (s *Store) DeleteNode(ctx context.Context, id string) error {
	return s.update(ctx, func(tx *bbolt.Tx) error {
		nb := tx.Bucket(bucketNodes)
		if nb.Get([]byte(id)) == nil {
			return fmt.Errorf("node %s: %w", id, store.ErrNotFound)
		}
		if err := nb.Delete([]byte(id)); err != nil {
			return err
		}
		cb := tx.Bucket(bucketCommands)
		q := cb.Bucket([]byte(id))
		if q == nil {
			return nil
		}
		idx := tx.Bucket(bucketCommandIndex)
		if err := q.ForEach(func(_, v []byte) error {
			var c store.Command
			if err := json.Unmarshal(v, &c); err != nil {
				return err
			}
			if err := dropBatchEntry(tx, v); err != nil {
				return err
			}
			return idx.Delete([]byte(c.ID))
		}); err != nil {
			return err
		}
		return cb.DeleteBucket([]byte(id))
	})
}

func indexValue(nodeID string, seq []byte) []byte {
	return append(append([]byte(nodeID), 0), seq...)
}

func splitIndex(v []byte) (string, []byte, error) {
	i := bytes.IndexByte(v, 0)
	if i < 0 {
		return "", nil, errors.New("corrupt command index entry")
	}
	return string(v[:i]), v[i+1:], nil
}

// EnqueueCommand appends c to its node's queue. The node must exist.
func (s *Store) EnqueueCommand(ctx context.Context, c store.Command) error {
	return s.update(ctx, func(tx *bbolt.Tx) error {
		if tx.Bucket(bucketNodes).Get([]byte(c.NodeID)) == nil {
			return fmt.Errorf("node %s: %w", c.NodeID, store.ErrNotFound)
		}
		idx := tx.Bucket(bucketCommandIndex)
		if idx.Get([]byte(c.ID)) != nil {
			return fmt.Errorf("command %s: %w", c.ID, store.ErrAlreadyExists)
		}
		q, err := tx.Bucket(bucketCommands).CreateBucketIfNotExists([]byte(c.NodeID))
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
		return idx.Put([]byte(c.ID), indexValue(c.NodeID, u64(seq)))
	})
}

// PendingCommands returns the commands of a node that have no result yet, in
// queue order.
func (s *Store) PendingCommands(ctx context.Context, nodeID string) ([]store.Command, error) {
	return s.listCommands(ctx, nodeID, func(c store.Command) bool { return !c.State.Done() })
}

// ListCommands returns the commands of one node, or of all nodes when nodeID
// is empty, in queue order per node.
func (s *Store) ListCommands(ctx context.Context, nodeID string) ([]store.Command, error) {
	return s.listCommands(ctx, nodeID, func(store.Command) bool { return true })
}

func (s *Store) listCommands(ctx context.Context, nodeID string, keep func(store.Command) bool) ([]store.Command, error) {
	var out []store.Command
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		cb := tx.Bucket(bucketCommands)
		each := func(q *bbolt.Bucket) error {
			return q.ForEach(func(_, v []byte) error {
				var c store.Command
				if err := json.Unmarshal(v, &c); err != nil {
					return err
				}
				if keep(c) {
					out = append(out, c)
				}
				return nil
			})
		}
		if nodeID != "" {
			if q := cb.Bucket([]byte(nodeID)); q != nil {
				return each(q)
			}
			return nil
		}
		// Node buckets in key order: by node id.
		return cb.ForEachBucket(func(k []byte) error { return each(cb.Bucket(k)) })
	})
	return out, err
}

// GetCommand returns the command with id.
func (s *Store) GetCommand(ctx context.Context, id string) (store.Command, error) {
	var c store.Command
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		q, key, err := commandLocation(tx, id)
		if err != nil {
			return err
		}
		return getJSON(q, key, &c)
	})
	return c, err
}

func commandLocation(tx *bbolt.Tx, id string) (*bbolt.Bucket, []byte, error) {
	v := tx.Bucket(bucketCommandIndex).Get([]byte(id))
	if v == nil {
		return nil, nil, fmt.Errorf("command %s: %w", id, store.ErrNotFound)
	}
	nodeID, key, err := splitIndex(v)
	if err != nil {
		return nil, nil, err
	}
	q := tx.Bucket(bucketCommands).Bucket([]byte(nodeID))
	if q == nil {
		return nil, nil, fmt.Errorf("command %s: %w", id, store.ErrNotFound)
	}
	return q, key, nil
}

// UpdateCommand applies fn to the stored command and saves it.
func (s *Store) UpdateCommand(ctx context.Context, id string, fn func(*store.Command) error) (store.Command, error) {
	var c store.Command
	err := s.batch(ctx, func(tx *bbolt.Tx) error {
		q, key, err := commandLocation(tx, id)
		if err != nil {
			return err
		}
		c = store.Command{}
		if err := getJSON(q, key, &c); err != nil {
			return err
		}
		if err := fn(&c); err != nil {
			return err
		}
		if err := putJSON(q, key, c); err != nil {
			return err
		}
		return syncBatchState(tx, c)
	})
	return c, err
}

var _ store.DeliveryMarker = (*Store)(nil)

// MarkDelivered records the marks in one transaction, through batch():
// the controller writes a fan-out's marks in chunks, and each chunk then
// shares its transaction and fsync with the command results being written
// at the same time instead of holding them up behind a transaction of its
// own.
func (s *Store) MarkDelivered(ctx context.Context, marks []store.DeliveryMark) error {
	return s.batch(ctx, func(tx *bbolt.Tx) error {
		for _, m := range marks {
			q, key, err := commandLocation(tx, m.ID)
			if errors.Is(err, store.ErrNotFound) {
				continue // its node was deleted
			}
			if err != nil {
				return err
			}
			var c store.Command
			if err := getJSON(q, key, &c); err != nil {
				return err
			}
			if c.State.Done() {
				continue
			}
			c.Deliveries += m.Count
			c.DeliveredAt = m.At
			c.State = store.CommandDelivered
			if err := putJSON(q, key, c); err != nil {
				return err
			}
			if err := syncBatchState(tx, c); err != nil {
				return err
			}
		}
		return nil
	})
}

// AddSIEMConfig stores c under the next version and returns it.
func (s *Store) AddSIEMConfig(ctx context.Context, c store.SIEMConfig) (store.SIEMConfig, error) {
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketSIEMConfigs)
		v, err := b.NextSequence()
		if err != nil {
			return err
		}
		c.Version = v
		return putJSON(b, u64(v), c)
	})
	return c, err
}

// SIEMConfigFor returns the newest configuration whose selector matches
// labels; ok is false when none does.
func (s *Store) SIEMConfigFor(ctx context.Context, labels map[string]string) (c store.SIEMConfig, ok bool, err error) {
	err = s.view(ctx, func(tx *bbolt.Tx) error {
		cur := tx.Bucket(bucketSIEMConfigs).Cursor()
		for k, v := cur.Last(); k != nil; k, v = cur.Prev() {
			var cand store.SIEMConfig
			if err := json.Unmarshal(v, &cand); err != nil {
				return err
			}
			if cand.Selects(labels) {
				c, ok = cand, true
				return nil
			}
		}
		return nil
	})
	return c, ok, err
}
