package boltdb

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// bucketMigration creates bucket name and records that it ran in *log.
func bucketMigration(name string, log *[]string) Migration {
	return func(tx *bolt.Tx) error {
		*log = append(*log, name)
		_, err := tx.CreateBucket([]byte(name))
		return err
	}
}

func open(t *testing.T, path string, o Options) *bolt.DB {
	t.Helper()
	if o.LockTimeout == 0 {
		o.LockTimeout = 200 * time.Millisecond
	}
	db, err := Open(path, o)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	return db
}

// raw opens path with bbolt directly (read-only, so it must not be held).
func raw(t *testing.T, path string) *bolt.DB {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Fatalf("bolt.Open(%s): %v", path, err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// rawState returns the file's schema version and its top-level buckets.
func rawState(t *testing.T, path string) (uint64, []string) {
	t.Helper()
	db := raw(t, path)
	defer db.Close()
	var v uint64
	var names []string
	if err := db.View(func(tx *bolt.Tx) error {
		var err error
		if v, err = ReadVersion(tx); err != nil {
			return err
		}
		return tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
			names = append(names, string(name))
			return nil
		})
	}); err != nil {
		t.Fatal(err)
	}
	return v, names
}

// writeRaw creates a bbolt file at path and runs fn in one transaction.
func writeRaw(t *testing.T, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(fn); err != nil {
		db.Close()
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

func putVersion(v []byte) func(tx *bolt.Tx) error {
	return func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(BucketMeta)
		if err != nil {
			return err
		}
		return b.Put(KeySchemaVersion, v)
	}
}

func backups(t *testing.T, path string) []string {
	t.Helper()
	m, err := filepath.Glob(path + ".v*.bak*")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestOpenCreatesPrivateFileAndDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	path := filepath.Join(dir, "x.db")
	var log []string
	db := open(t, path, Options{Migrations: []Migration{bucketMigration("one", &log)}})
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if m := fi.Mode().Perm(); m != 0o600 {
		t.Errorf("file mode %o, want 600", m)
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if m := di.Mode().Perm(); m != 0o700 {
		t.Errorf("dir mode %o, want 700", m)
	}
	v, buckets := rawState(t, path)
	if v != 1 || !reflect.DeepEqual(buckets, []string{"meta", "one"}) {
		t.Errorf("version %d, buckets %v; want 1, [meta one]", v, buckets)
	}
	// The version is 8 bytes big-endian.
	rdb := raw(t, path)
	_ = rdb.View(func(tx *bolt.Tx) error {
		if got := tx.Bucket(BucketMeta).Get(KeySchemaVersion); !bytes.Equal(got, []byte{0, 0, 0, 0, 0, 0, 0, 1}) {
			t.Errorf("schema_version bytes = %x", got)
		}
		return nil
	})
}

func TestOpenLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	first := open(t, path, Options{})
	const timeout = 150 * time.Millisecond
	start := time.Now()
	second, err := Open(path, Options{Name: "agent state", LockTimeout: timeout, LockHint: "is another bud-agent running with the same --state-dir?"})
	elapsed := time.Since(start)
	if err == nil {
		second.Close()
		t.Fatal("second Open of a held file succeeded")
	}
	if !errors.Is(err, ErrLocked) {
		t.Errorf("err = %v, want ErrLocked", err)
	}
	for _, want := range []string{path, "in use", "agent state", "another bud-agent running with the same --state-dir?"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("err = %q, want it to mention %q", err, want)
		}
	}
	if elapsed < timeout/2 || elapsed > timeout+2*time.Second {
		t.Errorf("second Open took %v, want about %v", elapsed, timeout)
	}
	// Without a hint the message says no more than it knows.
	if _, err := Open(path, Options{LockTimeout: 10 * time.Millisecond}); !errors.Is(err, ErrLocked) || strings.Contains(err.Error(), "(") {
		t.Errorf("err without hint = %v", err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	open(t, path, Options{}).Close()
}

func TestOpenGarbage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	if err := os.WriteFile(path, bytes.Repeat([]byte("not a bolt file "), 1024), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(path, Options{Name: "spool", LockTimeout: 100 * time.Millisecond})
	if err == nil || errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "spool") {
		t.Errorf("err = %v, want a non-lock error naming the spool and %s", err, path)
	}
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	writeRaw(t, path, func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucket([]byte("future")); err != nil {
			return err
		}
		return putVersion(u64(3))(tx)
	})
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var log []string
	_, err = Open(path, Options{Name: "agent state", UpgradeHint: "upgrade bud-agent", Migrations: []Migration{bucketMigration("one", &log), bucketMigration("two", &log)}})
	if !errors.Is(err, ErrNewerSchema) {
		t.Fatalf("err = %v, want ErrNewerSchema", err)
	}
	for _, want := range []string{path, "schema version 3", "knows up to 2", "upgrade bud-agent"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("err = %q, want it to mention %q", err, want)
		}
	}
	if len(log) != 0 {
		t.Errorf("migrations ran: %v", log)
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Error("refused file was modified")
	}
	if b := backups(t, path); len(b) != 0 {
		t.Errorf("backups written: %v", b)
	}
	// The default hint names no program.
	_, err = Open(path, Options{})
	if !errors.Is(err, ErrNewerSchema) || !strings.Contains(err.Error(), "upgrade to a release") {
		t.Errorf("err = %v", err)
	}
	// The lock was released.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatalf("file still locked after a refused Open: %v", err)
	}
	db.Close()
}

