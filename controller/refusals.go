package controller

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"
)

// Refusal logging: what unauthenticated callers and hostile nodes can make
// the controller log is bounded. Each kind of refusal is logged at most
// once per refusalLogEvery (the rest counted), and the counts go into the
// audit trail as one "refusals" event per refusalWindow.
const (
	refusalLogEvery = time.Second
	refusalWindow   = time.Minute
	// refusalField caps each logged field a caller chose (quoted).
	refusalField = 64
)

type refusals struct {
	srv *Server

	mu          sync.Mutex
	lastLog     map[string]time.Time
	suppressed  map[string]int
	counts      map[string]int
	windowStart time.Time
}

func newRefusals(s *Server) *refusals {
	return &refusals{srv: s, lastLog: map[string]time.Time{}, suppressed: map[string]int{}, counts: map[string]int{}}
}

// quoted is a caller-chosen value fit for a log line: cut and quoted.
func quoted(v string) string { return fmt.Sprintf("%q", truncate(v, refusalField)) }

// note records one refusal of kind by who (a node id, an address) and
// logs it unless one of its kind was logged within refusalLogEvery.
func (r *refusals) note(ctx context.Context, kind, who string, err error, args ...any) {
	s := r.srv
	now := s.opts.Now()
	r.mu.Lock()
	if r.windowStart.IsZero() {
		r.windowStart = now
	}
	r.counts[kind]++
	var flush map[string]int
	if now.Sub(r.windowStart) >= refusalWindow {
		flush, r.counts, r.windowStart = r.counts, map[string]int{}, now
	}
	logIt := now.Sub(r.lastLog[kind]) >= refusalLogEvery
	skipped := 0
	if logIt {
		r.lastLog[kind] = now
		skipped = r.suppressed[kind]
		r.suppressed[kind] = 0
	} else {
		r.suppressed[kind]++
	}
	r.mu.Unlock()
	if logIt {
		msg := truncate(err.Error(), 4*refusalField)
		s.log.WarnContext(ctx, "refused", append([]any{"kind", kind, "from", quoted(who), "error", msg, "suppressed_since_last", skipped}, args...)...)
	}
	if flush != nil {
		kinds := make([]string, 0, len(flush))
		for k := range flush {
			kinds = append(kinds, k)
		}
		sort.Strings(kinds)
		attrs := []any{"window", refusalWindow.String()}
		for _, k := range kinds {
			attrs = append(attrs, k, flush[k])
		}
		s.auditRecord(ctx, "refusals", "", attrs...)
	}
}

// counted returns the refusals of kind in the current window (tests).
func (r *refusals) counted(kind string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.counts[kind]
}
