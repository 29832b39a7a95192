package bolt

import (
	"os"
	"path/filepath"
	"testing"

	bbolt "go.etcd.io/bbolt"

	"github.com/bud-ecosystem/budfleet/controller/store"
)

// A version-2 store (before Kubernetes clusters) keeps its data, gains the
// clusters bucket, and leaves a backup of itself.
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

	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if n, err := s.GetNode(t.Context(), "n1"); err != nil || n.Hostname != "old" {
		t.Fatalf("node after migration = %+v, %v", n, err)
	}
	if cs, err := s.ListClusters(t.Context()); err != nil || len(cs) != 0 {
		t.Fatalf("ListClusters after migration = %v, %v", cs, err)
	}
	if err := s.AddCluster(t.Context(), store.Cluster{Name: "c1", Kubeconfig: []byte("k"), AddedAt: base}); err != nil {
		t.Fatalf("AddCluster after migration: %v", err)
	}
	if _, err := os.Stat(path + ".v2.bak"); err != nil {
		t.Errorf("no backup of the version-2 store: %v", err)
	}
}
