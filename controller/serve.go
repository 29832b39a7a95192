package controller

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/bud-ecosystem/budfleet/controller/artifact"
	"github.com/bud-ecosystem/budfleet/controller/ca"
	"github.com/bud-ecosystem/budfleet/controller/providers"
	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/controller/store/bolt"
	etcdstore "github.com/bud-ecosystem/budfleet/controller/store/etcd"
	"github.com/bud-ecosystem/budfleet/pki"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	artifactv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/artifact/v1"
	backupv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/backup/v1"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
	kubev1 "github.com/bud-ecosystem/budfleet/proto/budfleet/kube/v1"
	machinev1 "github.com/bud-ecosystem/budfleet/proto/budfleet/machine/v1"
	maintv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/maint/v1"
)

// Files in the data dir besides the CA's.
const (
	StoreFile       = "controller.db"
	AdminConfigFile = "admin.budctl.yaml"
)

// MaxMessageBytes caps any message a peer sends; a node's whole inventory is
// a few KiB.
const MaxMessageBytes = 1 << 20

// writeBufferBytes is each connection's write buffer (see GRPCOptions).
const writeBufferBytes = 16 << 10

// ArtifactDir is the artifact store's directory in the data dir.
const ArtifactDir = "artifacts"

// ServeConfig configures Serve.
type ServeConfig struct {
	DataDir       string
	Listen        string
	MetricsListen string
	// Pprof serves net/http/pprof under /debug/pprof/ on the metrics
	// listener: heap and goroutine profiles of a live controller (off by
	// default; the listener has no authentication).
	Pprof  bool
	Logger *slog.Logger
	Server Options
	// ArtifactMaxBytes is the largest artifact the store takes; 0 is
	// artifact.DefaultMaxBytes.
	ArtifactMaxBytes int64
	// Ready, when set, receives the bound addresses once listening.
	Ready func(grpcAddr, metricsAddr net.Addr)
	// StopTimeout bounds the graceful stop.
	StopTimeout time.Duration
	// Forward, when set, starts forwarding the controller's audit log (at
	// the given path) to the SIEM and returns a function that stops it.
	Forward func(ctx context.Context, auditLogPath string) (stop func(), err error)
	// Providers are the provider plugins (providers.LoadFile); Serve hosts
	// them and stops them when it returns. Server.Advertise defaults to
	// the address listened on.
	Providers []providers.Config
	// PKIDir holds the CA and the server certificate (default DataDir):
	// several controllers of one fleet share these files.
	PKIDir string
	// Etcd, when set, keeps the state in etcd (controller/store/etcd)
	// rather than in DataDir's bbolt file, and makes this controller one
	// of several on it.
	Etcd *EtcdConfig
	// MaxConnections and MaxConnectionsPerSource bound the open
	// connections overall and per source IP (0: the defaults).
	MaxConnections          int
	MaxConnectionsPerSource int
}

// EtcdConfig is the etcd store of a controller among several.
type EtcdConfig struct {
	Store etcdstore.Options
	// ID names this controller among its peers (default host name and
	// listen port).
	ID string
	// LeaseTTL, in seconds, is how long a dead controller's presence and
	// leaderships outlive it (default etcdstore.DefaultLeaseTTL).
	LeaseTTL int
}

// openStore opens the configured backend; peers is nil for bbolt.
func openStore(ctx context.Context, cfg ServeConfig) (store.Store, *etcdstore.Store, error) {
	if cfg.Etcd == nil {
		st, err := bolt.Open(filepath.Join(cfg.DataDir, StoreFile), bolt.Options{})
		return st, nil, err
	}
	st, err := etcdstore.Open(ctx, cfg.Etcd.Store)
	if err != nil {
		return nil, nil, err
	}
	return st, st, nil
}

