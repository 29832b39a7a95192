// Package baremetal is the bare-metal provider (bud-provider-baremetal):
// the machines are the hosts of the operator's Ansible inventory, creating
// one enrolls that existing host over SSH, and power goes through its BMC
// over IPMI.
//
// Config (the providers file's config block):
//
//	inventory: /etc/budfleet/hosts.yml         # Ansible YAML inventory, re-read on every call
//	known_hosts: /etc/budfleet/known_hosts     # pins every host's SSH key
//	ssh_key_file: /etc/budfleet/id_ed25519     # or SSH_AUTH_SOCK in the controller's environment
//	ipmi_credentials_file: /etc/budfleet/ipmi.yml   # optional (bmc.Credentials)
//	agent_package: /usr/lib/budfleet/bud-agent # the agent binary uploaded to each host
//
// Host vars the provider reads besides Ansible's connection vars
// (ansible_host, ansible_port, ansible_user, ansible_become,
// ansible_ssh_private_key_file): ipmi_address, ipmi_port, ipmi_username,
// ipmi_password (better kept in ipmi_credentials_file), and
// budfleet_install_root (a directory the agent's files go under; tests
// use it to run several "hosts" on one machine).
//
// CreateMachine enrolls, in this order: the host named by the spec option
// host, the host named by the machine's name, else the first host (by
// name, of the spec option group when given) that is not enrolled yet
// (each looked at for at most 5 s; hosts this process saw enrolled are not
// looked at again). Only ansible_connection ssh (the default) is served.
// ListMachines reads only the inventory: it opens no SSH or IPMI session,
// because the controller may list often and BMCs freeze under bursts.
// GetMachine and Power ask the BMC.
package baremetal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bud-ecosystem/budfleet/plugins/baremetal/bmc"
	"github.com/bud-ecosystem/budfleet/plugins/baremetal/inventory"
	"github.com/bud-ecosystem/budfleet/plugins/baremetal/sshenroll"
	"github.com/bud-ecosystem/budfleet/plugins/sdk"
	"github.com/bud-ecosystem/budfleet/version"
)

// Name is the plugin's name in Info.
const Name = "baremetal"

// ErrAlreadyEnrolled: CreateMachine named a host that is enrolled already.
var ErrAlreadyEnrolled = errors.New("host already enrolled")

// Config is the provider's config block.
type Config struct {
	Inventory           string `json:"inventory"`
	KnownHosts          string `json:"known_hosts"`
	SSHKeyFile          string `json:"ssh_key_file"`
	IPMICredentialsFile string `json:"ipmi_credentials_file"`
	AgentPackage        string `json:"agent_package"`
}

// Spec is the provider-specific part of a machine spec.
type Spec struct {
	// Host is the inventory host to enroll.
	Host string `json:"host"`
	// Group limits the pick of a free host to this inventory group.
	Group string `json:"group"`
}

// Options configure New (tests shorten the BMC's timeouts).
type Options struct {
	Log  *slog.Logger
	IPMI bmc.IPMIOptions
	// AgentSocket is the ssh-agent to use; New takes SSH_AUTH_SOCK when
	// it is empty.
	AgentSocket string
}

// Provider implements sdk.Provider.
type Provider struct {
	opts Options

	mu       sync.Mutex
	cfg      Config
	enroller *sshenroll.Enroller
	creds    *bmc.Credentials
	// inflight are the hosts a CreateMachine or DeleteMachine is working
	// on, so two concurrent creates never pick the same free host.
	inflight map[string]bool
	// enrolled are the hosts this process saw enrolled, so picking a free
	// host does not log in to them again and again (a --count over a big
	// inventory would otherwise probe every enrolled host for each
	// machine). DeleteMachine forgets a host.
	enrolled map[string]bool
}

var _ sdk.Provider = (*Provider)(nil)

// New returns an unconfigured provider; ValidateConfig configures it.
func New(opts Options) *Provider {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.AgentSocket == "" {
		opts.AgentSocket = os.Getenv("SSH_AUTH_SOCK")
	}
	return &Provider{opts: opts, inflight: map[string]bool{}, enrolled: map[string]bool{}}
}

