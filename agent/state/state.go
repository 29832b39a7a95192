// Package state keeps the agent's durable state in bbolt: its identity and
// the commands it has run.
//
// Schema (version 2):
//
//	meta/
//	  schema_version     -> uint64 big-endian
//	identity/
//	  node_id            -> string
//	  controller         -> host:port the agent enrolled with
//	  server_name        -> name checked in the controller certificate
//	  key                -> PKCS#8 PEM private key (made here, never sent)
//	  cert               -> DER node certificate
//	  ca                 -> DER controller CA certificate
//	  hostname           -> hostname the node enrolled as
//	commands/
//	  <command id>       -> JSON CommandRecord
//	pushed/              (since version 2)
//	  siem               -> JSON PushedConfig: the controller's last
//	                        forwarding configuration, kept across restarts
//
// OpenMemory keeps the same records in memory instead, behind the same
// API, for the fleet simulator (cmd/bud-fleetsim), which runs thousands of
// agents in one process: a bbolt file (and its mmap and fsyncs) per
// virtual agent would measure the simulator's disk, not the controller.
// It keeps what the bbolt file keeps, as JSON copies, so callers see the
// same value semantics; nothing survives the process.
//
// The file is opened through internal/boltdb: meta is its bucket, an
// upgrade first copies the file to agent.db.v<old version>.bak, and a file
// from a newer bud-agent is refused. Values are copied out of transactions
// before they are returned.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/bud-ecosystem/budfleet/internal/boltdb"
)

// Bucket and key names; meta/schema_version is boltdb's.
var (
	bucketIdentity = []byte("identity")
	bucketCommands = []byte("commands")
	bucketPushed   = []byte("pushed")

	keyNodeID     = []byte("node_id")
	keyController = []byte("controller")
	keyServerName = []byte("server_name")
	keyKey        = []byte("key")
	keyCert       = []byte("cert")
	keyCA         = []byte("ca")
	keyHostname   = []byte("hostname")
)

// FileName is the state database inside the state dir.
const FileName = "agent.db"

// Sentinel errors.
var (
	ErrNotEnrolled = errors.New("agent is not enrolled")
	// ErrLocked: another process holds the state; it is boltdb.ErrLocked.
	ErrLocked = boltdb.ErrLocked
	// ErrNewerSchema: a newer bud-agent wrote the state; it is
	// boltdb.ErrNewerSchema.
	ErrNewerSchema = boltdb.ErrNewerSchema
	ErrNotFound    = errors.New("not found")
)

// migrations[i] brings the state from schema version i to i+1. Append only.
var migrations = []boltdb.Migration{
	// 0 -> 1: identity and command records.
	func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketIdentity, bucketCommands} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	},
	// 1 -> 2: the controller's pushed configurations.
	func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketPushed)
		return err
	},
}

// DB is the agent's state database: a bbolt file (Open) or memory
// (OpenMemory).
type DB struct {
	db  *bolt.DB
	mem *memory
}

// memory is OpenMemory's store: the buckets as maps of encoded values.
type memory struct {
	mu       sync.Mutex
	identity Identity
	// commands are copies (memRecord): JSON, as in the bucket, was a
	// tenth of a simulator's CPU in a fan-out to 10,000 agents.
	commands map[string]CommandRecord
	pushed   []byte // JSON PushedConfig; nil when none
}

// OpenMemory returns a state held in memory: an empty one, as Open makes
// in a new dir. It is for simulators and tests; an agent on a node uses
// Open, since its identity and command records must survive a restart.
func OpenMemory() *DB {
	return &DB{mem: &memory{commands: map[string]CommandRecord{}}}
}

// Open opens the state in dir, creating it if needed. A second process
// opening the same dir waits up to lockTimeout (0: a second) and then fails
// with ErrLocked.
func Open(dir string, lockTimeout time.Duration) (*DB, error) {
	db, err := boltdb.Open(filepath.Join(dir, FileName), boltdb.Options{
		Name:        "agent state",
		LockTimeout: lockTimeout,
		LockHint:    "is another bud-agent running with the same --state-dir?",
		UpgradeHint: "upgrade bud-agent",
		Migrations:  migrations,
	})
	if err != nil {
		return nil, err
	}
	return &DB{db: db}, nil
}

