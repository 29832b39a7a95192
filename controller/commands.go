package controller

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bud-ecosystem/budfleet/controller/store"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
)

// commandDelivery delivers a node's stored commands while it is connected,
// again on every session until a result arrives, and records the results.
// It holds no goroutine per session: delivery runs when the session opens
// and, after that, in a short-lived goroutine whenever a command is queued
// for a connected node. A goroutine parked per session would cost every
// connected agent its stack.
type commandDelivery struct {
	srv *Server

	mu       sync.Mutex
	sessions map[*session]*deliveries

	marks *deliveryMarks
}

// deliveries is one session's delivery state; mu makes deliveries to one
// session run one at a time, so each command goes once per session.
type deliveries struct {
	mu   sync.Mutex
	sent map[string]bool
	// stale: a delivery failed part way (the store was unavailable), so
	// the queue may hold commands this session has not been sent; the
	// next delivery reads the whole queue rather than only what it is
	// handed.
	stale bool
}

func (*commandDelivery) name() string          { return "commands" }
func (m *commandDelivery) handlers() []handler { return []handler{on(m.handleResult)} }

// run delivers what is pending when the session opens. The next session
// delivers a command again if no result came.
func (m *commandDelivery) start(ctx context.Context, sess *session) error {
	// Registered before the first look, so a command queued in between is
	// not missed: its wake waits for this delivery and then finds it.
	d := &deliveries{sent: map[string]bool{}}
	m.mu.Lock()
	m.sessions[sess] = d
	m.mu.Unlock()
	context.AfterFunc(ctx, func() {
		m.mu.Lock()
		delete(m.sessions, sess)
		m.mu.Unlock()
	})
	return m.deliver(ctx, sess, d)
}

// wakeNode delivers a connected node's new commands. It does not wait: a
// stalled session must not hold up the operator who queued the command.
func (m *commandDelivery) wakeNode(nodeID string) {
	sess := m.srv.sessionOf(nodeID)
	if sess == nil {
		return
	}
	m.mu.Lock()
	d := m.sessions[sess]
	m.mu.Unlock()
	if d == nil {
		return // its first delivery has not begun: it will find the command
	}
	go func() {
		if err := m.deliver(sess.ctx, sess, d); storeUnavailable(err) {
			// etcd without a quorum: the session stays; the command goes
			// at the next wake or session once the store is back.
			m.srv.log.Warn("deliver commands: the store is unavailable", "node_id", nodeID, "error", err)
		} else if err != nil {
			sess.cancel(err)
		}
	}()
}

// wakeWith delivers c, just queued, to its node if it is connected,
// without reading the node's queue back: a fan-out to 10,000 nodes then
// costs one store read less per node. Like wakeNode it does not wait.
func (m *commandDelivery) wakeWith(c store.Command) {
	sess := m.srv.sessionOf(c.NodeID)
	if sess == nil {
		return
	}
	m.mu.Lock()
	d := m.sessions[sess]
	m.mu.Unlock()
	if d == nil {
		return // its first delivery has not begun: it will find the command
	}
	go func() {
		err := m.deliverOne(sess.ctx, sess, d, c)
		if storeUnavailable(err) {
			m.srv.log.Warn("deliver commands: the store is unavailable", "node_id", c.NodeID, "error", err)
		} else if err != nil {
			sess.cancel(err)
		}
	}()
}

func (m *commandDelivery) deliverOne(ctx context.Context, sess *session, d *deliveries, c store.Command) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stale {
		return m.deliverLocked(ctx, sess, d)
	}
	return m.sendOne(ctx, sess, d, c)
}

func (m *commandDelivery) deliver(ctx context.Context, sess *session, d *deliveries) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return m.deliverLocked(ctx, sess, d)
}

func (m *commandDelivery) deliverLocked(ctx context.Context, sess *session, d *deliveries) error {
	err := m.deliverPending(ctx, sess, d)
	d.stale = err != nil
	return err
}

func (m *commandDelivery) deliverPending(ctx context.Context, sess *session, d *deliveries) error {
	s := m.srv
	pending, err := s.store.PendingCommands(ctx, sess.nodeID)
	if err != nil {
		return status.Errorf(codes.Internal, "load pending commands: %v", err)
	}
	for _, c := range pending {
		if ctx.Err() != nil {
			return nil
		}
		if err := m.sendOne(ctx, sess, d, c); err != nil {
			return err
		}
	}
	return nil
}

// sendOne sends c and marks it delivered, unless this session has had it.
// The mark is written after the send and for many sends at once (see
// deliveryMarks): a store write before each send put a fan-out's 10,000
// deliveries behind 10,000 updates. A crash between the send and the mark
// shows as one delivery fewer than happened; the command is still
// pending, so it is sent again, and the agent's at-most-once record keeps
// it from running twice.
func (m *commandDelivery) sendOne(ctx context.Context, sess *session, d *deliveries, c store.Command) error {
	if d.sent[c.ID] || ctx.Err() != nil {
		return nil
	}
	sess.send(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Command{Command: &agentv1.Command{
		Id:        c.ID,
		Kind:      c.Kind,
		Params:    c.Params,
		CreatedAt: timestamppb.New(c.CreatedAt),
	}}})
	if ctx.Err() != nil {
		return nil // the session ended: send dropped it
	}
	d.sent[c.ID] = true
	m.marks.add(store.DeliveryMark{ID: c.ID, At: m.srv.opts.Now(), Count: 1})
	return nil
}

