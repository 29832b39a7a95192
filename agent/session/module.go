package session

import (
	"context"
	"errors"
	"fmt"
	"reflect"

	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
)

// A Module is one capability of the agent on the session: heartbeats,
// inventory, GPUs, SIEM, commands, renewal, and whatever comes next. It is
// made once per agent, so what it keeps in its own fields outlives sessions;
// what belongs to one session lives in Run.
type Module interface {
	// Name identifies the module in errors.
	Name() string
	// Handlers are the controller messages the module takes; read once,
	// when the Runner is made.
	Handlers() []Handler
	// Run is the module's loop for one session. It returns when ctx (the
	// session's) ends; an error ends the session. A module without a loop
	// returns nil at once.
	Run(ctx context.Context, s *Session) error
}

// A Handler takes one kind of controller message. Handlers run one at a
// time on the session's receiving goroutine, so a slow one holds up every
// message behind it: hand long work to the module's loop. An error ends the
// session.
type Handler struct {
	kind   reflect.Type
	handle func(ctx context.Context, s *Session, msg any) error
}

// On makes the Handler for the ConnectResponse messages whose oneof holds a
// W, e.g. On(func(ctx context.Context, s *Session, m *agentv1.ConnectResponse_Command) error {...}).
// NewRunner refuses a W that is not one of ConnectResponse's oneof types.
func On[W any](fn func(ctx context.Context, s *Session, msg W) error) Handler {
	return Handler{
		kind:   reflect.TypeFor[W](),
		handle: func(ctx context.Context, s *Session, msg any) error { return fn(ctx, s, msg.(W)) },
	}
}

// responseKind is the type of ConnectResponse's oneof, which the generated
// code does not export.
var responseKind = func() reflect.Type {
	f, ok := reflect.TypeFor[agentv1.ConnectResponse]().FieldByName("Msg")
	if !ok {
		panic("agentv1.ConnectResponse has no Msg oneof")
	}
	return f.Type
}()

var welcomeKind = reflect.TypeFor[*agentv1.ConnectResponse_Welcome]()

// dispatchTable maps each message kind to its module's handler; a kind
// claimed twice would leave one module deaf, so it is refused.
func dispatchTable(modules []Module) (map[reflect.Type]Handler, error) {
	table := map[reflect.Type]Handler{}
	owner := map[reflect.Type]string{}
	names := map[string]bool{}
	for _, m := range modules {
		if m == nil {
			return nil, errors.New("session: a nil module")
		}
		name := m.Name()
		if names[name] {
			return nil, fmt.Errorf("session: module %q registered twice", name)
		}
		names[name] = true
		for _, h := range m.Handlers() {
			switch {
			case h.kind == nil || h.handle == nil:
				return nil, fmt.Errorf("session: module %q has a Handler not made with On", name)
			case !h.kind.Implements(responseKind) || h.kind.Kind() != reflect.Pointer:
				return nil, fmt.Errorf("session: module %q handles %s, which is not a ConnectResponse message", name, h.kind)
			case h.kind == welcomeKind:
				return nil, fmt.Errorf("session: module %q handles the welcome, which the session itself takes", name)
			case owner[h.kind] != "":
				return nil, fmt.Errorf("session: %s is handled by both module %q and module %q", h.kind, owner[h.kind], name)
			}
			owner[h.kind] = name
			table[h.kind] = h
		}
	}
	return table, nil
}
