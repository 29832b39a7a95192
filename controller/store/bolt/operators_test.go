package bolt

import (
	"errors"
	"reflect"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/bud-ecosystem/budfleet/controller/store"
)

// migrationIndex is the schema version m starts from, wherever the lead
// puts it in the order.
func migrationIndex(t *testing.T, m func(*bbolt.Tx) error) uint64 {
	t.Helper()
	want := reflect.ValueOf(m).Pointer()
	for i, x := range migrations {
		if reflect.ValueOf(x).Pointer() == want {
			return uint64(i)
		}
	}
	t.Fatal("migration not in the list")
	return 0
}

func TestOperators(t *testing.T) {
	s, _ := newStore(t)
	ctx := t.Context()
	now := time.Now().UTC().Truncate(time.Second)
	o := store.Operator{Name: "alice", Role: "viewer", Serial: "ab", IssuedAt: now, ExpiresAt: now.Add(time.Hour)}
	if err := s.PutOperator(ctx, o); err != nil {
		t.Fatal(err)
	}
	if err := s.PutOperator(ctx, o); !errors.Is(err, store.ErrAlreadyExists) {
		t.Fatalf("second PutOperator = %v, want ErrAlreadyExists", err)
	}
	if _, err := s.GetOperator(ctx, "bob"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetOperator(bob) = %v", err)
	}
	got, err := s.UpdateOperator(ctx, "alice", func(o *store.Operator) error { o.Revoked = true; o.RevokedAt = now; return nil })
	if err != nil || !got.Revoked {
		t.Fatalf("UpdateOperator = %+v, %v", got, err)
	}
	// A revoked name may be issued again.
	o.Serial = "cd"
	if err := s.PutOperator(ctx, o); err != nil {
		t.Fatalf("PutOperator over a revoked one: %v", err)
	}
	list, err := s.ListOperators(ctx)
	if err != nil || len(list) != 1 || list[0].Serial != "cd" || list[0].Revoked {
		t.Fatalf("ListOperators = %+v, %v", list, err)
	}
	if _, err := s.UpdateOperator(ctx, "nobody", func(*store.Operator) error { return nil }); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("UpdateOperator(nobody) = %v", err)
	}
}
