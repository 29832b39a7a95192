// bud-fleetsim is the fleet simulator: thousands of virtual agents per
// process against a real bud-controller, and the floor (a bare grpc-go
// mutual-TLS stream server and its clients) to compare the controller with.
// test/fleetbench drives it (make bench-fleet); it is not packaged.
package main

import (
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/bud-ecosystem/budfleet/internal/cli"
	"github.com/bud-ecosystem/budfleet/test/fleetsim"
	"github.com/bud-ecosystem/budfleet/version"
)

func main() { cli.Main(newRoot()) }

type app struct{ logFormat, logLevel string }

func newRoot() *cobra.Command {
	a := &app{}
	root := &cobra.Command{
		Use:   "bud-fleetsim",
		Short: "Fleet simulator: many virtual agents per process, and the bare-gRPC floor to compare with",
	}
	cli.LogFlags(root, &a.logFormat, &a.logLevel)
	root.AddCommand(a.agentsCmd(), a.floorServerCmd(), a.floorClientCmd(), &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Run:   func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), version.Version) },
	})
	return root
}

// raiseNoFile lifts the soft descriptor limit to the hard one: each agent
// or floor stream holds a socket.
func raiseNoFile() {
	var r syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r) == nil && r.Cur < r.Max {
		r.Cur = r.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r)
	}
}

func (a *app) agentsCmd() *cobra.Command {
	var o fleetsim.AgentsOptions
	var control string
	cmd := &cobra.Command{
		Use:   "agents",
		Short: "Enroll --count virtual agents (state in memory), then run them when POST /start reaches the control listener",
		Long: `Enrolls --count agents with the join token, a few at a time (the real agent
library: key, CSR, TLS pinned to the token's CA hash), keeping their
identities in memory, and serves the control API on --control:

  GET  /stats     {"count","enrolled","enroll_error","running","sessions"}
  POST /start     run every agent (real mTLS Connect stream, heartbeats,
                  inventory and GPU reports, command handling, backoff)
  POST /stop      stop them
  GET  /commands  what each agent saw of each command on its wire, and per
                  agent the handler's runs beside the distinct commands

inventory.collect runs a handler that counts its runs. The process exits on
SIGTERM or SIGINT.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			raiseNoFile()
			log, err := cli.NewLogger(os.Stderr, a.logFormat, a.logLevel)
			if err != nil {
				return err
			}
			o.Logger = log
			s, err := fleetsim.NewAgents(o)
			if err != nil {
				return err
			}
			lis, err := net.Listen("tcp", control)
			if err != nil {
				return fmt.Errorf("control listener: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "control %s\n", lis.Addr())
			ctx := cmd.Context()
			errc := make(chan error, 1)
			go func() { errc <- fleetsim.ServeControl(ctx, lis, s.Handler()) }()
			start := time.Now()
			if err := s.Enroll(ctx); err != nil {
				log.Error("enrollment failed", "error", err)
			} else {
				log.Info("enrolled", "agents", o.Count, "took", time.Since(start).String())
			}
			err = <-errc
			s.Stop()
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Controller, "controller", "", "controller host:port")
	f.StringVar(&o.Token, "token", "", "join token (unlimited uses)")
	f.IntVar(&o.Count, "count", 2500, "virtual agents in this process (one socket each; a process here holds under 20,000)")
	f.StringVar(&o.NamePrefix, "name-prefix", "sim-", "hostname prefix; a five-digit index follows")
	f.IntVar(&o.EnrollParallel, "enroll-parallel", 2, "enrollments at once")
	f.StringVar(&o.GPUBackend, "gpu-backend", "mock:dgxh100", "mock GPU backend each agent reports (mock:dgxa100, mock:dgxh100, mock:dgxh200, none)")
	f.DurationVar(&o.BackoffInitial, "backoff-initial", 0, "first reconnect wait bound (0: the agent's default, 1s)")
	f.DurationVar(&o.BackoffMax, "backoff-max", 0, "reconnect wait cap (0: the agent's default, 1m)")
	f.StringVar(&control, "control", "127.0.0.1:0", "control API listen address (loopback)")
	_ = cmd.MarkFlagRequired("controller")
	_ = cmd.MarkFlagRequired("token")
	return cmd
}

func (a *app) floorServerCmd() *cobra.Command {
	var listen, metrics, dir string
	cmd := &cobra.Command{
		Use:   "floor-server",
		Short: "The floor's server: a bare grpc-go mTLS bidi stream server (default options) that reads heartbeats",
		Long: `Serves the agent service's Connect on --listen with grpc-go's default server
options, TLS 1.3 and ECDSA P-256 certificates from --pki-dir (made there when
missing: a CA and a server certificate for 127.0.0.1), and reads heartbeats.
--metrics-listen serves /metrics (go_goroutines, go_memstats_heap_inuse_bytes,
floor_streams, floor_heartbeats_total) and /debug/pprof/.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			raiseNoFile()
			p, err := fleetsim.LoadFloorPKI(dir)
			if err != nil {
				return err
			}
			lis, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			mlis, err := net.Listen("tcp", metrics)
			if err != nil {
				lis.Close()
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "listen %s metrics %s\n", lis.Addr(), mlis.Addr())
			return fleetsim.ServeFloor(cmd.Context(), lis, mlis, p)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:0", "gRPC listen address")
	cmd.Flags().StringVar(&metrics, "metrics-listen", "127.0.0.1:0", "metrics and pprof listen address")
	cmd.Flags().StringVar(&dir, "pki-dir", "", "directory of the floor's CA and server certificate")
	_ = cmd.MarkFlagRequired("pki-dir")
	return cmd
}

func (a *app) floorClientCmd() *cobra.Command {
	var o fleetsim.FloorClientOptions
	var dir string
	cmd := &cobra.Command{
		Use:   "floor-client",
		Short: "The floor's clients: --count mTLS streams to a floor-server, a heartbeat each every 10s",
		Long: `Mints a client certificate per stream from the CA in --pki-dir, opens one
connection and one Connect stream each to --server and sends the agent's
Heartbeat message at once and then every --heartbeat. A broken stream is
opened again with WaitForReady, so reconnects follow grpc-go's default
backoff. Runs until SIGTERM or SIGINT.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			raiseNoFile()
			log, err := cli.NewLogger(os.Stderr, a.logFormat, a.logLevel)
			if err != nil {
				return err
			}
			if o.PKI, err = fleetsim.LoadFloorPKI(dir); err != nil {
				return err
			}
			o.Logger = log
			return fleetsim.RunFloorClients(cmd.Context(), o)
		},
	}
	cmd.Flags().StringVar(&o.Server, "server", "", "floor-server host:port")
	cmd.Flags().IntVar(&o.Count, "count", 2500, "streams in this process")
	cmd.Flags().DurationVar(&o.Heartbeat, "heartbeat", 10*time.Second, "heartbeat interval")
	cmd.Flags().StringVar(&dir, "pki-dir", "", "the floor-server's --pki-dir")
	_ = cmd.MarkFlagRequired("server")
	_ = cmd.MarkFlagRequired("pki-dir")
	return cmd
}