// Info implements sdk.Provider.
func (p *Provider) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: Name, Version: version.Version}, nil
}

// ValidateConfig implements sdk.Provider: it reads every file the config
// names, so a wrong path or a broken inventory is refused now, with the
// key to change.
func (p *Provider) ValidateConfig(_ context.Context, raw json.RawMessage) error {
	var cfg Config
	if err := sdk.DecodeStrict(raw, &cfg); err != nil {
		return fmt.Errorf("%w (the keys are inventory, known_hosts, ssh_key_file, ipmi_credentials_file, agent_package)", err)
	}
	for _, f := range []struct{ key, val string }{
		{"inventory", cfg.Inventory}, {"known_hosts", cfg.KnownHosts}, {"agent_package", cfg.AgentPackage},
		{"ssh_key_file", cfg.SSHKeyFile}, {"ipmi_credentials_file", cfg.IPMICredentialsFile},
	} {
		required := f.key == "inventory" || f.key == "known_hosts" || f.key == "agent_package"
		if f.val == "" && required {
			return fmt.Errorf("%w: config key %s is required", sdk.ErrInvalid, f.key)
		}
		if f.val != "" && !filepath.IsAbs(f.val) {
			return fmt.Errorf("%w: config key %s: %q must be an absolute path (the plugin runs in the controller's working directory)", sdk.ErrInvalid, f.key, f.val)
		}
	}
	if _, err := inventory.Load(cfg.Inventory); err != nil {
		return fmt.Errorf("%w: inventory: %v", sdk.ErrInvalid, err)
	}
	e, err := sshenroll.New(sshenroll.Options{
		KnownHostsFile: cfg.KnownHosts,
		KeyFile:        cfg.SSHKeyFile,
		AgentSocket:    p.opts.AgentSocket,
		AgentBinary:    cfg.AgentPackage,
		Log:            p.opts.Log,
	})
	if err != nil {
		return fmt.Errorf("%w: %v", sdk.ErrInvalid, err)
	}
	var creds *bmc.Credentials
	if cfg.IPMICredentialsFile != "" {
		if creds, err = bmc.LoadCredentials(cfg.IPMICredentialsFile); err != nil {
			return fmt.Errorf("%w: %v", sdk.ErrInvalid, err)
		}
	}
	p.mu.Lock()
	p.cfg, p.enroller, p.creds = cfg, e, creds
	p.mu.Unlock()
	return nil
}

func (p *Provider) state() (Config, *sshenroll.Enroller, *bmc.Credentials, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.enroller == nil {
		return Config{}, nil, nil, errors.New("the provider has no config yet (ValidateConfig was not called)")
	}
	return p.cfg, p.enroller, p.creds, nil
}

// hosts reads the inventory again: operators edit it while the controller
// runs, and a host added there should be a machine without a restart.
func (p *Provider) hosts() (*inventory.Inventory, error) {
	cfg, _, _, err := p.state()
	if err != nil {
		return nil, err
	}
	inv, err := inventory.Load(cfg.Inventory)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", sdk.ErrInvalid, err)
	}
	return inv, nil
}

func machineOf(h inventory.Host) sdk.Machine {
	return sdk.Machine{
		ProviderID: h.Name,
		Name:       h.Name,
		Addresses:  []string{h.Address},
		Labels:     h.Labels(),
	}
}

// ListMachines implements sdk.Provider: the inventory's hosts, power
// unknown (see the package documentation).
func (p *Provider) ListMachines(context.Context) ([]sdk.Machine, error) {
	inv, err := p.hosts()
	if err != nil {
		return nil, err
	}
	out := make([]sdk.Machine, 0, len(inv.Hosts))
	for _, h := range inv.Hosts {
		out = append(out, machineOf(h))
	}
	return out, nil
}

func (p *Provider) host(providerID string) (inventory.Host, error) {
	inv, err := p.hosts()
	if err != nil {
		return inventory.Host{}, err
	}
	h, ok := inv.Host(providerID)
	if !ok {
		return inventory.Host{}, fmt.Errorf("%w: no host %q in the inventory %s", sdk.ErrNotFound, providerID, inv.File)
	}
	return h, nil
}