func TestOpenRefusesCorruptVersion(t *testing.T) {
	for _, v := range [][]byte{{1}, {0, 0, 0, 0, 0, 0, 0, 0, 1}, []byte("two")} {
		t.Run(fmt.Sprintf("%d bytes", len(v)), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "x.db")
			writeRaw(t, path, putVersion(v))
			before, _ := os.ReadFile(path)
			var log []string
			_, err := Open(path, Options{Name: "agent state", Migrations: []Migration{bucketMigration("one", &log)}})
			if !errors.Is(err, ErrCorruptVersion) {
				t.Fatalf("err = %v, want ErrCorruptVersion", err)
			}
			for _, want := range []string{path, "corrupt schema version", fmt.Sprintf("%d bytes", len(v))} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("err = %q, want it to mention %q", err, want)
				}
			}
			if len(log) != 0 {
				t.Errorf("migrations ran over a corrupt version: %v", log)
			}
			if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
				t.Error("file was modified")
			}
		})
	}
}

func TestMigrationsRunOnceInOrder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	var log []string
	var migs []Migration
	for _, name := range []string{"a", "b"} {
		migs = append(migs, bucketMigration(name, &log))
	}
	open(t, path, Options{Migrations: migs}).Close()
	if want := []string{"a", "b"}; !reflect.DeepEqual(log, want) {
		t.Fatalf("ran %v, want %v", log, want)
	}
	// Reopening at the same version runs nothing (CreateBucket would fail).
	open(t, path, Options{Migrations: migs}).Close()
	if len(log) != 2 {
		t.Fatalf("reopen ran migrations again: %v", log)
	}
	// A newer build runs only what is new, in order, and sees the earlier
	// migrations' work.
	var sawA, sawB bool
	migs = append(migs, bucketMigration("c", &log), func(tx *bolt.Tx) error {
		log = append(log, "d")
		sawA, sawB = tx.Bucket([]byte("a")) != nil, tx.Bucket([]byte("c")) != nil
		return nil
	})
	open(t, path, Options{Migrations: migs}).Close()
	if want := []string{"a", "b", "c", "d"}; !reflect.DeepEqual(log, want) {
		t.Fatalf("ran %v, want %v", log, want)
	}
	if !sawA || !sawB {
		t.Error("a later migration did not see the earlier ones")
	}
	if v, buckets := rawState(t, path); v != 4 || !reflect.DeepEqual(buckets, []string{"a", "b", "c", "meta"}) {
		t.Errorf("version %d, buckets %v", v, buckets)
	}
}

func TestMigrateFromVersionZero(t *testing.T) {
	cases := []struct {
		name string
		prep func(tx *bolt.Tx) error
	}{
		{"empty file", func(*bolt.Tx) error { return nil }},
		{"meta without version", func(tx *bolt.Tx) error { _, err := tx.CreateBucket(BucketMeta); return err }},
		{"explicit version 0", putVersion(u64(0))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "x.db")
			writeRaw(t, path, tc.prep)
			var log []string
			open(t, path, Options{Migrations: []Migration{bucketMigration("a", &log)}}).Close()
			if !reflect.DeepEqual(log, []string{"a"}) {
				t.Errorf("ran %v", log)
			}
			if v, _ := rawState(t, path); v != 1 {
				t.Errorf("version %d, want 1", v)
			}
			if b := backups(t, path); len(b) != 0 {
				t.Errorf("version 0 was backed up: %v", b)
			}
		})
	}
}

func TestBackupOnlyWhenUpgrading(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	var log []string
	migs := []Migration{bucketMigration("a", &log)}
	// A new file: nothing to back up.
	db := open(t, path, Options{Migrations: migs})
	if err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("a")).Put([]byte("k"), []byte("v1 data")) }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if b := backups(t, path); len(b) != 0 {
		t.Fatalf("new file backed up: %v", b)
	}
	// Same version: nothing to back up.
	open(t, path, Options{Migrations: migs}).Close()
	if b := backups(t, path); len(b) != 0 {
		t.Fatalf("reopen backed up: %v", b)
	}
	// Upgrade 1 -> 2: a copy of the version-1 file.
	migs = append(migs, func(tx *bolt.Tx) error { return tx.Bucket([]byte("a")).Put([]byte("k"), []byte("v2 data")) })
	open(t, path, Options{Migrations: migs}).Close()
	want := BackupPath(path, 1)
	if got := backups(t, path); !reflect.DeepEqual(got, []string{want}) {
		t.Fatalf("backups %v, want [%s]", got, want)
	}
	if want != path+".v1.bak" {
		t.Errorf("BackupPath = %s", want)
	}
	fi, err := os.Stat(want)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("backup mode %o, want 600", fi.Mode().Perm())
	}
	if v, _ := rawState(t, want); v != 1 {
		t.Errorf("backup version %d, want 1", v)
	}
	bdb := raw(t, want)
	_ = bdb.View(func(tx *bolt.Tx) error {
		if got := string(tx.Bucket([]byte("a")).Get([]byte("k"))); got != "v1 data" {
			t.Errorf("backup holds %q, want the data from before the upgrade", got)
		}
		return nil
	})
	if v, _ := rawState(t, path); v != 2 {
		t.Errorf("file version %d, want 2", v)
	}
}

func TestFailingMigrationRollsBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	var log []string
	open(t, path, Options{Migrations: []Migration{bucketMigration("a", &log)}}).Close()

	boom := errors.New("boom")
	migs := []Migration{
		bucketMigration("a", &log),
		bucketMigration("b", &log), // succeeds, then is undone with the rest
		func(tx *bolt.Tx) error {
			if _, err := tx.CreateBucket([]byte("half")); err != nil {
				return err
			}
			if err := tx.Bucket(BucketMeta).Put(KeySchemaVersion, u64(99)); err != nil {
				return err
			}
			return boom
		},
	}
	_, err := Open(path, Options{Name: "spool", Migrations: migs, LockTimeout: 100 * time.Millisecond})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want the migration's error", err)
	}
	for _, want := range []string{"from version 2 to 3", "spool", path} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("err = %q, want it to mention %q", err, want)
		}
	}
	v, buckets := rawState(t, path)
	if v != 1 || !reflect.DeepEqual(buckets, []string{"a", "meta"}) {
		t.Errorf("after a failed upgrade: version %d, buckets %v; want 1, [a meta]", v, buckets)
	}
	if got := backups(t, path); !reflect.DeepEqual(got, []string{BackupPath(path, 1)}) {
		t.Errorf("backups %v, want the version-1 copy", got)
	}
	// The lock was released, and a fixed build upgrades the file.
	migs[2] = bucketMigration("c", &log)
	open(t, path, Options{Migrations: migs}).Close()
	if v, buckets := rawState(t, path); v != 3 || !slices.Contains(buckets, "b") || slices.Contains(buckets, "half") {
		t.Errorf("after the fixed upgrade: version %d, buckets %v", v, buckets)
	}
}

func TestOptionsPassedToBolt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	db := open(t, path, Options{NoSync: true, FreelistType: bolt.FreelistMapType})
	defer db.Close()
	if !db.NoSync {
		t.Error("NoSync not passed to bbolt")
	}
	if db.FreelistType != bolt.FreelistMapType {
		t.Errorf("FreelistType = %q, want %q", db.FreelistType, bolt.FreelistMapType)
	}
	db2 := open(t, filepath.Join(t.TempDir(), "y.db"), Options{})
	defer db2.Close()
	if db2.NoSync {
		t.Error("NoSync set by default")
	}
}

func TestCopyAndJSON(t *testing.T) {
	if Copy(nil) != nil || Copy([]byte{}) != nil {
		t.Error("Copy of nothing is not nil")
	}
	path := filepath.Join(t.TempDir(), "x.db")
	db := open(t, path, Options{Migrations: []Migration{func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("b")); return err }}})
	defer db.Close()
	type rec struct {
		Name string            `json:"name"`
		M    map[string]string `json:"m,omitempty"`
	}
	in := rec{Name: "x", M: map[string]string{"k": "v"}}
	if err := db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("b"))
		if err := b.Put([]byte("raw"), []byte("bytes")); err != nil {
			return err
		}
		return PutJSON(b, []byte("j"), in)
	}); err != nil {
		t.Fatal(err)
	}
	var cp []byte
	var out, untouched rec
	untouched.Name = "keep"
	if err := db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("b"))
		cp = Copy(b.Get([]byte("raw")))
		if found, err := GetJSON(b, []byte("j"), &out); !found || err != nil {
			return fmt.Errorf("GetJSON = %v, %v", found, err)
		}
		if found, err := GetJSON(b, []byte("nope"), &untouched); found || err != nil {
			return fmt.Errorf("GetJSON(absent) = %v, %v", found, err)
		}
		if found, err := GetJSON(b, []byte("raw"), &out); !found || err == nil || !strings.Contains(err.Error(), "raw") {
			return fmt.Errorf("GetJSON(not JSON) = %v, %v; want an error naming the key", found, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Written after the transaction, so the copy must not alias the map.
	if err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("b")).Put([]byte("raw"), []byte("other")) }); err != nil {
		t.Fatal(err)
	}
	if string(cp) != "bytes" {
		t.Errorf("copy = %q", cp)
	}
	if !reflect.DeepEqual(out, in) || untouched.Name != "keep" {
		t.Errorf("GetJSON decoded %+v (absent: %+v)", out, untouched)
	}
}

func TestReadVersion(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, 1<<40+7)
	writeRaw(t, path, putVersion(b))
	if v, _ := rawState(t, path); v != 1<<40+7 {
		t.Errorf("ReadVersion = %d", v)
	}
}
