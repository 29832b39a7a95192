package bolt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	bbolt "go.etcd.io/bbolt"

	"github.com/bud-ecosystem/budfleet/controller/store"
)

// bucketClusters holds the registered Kubernetes clusters (since schema
// version 3): <name> -> JSON store.Cluster, its kubeconfig included.
var bucketClusters = []byte("clusters")

// migrateClusters (2 -> 3) adds the clusters bucket.
func migrateClusters(tx *bbolt.Tx) error {
	_, err := tx.CreateBucketIfNotExists(bucketClusters)
	return err
}

// AddCluster stores a new cluster; the name must be free.
func (s *Store) AddCluster(ctx context.Context, c store.Cluster) error {
	return s.update(ctx, func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketClusters)
		if b.Get([]byte(c.Name)) != nil {
			return fmt.Errorf("cluster %s: %w", c.Name, store.ErrAlreadyExists)
		}
		return putJSON(b, []byte(c.Name), c)
	})
}

// GetCluster returns the cluster with name.
func (s *Store) GetCluster(ctx context.Context, name string) (store.Cluster, error) {
	var c store.Cluster
	err := s.view(ctx, func(tx *bbolt.Tx) error { return getJSON(tx.Bucket(bucketClusters), []byte(name), &c) })
	if errors.Is(err, store.ErrNotFound) {
		return c, fmt.Errorf("cluster %s: %w", name, store.ErrNotFound)
	}
	return c, err
}

// ListClusters returns every cluster, by name (the bucket's key order).
func (s *Store) ListClusters(ctx context.Context) ([]store.Cluster, error) {
	var out []store.Cluster
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketClusters).ForEach(func(_, v []byte) error {
			var c store.Cluster
			if err := json.Unmarshal(v, &c); err != nil {
				return err
			}
			out = append(out, c)
			return nil
		})
	})
	return out, err
}

// DeleteCluster removes a cluster.
func (s *Store) DeleteCluster(ctx context.Context, name string) error {
	return s.update(ctx, func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketClusters)
		if b.Get([]byte(name)) == nil {
			return fmt.Errorf("cluster %s: %w", name, store.ErrNotFound)
		}
		return b.Delete([]byte(name))
	})
}
