package providers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bud-ecosystem/budfleet/plugins/sdk"
)

// Options tune a Host; the zero value is the default.
type Options struct {
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// StartTimeout bounds a plugin's start: the process, its handshake,
	// Info and ValidateConfig (default 30s).
	StartTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait before a plugin that
	// crashed or failed to start is started again: it doubles with each
	// failure in a row (defaults 1s and 1m).
	MinBackoff, MaxBackoff time.Duration
}

// Errors of the Host, for errors.Is.
var (
	// ErrUnknownProvider: no provider of that name in the providers file.
	ErrUnknownProvider = errors.New("unknown provider")
	// ErrUnavailable: the plugin could not be started, crashed, or is
	// waiting out its backoff.
	ErrUnavailable = errors.New("provider unavailable")
)

// Host runs the providers of a providers file.
type Host struct {
	opts      Options
	providers []*Provider
}

// New returns a Host for cfgs (from LoadFile). It starts nothing: each
// plugin starts at its first call.
func New(cfgs []Config, opts Options) *Host {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 30 * time.Second
	}
	if opts.MinBackoff == 0 {
		opts.MinBackoff = time.Second
	}
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = time.Minute
	}
	h := &Host{opts: opts}
	for _, c := range cfgs {
		h.providers = append(h.providers, &Provider{cfg: c, opts: &h.opts, log: opts.Logger.With("provider", c.Name)})
	}
	return h
}

// Provider returns the provider called name.
func (h *Host) Provider(name string) (*Provider, error) {
	for _, p := range h.providers {
		if p.cfg.Name == name {
			return p, nil
		}
	}
	names := make([]string, len(h.providers))
	for i, p := range h.providers {
		names[i] = p.cfg.Name
	}
	return nil, fmt.Errorf("%w %q: the providers file names %s", ErrUnknownProvider, name, strings.Join(names, ", "))
}

// Status reports every provider, in the order of the providers file,
// without starting any.
func (h *Host) Status() []Status {
	out := make([]Status, len(h.providers))
	for i, p := range h.providers {
		out[i] = p.Status()
	}
	return out
}

// Close stops every plugin.
func (h *Host) Close() {
	var wg sync.WaitGroup
	for _, p := range h.providers {
		wg.Go(p.stop)
	}
	wg.Wait()
}

// Health is what the host knows of a provider.
type Health string

const (
	// HealthIdle: not started yet (plugins start at their first call).
	HealthIdle Health = "idle"
	// HealthHealthy: its last call was answered.
	HealthHealthy Health = "healthy"
	// HealthUnhealthy: its last start or call failed, timed out or
	// crashed it; LastError says which.
	HealthUnhealthy Health = "unhealthy"
)

// Status is one provider as Host.Status reports it.
type Status struct {
	Name   string
	Path   string
	SHA256 string
	// Info is what the plugin said at its last start.
	Info        sdk.Info
	Health      Health
	Running     bool
	LastError   string
	LastErrorAt time.Time
	// Restarts counts the starts after the first.
	Restarts int
}

// Provider is one plugin: its calls start it when it is not running and
// put a deadline on each. It is safe for concurrent use; a call in flight
// holds no lock, so a hung call blocks only its own caller.
type Provider struct {
	cfg  Config
	opts *Options
	log  *slog.Logger

	// startMu serialises starts; mu guards the fields below it and is
	// never held across a call to the plugin.
	startMu sync.Mutex
	mu      sync.Mutex
	client  *plugin.Client
	impl    sdk.Provider
	stderr  *stderrTail
	info    sdk.Info
	health  Health
	lastErr string
	lastAt  time.Time
	starts  int
	// failures counts crashes and failed starts in a row; retryAt is when
	// the next start may be tried.
	failures int
	retryAt  time.Time
}

// Name is the provider's name in the providers file.
func (p *Provider) Name() string { return p.cfg.Name }

// AgentPackage is the providers file's agent_package of the provider.
func (p *Provider) AgentPackage() string { return p.cfg.AgentPackage }

// Status reports the provider without starting it.
func (p *Provider) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	h := p.health
	if h == "" {
		h = HealthIdle
	}
	return Status{
		Name: p.cfg.Name, Path: p.cfg.Path, SHA256: p.cfg.SHA256,
		Info: p.info, Health: h, Running: p.client != nil && !p.client.Exited(),
		LastError: p.lastErr, LastErrorAt: p.lastAt, Restarts: max(p.starts-1, 0),
	}
}

func (p *Provider) ListMachines(ctx context.Context) ([]sdk.Machine, error) {
	var out []sdk.Machine
	err := p.do(ctx, "ListMachines", p.cfg.CallTimeout, func(ctx context.Context, impl sdk.Provider) (err error) {
		out, err = impl.ListMachines(ctx)
		return err
	})
	return out, err
}

func (p *Provider) CreateMachine(ctx context.Context, spec sdk.MachineSpec, boot sdk.Bootstrap) (sdk.Machine, error) {
	var out sdk.Machine
	err := p.do(ctx, "CreateMachine", p.cfg.CreateTimeout, func(ctx context.Context, impl sdk.Provider) (err error) {
		out, err = impl.CreateMachine(ctx, spec, boot)
		return err
	})
	return out, err
}

