package controller

import (
	"context"
	"sync"
	"time"
)

// DefaultReportInterval is the rate, past a burst of reportBurst, at which
// one node's reports of one kind (host inventory, GPU inventory, GPU
// health) are stored.
// Agents send them on change and every few minutes; a node that sends
// them faster (a flapping sensor, a hostile agent: issue 13 saw 514 GPU
// reports in 8 s, each an fsynced write) has the latest kept and stored
// once the interval is up.
const DefaultReportInterval = 2 * time.Second

// reportBurst is how many reports of a kind a node may have stored at once
// before the interval applies: a real change (a GPU falling off the bus
// right after a periodic report) is not delayed, a flood is.
const reportBurst = 5

// coalescer writes each node's reports of a kind at a rate of one per
// interval with a burst of reportBurst (a token bucket). A report within
// budget is written at once, in the session's goroutine as before; one
// over it replaces any report still waiting, and the one left waiting is
// written when the next token is due, from a timer (no goroutine waits
// per node). A session
// that ends does not drop the waiting report: the last report is what the
// store keeps.
type coalescer struct {
	srv      *Server
	interval time.Duration

	mu    sync.Mutex
	state map[coalesceKey]*coalesced
}

type coalesceKey struct{ node, kind string }

type coalesced struct {
	tokens float64   // writes allowed now, up to reportBurst
	last   time.Time // when tokens was last brought up to date (monotonic)
	next   func(context.Context) error
	ctx    context.Context // next's, without its cancellation
	timer  *time.Timer
}

func newCoalescer(srv *Server, interval time.Duration) *coalescer {
	return &coalescer{srv: srv, interval: interval, state: map[coalesceKey]*coalesced{}}
}

// submit writes now, or keeps write as the node's latest report of kind
// for later. Only an immediate write's error is returned (it ends the
// session as any store failure does); a later one is logged.
func (c *coalescer) submit(ctx context.Context, nodeID, kind string, write func(context.Context) error) error {
	key := coalesceKey{nodeID, kind}
	now := time.Now()
	c.mu.Lock()
	st := c.state[key]
	if st == nil {
		st = &coalesced{tokens: reportBurst, last: now}
		c.state[key] = st
	}
	c.refill(st, now)
	if st.timer == nil && st.tokens >= 1 {
		st.tokens--
		c.mu.Unlock()
		return write(ctx)
	}
	st.next, st.ctx = write, context.WithoutCancel(ctx)
	if st.timer == nil {
		wait := time.Duration((1 - st.tokens) * float64(c.interval))
		st.timer = time.AfterFunc(wait, func() { c.flush(key) })
	}
	c.mu.Unlock()
	c.srv.metrics.reportsCoalesced.WithLabelValues(kind).Inc()
	return nil
}

func (c *coalescer) flush(key coalesceKey) {
	c.mu.Lock()
	st := c.state[key]
	if st == nil { // the node was deleted meanwhile
		c.mu.Unlock()
		return
	}
	write, base := st.next, st.ctx
	st.next, st.ctx, st.timer = nil, nil, nil
	c.refill(st, time.Now())
	st.tokens = max(st.tokens-1, 0)
	c.mu.Unlock()
	if write == nil {
		return
	}
	// The session's context without its cancellation: the session may
	// have ended, and its last report is still to be kept.
	ctx, cancel := context.WithTimeout(base, persistTimeout)
	defer cancel()
	if err := write(ctx); err != nil {
		c.srv.log.Warn("store a coalesced report", "node_id", key.node, "kind", key.kind, "error", err)
	}
}

func (c *coalescer) refill(st *coalesced, now time.Time) {
	st.tokens = min(reportBurst, st.tokens+float64(now.Sub(st.last))/float64(c.interval))
	st.last = now
}

// forget drops a deleted node's waiting reports.
func (c *coalescer) forget(nodeID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, st := range c.state {
		if k.node == nodeID {
			if st.timer != nil {
				st.timer.Stop()
			}
			delete(c.state, k)
		}
	}
}
