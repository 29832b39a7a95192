package controller

import (
	"context"
	"errors"
	"maps"
	"sync"
	"time"

	"github.com/bud-ecosystem/budfleet/controller/store"

	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var (
	errSessionReplaced = errors.New("a newer session of the same node replaced this one")
	errNodeDeleted     = errors.New("node was deleted: its certificate is revoked")
)

// session is one open Connect stream.
type session struct {
	nodeID string
	peer   string
	opened time.Time
	// version is the agent's, from its hello.
	version string
	ctx     context.Context
	cancel  context.CancelCauseFunc
	// out carries messages to the agent; the session's send loop is its
	// only reader and the stream's only writer.
	out chan *agentv1.ConnectResponse
}

// send queues m for the agent unless the session has ended.
func (sess *session) send(m *agentv1.ConnectResponse) {
	select {
	case sess.out <- m:
	case <-sess.ctx.Done():
	}
}

// offer queues m if that does not block, and says whether it did: for
// callers one stalled session must not hold up.
func (sess *session) offer(m *agentv1.ConnectResponse) bool {
	select {
	case sess.out <- m:
		return true
	default:
		return false
	}
}

func (s *Server) openSession(ctx context.Context, nodeID, peer, version string) (*session, error) {
	sctx, cancel := context.WithCancelCause(ctx)
	sess := &session{nodeID: nodeID, peer: peer, opened: s.opts.Now(), version: version, ctx: sctx, cancel: cancel, out: make(chan *agentv1.ConnectResponse, 16)}
	s.mu.Lock()
	if s.shuttingDown {
		s.mu.Unlock()
		cancel(errShuttingDown)
		return nil, status.Error(codes.Unavailable, errShuttingDown.Error())
	}
	old := s.sessions[nodeID]
	s.sessions[nodeID] = sess
	s.mu.Unlock()
	if old != nil {
		old.cancel(errSessionReplaced)
	} else {
		s.metrics.connected.Inc()
	}
	s.nodeEvent(nodeID)
	s.memRelease.opened(sess.opened)
	return sess, nil
}

func (s *Server) closeSession(sess *session) {
	sess.cancel(context.Canceled)
	s.mu.Lock()
	last := s.sessions[sess.nodeID] == sess
	if last {
		delete(s.sessions, sess.nodeID)
	}
	seen := s.lastSeen[sess.nodeID]
	s.mu.Unlock()
	if last {
		s.nodeEvent(sess.nodeID)
		s.metrics.connected.Dec()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(sess.ctx), persistTimeout)
		defer cancel()
		s.persistHeartbeat(ctx, sess.nodeID, seen)
	}
}

// sessionOf returns a node's open session, or nil.
func (s *Server) sessionOf(nodeID string) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions[nodeID]
}

// dropNode ends a deleted node's session and forgets its liveness.
func (s *Server) dropNode(nodeID string) {
	s.mu.Lock()
	sess := s.sessions[nodeID]
	delete(s.lastSeen, nodeID)
	s.mu.Unlock()
	s.siem.forget(nodeID)
	s.reports.forget(nodeID)
	if sess != nil {
		sess.cancel(errNodeDeleted)
	}
}

// closeAllSessions ends every session, for shutdown: agents reconnect to the
// next controller on their own.
func (s *Server) closeAllSessions() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.shuttingDown = true // and refuse new ones until the server stops
	for _, sess := range s.sessions {
		sess.cancel(errShuttingDown)
	}
}

var errShuttingDown = errors.New("controller is shutting down")

// persistTimeout bounds the write of a node's last heartbeat when its
// session ends: the session's context is done by then.
const persistTimeout = 5 * time.Second

// persistLiveness writes each node's last heartbeat to the store, so that
// 'nodes get' shows when a node was last seen across restarts. It runs at
// shutdown: ctx should not be done yet (see context.WithoutCancel).
func (s *Server) persistLiveness(ctx context.Context) {
	s.mu.Lock()
	seen := maps.Clone(s.lastSeen)
	s.mu.Unlock()
	// Many at once: the bolt store folds concurrent node writes into shared
	// transactions (its group commit), where one at a time would cost each a
	// transaction and its fsync (10,000 nodes: minutes, past the
	// graceful stop).
	var wg sync.WaitGroup
	sem := make(chan struct{}, 128)
	for id, t := range seen {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			s.persistHeartbeat(ctx, id, t)
		}()
	}
	wg.Wait()
}

func (s *Server) persistHeartbeat(ctx context.Context, id string, t time.Time) {
	if t.IsZero() {
		return
	}
	_, err := s.store.UpdateNode(ctx, id, func(n *store.Node) error {
		n.LastHeartbeat = t
		return nil
	})
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		s.log.Warn("persist last heartbeat", "node_id", id, "error", err)
	}
}
