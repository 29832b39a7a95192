package state

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/bud-ecosystem/budfleet/internal/boltdb"
)

// base is a fixed UTC instant without a monotonic reading, so it survives
// the JSON round trip through the state unchanged.
var base = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func open(t *testing.T, dir string) *DB {
	t.Helper()
	db, err := Open(dir, 200*time.Millisecond)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	return db
}

// newDB opens a fresh state in a temp dir, closed at cleanup, and returns it
// with its dir.
func newDB(t *testing.T) (*DB, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "state")
	db := open(t, dir)
	t.Cleanup(func() { db.Close() })
	return db, dir
}

func TestOpenCreatesPrivateDirAndFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "state")
	db := open(t, dir)
	defer db.Close()

	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := di.Mode().Perm(); got != 0o700 {
		t.Errorf("state dir mode = %o, want 700", got)
	}
	fi, err := os.Stat(filepath.Join(dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("%s mode = %o, want 600", FileName, got)
	}
}

func TestOpenLockedBySecondOpener(t *testing.T) {
	db, dir := newDB(t)
	_ = db

	start := time.Now()
	db2, err := Open(dir, 200*time.Millisecond)
	elapsed := time.Since(start)
	if err == nil {
		db2.Close()
		t.Fatal("second Open on the same dir succeeded; want ErrLocked")
	}
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: %v; want ErrLocked", err)
	}
	path := filepath.Join(dir, FileName)
	if !strings.Contains(err.Error(), path) {
		t.Errorf("error %q does not name the path %s", err, path)
	}
	if !strings.Contains(err.Error(), "another bud-agent") {
		t.Errorf("error %q does not mention another bud-agent", err)
	}
	if elapsed > 5*time.Second {
		t.Errorf("second Open took %s with a 200ms lock timeout", elapsed)
	}

	// Once the first holder closes, the state can be opened again.
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db3 := open(t, dir)
	db3.Close()
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	open(t, dir).Close()

	// A newer bud-agent wrote the state.
	path := filepath.Join(dir, FileName)
	raw, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := raw.Update(func(tx *bolt.Tx) error {
		b := make([]byte, 8)
		binary.BigEndian.PutUint64(b, uint64(len(migrations))+1)
		return tx.Bucket(boltdb.BucketMeta).Put(boltdb.KeySchemaVersion, b)
	}); err != nil {
		t.Fatal(err)
	}
	raw.Close()

	db, err := Open(dir, 200*time.Millisecond)
	if err == nil {
		db.Close()
		t.Fatal("Open of a newer-schema state succeeded")
	}
	if !strings.Contains(err.Error(), fmt.Sprintf("schema version %d", len(migrations)+1)) || !strings.Contains(err.Error(), "upgrade bud-agent") {
		t.Errorf("error %q should name the version and say to upgrade", err)
	}
	// The refusal released the lock and left the version alone.
	raw, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Fatalf("state still locked after a refused Open: %v", err)
	}
	defer raw.Close()
	_ = raw.View(func(tx *bolt.Tx) error {
		if v := binary.BigEndian.Uint64(tx.Bucket(boltdb.BucketMeta).Get(boltdb.KeySchemaVersion)); v != uint64(len(migrations))+1 {
			t.Errorf("schema version rewritten to %d", v)
		}
		return nil
	})
}

// A schema version of the wrong length is corruption, not version 0: the
// migrations must not be replayed over the data.
func TestOpenRefusesCorruptSchemaVersion(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	db := open(t, dir)
	if err := db.SaveIdentity(Identity{NodeID: "n1", CertDER: []byte("cert")}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	path := filepath.Join(dir, FileName)
	raw, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := raw.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(boltdb.BucketMeta).Put(boltdb.KeySchemaVersion, []byte{2})
	}); err != nil {
		t.Fatal(err)
	}
	raw.Close()
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	db, err = Open(dir, 200*time.Millisecond)
	if err == nil {
		db.Close()
		t.Fatal("Open of a state with a 1-byte schema version succeeded")
	}
	if !errors.Is(err, boltdb.ErrCorruptVersion) || !strings.Contains(err.Error(), "corrupt schema version") || !strings.Contains(err.Error(), path) {
		t.Errorf("err = %v, want a corrupt schema version error naming %s", err, path)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Error("the state file was modified")
	}
}

