package forward

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/bud-ecosystem/budfleet/siem"
	"github.com/bud-ecosystem/budfleet/siem/audit"
	"github.com/bud-ecosystem/budfleet/siem/spool"
	"github.com/bud-ecosystem/budfleet/siem/tail"
)

func checkpointKey(file string) string { return "file:" + file }

// runFile reads one file into the spool until ctx ends or reading fails.
func (f *Forwarder) runFile(ctx context.Context, cfg siem.Config, src siem.SourceConfig, file string, status *sourceStats) {
	newFileSource(f, cfg, src, file, status).run(ctx)
}

// fileSource reads one file into the spool: events are batched and written
// together with the file's checkpoint, so what is in the spool and where
// reading resumes never disagree. One runs per followed file for as long as
// its reading goes on; a new one resumes from the spooled checkpoint.
//
// Its loop (run) takes lines from the follower (readLines), turns them into
// events (readLine: one per raw line, one per audit event through the
// grouper), collects their entries into a batch (add), and writes the batch
// and the checkpoint to the spool (flush) when the batch is full
// (siem.SpoolLimits.BatchFull) or the flush interval ticks.
type fileSource struct {
	fw     *Forwarder
	log    *slog.Logger
	src    siem.SourceConfig
	file   string
	status *sourceStats

	limits        siem.SpoolLimits
	flushInterval time.Duration

	// queues are the outputs whose match selects the source's tag: each
	// event goes to each of them.
	queues []string
	// grouper assembles linux-audit records into events; nil for raw.
	grouper *audit.Grouper
	// direct hands batches to the one output past the spool while it
	// keeps up; nil when the source has several outputs (or none).
	direct *direct

	batch spoolBatch

	// cleanCP is where reading may resume without skipping an open group,
	// when it moved since the last flush; lastCP is after the last line
	// read.
	cleanCP, lastCP *tail.Checkpoint
	// starts[i] is where line startBase+i began (nil: not known), kept from
	// the oldest open audit event on.
	starts    []*tail.Checkpoint
	startBase int64
	// part numbers the pieces of a raw line longer than max_line_bytes.
	part int
}

// spoolBatch is what a fileSource has read and not yet spooled.
type spoolBatch struct {
	// evs are the events read; entries their spool entries (one per
	// queue), made only when the batch goes into the spool.
	evs     []siem.Event
	entries []spool.Entry
	bytes   int64 // about the size of the entries' Data
	events  int
	raw     int // bytes of the events' Raw, for the source's status
}

// reset empties the batch. evs is not reused: a batch handed to the output
// directly keeps its slice.
func (b *spoolBatch) reset() {
	b.evs, b.entries, b.bytes, b.events, b.raw = nil, b.entries[:0], 0, 0, 0
}

// line is one line (or piece of one) read from the follower.
type line struct {
	data    []byte
	cp      tail.Checkpoint
	partial bool
}

func newFileSource(f *Forwarder, cfg siem.Config, src siem.SourceConfig, file string, status *sourceStats) *fileSource {
	fs := &fileSource{
		fw:            f,
		log:           f.log.With("source", file, "tag", src.Tag),
		src:           src,
		file:          file,
		status:        status,
		limits:        siem.SpoolLimits{MaxBytes: cfg.Spool.MaxBytes},
		flushInterval: cfg.Spool.FlushInterval,
	}
	for _, o := range cfg.Outputs {
		if siem.Match(o.Match, src.Tag) {
			fs.queues = append(fs.queues, o.Name)
		}
	}
	if src.Format == siem.FormatLinuxAudit {
		// readLines never writes to a line it handed on.
		fs.grouper = audit.NewGrouper(audit.GrouperOptions{MaxWait: f.opts.AuditMaxWait, KeepLines: true})
	}
	if len(fs.queues) == 1 {
		fs.direct = f.directFor(fs.queues[0])
	}
	return fs
}

