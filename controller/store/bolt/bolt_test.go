package bolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/controller/store/storetest"
	hostv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/host/v1"
)

// TestConformance runs the store suite against bbolt.
func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { s, _ := newStore(t); return s })
}

// base is a fixed UTC instant with no monotonic reading, so values survive
// the JSON round trip through the store unchanged and compare with
// reflect.DeepEqual.
var base = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func openStore(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(path, Options{LockTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	return s
}

// newStore opens a fresh store in a temp dir that is closed at cleanup.
func newStore(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state.db")
	s := openStore(t, path)
	t.Cleanup(func() { s.Close() })
	return s, path
}

// rawSchemaVersion opens path with bbolt directly (the store must be closed)
// and returns meta/schema_version, and whether the meta bucket and key exist.
func rawSchemaVersion(t *testing.T, path string) (uint64, bool) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Fatalf("bbolt.Open(%s): %v", path, err)
	}
	defer db.Close()
	var v uint64
	var ok bool
	if err := db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketMeta)
		if b == nil {
			return nil
		}
		raw := b.Get(keySchemaVersion)
		if len(raw) != 8 {
			return fmt.Errorf("schema_version is %d bytes, want 8", len(raw))
		}
		v, ok = binary.BigEndian.Uint64(raw), true
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return v, ok
}

// rawBuckets lists the top-level buckets of the bbolt file at path.
func rawBuckets(t *testing.T, path string) []string {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Fatalf("bbolt.Open(%s): %v", path, err)
	}
	defer db.Close()
	var names []string
	if err := db.View(func(tx *bbolt.Tx) error {
		return tx.ForEach(func(name []byte, _ *bbolt.Bucket) error {
			names = append(names, string(name))
			return nil
		})
	}); err != nil {
		t.Fatal(err)
	}
	return names
}

// writeRaw creates a bbolt file at path and runs fn in one write transaction.
func writeRaw(t *testing.T, path string, fn func(tx *bbolt.Tx) error) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatalf("bbolt.Open(%s): %v", path, err)
	}
	if fn != nil {
		if err := db.Update(fn); err != nil {
			db.Close()
			t.Fatal(err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

func wantBuckets() []string {
	return []string{"artifact_names", "artifacts", "batch_commands", "campaigns", "clusters", "command_batches", "command_index", "commands", "machines", "meta", "nodes", "operators", "siem_configs", "tokens"}
}

func TestOpenCreatesFileAndSchema(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data", "nested")
	path := filepath.Join(dir, "state.db")
	s := openStore(t, path)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("store file mode = %o, want 600", got)
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := di.Mode().Perm(); got != 0o700 {
		t.Errorf("created data dir mode = %o, want 700", got)
	}

	v, ok := rawSchemaVersion(t, path)
	if !ok {
		t.Fatal("meta/schema_version missing")
	}
	if v != SchemaVersion() {
		t.Errorf("schema_version = %d, want %d", v, SchemaVersion())
	}
	if SchemaVersion() != 8 {
		t.Errorf("SchemaVersion() = %d; the schema doc in bolt.go describes version 8, update both together", SchemaVersion())
	}
	if got := rawBuckets(t, path); !reflect.DeepEqual(got, wantBuckets()) {
		t.Errorf("buckets = %v, want %v", got, wantBuckets())
	}

	// Reopening an up-to-date store writes no backup.
	s = openStore(t, path)
	s.Close()
	if m, _ := filepath.Glob(path + ".v*.bak"); len(m) != 0 {
		t.Errorf("unexpected backups %v", m)
	}
}

func TestOpenLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	first := openStore(t, path)

	const timeout = 150 * time.Millisecond
	start := time.Now()
	second, err := Open(path, Options{LockTimeout: timeout})
	elapsed := time.Since(start)
	if err == nil {
		second.Close()
		first.Close()
		t.Fatal("second Open of a locked store succeeded")
	}
	if !errors.Is(err, ErrLocked) {
		t.Errorf("err = %v, want ErrLocked", err)
	}
	for _, want := range []string{path, "another bud-controller"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("err = %q, want it to mention %q", err, want)
		}
	}
	if elapsed > timeout+2*time.Second {
		t.Errorf("second Open took %v, want about %v", elapsed, timeout)
	}

	// Once the first holder closes, the store can be opened again.
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	again := openStore(t, path)
	again.Close()
}

func TestOpenGarbageFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	if err := os.WriteFile(path, bytes.Repeat([]byte("not a bolt file "), 1024), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Open(path, Options{LockTimeout: 100 * time.Millisecond})
	if err == nil {
		s.Close()
		t.Fatal("Open of a garbage file succeeded")
	}
	if errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), path) {
		t.Errorf("err = %v, want a non-lock error naming %s", err, path)
	}
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	newer := SchemaVersion() + 1
	writeRaw(t, path, func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucket(bucketMeta)
		if err != nil {
			return err
		}
		if _, err := tx.CreateBucket([]byte("future_bucket")); err != nil {
			return err
		}
		return b.Put(keySchemaVersion, u64(newer))
	})
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	s, err := Open(path, Options{LockTimeout: 100 * time.Millisecond})
	if err == nil {
		s.Close()
		t.Fatal("Open of a newer store succeeded")
	}
	if !errors.Is(err, ErrNewerSchema) {
		t.Errorf("err = %v, want ErrNewerSchema", err)
	}
	for _, want := range []string{path, fmt.Sprint(newer)} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("err = %q, want it to mention %q", err, want)
		}
	}

	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Error("refused store file was modified")
	}
	if v, _ := rawSchemaVersion(t, path); v != newer {
		t.Errorf("schema_version = %d after refusal, want %d", v, newer)
	}
	if got, want := rawBuckets(t, path), []string{"future_bucket", "meta"}; !reflect.DeepEqual(got, want) {
		t.Errorf("buckets = %v, want %v (nothing created)", got, want)
	}
	if m, _ := filepath.Glob(path + ".v*.bak"); len(m) != 0 {
		t.Errorf("unexpected backups %v", m)
	}
	// The lock was released on the error path.
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatalf("file still locked after refused Open: %v", err)
	}
	db.Close()
}

