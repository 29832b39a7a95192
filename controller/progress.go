package controller

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bud-ecosystem/budfleet/controller/store"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
)

// Bounds of what the controller keeps of streamed command output.
const (
	// progressTailBytes is how much of each stream's end a command keeps.
	progressTailBytes = 64 << 10
	// progressFlushEvery is how often, at most, a session's new output is
	// written to the store: a chatty agent costs a bounded number of
	// writes.
	progressFlushEvery = 500 * time.Millisecond
	// progressMaxCommands bounds the commands one session streams for at
	// once; the agent runs one at a time.
	progressMaxCommands = 16
)

// commandProgress keeps the tail of what a running command streams
// (maintenance.task) on the command, where 'budctl commands get' shows it.
// Chunks are gathered per session and written at most every
// progressFlushEvery, by a timer that exists only while something waits to
// be written, and when the session ends: like command delivery, it holds no
// goroutine per session.
type commandProgress struct {
	srv *Server

	mu       sync.Mutex
	sessions map[*session]*progressState
}

// progressState is one session's streaming commands, by id.
type progressState struct {
	// flushing makes one flush at a time, so a slow write never lands
	// after a newer one.
	flushing sync.Mutex

	mu   sync.Mutex
	cmds map[string]*progressEntry
	// timer is the pending flush, nil when none; lastFlush paces them.
	timer     *time.Timer
	lastFlush time.Time
	ended     bool
}

type progressEntry struct {
	// ignored: an unknown command, another node's, or one that had its
	// result before anything streamed; its chunks are dropped (and it was
	// logged once).
	ignored bool
	tail    store.OutputTail
	// version counts changes; written is the version last stored.
	version, written uint64
}

func (*commandProgress) name() string                          { return "progress" }
func (m *commandProgress) handlers() []handler                 { return []handler{on(m.handleProgress)} }
func (*commandProgress) start(context.Context, *session) error { return nil }

// stateOf returns the session's state, making it while the session lasts;
// when the session ends, what is left is written and the state dropped.
func (m *commandProgress) stateOf(sess *session) *progressState {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.sessions[sess]
	if st != nil || sess.ctx.Err() != nil {
		return st
	}
	st = &progressState{cmds: map[string]*progressEntry{}}
	m.sessions[sess] = st
	context.AfterFunc(sess.ctx, func() {
		m.mu.Lock()
		delete(m.sessions, sess)
		m.mu.Unlock()
		st.mu.Lock()
		st.ended = true
		if st.timer != nil {
			st.timer.Stop()
		}
		st.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(sess.ctx), persistTimeout)
		defer cancel()
		_ = m.flush(ctx, sess, st)
	})
	return st
}

// schedule makes sure a flush is coming, progressFlushEvery after the last
// one. st.mu is held.
func (m *commandProgress) schedule(sess *session, st *progressState) {
	if st.timer != nil || st.ended {
		return
	}
	wait := max(0, progressFlushEvery-time.Since(st.lastFlush))
	st.timer = time.AfterFunc(wait, func() {
		st.mu.Lock()
		st.timer = nil
		st.lastFlush = time.Now()
		st.mu.Unlock()
		if err := m.flush(sess.ctx, sess, st); err != nil {
			sess.cancel(err)
		}
	})
}