func TestOpenWritesSchemaVersionAndReopens(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	open(t, dir).Close()
	open(t, dir).Close() // reopening the current version is fine

	raw, err := bolt.Open(filepath.Join(dir, FileName), 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(boltdb.BucketMeta).Get(boltdb.KeySchemaVersion)
		if len(v) != 8 || binary.BigEndian.Uint64(v) != uint64(len(migrations)) {
			t.Errorf("schema_version = %x, want %d", v, len(migrations))
		}
		for _, b := range [][]byte{bucketIdentity, bucketCommands} {
			if tx.Bucket(b) == nil {
				t.Errorf("bucket %s missing", b)
			}
		}
		return nil
	})
}

func TestIdentityBeforeEnrolling(t *testing.T) {
	db, _ := newDB(t)
	if _, err := db.Identity(); !errors.Is(err, ErrNotEnrolled) {
		t.Fatalf("Identity on a fresh state: %v; want ErrNotEnrolled", err)
	}
	// A node id without a certificate is not an identity either.
	if err := db.SaveIdentity(Identity{NodeID: "n1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Identity(); !errors.Is(err, ErrNotEnrolled) {
		t.Fatalf("Identity without a certificate: %v; want ErrNotEnrolled", err)
	}
}

func testIdentity() Identity {
	return Identity{
		NodeID:     "6f1c2a9e-1111-4222-8333-444455556666",
		Controller: "ctrl.example.com:7443",
		ServerName: "ctrl.example.com",
		KeyPEM:     []byte("-----BEGIN PRIVATE KEY-----\nkey\n-----END PRIVATE KEY-----\n"),
		CertDER:    []byte{0x30, 0x82, 0x01, 0x02},
		CADER:      []byte{0x30, 0x82, 0x09, 0x09},
	}
}

func TestIdentityRoundTripSurvivesReopen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	db := open(t, dir)
	want := testIdentity()
	if err := db.SaveIdentity(want); err != nil {
		t.Fatal(err)
	}
	got, err := db.Identity()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Identity = %+v, want %+v", got, want)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	db = open(t, dir)
	defer db.Close()
	got, err = db.Identity()
	if err != nil {
		t.Fatalf("Identity after reopen: %v", err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Identity after reopen = %+v, want %+v", got, want)
	}

	// The returned slices are copies, not views into the database.
	got.CertDER[0] = 0xff
	again, _ := db.Identity()
	if again.CertDER[0] != want.CertDER[0] {
		t.Error("Identity returned a slice aliasing the database")
	}
}

func TestUpdateCertificate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	db := open(t, dir)
	id := testIdentity()
	if err := db.SaveIdentity(id); err != nil {
		t.Fatal(err)
	}
	renewed := []byte{0x30, 0x82, 0x07, 0x07, 0x07}
	if err := db.UpdateCertificate(renewed); err != nil {
		t.Fatal(err)
	}
	db.Close()

	db = open(t, dir)
	defer db.Close()
	got, err := db.Identity()
	if err != nil {
		t.Fatal(err)
	}
	want := id
	want.CertDER = renewed
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("after UpdateCertificate: %+v, want %+v (only the certificate changes)", got, want)
	}
}

