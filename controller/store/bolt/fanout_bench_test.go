package bolt

import (
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	bbolt "go.etcd.io/bbolt"

	"github.com/bud-ecosystem/budfleet/controller/store"
)

// BenchmarkFanOut is a fan-out's store writes on a fleet of nodes: the
// batch queued in one EnqueueCommands, then every node's result written
// at once through UpdateCommand, as 10,000 sessions do (the group commit
// folds them). The fleet is 10,000 nodes, P3's; command ids are random
// UUIDs, as the controller makes them.
//
//	go test ./controller/store/bolt -run '^$' -bench FanOut -benchtime=3x
func BenchmarkFanOut(b *testing.B) {
	const nodes = 10000
	s, err := Open(filepath.Join(b.TempDir(), "c.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := b.Context()
	ids := make([]string, nodes)
	if err := s.db.Update(func(tx *bbolt.Tx) error {
		nb := tx.Bucket(bucketNodes)
		for i := range ids {
			ids[i] = fmt.Sprintf("node-%05d", i)
			if err := putNode(nb, []byte(ids[i]), store.Node{ID: ids[i], Hostname: ids[i], TokenID: "t", EnrolledAt: time.Now()}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	txid := func() (id int) {
		_ = s.db.View(func(tx *bbolt.Tx) error { id = tx.ID(); return nil })
		return id
	}
	var enqueue, results time.Duration
	var commits int
	for i := 0; b.Loop(); i++ {
		batch := store.CommandBatch{ID: fmt.Sprintf("b%d", i), Kind: "inventory.collect", Selector: "all", CreatedAt: time.Now()}
		cs := make([]store.Command, nodes)
		for j, id := range ids {
			cs[j] = store.Command{ID: uuid.NewString(), NodeID: id, Kind: batch.Kind, State: store.CommandPending, CreatedAt: batch.CreatedAt, BatchID: batch.ID}
		}
		t0 := time.Now()
		if err := s.EnqueueCommands(ctx, batch, cs); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		tx0 := txid()
		var wg sync.WaitGroup
		for _, c := range cs {
			wg.Go(func() {
				if _, err := s.UpdateCommand(ctx, c.ID, func(c *store.Command) error {
					c.State = store.CommandSucceeded
					c.Deliveries++
					c.FinishedAt = time.Now()
					c.Output = map[string]string{"hostname": c.NodeID}
					return nil
				}); err != nil {
					b.Error(err)
				}
			})
		}
		wg.Wait()
		commits += txid() - tx0
		enqueue += t1.Sub(t0)
		results += time.Since(t1)
	}
	b.ReportMetric(float64(enqueue.Milliseconds())/float64(b.N), "enqueue-ms/op")
	b.ReportMetric(float64(results.Milliseconds())/float64(b.N), "results-ms/op")
	b.ReportMetric(float64(commits)/float64(b.N), "result-commits/op")
}
