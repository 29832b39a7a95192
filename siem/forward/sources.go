package forward

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/bud-ecosystem/budfleet/siem"
	"github.com/bud-ecosystem/budfleet/siem/audit"
	"github.com/bud-ecosystem/budfleet/siem/spool"
	"github.com/bud-ecosystem/budfleet/siem/tail"
)

type spoolQueue struct {
	entries, bytes, dropped uint64
	lag                     time.Duration
}

func spoolQueues(s spool.Stats, now time.Time) map[string]spoolQueue {
	out := map[string]spoolQueue{}
	for name, q := range s.Queues {
		out[name] = spoolQueue{entries: uint64(q.Entries), bytes: uint64(q.Bytes), dropped: q.Dropped, lag: q.Lag(now)}
	}
	return out
}

// globRescan is how often a glob source looks for new files.
const globRescan = 10 * time.Second

// runSources follows every file a source's path matches, picking up new
// matches of a glob as they appear.
func (f *Forwarder) runSources(ctx context.Context, cfg siem.Config, src siem.SourceConfig, st *stats) {
	// A follower per matched file; one whose file is gone and no longer
	// matches (yesterday's dated log, deleted) is stopped, so followers do
	// not pile up for every file a glob ever matched.
	started := map[string]context.CancelFunc{}
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		files := []string{src.Path}
		if hasGlob(src.Path) {
			matches, _ := filepath.Glob(src.Path)
			files = matches
		}
		matched := map[string]bool{}
		for _, file := range files {
			matched[file] = true
			if _, ok := started[file]; ok {
				continue
			}
			if !st.claim(file) {
				// Another source already follows it (overlapping globs):
				// following it twice would send everything twice.
				f.log.Warn("file matched by more than one source; the first one forwards it", "file", file, "source", src.Path)
				started[file] = func() {}
				continue
			}
			fctx, cancel := context.WithCancel(ctx)
			started[file] = cancel
			wg.Add(1)
			go func() {
				defer wg.Done()
				// A source that fails (unreadable file, say) is retried from
				// its checkpoint rather than given up.
				for {
					f.runFile(fctx, cfg, src, file, st.source(src, file))
					if !sleep(fctx, 5*time.Second) {
						return
					}
				}
			}()
		}
		for file, cancel := range started {
			if matched[file] {
				continue
			}
			if _, err := os.Stat(file); err == nil {
				continue // renamed into the glob's rotation, still draining
			}
			cancel()
			delete(started, file)
			st.release(file)
		}
		if !hasGlob(src.Path) {
			break
		}
		if !sleep(ctx, globRescan) {
			break
		}
	}
}

func hasGlob(p string) bool {
	for _, c := range p {
		if c == '*' || c == '?' || c == '[' {
			return true
		}
	}
	return false
}

func checkpointKey(file string) string { return "file:" + file }

