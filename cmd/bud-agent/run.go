package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/bud-ecosystem/budfleet/agent"
	"github.com/bud-ecosystem/budfleet/agent/gpu"
	"github.com/bud-ecosystem/budfleet/agent/inventory"
	"github.com/bud-ecosystem/budfleet/agent/kubelet"
	"github.com/bud-ecosystem/budfleet/agent/state"
	"github.com/bud-ecosystem/budfleet/internal/cli"
	"github.com/bud-ecosystem/budfleet/siem/forward"
	"github.com/bud-ecosystem/budfleet/version"
)

// runFlags are the flags of the run command.
type runFlags struct {
	configPath string
	controller string
	hostname   string
	gpuBackend string
	// logLevelSet: --log-level was given, so it wins over the config's.
	logLevelSet bool
}

// runCmd runs the agent daemon.
func (a *app) runCmd() *cobra.Command {
	var rf runFlags
	run := &cobra.Command{
		Use:   "run",
		Short: "Run the agent daemon",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rf.logLevelSet = cmd.Flags().Changed("log-level")
			return a.run(cmd.Context(), rf)
		},
	}
	f := run.Flags()
	f.StringVar(&rf.configPath, "config", "", "agent config file (YAML)")
	f.StringVar(&rf.controller, "controller", "", "controller address, overriding the one stored at enrollment")
	f.StringVar(&rf.hostname, "hostname", "", "hostname to report (default: this host's)")
	f.StringVar(&rf.gpuBackend, "gpu-backend", "", "GPU backend: "+strings.Join(gpu.Backends(), ", ")+" (default nvml, or the config's gpu.backend)")
	return run
}

// run runs the agent until ctx ends.
func (a *app) run(ctx context.Context, rf runFlags) error {
	cfg, err := agent.LoadConfig(rf.configPath)
	if err != nil {
		return err
	}
	logLevel := a.logLevel
	if cfg.LogLevel != "" && !rf.logLevelSet {
		logLevel = cfg.LogLevel
	}
	log, err := cli.NewLogger(os.Stderr, a.logFormat, logLevel)
	if err != nil {
		return err
	}
	if rf.controller != "" {
		cfg.Controller = rf.controller
	}
	if rf.hostname != "" {
		cfg.Hostname = rf.hostname
	}
	if rf.gpuBackend != "" {
		cfg.GPU.Backend = rf.gpuBackend
	}
	db, err := state.Open(a.stateDir, time.Second)
	if err != nil {
		return err
	}
	defer db.Close()
	if cfg.Hostname == "" {
		// Keep the name the node joined as (join --hostname).
		if id, err := db.Identity(); err == nil {
			cfg.Hostname = id.Hostname
		}
	}
	gpus, err := openGPUs(cfg.GPU, cfg.Hostname, log)
	if err != nil {
		return err
	}
	defer gpus.Close()
	fwd, err := forward.New(forward.Options{
		SpoolPath:     filepath.Join(a.stateDir, "siem-spool.db"),
		SpoolLockHint: "is another bud-agent running with the same --state-dir?",
		Logger:        log,
		Hostname:      cfg.Hostname,
		AppName:       "bud-agent",
	})
	if err != nil {
		return err
	}
	defer fwd.Close()
	// kubelet.join's artifact source is the agent's fetcher, which
	// agent.New makes over the session's connection.
	tune, err := kubelet.ConfigurationPatch(cfg.Kubelet.Configuration)
	if err != nil {
		return fmt.Errorf("agent config kubelet.configuration: %w", err)
	}
	kub := kubelet.Options{
		Root:              cfg.Kubelet.Root,
		NodeIP:            cfg.Kubelet.NodeIP,
		Supervise:         cfg.Kubelet.Supervise,
		NVIDIARuntime:     cfg.Kubelet.NVIDIARuntime,
		TuneKubeletConfig: tune,
	}
	// The rollback watch runs in a session of its own: an absolute path.
	upgrade := agent.UpgradeOptions{RestartCommand: cfg.Upgrade.RestartCommand, WatchPrefix: cfg.Upgrade.WatchPrefix}
	if upgrade.StateDir, err = filepath.Abs(a.stateDir); err != nil {
		return err
	}
	ag, err := agent.New(agent.Options{
		State:          db,
		Inventory:      &inventory.Collector{Hostname: cfg.Hostname, BootIDFile: cfg.BootIDFile},
		Hostname:       cfg.Hostname,
		RebootCommand:  cfg.Maintenance.RebootCommand,
		Logger:         log,
		Controller:     cfg.Controller,
		ServerName:     cfg.ServerName,
		BackoffInitial: cfg.Reconnect.Initial,
		BackoffMax:     cfg.Reconnect.Max,
		InventoryCheck: cfg.InventoryInterval,
		GPU:            gpus,

		GPUHealthInterval: cfg.GPU.HealthInterval,
		SIEM:              fwd,
		LocalSIEM:         &cfg.SIEM,
		SIEMAllow:         cfg.SIEMAllow,
		ArtifactDir:       filepath.Join(a.stateDir, "artifacts"),
		Kubelet:           kub,
		Upgrade:           upgrade,
	})
	if err != nil {
		return err
	}
	log.Info("agent starting", "node_id", ag.NodeID(), "version", version.Version, "state_dir", a.stateDir)
	err = ag.Run(ctx)
	log.Info("agent stopped")
	return err
}