func TestMigrateFromZero(t *testing.T) {
	cases := []struct {
		name string
		prep func(tx *bbolt.Tx) error
	}{
		{"no buckets", nil},
		{"meta without version", func(tx *bbolt.Tx) error {
			_, err := tx.CreateBucket(bucketMeta)
			return err
		}},
		{"explicit version 0", func(tx *bbolt.Tx) error {
			b, err := tx.CreateBucket(bucketMeta)
			if err != nil {
				return err
			}
			return b.Put(keySchemaVersion, u64(0))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.db")
			writeRaw(t, path, tc.prep)

			s := openStore(t, path)
			// The migrated store is usable.
			if err := s.CreateToken(t.Context(), store.Token{ID: "t1", CreatedAt: base, ExpiresAt: base.Add(time.Hour)}); err != nil {
				t.Fatalf("CreateToken on migrated store: %v", err)
			}
			s.Close()

			if v, ok := rawSchemaVersion(t, path); !ok || v != SchemaVersion() {
				t.Errorf("schema_version = %d (present %v), want %d", v, ok, SchemaVersion())
			}
			if got := rawBuckets(t, path); !reflect.DeepEqual(got, wantBuckets()) {
				t.Errorf("buckets = %v, want %v", got, wantBuckets())
			}
			if m, _ := filepath.Glob(path + ".v*.bak"); len(m) != 0 {
				t.Errorf("migration from version 0 wrote backups %v", m)
			}
		})
	}
}

// withExtraMigration appends m to the package's migrations for the duration
// of the test, simulating a future build with schema version
// SchemaVersion()+1. Tests using it must not run in parallel.
func withExtraMigration(t *testing.T, m func(tx *bbolt.Tx) error) {
	t.Helper()
	orig := migrations
	migrations = append(orig[:len(orig):len(orig)], m)
	t.Cleanup(func() { migrations = orig })
}

