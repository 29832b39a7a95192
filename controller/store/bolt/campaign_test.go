package bolt

import (
	"os"
	"path/filepath"
	"testing"

	bbolt "go.etcd.io/bbolt"

	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/controller/store/storetest"
)

// A version-2 store (before campaigns) opens with its data, a backup, and
// a campaigns bucket that works.
func TestMigrateV2ToV3(t *testing.T) {
	path := filepath.Join(t.TempDir(), "controller.db")
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		for _, m := range migrations[:2] {
			if err := m(tx); err != nil {
				return err
			}
		}
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if err := meta.Put(keySchemaVersion, u64(2)); err != nil {
			return err
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
	if _, err := os.Stat(path + ".v2.bak"); err != nil {
		t.Errorf("no backup of the version-2 store: %v", err)
	}
	c := storetest.NewCampaign(t, "c1", storetest.Base)
	if err := s.CreateCampaign(t.Context(), c); err != nil {
		t.Fatalf("CreateCampaign after migration: %v", err)
	}
	if got, err := s.GetCampaign(t.Context(), "c1"); err != nil || got.ID != "c1" {
		t.Errorf("GetCampaign after migration = %+v, %v", got, err)
	}
}
