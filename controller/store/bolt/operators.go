package bolt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	bbolt "go.etcd.io/bbolt"

	"github.com/bud-ecosystem/budfleet/controller/store"
)

// bucketOperators holds operator credentials: <name> -> JSON
// store.Operator (since schema version 7).
var bucketOperators = []byte("operators")

// migrateOperators is the migration 6 -> 7: the operators bucket, and
// nothing else, so that it can move in the order without touching the
// other migrations.
func migrateOperators(tx *bbolt.Tx) error {
	_, err := tx.CreateBucketIfNotExists(bucketOperators)
	return err
}

// PutOperator stores o unless a live operator has its name.
func (s *Store) PutOperator(ctx context.Context, o store.Operator) error {
	return s.update(ctx, func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketOperators)
		var old store.Operator
		if err := getJSON(b, []byte(o.Name), &old); err == nil && !old.Revoked {
			return fmt.Errorf("operator %s: %w", o.Name, store.ErrAlreadyExists)
		}
		return putJSON(b, []byte(o.Name), o)
	})
}

// GetOperator returns the operator named name.
func (s *Store) GetOperator(ctx context.Context, name string) (store.Operator, error) {
	var o store.Operator
	err := s.view(ctx, func(tx *bbolt.Tx) error { return getJSON(tx.Bucket(bucketOperators), []byte(name), &o) })
	if errors.Is(err, store.ErrNotFound) {
		return store.Operator{}, fmt.Errorf("operator %s: %w", name, store.ErrNotFound)
	}
	return o, err
}

// ListOperators returns every operator by name (the bucket's key order).
func (s *Store) ListOperators(ctx context.Context) ([]store.Operator, error) {
	var out []store.Operator
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketOperators).ForEach(func(k, v []byte) error {
			var o store.Operator
			if err := json.Unmarshal(v, &o); err != nil {
				return fmt.Errorf("operator %s: %w", k, err)
			}
			out = append(out, o)
			return nil
		})
	})
	return out, err
}

// UpdateOperator applies fn to the stored operator and saves it.
func (s *Store) UpdateOperator(ctx context.Context, name string, fn func(*store.Operator) error) (store.Operator, error) {
	var o store.Operator
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketOperators)
		if err := getJSON(b, []byte(name), &o); err != nil {
			return fmt.Errorf("operator %s: %w", name, err)
		}
		if err := fn(&o); err != nil {
			return err
		}
		o.Name = name
		return putJSON(b, []byte(name), o)
	})
	if err != nil {
		return store.Operator{}, err
	}
	return o, nil
}