// GetMachine implements sdk.Provider. A BMC that does not answer leaves
// the power unknown (the rest of the machine is still known); the reason
// is logged.
func (p *Provider) GetMachine(ctx context.Context, providerID string) (sdk.Machine, error) {
	h, err := p.host(providerID)
	if err != nil {
		return sdk.Machine{}, err
	}
	m := machineOf(h)
	b, err := p.bmcOf(h)
	if err != nil || b == nil {
		if err != nil {
			p.opts.Log.WarnContext(ctx, "host's BMC settings are wrong", "host", h.Name, "error", err)
		}
		return m, nil
	}
	on, err := b.PowerOn(ctx)
	if err != nil {
		p.opts.Log.WarnContext(ctx, "power state unknown", "host", h.Name, "error", err)
		return m, nil
	}
	m.Power = powerState(on)
	return m, nil
}

func powerState(on bool) sdk.PowerState {
	if on {
		return sdk.PowerOn
	}
	return sdk.PowerOff
}

// Power implements sdk.Provider. pxe sets a one-time network boot, then
// powers the host on, or resets it when it is on.
func (p *Provider) Power(ctx context.Context, providerID string, action sdk.PowerAction) (sdk.Machine, error) {
	h, err := p.host(providerID)
	if err != nil {
		return sdk.Machine{}, err
	}
	b, err := p.bmcOf(h)
	if err != nil {
		return sdk.Machine{}, fmt.Errorf("%w: host %s: %v", sdk.ErrInvalid, h.Name, err)
	}
	if b == nil {
		return sdk.Machine{}, fmt.Errorf("%w: host %s has no BMC: set ipmi_address in its host vars or its entry in ipmi_credentials_file", sdk.ErrUnsupported, h.Name)
	}
	switch action {
	case sdk.PowerActionOn:
		err = b.SetPower(ctx, bmc.On)
	case sdk.PowerActionOff:
		err = b.SetPower(ctx, bmc.Off)
	case sdk.PowerActionReset:
		err = b.SetPower(ctx, bmc.Reset)
	case sdk.PowerActionPXE:
		if err = b.BootPXE(ctx); err == nil {
			var on bool
			if on, err = b.PowerOn(ctx); err == nil {
				if on {
					err = b.SetPower(ctx, bmc.Reset)
				} else {
					err = b.SetPower(ctx, bmc.On)
				}
			}
		}
	default:
		_, err := sdk.ParsePowerAction(string(action))
		return sdk.Machine{}, err
	}
	if err != nil {
		return sdk.Machine{}, fmt.Errorf("host %s: power %s: %w", h.Name, action, err)
	}
	p.opts.Log.InfoContext(ctx, "power", "host", h.Name, "action", string(action), "bmc", b.String())
	m := machineOf(h)
	if on, err := b.PowerOn(ctx); err == nil {
		m.Power = powerState(on)
	} else {
		p.opts.Log.WarnContext(ctx, "power state unknown after the action", "host", h.Name, "error", err)
	}
	return m, nil
}

// bmcOf returns the host's BMC, nil when it has none.
func (p *Provider) bmcOf(h inventory.Host) (bmc.Controller, error) {
	_, _, creds, err := p.state()
	if err != nil {
		return nil, err
	}
	var ep bmc.Endpoint
	for _, v := range []struct {
		dst  *string
		keys []string
	}{
		{&ep.Address, []string{"ipmi_address", "ipmi_host", "bmc_address"}},
		{&ep.Username, []string{"ipmi_username", "ipmi_user"}},
		{&ep.Password, []string{"ipmi_password"}},
	} {
		for _, k := range v.keys {
			switch val := h.Vars[k].(type) {
			case nil:
				continue
			case inventory.Vault:
				return nil, fmt.Errorf("%s is encrypted with ansible-vault, which the provider cannot read: put it in ipmi_credentials_file", k)
			case string:
				*v.dst = val
			default:
				*v.dst = fmt.Sprint(val)
			}
			break
		}
	}
	if v, ok := h.Vars["ipmi_port"]; ok {
		port, err := strconv.Atoi(fmt.Sprint(v))
		if err != nil || port < 1 || port > 65535 {
			return nil, fmt.Errorf("ipmi_port %v is not a port", v)
		}
		ep.Port = port
	}
	ep = creds.Endpoint(h.Name, ep)
	if ep.Address == "" {
		return nil, nil
	}
	return bmc.NewIPMI(ep, p.opts.IPMI)
}

