package forward

import (
	"context"
	"sync"
	"time"

	"github.com/bud-ecosystem/budfleet/siem"
)

// directDepth is how many batches a source may hand its output ahead of
// the one being sent: enough for reading and parsing the next batch to
// overlap the send of the last.
const directDepth = 2

// direct hands a source's batches straight to its one output while that
// output keeps up and its spool queue is empty. Copying every event into
// the spool and out again (a bbolt write, an fsync of the data, a read, a
// delete and a second commit per batch) was most of the forwarder's CPU;
// while the output keeps up the source file already holds every event,
// and the checkpoint, written only after the output took the batch, says
// where to resume. So a crash resends, never skips, as with the spool.
//
// Every batch handed over is resolved by the output goroutine exactly
// once: sent (then its checkpoint is stored), or spooled with its
// checkpoint (a failed send, or the output stopping). After a failure the
// handoff is refused until the output has recovered and the spool queue
// is empty again, so order is kept: a source that falls back to the spool
// first waits until nothing it handed over is unresolved.
type direct struct {
	mu       sync.Mutex
	pending  []directBatch
	inflight int  // handed over and not yet resolved
	failed   bool // a send failed; refuse until the output recovered
	closed   bool // the output goroutine ended
	// sending holds the batches the output took and is sending, oldest
	// first (a pipelining output has several in flight); sent is how many
	// events of the oldest went through (it is sent in output batches).
	sending []*directBatch
	sent    int
	// cp is the checkpoint of the last batch sent, not yet stored;
	// cpBatches the sent batches it stands for (still in flight until
	// it is stored), flushing those whose checkpoint is being written.
	// It is stored after every sent batch: a crash resends at most the
	// output batches in flight (one, or a pipelining output's window;
	// see pipeline.go). (Storing it
	// only every 100 ms resent all that went out in that time, thousands
	// of events while a backlog drains.)
	cp        map[string][]byte
	cpBatches int
	flushing  int
	// batchEvents is the output's batch_events (a part of it on an output
	// that pipelines, see handoffEvents): a source hands over at most that
	// many events in one batch, so that what a crash resends stays within
	// one output batch.
	batchEvents int
	// movedAt is when the output last took a batch or finished sending
	// part of one: a slow receiver is not a stall.
	movedAt time.Time
	// ready is closed when pending becomes non-empty; idle when inflight
	// drops to 0; space when pending has room again.
	ready, idle, space chan struct{}
}

// directBatch is one source batch handed to the output.
type directBatch struct {
	events []siem.Event
	cps    map[string][]byte
	raw    int
	// revoked: the source took the batch back (stall); the output's
	// result for it no longer counts.
	revoked bool
}

// directStall is how long a source waits for its output to take a batch
// before it takes back what it handed over and spools it: an output that
// hangs (no error, no progress) must not keep the events out of the
// spool, where rotation cannot take them away.
const directStall = 2 * time.Second

func newDirect(batchEvents int) *direct {
	if batchEvents <= 0 {
		batchEvents = siem.DefaultBatchEvents
	}
	return &direct{batchEvents: batchEvents}
}

// offer hands b over, waiting while directDepth batches are pending. It
// reports false when the handoff is refused (the output failed or ended,
// ctx ended while waiting, or stalled: the output took nothing for
// directStall): the caller spools b instead, after revoke when stalled.
func (d *direct) offer(ctx context.Context, b directBatch) (ok, stalled bool) {
	for {
		d.mu.Lock()
		if d.closed || d.failed {
			d.mu.Unlock()
			return false, false
		}
		if len(d.pending) < directDepth {
			d.pending = append(d.pending, b)
			d.inflight++
			if d.ready != nil {
				close(d.ready)
				d.ready = nil
			}
			d.mu.Unlock()
			return true, false
		}
		if d.space == nil {
			d.space = make(chan struct{})
		}
		space := d.space
		d.mu.Unlock()
		t := time.NewTimer(directStall)
		select {
		case <-space:
			t.Stop()
		case <-ctx.Done():
			t.Stop()
			return false, false
		case <-t.C:
			d.mu.Lock()
			moved := time.Since(d.movedAt) < directStall
			d.mu.Unlock()
			if !moved {
				return false, true
			}
		}
	}
}