// Serve runs the controller until ctx ends.
func Serve(ctx context.Context, cfg ServeConfig) error {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if cfg.StopTimeout == 0 {
		cfg.StopTimeout = 10 * time.Second
	}
	pkiDir := cfg.PKIDir
	if pkiDir == "" {
		pkiDir = cfg.DataDir
	}
	authority, err := ca.LoadCA(pkiDir)
	if err != nil {
		return err
	}
	serverCerts, err := newServerCerts(pkiDir, authority.Cert, log, time.Now)
	if err != nil {
		return err
	}
	tlsConf := pki.ServerTLS(authority.Cert, tls.Certificate{})
	tlsConf.Certificates, tlsConf.GetCertificate = nil, serverCerts.get
	st, est, err := openStore(ctx, cfg)
	if err != nil {
		return err
	}
	defer st.Close()

	al, err := OpenAuditLog(filepath.Join(cfg.DataDir, AuditLogFile))
	if err != nil {
		return err
	}
	defer al.Close()
	if cfg.Forward != nil {
		stop, err := cfg.Forward(ctx, filepath.Join(cfg.DataDir, AuditLogFile))
		if err != nil {
			return fmt.Errorf("--siem-config: %w", err)
		}
		defer stop()
	}

	arts, err := artifact.Open(ctx, artifact.Options{
		Dir:          filepath.Join(cfg.DataDir, ArtifactDir),
		Meta:         st,
		MaxBytes:     cfg.ArtifactMaxBytes,
		MaxBytesHint: "raise bud-controller serve --artifact-max-size",
		Logger:       log,
	})
	if err != nil {
		return err
	}

	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	opts := cfg.Server
	opts.Store, opts.CA, opts.Logger, opts.Registerer, opts.AuditLog, opts.Artifacts = st, authority, log, reg, al, arts
	opts.PKIDir = pkiDir
	if opts.JoinArtifacts == nil {
		opts.JoinArtifacts = joinLookup{arts}
	}
	if len(cfg.Providers) > 0 {
		host := providers.New(cfg.Providers, providers.Options{Logger: log})
		defer host.Close()
		opts.Providers = host
	}
	if opts.Advertise == "" {
		opts.Advertise = lis.Addr().String()
	}
	var peers *etcdstore.Peers
	if est != nil {
		if host, _, err := net.SplitHostPort(opts.Advertise); err != nil || net.ParseIP(host) != nil && net.ParseIP(host).IsUnspecified() {
			lis.Close()
			return fmt.Errorf("--advertise %q: with --store etcd agents are told every controller's address: give this one's host:port as agents reach it (the listen address is a wildcard)", opts.Advertise)
		}
		id := cfg.Etcd.ID
		if id == "" {
			host, _ := os.Hostname()
			_, port, _ := net.SplitHostPort(lis.Addr().String())
			id = host + ":" + port
		}
		if peers, err = etcdstore.NewPeers(ctx, est, id, opts.Advertise, cfg.Etcd.LeaseTTL, log); err != nil {
			lis.Close()
			return err
		}
		defer peers.Close()
		opts.Peers = peers
	}
	srv, err := New(opts)
	if err != nil {
		lis.Close()
		return err
	}
	gs := grpc.NewServer(srv.GRPCOptions(tlsConf)...)
	hs := srv.RegisterServices(gs)
	limited := newLimitListener(lis, cfg.MaxConnections, cfg.MaxConnectionsPerSource, func(addr, reason string) {
		srv.refusals.note(ctx, "connection", addr, errors.New(reason))
	})

	var mlis net.Listener
	var hsrv *http.Server
	if cfg.MetricsListen != "" {
		mlis, err = net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			lis.Close()
			return fmt.Errorf("listen for metrics on %s: %w", cfg.MetricsListen, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
		if cfg.Pprof {
			mux.HandleFunc("/debug/pprof/", pprof.Index)
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
			mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		}
		hsrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	}

	g, gctx := errgroup.WithContext(ctx)
	// Campaigns stop before the sessions close: a runner that saw every
	// agent go away at shutdown would fail the nodes it was about to start.
	maintDone := make(chan struct{})
	g.Go(func() error {
		defer close(maintDone)
		return srv.RunMaintenance(gctx)
	})
	g.Go(func() error { return serverCerts.rotate(gctx, time.Hour) })
	g.Go(func() error { return srv.memRelease.run(gctx, srv.opts.Now) })
	if srv.quarantine != nil {
		g.Go(func() error { return srv.singleton(gctx, "gpu-quarantine", srv.quarantine.run) })
	}
	if peers != nil {
		g.Go(func() error { return peers.Follow(gctx) })
		g.Go(func() error { return srv.RunPeers(gctx) })
	}
	g.Go(func() error {
		if err := gs.Serve(limited); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("grpc server: %w", err)
		}
		return nil
	})
	if hsrv != nil {
		g.Go(func() error {
			if err := hsrv.Serve(mlis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("metrics server: %w", err)
			}
			return nil
		})
	}
	g.Go(func() error {
		<-gctx.Done()
		hs.Shutdown()
		select {
		case <-maintDone:
		case <-time.After(cfg.StopTimeout):
			log.Warn("maintenance campaigns did not stop in time; closing sessions")
		}
		srv.closeAllSessions()
		stopped := make(chan struct{})
		go func() { gs.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(cfg.StopTimeout):
			log.Warn("graceful stop timed out; closing connections")
			gs.Stop()
		}
		if hsrv != nil {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(gctx), 2*time.Second)
			defer cancel()
			_ = hsrv.Shutdown(sctx)
		}
		return nil
	})
	var maddr net.Addr
	if mlis != nil {
		maddr = mlis.Addr()
	}
	storeDesc := "bbolt " + filepath.Join(cfg.DataDir, StoreFile)
	if peers != nil {
		storeDesc = "etcd " + strings.Join(cfg.Etcd.Store.Endpoints, ",") + " prefix " + est.Prefix() + " as " + peers.ID()
	}
	log.Info("controller serving", "listen", lis.Addr().String(), "metrics", addrString(maddr), "data_dir", cfg.DataDir, "store", storeDesc, "ca_hash", "sha256:"+pki.PublicKeyHash(authority.Cert))
	if cfg.Ready != nil {
		cfg.Ready(lis.Addr(), maddr)
	}
	err = g.Wait()
	srv.persistLiveness(context.WithoutCancel(ctx))
	srv.commands.marks.flush()
	return err
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// Limits of the gRPC server.
const (
	ConnectionTimeout    = 10 * time.Second
	MaxConcurrentStreams = 64
)

