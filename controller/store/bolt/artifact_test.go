package bolt

import (
	"os"
	"path/filepath"
	"testing"

	bbolt "go.etcd.io/bbolt"

	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/controller/store/storetest"
)

// A version-4 store (before artifacts) opens with its data, a backup, and
// artifact buckets that work.
func TestMigrateV4ToV5(t *testing.T) {
	path := filepath.Join(t.TempDir(), "controller.db")
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		for _, m := range migrations[:4] {
			if err := m(tx); err != nil {
				return err
			}
		}
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if err := meta.Put(keySchemaVersion, u64(4)); err != nil {
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
	if _, err := os.Stat(path + ".v4.bak"); err != nil {
		t.Errorf("no backup of the version-4 store: %v", err)
	}
	a := storetest.NewArtifact("kubelet", "v1.37.2", "linux/amd64", "k")
	if _, created, err := s.PutArtifact(t.Context(), a); err != nil || !created {
		t.Fatalf("PutArtifact after migration = %v, %v", created, err)
	}
	if got, err := s.GetArtifact(t.Context(), a.Digest); err != nil || got.Name != "kubelet" {
		t.Errorf("GetArtifact after migration = %+v, %v", got, err)
	}
}