// runFile reads one file into the spool: events are batched and written
// together with the file's checkpoint, so what is in the spool and where
// reading resumes never disagree.
func (f *Forwarder) runFile(ctx context.Context, cfg siem.Config, src siem.SourceConfig, file string, st *sourceStats) {
	log := f.log.With("source", file, "tag", src.Tag)
	var start *tail.Checkpoint
	if raw, err := f.spool.Checkpoint(checkpointKey(file)); err == nil && raw != nil {
		var cp tail.Checkpoint
		if err := json.Unmarshal(raw, &cp); err == nil {
			start = &cp
		}
	}
	fl, err := tail.New(tail.Options{Path: file, Start: start, MaxLineBytes: src.MaxLineBytes, Logger: log})
	if err != nil {
		log.Error("cannot follow source", "error", err)
		st.setPaused(false, err.Error())
		return
	}
	defer fl.Close()

	type line struct {
		data    []byte
		cp      tail.Checkpoint
		partial bool
	}
	lines := make(chan line, 1024)
	go func() {
		defer close(lines)
		for {
			l, err := fl.Next(ctx)
			if err != nil {
				if ctx.Err() == nil {
					log.Error("reading source stopped", "error", err)
				}
				return
			}
			select {
			case lines <- line{data: append([]byte(nil), l.Data...), cp: l.Checkpoint, partial: l.Partial}:
			case <-ctx.Done():
				return
			}
		}
	}()

	var queues []string
	for _, o := range cfg.Outputs {
		if siem.Match(o.Match, src.Tag) {
			queues = append(queues, o.Name)
		}
	}
	if len(queues) == 0 {
		log.Warn("no output matches this source's tag; nothing will be sent", "tag", src.Tag)
	}

	var grouper *audit.Grouper
	if src.Format == siem.FormatLinuxAudit {
		grouper = audit.NewGrouper(audit.GrouperOptions{})
	}
	var (
		entries []spool.Entry
		pending int64 // bytes in entries
		events  int
		bytes   int
		cleanCP *tail.Checkpoint // where reading may resume without skipping an open group
		lastCP  *tail.Checkpoint
		// starts[i] is where line startBase+i began (nil: not known), kept
		// from the oldest open audit event on.
		starts    []*tail.Checkpoint
		startBase int64
		part      int
		flushTick = time.NewTicker(cfg.Spool.FlushInterval)
	)
	defer flushTick.Stop()
	add := func(ev siem.Event) {
		data, err := encodeEvent(ev)
		if err != nil {
			log.Error("encode event", "error", err)
			return
		}
		for _, q := range queues {
			entries = append(entries, spool.Entry{Queue: q, Data: data})
			pending += int64(len(data))
		}
		events++
		bytes += len(ev.Raw)
	}
	addGroups := func(gs []audit.Group) {
		for _, g := range gs {
			add(g.Event(src.Tag, file))
		}
	}
	// auditResume moves the checkpoint to the first line of the oldest open
	// event, so a restart re-reads that event whole (and at most the events
	// completed after it) under steady traffic too.
	auditResume := func() {
		oldest, open := grouper.OldestOpenLine()
		if !open {
			cleanCP = lastCP
			starts, startBase = starts[:0], grouper.Lines()
			return
		}
		if k := int(oldest - startBase); k > 0 && k <= len(starts) {
			starts = append(starts[:0], starts[k:]...)
			startBase = oldest
		}
		if len(starts) > 0 && starts[0] != nil {
			cleanCP = starts[0]
		}
	}
	flush := func() bool {
		if len(entries) == 0 && cleanCP == nil {
			return true
		}
		// While the outputs keep up, reading stays a little ahead of them
		// instead of copying the whole file into the spool: the source file
		// and its checkpoint already hold it. When an output fails, the
		// spool takes everything up to its cap, so rotation cannot take
		// unsent data away.
		for f.readAheadFull(queues) {
			if !sleep(ctx, 10*time.Millisecond) {
				return false
			}
		}
		var cps map[string][]byte
		if cleanCP != nil {
			raw, _ := json.Marshal(cleanCP)
			cps = map[string][]byte{checkpointKey(file): raw}
		}
		for {
			err := f.spool.Append(entries, cps)
			if err == nil {
				break
			}
			if errors.Is(err, spool.ErrTooLarge) {
				// Only an event bigger than the spool allows can cause this;
				// it can never be stored, so it is dropped, and said so.
				kept := entries[:0]
				for _, e := range entries {
					if int64(len(e.Data))*8 <= cfg.Spool.MaxBytes {
						kept = append(kept, e)
					}
				}
				if len(kept) == len(entries) {
					// No single event is the problem, the batch as a whole
					// is: spool it an event at a time (no checkpoint until
					// all are in, so a crash only repeats), then retry with
					// just the checkpoint.
					for len(entries) > 0 {
						if err := f.spool.Append(entries[:1], nil); err != nil {
							if !sleep(ctx, time.Second) {
								return false
							}
							continue
						}
						entries = entries[1:]
					}
					continue
				}
				msg := fmt.Sprintf("dropped %d event copies larger than the spool can hold", len(entries)-len(kept))
				log.Error("SIEM event too large for the spool", "detail", msg)
				st.setPaused(false, msg)
				entries = kept
				continue
			}
			if !errors.Is(err, spool.ErrFull) {
				log.Error("write spool", "error", err)
				st.setPaused(false, "write spool: "+err.Error())
			} else {
				st.setPaused(true, "spool full: reading paused, events wait in the source file")
				log.Error("SIEM spool is full: reading is paused and events wait in the source file; check the outputs (spool.max_bytes caps it, spool.drop_oldest trades loss for progress)", "source", file)
			}
			if !sleep(ctx, time.Second) {
				return false
			}
		}
		st.setPaused(false, "")
		st.read(events, bytes)
		entries, pending, events, bytes, cleanCP = entries[:0], 0, 0, 0, nil
		return true
	}
	for {
		select {
		case <-ctx.Done():
			flush()
			return
		case <-flushTick.C:
			if grouper != nil {
				addGroups(grouper.Flush(time.Now()))
				auditResume()
			}
			if !flush() {
				return
			}
		case l, ok := <-lines:
			if !ok {
				flush()
				return
			}
			cp := l.cp
			if grouper != nil {
				starts = append(starts, lastCP)
				lastCP = &cp
				addGroups(grouper.Add(l.data, time.Now()))
				auditResume()
			} else {
				lastCP = &cp
				ev := siem.Event{Tag: src.Tag, Source: file, Time: time.Now(), Raw: l.data}
				if l.partial || part > 0 {
					part++
					ev.Truncated, ev.Part = true, part
				}
				if !l.partial {
					part = 0
				}
				add(ev)
				cleanCP = lastCP
			}
			// A batch stays well under the cap so it always fits once the
			// outputs drain.
			if len(entries) >= 1000*max(1, len(queues)) || pending >= cfg.Spool.MaxBytes/8 {
				if !flush() {
					return
				}
			}
		}
	}
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
	stats := f.spool.Stats()
	for _, q := range queues {
		if stats.Queues[q].Bytes < readAhead || !f.outputHealthy(q) {
			return false
		}
	}
	return true
}
