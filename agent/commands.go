package agent

import (
	"context"
	"fmt"
	"log/slog"
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

// commands runs what the controller delivers, at most once per id.
type commands struct {
	state       *state.DB
	handlers    map[string]Handler
	now         func() time.Time
	stopTimeout time.Duration
	log         *slog.Logger
	// delivered hands commands from the receiving goroutine to the loop, so
	// that a running command does not hold up other messages.
	delivered chan delivery
}

// delivery is a command and the session that brought it. One still queued
// when its session ends is dropped, not run by the next session: the
// controller delivers it again there.
type delivery struct {
	s   *session.Session
	cmd *agentv1.Command
}

func (*commands) Name() string { return "commands" }

func (m *commands) Handlers() []session.Handler {
	return []session.Handler{session.On(m.handleCommand)}
}

func (m *commands) handleCommand(ctx context.Context, s *session.Session, msg *agentv1.ConnectResponse_Command) error {
	select {
	case m.delivered <- delivery{s, msg.Command}:
	case <-ctx.Done():
	}
	return nil
}

// Run runs delivered commands one at a time, in delivery order.
func (m *commands) Run(ctx context.Context, s *session.Session) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case d := <-m.delivered:
			if d.s != s {
				continue
			}
			// A command outlives a broken session: it is cut short only by
			// agent shutdown (after CommandStopTimeout), and its stored
			// result is reported on the next session.
			rec, err := m.execute(s.AgentContext(), d.cmd)
			if err != nil {
				return fmt.Errorf("record command %s: %w", d.cmd.GetId(), err)
			}
			if err := s.Send(resultMessage(rec)); err != nil {
				return nil
			}
		}
	}
}

// Execute runs a delivered command at most once: the agent's state records
// the id before it runs and the result after, so a redelivered command (after
// a reconnect or a restart) returns the stored result instead of running
// again, and one cut short by a crash is reported as interrupted.
func (a *Agent) Execute(ctx context.Context, c *agentv1.Command) (state.CommandRecord, error) {
	return a.commands.execute(ctx, c)
}

func (m *commands) execute(ctx context.Context, c *agentv1.Command) (state.CommandRecord, error) {
	rec, first, err := m.state.BeginCommand(c.GetId(), c.GetKind(), m.now())
	if err != nil {
		return rec, err
	}
	log := m.log.With("command_id", c.GetId(), "kind", c.GetKind())
	if !first {
		if !rec.Finished() {
			// It was running when the agent last stopped. Running it again
			// could repeat a side effect, so report it instead.
			rec.FinishedAt = m.now()
			rec.Success = false
			rec.Message = "interrupted: the agent stopped while this command was running; it was not run again"
			if err := m.state.FinishCommand(rec); err != nil {
				return rec, err
			}
		}
		log.Info("command delivered again; reporting the stored result", "deliveries", rec.Deliveries)
		return rec, nil
	}
	h, ok := m.handlers[c.GetKind()]
	if !ok {
		rec.FinishedAt = m.now()
		rec.Message = fmt.Sprintf("this agent (version %s) does not know command kind %q", version.Version, c.GetKind())
		return rec, m.state.FinishCommand(rec)
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
	log.Info("running command")
	out, herr := h(runCtx, c.GetParams())
	rec.FinishedAt = m.now()
	rec.Output = out
	rec.Success = herr == nil
	if herr != nil {
		rec.Message = herr.Error()
	}
	log.Info("command finished", "success", rec.Success, "message", rec.Message)
	return rec, m.state.FinishCommand(rec)
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
