// Package session is the agent's side of the Connect stream: it says hello,
// waits for the welcome, owns the stream's only writer and the session's
// context, hands each controller message to the module that registered its
// kind, and runs the modules' loops for as long as the stream lasts.
package session

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/bud-ecosystem/budfleet/internal/dispatch"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	"github.com/bud-ecosystem/budfleet/version"
)

// Welcome is what the controller asked of this session.
type Welcome struct {
	// HeartbeatInterval is the heartbeat cadence the controller's grace
	// period is set for.
	HeartbeatInterval time.Duration
	// FullInventoryInterval is how often an unchanged inventory is sent
	// anyway.
	FullInventoryInterval time.Duration
	// Controllers are the live controllers' addresses when several share
	// one store; empty for a controller alone.
	Controllers []string
}

// Learner is a Transport that takes the controller set of each welcome.
type Learner interface{ Learn(addrs []string) }

// Defaults for a welcome that leaves an interval out.
const (
	DefaultHeartbeatInterval     = 10 * time.Second
	DefaultFullInventoryInterval = 10 * time.Minute
)

func welcomeFrom(w *agentv1.Welcome) Welcome {
	hb := time.Duration(w.GetHeartbeatIntervalMs()) * time.Millisecond
	if hb <= 0 {
		hb = DefaultHeartbeatInterval
	}
	full := time.Duration(w.GetFullInventoryIntervalMs()) * time.Millisecond
	if full <= 0 {
		full = DefaultFullInventoryInterval
	}
	return Welcome{HeartbeatInterval: hb, FullInventoryInterval: full, Controllers: w.GetControllers()}
}

// Session is a module's handle on one open session.
type Session struct {
	welcome Welcome
	out     chan *agentv1.ConnectRequest
	// ctx ends with the stream; agentCtx outlives it, for work a broken
	// stream must not cut short.
	ctx      context.Context
	agentCtx context.Context
}

// Welcome returns what the controller asked of this session.
func (s *Session) Welcome() Welcome { return s.welcome }

// AgentContext ends only when the agent stops, not with the session: for
// work that must go on across reconnects (a running command, SIEM
// forwarding).
func (s *Session) AgentContext() context.Context { return s.agentCtx }

// Send queues m for the controller. It fails, with why the session ended,
// once it has.
func (s *Session) Send(m *agentv1.ConnectRequest) error {
	if s.ctx.Err() != nil {
		// Without this the select below may still pick a free buffer slot
		// nobody will read.
		return context.Cause(s.ctx)
	}
	select {
	case s.out <- m:
		return nil
	case <-s.ctx.Done():
		return context.Cause(s.ctx)
	}
}

// Options configure a Runner.
type Options struct {
	NodeID string
	// BootID, when set, says the kernel's boot id for each hello.
	BootID    func() string
	Transport Transport
	Modules   []Module
	Logger    *slog.Logger
}

// Runner holds sessions with the controller, one at a time.
type Runner struct {
	opts     Options
	log      *slog.Logger
	handlers *dispatch.Table[*Session]
}

// NewRunner checks opts: every module's handlers must be for distinct
// ConnectResponse kinds.
func NewRunner(opts Options) (*Runner, error) {
	if opts.NodeID == "" {
		return nil, errors.New("session: NodeID must be set")
	}
	if opts.Transport == nil {
		return nil, errors.New("session: Transport must be set")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	handlers, err := dispatchTable(opts.Modules)
	if err != nil {
		return nil, err
	}
	return &Runner{opts: opts, log: opts.Logger, handlers: handlers}, nil
}

// Run holds one session to its end and says why it ended; nil when ctx
// ended it.
func (r *Runner) Run(ctx context.Context) error {
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stream, err := r.opts.Transport.Connect(sctx)
	if err != nil {
		return err
	}
	defer stream.Close()
	hello := &agentv1.Hello{NodeId: r.opts.NodeID, AgentVersion: version.Version}
	if r.opts.BootID != nil {
		hello.BootId = r.opts.BootID()
	}
	if err := stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Hello{Hello: hello}}); err != nil {
		return recvErr(stream, err)
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	w := first.GetWelcome()
	if w == nil {
		return errors.New("controller did not answer the hello with a welcome")
	}
	s := &Session{
		welcome:  welcomeFrom(w),
		out:      make(chan *agentv1.ConnectRequest, 16),
		ctx:      sctx,
		agentCtx: ctx,
	}
	if l, ok := r.opts.Transport.(Learner); ok {
		l.Learn(s.welcome.Controllers)
	}
	r.log.Info("connected to controller", "heartbeat_interval", s.welcome.HeartbeatInterval, "controllers", s.welcome.Controllers)

	var wg sync.WaitGroup
	run := func(f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil {
				cancel(err)
			}
		}()
	}
	run(func() error { return sendLoop(sctx, stream, s.out) })
	for _, m := range r.opts.Modules {
		run(func() error { return m.Run(sctx, s) })
	}
	run(func() error { return r.recvLoop(sctx, stream, s) })
	<-sctx.Done()
	wg.Wait()
	if err := context.Cause(sctx); !errors.Is(err, context.Canceled) || ctx.Err() == nil {
		return err
	}
	return nil
}

func recvErr(stream Stream, sendErr error) error {
	// A failed Send hides the real status; Recv reports it.
	if _, err := stream.Recv(); err != nil {
		return err
	}
	return sendErr
}

// sendLoop is the only writer of the stream.
func sendLoop(ctx context.Context, stream Stream, out <-chan *agentv1.ConnectRequest) error {
	for {
		select {
		case <-ctx.Done():
			_ = stream.CloseSend()
			return nil
		case m := <-out:
			if err := stream.Send(m); err != nil {
				// recvLoop is already in Recv and will report the stream's
				// real status; a second concurrent Recv would never return.
				<-ctx.Done()
				return nil
			}
		}
	}
}

func (r *Runner) recvLoop(ctx context.Context, stream Stream, s *Session) error {
	for {
		m, err := stream.Recv()
		if err != nil {
			return err
		}
		ok, err := r.handlers.Dispatch(ctx, s, m.GetMsg())
		if err != nil {
			return err
		}
		if !ok {
			r.log.Warn("ignoring an unexpected message from the controller")
			continue
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}
