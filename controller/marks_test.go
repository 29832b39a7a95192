package controller

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/command"
	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/controller/store/bolt"
)

// markRecorder is the bolt store with MarkDelivered's calls counted, and
// a hook run inside the first.
type markRecorder struct {
	*bolt.Store
	mu     sync.Mutex
	sizes  []int
	during func()
}

func (r *markRecorder) MarkDelivered(ctx context.Context, marks []store.DeliveryMark) error {
	r.mu.Lock()
	r.sizes = append(r.sizes, len(marks))
	f := r.during
	r.during = nil
	r.mu.Unlock()
	if f != nil {
		f()
	}
	return r.Store.MarkDelivered(ctx, marks)
}

// A fan-out's marks are written a chunk at a time, so no one write holds
// the store's writer for all of them, and a result that comes while the
// first chunk is written carries its own mark instead of waiting for the
// rest.
func TestDeliveryMarksChunked(t *testing.T) {
	e := newTestServer(t)
	addNode(t, e, "n1")
	const n = 600
	b := store.CommandBatch{ID: "b1", Kind: command.InventoryCollect, Selector: "all", CreatedAt: base}
	cs := make([]store.Command, n)
	for i := range cs {
		cs[i] = store.Command{ID: fmt.Sprintf("c%03d", i), NodeID: "n1", Kind: b.Kind, State: store.CommandPending, CreatedAt: base, BatchID: b.ID}
	}
	if err := e.store.EnqueueCommands(t.Context(), b, cs); err != nil {
		t.Fatal(err)
	}
	rec := &markRecorder{Store: e.store}
	srv, err := New(Options{Store: rec, CA: e.ca, Logger: discardLogger(), Now: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	k := srv.commands.marks
	for _, c := range cs {
		// Not add: its loop would write them on its own a second later.
		sh := k.shard(c.ID)
		sh.mu.Lock()
		sh.pending[c.ID] = store.DeliveryMark{ID: c.ID, At: base, Count: 1}
		sh.mu.Unlock()
	}

	var carried string
	var carriedOK bool
	rec.during = func() {
		for i := range k.shards {
			sh := &k.shards[i]
			sh.mu.Lock()
			for id := range sh.pending {
				carried = id
				break
			}
			sh.mu.Unlock()
			if carried != "" {
				break
			}
		}
		// A result arriving now: bounded, since a mark being written is
		// waited for.
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		_, carriedOK = k.take(ctx, carried)
	}
	k.flush()

	total := 0
	for _, s := range rec.sizes {
		if s > markChunk {
			t.Errorf("one write of %d marks; want at most %d", s, markChunk)
		}
		total += s
	}
	if !carriedOK {
		t.Fatalf("a result during the first write did not get its mark (%q) to carry: it waited behind the write", carried)
	}
	if total != n-1 {
		t.Errorf("%d marks written in %v; want %d (all but the one a result carried)", total, rec.sizes, n-1)
	}
	got, err := e.store.ListCommands(t.Context(), "n1")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range got {
		want := store.CommandDelivered
		if c.ID == carried {
			want = store.CommandPending // its result's write records the delivery
		}
		if c.State != want || (want == store.CommandDelivered && c.Deliveries != 1) {
			t.Errorf("%s: %s, %d deliveries; want %s", c.ID, c.State, c.Deliveries, want)
		}
	}
	writing := 0
	for i := range k.shards {
		writing += len(k.shards[i].writing)
	}
	if writing != 0 || k.pendingCount() != 0 {
		t.Errorf("marks left behind: %d writing, %d pending", writing, k.pendingCount())
	}
}

// A mark added after the background loop has ended starts it again, and
// marks added while it runs are written in a later round: none is left
// pending.
func TestDeliveryMarksLoopRestarts(t *testing.T) {
	e := newTestServer(t)
	addNode(t, e, "n1")
	for _, id := range []string{"c1", "c2", "c3"} {
		if err := e.store.EnqueueCommand(t.Context(), store.Command{ID: id, NodeID: "n1", Kind: command.InventoryCollect, State: store.CommandPending, CreatedAt: base}); err != nil {
			t.Fatal(err)
		}
	}
	rec := &markRecorder{Store: e.store}
	srv, err := New(Options{Store: rec, CA: e.ca, Logger: discardLogger(), Now: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	k := srv.commands.marks
	written := func(want int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			rec.mu.Lock()
			n := 0
			for _, s := range rec.sizes {
				n += s
			}
			rec.mu.Unlock()
			if n == want && k.pendingCount() == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d marks written, %d pending; want %d written", n, k.pendingCount(), want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	k.add(store.DeliveryMark{ID: "c1", At: base, Count: 1})
	written(1)
	for deadline := time.Now().Add(5 * time.Second); k.running.Load(); {
		if time.Now().After(deadline) {
			t.Fatal("the marks loop did not end with nothing pending")
		}
		time.Sleep(20 * time.Millisecond)
	}
	k.add(store.DeliveryMark{ID: "c2", At: base, Count: 1})
	k.add(store.DeliveryMark{ID: "c3", At: base, Count: 1})
	written(3)
	for _, id := range []string{"c1", "c2", "c3"} {
		if c, err := e.store.GetCommand(t.Context(), id); err != nil || c.State != store.CommandDelivered || c.Deliveries != 1 {
			t.Errorf("%s = %+v, %v; want delivered once", id, c, err)
		}
	}
}