// target is how the enroller reaches h.
func target(h inventory.Host) (sshenroll.Target, error) {
	t := sshenroll.Target{Name: h.Name, Address: h.Address, Port: h.Port, User: h.User}
	switch c, _ := h.Vars["ansible_connection"].(string); c {
	case "", "ssh", "smart", "paramiko":
	default:
		return t, fmt.Errorf("%w: host %s: ansible_connection %s: the provider reaches hosts over SSH only", sdk.ErrUnsupported, h.Name, c)
	}
	switch v := h.Vars["ansible_become"].(type) {
	case nil:
	case bool:
		t.Become = v
	case string:
		t.Become = v == "true" || v == "yes" || v == "True" || v == "1"
	}
	if t.Become {
		if m, ok := h.Vars["ansible_become_method"].(string); ok && m != "sudo" {
			return t, fmt.Errorf("%w: host %s: ansible_become_method %s: the provider becomes root with sudo only", sdk.ErrUnsupported, h.Name, m)
		}
	}
	if v, ok := h.Vars["budfleet_install_root"].(string); ok {
		if !filepath.IsAbs(v) {
			return t, fmt.Errorf("%w: host %s: budfleet_install_root %q must be an absolute path", sdk.ErrInvalid, h.Name, v)
		}
		t.InstallRoot = v
	}
	if v, ok := h.Vars["ansible_ssh_private_key_file"].(string); ok {
		t.KeyFile = v
	}
	return t, nil
}

// CreateMachine implements sdk.Provider: it enrolls a host of the
// inventory (see the package documentation for which) with boot's
// single-use token.
func (p *Provider) CreateMachine(ctx context.Context, spec sdk.MachineSpec, boot sdk.Bootstrap) (sdk.Machine, error) {
	var s Spec
	if err := sdk.DecodeStrict(spec.Options, &s); err != nil {
		return sdk.Machine{}, fmt.Errorf("%w (the bare-metal spec keys are host and group)", err)
	}
	if err := boot.Validate(); err != nil {
		return sdk.Machine{}, err
	}
	agentPath := ""
	if boot.AgentPackage != "" {
		if !filepath.IsAbs(boot.AgentPackage) {
			return sdk.Machine{}, fmt.Errorf("%w: agent package %q: the bare-metal provider uploads agent_package itself or installs a path already on the host; URLs are not fetched", sdk.ErrUnsupported, boot.AgentPackage)
		}
		agentPath = boot.AgentPackage
	}
	_, e, _, err := p.state()
	if err != nil {
		return sdk.Machine{}, err
	}
	inv, err := p.hosts()
	if err != nil {
		return sdk.Machine{}, err
	}
	h, release, err := p.pick(ctx, e, inv, spec.Name, s)
	if err != nil {
		return sdk.Machine{}, err
	}
	defer release()
	t, err := target(h)
	if err != nil {
		return sdk.Machine{}, err
	}
	res, err := e.Enroll(ctx, t, sshenroll.Bootstrap{Controller: boot.ControllerAddress, Token: boot.JoinToken, AgentPath: agentPath})
	if err != nil {
		return sdk.Machine{}, err
	}
	if res.Already {
		p.mu.Lock()
		p.enrolled[h.Name] = true
		p.mu.Unlock()
		// Success would leave the controller a second record for the host
		// whose token no agent ever uses; the SDK cannot say "this is the
		// machine you already have", so it is an error that changes
		// nothing (the agent was at most started again).
		node := res.NodeID
		if node == "" {
			node = "unknown"
		}
		return sdk.Machine{}, fmt.Errorf("%w: host %s is already enrolled (node %s) and was left alone: its machine is the one budctl machines list shows, or delete that machine first to enroll the host again", ErrAlreadyEnrolled, h.Name, node)
	}
	p.mu.Lock()
	p.enrolled[h.Name] = true
	p.mu.Unlock()
	p.opts.Log.InfoContext(ctx, "host enrolled", "host", h.Name, "node_id", res.NodeID, "already", res.Already)
	return machineOf(h), nil
}

