package agent

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/bud-ecosystem/budfleet/agent/state"
	siemv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/siem/v1"
	"github.com/bud-ecosystem/budfleet/siem"
)

// SIEMForwarder runs audit-log forwarding (siem/forward in
// production).
type SIEMForwarder interface {
	Apply(ctx context.Context, cfg siem.Config, version uint64, source string) error
	Status() *siemv1.Status
}

// startSIEM applies the controller's last pushed configuration, or else the
// local one.
func (a *Agent) startSIEM(ctx context.Context) {
	if a.opts.SIEM == nil {
		return
	}
	if pc, ok, err := a.state.PushedSIEM(); err == nil && ok {
		if err := a.applyPushedSIEM(ctx, pc); err == nil {
			return
		}
	}
	if c := a.opts.LocalSIEM; c != nil && (len(c.Sources) > 0 || len(c.Outputs) > 0) {
		if err := a.opts.SIEM.Apply(ctx, *c, 0, "local"); err != nil {
			a.setSIEMError(fmt.Sprintf("local siem config: %v", err))
		}
	}
}

func (a *Agent) applyPushedSIEM(ctx context.Context, pc state.PushedConfig) error {
	cfg, err := siem.ParseYAML(pc.YAML)
	if err == nil {
		err = a.opts.SIEM.Apply(ctx, cfg, pc.Version, "controller")
	}
	if err != nil {
		a.setSIEMError(fmt.Sprintf("configuration version %d refused: %v", pc.Version, err))
		a.log.Error("refused the controller's SIEM configuration; the previous one keeps running", "version", pc.Version, "error", err)
		return err
	}
	a.setSIEMError("")
	return nil
}

// handleSIEMPush applies a configuration from the controller without a
// restart and keeps it for the next start.
func (a *Agent) handleSIEMPush(ctx context.Context, p *siemv1.ConfigPush) {
	if a.opts.SIEM == nil {
		a.setSIEMError("this agent runs without SIEM forwarding")
		return
	}
	// Pushes can overtake each other; an older version never replaces a
	// newer one.
	if v, src := a.siemVersion(); src == "controller" && p.GetVersion() <= v {
		return
	}
	pc := state.PushedConfig{Version: p.GetVersion(), YAML: p.GetYaml()}
	if err := a.applyPushedSIEM(ctx, pc); err != nil {
		return
	}
	if err := a.state.SavePushedSIEM(pc); err != nil {
		a.log.Error("store the pushed SIEM configuration", "error", err)
	}
	a.log.Info("applied the controller's SIEM configuration", "version", p.GetVersion())
}

func (a *Agent) siemVersion() (uint64, string) {
	st := a.opts.SIEM.Status()
	return st.GetConfigVersion(), st.GetConfigSource()
}

func (a *Agent) setSIEMError(msg string) {
	a.mu.Lock()
	a.siemErr = msg
	a.mu.Unlock()
}

// siemStatus is what goes out with the next heartbeat.
func (a *Agent) siemStatus() *siemv1.Status {
	if a.opts.SIEM == nil {
		return nil
	}
	st := proto.Clone(a.opts.SIEM.Status()).(*siemv1.Status)
	a.mu.Lock()
	st.ConfigError = a.siemErr
	a.mu.Unlock()
	return st
}
