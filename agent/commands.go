package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bud-ecosystem/budfleet/agent/session"
	"github.com/bud-ecosystem/budfleet/agent/state"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	"github.com/bud-ecosystem/budfleet/version"
)

// Handler runs one kind of command. The returned output and message are
// reported to the controller; an error marks the command failed.
type Handler func(ctx context.Context, params map[string]string) (output map[string]string, err error)

// call is one run of a command as a built-in handler sees it, when it
// needs more than the parameters a Handler gets.
type call struct {
	id     string
	params map[string]string
	// progress streams output to the controller while the command runs,
	// on the session that delivered it; once that session has ended it
	// drops what it is given (the result carries the end of the output).
	progress func(*agentv1.CommandProgress)
	// message, set by the handler, is a success's message ("reboot
	// started").
	message string
	// after, set by the handler, runs once the result is recorded and
	// handed to the session: for a command whose effect stops the agent
	// (a reboot), so that the result is not lost with it.
	after func()
}

// handler is what the commands module runs for one kind.
type handler func(ctx context.Context, c *call) (output map[string]string, err error)

// plain adapts a Handler, which needs only the parameters.
func plain(h Handler) handler {
	return func(ctx context.Context, c *call) (map[string]string, error) { return h(ctx, c.params) }
}

// commands runs what the controller delivers, at most once per id.
type commands struct {
	state       *state.DB
	handlers    map[string]handler
	now         func() time.Time
	stopTimeout time.Duration
	log         *slog.Logger
	// settle, when set, gives the result of a command whose handler left
	// it unfinished on purpose (errResultAfterRestart): an upgrade's, which
	// the agent running after the restart knows. mine is false for any
	// other command; done is false while the result is not known yet.
	settle func(rec state.CommandRecord) (out state.CommandRecord, mine, done bool)

	// The worker runs commands for the agent's lifetime, not a session's:
	// a session that breaks while a command runs is replaced at once, and
	// the command's progress and result go to whichever session is open
	// when they come. work is its queue; queued holds the ids queued or
	// running, so a command the controller delivers again meanwhile (after
	// a reconnect) is not queued twice.
	mu         sync.Mutex
	current    *session.Session
	queued     map[string]bool
	work       chan *agentv1.Command
	workerOnce sync.Once
	workerDone chan struct{}
}

func (*commands) Name() string { return "commands" }

func (m *commands) Handlers() []session.Handler {
	return []session.Handler{session.On(m.handleCommand)}
}

// queueLen is how many commands may wait for the worker before the
// receiving goroutine waits for room.
const queueLen = 64

// handleCommand queues a delivered command for the worker, in the
// receiving goroutine: a command delivered again while it is queued or
// running is not queued twice, and one the queue has no room for waits
// here, as the stream's reads do. One not yet queued when its session
// ends is dropped: the controller delivers it again on the next session.
func (m *commands) handleCommand(ctx context.Context, s *session.Session, msg *agentv1.ConnectResponse_Command) error {
	m.start(s)
	id := msg.Command.GetId()
	m.mu.Lock()
	// Results go to the session that delivers, even before Run has
	// begun on it.
	m.current = s
	dup := m.queued[id]
	if !dup {
		m.queued[id] = true
	}
	m.mu.Unlock()
	if dup {
		m.log.Info("command delivered again while queued or running; its result follows when it ends", "command_id", id)
		return nil
	}
	select {
	case m.work <- msg.Command:
	case <-ctx.Done():
		m.unqueue(id) // delivered again on the next session
	}
	return nil
}

// start starts the worker, once for the agent's lifetime.
func (m *commands) start(s *session.Session) {
	m.workerOnce.Do(func() {
		m.mu.Lock()
		m.queued = map[string]bool{}
		m.work = make(chan *agentv1.Command, queueLen)
		m.workerDone = make(chan struct{})
		m.mu.Unlock()
		go m.worker(s.AgentContext())
	})
}

// Run makes s the session results go to, for as long as it lasts. It
// returns as soon as the session ends, even with a command running.
func (m *commands) Run(ctx context.Context, s *session.Session) error {
	m.start(s)
	m.mu.Lock()
	m.current = s
	m.mu.Unlock()
	<-ctx.Done()
	m.mu.Lock()
	if m.current == s {
		m.current = nil
	}
	m.mu.Unlock()
	return nil
}

// worker runs queued commands until the agent stops. A command cut short
// by the stop is bounded by CommandStopTimeout (see execute); wait waits for
// it.
func (m *commands) worker(ctx context.Context) {
	defer close(m.workerDone)
	for {
		select {
		case <-ctx.Done():
			return
		case c := <-m.work:
			if ctx.Err() != nil {
				return // not begun: delivered again after the restart
			}
			rec, after, err := m.execute(ctx, c, func(p *agentv1.CommandProgress) {
				m.send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_CommandProgress{CommandProgress: p}})
			})
			m.unqueue(c.GetId())
			if err != nil {
				// The state file failed: the controller delivers the
				// command again and the record decides then.
				m.log.Error("record command", "command_id", c.GetId(), "error", err)
				continue
			}
			if rec.Finished() {
				m.send(resultMessage(rec))
			}
			if after != nil {
				after()
			}
		}
	}
}

func (m *commands) unqueue(id string) {
	m.mu.Lock()
	delete(m.queued, id)
	m.mu.Unlock()
}