func TestBeginCommandCountsDeliveriesAcrossRestart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	db := open(t, dir)

	rec, first, err := db.BeginCommand("c1", "inventory.collect", base)
	if err != nil {
		t.Fatal(err)
	}
	if !first {
		t.Fatal("first delivery: first = false")
	}
	if rec.ID != "c1" || rec.Kind != "inventory.collect" || !rec.StartedAt.Equal(base) || rec.Deliveries != 1 || rec.Finished() {
		t.Fatalf("first delivery record = %+v", rec)
	}

	rec, first, err = db.BeginCommand("c1", "inventory.collect", base.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if first {
		t.Fatal("second delivery: first = true; the command would run twice")
	}
	if rec.Deliveries != 2 || !rec.StartedAt.Equal(base) {
		t.Fatalf("second delivery record = %+v; want deliveries 2 and the first start time", rec)
	}

	// An agent restart: the record, begun but not finished, is still there.
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db = open(t, dir)
	defer db.Close()
	rec, first, err = db.BeginCommand("c1", "inventory.collect", base.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if first {
		t.Fatal("delivery after restart: first = true; the command would run twice")
	}
	if rec.Deliveries != 3 || rec.Finished() || !rec.StartedAt.Equal(base) {
		t.Fatalf("delivery after restart = %+v; want deliveries 3, unfinished", rec)
	}
	stored, err := db.Command("c1")
	if err != nil {
		t.Fatal(err)
	}
	if stored.Deliveries != 3 {
		t.Errorf("stored deliveries = %d, want 3", stored.Deliveries)
	}

	// Another id is independent.
	rec, first, err = db.BeginCommand("c2", "x", base)
	if err != nil || !first || rec.Deliveries != 1 {
		t.Fatalf("other command: rec %+v first %v err %v", rec, first, err)
	}
}

func TestFinishCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	db := open(t, dir)
	if _, err := db.Command("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Command(unknown) = %v; want ErrNotFound", err)
	}
	rec, _, err := db.BeginCommand("c1", "k", base)
	if err != nil {
		t.Fatal(err)
	}
	rec.FinishedAt = base.Add(3 * time.Second)
	rec.Success = true
	rec.Message = "done"
	rec.Output = map[string]string{"a": "b"}
	if err := db.FinishCommand(rec); err != nil {
		t.Fatal(err)
	}
	db.Close()

	db = open(t, dir)
	defer db.Close()
	got, err := db.Command("c1")
	if err != nil {
		t.Fatal(err)
	}
	if !got.Finished() || !got.FinishedAt.Equal(rec.FinishedAt) || !got.Success || got.Message != "done" || !reflect.DeepEqual(got.Output, rec.Output) || got.Deliveries != 1 {
		t.Fatalf("stored record = %+v, want %+v", got, rec)
	}
	// A redelivery returns the stored result and counts the delivery.
	again, first, err := db.BeginCommand("c1", "k", base.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if first || !again.Finished() || !again.Success || again.Message != "done" || again.Deliveries != 2 {
		t.Fatalf("redelivery of a finished command = %+v first=%v", again, first)
	}
}

func TestPruneCommands(t *testing.T) {
	db, _ := newDB(t)
	cutoff := base.Add(24 * time.Hour)

	finish := func(id string, at time.Time) {
		t.Helper()
		rec, _, err := db.BeginCommand(id, "k", base)
		if err != nil {
			t.Fatal(err)
		}
		rec.FinishedAt = at
		rec.Success = true
		if err := db.FinishCommand(rec); err != nil {
			t.Fatal(err)
		}
	}
	var wantPruned, wantKept []string
	// Many old finished records side by side, interleaved with ones to keep,
	// so a cursor that skips after a delete would leave some behind.
	for i := 0; i < 150; i++ {
		id := fmt.Sprintf("c%03d", i) // key order follows i
		switch i % 5 {
		case 0, 1, 2: // finished before the cutoff
			finish(id, cutoff.Add(-time.Duration(i+1)*time.Minute))
			wantPruned = append(wantPruned, id)
		case 3: // finished after the cutoff
			finish(id, cutoff.Add(time.Minute))
			wantKept = append(wantKept, id)
		case 4: // begun long ago but never finished
			if _, _, err := db.BeginCommand(id, "k", base.Add(-48*time.Hour)); err != nil {
				t.Fatal(err)
			}
			wantKept = append(wantKept, id)
		}
	}
	// Finished exactly at the cutoff is not before it.
	finish("z-at-cutoff", cutoff)
	wantKept = append(wantKept, "z-at-cutoff")

	n, err := db.PruneCommands(cutoff)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(wantPruned) {
		t.Errorf("PruneCommands = %d, want %d", n, len(wantPruned))
	}
	for _, id := range wantPruned {
		if _, err := db.Command(id); !errors.Is(err, ErrNotFound) {
			t.Errorf("record %s finished before the cutoff was kept (err %v)", id, err)
		}
	}
	for _, id := range wantKept {
		if _, err := db.Command(id); err != nil {
			t.Errorf("record %s should be kept: %v", id, err)
		}
	}
	// Nothing more to prune.
	if n, err := db.PruneCommands(cutoff); err != nil || n != 0 {
		t.Errorf("second PruneCommands = %d, %v; want 0", n, err)
	}
}
