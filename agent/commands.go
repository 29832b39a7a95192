package agent

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bud-ecosystem/budfleet/agent/state"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	"github.com/bud-ecosystem/budfleet/version"
)

// commandLoop runs delivered commands one at a time, in delivery order.
func (s *sessionState) commandLoop() error {
	for {
		select {
		case <-s.ctx.Done():
			return nil
		case c := <-s.cmds:
			// A command outlives a broken session: it is cut short only by
			// agent shutdown (after CommandStopTimeout), and its stored
			// result is reported on the next session.
			rec, err := s.a.Execute(s.runCtx, c)
			if err != nil {
				return fmt.Errorf("record command %s: %w", c.GetId(), err)
			}
			if err := s.send(resultMessage(rec)); err != nil {
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
	rec, first, err := a.state.BeginCommand(c.GetId(), c.GetKind(), a.opts.Now())
	if err != nil {
		return rec, err
	}
	log := a.log.With("command_id", c.GetId(), "kind", c.GetKind())
	if !first {
		if !rec.Finished() {
			// It was running when the agent last stopped. Running it again
			// could repeat a side effect, so report it instead.
			rec.FinishedAt = a.opts.Now()
			rec.Success = false
			rec.Message = "interrupted: the agent stopped while this command was running; it was not run again"
			if err := a.state.FinishCommand(rec); err != nil {
				return rec, err
			}
		}
		log.Info("command delivered again; reporting the stored result", "deliveries", rec.Deliveries)
		return rec, nil
	}
	h, ok := a.handlers[c.GetKind()]
	if !ok {
		rec.FinishedAt = a.opts.Now()
		rec.Message = fmt.Sprintf("this agent (version %s) does not know command kind %q", version.Version, c.GetKind())
		return rec, a.state.FinishCommand(rec)
	}
	// Shutdown should not cut a command short; give it a bounded while.
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		t := time.NewTimer(a.opts.CommandStopTimeout)
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
	rec.FinishedAt = a.opts.Now()
	rec.Output = out
	rec.Success = herr == nil
	if herr != nil {
		rec.Message = herr.Error()
	}
	log.Info("command finished", "success", rec.Success, "message", rec.Message)
	return rec, a.state.FinishCommand(rec)
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
