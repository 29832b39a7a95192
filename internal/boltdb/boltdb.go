// Package boltdb opens every bbolt file of budfleet the same way: a lock
// with a timeout and a readable "in use" error, files 0600 in a 0700
// directory, a schema version in a meta bucket, ordered append-only
// migrations run in one transaction, a backup before an upgrade, and a
// refusal to open a file written by a newer schema.
//
// Every file opened here has, besides its own buckets:
//
//	meta/
//	  schema_version   -> uint64 big-endian: the number of migrations applied
//
// A file without meta, or without schema_version in it, is at version 0.
package boltdb

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/bud-ecosystem/budfleet/pki"
)

// The meta bucket and its schema version key.
var (
	BucketMeta       = []byte("meta")
	KeySchemaVersion = []byte("schema_version")
)

// Sentinel errors of Open, for errors.Is.
var (
	// ErrLocked: another process holds the file's lock.
	ErrLocked = errors.New("locked by another process")
	// ErrNewerSchema: the file has a schema version this build does not
	// know. Nothing was changed.
	ErrNewerSchema = errors.New("written by a newer version")
	// ErrCorruptVersion: the stored schema version is not 8 bytes.
	// Nothing was changed.
	ErrCorruptVersion = errors.New("corrupt schema version")
)

// DefaultLockTimeout is the lock wait when Options.LockTimeout is 0.
const DefaultLockTimeout = time.Second

// Migration brings a file from one schema version to the next. It runs in
// the transaction that records the new version: if it fails nothing of it
// (or of the migrations before it in the same Open) is kept.
type Migration func(tx *bolt.Tx) error

// Options configure Open.
type Options struct {
	// Name says what the file is in messages ("agent state", "spool");
	// default "database".
	Name string
	// LockTimeout bounds the wait for another process's lock on the file
	// (default DefaultLockTimeout).
	LockTimeout time.Duration
	// LockHint ends the ErrLocked message with what the user can check,
	// e.g. "is another bud-agent running with the same --state-dir?".
	LockHint string
	// UpgradeHint ends the ErrNewerSchema message, e.g. "upgrade bud-agent"
	// (default "upgrade to a release that knows it").
	UpgradeHint string
	// Migrations[i] brings the file from version i to i+1. Append only:
	// the version this build writes is len(Migrations).
	Migrations []Migration

	// NoSync skips fsync (bbolt's NoSync). Tests and benchmarks only: a
	// power loss can then lose or corrupt the file.
	NoSync bool
	// FreelistType is bbolt's freelist backend; empty means bbolt's
	// default.
	FreelistType bolt.FreelistType
}

// BackupPath is where Open copies a file at version v before upgrading it.
func BackupPath(path string, v uint64) string { return fmt.Sprintf("%s.v%d.bak", path, v) }

// Open opens (creating if needed) the bbolt file at path and brings it to
// schema version len(o.Migrations). A file that already records an older
// version > 0 is first copied to BackupPath(path, version), so a failed or
// regretted upgrade can be undone by hand; the migrations then run in one
// transaction. A file with a newer version is refused with ErrNewerSchema
// and left as it was. The lock is released on every error path.
func Open(path string, o Options) (*bolt.DB, error) {
	if o.Name == "" {
		o.Name = "database"
	}
	if o.LockTimeout <= 0 {
		o.LockTimeout = DefaultLockTimeout
	}
	if o.UpgradeHint == "" {
		o.UpgradeHint = "upgrade to a release that knows it"
	}
	if err := pki.PrivateDir(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("create the directory of %s %s: %w", o.Name, path, err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:      o.LockTimeout,
		NoSync:       o.NoSync,
		FreelistType: o.FreelistType,
	})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			msg := fmt.Sprintf("%s %s is in use", o.Name, path)
			if o.LockHint != "" {
				msg += " (" + o.LockHint + ")"
			}
			return nil, fmt.Errorf("%w: %s", ErrLocked, msg)
		}
		return nil, fmt.Errorf("open %s %s: %w", o.Name, path, err)
	}
	if err := migrate(db, path, o); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

func migrate(db *bolt.DB, path string, o Options) error {
	var current uint64
	if err := db.View(func(tx *bolt.Tx) error {
		var err error
		current, err = ReadVersion(tx)
		return err
	}); err != nil {
		return fmt.Errorf("%s %s: %w", o.Name, path, err)
	}
	latest := uint64(len(o.Migrations))
	switch {
	case current > latest:
		return fmt.Errorf("%w: %s %s has schema version %d, this build knows up to %d; %s",
			ErrNewerSchema, o.Name, path, current, latest, o.UpgradeHint)
	case current == latest:
		return nil
	}
	if current > 0 {
		if err := backup(db, BackupPath(path, current)); err != nil {
			return fmt.Errorf("back up %s %s before migrating it: %w", o.Name, path, err)
		}
	}
	return db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(BucketMeta)
		if err != nil {
			return err
		}
		for v := current; v < latest; v++ {
			if err := o.Migrations[v](tx); err != nil {
				return fmt.Errorf("migrate %s %s from version %d to %d: %w", o.Name, path, v, v+1, err)
			}
		}
		return meta.Put(KeySchemaVersion, u64(latest))
	})
}

// ReadVersion returns the schema version recorded in tx's file: 0 when
// there is none, ErrCorruptVersion when it is not 8 bytes.
func ReadVersion(tx *bolt.Tx) (uint64, error) {
	b := tx.Bucket(BucketMeta)
	if b == nil {
		return 0, nil
	}
	switch v := b.Get(KeySchemaVersion); len(v) {
	case 0:
		return 0, nil
	case 8:
		return binary.BigEndian.Uint64(v), nil
	default:
		return 0, fmt.Errorf("%w (%d bytes, want 8); restore the file from a backup", ErrCorruptVersion, len(v))
	}
}

// backup writes a consistent copy of db to dst (0600): to a temporary file
// beside it first, synced, then renamed, so dst is never half written.
func backup(db *bolt.DB, dst string) error {
	f, err := os.CreateTemp(filepath.Dir(dst), filepath.Base(dst)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename this finds nothing
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if err := db.View(func(tx *bolt.Tx) error {
		_, err := tx.WriteTo(f)
		return err
	}); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(dst))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Copy returns a copy of b. A slice read in a transaction belongs to
// bbolt's memory map and is valid only until the transaction ends; copy
// what outlives it. Copy(nil) and Copy of an empty slice are nil.
func Copy(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return append([]byte(nil), b...)
}

// GetJSON decodes the JSON value at key in b into v. found is false, and v
// untouched, when there is no such key. The decoded value shares no memory
// with the transaction.
func GetJSON(b *bolt.Bucket, key []byte, v any) (found bool, err error) {
	raw := b.Get(key)
	if raw == nil {
		return false, nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return true, fmt.Errorf("decode %q: %w", key, err)
	}
	return true, nil
}

// PutJSON stores v as JSON at key in b.
func PutJSON(b *bolt.Bucket, key []byte, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %q: %w", key, err)
	}
	return b.Put(key, raw)
}

func u64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}
