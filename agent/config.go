package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/bud-ecosystem/budfleet/agent/kubelet"

	"github.com/bud-ecosystem/budfleet/siem"
)

// Config is the agent's --config file. Unknown keys are errors; flags
// override it.
type Config struct {
	// Controller and ServerName override what was stored at enrollment,
	// e.g. after the controller moved.
	Controller string `yaml:"controller"`
	ServerName string `yaml:"server_name"`
	// Hostname overrides the reported hostname.
	Hostname  string          `yaml:"hostname"`
	Reconnect ReconnectConfig `yaml:"reconnect"`
	// InventoryInterval is how often the inventory is checked for changes.
	InventoryInterval time.Duration `yaml:"inventory_interval"`
	LogLevel          string        `yaml:"log_level"`
	GPU               GPUConfig     `yaml:"gpu"`
	// SIEM is the local audit-forwarding configuration; one pushed by the
	// controller replaces it while the agent runs.
	SIEM siem.Config `yaml:"siem"`
	// SIEMAllow is the node owner's allowlist for SIEM configurations the
	// controller pushes (siem.Allowlist): source prefixes, destinations,
	// schemes. The agent's state directory is refused whatever it says.
	SIEMAllow siem.Allowlist `yaml:"siem_allow"`
	// Maintenance configures the maintenance commands.
	Maintenance MaintenanceConfig `yaml:"maintenance"`
	// Kubelet configures kubelet.join.
	Kubelet KubeletConfig `yaml:"kubelet"`
	// Upgrade configures agent.upgrade.
	Upgrade UpgradeConfig `yaml:"upgrade"`
	// BootIDFile overrides where the boot id is read
	// (/proc/sys/kernel/random/boot_id): for tests and simulations that
	// stand in for a reboot by restarting the agent.
	BootIDFile string `yaml:"boot_id_file"`
}

// MaintenanceConfig configures maintenance.task and maintenance.reboot.
type MaintenanceConfig struct {
	// RebootCommand is the program and arguments maintenance.reboot runs
	// (default [systemctl, reboot]).
	RebootCommand []string `yaml:"reboot_command"`
}

// KubeletConfig configures kubelet.join (agent/kubelet).
type KubeletConfig struct {
	// Root is where the join writes everything (default /): kubeadm's
	// paths beneath it.
	Root string `yaml:"root"`
	// NodeIP is the kubelet's --node-ip (default: the kubelet chooses).
	NodeIP string `yaml:"node_ip"`
	// Supervise is systemd or agent: how containerd and the kubelet run
	// (default: systemd when PID 1 is systemd, else the agent).
	Supervise string `yaml:"supervise"`
	// NVIDIARuntime is the NVIDIA container runtime on GPU nodes (default
	// /usr/bin/nvidia-container-runtime).
	NVIDIARuntime string `yaml:"nvidia_runtime"`
	// Configuration holds KubeletConfiguration fields (their YAML names:
	// evictionHard, maxPods, ...) laid over the ones a join writes.
	Configuration map[string]any `yaml:"configuration"`
}

// UpgradeConfig configures agent.upgrade.
type UpgradeConfig struct {
	// RestartCommand restarts the agent into its new binary (default
	// [systemctl, --no-block, restart, bud-agent.service]); it runs detached, with
	// BUD_AGENT_PID set.
	RestartCommand []string `yaml:"restart_command"`
	// WatchPrefix starts the rollback watch outside the agent's service
	// (default: systemd-run when systemd is PID 1; [] for none).
	WatchPrefix []string `yaml:"watch_prefix"`
}

// GPUConfig configures GPU inventory and health.
type GPUConfig struct {
	// Backend is nvml (default), none, or mock:dgxa100|dgxh100|dgxh200.
	Backend string `yaml:"backend"`
	// HealthInterval is how often health is sampled (default 30s).
	HealthInterval time.Duration `yaml:"health_interval"`
	// IgnoredXIDs replaces the default list of XIDs that do not mark a GPU
	// unhealthy (application faults: 13, 31, 43, 45, 68, 109).
	IgnoredXIDs []uint64 `yaml:"ignored_xids"`
	// MockEventsPath is a file of JSON lines the mock backends read faults
	// from, for demos and tests.
	MockEventsPath string `yaml:"mock_events_path"`
}

// ReconnectConfig bounds the reconnect backoff.
type ReconnectConfig struct {
	Initial time.Duration `yaml:"initial"`
	Max     time.Duration `yaml:"max"`
}

// LoadConfig reads a config file; an empty path gives the defaults.
func LoadConfig(path string) (Config, error) {
	var c Config
	if path == "" {
		return c, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("read agent config: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return c, fmt.Errorf("agent config %s: %w", path, err)
	}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("agent config %s: %w", path, err)
	}
	return c, nil
}

// Validate checks value ranges.
func (c Config) Validate() error {
	if c.Reconnect.Initial < 0 || c.Reconnect.Max < 0 || c.InventoryInterval < 0 {
		return errors.New("durations must not be negative")
	}
	if c.Reconnect.Initial > 0 && c.Reconnect.Max > 0 && c.Reconnect.Initial > c.Reconnect.Max {
		return fmt.Errorf("reconnect.initial (%s) is longer than reconnect.max (%s)", c.Reconnect.Initial, c.Reconnect.Max)
	}
	if c.GPU.HealthInterval < 0 || (c.GPU.HealthInterval > 0 && c.GPU.HealthInterval < 100*time.Millisecond) {
		return fmt.Errorf("gpu.health_interval %s is under 100ms", c.GPU.HealthInterval)
	}
	if len(c.SIEM.Sources) > 0 || len(c.SIEM.Outputs) > 0 {
		if err := c.SIEM.Validate(); err != nil {
			return err
		}
	}
	if err := c.SIEMAllow.Validate(); err != nil {
		return err
	}
	if rc := c.Maintenance.RebootCommand; rc != nil && (len(rc) == 0 || rc[0] == "") {
		return errors.New("maintenance.reboot_command must name a program, e.g. [systemctl, reboot]")
	}
	if r := c.Kubelet.Root; r != "" && !filepath.IsAbs(r) {
		return fmt.Errorf("kubelet.root %q must be an absolute path", r)
	}
	if ip := c.Kubelet.NodeIP; ip != "" && net.ParseIP(ip) == nil {
		return fmt.Errorf("kubelet.node_ip %q is not an IP address", ip)
	}
	if _, err := kubelet.ConfigurationPatch(c.Kubelet.Configuration); err != nil {
		return fmt.Errorf("kubelet.configuration: %w", err)
	}
	switch c.Kubelet.Supervise {
	case "", "systemd", "agent":
	default:
		return fmt.Errorf("kubelet.supervise %q: want systemd or agent (or leave it out)", c.Kubelet.Supervise)
	}
	if c.InventoryInterval > 0 && c.InventoryInterval < time.Second {
		return fmt.Errorf("inventory_interval %s is under a second", c.InventoryInterval)
	}
	return nil
}