// send hands msg to the open session. Between sessions it is dropped: a
// result is in the agent's state, and the controller delivers the command
// again on the next session, which reports it from there; progress is only
// a preview of the output the result carries.
func (m *commands) send(msg *agentv1.ConnectRequest) {
	m.mu.Lock()
	s := m.current
	m.mu.Unlock()
	if s != nil {
		_ = s.Send(msg)
	}
}

// wait returns once the worker has stopped (after the agent's context
// ended), so that the agent's state is not closed under a command.
func (m *commands) wait() {
	m.mu.Lock()
	done := m.workerDone
	m.mu.Unlock()
	if done != nil {
		<-done
	}
}

// Execute runs a delivered command at most once: the agent's state records
// the id before it runs and the result after, so a redelivered command (after
// a reconnect or a restart) returns the stored result instead of running
// again, and one cut short by a crash is reported as interrupted.
//
// Output a command streams while it runs goes nowhere here; what a handler
// asked to run after its result is recorded runs before Execute returns.
func (a *Agent) Execute(ctx context.Context, c *agentv1.Command) (state.CommandRecord, error) {
	rec, after, err := a.commands.execute(ctx, c, nil)
	if after != nil {
		after()
	}
	return rec, err
}

// execute runs c at most once and returns its record, and what its handler
// asked to run once the result has been handed on (nil for none). progress
// (nil: dropped) takes the output it streams while it runs.
func (m *commands) execute(ctx context.Context, c *agentv1.Command, progress func(*agentv1.CommandProgress)) (state.CommandRecord, func(), error) {
	rec, first, err := m.state.BeginCommand(c.GetId(), c.GetKind(), m.now())
	if err != nil {
		return rec, nil, err
	}
	// The command's logger is made only when a line is logged: With
	// formats its attributes at once, on every command, even with Info
	// lines off.
	var clog *slog.Logger
	info := func(msg string, args ...any) {
		if !m.log.Enabled(ctx, slog.LevelInfo) {
			return
		}
		if clog == nil {
			clog = m.log.With("command_id", c.GetId(), "kind", c.GetKind())
		}
		clog.Info(msg, args...)
	}
	if !first {
		if !rec.Finished() && m.settle != nil {
			if out, mine, done := m.settle(rec); mine {
				if !done {
					info("command delivered again; its result follows once the agent knows it")
					return rec, nil, nil
				}
				if err := m.state.FinishCommand(out); err != nil {
					return rec, nil, err
				}
				return out, nil, nil
			}
		}
		if !rec.Finished() {
			// It was running when the agent last stopped. Running it again
			// could repeat a side effect, so report it instead.
			rec.FinishedAt = m.now()
			rec.Success = false
			rec.Message = "interrupted: the agent stopped while this command was running; it was not run again"
			if err := m.state.FinishCommand(rec); err != nil {
				return rec, nil, err
			}
		}
		info("command delivered again; reporting the stored result", "deliveries", rec.Deliveries)
		return rec, nil, nil
	}
	h, ok := m.handlers[c.GetKind()]
	if !ok {
		rec.FinishedAt = m.now()
		rec.Message = fmt.Sprintf("this agent (version %s) does not know command kind %q", version.Version, c.GetKind())
		return rec, nil, m.state.FinishCommand(rec)
	}
	// Shutdown should not cut a command short; give it a bounded while.
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		t := time.NewTimer(m.stopTimeout)
		defer t.Stop()
		select {
		case <-t.C:
			cancel()
		case <-runCtx.Done():
		}
	})
	defer stop()
	info("running command")
	if progress == nil {
		progress = func(*agentv1.CommandProgress) {}
	}
	cl := &call{id: c.GetId(), params: c.GetParams(), progress: progress}
	out, herr := h(runCtx, cl)
	if errors.Is(herr, errResultAfterRestart) {
		info("command's result follows after the restart")
		return rec, cl.after, nil
	}
	rec.FinishedAt = m.now()
	rec.Output = out
	rec.Success = herr == nil
	rec.Message = cl.message
	if herr != nil {
		rec.Message = herr.Error()
	}
	info("command finished", "success", rec.Success, "message", rec.Message)
	if err := m.state.FinishCommand(rec); err != nil {
		// Not recorded: what was to follow the result must not happen.
		return rec, nil, err
	}
	if herr != nil {
		return rec, nil, nil
	}
	return rec, cl.after, nil
}

// errResultAfterRestart, from a handler, leaves the command unfinished and
// unreported: what it did restarts the agent, and settle gives its result
// afterwards.
var errResultAfterRestart = errors.New("the result follows after the restart")

// report settles the command id, left unfinished on purpose, and sends its
// result on s, once its result is known.
func (m *commands) report(s *session.Session, id string) {
	rec, err := m.state.Command(id)
	if err != nil || rec.Finished() || m.settle == nil {
		return
	}
	out, mine, done := m.settle(rec)
	if !mine || !done {
		return
	}
	if err := m.state.FinishCommand(out); err != nil {
		m.log.Error("record command", "command_id", id, "error", err)
		return
	}
	m.log.Info("command finished", "command_id", id, "kind", out.Kind, "success", out.Success, "message", out.Message)
	_ = s.Send(resultMessage(out))
}

func resultMessage(rec state.CommandRecord) *agentv1.ConnectRequest {
	return &agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_CommandResult{CommandResult: &agentv1.CommandResult{
		CommandId:  rec.ID,
		Success:    rec.Success,
		Message:    rec.Message,
		Output:     rec.Output,
		StartedAt:  timestamppb.New(rec.StartedAt),
		FinishedAt: timestamppb.New(rec.FinishedAt),
		Deliveries: rec.Deliveries,
	}}}
}
