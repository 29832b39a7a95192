package state

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// backends runs f against a fresh bbolt state and a fresh memory state, so
// that OpenMemory is held to what the file does.
func backends(t *testing.T, f func(t *testing.T, db *DB)) {
	t.Run("bolt", func(t *testing.T) {
		db := open(t, filepath.Join(t.TempDir(), "state"))
		t.Cleanup(func() { db.Close() })
		f(t, db)
	})
	t.Run("memory", func(t *testing.T) {
		db := OpenMemory()
		t.Cleanup(func() { db.Close() })
		f(t, db)
	})
}

func TestBackendsIdentity(t *testing.T) {
	backends(t, func(t *testing.T, db *DB) {
		if _, err := db.Identity(); !errors.Is(err, ErrNotEnrolled) {
			t.Fatalf("Identity before enrolling = %v, want ErrNotEnrolled", err)
		}
		key := []byte("KEY")
		want := Identity{NodeID: "n1", Controller: "127.0.0.1:7443", ServerName: "127.0.0.1", KeyPEM: key, CertDER: []byte{1, 2}, CADER: []byte{3}, Hostname: "h1"}
		if err := db.SaveIdentity(want); err != nil {
			t.Fatal(err)
		}
		key[0] = 'X' // the caller's slice is not kept
		got, err := db.Identity()
		if err != nil {
			t.Fatal(err)
		}
		want.KeyPEM = []byte("KEY")
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("Identity = %+v, want %+v", got, want)
		}
		got.CertDER[0] = 9 // nor is the returned one shared
		if err := db.UpdateCertificate([]byte{7, 7}); err != nil {
			t.Fatal(err)
		}
		again, err := db.Identity()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again.CertDER, []byte{7, 7}) || again.NodeID != "n1" || !bytes.Equal(again.KeyPEM, []byte("KEY")) {
			t.Fatalf("after UpdateCertificate: %+v", again)
		}
	})
}

func TestBackendsCommands(t *testing.T) {
	backends(t, func(t *testing.T, db *DB) {
		if _, err := db.Command("nope"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Command(unknown) = %v, want ErrNotFound", err)
		}
		rec, first, err := db.BeginCommand("c1", "inventory.collect", base)
		if err != nil || !first || rec.Deliveries != 1 {
			t.Fatalf("first BeginCommand = %+v, %v, %v", rec, first, err)
		}
		rec, first, err = db.BeginCommand("c1", "inventory.collect", base.Add(time.Minute))
		if err != nil || first || rec.Deliveries != 2 || !rec.StartedAt.Equal(base) {
			t.Fatalf("second BeginCommand = %+v, first %v, %v; the command would run twice", rec, first, err)
		}
		rec.FinishedAt, rec.Success, rec.Output = base.Add(time.Second), true, map[string]string{"a": "b"}
		if err := db.FinishCommand(rec); err != nil {
			t.Fatal(err)
		}
		rec.Output["a"] = "changed" // stored as a copy
		got, err := db.Command("c1")
		if err != nil {
			t.Fatal(err)
		}
		if !got.Finished() || !got.Success || got.Output["a"] != "b" || got.Deliveries != 2 {
			t.Fatalf("stored = %+v", got)
		}
		again, first, err := db.BeginCommand("c1", "inventory.collect", base.Add(time.Hour))
		if err != nil || first || !again.Finished() || again.Deliveries != 3 {
			t.Fatalf("redelivery of a finished command = %+v first=%v err=%v", again, first, err)
		}

		cutoff := base.Add(24 * time.Hour)
		for i := range 20 {
			id := fmt.Sprintf("p%02d", i)
			r, _, err := db.BeginCommand(id, "k", base)
			if err != nil {
				t.Fatal(err)
			}
			if i%2 == 0 { // finished before the cutoff; odd ones never finish
				r.FinishedAt = cutoff.Add(-time.Minute)
				if err := db.FinishCommand(r); err != nil {
					t.Fatal(err)
				}
			}
		}
		n, err := db.PruneCommands(cutoff)
		if err != nil || n != 11 { // ten p-records and c1
			t.Fatalf("PruneCommands = %d, %v; want 11", n, err)
		}
		for i := range 20 {
			_, err := db.Command(fmt.Sprintf("p%02d", i))
			if i%2 == 0 && !errors.Is(err, ErrNotFound) || i%2 == 1 && err != nil {
				t.Errorf("p%02d after prune: %v", i, err)
			}
		}
	})
}

func TestBackendsPushedSIEM(t *testing.T) {
	backends(t, func(t *testing.T, db *DB) {
		if _, ok, err := db.PushedSIEM(); err != nil || ok {
			t.Fatalf("PushedSIEM before any = ok %v, %v", ok, err)
		}
		want := PushedConfig{Version: 3, YAML: []byte("siem: {}\n")}
		if err := db.SavePushedSIEM(want); err != nil {
			t.Fatal(err)
		}
		got, ok, err := db.PushedSIEM()
		if err != nil || !ok || !reflect.DeepEqual(got, want) {
			t.Fatalf("PushedSIEM = %+v ok %v err %v, want %+v", got, ok, err, want)
		}
	})
}

func TestMemoryHasNoDir(t *testing.T) {
	if d := OpenMemory().Dir(); d != "" {
		t.Fatalf("Dir of a memory state = %q, want empty", d)
	}
}
