package controller

import (
	"context"
	"errors"
	"reflect"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/internal/dispatch"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
)

// A module is one capability on agent sessions: heartbeats, inventory,
// GPUs, SIEM, commands, renewal, and whatever comes next. It registers the
// agent messages it handles and a loop run for each session, instead of a
// case in one switch. What it keeps across sessions is in its own fields.
type module interface {
	name() string
	// handlers are the agent messages the module takes; read once, by New.
	handlers() []handler
	// start runs once when a session opens, after the welcome and before
	// the agent's messages are received, so what it queues (pending
	// commands, a SIEM push) goes first. It must return promptly: a
	// module that needs a loop starts it and ties it to ctx (the
	// session's). Nothing waits in a goroutine per module per session, so
	// an idle connected agent costs only its stream. An error ends the
	// session.
	start(ctx context.Context, sess *session) error
}

// A handler takes one kind of agent message. Handlers run one at a time on
// the session's receiving goroutine; an error ends the session.
type handler = dispatch.Handler[*session]

// on makes the handler for the ConnectRequest messages whose oneof holds a
// W, e.g. *agentv1.ConnectRequest_Inventory.
func on[W any](fn func(ctx context.Context, sess *session, msg W) error) handler {
	return dispatch.On(fn)
}

var helloKind = reflect.TypeFor[*agentv1.ConnectRequest_Hello]()

// dispatchTable maps each agent message kind to its module's handler.
func dispatchTable(modules []module) (*dispatch.Table[*session], error) {
	regs := make([]dispatch.Registration[*session], 0, len(modules))
	for _, m := range modules {
		regs = append(regs, dispatch.Registration[*session]{Name: m.name(), Handlers: m.handlers()})
	}
	return dispatch.New(dispatch.Options{
		Who:      "controller",
		Oneof:    dispatch.Oneof[agentv1.ConnectRequest]("Msg"),
		Message:  "ConnectRequest",
		Reserved: map[reflect.Type]string{helloKind: "the hello"},
		Helper:   "on",
	}, regs)
}

// handleAgentMessage hands msg to the module that registered its kind.
func (s *Server) handleAgentMessage(sess *session, msg *agentv1.ConnectRequest) error {
	kind := reflect.TypeOf(msg.GetMsg())
	if kind == helloKind {
		return status.Error(codes.InvalidArgument, "hello sent twice")
	}
	ok, err := s.handlers.Dispatch(sess.ctx, sess, msg.GetMsg())
	if !ok {
		return status.Error(codes.InvalidArgument, "unknown message")
	}
	if storeUnavailable(err) {
		// The store (etcd without a quorum) cannot take the report now:
		// the session stays, and what the report said comes again (the
		// next inventory, a result on the command's redelivery).
		s.log.Warn("agent report not stored: the store is unavailable", "node_id", sess.nodeID, "kind", kind.String(), "error", err)
		return nil
	}
	return err
}

// storeUnavailable reports whether err is the store being unavailable,
// also when a handler flattened it into a status message.
func storeUnavailable(err error) bool {
	return err != nil && (errors.Is(err, store.ErrUnavailable) || strings.Contains(err.Error(), store.ErrUnavailable.Error()))
}