func (p *Provider) GetMachine(ctx context.Context, providerID string) (sdk.Machine, error) {
	var out sdk.Machine
	err := p.do(ctx, "GetMachine", p.cfg.CallTimeout, func(ctx context.Context, impl sdk.Provider) (err error) {
		out, err = impl.GetMachine(ctx, providerID)
		return err
	})
	return out, err
}

func (p *Provider) DeleteMachine(ctx context.Context, providerID string) error {
	return p.do(ctx, "DeleteMachine", p.cfg.CreateTimeout, func(ctx context.Context, impl sdk.Provider) error {
		return impl.DeleteMachine(ctx, providerID)
	})
}

func (p *Provider) Power(ctx context.Context, providerID string, action sdk.PowerAction) (sdk.Machine, error) {
	var out sdk.Machine
	err := p.do(ctx, "Power", p.cfg.CallTimeout, func(ctx context.Context, impl sdk.Provider) (err error) {
		out, err = impl.Power(ctx, providerID, action)
		return err
	})
	return out, err
}

// do makes one call: it starts the plugin if need be, bounds the call by
// timeout, and records what the outcome says of the plugin's health.
func (p *Provider) do(ctx context.Context, op string, timeout time.Duration, fn func(context.Context, sdk.Provider) error) error {
	impl, client, stderr, err := p.running(ctx)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err = fn(cctx, impl)
	switch {
	case err == nil:
		p.answered(nil)
		return nil
	case errors.Is(err, sdk.ErrNotFound), errors.Is(err, sdk.ErrInvalid), errors.Is(err, sdk.ErrUnsupported):
		// The plugin worked: the request was wrong.
		p.answered(nil)
		return fmt.Errorf("provider %s: %w", p.cfg.Name, err)
	case exitedSoon(client, err):
		msg := fmt.Sprintf("the plugin exited during %s%s; the controller starts it again", op, stderr.reason())
		p.crashed(client, msg, false)
		return fmt.Errorf("%w: provider %s: %s", ErrUnavailable, p.cfg.Name, msg)
	case ctx.Err() == nil && (cctx.Err() != nil || errors.Is(err, context.DeadlineExceeded)):
		// gRPC's own timer for the deadline may fire before the context's.
		msg := fmt.Sprintf("%s did not answer within %s (call_timeout or create_timeout in the providers file)", op, timeout)
		p.answered(errors.New(msg))
		return fmt.Errorf("provider %s: %s: %w", p.cfg.Name, msg, context.DeadlineExceeded)
	case ctx.Err() != nil:
		// The caller gave up; that says nothing of the plugin.
		return fmt.Errorf("provider %s: %s: %w", p.cfg.Name, op, ctx.Err())
	}
	p.answered(fmt.Errorf("%s: %w", op, err))
	return fmt.Errorf("provider %s: %w", p.cfg.Name, err)
}

// exitedSoon reports whether the plugin process died: a call that failed
// in transport waits a moment for go-plugin to see the exit, which comes
// just after the broken connection.
func exitedSoon(c *plugin.Client, err error) bool {
	if c.Exited() {
		return true
	}
	if !errors.Is(err, sdk.ErrPluginExited) && status.Code(err) != codes.Unavailable {
		return false
	}
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		if c.Exited() {
			return true
		}
	}
	return false
}

func (p *Provider) answered(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		p.health, p.lastErr, p.lastAt = HealthUnhealthy, err.Error(), p.opts.Now()
		p.log.Warn("provider call failed", "error", err)
		return
	}
	p.health, p.failures = HealthHealthy, 0
}

// crashed records that client's process exited and lets the next call
// start it again after the backoff. A plugin found dead between calls
// (killed, say) after it had answered is started again at once: the call
// that found it is not made to fail for it; one that keeps dying backs off.
func (p *Provider) crashed(client *plugin.Client, msg string, idle bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.client != client {
		return // a concurrent call saw it first
	}
	p.client.Kill()
	p.client, p.impl = nil, nil
	firstIdle := idle && p.failures == 0
	p.failLocked(msg)
	if firstIdle {
		p.retryAt = p.opts.Now()
	}
	p.log.Error("provider plugin crashed", "error", msg, "restart_after", p.retryAt.Sub(p.opts.Now()).Round(time.Millisecond))
}

func (p *Provider) failLocked(msg string) {
	now := p.opts.Now()
	p.failures++
	backoff := p.opts.MinBackoff << min(p.failures-1, 16)
	p.retryAt = now.Add(min(backoff, p.opts.MaxBackoff))
	p.health, p.lastErr, p.lastAt = HealthUnhealthy, msg, now
}