func TestMigrateFromOlderVersionWritesBackup(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	old := SchemaVersion()

	s := openStore(t, path)
	tok := store.Token{ID: "tok1", SecretHash: "h", CreatedAt: base, ExpiresAt: base.Add(time.Hour)}
	if err := s.CreateToken(t.Context(), tok); err != nil {
		t.Fatal(err)
	}
	s.Close()

	withExtraMigration(t, func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists([]byte("extra"))
		return err
	})
	if SchemaVersion() != old+1 {
		t.Fatalf("SchemaVersion() = %d, want %d", SchemaVersion(), old+1)
	}

	s = openStore(t, path)
	got, err := s.GetToken(t.Context(), "tok1")
	if err != nil || !reflect.DeepEqual(got, tok) {
		t.Errorf("GetToken after migration = %+v, %v; want %+v", got, err, tok)
	}
	s.Close()

	if v, _ := rawSchemaVersion(t, path); v != old+1 {
		t.Errorf("migrated schema_version = %d, want %d", v, old+1)
	}
	if !contains(rawBuckets(t, path), "extra") {
		t.Error("migration did not run: bucket extra missing")
	}

	backup := fmt.Sprintf("%s.v%d.bak", path, old)
	fi, err := os.Stat(backup)
	if err != nil {
		t.Fatalf("backup: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("backup mode = %o, want 600", fi.Mode().Perm())
	}
	if v, _ := rawSchemaVersion(t, backup); v != old {
		t.Errorf("backup schema_version = %d, want %d", v, old)
	}
	if contains(rawBuckets(t, backup), "extra") {
		t.Error("backup was taken after the migration")
	}
	db, err := bbolt.Open(backup, 0o600, &bbolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.View(func(tx *bbolt.Tx) error {
		if tx.Bucket(bucketTokens).Get([]byte("tok1")) == nil {
			return errors.New("backup lacks token tok1")
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
}

func TestMigrateFailureRollsBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	old := SchemaVersion()
	s := openStore(t, path)
	s.Close()

	boom := errors.New("boom")
	withExtraMigration(t, func(tx *bbolt.Tx) error {
		if _, err := tx.CreateBucket([]byte("half_done")); err != nil {
			return err
		}
		return boom
	})
	s, err := Open(path, Options{LockTimeout: 100 * time.Millisecond})
	if err == nil {
		s.Close()
		t.Fatal("Open with a failing migration succeeded")
	}
	if !errors.Is(err, boom) {
		t.Errorf("err = %v, want it to wrap the migration's error", err)
	}
	if want := fmt.Sprintf("from version %d to %d", old, old+1); !strings.Contains(err.Error(), want) {
		t.Errorf("err = %q, want it to mention %q", err, want)
	}
	if v, _ := rawSchemaVersion(t, path); v != old {
		t.Errorf("schema_version after failed migration = %d, want %d", v, old)
	}
	if contains(rawBuckets(t, path), "half_done") {
		t.Error("failed migration was not rolled back")
	}
	if _, err := os.Stat(fmt.Sprintf("%s.v%d.bak", path, old)); err != nil {
		t.Errorf("no backup left for the failed upgrade: %v", err)
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// The behaviour is storetest's DeleteNodeRemovesCommands; this checks the
// file: the index entries and the queue bucket are gone, not just
// unreachable.
func TestDeleteNodeRemovesQueueAndIndex(t *testing.T) {
	s, _ := newStore(t)
	enrollNode(t, s, testNode("n1", "h1"))
	enrollNode(t, s, testNode("n2", "h2"))
	for _, c := range []store.Command{cmd("c1", "n1", store.CommandPending), cmd("c2", "n1", store.CommandSucceeded), cmd("c3", "n2", store.CommandPending)} {
		if err := s.EnqueueCommand(t.Context(), c); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DeleteNode(t.Context(), "n1"); err != nil {
		t.Fatal(err)
	}
	if err := s.db.View(func(tx *bbolt.Tx) error {
		if tx.Bucket(bucketCommands).Bucket([]byte("n1")) != nil {
			return errors.New("command queue bucket n1 survived")
		}
		idx := tx.Bucket(bucketCommandIndex)
		for _, id := range []string{"c1", "c2"} {
			if idx.Get([]byte(id)) != nil {
				return fmt.Errorf("index entry %s survived", id)
			}
		}
		if idx.Get([]byte("c3")) == nil {
			return errors.New("index entry c3 was removed")
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
}

func TestPersistenceAcrossReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := openStore(t, path)
	enrollNode(t, s, testNode("n1", "h1"))
	if _, err := s.RevokeToken(t.Context(), "tok-n1", base.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []store.Command{cmd("c2", "n1", store.CommandPending), cmd("c1", "n1", store.CommandPending)} {
		if err := s.EnqueueCommand(t.Context(), c); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.UpdateCommand(t.Context(), "c2", func(c *store.Command) error { c.State = store.CommandFailed; c.Message = "oops"; return nil }); err != nil {
		t.Fatal(err)
	}
	wantTokens, _ := s.ListTokens(t.Context())
	wantNodes, _ := s.ListNodes(t.Context())
	wantCmds, _ := s.ListCommands(t.Context(), "")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openStore(t, path)
	defer s.Close()
	if got, err := s.ListTokens(t.Context()); err != nil || !reflect.DeepEqual(got, wantTokens) {
		t.Errorf("tokens after reopen = %+v, %v; want %+v", got, err, wantTokens)
	}
	if got, err := s.ListNodes(t.Context()); err != nil || !reflect.DeepEqual(got, wantNodes) {
		t.Errorf("nodes after reopen = %+v, %v; want %+v", got, err, wantNodes)
	}
	if got, err := s.ListCommands(t.Context(), ""); err != nil || !reflect.DeepEqual(got, wantCmds) {
		t.Errorf("commands after reopen = %+v, %v; want %+v", got, err, wantCmds)
	}
	c, err := s.GetCommand(t.Context(), "c2")
	if err != nil || c.State != store.CommandFailed || c.Message != "oops" {
		t.Errorf("GetCommand(c2) after reopen = %+v, %v", c, err)
	}
	if pend, _ := s.PendingCommands(t.Context(), "n1"); !reflect.DeepEqual(commandIDs(pend), []string{"c1"}) {
		t.Errorf("PendingCommands after reopen = %v", commandIDs(pend))
	}
	// New commands go after the old ones.
	if err := s.EnqueueCommand(t.Context(), cmd("c0", "n1", store.CommandPending)); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.ListCommands(t.Context(), "n1"); !reflect.DeepEqual(commandIDs(got), []string{"c2", "c1", "c0"}) {
		t.Errorf("queue after reopen and enqueue = %v", commandIDs(got))
	}
}

// A version-1 store (before fleet-managed SIEM configurations) keeps its
// data, gains the siem_configs bucket, and leaves a backup of itself.
func TestMigrateV1ToV2(t *testing.T) {
	path := filepath.Join(t.TempDir(), "controller.db")
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		if err := migrations[0](tx); err != nil {
			return err
		}
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if err := meta.Put(keySchemaVersion, u64(1)); err != nil {
			return err
		}
		return putJSON(tx.Bucket(bucketNodes), []byte("n1"), store.Node{ID: "n1", Hostname: "old"})
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if n, err := s.GetNode(t.Context(), "n1"); err != nil || n.Hostname != "old" {
		t.Fatalf("node after migration = %+v, %v", n, err)
	}
	c, err := s.AddSIEMConfig(t.Context(), store.SIEMConfig{YAML: []byte("sources: []"), Selector: map[string]string{"rack": "r1"}})
	if err != nil || c.Version != 1 {
		t.Fatalf("AddSIEMConfig = %+v, %v", c, err)
	}
	if _, err := os.Stat(path + ".v1.bak"); err != nil {
		t.Errorf("no backup of the version-1 store: %v", err)
	}
	if got, ok, err := s.SIEMConfigFor(t.Context(), map[string]string{"rack": "r1", "x": "y"}); err != nil || !ok || got.Version != 1 {
		t.Errorf("SIEMConfigFor(matching) = %+v %v %v", got, ok, err)
	}
	if _, ok, _ := s.SIEMConfigFor(t.Context(), map[string]string{"rack": "r2"}); ok {
		t.Error("SIEMConfigFor(non-matching) found a config")
	}
}

// TestNodeRecordFormat pins how a node is kept: store.Node's json tags with
// the inventory as protobuf JSON under "inventory", last. (protojson varies
// its whitespace on purpose, hence the Compact.)
func TestNodeRecordFormat(t *testing.T) {
	n := store.Node{ID: "n1", Hostname: "h", Labels: map[string]string{"a": "b"}, TokenID: "t", EnrolledAt: base, CertSerial: "1f",
		CertExpiresAt: base, LastHeartbeat: base, InventoryUpdateAt: base, GPUs: []byte{1},
		Inventory: &hostv1.Inventory{Hostname: "h", MachineId: "m", CpuCores: 3, IpAddresses: []string{"10.0.0.1"}}}
	raw, err := encodeNode(n)
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if err := json.Compact(&got, raw); err != nil {
		t.Fatal(err)
	}
	want := `{"id":"n1","hostname":"h","labels":{"a":"b"},"token_id":"t","enrolled_at":"2030-01-02T03:04:05Z","cert_serial":"1f",` +
		`"cert_expires_at":"2030-01-02T03:04:05Z","last_heartbeat":"2030-01-02T03:04:05Z","inventory_updated_at":"2030-01-02T03:04:05Z",` +
		`"gpus":"AQ==","inventory":{"hostname":"h","machine_id":"m","cpu_cores":3,"ip_addresses":["10.0.0.1"]}}`
	if got.String() != want {
		t.Errorf("record =\n%s\nwant\n%s", got.String(), want)
	}
	back, err := decodeNode(raw)
	if err != nil || !storetest.NodesEqual(back, n) {
		t.Errorf("decodeNode = %+v, %v; want %+v", back, err, n)
	}
	// Without an inventory there is no key for it.
	n.Inventory = nil
	raw, _ = encodeNode(n)
	if bytes.Contains(raw, []byte(`"inventory"`)) {
		t.Errorf("record without inventory = %s", raw)
	}
}

// TestNodeInventoryOldRecord: nodes written before the inventory became
// budfleet.host.v1.Inventory (schema 2, a hand-written struct) read with
// their inventory intact, and round-trip in the same shape.
func TestNodeInventoryOldRecord(t *testing.T) {
	s := openStore(t, filepath.Join(t.TempDir(), "store.db"))
	old := `{"id":"n1","hostname":"alpha","token_id":"t","enrolled_at":"2026-01-02T03:04:05Z","cert_serial":"1","cert_expires_at":"2026-01-09T03:04:05Z",` +
		`"inventory":{"hostname":"alpha","machine_id":"m","os":"Debian 12","kernel":"6.1","architecture":"amd64","cpu_model":"Xeon","cpu_cores":8,` +
		`"memory_bytes":17179869184,"ip_addresses":["10.0.0.1","2001:db8::1"],"agent_version":"v0.1.0"}}`
	if err := s.db.Update(func(tx *bbolt.Tx) error { return tx.Bucket(bucketNodes).Put([]byte("n1"), []byte(old)) }); err != nil {
		t.Fatal(err)
	}
	n, err := s.GetNode(t.Context(), "n1")
	if err != nil {
		t.Fatal(err)
	}
	want := &hostv1.Inventory{Hostname: "alpha", MachineId: "m", Os: "Debian 12", Kernel: "6.1", Architecture: "amd64", CpuModel: "Xeon", CpuCores: 8,
		MemoryBytes: 16 << 30, IpAddresses: []string{"10.0.0.1", "2001:db8::1"}, AgentVersion: "v0.1.0"}
	if !proto.Equal(n.Inventory, want) {
		t.Fatalf("inventory of an old record = %v, want %v", n.Inventory, want)
	}
	if _, err := s.UpdateNode(t.Context(), "n1", func(*store.Node) error { return nil }); err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := s.db.View(func(tx *bbolt.Tx) error { return json.Unmarshal(tx.Bucket(bucketNodes).Get([]byte("n1")), &raw) }); err != nil {
		t.Fatal(err)
	}
	inv, _ := raw["inventory"].(map[string]any)
	if inv["machine_id"] != "m" || inv["cpu_model"] != "Xeon" {
		t.Errorf("rewritten record's inventory = %v, want the proto field names", inv)
	}
}

func testNode(id, host string) store.Node { return storetest.NewNode(id, host) }

func enrollNode(t *testing.T, s *Store, n store.Node) { t.Helper(); storetest.EnrollNode(t, s, n) }

func cmd(id, node string, state store.CommandState) store.Command {
	return storetest.Cmd(id, node, state)
}

func commandIDs(cs []store.Command) []string { return storetest.CommandIDs(cs) }

// TestCommandRecordFormat pins how a command's streamed output is kept:
// under "output_tail", the streams as base64 (they need not be UTF-8); a
// record from before the tail existed reads without one.
func TestCommandRecordFormat(t *testing.T) {
	s := openStore(t, filepath.Join(t.TempDir(), "store.db"))
	defer s.Close()
	enrollNode(t, s, testNode("n1", "h1"))
	if err := s.EnqueueCommand(t.Context(), cmd("c1", "n1", store.CommandDelivered)); err != nil {
		t.Fatal(err)
	}
	raw := func() map[string]json.RawMessage {
		t.Helper()
		var m map[string]json.RawMessage
		if err := s.db.View(func(tx *bbolt.Tx) error {
			q, key, err := commandLocation(tx, "c1")
			if err != nil {
				return err
			}
			return json.Unmarshal(q.Get(key), &m)
		}); err != nil {
			t.Fatal(err)
		}
		return m
	}
	if _, ok := raw()["output_tail"]; ok {
		t.Error("a command without a tail has an output_tail key")
	}
	if _, err := s.UpdateCommand(t.Context(), "c1", func(c *store.Command) error {
		c.OutputTail = &store.OutputTail{Stdout: []byte("a\xff"), StdoutBytes: 2, UpdatedAt: base}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got, want := string(raw()["output_tail"]), `{"stdout":"Yf8=","stdout_bytes":2,"updated_at":"2030-01-02T03:04:05Z"}`; got != want {
		t.Errorf("output_tail = %s, want %s", got, want)
	}
	// An old record (no output_tail) reads with none and keeps the rest.
	old := `{"id":"c1","node_id":"n1","kind":"inventory.collect","state":"succeeded","created_at":"2026-01-02T03:04:05Z","deliveries":1,"output":{"hostname":"h"}}`
	if err := s.db.Update(func(tx *bbolt.Tx) error {
		q, key, err := commandLocation(tx, "c1")
		if err != nil {
			return err
		}
		return q.Put(key, []byte(old))
	}); err != nil {
		t.Fatal(err)
	}
	c, err := s.GetCommand(t.Context(), "c1")
	if err != nil || c.OutputTail != nil || c.Output["hostname"] != "h" || c.State != store.CommandSucceeded {
		t.Errorf("old record = %+v, %v", c, err)
	}
}

// TestNodeInventoryProtoJSONRecord: a record whose inventory a development
// build wrote as protojson (64-bit numbers as strings) still reads.
func TestNodeInventoryProtoJSONRecord(t *testing.T) {
	raw := `{"id":"n1","hostname":"alpha","token_id":"t","enrolled_at":"2026-01-02T03:04:05Z","cert_serial":"1","cert_expires_at":"2026-01-09T03:04:05Z",` +
		`"inventory":{"hostname":"alpha","machine_id":"m","cpu_cores":8,"memory_bytes":"17179869184"}}`
	n, err := decodeNode([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	if n.Inventory.GetMemoryBytes() != 16<<30 || n.Inventory.GetCpuCores() != 8 || n.Inventory.GetMachineId() != "m" {
		t.Errorf("inventory = %v", n.Inventory)
	}
	if _, err := decodeNode([]byte(`{"id":"n2","inventory":{"cpu_cores":"many"}}`)); err == nil || !strings.Contains(err.Error(), "n2") {
		t.Errorf("decodeNode of a broken inventory = %v; want an error naming the node", err)
	}
}

// TestMarkDelivered: many deliveries in one write; a command with a result
// keeps it, and a mark for a command that is gone is skipped.
func TestMarkDelivered(t *testing.T) {
	s := openStore(t, filepath.Join(t.TempDir(), "store.db"))
	defer s.Close()
	enrollNode(t, s, testNode("n1", "h1"))
	for _, c := range []store.Command{cmd("c1", "n1", store.CommandPending), cmd("c2", "n1", store.CommandDelivered), cmd("c3", "n1", store.CommandSucceeded)} {
		if err := s.EnqueueCommand(t.Context(), c); err != nil {
			t.Fatal(err)
		}
	}
	at := base.Add(time.Minute)
	if err := s.MarkDelivered(t.Context(), []store.DeliveryMark{{ID: "c1", At: at, Count: 1}, {ID: "c2", At: at, Count: 2}, {ID: "c3", At: at, Count: 1}, {ID: "gone", At: at, Count: 1}}); err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		state store.CommandState
		n     uint32
	}{"c1": {store.CommandDelivered, 1}, "c2": {store.CommandDelivered, 2}, "c3": {store.CommandSucceeded, 0}}
	for id, w := range want {
		c, err := s.GetCommand(t.Context(), id)
		if err != nil || c.State != w.state || c.Deliveries != w.n || (w.n > 0 && !c.DeliveredAt.Equal(at)) {
			t.Errorf("%s = %+v, %v; want %s, %d deliveries", id, c, err, w.state, w.n)
		}
	}
}

// TestConcurrentDeliveryAndResults: many concurrent UpdateCommand and
// MarkDelivered calls on one command, through the group commit, lose
// none of their changes, and a result that lands first keeps its state.
func TestConcurrentDeliveryAndResults(t *testing.T) {
	s := openStore(t, filepath.Join(t.TempDir(), "store.db"))
	defer s.Close()
	enrollNode(t, s, testNode("n1", "h1"))
	for _, id := range []string{"c1", "c2"} {
		if err := s.EnqueueCommand(t.Context(), cmd(id, "n1", store.CommandPending)); err != nil {
			t.Fatal(err)
		}
	}
	const n = 40
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if _, err := s.UpdateCommand(t.Context(), "c1", func(c *store.Command) error { c.Deliveries++; return nil }); err != nil {
				t.Error(err)
			}
		})
		wg.Go(func() {
			if err := s.MarkDelivered(t.Context(), []store.DeliveryMark{{ID: "c1", At: base, Count: 1}, {ID: "c2", At: base, Count: 1}}); err != nil {
				t.Error(err)
			}
		})
		if i == n/2 {
			wg.Go(func() {
				if _, err := s.UpdateCommand(t.Context(), "c2", func(c *store.Command) error { c.State = store.CommandSucceeded; return nil }); err != nil {
					t.Error(err)
				}
			})
		}
	}
	wg.Wait()
	c1, err := s.GetCommand(t.Context(), "c1")
	if err != nil || c1.Deliveries != 2*n || c1.State != store.CommandDelivered {
		t.Errorf("c1 = %+v, %v; want %d deliveries, delivered", c1, err, 2*n)
	}
	c2, err := s.GetCommand(t.Context(), "c2")
	if err != nil || c2.State != store.CommandSucceeded || c2.Deliveries == 0 || c2.Deliveries > n {
		t.Errorf("c2 = %+v, %v; want succeeded, with the marks that came before the result", c2, err)
	}
}

// A fan-out that names a command id twice is refused whole: the bolt store
// writes the index in id order, after the queues, and checks for the
// repeat there.
func TestEnqueueCommandsRepeatedID(t *testing.T) {
	s, _ := newStore(t)
	enrollNode(t, s, testNode("n1", "h1"))
	enrollNode(t, s, testNode("n2", "h2"))
	var cs []store.Command
	for _, id := range []string{"c2", "c1", "c3", "c1"} {
		c := cmd(id, "n1", store.CommandPending)
		if id == "c3" {
			c.NodeID = "n2"
		}
		c.BatchID = "b"
		cs = append(cs, c)
	}
	err := s.EnqueueCommands(context.Background(), storetest.NewBatch("b"), cs)
	if !errors.Is(err, store.ErrAlreadyExists) || !strings.Contains(err.Error(), "c1") {
		t.Fatalf("EnqueueCommands with c1 twice = %v, want ErrAlreadyExists naming c1", err)
	}
	all, err := s.ListCommands(context.Background(), "")
	if err != nil || len(all) != 0 {
		t.Errorf("after the refused batch: %v stored, %v; want none", commandIDs(all), err)
	}
	if _, _, err := s.GetCommandBatch(context.Background(), "b"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetCommandBatch(b) after the refused batch = %v, want ErrNotFound", err)
	}
	cs = cs[:3]
	if err := s.EnqueueCommands(context.Background(), storetest.NewBatch("b"), cs); err != nil {
		t.Fatal(err)
	}
	_, n, err := s.GetCommandBatch(context.Background(), "b")
	if err != nil || n.Total != 3 || n.Pending != 3 {
		t.Errorf("batch b = %+v, %v; want 3 pending", n, err)
	}
	for _, c := range cs {
		got, err := s.GetCommand(context.Background(), c.ID)
		if err != nil || got.NodeID != c.NodeID {
			t.Errorf("GetCommand(%s) = %+v, %v", c.ID, got, err)
		}
	}
}
