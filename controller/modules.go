package controller

import (
	"context"
	"fmt"
	"reflect"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
	// run is the module's loop for one session, started once the welcome
	// has gone out. It returns when ctx (the session's) ends; an error ends
	// the session. A module without a loop returns nil at once.
	run(ctx context.Context, sess *session) error
}

// A handler takes one kind of agent message. Handlers run one at a time on
// the session's receiving goroutine; an error ends the session.
type handler struct {
	kind   reflect.Type
	handle func(ctx context.Context, sess *session, msg any) error
}

// on makes the handler for the ConnectRequest messages whose oneof holds a
// W, e.g. *agentv1.ConnectRequest_Inventory.
func on[W any](fn func(ctx context.Context, sess *session, msg W) error) handler {
	return handler{
		kind:   reflect.TypeFor[W](),
		handle: func(ctx context.Context, sess *session, msg any) error { return fn(ctx, sess, msg.(W)) },
	}
}

// requestKind is the type of ConnectRequest's oneof, which the generated
// code does not export.
var requestKind = func() reflect.Type {
	f, ok := reflect.TypeFor[agentv1.ConnectRequest]().FieldByName("Msg")
	if !ok {
		panic("agentv1.ConnectRequest has no Msg oneof")
	}
	return f.Type
}()

var helloKind = reflect.TypeFor[*agentv1.ConnectRequest_Hello]()

// dispatchTable maps each agent message kind to its module's handler; a
// kind claimed twice would leave one module deaf, so it is refused.
func dispatchTable(modules []module) (map[reflect.Type]handler, error) {
	table := map[reflect.Type]handler{}
	owner := map[reflect.Type]string{}
	names := map[string]bool{}
	for _, m := range modules {
		name := m.name()
		if names[name] {
			return nil, fmt.Errorf("controller: module %q registered twice", name)
		}
		names[name] = true
		for _, h := range m.handlers() {
			switch {
			case h.kind == nil || h.handle == nil:
				return nil, fmt.Errorf("controller: module %q has a handler not made with on", name)
			case !h.kind.Implements(requestKind) || h.kind.Kind() != reflect.Pointer:
				return nil, fmt.Errorf("controller: module %q handles %s, which is not a ConnectRequest message", name, h.kind)
			case h.kind == helloKind:
				return nil, fmt.Errorf("controller: module %q handles the hello, which the session itself takes", name)
			case owner[h.kind] != "":
				return nil, fmt.Errorf("controller: %s is handled by both module %q and module %q", h.kind, owner[h.kind], name)
			}
			owner[h.kind] = name
			table[h.kind] = h
		}
	}
	return table, nil
}

// handleAgentMessage hands msg to the module that registered its kind.
func (s *Server) handleAgentMessage(sess *session, msg *agentv1.ConnectRequest) error {
	kind := reflect.TypeOf(msg.GetMsg())
	if kind == helloKind {
		return status.Error(codes.InvalidArgument, "hello sent twice")
	}
	h, ok := s.handlers[kind]
	if !ok {
		return status.Error(codes.InvalidArgument, "unknown message")
	}
	return h.handle(sess.ctx, sess, msg.GetMsg())
}
