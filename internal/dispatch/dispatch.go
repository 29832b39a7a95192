// Package dispatch routes the messages of one protobuf oneof (a session
// stream's ConnectRequest or ConnectResponse) to the capability module that
// registered their kind. Both daemons' session cores use it, so "a kind
// claimed by two modules is refused at start-up" is one rule, written once.
package dispatch

import (
	"context"
	"errors"
	"fmt"
	"reflect"
)

// A Handler takes one kind of message for a session of type S. Handlers are
// made with On, never as literals: the zero Handler is refused by New.
type Handler[S any] struct {
	kind   reflect.Type
	handle func(ctx context.Context, sess S, msg any) error
}

// On makes the Handler for the messages whose oneof holds a W, e.g.
// *agentv1.ConnectResponse_Command. New refuses a W that is not one of the
// oneof's types.
func On[S, W any](fn func(ctx context.Context, sess S, msg W) error) Handler[S] {
	return Handler[S]{
		kind:   reflect.TypeFor[W](),
		handle: func(ctx context.Context, sess S, msg any) error { return fn(ctx, sess, msg.(W)) },
	}
}

// Registration is what one module claims: its name (for errors) and its
// handlers.
type Registration[S any] struct {
	Name     string
	Handlers []Handler[S]
}

// Table maps each message kind to the handler of the module that claimed it.
type Table[S any] struct {
	handlers map[reflect.Type]Handler[S]
}

// Oneof returns the type of the oneof field named field in message type M
// (generated code does not export it), e.g. Oneof[agentv1.ConnectRequest]("Msg").
func Oneof[M any](field string) reflect.Type {
	f, ok := reflect.TypeFor[M]().FieldByName(field)
	if !ok || f.Type.Kind() != reflect.Interface {
		panic(fmt.Sprintf("dispatch: %s has no oneof %s", reflect.TypeFor[M](), field))
	}
	return f.Type
}

// Options say what New checks the registrations against.
type Options struct {
	// Who prefixes errors ("session", "controller").
	Who string
	// Oneof is the oneof's interface type (see Oneof); Message names the
	// message in errors ("ConnectRequest").
	Oneof   reflect.Type
	Message string
	// Reserved are kinds the session core takes itself, with what to call
	// them in errors ("the hello").
	Reserved map[reflect.Type]string
	// Helper names the constructor in errors ("On", "on").
	Helper string
}

// New builds the table, refusing a module name used twice, a handler not
// made with the helper, a kind outside the oneof, a reserved kind, and a
// kind claimed by two modules (one of them would never hear it).
func New[S any](o Options, regs []Registration[S]) (*Table[S], error) {
	if o.Oneof == nil {
		return nil, errors.New("dispatch: Options.Oneof must be set")
	}
	t := &Table[S]{handlers: map[reflect.Type]Handler[S]{}}
	owner := map[reflect.Type]string{}
	names := map[string]bool{}
	for _, r := range regs {
		if names[r.Name] {
			return nil, fmt.Errorf("%s: module %q registered twice", o.Who, r.Name)
		}
		names[r.Name] = true
		for _, h := range r.Handlers {
			switch {
			case h.kind == nil || h.handle == nil:
				return nil, fmt.Errorf("%s: module %q has a handler not made with %s", o.Who, r.Name, o.Helper)
			case !h.kind.Implements(o.Oneof) || h.kind.Kind() != reflect.Pointer:
				return nil, fmt.Errorf("%s: module %q handles %s, which is not a %s message", o.Who, r.Name, h.kind, o.Message)
			case o.Reserved[h.kind] != "":
				return nil, fmt.Errorf("%s: module %q handles %s, which the session itself takes", o.Who, r.Name, o.Reserved[h.kind])
			case owner[h.kind] != "":
				return nil, fmt.Errorf("%s: %s is handled by both module %q and module %q", o.Who, h.kind, owner[h.kind], r.Name)
			}
			owner[h.kind] = r.Name
			t.handlers[h.kind] = h
		}
	}
	return t, nil
}

// Dispatch hands msg (the oneof's value) to its handler. ok is false when no
// module claimed its kind; what to do then is the caller's policy.
func (t *Table[S]) Dispatch(ctx context.Context, sess S, msg any) (ok bool, err error) {
	h, ok := t.handlers[reflect.TypeOf(msg)]
	if !ok {
		return false, nil
	}
	return true, h.handle(ctx, sess, msg)
}

// Handles reports whether a module claimed the kind of msg.
func (t *Table[S]) Handles(msg any) bool {
	_, ok := t.handlers[reflect.TypeOf(msg)]
	return ok
}
