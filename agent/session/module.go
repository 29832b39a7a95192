package session

import (
	"context"
	"errors"
	"reflect"

	"github.com/bud-ecosystem/budfleet/internal/dispatch"
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
type Handler = dispatch.Handler[*Session]

// On makes the Handler for the ConnectResponse messages whose oneof holds a
// W, e.g. On(func(ctx context.Context, s *Session, m *agentv1.ConnectResponse_Command) error {...}).
// NewRunner refuses a W that is not one of ConnectResponse's oneof types.
func On[W any](fn func(ctx context.Context, s *Session, msg W) error) Handler {
	return dispatch.On(fn)
}

// dispatchTable maps each message kind to its module's handler.
func dispatchTable(modules []Module) (*dispatch.Table[*Session], error) {
	regs := make([]dispatch.Registration[*Session], 0, len(modules))
	for _, m := range modules {
		if m == nil {
			return nil, errors.New("session: a nil module")
		}
		regs = append(regs, dispatch.Registration[*Session]{Name: m.Name(), Handlers: m.Handlers()})
	}
	return dispatch.New(dispatch.Options{
		Who:      "session",
		Oneof:    dispatch.Oneof[agentv1.ConnectResponse]("Msg"),
		Message:  "ConnectResponse",
		Reserved: map[reflect.Type]string{reflect.TypeFor[*agentv1.ConnectResponse_Welcome](): "the welcome"},
		Helper:   "On",
	}, regs)
}
