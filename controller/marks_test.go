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
	k.mu.Lock()
	for _, c := range cs {
		k.pending[c.ID] = store.DeliveryMark{ID: c.ID, At: base, Count: 1}
	}
	k.mu.Unlock()

	var carried string
	var carriedOK bool
	rec.during = func() {
		k.mu.Lock()
		for id := range k.pending {
			carried = id
			break
		}
		k.mu.Unlock()
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
	if k.writing[carried] != nil || len(k.writing) != 0 || len(k.pending) != 0 {
		t.Errorf("marks left behind: %d writing, %d pending", len(k.writing), len(k.pending))
	}
}
