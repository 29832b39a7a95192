package bolt

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"
)

func openGroup(t *testing.T) *groupCommit {
	t.Helper()
	db, err := bbolt.Open(filepath.Join(t.TempDir(), "g.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Update(func(tx *bbolt.Tx) error { _, err := tx.CreateBucket([]byte("b")); return err }); err != nil {
		t.Fatal(err)
	}
	return &groupCommit{db: db}
}

// Writes that arrive while a commit is under way all go into the next
// transaction, however long that commit takes; a write that fails gets
// its own error and changes nothing, and the others in its group still
// commit.
func TestGroupCommit(t *testing.T) {
	g := openGroup(t)
	var mu sync.Mutex
	txs := map[int]bool{}
	put := func(k string) func(*bbolt.Tx) error {
		return func(tx *bbolt.Tx) error {
			mu.Lock()
			txs[tx.ID()] = true
			mu.Unlock()
			return tx.Bucket([]byte("b")).Put([]byte(k), []byte("v"))
		}
	}
	hold, held := make(chan struct{}), make(chan struct{})
	errc := make(chan error, 100)
	go func() {
		errc <- g.do(func(tx *bbolt.Tx) error {
			close(held)
			<-hold // a slow commit
			return put("first")(tx)
		})
	}()
	<-held
	const n = 50
	bad := errors.New("refused")
	for i := range n {
		go func() {
			if i == 7 {
				errc <- g.do(func(tx *bbolt.Tx) error {
					if err := put("bad")(tx); err != nil {
						return err
					}
					return bad
				})
				return
			}
			errc <- g.do(put(fmt.Sprintf("k%02d", i)))
		}()
	}
	for { // poll until all n wait behind the held commit
		g.mu.Lock()
		q := len(g.queue)
		g.mu.Unlock()
		if q == n {
			break
		}
		time.Sleep(time.Millisecond) // poll interval
	}
	close(hold)
	var refused int
	for range n + 1 {
		switch err := <-errc; {
		case errors.Is(err, bad):
			refused++
		case err != nil:
			t.Fatal(err)
		}
	}
	if refused != 1 {
		t.Errorf("%d writes got the failing write's error; want 1", refused)
	}
	if err := g.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte("b"))
		if b.Get([]byte("bad")) != nil {
			t.Error("the failed write's change was stored")
		}
		for i := range n {
			if i != 7 && b.Get(fmt.Appendf(nil, "k%02d", i)) == nil {
				t.Errorf("k%02d not stored", i)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// The first alone, the 49 that waited together; the failed write
	// costs the group one rerun and runs once alone.
	mu.Lock()
	defer mu.Unlock()
	if len(txs) > 4 {
		t.Errorf("%d transactions; want the 50 that waited behind one commit to share one (and its rerun)", len(txs))
	}
}

// A panic in one write is its caller's, and the others commit.
func TestGroupCommitPanic(t *testing.T) {
	g := openGroup(t)
	defer func() {
		if recover() == nil {
			t.Error("the panic was swallowed")
		}
		if err := g.do(func(tx *bbolt.Tx) error { return tx.Bucket([]byte("b")).Put([]byte("k"), []byte("v")) }); err != nil {
			t.Errorf("a write after the panic: %v", err)
		}
	}()
	_ = g.do(func(*bbolt.Tx) error { panic("boom") })
}
