package controller

import (
	"context"
	"errors"
	"sync"

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
	// Handed over here when that does not wait (no delivery to this
	// session under way, room in its queue): a fan-out then starts no
	// goroutine per node, and 10,000 of them runnable at once delayed
	// every stream's writes behind them.
	if d.mu.TryLock() {
		sent := !d.stale && m.offerOne(sess, d, c)
		d.mu.Unlock()
		if sent {
			return
		}
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
	sess.send(commandMessage(c))
	if ctx.Err() != nil {
		return nil // the session ended: send dropped it
	}
	d.sent[c.ID] = true
	m.marks.add(store.DeliveryMark{ID: c.ID, At: m.srv.opts.Now(), Count: 1})
	return nil
}

// offerOne is sendOne for a caller that must not wait: false when the
// session's queue is full (nothing was sent).
func (m *commandDelivery) offerOne(sess *session, d *deliveries, c store.Command) bool {
	if d.sent[c.ID] || sess.ctx.Err() != nil {
		return true
	}
	if !sess.offer(commandMessage(c)) {
		return false
	}
	d.sent[c.ID] = true
	m.marks.add(store.DeliveryMark{ID: c.ID, At: m.srv.opts.Now(), Count: 1})
	return true
}

func commandMessage(c store.Command) *agentv1.ConnectResponse {
	return &agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Command{Command: &agentv1.Command{
		Id:        c.ID,
		Kind:      c.Kind,
		Params:    c.Params,
		CreatedAt: timestamppb.New(c.CreatedAt),
	}}}
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
	// received_at: when the result came off the agent's stream, before its
	// store write (the log line's own time is after it).
	s.log.InfoContext(ctx, "command finished", "node_id", sess.nodeID, "command_id", c.ID, "kind", c.Kind, "state", c.State, "message", c.Message, "received_at", now)
	s.nodeEvent(sess.nodeID)
	return nil
}

var (
	errAlreadyDone    = errors.New("command already has a result")
	errForeignCommand = errors.New("result for another node's command")
)
