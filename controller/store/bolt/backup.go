package bolt

import (
	"context"
	"fmt"
	"io"

	bbolt "go.etcd.io/bbolt"

	"github.com/bud-ecosystem/budfleet/controller/backup"
)

// Snapshot writes a consistent copy of the whole file to w, from one read
// transaction (writers go on meanwhile), and says what it wrote.
func (s *Store) Snapshot(ctx context.Context, w io.Writer) (backup.Manifest, error) {
	m := backup.Manifest{Backend: backup.BackendBolt, SchemaVersion: SchemaVersion()}
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		_, err := tx.WriteTo(w)
		return err
	})
	if err != nil {
		return m, fmt.Errorf("snapshot the controller store: %w", err)
	}
	return m, nil
}
