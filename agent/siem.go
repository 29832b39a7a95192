package agent

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/bud-ecosystem/budfleet/agent/session"
	"github.com/bud-ecosystem/budfleet/agent/state"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	siemv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/siem/v1"
	"github.com/bud-ecosystem/budfleet/siem"
)

// SIEMForwarder runs audit-log forwarding (siem/forward in
// production).
type SIEMForwarder interface {
	Apply(ctx context.Context, cfg siem.Config, version uint64, source string) error
	Status() *siemv1.Status
}

// siemForwarding runs the forwarder across sessions: it starts with the
// agent, applies what the controller pushes, and reports through the
// heartbeat. The forwarder keeps going while the agent reconnects.
type siemForwarding struct {
	forwarder SIEMForwarder // nil: the agent forwards nothing
	local     *siem.Config
	// allow is the node owner's allowlist for pushed configurations.
	allow siem.Allowlist
	state *state.DB
	log   *slog.Logger

	mu      sync.Mutex
	lastErr string // why the last configuration was refused
}

func (*siemForwarding) Name() string                                { return "siem" }
func (*siemForwarding) Run(context.Context, *session.Session) error { return nil }

func (m *siemForwarding) Handlers() []session.Handler {
	return []session.Handler{session.On(m.handlePush)}
}

func (m *siemForwarding) handlePush(_ context.Context, s *session.Session, msg *agentv1.ConnectResponse_SiemConfig) error {
	// The forwarder the push starts must not stop with this session.
	m.applyPush(s.AgentContext(), msg.SiemConfig)
	return nil
}

// start applies the controller's last pushed configuration, or else the
// local one.
func (m *siemForwarding) start(ctx context.Context) {
	if m.forwarder == nil {
		return
	}
	if pc, ok, err := m.state.PushedSIEM(); err == nil && ok {
		if err := m.applyPushed(ctx, pc); err == nil {
			return
		}
	}
	if c := m.local; c != nil && (len(c.Sources) > 0 || len(c.Outputs) > 0) {
		if err := m.forwarder.Apply(ctx, *c, 0, "local"); err != nil {
			m.setError(fmt.Sprintf("local siem config: %v", err))
		}
	}
}

func (m *siemForwarding) applyPushed(ctx context.Context, pc state.PushedConfig) error {
	cfg, err := siem.ParseYAML(pc.YAML)
	if err == nil {
		// The allowlist is checked before anything is opened: a refused
		// push reads nothing and sends nothing.
		err = m.allow.Check(cfg, []string{m.state.Dir()})
	}
	if err == nil {
		err = m.forwarder.Apply(ctx, cfg, pc.Version, "controller")
	}
	if err != nil {
		m.setError(fmt.Sprintf("configuration version %d refused: %v", pc.Version, err))
		m.log.Error("refused the controller's SIEM configuration; the previous one keeps running", "version", pc.Version, "error", err)
		return err
	}
	m.setError("")
	return nil
}

// applyPush applies a configuration from the controller without a restart
// and keeps it for the next start.
func (m *siemForwarding) applyPush(ctx context.Context, p *siemv1.ConfigPush) {
	if m.forwarder == nil {
		m.setError("this agent runs without SIEM forwarding")
		return
	}
	// Pushes can overtake each other; an older version never replaces a
	// newer one.
	if v, src := m.running(); src == "controller" && p.GetVersion() <= v {
		return
	}
	pc := state.PushedConfig{Version: p.GetVersion(), YAML: p.GetYaml()}
	if err := m.applyPushed(ctx, pc); err != nil {
		return
	}
	if err := m.state.SavePushedSIEM(pc); err != nil {
		m.log.Error("store the pushed SIEM configuration", "error", err)
	}
	m.log.Info("applied the controller's SIEM configuration", "version", p.GetVersion())
}

// running returns the version and source of the configuration the
// forwarder runs.
func (m *siemForwarding) running() (uint64, string) {
	cur := m.forwarder.Status()
	return cur.GetConfigVersion(), cur.GetConfigSource()
}

func (m *siemForwarding) setError(msg string) {
	m.mu.Lock()
	m.lastErr = msg
	m.mu.Unlock()
}

// status is what goes out with the next heartbeat.
func (m *siemForwarding) status() *siemv1.Status {
	if m.forwarder == nil {
		return nil
	}
	out := proto.Clone(m.forwarder.Status()).(*siemv1.Status)
	m.mu.Lock()
	out.ConfigError = m.lastErr
	m.mu.Unlock()
	return out
}