func (m *commandProgress) handleProgress(ctx context.Context, sess *session, msg *agentv1.ConnectRequest_CommandProgress) error {
	s := m.srv
	p := msg.CommandProgress
	id := p.GetCommandId()
	if id == "" || (p.GetStream() != agentv1.OutputStream_OUTPUT_STREAM_STDOUT && p.GetStream() != agentv1.OutputStream_OUTPUT_STREAM_STDERR) {
		s.log.WarnContext(ctx, "ignoring command progress without a command id or a known stream", "node_id", sess.nodeID, "command_id", truncate(id, 64), "stream", p.GetStream())
		return nil
	}
	st := m.stateOf(sess)
	if st == nil {
		return nil // the session has ended
	}
	st.mu.Lock()
	e := st.cmds[id]
	st.mu.Unlock()
	if e == nil {
		var err error
		if e, err = m.track(ctx, sess, st, id); err != nil {
			return err
		}
		if e == nil {
			return nil
		}
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if e.ignored {
		return nil
	}
	now := s.opts.Now()
	if p.GetStream() == agentv1.OutputStream_OUTPUT_STREAM_STDERR {
		e.tail.Stderr, e.tail.StderrBytes = appendStream(e.tail.Stderr, e.tail.StderrBytes, p.GetOffset(), p.GetData(), progressTailBytes)
	} else {
		e.tail.Stdout, e.tail.StdoutBytes = appendStream(e.tail.Stdout, e.tail.StdoutBytes, p.GetOffset(), p.GetData(), progressTailBytes)
	}
	e.tail.UpdatedAt = now
	e.version++
	m.schedule(sess, st)
	return nil
}

// track starts keeping a command's tail, from what the store has (the
// controller may have restarted mid-task), or marks it ignored and logs
// why. It returns nil when the session streams too many commands.
func (m *commandProgress) track(ctx context.Context, sess *session, st *progressState, id string) (*progressEntry, error) {
	s := m.srv
	c, err := s.store.GetCommand(ctx, id)
	e := &progressEntry{}
	switch {
	case errors.Is(err, store.ErrNotFound):
		s.log.WarnContext(ctx, "ignoring progress for an unknown command", "node_id", sess.nodeID, "command_id", truncate(id, 64))
		e.ignored = true
	case err != nil:
		return nil, status.Errorf(codes.Internal, "load command for its progress: %v", err)
	case c.NodeID != sess.nodeID:
		s.log.WarnContext(ctx, "refusing progress for another node's command", "node_id", sess.nodeID, "command_id", id, "command_node_id", c.NodeID)
		e.ignored = true
	case c.State.Done():
		e.ignored = true // it has its result, which holds the output
	case c.OutputTail != nil:
		e.tail = *c.OutputTail
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if prev := st.cmds[id]; prev != nil {
		return prev, nil
	}
	if len(st.cmds) >= progressMaxCommands {
		for k, old := range st.cmds {
			if old.ignored {
				delete(st.cmds, k)
			}
		}
	}
	if len(st.cmds) >= progressMaxCommands {
		s.log.WarnContext(ctx, "ignoring progress: too many commands streaming on one session", "node_id", sess.nodeID, "command_id", id, "limit", progressMaxCommands)
		return nil, nil
	}
	st.cmds[id] = e
	return e, nil
}

// snapshot returns a copy of what the session has streamed for a command,
// nil when nothing: the commands module stores it with the result, so that
// a finished command's tail is whole the moment its result is.
func (m *commandProgress) snapshot(sess *session, id string) *store.OutputTail {
	m.mu.Lock()
	st := m.sessions[sess]
	m.mu.Unlock()
	if st == nil {
		return nil
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	e := st.cmds[id]
	if e == nil || e.ignored {
		return nil
	}
	t := e.tail
	t.Stdout, t.Stderr = append([]byte(nil), t.Stdout...), append([]byte(nil), t.Stderr...)
	return &t
}

// flush writes every tail that changed since it was last written. A
// command's result may already be stored: the chunks came before it, so
// the tail is written beside it, and then forgotten.
func (m *commandProgress) flush(ctx context.Context, sess *session, st *progressState) error {
	type write struct {
		id      string
		tail    store.OutputTail
		version uint64
	}
	st.flushing.Lock()
	defer st.flushing.Unlock()
	var writes []write
	st.mu.Lock()
	for id, e := range st.cmds {
		if !e.ignored && e.version != e.written {
			t := e.tail
			t.Stdout, t.Stderr = append([]byte(nil), t.Stdout...), append([]byte(nil), t.Stderr...)
			writes = append(writes, write{id, t, e.version})
		}
	}
	st.mu.Unlock()
	for _, w := range writes {
		c, err := m.srv.store.UpdateCommand(ctx, w.id, func(c *store.Command) error {
			if c.NodeID != sess.nodeID {
				return fmt.Errorf("%w: command belongs to another node", store.ErrNotFound)
			}
			t := w.tail
			c.OutputTail = &t
			return nil
		})
		done := errors.Is(err, store.ErrNotFound) // deleted with its node meanwhile
		switch {
		case err == nil:
			done = c.State.Done()
		case ctx.Err() != nil:
			return nil
		case !done:
			return status.Errorf(codes.Internal, "store command progress: %v", err)
		}
		st.mu.Lock()
		if e := st.cmds[w.id]; e != nil {
			e.written = w.version
			if done && e.written == e.version {
				// Nothing more streams for it: keep only that it is done.
				*e = progressEntry{ignored: true}
			}
		}
		st.mu.Unlock()
	}
	return nil
}

// appendStream adds a chunk that begins at offset in its stream to the
// stream's tail, whose end is at end, and keeps the last max bytes. Output
// the agent skipped is marked in the tail; a chunk already had is dropped.
func appendStream(tail []byte, end, offset uint64, data []byte, max int) ([]byte, uint64) {
	if offset+uint64(len(data)) <= end {
		return tail, end
	}
	if offset < end {
		data = data[end-offset:]
		offset = end
	}
	out := tail
	if offset > end {
		if len(out) > 0 && out[len(out)-1] != '\n' {
			out = append(out, '\n')
		}
		out = fmt.Appendf(out, "[... %d bytes not received ...]\n", offset-end)
	}
	out = append(out, data...)
	if len(out) > max {
		out = append([]byte(nil), out[len(out)-max:]...)
	}
	return out, offset + uint64(len(data))
}
