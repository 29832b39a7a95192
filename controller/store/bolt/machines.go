package bolt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	bbolt "go.etcd.io/bbolt"

	"github.com/bud-ecosystem/budfleet/controller/store"
)

// bucketMachines holds the machines of provider plugins: <machine id> ->
// JSON store.Machine (since schema version 5).
var bucketMachines = []byte("machines")

// migrateMachines is the migration 4 -> 5: the machines bucket. It is one
// bucket and nothing else, so that it can move to another place in the
// order without touching the other migrations.
func migrateMachines(tx *bbolt.Tx) error {
	_, err := tx.CreateBucketIfNotExists(bucketMachines)
	return err
}

// CreateMachine stores a new machine.
func (s *Store) CreateMachine(ctx context.Context, m store.Machine) error {
	return s.update(ctx, func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketMachines)
		if b.Get([]byte(m.ID)) != nil {
			return fmt.Errorf("machine %s: %w", m.ID, store.ErrAlreadyExists)
		}
		return putJSON(b, []byte(m.ID), m)
	})
}

// GetMachine returns the machine with id.
func (s *Store) GetMachine(ctx context.Context, id string) (store.Machine, error) {
	var m store.Machine
	err := s.view(ctx, func(tx *bbolt.Tx) error { return getJSON(tx.Bucket(bucketMachines), []byte(id), &m) })
	if errors.Is(err, store.ErrNotFound) {
		return store.Machine{}, fmt.Errorf("machine %s: %w", id, store.ErrNotFound)
	}
	return m, err
}

// ListMachines returns every machine, oldest first, then by id.
func (s *Store) ListMachines(ctx context.Context) ([]store.Machine, error) {
	var out []store.Machine
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketMachines).ForEach(func(k, v []byte) error {
			var m store.Machine
			if err := json.Unmarshal(v, &m); err != nil {
				return fmt.Errorf("machine %s: %w", k, err)
			}
			out = append(out, m)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// UpdateMachine applies fn to the stored machine and saves it; an error
// from fn changes nothing.
func (s *Store) UpdateMachine(ctx context.Context, id string, fn func(*store.Machine) error) (store.Machine, error) {
	var m store.Machine
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketMachines)
		if err := getJSON(b, []byte(id), &m); err != nil {
			return fmt.Errorf("machine %s: %w", id, err)
		}
		if err := fn(&m); err != nil {
			return err
		}
		if m.ID != id {
			return fmt.Errorf("machine %s: the update changed its id to %q", id, m.ID)
		}
		return putJSON(b, []byte(id), m)
	})
	if err != nil {
		return store.Machine{}, err
	}
	return m, nil
}

// DeleteMachine removes a machine.
func (s *Store) DeleteMachine(ctx context.Context, id string) error {
	return s.update(ctx, func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketMachines)
		if b.Get([]byte(id)) == nil {
			return fmt.Errorf("machine %s: %w", id, store.ErrNotFound)
		}
		return b.Delete([]byte(id))
	})
}
