// Package store keeps the controller's state in bbolt.
//
// Schema (version 2):
//
//	meta/
//	  schema_version         -> uint64 big-endian
//	tokens/
//	  <token id>             -> JSON Token
//	nodes/
//	  <node id>              -> JSON Node
//	commands/
//	  <node id>/             (one bucket per node)
//	    <seq uint64 BE>      -> JSON Command, in the order they were queued
//	command_index/
//	  <command id>           -> <node id> NUL <seq uint64 BE>
//	siem_configs/            (since version 2)
//	  <version uint64 BE>    -> JSON SIEMConfig, newest last
//
// Values are copied out of transactions before they are returned.
package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/bud-ecosystem/budfleet/internal/boltdb"
	hostv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/host/v1"
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

// Sentinel errors; callers map them to API status codes.
var (
	ErrNotFound      = errors.New("not found")
	ErrLocked        = boltdb.ErrLocked
	ErrNewerSchema   = boltdb.ErrNewerSchema
	ErrTokenInvalid  = errors.New("join token is not valid")
	ErrAlreadyExists = errors.New("already exists")
)

// migrations[i] brings a store from schema version i to i+1. Append only.
var migrations = []boltdb.Migration{
	// 0 -> 1: the initial buckets.
	func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketTokens, bucketNodes, bucketCommands, bucketCommandIndex} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	},
	// 1 -> 2: fleet-managed audit forwarding configurations.
	func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketSIEMConfigs)
		return err
	},
}

// SchemaVersion is the version this build writes.
func SchemaVersion() uint64 { return uint64(len(migrations)) }

// Options configure Open.
type Options struct {
	// LockTimeout bounds the wait for another process's lock on the file.
	LockTimeout time.Duration
}

// Store is the controller's persistent state.
type Store struct {
	db *bolt.DB
}

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
	return &Store{db: db}, nil
}

// Close closes the store.
func (s *Store) Close() error { return s.db.Close() }

func u64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

func getJSON(b *bolt.Bucket, key []byte, v any) error {
	found, err := boltdb.GetJSON(b, key, v)
	if err == nil && !found {
		err = ErrNotFound
	}
	return err
}

func putJSON(b *bolt.Bucket, key []byte, v any) error { return boltdb.PutJSON(b, key, v) }

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

// CreateToken stores a new token.
func (s *Store) CreateToken(t Token) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTokens)
		if b.Get([]byte(t.ID)) != nil {
			return fmt.Errorf("token %s: %w", t.ID, ErrAlreadyExists)
		}
		return putJSON(b, []byte(t.ID), t)
	})
}

// GetToken returns the token with id.
func (s *Store) GetToken(id string) (Token, error) {
	var t Token
	err := s.db.View(func(tx *bolt.Tx) error { return getJSON(tx.Bucket(bucketTokens), []byte(id), &t) })
	if errors.Is(err, ErrNotFound) {
		return t, fmt.Errorf("token %s: %w", id, ErrNotFound)
	}
	return t, err
}

