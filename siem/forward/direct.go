package forward

import (
	"context"
	"sync"

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
	// ready is closed when pending becomes non-empty; idle when inflight
	// drops to 0; space when pending has room again.
	ready, idle, space chan struct{}
}

// directBatch is one source batch handed to the output.
type directBatch struct {
	events []siem.Event
	cps    map[string][]byte
	raw    int
}

func newDirect() *direct { return &direct{} }

// offer hands b over, waiting while directDepth batches are pending. It
// reports false when the handoff is refused (the output failed or ended,
// or ctx ended while waiting): the caller spools b instead.
func (d *direct) offer(ctx context.Context, b directBatch) bool {
	for {
		d.mu.Lock()
		if d.closed || d.failed {
			d.mu.Unlock()
			return false
		}
		if len(d.pending) < directDepth {
			d.pending = append(d.pending, b)
			d.inflight++
			if d.ready != nil {
				close(d.ready)
				d.ready = nil
			}
			d.mu.Unlock()
			return true
		}
		if d.space == nil {
			d.space = make(chan struct{})
		}
		space := d.space
		d.mu.Unlock()
		select {
		case <-space:
		case <-ctx.Done():
			return false
		}
	}
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

// take removes the oldest pending batch; ok is false when there is none.
func (d *direct) take() (b directBatch, ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.pending) == 0 {
		return b, false
	}
	b = d.pending[0]
	d.pending[0] = directBatch{}
	d.pending = d.pending[1:]
	if d.space != nil {
		close(d.space)
		d.space = nil
	}
	return b, true
}

// resolve marks one taken batch as sent or spooled.
func (d *direct) resolve() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.inflight--
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

// close refuses every later handoff and returns what is still pending,
// for the output goroutine to spool before it ends.
func (d *direct) close() []directBatch {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	p := d.pending
	d.pending = nil
	if d.space != nil {
		close(d.space)
		d.space = nil
	}
	return p
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