// Close closes the database.
func (d *DB) Close() error {
	if d.mem != nil {
		return nil
	}
	return d.db.Close()
}

func cloneBytes(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte(nil), b...)
}

func (id Identity) clone() Identity {
	id.KeyPEM, id.CertDER, id.CADER = cloneBytes(id.KeyPEM), cloneBytes(id.CertDER), cloneBytes(id.CADER)
	return id
}

// Identity is what the agent holds after enrolling.
type Identity struct {
	NodeID     string
	Controller string
	ServerName string
	KeyPEM     []byte
	CertDER    []byte
	CADER      []byte
	Hostname   string
}

// SaveIdentity replaces the identity.
func (d *DB) SaveIdentity(id Identity) error {
	if m := d.mem; m != nil {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.identity = id.clone()
		return nil
	}
	return d.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketIdentity)
		for k, v := range map[string][]byte{
			string(keyNodeID): []byte(id.NodeID), string(keyController): []byte(id.Controller),
			string(keyServerName): []byte(id.ServerName), string(keyKey): id.KeyPEM,
			string(keyCert): id.CertDER, string(keyCA): id.CADER, string(keyHostname): []byte(id.Hostname),
		} {
			if err := b.Put([]byte(k), v); err != nil {
				return err
			}
		}
		return nil
	})
}

// Identity returns the stored identity or ErrNotEnrolled.
func (d *DB) Identity() (Identity, error) {
	var id Identity
	var err error
	if m := d.mem; m != nil {
		m.mu.Lock()
		id = m.identity.clone()
		m.mu.Unlock()
	} else {
		err = d.db.View(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketIdentity)
			cp := func(k []byte) []byte { return boltdb.Copy(b.Get(k)) }
			id = Identity{
				NodeID: string(b.Get(keyNodeID)), Controller: string(b.Get(keyController)),
				ServerName: string(b.Get(keyServerName)), KeyPEM: cp(keyKey), CertDER: cp(keyCert), CADER: cp(keyCA),
				Hostname: string(b.Get(keyHostname)),
			}
			return nil
		})
	}
	if err == nil && (id.NodeID == "" || len(id.CertDER) == 0) {
		return id, ErrNotEnrolled
	}
	return id, err
}

// UpdateCertificate stores a renewed certificate.
func (d *DB) UpdateCertificate(der []byte) error {
	if m := d.mem; m != nil {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.identity.CertDER = cloneBytes(der)
		return nil
	}
	return d.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketIdentity).Put(keyCert, der) })
}

// CommandRecord is what the agent remembers of a command it was given.
type CommandRecord struct {
	ID         string            `json:"id"`
	Kind       string            `json:"kind"`
	StartedAt  time.Time         `json:"started_at"`
	FinishedAt time.Time         `json:"finished_at,omitzero"`
	Success    bool              `json:"success"`
	Message    string            `json:"message,omitempty"`
	Output     map[string]string `json:"output,omitempty"`
	Deliveries uint32            `json:"deliveries"`
}

// Finished reports whether the command ran to an end.
func (r CommandRecord) Finished() bool { return !r.FinishedAt.IsZero() }

// BeginCommand records that a command was delivered and returns what was
// known of it before. first is true when the command was never seen: only
// then may it run. The record is durable before BeginCommand returns, so a
// crash while running shows up as started-but-not-finished and the command is
// not run a second time.
func (d *DB) BeginCommand(id, kind string, now time.Time) (rec CommandRecord, first bool, err error) {
	if m := d.mem; m != nil {
		m.mu.Lock()
		defer m.mu.Unlock()
		if v, ok := m.commands[id]; ok {
			rec = memRecord(v)
		} else {
			rec = CommandRecord{ID: id, Kind: kind, StartedAt: now}
			first = true
		}
		rec.Deliveries++
		m.commands[id] = memRecord(rec)
		return rec, first, nil
	}
	err = d.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketCommands)
		found, err := boltdb.GetJSON(b, []byte(id), &rec)
		if err != nil {
			return err
		}
		if !found {
			rec = CommandRecord{ID: id, Kind: kind, StartedAt: now}
			first = true
		}
		rec.Deliveries++
		return boltdb.PutJSON(b, []byte(id), rec)
	})
	return rec, first, err
}

