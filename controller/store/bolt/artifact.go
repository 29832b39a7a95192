package bolt

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	bbolt "go.etcd.io/bbolt"

	"github.com/bud-ecosystem/budfleet/controller/store"
)

// The artifact store's metadata (since schema version 5): artifacts holds
// <digest> -> JSON store.Artifact, artifact_names <name> NUL <version> NUL
// <platform> -> <digest>, so both are unique and the names list in order.
var (
	bucketArtifacts     = []byte("artifacts")
	bucketArtifactNames = []byte("artifact_names")
)

// migrateArtifacts is the migration 4 -> 5: the artifact buckets.
func migrateArtifacts(tx *bbolt.Tx) error {
	for _, b := range [][]byte{bucketArtifacts, bucketArtifactNames} {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return err
		}
	}
	return nil
}

func artifactNameKey(name, version, platform string) []byte {
	return []byte(name + "\x00" + version + "\x00" + platform)
}

// PutArtifact stores a unless its digest or its name, version and
// platform are taken; the same artifact again returns the stored one.
func (s *Store) PutArtifact(ctx context.Context, a store.Artifact) (store.Artifact, bool, error) {
	var stored store.Artifact
	created := false
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		ab, nb := tx.Bucket(bucketArtifacts), tx.Bucket(bucketArtifactNames)
		key := artifactNameKey(a.Name, a.Version, a.Platform)
		if err := getJSON(ab, []byte(a.Digest), &stored); err == nil {
			if stored.Name == a.Name && stored.Version == a.Version && stored.Platform == a.Platform {
				return nil
			}
			return fmt.Errorf("artifact %s@%s (%s): its content, %s, is already stored as %s@%s (%s): %w", a.Name, a.Version, a.Platform, a.Digest, stored.Name, stored.Version, stored.Platform, store.ErrAlreadyExists)
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if d := nb.Get(key); d != nil {
			var other store.Artifact
			if err := getJSON(ab, d, &other); err != nil {
				return fmt.Errorf("artifact %s@%s (%s) names %s: %w", a.Name, a.Version, a.Platform, d, err)
			}
			return fmt.Errorf("artifact %s@%s (%s) is already bound to other content, %s: %w", a.Name, a.Version, a.Platform, other.Digest, store.ErrAlreadyExists)
		}
		if err := putJSON(ab, []byte(a.Digest), a); err != nil {
			return err
		}
		stored, created = a, true
		return nb.Put(key, []byte(a.Digest))
	})
	if err != nil {
		return store.Artifact{}, false, err
	}
	return stored, created, nil
}

// GetArtifact returns the artifact with digest.
func (s *Store) GetArtifact(ctx context.Context, digest string) (store.Artifact, error) {
	var a store.Artifact
	err := s.view(ctx, func(tx *bbolt.Tx) error { return getJSON(tx.Bucket(bucketArtifacts), []byte(digest), &a) })
	if errors.Is(err, store.ErrNotFound) {
		return a, fmt.Errorf("artifact %s: %w", digest, store.ErrNotFound)
	}
	return a, err
}

// FindArtifacts returns the artifacts named name at version, by platform.
func (s *Store) FindArtifacts(ctx context.Context, name, version string) ([]store.Artifact, error) {
	prefix := []byte(name + "\x00" + version + "\x00")
	return s.listArtifacts(ctx, prefix)
}

// ListArtifacts returns every artifact by name, version, platform.
func (s *Store) ListArtifacts(ctx context.Context) ([]store.Artifact, error) {
	return s.listArtifacts(ctx, nil)
}

// listArtifacts returns the artifacts whose name keys start with prefix,
// in key order.
func (s *Store) listArtifacts(ctx context.Context, prefix []byte) ([]store.Artifact, error) {
	var out []store.Artifact
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		ab := tx.Bucket(bucketArtifacts)
		cur := tx.Bucket(bucketArtifactNames).Cursor()
		for k, d := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, d = cur.Next() {
			var a store.Artifact
			if err := getJSON(ab, d, &a); err != nil {
				return fmt.Errorf("artifact %s: %w", d, err)
			}
			out = append(out, a)
		}
		return nil
	})
	return out, err
}

// DeleteArtifact removes the artifact with digest and frees its name.
func (s *Store) DeleteArtifact(ctx context.Context, digest string) error {
	return s.update(ctx, func(tx *bbolt.Tx) error {
		ab := tx.Bucket(bucketArtifacts)
		var a store.Artifact
		if err := getJSON(ab, []byte(digest), &a); err != nil {
			return fmt.Errorf("artifact %s: %w", digest, err)
		}
		if err := tx.Bucket(bucketArtifactNames).Delete(artifactNameKey(a.Name, a.Version, a.Platform)); err != nil {
			return err
		}
		return ab.Delete([]byte(digest))
	})
}
