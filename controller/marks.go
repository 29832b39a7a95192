package controller

import (
	"context"
	"errors"
	"hash/maphash"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bud-ecosystem/budfleet/controller/store"
)

// deliveryMarks gathers the delivered marks of sends and writes them in
// the background, a chunk at a time (markChunk), markDelay after the
// first, or later while sends keep coming (a fan-out still under way), up
// to markMaxDelay. A result that comes before its mark's chunk is written
// carries the mark into its own write (most of a fan-out's: their marks
// then cost no write at all); one that comes while the chunk is being
// written waits for it. So a command with a result always shows its
// deliveries, and a running one shows as delivered within about
// markDelay.
//
// The marks are kept in shards, each under its own lock: a fan-out's
// 10,000 sends and 10,000 results all pass through here within a second,
// and behind one lock the goroutines queued for it and handed it on
// (sync.Mutex's starvation mode) were 15 % of the controller's scheduling
// delay in an execution trace of P3.
type deliveryMarks struct {
	srv *Server

	shards [markShards]markShard
	seed   maphash.Seed
	// running: a loop is writing or waiting to write.
	running atomic.Bool
	// lastAdd is when the last mark was added, in UnixNano.
	lastAdd atomic.Int64
}

const markShards = 64

type markShard struct {
	mu      sync.Mutex
	pending map[string]store.DeliveryMark
	// writing: the marks being written, and closed when they are.
	writing map[string]chan struct{}
}

func newDeliveryMarks(srv *Server) *deliveryMarks {
	k := &deliveryMarks{srv: srv, seed: maphash.MakeSeed()}
	for i := range k.shards {
		k.shards[i].pending = map[string]store.DeliveryMark{}
		k.shards[i].writing = map[string]chan struct{}{}
	}
	return k
}

func (k *deliveryMarks) shard(id string) *markShard {
	return &k.shards[maphash.String(k.seed, id)%markShards]
}