// pick chooses the host to enroll and marks it in flight; release unmarks
// it.
func (p *Provider) pick(ctx context.Context, e *sshenroll.Enroller, inv *inventory.Inventory, name string, s Spec) (inventory.Host, func(), error) {
	claim := func(h inventory.Host) (inventory.Host, func(), error) {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.inflight[h.Name] {
			return inventory.Host{}, nil, fmt.Errorf("host %s is being enrolled or removed by another call: try again when it ends", h.Name)
		}
		p.inflight[h.Name] = true
		return h, func() { p.mu.Lock(); delete(p.inflight, h.Name); p.mu.Unlock() }, nil
	}
	if s.Host != "" {
		h, ok := inv.Host(s.Host)
		if !ok {
			return inventory.Host{}, nil, fmt.Errorf("%w: spec host %q is not in the inventory %s", sdk.ErrInvalid, s.Host, inv.File)
		}
		return claim(h)
	}
	if h, ok := inv.Host(name); ok {
		return claim(h)
	}
	var skipped []string
	for _, h := range inv.Hosts {
		if s.Group != "" && !contains(h.Groups, s.Group) {
			continue
		}
		p.mu.Lock()
		busy := p.inflight[h.Name] || p.enrolled[h.Name]
		p.mu.Unlock()
		if busy {
			continue
		}
		t, err := target(h)
		if err != nil {
			skipped = append(skipped, err.Error())
			continue
		}
		// A host that is down must not hold the pick up for the whole
		// dial timeout of every host after it.
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		enrolled, _, _, err := e.Status(pctx, t)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return inventory.Host{}, nil, ctx.Err()
			}
			p.opts.Log.WarnContext(ctx, "host skipped: cannot read its enrollment", "host", h.Name, "error", err)
			skipped = append(skipped, err.Error())
			continue
		}
		if enrolled {
			p.mu.Lock()
			p.enrolled[h.Name] = true
			p.mu.Unlock()
			continue
		}
		if h, release, err := claim(h); err == nil {
			return h, release, nil
		}
	}
	what := "in the inventory"
	if s.Group != "" {
		what = "in group " + s.Group
	}
	msg := fmt.Sprintf("no host %s is free to enroll (none named %q, every other one enrolled or unreachable): add hosts to the inventory %s, or name one with --name", what, name, inv.File)
	if len(skipped) > 0 {
		sort.Strings(skipped)
		if len(skipped) > 3 {
			skipped = append(skipped[:3], fmt.Sprintf("and %d more", len(skipped)-3))
		}
		msg += "; skipped: " + strings.Join(skipped, "; ")
	}
	return inventory.Host{}, nil, errors.New(msg)
}

// probeTimeout bounds the look at one host while picking a free one.
const probeTimeout = 5 * time.Second

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// DeleteMachine implements sdk.Provider: it stops the agent and takes it
// off the host. A host gone from the inventory is gone for the provider
// too, so that is not an error.
func (p *Provider) DeleteMachine(ctx context.Context, providerID string) error {
	h, err := p.host(providerID)
	if errors.Is(err, sdk.ErrNotFound) {
		p.opts.Log.WarnContext(ctx, "delete of a host no longer in the inventory: nothing to do", "host", providerID)
		return nil
	}
	if err != nil {
		return err
	}
	_, e, _, err := p.state()
	if err != nil {
		return err
	}
	t, err := target(h)
	if err != nil {
		return err
	}
	p.mu.Lock()
	if p.inflight[h.Name] {
		p.mu.Unlock()
		return fmt.Errorf("host %s is being enrolled by another call: delete it when that ends", h.Name)
	}
	p.inflight[h.Name] = true
	p.mu.Unlock()
	defer func() { p.mu.Lock(); delete(p.inflight, h.Name); p.mu.Unlock() }()
	if err := e.Remove(ctx, t); err != nil {
		return err
	}
	p.mu.Lock()
	delete(p.enrolled, h.Name)
	p.mu.Unlock()
	return nil
}