// running returns the plugin, starting it when it is not running.
func (p *Provider) running(ctx context.Context) (sdk.Provider, *plugin.Client, *stderrTail, error) {
	if impl, c, tail, ok := p.current(); ok {
		return impl, c, tail, nil
	}
	p.startMu.Lock()
	defer p.startMu.Unlock()
	if impl, c, tail, ok := p.current(); ok {
		return impl, c, tail, nil
	}
	p.mu.Lock()
	wait, lastErr := p.retryAt.Sub(p.opts.Now()), p.lastErr
	p.mu.Unlock()
	if wait > 0 {
		return nil, nil, nil, fmt.Errorf("%w: provider %s is down (%s); the controller tries again in %s", ErrUnavailable, p.cfg.Name, lastErr, wait.Round(time.Second))
	}
	return p.start(ctx)
}

// current returns the running plugin; a process found dead is recorded as
// a crash first.
func (p *Provider) current() (sdk.Provider, *plugin.Client, *stderrTail, bool) {
	p.mu.Lock()
	c, impl, tail := p.client, p.impl, p.stderr
	p.mu.Unlock()
	if c == nil {
		return nil, nil, nil, false
	}
	if c.Exited() {
		p.crashed(c, "the plugin exited between calls"+tail.reason(), true)
		return nil, nil, nil, false
	}
	return impl, c, tail, true
}

func (p *Provider) start(ctx context.Context) (sdk.Provider, *plugin.Client, *stderrTail, error) {
	sum, _ := hex.DecodeString(p.cfg.SHA256) // checked by Parse
	tail := &stderrTail{}
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake,
		Plugins:          sdk.PluginSet(),
		Cmd:              exec.Command(p.cfg.Path),
		SecureConfig:     &plugin.SecureConfig{Checksum: sum, Hash: sha256.New()},
		AutoMTLS:         true,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		StartTimeout:     p.opts.StartTimeout,
		Logger:           newHCLogger(ctx, p.log),
		Stderr:           tail,
	})
	impl, info, err := p.handshake(ctx, client)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.starts++
	if err != nil {
		client.Kill()
		p.failLocked(err.Error())
		p.log.Error("provider plugin did not start", "error", err, "retry_after", p.retryAt.Sub(p.opts.Now()).Round(time.Millisecond))
		return nil, nil, nil, fmt.Errorf("%w: provider %s: %s", ErrUnavailable, p.cfg.Name, err)
	}
	p.client, p.impl, p.stderr, p.info, p.health = client, impl, tail, info, HealthHealthy
	p.log.Info("provider plugin started", "plugin", info.Name, "version", info.Version, "path", p.cfg.Path, "starts", p.starts)
	return impl, client, tail, nil
}

// handshake starts the process and configures the plugin.
func (p *Provider) handshake(ctx context.Context, client *plugin.Client) (sdk.Provider, sdk.Info, error) {
	rpc, err := client.Client()
	if err != nil {
		if errors.Is(err, plugin.ErrChecksumsDoNotMatch) {
			return nil, sdk.Info{}, fmt.Errorf("plugin binary %s changed since the providers file was read: its sha256 is no longer %s; put the new one in the file and restart the controller", p.cfg.Path, p.cfg.SHA256)
		}
		return nil, sdk.Info{}, fmt.Errorf("start plugin %s: %w", p.cfg.Path, err)
	}
	raw, err := rpc.Dispense(sdk.PluginName)
	if err != nil {
		return nil, sdk.Info{}, fmt.Errorf("plugin %s: %w", p.cfg.Path, err)
	}
	impl, ok := raw.(sdk.Provider)
	if !ok {
		return nil, sdk.Info{}, fmt.Errorf("plugin %s does not serve a budfleet provider", p.cfg.Path)
	}
	ctx, cancel := context.WithTimeout(ctx, p.opts.StartTimeout)
	defer cancel()
	info, err := impl.Info(ctx)
	if err != nil {
		return nil, sdk.Info{}, fmt.Errorf("plugin %s: Info: %w", p.cfg.Path, err)
	}
	conf, err := p.cfg.configJSON()
	if err != nil {
		return nil, sdk.Info{}, err
	}
	if err := impl.ValidateConfig(ctx, conf); err != nil {
		return nil, sdk.Info{}, fmt.Errorf("the config of provider %s in the providers file: %w", p.cfg.Name, err)
	}
	return impl, info, nil
}

func (p *Provider) stop() {
	p.mu.Lock()
	c := p.client
	p.client, p.impl = nil, nil
	p.mu.Unlock()
	if c != nil {
		c.Kill()
	}
}

// stderrTail watches the plugin's stderr for a panic or fatal error, so
// that a crash is reported with its message.
type stderrTail struct {
	mu    sync.Mutex
	panic string
}

func (s *stderrTail) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.panic != "" {
		return len(b), nil
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if strings.HasPrefix(line, "panic: ") || strings.HasPrefix(line, "fatal error: ") {
			s.panic = line
			break
		}
	}
	return len(b), nil
}

// reason is ": panic: ..." when the plugin panicked, else empty.
func (s *stderrTail) reason() string {
	if s == nil {
		return ""
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.panic != "" {
		return ": " + s.panic
	}
	return ""
}
