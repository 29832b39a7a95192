package controller

import (
	"context"
	"time"
)

// Peers is what a controller shares with the other controllers of one
// fleet when several run on one store (controller/store/etcd's Cluster);
// nil for a controller alone. A node's session lives on whichever
// controller it reached: the others learn of it from the presence each
// publishes, and of the commands queued for it from a watch on the queue.
type Peers interface {
	// PublishPresence records the nodes with a session on this controller
	// and their last heartbeats: one batched write per call, not one per
	// heartbeat.
	PublishPresence(ctx context.Context, seen map[string]time.Time) error
	// Presence returns the last heartbeat another live controller
	// published for the node; ok is false when none has a session of it.
	Presence(nodeID string) (last time.Time, ok bool)
	// WatchQueued calls fn with the node of each command queued by any
	// controller until ctx ends; with "" when it may have missed some.
	WatchQueued(ctx context.Context, fn func(nodeID string)) error
	// WatchDeleted calls fn with each node deleted through any controller
	// until ctx ends.
	WatchDeleted(ctx context.Context, fn func(nodeID string)) error
	// Controllers lists the live controllers' agent addresses, for the
	// welcome.
	Controllers() []string
	// Lead runs fn while this controller holds the leadership called
	// name, again each time it wins it, until ctx ends; fn's context ends
	// when the leadership is lost.
	Lead(ctx context.Context, name string, fn func(ctx context.Context) error) error
}

// DefaultPresenceInterval is how often a controller with Peers publishes
// the last heartbeats of its sessions.
const DefaultPresenceInterval = 5 * time.Second

// publishPresence publishes this controller's sessions every interval
// until ctx ends.
func (s *Server) publishPresence(ctx context.Context) error {
	t := time.NewTicker(s.opts.PresenceInterval)
	defer t.Stop()
	for {
		s.mu.Lock()
		seen := make(map[string]time.Time, len(s.sessions))
		for id, sess := range s.sessions {
			last := s.lastSeen[id]
			if last.IsZero() || last.Before(sess.opened) {
				last = sess.opened
			}
			seen[id] = last
		}
		s.mu.Unlock()
		if err := s.opts.Peers.PublishPresence(ctx, seen); err != nil && ctx.Err() == nil {
			s.log.Warn("publish node presence to the other controllers", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// watchQueued delivers commands other controllers queue for this
// controller's sessions as soon as the store has them.
func (s *Server) watchQueued(ctx context.Context) error {
	return s.opts.Peers.WatchQueued(ctx, func(nodeID string) {
		if nodeID != "" {
			s.commands.wakeNode(nodeID)
			return
		}
		s.mu.Lock()
		ids := make([]string, 0, len(s.sessions))
		for id := range s.sessions {
			ids = append(ids, id)
		}
		s.mu.Unlock()
		for _, id := range ids {
			s.commands.wakeNode(id)
		}
	})
}

// remoteLiveness is a node's presence on another controller.
func (s *Server) remoteLiveness(id string) (time.Time, bool) {
	if s.opts.Peers == nil {
		return time.Time{}, false
	}
	return s.opts.Peers.Presence(id)
}

// RunPeers runs the controller's part among its peers until ctx ends:
// presence, the queue watch, node deletions. Serve runs it when Peers is set.
func (s *Server) RunPeers(ctx context.Context) error {
	if s.opts.Peers == nil {
		return nil
	}
	errc := make(chan error, 3)
	go func() { errc <- s.publishPresence(ctx) }()
	go func() { errc <- s.watchQueued(ctx) }()
	// A node deleted through another controller loses its session here.
	go func() { errc <- s.opts.Peers.WatchDeleted(ctx, s.dropNode) }()
	var err error
	for range 3 {
		if e := <-errc; err == nil {
			err = e
		}
	}
	return err
}

// singleton runs fn alone in the fleet: under the leadership called name
// when the controller has Peers, else directly.
func (s *Server) singleton(ctx context.Context, name string, fn func(ctx context.Context) error) error {
	if s.opts.Peers == nil {
		return fn(ctx)
	}
	return s.opts.Peers.Lead(ctx, name, func(ctx context.Context) error {
		s.log.Info("leading", "singleton", name)
		err := fn(ctx)
		s.log.Info("no longer leading", "singleton", name, "error", err)
		return err
	})
}

// controllers is the controller set for the welcome; none for a
// controller alone.
func (s *Server) controllers() []string {
	if s.opts.Peers == nil {
		return nil
	}
	return s.opts.Peers.Controllers()
}
