package bolt

import (
	"os"
	"path/filepath"
	"testing"

	bbolt "go.etcd.io/bbolt"

	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/controller/store/storetest"
)

// A version-3 store (before campaigns) opens with its data, a backup, and
// a campaigns bucket that works.
func TestMigrateV3ToV4(t *testing.T) {
	path := filepath.Join(t.TempDir(), "controller.db")
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		for _, m := range migrations[:3] {
			if err := m(tx); err != nil {
				return err
			}
		}
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if err := meta.Put(keySchemaVersion, u64(3)); err != nil {
			return err
		}
		if err := putJSON(tx.Bucket(bucketClusters), []byte("k1"), store.Cluster{Name: "k1", Kubeconfig: []byte("k"), AddedAt: base}); err != nil {
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
	if c, err := s.GetCluster(t.Context(), "k1"); err != nil || string(c.Kubeconfig) != "k" {
		t.Fatalf("cluster after migration = %+v, %v", c, err)
	}
	if _, err := os.Stat(path + ".v3.bak"); err != nil {
		t.Errorf("no backup of the version-3 store: %v", err)
	}
	c := storetest.NewCampaign(t, "c1", storetest.Base)
	if err := s.CreateCampaign(t.Context(), c); err != nil {
		t.Fatalf("CreateCampaign after migration: %v", err)
	}
	if got, err := s.GetCampaign(t.Context(), "c1"); err != nil || got.ID != "c1" {
		t.Errorf("GetCampaign after migration = %+v, %v", got, err)
	}
}