// deliveryMarks gathers the delivered marks of sends and writes them in
// the background, a chunk at a time (markChunk), markDelay after the
// first, or later while sends keep coming (a fan-out still under way), up
// to markMaxDelay. A result that comes before its mark's chunk is written
// carries the mark into its own write (most of a fan-out's: their marks
// then cost no write at all); one that comes while the chunk is being
// written waits for it. So a command with a result always shows its
// deliveries, and a running one shows as delivered within about
// markDelay.
type deliveryMarks struct {
	srv *Server

	mu      sync.Mutex
	pending map[string]store.DeliveryMark
	// writing: the marks being written, and closed when they are.
	writing map[string]chan struct{}
	running bool
	lastAdd time.Time
}

func (k *deliveryMarks) add(dm store.DeliveryMark) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if cur, ok := k.pending[dm.ID]; ok {
		dm.Count += cur.Count
		dm.At = later(cur.At, dm.At)
	}
	k.pending[dm.ID] = dm
	k.lastAdd = time.Now()
	if !k.running {
		k.running = true
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
	k.mu.Lock()
	if dm, ok := k.pending[id]; ok {
		delete(k.pending, id)
		k.mu.Unlock()
		return dm, true
	}
	done := k.writing[id]
	k.mu.Unlock()
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
			k.mu.Lock()
			quiet := time.Since(k.lastAdd)
			k.mu.Unlock()
			if quiet >= markQuiet || time.Since(start) >= markMaxDelay {
				break
			}
			time.Sleep(markQuiet - quiet)
		}
		if !k.writeOnce(true) {
			return
		}
	}
}

// flush writes what is gathered now, for a graceful stop.
func (k *deliveryMarks) flush() { k.writeOnce(false) }

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
// whether there were any; with none, the loop that called it ends. Marks
// added while it writes wait for the next round.
func (k *deliveryMarks) writeOnce(fromLoop bool) bool {
	k.mu.Lock()
	n := len(k.pending)
	if n == 0 {
		if fromLoop {
			k.running = false
		}
		k.mu.Unlock()
		return false
	}
	k.mu.Unlock()

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
		k.mu.Lock()
		for _, dm := range marks {
			if k.writing[dm.ID] == done {
				delete(k.writing, dm.ID)
			}
		}
		k.mu.Unlock()
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
	k.mu.Lock()
	defer k.mu.Unlock()
	marks := make([]store.DeliveryMark, 0, min(limit, len(k.pending)))
	done := make(chan struct{})
	for id, dm := range k.pending {
		if len(marks) == limit {
			break
		}
		marks = append(marks, dm)
		k.writing[id] = done
		delete(k.pending, id)
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

func (m *commandDelivery) handleResult(ctx context.Context, sess *session, msg *agentv1.ConnectRequest_CommandResult) error {
	return m.recordResult(ctx, sess, msg.CommandResult)
}

func (m *commandDelivery) recordResult(ctx context.Context, sess *session, r *agentv1.CommandResult) error {
	s := m.srv
	now := s.opts.Now()
	// Chunks the progress module has not written yet go with the result.
	tail := s.progress.snapshot(sess, r.GetCommandId())
	// The delivery not yet written goes with the result; one being
	// written is waited for, so the result is never stored without it.
	mark, marked := m.marks.take(ctx, r.GetCommandId())
	c, err := s.store.UpdateCommand(ctx, r.GetCommandId(), func(c *store.Command) error {
		if c.NodeID != sess.nodeID {
			return errForeignCommand
		}
		if c.State.Done() {
			return errAlreadyDone
		}
		if marked {
			c.Deliveries += mark.Count
			c.DeliveredAt = mark.At
		}
		c.State = store.CommandFailed
		if r.GetSuccess() {
			c.State = store.CommandSucceeded
		}
		c.Message = r.GetMessage()
		c.Output = r.GetOutput()
		if tail != nil {
			c.OutputTail = tail
		}
		c.FinishedAt = now
		if r.GetFinishedAt() != nil {
			c.FinishedAt = r.GetFinishedAt().AsTime()
		}
		return nil
	})
	if err != nil && marked {
		m.marks.add(mark) // not ours to drop: its own write skips it if done
	}
	switch {
	case errors.Is(err, errAlreadyDone):
		return nil // a duplicate report after a redelivery
	case errors.Is(err, errForeignCommand):
		// No agent is ever sent another node's command: this one is
		// forging results. Its session ends; the command is untouched.
		s.refusals.note(ctx, "command result", sess.nodeID, err, "command_id", truncate(r.GetCommandId(), 64))
		return status.Errorf(codes.PermissionDenied, "command %s is not this node's: a node reports results only for its own commands", truncate(r.GetCommandId(), 64))
	case errors.Is(err, store.ErrNotFound):
		s.log.WarnContext(ctx, "result for an unknown command", "node_id", sess.nodeID, "command_id", r.GetCommandId())
		return nil
	case err != nil:
		return status.Errorf(codes.Internal, "store command result: %v", err)
	}
	s.metrics.cmdLatency.Observe(now.Sub(c.CreatedAt).Seconds())
	s.metrics.cmdResults.WithLabelValues(c.Kind, string(c.State)).Inc()
	s.log.InfoContext(ctx, "command finished", "node_id", sess.nodeID, "command_id", c.ID, "kind", c.Kind, "state", c.State, "message", c.Message)
	s.nodeEvent(sess.nodeID)
	return nil
}

var (
	errAlreadyDone    = errors.New("command already has a result")
	errForeignCommand = errors.New("result for another node's command")
)
