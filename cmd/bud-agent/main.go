// bud-agent is the node agent daemon.
package main

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/bud-ecosystem/budfleet/agent"
	"github.com/bud-ecosystem/budfleet/agent/gpu"
	"github.com/bud-ecosystem/budfleet/agent/inventory"
	"github.com/bud-ecosystem/budfleet/agent/state"
	"github.com/bud-ecosystem/budfleet/internal/cli"
	"github.com/bud-ecosystem/budfleet/siem/forward"
	"github.com/bud-ecosystem/budfleet/version"
)

func main() { cli.Main(newRoot()) }

func newRoot() *cobra.Command {
	var logFormat, logLevel, stateDir string
	root := &cobra.Command{
		Use:   "bud-agent",
		Short: "The budfleet node agent",
	}
	cli.LogFlags(root, &logFormat, &logLevel)
	root.PersistentFlags().StringVar(&stateDir, "state-dir", "/var/lib/bud-agent", "agent state dir")

	var controllerAddr, token, tokenFile, serverName, hostname string
	join := &cobra.Command{
		Use:   "join",
		Short: "Enroll this node with a controller using a join token",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if tokenFile != "" {
				b, err := os.ReadFile(tokenFile)
				if err != nil {
					return fmt.Errorf("read --token-file: %w", err)
				}
				token = strings.TrimSpace(string(b))
			}
			if token == "" {
				return errors.New("--token or --token-file is required")
			}
			if controllerAddr == "" {
				return errors.New("--controller is required")
			}
			host := hostname
			if host == "" {
				host, _ = os.Hostname()
			}
			db, err := state.Open(stateDir, time.Second)
			if err != nil {
				return err
			}
			defer db.Close()
			id, err := agent.Enroll(cmd.Context(), agent.EnrollOptions{
				Controller: controllerAddr, Token: token, ServerName: serverName,
				Hostname: host, MachineID: inventory.MachineID("/"), State: db,
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "enrolled as node %s\n", id)
			return nil
		},
	}
	jf := join.Flags()
	jf.StringVar(&controllerAddr, "controller", "", "controller address, host:port")
	jf.StringVar(&token, "token", "", "join token from 'budctl tokens create'")
	jf.StringVar(&tokenFile, "token-file", "", "read the join token from this file instead")
	jf.StringVar(&serverName, "server-name", "", "name to check in the controller certificate (default: the host in --controller)")
	jf.StringVar(&hostname, "hostname", "", "hostname to enroll as (default: this host's)")

	var configPath string
	var runController, runHostname, gpuBackend string
	run := &cobra.Command{
		Use:   "run",
		Short: "Run the agent daemon",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := agent.LoadConfig(configPath)
			if err != nil {
				return err
			}
			if cfg.LogLevel != "" && !cmd.Flags().Changed("log-level") {
				logLevel = cfg.LogLevel
			}
			log, err := cli.NewLogger(os.Stderr, logFormat, logLevel)
			if err != nil {
				return err
			}
			if runController != "" {
				cfg.Controller = runController
			}
			if runHostname != "" {
				cfg.Hostname = runHostname
			}
			if gpuBackend != "" {
				cfg.GPU.Backend = gpuBackend
			}
			db, err := state.Open(stateDir, time.Second)
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
				SpoolPath:     filepath.Join(stateDir, "siem-spool.db"),
				SpoolLockHint: "is another bud-agent running with the same --state-dir?",
				Logger:        log,
				Hostname:      cfg.Hostname,
			})
			if err != nil {
				return err
			}
			defer fwd.Close()
			a, err := agent.New(agent.Options{
				State:          db,
				Inventory:      &inventory.Collector{Hostname: cfg.Hostname},
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
			})
			if err != nil {
				return err
			}
			log.Info("agent starting", "node_id", a.NodeID(), "version", version.Version, "state_dir", stateDir)
			err = a.Run(cmd.Context())
			log.Info("agent stopped")
			return err
		},
	}
	rf := run.Flags()
	rf.StringVar(&configPath, "config", "", "agent config file (YAML)")
	rf.StringVar(&runController, "controller", "", "controller address, overriding the one stored at enrollment")
	rf.StringVar(&runHostname, "hostname", "", "hostname to report (default: this host's)")
	rf.StringVar(&gpuBackend, "gpu-backend", "", "GPU backend: "+strings.Join(gpu.Backends(), ", ")+" (default nvml, or the config's gpu.backend)")

	status := &cobra.Command{
		Use:   "status",
		Short: "Print this node's enrollment: node id, controller and certificate expiry (exit 1 when not enrolled)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			db, err := state.Open(stateDir, time.Second)
			if err != nil {
				return err
			}
			defer db.Close()
			id, err := db.Identity()
			if err != nil {
				return err
			}
			cert, err := x509.ParseCertificate(id.CertDER)
			if err != nil {
				return fmt.Errorf("stored certificate: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "node_id: %s\ncontroller: %s\ncertificate_expires: %s\n", id.NodeID, id.Controller, cert.NotAfter.UTC().Format(time.RFC3339))
			return nil
		},
	}

	root.AddCommand(join, run, status, gpusCmd(), &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Run:   func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), version.Version) },
	})
	return root
}