// run follows the file from its checkpoint until ctx ends or the follower
// stops, then spools what it has read.
func (fs *fileSource) run(ctx context.Context) {
	fl, err := fs.follow()
	if err != nil {
		fs.log.Error("cannot follow source", "error", err)
		fs.status.setPaused(false, err.Error())
		return
	}
	defer fl.Close()
	lines := fs.readLines(ctx, fl)
	if len(fs.queues) == 0 {
		fs.log.Warn("no output matches this source's tag; nothing will be sent", "tag", fs.src.Tag)
	}

	flushTick := time.NewTicker(fs.flushInterval)
	defer flushTick.Stop()
	for {
		select {
		case <-ctx.Done():
			fs.flush(ctx)
			return
		case <-flushTick.C:
			if fs.grouper != nil {
				fs.addGroups(fs.grouper.Flush(time.Now()))
				fs.auditResume()
			}
			if !fs.flush(ctx) {
				return
			}
		case <-lines.ready:
			ls, closed := lines.take()
			now := time.Now()
			for _, l := range ls {
				fs.readLine(l, now)
				if fs.limits.BatchFull(len(fs.batch.evs)*len(fs.queues), fs.batch.bytes, len(fs.queues)) || fs.directFull() {
					if !fs.flush(ctx) {
						return
					}
				}
			}
			if closed {
				fs.flush(ctx)
				return
			}
		}
	}
}

// follow opens a follower of the file at its spooled checkpoint (at the
// start of the file when there is none).
func (fs *fileSource) follow() (*tail.Follower, error) {
	var start *tail.Checkpoint
	if raw, err := fs.fw.spool.Checkpoint(checkpointKey(fs.file)); err == nil && raw != nil {
		var cp tail.Checkpoint
		if err := json.Unmarshal(raw, &cp); err == nil {
			start = &cp
		}
	}
	return tail.New(tail.Options{Path: fs.file, Start: start, MaxLineBytes: fs.src.MaxLineBytes, Logger: fs.log})
}

// readLines reads the follower into a lineQueue until ctx ends or reading
// fails; the queue is closed then.
func (fs *fileSource) readLines(ctx context.Context, fl *tail.Follower) *lineQueue {
	q := newLineQueue()
	go func() {
		defer q.close()
		// Lines are copied into shared blocks: one allocation per block,
		// not per line. A block is never written again once a line in it
		// was handed on, so events may keep pointing into it.
		var block []byte
		for {
			l, err := fl.Next(ctx)
			if err != nil {
				if ctx.Err() == nil {
					fs.log.Error("reading source stopped", "error", err)
				}
				return
			}
			if cap(block)-len(block) < len(l.Data) {
				block = make([]byte, 0, max(lineBlock, len(l.Data)))
			}
			off := len(block)
			block = append(block, l.Data...)
			if !q.push(ctx, line{data: block[off:len(block):len(block)], cp: l.Checkpoint, partial: l.Partial}) {
				return
			}
		}
	}()
	return q
}

// lineBlock is the size of the blocks lines are copied into.
const lineBlock = 256 << 10

// maxQueuedLines bounds what the reader goroutine gets ahead.
const maxQueuedLines = 4096

// lineQueue passes lines from the reader goroutine to the source's loop
// in bulk: a channel operation per line was an eighth of the CPU.
type lineQueue struct {
	mu     sync.Mutex
	lines  []line
	spare  []line
	closed bool
	ready  chan struct{} // a token: lines (or the close) are waiting
	space  chan struct{} // a token: the consumer took lines
}

func newLineQueue() *lineQueue {
	return &lineQueue{ready: make(chan struct{}, 1), space: make(chan struct{}, 1)}
}

func (q *lineQueue) push(ctx context.Context, l line) bool {
	q.mu.Lock()
	for len(q.lines) >= maxQueuedLines {
		q.mu.Unlock()
		select {
		case <-q.space:
		case <-ctx.Done():
			return false
		}
		q.mu.Lock()
	}
	q.lines = append(q.lines, l)
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
	return true
}