// revoke refuses later handoffs and takes back, in order, the events the
// output has not sent yet: the unsent part of the batch being sent and
// every pending batch. The source spools them before its own batch; the
// output then neither spools the batch it was sending nor stores its
// checkpoint. What the output is writing right now may go through as
// well: at most one output batch is sent twice.
func (d *direct) revoke() []siem.Event {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.failed = true
	var evs []siem.Event
	for i, b := range d.sending {
		from := 0
		if i == 0 {
			from = d.sent
		}
		evs = append(evs, b.events[from:]...)
		b.revoked = true
	}
	d.sending, d.sent = nil, 0
	for _, b := range d.pending {
		evs = append(evs, b.events...)
	}
	d.pending = nil
	// The source's own checkpoint, stored with what it spools now, is
	// past the sent batches': theirs is not stored any more (it would move
	// the checkpoint back), but one being written is waited for.
	d.cp, d.cpBatches = nil, 0
	d.inflight = d.flushing
	if d.inflight == 0 && d.idle != nil {
		close(d.idle)
		d.idle = nil
	}
	if d.space != nil {
		close(d.space)
		d.space = nil
	}
	return evs
}

// progress records that the first n events of b went through; it reports
// false when b was revoked (the output stops sending it).
func (d *direct) progress(b *directBatch, n int) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if b.revoked {
		return false
	}
	if len(d.sending) > 0 && d.sending[0] == b {
		d.sent = n
	}
	d.movedAt = time.Now()
	return true
}

// usable reports whether a handoff would be taken now.
func (d *direct) usable() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return !d.closed && !d.failed
}

// readyChan is closed once a batch is pending.
func (d *direct) readyChan() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.pending) > 0 {
		return closedChan
	}
	if d.ready == nil {
		d.ready = make(chan struct{})
	}
	return d.ready
}

// nextLen is the number of events in the oldest pending batch, 0 when
// none is pending.
func (d *direct) nextLen() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.pending) == 0 {
		return 0
	}
	return len(d.pending[0].events)
}

// take removes the oldest pending batch, which the output then sends; nil
// when there is none.
func (d *direct) take() *directBatch {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.pending) == 0 {
		return nil
	}
	b := &directBatch{}
	*b = d.pending[0]
	d.pending[0] = directBatch{}
	d.pending = d.pending[1:]
	if len(d.sending) == 0 {
		d.sent = 0
	}
	d.sending = append(d.sending, b)
	d.movedAt = time.Now()
	if d.space != nil {
		close(d.space)
		d.space = nil
	}
	return b
}

// finish settles a taken batch: unless the source revoked it, fn (store
// its checkpoint, or spool it) runs under the lock, so that a revoke
// cannot overtake it, and the batch stops counting as in flight. It
// reports whether fn ran.
func (d *direct) finish(b *directBatch, fn func()) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if b.revoked {
		return false
	}
	fn()
	d.unsending(b)
	d.done1()
	return true
}

// sent records that the output sent all of b: its checkpoint becomes the
// one to store. It reports false when b was revoked.
func (d *direct) sentAll(b *directBatch) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if b.revoked {
		return false
	}
	d.unsending(b)
	if b.cps != nil {
		d.cp = b.cps
	}
	d.cpBatches++
	return true
}

// unsending removes b from sending; mu must be held.
func (d *direct) unsending(b *directBatch) {
	for i, s := range d.sending {
		if s == b {
			if i == 0 {
				d.sent = 0
			}
			d.sending = append(d.sending[:i], d.sending[i+1:]...)
			return
		}
	}
}

// storeCP stores the checkpoint of the batches sent so far (outside the
// lock: a source must not wait for the fsync to hand over its next batch)
// and then counts them resolved.
func (d *direct) storeCP(store func(map[string][]byte)) {
	d.mu.Lock()
	if d.cpBatches == 0 {
		d.mu.Unlock()
		return
	}
	cp, n := d.cp, d.cpBatches
	d.cp, d.cpBatches = nil, 0
	d.flushing += n
	d.mu.Unlock()
	if cp != nil {
		store(cp)
	}
	d.mu.Lock()
	d.flushing -= n
	for range n {
		d.done1()
	}
	d.mu.Unlock()
}

// done1 counts one batch resolved; mu must be held.
func (d *direct) done1() {
	d.inflight = max(0, d.inflight-1)
	if d.inflight == 0 && d.idle != nil {
		close(d.idle)
		d.idle = nil
	}
}

// setFailed refuses handoffs (failed) or takes them again.
func (d *direct) setFailed(failed bool) {
	d.mu.Lock()
	d.failed = failed
	d.mu.Unlock()
}

// close refuses every later handoff and spools, with fn, what is still
// pending, before the output goroutine ends.
func (d *direct) close(fn func(directBatch)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	for _, b := range d.pending {
		fn(b)
		d.done1()
	}
	d.pending = nil
	if d.space != nil {
		close(d.space)
		d.space = nil
	}
}

// wait blocks until every batch handed over is resolved. The output
// goroutine resolves all of them before it ends, so this needs no ctx.
func (d *direct) wait() {
	for {
		d.mu.Lock()
		if d.inflight == 0 {
			d.mu.Unlock()
			return
		}
		if d.idle == nil {
			d.idle = make(chan struct{})
		}
		idle := d.idle
		d.mu.Unlock()
		<-idle
	}
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()