// FinishCommand stores a command's result.
func (d *DB) FinishCommand(rec CommandRecord) error {
	if m := d.mem; m != nil {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.commands[rec.ID] = memRecord(rec)
		return nil
	}
	return d.db.Update(func(tx *bolt.Tx) error {
		return boltdb.PutJSON(tx.Bucket(bucketCommands), []byte(rec.ID), rec)
	})
}

// memRecord is rec as a copy that shares nothing with the caller's, as
// JSON through the bucket gives: no monotonic clock reading, its own
// Output map, nil when empty.
func memRecord(rec CommandRecord) CommandRecord {
	rec.StartedAt, rec.FinishedAt = rec.StartedAt.Round(0), rec.FinishedAt.Round(0)
	if len(rec.Output) == 0 {
		rec.Output = nil
	} else {
		rec.Output = maps.Clone(rec.Output)
	}
	return rec
}

// Command returns the record of one command.
func (d *DB) Command(id string) (CommandRecord, error) {
	var rec CommandRecord
	if m := d.mem; m != nil {
		m.mu.Lock()
		v, ok := m.commands[id]
		m.mu.Unlock()
		if !ok {
			return rec, fmt.Errorf("command %s: %w", id, ErrNotFound)
		}
		return memRecord(v), nil
	}
	err := d.db.View(func(tx *bolt.Tx) error {
		found, err := boltdb.GetJSON(tx.Bucket(bucketCommands), []byte(id), &rec)
		if err == nil && !found {
			err = fmt.Errorf("command %s: %w", id, ErrNotFound)
		}
		return err
	})
	return rec, err
}

// PruneCommands forgets records finished before cutoff; the controller never
// redelivers a command it has a result for, so old records are dead weight.
func (d *DB) PruneCommands(cutoff time.Time) (int, error) {
	n := 0
	if m := d.mem; m != nil {
		m.mu.Lock()
		defer m.mu.Unlock()
		for id, rec := range m.commands {
			if rec.Finished() && rec.FinishedAt.Before(cutoff) {
				delete(m.commands, id)
				n++
			}
		}
		return n, nil
	}
	err := d.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketCommands)
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			var rec CommandRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return err
			}
			if rec.Finished() && rec.FinishedAt.Before(cutoff) {
				if err := c.Delete(); err != nil {
					return err
				}
				n++
			}
		}
		return nil
	})
	return n, err
}

// PushedConfig is a configuration the controller sent.
type PushedConfig struct {
	Version uint64 `json:"version"`
	YAML    []byte `json:"yaml"`
}

var keyPushedSIEM = []byte("siem")

// SavePushedSIEM stores the controller's forwarding configuration.
func (d *DB) SavePushedSIEM(c PushedConfig) error {
	if m := d.mem; m != nil {
		v, err := json.Marshal(c)
		if err != nil {
			return err
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		m.pushed = v
		return nil
	}
	return d.db.Update(func(tx *bolt.Tx) error {
		return boltdb.PutJSON(tx.Bucket(bucketPushed), keyPushedSIEM, c)
	})
}

// PushedSIEM returns the stored configuration; ok is false when none is.
func (d *DB) PushedSIEM() (c PushedConfig, ok bool, err error) {
	if m := d.mem; m != nil {
		m.mu.Lock()
		v := m.pushed
		m.mu.Unlock()
		if v == nil {
			return c, false, nil
		}
		return c, true, json.Unmarshal(v, &c)
	}
	err = d.db.View(func(tx *bolt.Tx) error {
		ok, err = boltdb.GetJSON(tx.Bucket(bucketPushed), keyPushedSIEM, &c)
		return err
	})
	return c, ok, err
}

// Dir is the state directory: the node's key and certificate live in it,
// so nothing the controller configures may read from it. A state in
// memory has none: "".
func (d *DB) Dir() string {
	if d.mem != nil {
		return ""
	}
	return filepath.Dir(d.db.Path())
}
