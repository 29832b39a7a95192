// Package providertest is a provider plugin for tests: machines live in
// its memory, and its config makes it fail, hang or panic on chosen calls,
// so that hosts can be tested against a real plugin process that
// misbehaves. bud-provider-test (below) serves it.
//
// Config (all optional):
//
//	panic_on: [ListMachines]          # calls that panic the plugin process
//	hang_on: [GetMachine]             # calls that never return (logging
//	                                  # "providertest: hanging" first)
//	fail_on: {CreateMachine: "quota exceeded"}   # calls that fail so
//	fail_config: "url is required"    # ValidateConfig fails with this
//	bootstrap_dir: /tmp/boot          # CreateMachine writes NAME.json there
//	labels: {rack: r1}                # labels of every machine made
//
// A machine spec may hold cpus (ignored) and panic: true (CreateMachine
// panics).
package providertest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"

	"github.com/bud-ecosystem/budfleet/plugins/sdk"
)

// Config is the plugin's config.
type Config struct {
	PanicOn      []string          `json:"panic_on"`
	HangOn       []string          `json:"hang_on"`
	FailOn       map[string]string `json:"fail_on"`
	FailConfig   string            `json:"fail_config"`
	BootstrapDir string            `json:"bootstrap_dir"`
	Labels       map[string]string `json:"labels"`
}

// Options is a machine spec's options.
type Options struct {
	CPUs int `json:"cpus"`
	// Panic panics the plugin process in this CreateMachine, so that one
	// call can crash it and the next one find it restarted.
	Panic bool `json:"panic"`
}

// Provider is the in-memory provider.
type Provider struct {
	mu       sync.Mutex
	cfg      Config
	next     int
	machines map[string]sdk.Machine
	// log is made before sdk.Serve, which swaps os.Stderr for a pipe
	// the host discards.
	log *slog.Logger
}

// New returns an empty provider.
func New() *Provider { return &Provider{machines: map[string]sdk.Machine{}, log: sdk.Logger()} }

// Version is what Info reports.
const Version = "0.0.1-test"

// misbehave fails, hangs or panics when the config says so for call.
func (p *Provider) misbehave(call string) error {
	p.mu.Lock()
	cfg := p.cfg
	p.mu.Unlock()
	if slices.Contains(cfg.PanicOn, call) {
		panic("providertest: panic_on " + call)
	}
	if slices.Contains(cfg.HangOn, call) {
		// The line reaches the host's log, so that a test can wait for
		// the call to be in flight before it asserts what goes on meanwhile.
		p.log.Info("providertest: hanging", "call", call)
		select {} // a plugin that ignores its context, too
	}
	if msg, ok := cfg.FailOn[call]; ok {
		return errors.New(msg)
	}
	return nil
}

func (p *Provider) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: "test", Version: Version}, nil
}

func (p *Provider) ValidateConfig(_ context.Context, raw json.RawMessage) error {
	var cfg Config
	if err := sdk.DecodeStrict(raw, &cfg); err != nil {
		return fmt.Errorf("providertest config: %w", err)
	}
	if cfg.FailConfig != "" {
		return fmt.Errorf("%w: %s", sdk.ErrInvalid, cfg.FailConfig)
	}
	p.mu.Lock()
	p.cfg = cfg
	p.mu.Unlock()
	return p.misbehave("ValidateConfig")
}

func (p *Provider) ListMachines(context.Context) ([]sdk.Machine, error) {
	if err := p.misbehave("ListMachines"); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]sdk.Machine, 0, len(p.machines))
	for _, m := range p.machines {
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ProviderID < out[j].ProviderID })
	return out, nil
}

func (p *Provider) CreateMachine(_ context.Context, spec sdk.MachineSpec, boot sdk.Bootstrap) (sdk.Machine, error) {
	if err := p.misbehave("CreateMachine"); err != nil {
		return sdk.Machine{}, err
	}
	var opts Options
	if err := sdk.DecodeStrict(spec.Options, &opts); err != nil {
		return sdk.Machine{}, fmt.Errorf("machine spec: %w", err)
	}
	if opts.Panic {
		panic("providertest: the spec asked for a panic")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cfg.BootstrapDir != "" {
		b, err := json.Marshal(boot)
		if err != nil {
			return sdk.Machine{}, err
		}
		if err := os.WriteFile(filepath.Join(p.cfg.BootstrapDir, spec.Name+".json"), b, 0o600); err != nil {
			return sdk.Machine{}, fmt.Errorf("write the bootstrap: %w", err)
		}
	}
	p.next++
	m := sdk.Machine{
		ProviderID: fmt.Sprintf("m-%d", p.next),
		Name:       spec.Name,
		Addresses:  []string{fmt.Sprintf("192.0.2.%d", p.next)},
		Power:      sdk.PowerOn,
		Labels:     p.cfg.Labels,
	}
	p.machines[m.ProviderID] = m
	return m, nil
}

func (p *Provider) get(id string) (sdk.Machine, error) {
	m, ok := p.machines[id]
	if !ok {
		return sdk.Machine{}, fmt.Errorf("%w: no machine %s", sdk.ErrNotFound, id)
	}
	return m, nil
}

func (p *Provider) GetMachine(_ context.Context, id string) (sdk.Machine, error) {
	if err := p.misbehave("GetMachine"); err != nil {
		return sdk.Machine{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.get(id)
}

func (p *Provider) DeleteMachine(_ context.Context, id string) error {
	if err := p.misbehave("DeleteMachine"); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.machines, id)
	return nil
}

func (p *Provider) Power(_ context.Context, id string, action sdk.PowerAction) (sdk.Machine, error) {
	if err := p.misbehave("Power"); err != nil {
		return sdk.Machine{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	m, err := p.get(id)
	if err != nil {
		return m, err
	}
	switch action {
	case sdk.PowerActionOff:
		m.Power = sdk.PowerOff
	case sdk.PowerActionPXE:
		return m, fmt.Errorf("%w: the test provider has no network boot", sdk.ErrUnsupported)
	default:
		m.Power = sdk.PowerOn
	}
	p.machines[id] = m
	return m, nil
}
