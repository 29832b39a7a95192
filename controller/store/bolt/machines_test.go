package bolt

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	bbolt "go.etcd.io/bbolt"

	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/controller/store/storetest"
)

// A store from before machines (the version the machines migration starts
// from) opens with its data, a backup, and a machines bucket that works.
func TestMigrateToMachines(t *testing.T) {
	before := migrationIndex(t, migrateMachines)
	path := filepath.Join(t.TempDir(), "controller.db")
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		for _, m := range migrations[:before] {
			if err := m(tx); err != nil {
				return err
			}
		}
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if err := meta.Put(keySchemaVersion, u64(before)); err != nil {
			return err
		}
		if tx.Bucket(bucketMachines) != nil {
			return fmt.Errorf("the machines bucket exists at version %d", before)
		}
		return putJSON(tx.Bucket(bucketNodes), []byte("n1"), store.Node{ID: "n1", Hostname: "old"})
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s := openStore(t, path)
	defer s.Close()
	if n, err := s.GetNode(t.Context(), "n1"); err != nil || n.Hostname != "old" {
		t.Fatalf("node after migration = %+v, %v", n, err)
	}
	if _, err := os.Stat(fmt.Sprintf("%s.v%d.bak", path, before)); err != nil {
		t.Errorf("no backup of the version-%d store: %v", before, err)
	}
	m := storetest.NewMachine("m1", storetest.Base)
	if err := s.CreateMachine(t.Context(), m); err != nil {
		t.Fatalf("CreateMachine after migration: %v", err)
	}
	if got, err := s.GetMachine(t.Context(), "m1"); err != nil || !reflect.DeepEqual(got, m) {
		t.Errorf("GetMachine after migration = %+v, %v", got, err)
	}
}
