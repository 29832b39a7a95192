// bud-controller is the fleet controller daemon.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/bud-ecosystem/budfleet/controller"
	"github.com/bud-ecosystem/budfleet/controller/ca"
	"github.com/bud-ecosystem/budfleet/controller/maintenance"
	"github.com/bud-ecosystem/budfleet/controller/maintenance/runner"
	"github.com/bud-ecosystem/budfleet/controller/providers"
	etcdstore "github.com/bud-ecosystem/budfleet/controller/store/etcd"
	"github.com/bud-ecosystem/budfleet/internal/cli"
	"github.com/bud-ecosystem/budfleet/pki"
	"github.com/bud-ecosystem/budfleet/version"
)

func main() { cli.Main(newRoot()) }

func newRoot() *cobra.Command {
	var logFormat, logLevel string
	root := &cobra.Command{
		Use:   "bud-controller",
		Short: "The budfleet controller: enrolls node agents and serves the fleet API",
	}
	cli.LogFlags(root, &logFormat, &logLevel)

	var dataDir, advertise string
	var names []string
	initCmd := &cobra.Command{
		Use:   "init",
		Short: "Create the CA, server certificate and an admin credential in a new data dir",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := controller.Init(controller.InitConfig{DataDir: dataDir, ServerNames: names, Advertise: advertise}); err != nil {
				return err
			}
			authority, err := ca.LoadCA(dataDir)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "initialised %s\n  CA hash:       sha256:%s\n  budctl config: %s\n",
				dataDir, pki.PublicKeyHash(authority.Cert), filepath.Join(dataDir, controller.AdminConfigFile))
			return nil
		},
	}
	initCmd.Flags().StringVar(&dataDir, "data-dir", "", "controller data dir (created)")
	initCmd.Flags().StringSliceVar(&names, "server-name", nil, "DNS name or IP for the server certificate (repeatable); localhost and 127.0.0.1 are always included")
	initCmd.Flags().StringVar(&advertise, "advertise", "127.0.0.1:7443", "controller address written into the admin budctl config")
	_ = initCmd.MarkFlagRequired("data-dir")

	var sc controller.ServeConfig
	var siemConfig, quarantineTask, artifactMax, providersFile string
	var storeKind, etcdCA, etcdCert, etcdKey, etcdPrefix, controllerID string
	var etcdEndpoints []string
	var etcdLeaseTTL int
	serveCmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the controller",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := cli.NewLogger(os.Stderr, logFormat, logLevel)
			if err != nil {
				return err
			}
			sc.Logger = log
			if quarantineTask != "" {
				if !sc.Server.GPUQuarantine.Enabled {
					return fmt.Errorf("--gpu-quarantine-task needs --gpu-quarantine")
				}
				b, err := os.ReadFile(quarantineTask)
				if err != nil {
					return fmt.Errorf("--gpu-quarantine-task: %w", err)
				}
				sc.Server.GPUQuarantine.Task = string(b)
			}
			if sc.ArtifactMaxBytes, err = parseSize(artifactMax); err != nil {
				return fmt.Errorf("--artifact-max-size: %w", err)
			}
			if siemConfig != "" {
				fc, err := loadControllerSIEM(siemConfig)
				if err != nil {
					return err
				}
				sc.Forward = func(ctx context.Context, auditLog string) (func(), error) {
					return forwardAuditLog(ctx, fc, auditLog, filepath.Join(sc.DataDir, "siem-spool.db"), log)
				}
			}
			if providersFile != "" {
				if sc.Providers, err = providers.LoadFile(providersFile); err != nil {
					return fmt.Errorf("--providers: %w", err)
				}
			}
			switch storeKind {
			case "bolt", "bbolt", "":
				if len(etcdEndpoints) > 0 {
					return fmt.Errorf("--etcd-endpoints needs --store etcd")
				}
			case "etcd":
				if len(etcdEndpoints) == 0 {
					return fmt.Errorf("--store etcd needs --etcd-endpoints")
				}
				sc.Etcd = &controller.EtcdConfig{
					Store: etcdstore.Options{Endpoints: etcdEndpoints, CAFile: etcdCA, CertFile: etcdCert, KeyFile: etcdKey, Prefix: etcdPrefix},
					ID:    controllerID, LeaseTTL: etcdLeaseTTL,
				}
			default:
				return fmt.Errorf("--store %q: want bolt or etcd", storeKind)
			}
			return controller.Serve(cmd.Context(), sc)
		},
	}
	f := serveCmd.Flags()
	f.StringVar(&sc.DataDir, "data-dir", "", "controller data dir made by 'bud-controller init'")
	f.StringVar(&sc.Listen, "listen", "127.0.0.1:7443", "gRPC listen address")
	f.StringVar(&sc.MetricsListen, "metrics-listen", "", "Prometheus metrics listen address (off when empty)")
	f.BoolVar(&sc.Pprof, "debug-pprof", false, "also serve Go profiles (net/http/pprof) under /debug/pprof/ on --metrics-listen; unauthenticated, for profiling only")
	f.DurationVar(&sc.Server.AgentCertTTL, "agent-cert-ttl", controller.DefaultAgentCertTTL, "lifetime of node certificates; agents renew after two thirds of it")
	f.DurationVar(&sc.Server.HeartbeatInterval, "heartbeat-interval", controller.DefaultHeartbeatInterval, "heartbeat interval agents are told to use")
	f.DurationVar(&sc.Server.HeartbeatGrace, "heartbeat-grace", controller.DefaultHeartbeatGrace, "a node is NotReady this long after its last heartbeat")
	f.DurationVar(&sc.Server.ReportInterval, "report-interval", controller.DefaultReportInterval, "least time between two stored inventory, GPU inventory or GPU health reports of one node; faster ones are coalesced (the latest is stored)")
	f.DurationVar(&sc.Server.FullInventoryInterval, "full-inventory-interval", controller.DefaultFullInventoryInterval, "how often agents resend unchanged inventory")
	f.DurationVar(&sc.Server.MaintenanceInterval, "maintenance-interval", runner.DefaultInterval, "how often maintenance campaigns are stepped (agent and command events step them sooner)")
	f.BoolVar(&sc.Server.GPUQuarantine.Enabled, "gpu-quarantine", false, "quarantine a node with an Unhealthy GPU: cordon its Node and taint it "+controller.TaintGPUUnhealthy+"=true:NoSchedule until every GPU is healthy again")
	f.IntVar(&sc.Server.GPUQuarantine.MaxNodes, "gpu-quarantine-max-nodes", controller.DefaultQuarantineMaxNodes, "circuit breaker: at most this many nodes quarantined at once; more wait")
	f.StringVar(&quarantineTask, "gpu-quarantine-task", "", "script of a one-node remediation campaign opened for each quarantined node (drain, then the task on the node)")
	f.DurationVar(&sc.Server.GPUQuarantine.TaskTimeout, "gpu-quarantine-task-timeout", maintenance.DefaultTaskTimeout, "the remediation task's timeout")
	f.BoolVar(&sc.Server.GPUQuarantine.Reboot, "gpu-quarantine-reboot", false, "the remediation campaign reboots the node after its task")
	f.StringVar(&artifactMax, "artifact-max-size", "16GiB", "largest artifact 'budctl artifacts push' may store (bytes, or with KiB, MiB, GiB, TiB)")
	f.StringVar(&siemConfig, "siem-config", "", "YAML with a siem: section: forward the controller's audit log (operator actions) with the agents' forwarding code")
	f.StringVar(&providersFile, "providers", "", "YAML file of provider plugins (name, path, sha256, config) that make and enroll machines")
	f.StringVar(&sc.Server.Advertise, "advertise", "", "controller address the machines that providers make are told to dial (default: the --listen address bound)")
	f.DurationVar(&sc.Server.MachineTokenTTL, "machine-token-ttl", controller.DefaultMachineTokenTTL, "lifetime of each machine's single-use join token: the time it has to boot and enroll")
	f.StringVar(&storeKind, "store", "bolt", "where the controller keeps its state: bolt (one file in --data-dir, one controller) or etcd (several controllers on one etcd cluster)")
	f.StringSliceVar(&etcdEndpoints, "etcd-endpoints", nil, "etcd client URLs (comma-separated) for --store etcd")
	f.StringVar(&etcdCA, "etcd-ca", "", "CA certificate (PEM) that etcd's serving certificates chain to")
	f.StringVar(&etcdCert, "etcd-cert", "", "client certificate (PEM) for etcd")
	f.StringVar(&etcdKey, "etcd-key", "", "client key (PEM) for etcd")
	f.StringVar(&etcdPrefix, "etcd-prefix", etcdstore.DefaultPrefix, "key prefix of this fleet in etcd")
	f.StringVar(&controllerID, "controller-id", "", "this controller's name among the controllers on one etcd (default host name and listen port)")
	f.IntVar(&etcdLeaseTTL, "etcd-lease-ttl", etcdstore.DefaultLeaseTTL, "seconds a dead controller's sessions and leaderships outlive it")
	f.StringVar(&sc.PKIDir, "pki-dir", "", "directory with ca.crt, ca.key, server.crt, server.key (default --data-dir): controllers of one fleet share them")
	f.Float64Var(&sc.Server.EnrollRate, "enroll-rate", controller.DefaultEnrollRate, "Enroll calls per second allowed from one source address (token bucket)")
	f.IntVar(&sc.Server.EnrollBurst, "enroll-burst", controller.DefaultEnrollBurst, "Enroll calls one source address may make at once")
	f.IntVar(&sc.Server.MemoryReleaseBurst, "memory-release-burst", controller.DefaultMemoryReleaseBurst, "after at least this many agent sessions open and then --memory-release-quiet with no more than a trickle (a sixteenth of this a second: a reconnect storm that has settled), return the free Go heap to the OS once (debug.FreeOSMemory; logged, and counted in bud_controller_memory_releases_total); 0 never does")
	f.DurationVar(&sc.Server.MemoryReleaseQuiet, "memory-release-quiet", controller.DefaultMemoryReleaseQuiet, "how long with no more than a trickle of session opens ends a storm for --memory-release-burst")
	f.DurationVar(&sc.Server.MemoryReleaseInterval, "memory-release-interval", controller.DefaultMemoryReleaseInterval, "least time between two releases of --memory-release-burst (each is a full GC)")
	f.IntVar(&sc.MaxConnections, "max-connections", controller.DefaultMaxConnections, "open connections allowed overall")
	f.IntVar(&sc.MaxConnectionsPerSource, "max-connections-per-source", controller.DefaultMaxConnectionsPerSource, "open connections allowed from one IP address")
	_ = serveCmd.MarkFlagRequired("data-dir")

	var rotateDir string
	rotateCmd := &cobra.Command{
		Use:   "rotate-server-cert",
		Short: "Issue a new server certificate and key for the same names; a running controller picks it up within seconds",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cert, err := controller.RotateServerCert(rotateDir, time.Now())
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "server certificate rotated: serial %s, expires %s\n", cert.SerialNumber.Text(16), cert.NotAfter.UTC().Format(time.RFC3339))
			return nil
		},
	}
	rotateCmd.Flags().StringVar(&rotateDir, "data-dir", "", "controller data dir")
	_ = rotateCmd.MarkFlagRequired("data-dir")

	root.AddCommand(initCmd, serveCmd, restoreCmd(), rotateCmd, &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Run:   func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), version.Version) },
	})
	return root
}
