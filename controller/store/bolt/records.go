package bolt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/bud-ecosystem/budfleet/controller/store"
)

// records is a bucket of JSON records keyed by their id and listed oldest
// first, then by id: the campaigns and the machines, which the store keeps
// the same way. noun names a record in errors ("campaign").
type records[T any] struct {
	bucket  []byte
	noun    string
	id      func(*T) string
	created func(*T) time.Time
}

func (r records[T]) create(s *Store, ctx context.Context, v T) error {
	id := r.id(&v)
	return s.update(ctx, func(tx *bbolt.Tx) error {
		b := tx.Bucket(r.bucket)
		if b.Get([]byte(id)) != nil {
			return fmt.Errorf("%s %s: %w", r.noun, id, store.ErrAlreadyExists)
		}
		return putJSON(b, []byte(id), v)
	})
}

func (r records[T]) get(s *Store, ctx context.Context, id string) (T, error) {
	var v T
	err := s.view(ctx, func(tx *bbolt.Tx) error { return getJSON(tx.Bucket(r.bucket), []byte(id), &v) })
	if errors.Is(err, store.ErrNotFound) {
		var zero T
		return zero, fmt.Errorf("%s %s: %w", r.noun, id, store.ErrNotFound)
	}
	return v, err
}

func (r records[T]) list(s *Store, ctx context.Context) ([]T, error) {
	var out []T
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		return tx.Bucket(r.bucket).ForEach(func(k, raw []byte) error {
			var v T
			if err := json.Unmarshal(raw, &v); err != nil {
				return fmt.Errorf("%s %s: %w", r.noun, k, err)
			}
			out = append(out, v)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool {
		if ci, cj := r.created(&out[i]), r.created(&out[j]); !ci.Equal(cj) {
			return ci.Before(cj)
		}
		return r.id(&out[i]) < r.id(&out[j])
	})
	return out, nil
}

// update applies fn to the stored record and saves it; an error from fn,
// or a change of the id, changes nothing.
func (r records[T]) update(s *Store, ctx context.Context, id string, fn func(*T) error) (T, error) {
	var v T
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		b := tx.Bucket(r.bucket)
		if err := getJSON(b, []byte(id), &v); err != nil {
			return fmt.Errorf("%s %s: %w", r.noun, id, err)
		}
		if err := fn(&v); err != nil {
			return err
		}
		if got := r.id(&v); got != id {
			return fmt.Errorf("%s %s: the update changed its id to %q", r.noun, id, got)
		}
		return putJSON(b, []byte(id), v)
	})
	if err != nil {
		var zero T
		return zero, err
	}
	return v, nil
}

func (r records[T]) delete(s *Store, ctx context.Context, id string) error {
	return s.update(ctx, func(tx *bbolt.Tx) error {
		b := tx.Bucket(r.bucket)
		if b.Get([]byte(id)) == nil {
			return fmt.Errorf("%s %s: %w", r.noun, id, store.ErrNotFound)
		}
		return b.Delete([]byte(id))
	})
}