// ListTokens returns every token, oldest first.
func (s *Store) ListTokens() ([]Token, error) {
	var out []Token
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTokens).ForEach(func(_, v []byte) error {
			var t Token
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
func (s *Store) RevokeToken(id string, now time.Time) (Token, error) {
	var t Token
	err := s.db.Update(func(tx *bolt.Tx) error {
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

// Node is an enrolled node.
type Node struct {
	ID                string            `json:"id"`
	Hostname          string            `json:"hostname"`
	MachineID         string            `json:"machine_id,omitempty"`
	Labels            map[string]string `json:"labels,omitempty"`
	TokenID           string            `json:"token_id"`
	EnrolledAt        time.Time         `json:"enrolled_at"`
	CertSerial        string            `json:"cert_serial"`
	CertExpiresAt     time.Time         `json:"cert_expires_at"`
	LastHeartbeat     time.Time         `json:"last_heartbeat,omitzero"`
	Inventory         *hostv1.Inventory `json:"-"`
	InventoryUpdateAt time.Time         `json:"inventory_updated_at,omitzero"`
	// GPUs is the node's GPU inventory and health as the protobuf encoding
	// of budfleet.fleet.v1.NodeGpus: a versioned wire schema that new
	// fields extend without a store migration.
	GPUs []byte `json:"gpus,omitempty"`
}

// nodeJSON is how a Node is kept: plain JSON, with the inventory in
// protobuf's JSON form under its proto field names, which are the names the
// hand-written inventory of schema versions 1 and 2 used, so those records
// read unchanged.
type nodeJSON Node

// MarshalJSON writes n with its inventory as protobuf JSON.
func (n Node) MarshalJSON() ([]byte, error) {
	r := struct {
		nodeJSON
		Inventory json.RawMessage `json:"inventory,omitempty"`
	}{nodeJSON: nodeJSON(n)}
	if n.Inventory != nil {
		b, err := inventoryJSON.Marshal(n.Inventory)
		if err != nil {
			return nil, err
		}
		r.Inventory = b
	}
	return json.Marshal(r)
}

// UnmarshalJSON reads what MarshalJSON wrote.
func (n *Node) UnmarshalJSON(b []byte) error {
	var r struct {
		*nodeJSON
		Inventory json.RawMessage `json:"inventory,omitempty"`
	}
	r.nodeJSON = (*nodeJSON)(n)
	if err := json.Unmarshal(b, &r); err != nil {
		return err
	}
	n.Inventory = nil
	if len(r.Inventory) == 0 || string(r.Inventory) == "null" {
		return nil
	}
	inv := &hostv1.Inventory{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(r.Inventory, inv); err != nil {
		return fmt.Errorf("node %s inventory: %w", n.ID, err)
	}
	n.Inventory = inv
	return nil
}

var inventoryJSON = protojson.MarshalOptions{UseProtoNames: true}

// Enroll checks the token with the given id and secret check, spends one
// use of it and stores node with the token's labels, all in one
// transaction: a failed check changes nothing.
func (s *Store) Enroll(tokenID string, check func(Token) error, node Node) (Token, error) {
	var t Token
	err := s.db.Update(func(tx *bolt.Tx) error {
		tb := tx.Bucket(bucketTokens)
		if err := getJSON(tb, []byte(tokenID), &t); err != nil {
			if errors.Is(err, ErrNotFound) {
				// Worded as a wrong secret, so token ids cannot be probed.
				return fmt.Errorf("%w: unknown token or wrong secret", ErrTokenInvalid)
			}
			return err
		}
		if err := check(t); err != nil {
			return err
		}
		nb := tx.Bucket(bucketNodes)
		if nb.Get([]byte(node.ID)) != nil {
			return fmt.Errorf("node %s: %w", node.ID, ErrAlreadyExists)
		}
		t.Uses++
		if len(t.Labels) > 0 {
			node.Labels = maps.Clone(t.Labels)
		}
		if err := putJSON(tb, []byte(tokenID), t); err != nil {
			return err
		}
		return putJSON(nb, []byte(node.ID), node)
	})
	return t, err
}

// GetNode returns the node with id.
func (s *Store) GetNode(id string) (Node, error) {
	var n Node
	err := s.db.View(func(tx *bolt.Tx) error { return getJSON(tx.Bucket(bucketNodes), []byte(id), &n) })
	if errors.Is(err, ErrNotFound) {
		return n, fmt.Errorf("node %s: %w", id, ErrNotFound)
	}
	return n, err
}

// ListNodes returns every node, by hostname then id.
func (s *Store) ListNodes() ([]Node, error) {
	var out []Node
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketNodes).ForEach(func(_, v []byte) error {
			var n Node
			if err := json.Unmarshal(v, &n); err != nil {
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
func (s *Store) UpdateNode(id string, fn func(*Node) error) (Node, error) {
	var n Node
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketNodes)
		if err := getJSON(b, []byte(id), &n); err != nil {
			return fmt.Errorf("node %s: %w", id, err)
		}
		if err := fn(&n); err != nil {
			return err
		}
		return putJSON(b, []byte(id), n)
	})
	return n, err
}

// DeleteNode removes a node and its command queue.
func (s *Store) DeleteNode(id string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		nb := tx.Bucket(bucketNodes)
		if nb.Get([]byte(id)) == nil {
			return fmt.Errorf("node %s: %w", id, ErrNotFound)
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
			var c Command
			if err := json.Unmarshal(v, &c); err != nil {
				return err
			}
			return idx.Delete([]byte(c.ID))
		}); err != nil {
			return err
		}
		return cb.DeleteBucket([]byte(id))
	})
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
func (s *Store) EnqueueCommand(c Command) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketNodes).Get([]byte(c.NodeID)) == nil {
			return fmt.Errorf("node %s: %w", c.NodeID, ErrNotFound)
		}
		idx := tx.Bucket(bucketCommandIndex)
		if idx.Get([]byte(c.ID)) != nil {
			return fmt.Errorf("command %s: %w", c.ID, ErrAlreadyExists)
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
func (s *Store) PendingCommands(nodeID string) ([]Command, error) {
	return s.listCommands(nodeID, func(c Command) bool { return !c.State.Done() })
}

// ListCommands returns the commands of one node, or of all nodes when nodeID
// is empty, in queue order per node.
func (s *Store) ListCommands(nodeID string) ([]Command, error) {
	return s.listCommands(nodeID, func(Command) bool { return true })
}

func (s *Store) listCommands(nodeID string, keep func(Command) bool) ([]Command, error) {
	var out []Command
	err := s.db.View(func(tx *bolt.Tx) error {
		cb := tx.Bucket(bucketCommands)
		each := func(q *bolt.Bucket) error {
			return q.ForEach(func(_, v []byte) error {
				var c Command
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
		return cb.ForEachBucket(func(k []byte) error { return each(cb.Bucket(k)) })
	})
	return out, err
}

// GetCommand returns the command with id.
func (s *Store) GetCommand(id string) (Command, error) {
	var c Command
	err := s.db.View(func(tx *bolt.Tx) error {
		q, key, err := commandLocation(tx, id)
		if err != nil {
			return err
		}
		return getJSON(q, key, &c)
	})
	return c, err
}

func commandLocation(tx *bolt.Tx, id string) (*bolt.Bucket, []byte, error) {
	v := tx.Bucket(bucketCommandIndex).Get([]byte(id))
	if v == nil {
		return nil, nil, fmt.Errorf("command %s: %w", id, ErrNotFound)
	}
	nodeID, key, err := splitIndex(v)
	if err != nil {
		return nil, nil, err
	}
	q := tx.Bucket(bucketCommands).Bucket([]byte(nodeID))
	if q == nil {
		return nil, nil, fmt.Errorf("command %s: %w", id, ErrNotFound)
	}
	return q, key, nil
}

// UpdateCommand applies fn to the stored command and saves it.
func (s *Store) UpdateCommand(id string, fn func(*Command) error) (Command, error) {
	var c Command
	err := s.db.Update(func(tx *bolt.Tx) error {
		q, key, err := commandLocation(tx, id)
		if err != nil {
			return err
		}
		if err := getJSON(q, key, &c); err != nil {
			return err
		}
		if err := fn(&c); err != nil {
			return err
		}
		return putJSON(q, key, c)
	})
	return c, err
}

// SIEMConfig is an audit-forwarding configuration applied by an operator.
type SIEMConfig struct {
	Version   uint64            `json:"version"`
	YAML      []byte            `json:"yaml"`
	Selector  map[string]string `json:"selector,omitempty"`
	CreatedAt time.Time         `json:"created_at"`
	CreatedBy string            `json:"created_by,omitempty"`
}

// Selects reports whether the configuration applies to a node with labels.
func (c SIEMConfig) Selects(labels map[string]string) bool {
	for k, v := range c.Selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// AddSIEMConfig stores c under the next version and returns it.
func (s *Store) AddSIEMConfig(c SIEMConfig) (SIEMConfig, error) {
	err := s.db.Update(func(tx *bolt.Tx) error {
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
func (s *Store) SIEMConfigFor(labels map[string]string) (c SIEMConfig, ok bool, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		cur := tx.Bucket(bucketSIEMConfigs).Cursor()
		for k, v := cur.Last(); k != nil; k, v = cur.Prev() {
			var cand SIEMConfig
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
