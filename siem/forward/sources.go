package forward

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/bud-ecosystem/budfleet/siem"
	"github.com/bud-ecosystem/budfleet/siem/spool"
)

type spoolQueue struct {
	entries, bytes, dropped uint64
	lag                     time.Duration
}

func spoolQueues(spooled spool.Stats, now time.Time) map[string]spoolQueue {
	out := map[string]spoolQueue{}
	for name, q := range spooled.Queues {
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
