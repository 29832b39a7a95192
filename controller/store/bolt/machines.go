package bolt

import (
	"context"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/bud-ecosystem/budfleet/controller/store"
)

// bucketMachines holds the machines of provider plugins: <machine id> ->
// JSON store.Machine (since schema version 6).
var bucketMachines = []byte("machines")

// migrateMachines is the migration 5 -> 6: the machines bucket. It is one
// bucket and nothing else, so that it can move to another place in the
// order without touching the other migrations.
func migrateMachines(tx *bbolt.Tx) error {
	_, err := tx.CreateBucketIfNotExists(bucketMachines)
	return err
}

// machineRecords are the stored machines.
var machineRecords = records[store.Machine]{
	bucket:  bucketMachines,
	noun:    "machine",
	id:      func(v *store.Machine) string { return v.ID },
	created: func(v *store.Machine) time.Time { return v.CreatedAt },
}

// CreateMachine stores a new machine.
func (s *Store) CreateMachine(ctx context.Context, v store.Machine) error {
	return machineRecords.create(s, ctx, v)
}

// GetMachine returns the machine with id.
func (s *Store) GetMachine(ctx context.Context, id string) (store.Machine, error) {
	return machineRecords.get(s, ctx, id)
}

// ListMachines returns every machine, oldest first, then by id.
func (s *Store) ListMachines(ctx context.Context) ([]store.Machine, error) {
	return machineRecords.list(s, ctx)
}

// UpdateMachine applies fn to the stored machine and saves it; an error
// from fn changes nothing.
func (s *Store) UpdateMachine(ctx context.Context, id string, fn func(*store.Machine) error) (store.Machine, error) {
	return machineRecords.update(s, ctx, id, fn)
}

// DeleteMachine removes a machine.
func (s *Store) DeleteMachine(ctx context.Context, id string) error {
	return machineRecords.delete(s, ctx, id)
}