func (k *deliveryMarks) add(dm store.DeliveryMark) {
	sh := k.shard(dm.ID)
	sh.mu.Lock()
	if cur, ok := sh.pending[dm.ID]; ok {
		dm.Count += cur.Count
		dm.At = later(cur.At, dm.At)
	}
	sh.pending[dm.ID] = dm
	sh.mu.Unlock()
	k.lastAdd.Store(time.Now().UnixNano())
	// After the mark is in: a loop that is ending looks again once it has
	// cleared running, so either it sees this mark or this starts one.
	if k.running.CompareAndSwap(false, true) {
		go k.loop()
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// take removes id's mark if it is not yet being written, so that the
// caller writes it; if it is, take waits until it is written.
func (k *deliveryMarks) take(ctx context.Context, id string) (store.DeliveryMark, bool) {
	sh := k.shard(id)
	sh.mu.Lock()
	if dm, ok := sh.pending[id]; ok {
		delete(sh.pending, id)
		sh.mu.Unlock()
		return dm, true
	}
	done := sh.writing[id]
	sh.mu.Unlock()
	if done != nil {
		select {
		case <-done:
		case <-ctx.Done():
		}
	}
	return store.DeliveryMark{}, false
}

const (
	markDelay    = time.Second
	markQuiet    = 250 * time.Millisecond
	markMaxDelay = 5 * time.Second
)

func (k *deliveryMarks) loop() {
	for {
		start := time.Now()
		time.Sleep(markDelay)
		for {
			quiet := time.Since(time.Unix(0, k.lastAdd.Load()))
			if quiet >= markQuiet || time.Since(start) >= markMaxDelay {
				break
			}
			time.Sleep(markQuiet - quiet)
		}
		if k.writeOnce() {
			continue
		}
		k.running.Store(false)
		// A mark added between the empty look and the store above saw
		// running still set and started nothing: take it on.
		if k.pendingCount() == 0 || !k.running.CompareAndSwap(false, true) {
			return
		}
	}
}

func (k *deliveryMarks) pendingCount() int {
	n := 0
	for i := range k.shards {
		sh := &k.shards[i]
		sh.mu.Lock()
		n += len(sh.pending)
		sh.mu.Unlock()
	}
	return n
}

// flush writes what is gathered now, for a graceful stop.
func (k *deliveryMarks) flush() { k.writeOnce() }

// markChunk bounds the marks of one store write. One transaction for a
// fan-out's thousands of marks (each a decode and re-encode of its
// command) held bbolt's single writer for as long as it took, and every
// result queued behind it waited; written a chunk at a time, each chunk
// shares a transaction with the results being written then, and a
// result that arrives before its mark's chunk carries the mark itself.
const markChunk = 256

// markLogAt: writes of at least this many marks (a fan-out's) are logged
// at info with how long they took; fewer, at debug.
const markLogAt = 100

// writeOnce writes the marks gathered now, a chunk at a time, and says
// whether there were any. Marks added while it writes wait for the next
// round.
func (k *deliveryMarks) writeOnce() bool {
	n := k.pendingCount()
	if n == 0 {
		return false
	}
	began := time.Now()
	written, chunks := 0, 0
	for written < n {
		marks, done := k.takeChunk(min(markChunk, n-written))
		if len(marks) == 0 {
			break // results took the rest with them
		}
		if err := k.write(marks); err != nil {
			// Only the count is lost: the commands stay queued until a
			// result comes.
			k.srv.log.Warn("record command deliveries", "commands", len(marks), "error", err)
		}
		for _, dm := range marks {
			sh := k.shard(dm.ID)
			sh.mu.Lock()
			if sh.writing[dm.ID] == done {
				delete(sh.writing, dm.ID)
			}
			sh.mu.Unlock()
		}
		close(done)
		written += len(marks)
		chunks++
	}
	level := slog.LevelDebug
	if n >= markLogAt {
		level = slog.LevelInfo
	}
	k.srv.log.Log(context.Background(), level, "recorded command deliveries", "commands", written, "carried_by_results", n-written, "writes", chunks, "took", time.Since(began).Round(time.Microsecond).String())
	return true
}

// takeChunk moves up to limit pending marks to writing, under one channel
// that is closed once they are written.
func (k *deliveryMarks) takeChunk(limit int) ([]store.DeliveryMark, chan struct{}) {
	marks := make([]store.DeliveryMark, 0, limit)
	done := make(chan struct{})
	for i := range k.shards {
		if len(marks) == limit {
			break
		}
		sh := &k.shards[i]
		sh.mu.Lock()
		for id, dm := range sh.pending {
			if len(marks) == limit {
				break
			}
			marks = append(marks, dm)
			sh.writing[id] = done
			delete(sh.pending, id)
		}
		sh.mu.Unlock()
	}
	return marks, done
}

func (k *deliveryMarks) write(marks []store.DeliveryMark) error {
	// Not a session's context: the sends happened whether or not their
	// sessions are still open.
	ctx := context.Background()
	if dm, ok := k.srv.store.(store.DeliveryMarker); ok {
		return dm.MarkDelivered(ctx, marks)
	}
	var (
		wg    sync.WaitGroup
		sem   = make(chan struct{}, 64)
		errMu sync.Mutex
		first error
	)
	for _, dm := range marks {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			_, err := k.srv.store.UpdateCommand(ctx, dm.ID, func(c *store.Command) error {
				if c.State.Done() {
					return errAlreadyDone
				}
				c.Deliveries += dm.Count
				c.DeliveredAt = dm.At
				c.State = store.CommandDelivered
				return nil
			})
			if err != nil && !errors.Is(err, errAlreadyDone) && !errors.Is(err, store.ErrNotFound) {
				errMu.Lock()
				if first == nil {
					first = err
				}
				errMu.Unlock()
			}
		}()
	}
	wg.Wait()
	return first
}