func (q *lineQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// take returns the waiting lines (valid until the next take) and whether
// the reader has ended (after these lines).
func (q *lineQueue) take() ([]line, bool) {
	q.mu.Lock()
	ls, closed := q.lines, q.closed
	clear(q.spare)
	q.lines, q.spare = q.spare[:0], ls
	q.mu.Unlock()
	select {
	case q.space <- struct{}{}:
	default:
	}
	return ls, closed
}

// readLine turns a line into events in the batch and moves the
// checkpoints on.
func (fs *fileSource) readLine(l line, now time.Time) {
	cp := l.cp
	if fs.grouper != nil {
		fs.starts = append(fs.starts, fs.lastCP)
		fs.lastCP = &cp
		fs.addGroups(fs.grouper.Add(l.data, now))
		fs.auditResume()
		return
	}
	fs.lastCP = &cp
	ev := siem.Event{Tag: fs.src.Tag, Source: fs.file, Time: now, Raw: l.data}
	if l.partial || fs.part > 0 {
		fs.part++
		ev.Truncated, ev.Part = true, fs.part
	}
	if !l.partial {
		fs.part = 0
	}
	fs.add(ev)
	fs.cleanCP = fs.lastCP
}

// add puts ev into the batch.
func (fs *fileSource) add(ev siem.Event) {
	if len(fs.queues) == 0 {
		return // nothing would send it
	}
	if fs.batch.evs == nil {
		fs.batch.evs = make([]siem.Event, 0, siem.MaxBatchEvents)
	}
	fs.batch.evs = append(fs.batch.evs, ev)
	fs.batch.bytes += int64(encodedSize(ev) * len(fs.queues))
	fs.batch.events++
	fs.batch.raw += len(ev.Raw)
}

// entries makes the spool entries of the batch's events, one per queue.
func (fs *fileSource) entries() {
	fs.batch.entries = fs.batch.entries[:0]
	for _, ev := range fs.batch.evs {
		data, err := encodeEvent(ev)
		if err != nil {
			fs.log.Error("encode event", "error", err)
			continue
		}
		for _, q := range fs.queues {
			fs.batch.entries = append(fs.batch.entries, spool.Entry{Queue: q, Data: data})
		}
	}
}

// directOK reports whether the batch may skip the spool: the output has
// not failed since its spool queue was last sent, and nothing older waits
// for it there. An output that is still connecting counts as healthy: the
// handoff then waits for it, and a failed connect spools the batch.
func (fs *fileSource) directOK() bool {
	return fs.direct.usable() && fs.fw.spool.QueueEntries(fs.queues[0]) == 0
}

// directFull reports whether the batch holds the output's batch_events
// while the output takes batches directly: its checkpoint covers the whole
// batch, so a larger one would be resent whole after a crash mid-batch.
// Spooled batches may be larger (the spool commits events and checkpoint
// together).
func (fs *fileSource) directFull() bool {
	return fs.direct != nil && len(fs.batch.evs) >= fs.direct.batchEvents && fs.direct.usable()
}

func (fs *fileSource) addGroups(gs []audit.Group) {
	for _, g := range gs {
		fs.add(fs.grouper.Event(g, fs.src.Tag, fs.file))
	}
}

// auditResume moves the checkpoint to the first line of the oldest open
// event, so a restart re-reads that event whole (and at most the events
// completed after it) under steady traffic too.
func (fs *fileSource) auditResume() {
	oldest, open := fs.grouper.OldestOpenLine()
	if !open {
		fs.cleanCP = fs.lastCP
		fs.starts, fs.startBase = fs.starts[:0], fs.grouper.Lines()
		return
	}
	if k := int(oldest - fs.startBase); k > 0 && k <= len(fs.starts) {
		fs.starts = append(fs.starts[:0], fs.starts[k:]...)
		fs.startBase = oldest
	}
	if len(fs.starts) > 0 && fs.starts[0] != nil {
		fs.cleanCP = fs.starts[0]
	}
}

// flush writes the batch and the checkpoint to the spool in one
// transaction, waiting while the spool is full. It reports false when ctx
// ended first: what is left of the batch is then not spooled, and the
// checkpoint not moved.
func (fs *fileSource) flush(ctx context.Context) bool {
	if len(fs.batch.evs) == 0 && fs.cleanCP == nil {
		return true
	}
	var cps map[string][]byte
	if fs.cleanCP != nil {
		raw, _ := json.Marshal(fs.cleanCP)
		cps = map[string][]byte{checkpointKey(fs.file): raw}
	}
	if fs.direct != nil && len(fs.batch.evs) > 0 {
		// A healthy output drains its spool queue soon: waiting for that
		// lets this batch skip the spool instead of queueing behind it.
		for fs.direct.usable() && fs.fw.spool.QueueEntries(fs.queues[0]) > 0 {
			if !sleep(ctx, 2*time.Millisecond) {
				return false
			}
		}
	}
	stalled := false
	if fs.direct != nil && len(fs.batch.evs) > 0 && fs.directOK() {
		var ok bool
		if ok, stalled = fs.direct.offer(ctx, directBatch{events: fs.batch.evs, cps: cps, raw: fs.batch.raw}); ok {
			fs.status.setPaused(false, "")
			fs.status.read(fs.batch.events, fs.batch.raw)
			fs.batch.reset()
			fs.cleanCP = nil
			return true
		}
	}
	if stalled {
		// The output took nothing for directStall: what it has not sent
		// goes into the spool first, then this batch.
		fs.batch.evs = append(fs.direct.revoke(), fs.batch.evs...)
	}
	if fs.direct != nil {
		// What was handed over is older than this batch and this
		// checkpoint: it must be sent or spooled first.
		fs.direct.wait()
	}
	if !fs.waitReadAhead(ctx) {
		return false
	}
	fs.entries()
	for {
		err := fs.fw.spool.Append(fs.batch.entries, cps)
		if err == nil {
			break
		}
		if errors.Is(err, spool.ErrTooLarge) {
			if fs.dropUnspoolable() {
				continue
			}
			// No single event is the problem, the batch as a whole is:
			// spool it an event at a time, then retry with just the
			// checkpoint.
			if !fs.spoolOneByOne(ctx) {
				return false
			}
			continue
		}
		if !errors.Is(err, spool.ErrFull) {
			fs.log.Error("write spool", "error", err)
			fs.status.setPaused(false, "write spool: "+err.Error())
		} else {
			fs.status.setPaused(true, "spool full: reading paused, events wait in the source file")
			fs.log.Error("SIEM spool is full: reading is paused and events wait in the source file; check the outputs (spool.max_bytes caps it, spool.drop_oldest trades loss for progress)", "source", fs.file)
		}
		if !sleep(ctx, time.Second) {
			return false
		}
	}
	fs.status.setPaused(false, "")
	fs.status.read(fs.batch.events, fs.batch.raw)
	fs.batch.reset()
	fs.cleanCP = nil
	return true
}

// waitReadAhead waits while every output of the source is healthy and has
// readAhead waiting: while the outputs keep up, reading stays a little
// ahead of them instead of copying the whole file into the spool (the
// source file and its checkpoint already hold it). When an output fails,
// the spool takes everything up to its cap, so rotation cannot take unsent
// data away. It reports false when ctx ended first.
func (fs *fileSource) waitReadAhead(ctx context.Context) bool {
	for fs.fw.readAheadFull(fs.queues) {
		if !sleep(ctx, 10*time.Millisecond) {
			return false
		}
	}
	return true
}

// dropUnspoolable drops the entries of the batch the spool can never hold
// (siem.SpoolLimits.EntryFits), and says so. It reports whether there were
// any.
func (fs *fileSource) dropUnspoolable() bool {
	entries := fs.batch.entries
	kept := entries[:0]
	for _, e := range entries {
		if fs.limits.EntryFits(len(e.Data)) {
			kept = append(kept, e)
		}
	}
	if len(kept) == len(entries) {
		return false
	}
	msg := fmt.Sprintf("dropped %d event copies larger than the spool can hold", len(entries)-len(kept))
	fs.log.Error("SIEM event too large for the spool", "detail", msg)
	fs.status.setPaused(false, msg)
	fs.batch.entries = kept
	return true
}

// spoolOneByOne appends the batch's entries one at a time, each as soon as
// it fits, without the checkpoint (until all are in, a crash only
// repeats). It reports false when ctx ended first.
func (fs *fileSource) spoolOneByOne(ctx context.Context) bool {
	for len(fs.batch.entries) > 0 {
		if err := fs.fw.spool.Append(fs.batch.entries[:1], nil); err != nil {
			if !sleep(ctx, time.Second) {
				return false
			}
			continue
		}
		fs.batch.entries = fs.batch.entries[1:]
	}
	return true
}

// readAhead is how much a healthy output may have waiting in the spool
// before its sources pause.
const readAhead = 16 << 20

// readAheadFull reports whether every queue of a source is past readAhead
// while its output is healthy.
func (f *Forwarder) readAheadFull(queues []string) bool {
	if len(queues) == 0 {
		return false
	}
	spooled := f.spool.Stats()
	for _, q := range queues {
		if spooled.Queues[q].Bytes < readAhead || !f.outputHealthy(q) {
			return false
		}
	}
	return true
}