// RegisterServices registers every service the controller serves on gs,
// health and reflection included, and returns the health server.
func (srv *Server) RegisterServices(gs *grpc.Server) *health.Server {
	agentv1.RegisterAgentServiceServer(gs, srv.AgentAPI())
	fleetv1.RegisterFleetServiceServer(gs, srv.FleetAPI())
	kubev1.RegisterClusterServiceServer(gs, srv.ClusterAPI())
	maintv1.RegisterMaintenanceServiceServer(gs, srv.MaintenanceAPI())
	artifactv1.RegisterArtifactServiceServer(gs, srv.ArtifactAPI())
	artifactv1.RegisterNodeArtifactServiceServer(gs, srv.NodeArtifactAPI())
	machinev1.RegisterMachineServiceServer(gs, srv.MachineAPI())
	backupv1.RegisterBackupServiceServer(gs, srv.BackupAPI())
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs)
	return hs
}

// GRPCOptions are the gRPC server's options: TLS with tlsConf, the message,
// connection and stream limits, keepalives and the auth interceptors. The
// tests that play a hostile agent over real mTLS serve with these too.
func (s *Server) GRPCOptions(tlsConf *tls.Config) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.Creds(credentials.NewTLS(tlsConf)),
		grpc.MaxRecvMsgSize(MaxMessageBytes),
		// The read buffer is not pooled under TLS; without it an idle agent
		// costs ~16 KiB less.
		grpc.ReadBufferSize(0),
		// Each connection's 32 KiB write buffer comes from a pool while a
		// write is being flushed and goes back after, instead of being held
		// by every idle agent.
		grpc.SharedWriteBuffer(true),
		// 16 KiB (one TLS record) rather than 32: in a fan-out every
		// connection's loopy writer holds its pooled buffer across its
		// yield before the flush, so 10,000 of them draw 10,000 buffers
		// from the pool at once.
		grpc.WriteBufferSize(writeBufferBytes),
		// Static flow-control windows: with grpc-go's dynamic windows
		// every data frame received while no BDP ping is out sends a
		// window update and a BDP ping, which the agent must answer; for
		// agents' small messages the estimate never grows, so each one
		// cost a ping round trip on both sides. A stream's window holds
		// one message of the largest size accepted.
		grpc.StaticStreamWindowSize(MaxMessageBytes),
		grpc.StaticConnWindowSize(2 * MaxMessageBytes),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, MaxConnectionIdle: MaxConnectionIdle}),
		// A TLS handshake that has not finished in this long is dropped.
		grpc.ConnectionTimeout(ConnectionTimeout),
		grpc.MaxConcurrentStreams(MaxConcurrentStreams),
		grpc.ChainUnaryInterceptor(s.UnaryAuth),
		grpc.ChainStreamInterceptor(s.StreamAuth),
	}
}
