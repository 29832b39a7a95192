package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	hostv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/host/v1"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
)

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
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Fatalf("bolt.Open(%s): %v", path, err)
	}
	defer db.Close()
	var v uint64
	var ok bool
	if err := db.View(func(tx *bolt.Tx) error {
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
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Fatalf("bolt.Open(%s): %v", path, err)
	}
	defer db.Close()
	var names []string
	if err := db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
			names = append(names, string(name))
			return nil
		})
	}); err != nil {
		t.Fatal(err)
	}
	return names
}

// writeRaw creates a bbolt file at path and runs fn in one write transaction.
func writeRaw(t *testing.T, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatalf("bolt.Open(%s): %v", path, err)
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
	return []string{"command_index", "commands", "meta", "nodes", "siem_configs", "tokens"}
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
	if SchemaVersion() != 2 {
		t.Errorf("SchemaVersion() = %d; the schema doc in store.go describes version 2, update both together", SchemaVersion())
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
	writeRaw(t, path, func(tx *bolt.Tx) error {
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
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatalf("file still locked after refused Open: %v", err)
	}
	db.Close()
}

func TestMigrateFromZero(t *testing.T) {
	cases := []struct {
		name string
		prep func(tx *bolt.Tx) error
	}{
		{"no buckets", nil},
		{"meta without version", func(tx *bolt.Tx) error {
			_, err := tx.CreateBucket(bucketMeta)
			return err
		}},
		{"explicit version 0", func(tx *bolt.Tx) error {
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
			if err := s.CreateToken(Token{ID: "t1", CreatedAt: base, ExpiresAt: base.Add(time.Hour)}); err != nil {
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
func withExtraMigration(t *testing.T, m func(tx *bolt.Tx) error) {
	t.Helper()
	orig := migrations
	migrations = append(orig[:len(orig):len(orig)], m)
	t.Cleanup(func() { migrations = orig })
}

func TestMigrateFromOlderVersionWritesBackup(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	old := SchemaVersion()

	s := openStore(t, path)
	tok := Token{ID: "tok1", SecretHash: "h", CreatedAt: base, ExpiresAt: base.Add(time.Hour)}
	if err := s.CreateToken(tok); err != nil {
		t.Fatal(err)
	}
	s.Close()

	withExtraMigration(t, func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists([]byte("extra"))
		return err
	})
	if SchemaVersion() != old+1 {
		t.Fatalf("SchemaVersion() = %d, want %d", SchemaVersion(), old+1)
	}

	s = openStore(t, path)
	got, err := s.GetToken("tok1")
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
	db, err := bolt.Open(backup, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.View(func(tx *bolt.Tx) error {
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
	withExtraMigration(t, func(tx *bolt.Tx) error {
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

func TestTokenUsable(t *testing.T) {
	now := base
	fine := Token{ID: "abc", ExpiresAt: now.Add(time.Hour), MaxUses: 3, Uses: 2}
	cases := []struct {
		name    string
		mod     func(*Token)
		now     time.Time
		wantErr string // "" for usable
	}{
		{"fine", nil, now, ""},
		{"unlimited uses", func(t *Token) { t.MaxUses, t.Uses = 0, 1000 }, now, ""},
		{"just before expiry", nil, fine.ExpiresAt.Add(-time.Nanosecond), ""},
		{"revoked", func(t *Token) { t.RevokedAt = now.Add(-time.Minute) }, now, "revoked"},
		{"revoked in the future still revoked", func(t *Token) { t.RevokedAt = now.Add(time.Minute) }, now, "revoked"},
		{"now equals ExpiresAt", nil, fine.ExpiresAt, "expired"},
		{"after expiry", nil, fine.ExpiresAt.Add(time.Second), "expired"},
		{"zero ExpiresAt", func(t *Token) { t.ExpiresAt = time.Time{} }, now, "expired"},
		{"used up", func(t *Token) { t.Uses = 3 }, now, "used up"},
		{"over used", func(t *Token) { t.Uses = 7 }, now, "used up"},
		{"revoked wins over expired", func(t *Token) { t.RevokedAt = now }, fine.ExpiresAt.Add(time.Hour), "revoked"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tok := fine
			if tc.mod != nil {
				tc.mod(&tok)
			}
			err := tok.Usable(tc.now)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Usable = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrTokenInvalid) {
				t.Fatalf("Usable = %v, want ErrTokenInvalid", err)
			}
			if !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), tok.ID) {
				t.Errorf("Usable = %q, want it to mention %q and the token id", err, tc.wantErr)
			}
		})
	}
}

func TestTokens(t *testing.T) {
	s, _ := newStore(t)

	if list, err := s.ListTokens(); err != nil || len(list) != 0 {
		t.Fatalf("ListTokens on empty store = %v, %v", list, err)
	}

	// Created in an order that is neither id order nor CreatedAt order.
	toks := []Token{
		{ID: "bbb", SecretHash: "h2", CreatedAt: base.Add(2 * time.Minute), ExpiresAt: base.Add(time.Hour), MaxUses: 1},
		{ID: "ccc", SecretHash: "h3", CreatedAt: base, ExpiresAt: base.Add(time.Hour), Labels: map[string]string{"zone": "a"}, Description: "first"},
		{ID: "aaa", SecretHash: "h1", CreatedAt: base.Add(time.Minute), ExpiresAt: base.Add(2 * time.Hour), Uses: 4},
	}
	for _, tok := range toks {
		if err := s.CreateToken(tok); err != nil {
			t.Fatalf("CreateToken(%s): %v", tok.ID, err)
		}
	}

	dup := toks[0]
	dup.SecretHash = "other"
	if err := s.CreateToken(dup); !errors.Is(err, ErrAlreadyExists) {
		t.Errorf("duplicate CreateToken = %v, want ErrAlreadyExists", err)
	}
	if got, err := s.GetToken("bbb"); err != nil || got.SecretHash != "h2" {
		t.Errorf("duplicate create overwrote the token: %+v, %v", got, err)
	}

	for _, want := range toks {
		got, err := s.GetToken(want.ID)
		if err != nil {
			t.Fatalf("GetToken(%s): %v", want.ID, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("GetToken(%s) = %+v, want %+v", want.ID, got, want)
		}
	}
	if _, err := s.GetToken("nope"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "nope") {
		t.Errorf("GetToken(unknown) = %v, want ErrNotFound naming the id", err)
	}

	list, err := s.ListTokens()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, tok := range list {
		ids = append(ids, tok.ID)
	}
	if want := []string{"ccc", "aaa", "bbb"}; !reflect.DeepEqual(ids, want) {
		t.Errorf("ListTokens order = %v, want %v (oldest first)", ids, want)
	}
}

func TestRevokeToken(t *testing.T) {
	s, _ := newStore(t)
	tok := Token{ID: "t1", CreatedAt: base, ExpiresAt: base.Add(time.Hour)}
	if err := s.CreateToken(tok); err != nil {
		t.Fatal(err)
	}
	first := base.Add(time.Minute)
	got, err := s.RevokeToken("t1", first)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Revoked() || !got.RevokedAt.Equal(first) {
		t.Errorf("RevokeToken = %+v, want RevokedAt %v", got, first)
	}
	got, err = s.RevokeToken("t1", first.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if !got.RevokedAt.Equal(first) {
		t.Errorf("second RevokeToken returned RevokedAt %v, want first %v", got.RevokedAt, first)
	}
	stored, err := s.GetToken("t1")
	if err != nil {
		t.Fatal(err)
	}
	if !stored.RevokedAt.Equal(first) {
		t.Errorf("stored RevokedAt = %v, want %v", stored.RevokedAt, first)
	}
	if err := stored.Usable(base); !errors.Is(err, ErrTokenInvalid) {
		t.Errorf("revoked token Usable = %v", err)
	}
	if _, err := s.RevokeToken("nope", first); !errors.Is(err, ErrNotFound) {
		t.Errorf("RevokeToken(unknown) = %v, want ErrNotFound", err)
	}
	if _, err := s.GetToken("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("RevokeToken(unknown) created a token: %v", err)
	}
}

func testNode(id, host string) Node {
	return Node{
		ID:            id,
		Hostname:      host,
		MachineID:     "mid-" + id,
		Labels:        map[string]string{"id": id},
		EnrolledAt:    base,
		CertSerial:    "serial-" + id,
		CertExpiresAt: base.Add(24 * time.Hour),
	}
}

// enrollNode enrolls a node with a fresh unlimited token.
func enrollNode(t *testing.T, s *Store, n Node) {
	t.Helper()
	tid := "tok-" + n.ID
	if err := s.CreateToken(Token{ID: tid, CreatedAt: base, ExpiresAt: base.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	n.TokenID = tid
	if _, err := s.Enroll(tid, func(Token) error { return nil }, n); err != nil {
		t.Fatalf("Enroll(%s): %v", n.ID, err)
	}
}

func usable(now time.Time) func(Token) error {
	return func(t Token) error { return t.Usable(now) }
}

func TestEnroll(t *testing.T) {
	s, _ := newStore(t)
	tok := Token{ID: "tok", SecretHash: "hash", CreatedAt: base, ExpiresAt: base.Add(time.Hour), MaxUses: 2}
	if err := s.CreateToken(tok); err != nil {
		t.Fatal(err)
	}
	n1 := testNode("n1", "host1")
	n1.TokenID = "tok"

	assertUses := func(t *testing.T, want uint32) {
		t.Helper()
		got, err := s.GetToken("tok")
		if err != nil {
			t.Fatal(err)
		}
		if got.Uses != want {
			t.Errorf("token Uses = %d, want %d", got.Uses, want)
		}
	}
	assertAbsent := func(t *testing.T, id string) {
		t.Helper()
		if _, err := s.GetNode(id); !errors.Is(err, ErrNotFound) {
			t.Errorf("GetNode(%s) = %v, want ErrNotFound", id, err)
		}
	}

	t.Run("failed check changes nothing", func(t *testing.T) {
		bad := errors.New("secret mismatch")
		var seen Token
		_, err := s.Enroll("tok", func(t Token) error { seen = t; return bad }, n1)
		if !errors.Is(err, bad) {
			t.Fatalf("Enroll = %v, want the check's error", err)
		}
		if !reflect.DeepEqual(seen, tok) {
			t.Errorf("check saw %+v, want the stored token %+v", seen, tok)
		}
		assertUses(t, 0)
		assertAbsent(t, "n1")
	})

	t.Run("unknown token", func(t *testing.T) {
		called := false
		_, err := s.Enroll("missing", func(Token) error { called = true; return nil }, n1)
		if !errors.Is(err, ErrTokenInvalid) {
			t.Errorf("Enroll(unknown) = %v, want ErrTokenInvalid", err)
		}
		// Worded like a wrong secret so that token ids cannot be probed.
		if err != nil && strings.Contains(err.Error(), "missing") {
			t.Errorf("Enroll(unknown) = %q reveals that the token id does not exist", err)
		}
		if called {
			t.Error("check called for an unknown token")
		}
		assertAbsent(t, "n1")
		if _, err := s.GetToken("missing"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Enroll(unknown) created the token: %v", err)
		}
	})

	t.Run("success", func(t *testing.T) {
		got, err := s.Enroll("tok", usable(base), n1)
		if err != nil {
			t.Fatalf("Enroll: %v", err)
		}
		if got.Uses != 1 || got.ID != "tok" {
			t.Errorf("Enroll returned %+v, want tok with 1 use", got)
		}
		assertUses(t, 1)
		n, err := s.GetNode("n1")
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(n, n1) {
			t.Errorf("stored node = %+v, want %+v", n, n1)
		}
	})

	t.Run("duplicate node id rolls back the token use", func(t *testing.T) {
		dup := testNode("n1", "impostor")
		_, err := s.Enroll("tok", usable(base), dup)
		if !errors.Is(err, ErrAlreadyExists) {
			t.Fatalf("Enroll(duplicate node) = %v, want ErrAlreadyExists", err)
		}
		assertUses(t, 1)
		n, err := s.GetNode("n1")
		if err != nil || n.Hostname != "host1" {
			t.Errorf("existing node changed: %+v, %v", n, err)
		}
	})

	t.Run("max uses across enrolls", func(t *testing.T) {
		if _, err := s.Enroll("tok", usable(base), testNode("n2", "host2")); err != nil {
			t.Fatalf("second use: %v", err)
		}
		assertUses(t, 2)
		_, err := s.Enroll("tok", usable(base), testNode("n3", "host3"))
		if !errors.Is(err, ErrTokenInvalid) || !strings.Contains(err.Error(), "used up") {
			t.Errorf("third use = %v, want ErrTokenInvalid (used up)", err)
		}
		assertUses(t, 2)
		assertAbsent(t, "n3")
	})

	t.Run("expired token", func(t *testing.T) {
		if err := s.CreateToken(Token{ID: "old", CreatedAt: base, ExpiresAt: base}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Enroll("old", usable(base), testNode("n4", "host4")); !errors.Is(err, ErrTokenInvalid) {
			t.Errorf("Enroll(expired) = %v, want ErrTokenInvalid", err)
		}
		assertAbsent(t, "n4")
	})
}

func TestNodes(t *testing.T) {
	s, _ := newStore(t)
	if list, err := s.ListNodes(); err != nil || len(list) != 0 {
		t.Fatalf("ListNodes on empty store = %v, %v", list, err)
	}
	// Ids sort differently from hostnames.
	for _, n := range []Node{testNode("z1", "alpha"), testNode("a1", "beta"), testNode("m1", "alpha"), testNode("b2", "Alpha")} {
		enrollNode(t, s, n)
	}
	list, err := s.ListNodes()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, n := range list {
		got = append(got, n.Hostname+"/"+n.ID)
	}
	if want := []string{"Alpha/b2", "alpha/m1", "alpha/z1", "beta/a1"}; !reflect.DeepEqual(got, want) {
		t.Errorf("ListNodes = %v, want %v", got, want)
	}

	n, err := s.GetNode("m1")
	if err != nil || n.Hostname != "alpha" || n.TokenID != "tok-m1" {
		t.Errorf("GetNode(m1) = %+v, %v", n, err)
	}
	if _, err := s.GetNode("nope"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "nope") {
		t.Errorf("GetNode(unknown) = %v, want ErrNotFound naming the id", err)
	}

	hb := base.Add(time.Minute)
	inv := &hostv1.Inventory{Hostname: "alpha", CpuCores: 8, IpAddresses: []string{"10.0.0.1"}}
	upd, err := s.UpdateNode("m1", func(n *Node) error {
		n.LastHeartbeat = hb
		n.Inventory = inv
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !upd.LastHeartbeat.Equal(hb) || !proto.Equal(upd.Inventory, inv) {
		t.Errorf("UpdateNode returned %+v", upd)
	}
	stored, _ := s.GetNode("m1")
	if !nodesEqual(stored, upd) {
		t.Errorf("stored node %+v != returned %+v", stored, upd)
	}

	bad := errors.New("nope")
	if _, err := s.UpdateNode("m1", func(n *Node) error { n.Hostname = "changed"; return bad }); !errors.Is(err, bad) {
		t.Errorf("UpdateNode with failing fn = %v, want fn's error", err)
	}
	if again, _ := s.GetNode("m1"); again.Hostname != "alpha" {
		t.Errorf("failed UpdateNode was saved: hostname %q", again.Hostname)
	}
	called := false
	if _, err := s.UpdateNode("nope", func(*Node) error { called = true; return nil }); !errors.Is(err, ErrNotFound) {
		t.Errorf("UpdateNode(unknown) = %v, want ErrNotFound", err)
	}
	if called {
		t.Error("UpdateNode called fn for an unknown node")
	}
	if _, err := s.GetNode("nope"); !errors.Is(err, ErrNotFound) {
		t.Error("UpdateNode(unknown) created a node")
	}

	// A node without a command queue can be deleted.
	if err := s.DeleteNode("a1"); err != nil {
		t.Fatalf("DeleteNode(a1): %v", err)
	}
	if _, err := s.GetNode("a1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetNode after delete = %v", err)
	}
	if err := s.DeleteNode("a1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second DeleteNode = %v, want ErrNotFound", err)
	}
	if list, _ := s.ListNodes(); len(list) != 3 {
		t.Errorf("ListNodes after delete has %d nodes, want 3", len(list))
	}
}

func cmd(id, node string, state CommandState) Command {
	return Command{ID: id, NodeID: node, Kind: "exec", State: state, CreatedAt: base, Params: map[string]string{"id": id}}
}

func commandIDs(cs []Command) []string {
	ids := []string{}
	for _, c := range cs {
		ids = append(ids, c.ID)
	}
	return ids
}

func TestDeleteNodeRemovesCommands(t *testing.T) {
	s, _ := newStore(t)
	enrollNode(t, s, testNode("n1", "h1"))
	enrollNode(t, s, testNode("n2", "h2"))
	for _, c := range []Command{cmd("c1", "n1", CommandPending), cmd("c2", "n1", CommandSucceeded), cmd("c3", "n2", CommandPending)} {
		if err := s.EnqueueCommand(c); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DeleteNode("n1"); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"c1", "c2"} {
		if _, err := s.GetCommand(id); !errors.Is(err, ErrNotFound) {
			t.Errorf("GetCommand(%s) after DeleteNode = %v, want ErrNotFound", id, err)
		}
		if _, err := s.UpdateCommand(id, func(*Command) error { return nil }); !errors.Is(err, ErrNotFound) {
			t.Errorf("UpdateCommand(%s) after DeleteNode = %v, want ErrNotFound", id, err)
		}
	}
	if cs, err := s.ListCommands("n1"); err != nil || len(cs) != 0 {
		t.Errorf("ListCommands(n1) after delete = %v, %v", cs, err)
	}
	if cs, err := s.ListCommands(""); err != nil || !reflect.DeepEqual(commandIDs(cs), []string{"c3"}) {
		t.Errorf("ListCommands(\"\") after delete = %v, %v; want only c3", commandIDs(cs), err)
	}
	if c, err := s.GetCommand("c3"); err != nil || c.NodeID != "n2" {
		t.Errorf("other node's command: %+v, %v", c, err)
	}

	// Raw check: the index and the queue bucket are gone, not just unreachable.
	if err := s.db.View(func(tx *bolt.Tx) error {
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

	// The freed command id can be used again, and a re-enrolled node with
	// the same id starts with an empty queue.
	if err := s.EnqueueCommand(cmd("c1", "n2", CommandPending)); err != nil {
		t.Errorf("reusing a deleted node's command id: %v", err)
	}
	if err := s.EnqueueCommand(cmd("cx", "n1", CommandPending)); !errors.Is(err, ErrNotFound) {
		t.Errorf("EnqueueCommand for deleted node = %v, want ErrNotFound", err)
	}
	n1 := testNode("n1", "h1")
	n1.TokenID = "tok-n1"
	if _, err := s.Enroll("tok-n1", func(Token) error { return nil }, n1); err != nil {
		t.Fatal(err)
	}
	if cs, _ := s.ListCommands("n1"); len(cs) != 0 {
		t.Errorf("re-enrolled node inherited commands %v", commandIDs(cs))
	}
}

func TestCommands(t *testing.T) {
	s, _ := newStore(t)
	enrollNode(t, s, testNode("n-b", "hb"))
	enrollNode(t, s, testNode("n-a", "ha"))

	if err := s.EnqueueCommand(cmd("x", "ghost", CommandPending)); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "ghost") {
		t.Errorf("EnqueueCommand(unknown node) = %v, want ErrNotFound naming the node", err)
	}
	if _, err := s.GetCommand("x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("rejected command was stored: %v", err)
	}
	if cs, err := s.ListCommands("ghost"); err != nil || len(cs) != 0 {
		t.Errorf("ListCommands(unknown) = %v, %v", cs, err)
	}
	if cs, err := s.PendingCommands("n-a"); err != nil || len(cs) != 0 {
		t.Errorf("PendingCommands(empty) = %v, %v", cs, err)
	}

	// Ids deliberately not in sorted order.
	queueB := []Command{
		cmd("b3", "n-b", CommandPending),
		cmd("b1", "n-b", CommandSucceeded),
		cmd("b2", "n-b", CommandDelivered),
		cmd("b0", "n-b", CommandFailed),
		cmd("b9", "n-b", CommandPending),
	}
	queueA := []Command{cmd("a2", "n-a", CommandPending), cmd("a1", "n-a", CommandPending)}
	// Interleave the two queues.
	for i := 0; i < len(queueB); i++ {
		if err := s.EnqueueCommand(queueB[i]); err != nil {
			t.Fatal(err)
		}
		if i < len(queueA) {
			if err := s.EnqueueCommand(queueA[i]); err != nil {
				t.Fatal(err)
			}
		}
	}

	if err := s.EnqueueCommand(cmd("b1", "n-a", CommandPending)); !errors.Is(err, ErrAlreadyExists) {
		t.Errorf("duplicate command id on another node = %v, want ErrAlreadyExists", err)
	}
	if c, _ := s.GetCommand("b1"); c.NodeID != "n-b" {
		t.Errorf("duplicate enqueue changed b1: %+v", c)
	}

	got, err := s.ListCommands("n-b")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, queueB) {
		t.Errorf("ListCommands(n-b) = %v, want %v", commandIDs(got), commandIDs(queueB))
	}
	pend, err := s.PendingCommands("n-b")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"b3", "b2", "b9"}; !reflect.DeepEqual(commandIDs(pend), want) {
		t.Errorf("PendingCommands(n-b) = %v, want %v", commandIDs(pend), want)
	}

	all, err := s.ListCommands("")
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != len(queueA)+len(queueB) {
		t.Errorf("ListCommands(\"\") returned %d commands, want %d", len(all), len(queueA)+len(queueB))
	}
	perNode := map[string][]string{}
	for _, c := range all {
		perNode[c.NodeID] = append(perNode[c.NodeID], c.ID)
	}
	if !reflect.DeepEqual(perNode["n-a"], commandIDs(queueA)) || !reflect.DeepEqual(perNode["n-b"], commandIDs(queueB)) {
		t.Errorf("ListCommands(\"\") per node = %v, want queue order %v / %v", perNode, commandIDs(queueA), commandIDs(queueB))
	}

	c, err := s.GetCommand("b2")
	if err != nil || !reflect.DeepEqual(c, queueB[2]) {
		t.Errorf("GetCommand(b2) = %+v, %v", c, err)
	}
	if _, err := s.GetCommand("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetCommand(unknown) = %v, want ErrNotFound", err)
	}

	fin := base.Add(time.Minute)
	upd, err := s.UpdateCommand("b3", func(c *Command) error {
		c.State = CommandSucceeded
		c.FinishedAt = fin
		c.Deliveries++
		c.Output = map[string]string{"rc": "0"}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if upd.State != CommandSucceeded || upd.Deliveries != 1 || !upd.FinishedAt.Equal(fin) {
		t.Errorf("UpdateCommand returned %+v", upd)
	}
	if c, _ := s.GetCommand("b3"); !reflect.DeepEqual(c, upd) {
		t.Errorf("stored %+v, returned %+v", c, upd)
	}
	bad := errors.New("bad")
	if _, err := s.UpdateCommand("b9", func(c *Command) error { c.State = CommandFailed; return bad }); !errors.Is(err, bad) {
		t.Errorf("UpdateCommand with failing fn = %v", err)
	}
	if _, err := s.UpdateCommand("nope", func(*Command) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Errorf("UpdateCommand(unknown) = %v, want ErrNotFound", err)
	}
	pend, _ = s.PendingCommands("n-b")
	if want := []string{"b2", "b9"}; !reflect.DeepEqual(commandIDs(pend), want) {
		t.Errorf("PendingCommands after update = %v, want %v", commandIDs(pend), want)
	}
	// The updated command keeps its place in the queue.
	got, _ = s.ListCommands("n-b")
	if want := commandIDs(queueB); !reflect.DeepEqual(commandIDs(got), want) {
		t.Errorf("queue order after update = %v, want %v", commandIDs(got), want)
	}
}

func TestCommandStateDone(t *testing.T) {
	for st, want := range map[CommandState]bool{
		CommandPending: false, CommandDelivered: false, CommandSucceeded: true, CommandFailed: true, "": false,
	} {
		if got := st.Done(); got != want {
			t.Errorf("%q.Done() = %v, want %v", st, got, want)
		}
	}
}

// The queue key is a big-endian sequence, so order holds past 255 entries.
func TestCommandOrderManyEntries(t *testing.T) {
	s, _ := newStore(t)
	enrollNode(t, s, testNode("n1", "h1"))
	const n = 300
	var want []string
	for i := n; i > 0; i-- {
		id := fmt.Sprintf("c%03d", i)
		want = append(want, id)
		if err := s.EnqueueCommand(cmd(id, "n1", CommandPending)); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.ListCommands("n1")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(commandIDs(got), want) {
		t.Errorf("order of %d commands not preserved", n)
	}
}

func TestPersistenceAcrossReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := openStore(t, path)
	enrollNode(t, s, testNode("n1", "h1"))
	if _, err := s.RevokeToken("tok-n1", base.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []Command{cmd("c2", "n1", CommandPending), cmd("c1", "n1", CommandPending)} {
		if err := s.EnqueueCommand(c); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.UpdateCommand("c2", func(c *Command) error { c.State = CommandFailed; c.Message = "oops"; return nil }); err != nil {
		t.Fatal(err)
	}
	wantTokens, _ := s.ListTokens()
	wantNodes, _ := s.ListNodes()
	wantCmds, _ := s.ListCommands("")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openStore(t, path)
	defer s.Close()
	if got, err := s.ListTokens(); err != nil || !reflect.DeepEqual(got, wantTokens) {
		t.Errorf("tokens after reopen = %+v, %v; want %+v", got, err, wantTokens)
	}
	if got, err := s.ListNodes(); err != nil || !reflect.DeepEqual(got, wantNodes) {
		t.Errorf("nodes after reopen = %+v, %v; want %+v", got, err, wantNodes)
	}
	if got, err := s.ListCommands(""); err != nil || !reflect.DeepEqual(got, wantCmds) {
		t.Errorf("commands after reopen = %+v, %v; want %+v", got, err, wantCmds)
	}
	c, err := s.GetCommand("c2")
	if err != nil || c.State != CommandFailed || c.Message != "oops" {
		t.Errorf("GetCommand(c2) after reopen = %+v, %v", c, err)
	}
	if pend, _ := s.PendingCommands("n1"); !reflect.DeepEqual(commandIDs(pend), []string{"c1"}) {
		t.Errorf("PendingCommands after reopen = %v", commandIDs(pend))
	}
	// New commands go after the old ones.
	if err := s.EnqueueCommand(cmd("c0", "n1", CommandPending)); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.ListCommands("n1"); !reflect.DeepEqual(commandIDs(got), []string{"c2", "c1", "c0"}) {
		t.Errorf("queue after reopen and enqueue = %v", commandIDs(got))
	}
}

// A version-1 store (before fleet-managed SIEM configurations) keeps its
// data, gains the siem_configs bucket, and leaves a backup of itself.
func TestMigrateV1ToV2(t *testing.T) {
	path := filepath.Join(t.TempDir(), "controller.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
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
		return putJSON(tx.Bucket(bucketNodes), []byte("n1"), Node{ID: "n1", Hostname: "old"})
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if n, err := s.GetNode("n1"); err != nil || n.Hostname != "old" {
		t.Fatalf("node after migration = %+v, %v", n, err)
	}
	c, err := s.AddSIEMConfig(SIEMConfig{YAML: []byte("sources: []"), Selector: map[string]string{"rack": "r1"}})
	if err != nil || c.Version != 1 {
		t.Fatalf("AddSIEMConfig = %+v, %v", c, err)
	}
	if _, err := os.Stat(path + ".v1.bak"); err != nil {
		t.Errorf("no backup of the version-1 store: %v", err)
	}
	if got, ok, err := s.SIEMConfigFor(map[string]string{"rack": "r1", "x": "y"}); err != nil || !ok || got.Version != 1 {
		t.Errorf("SIEMConfigFor(matching) = %+v %v %v", got, ok, err)
	}
	if _, ok, _ := s.SIEMConfigFor(map[string]string{"rack": "r2"}); ok {
		t.Error("SIEMConfigFor(non-matching) found a config")
	}
}

// nodesEqual compares nodes field by field, the inventory as a message.
func nodesEqual(a, b Node) bool {
	ai, bi := a.Inventory, b.Inventory
	a.Inventory, b.Inventory = nil, nil
	return reflect.DeepEqual(a, b) && proto.Equal(ai, bi)
}

// TestNodeInventoryOldRecord: nodes written before the inventory became
// budfleet.host.v1.Inventory (schema 2, a hand-written struct) read with
// their inventory intact, and round-trip in the same shape.
func TestNodeInventoryOldRecord(t *testing.T) {
	s := openStore(t, filepath.Join(t.TempDir(), "store.db"))
	old := `{"id":"n1","hostname":"alpha","token_id":"t","enrolled_at":"2026-01-02T03:04:05Z","cert_serial":"1","cert_expires_at":"2026-01-09T03:04:05Z",` +
		`"inventory":{"hostname":"alpha","machine_id":"m","os":"Debian 12","kernel":"6.1","architecture":"amd64","cpu_model":"Xeon","cpu_cores":8,` +
		`"memory_bytes":17179869184,"ip_addresses":["10.0.0.1","2001:db8::1"],"agent_version":"v0.1.0"}}`
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketNodes).Put([]byte("n1"), []byte(old)) }); err != nil {
		t.Fatal(err)
	}
	n, err := s.GetNode("n1")
	if err != nil {
		t.Fatal(err)
	}
	want := &hostv1.Inventory{Hostname: "alpha", MachineId: "m", Os: "Debian 12", Kernel: "6.1", Architecture: "amd64", CpuModel: "Xeon", CpuCores: 8,
		MemoryBytes: 16 << 30, IpAddresses: []string{"10.0.0.1", "2001:db8::1"}, AgentVersion: "v0.1.0"}
	if !proto.Equal(n.Inventory, want) {
		t.Fatalf("inventory of an old record = %v, want %v", n.Inventory, want)
	}
	if _, err := s.UpdateNode("n1", func(*Node) error { return nil }); err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := s.db.View(func(tx *bolt.Tx) error { return json.Unmarshal(tx.Bucket(bucketNodes).Get([]byte("n1")), &raw) }); err != nil {
		t.Fatal(err)
	}
	inv, _ := raw["inventory"].(map[string]any)
	if inv["machine_id"] != "m" || inv["cpu_model"] != "Xeon" {
		t.Errorf("rewritten record's inventory = %v, want the proto field names", inv)
	}
}
