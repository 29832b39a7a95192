// Package controller is the fleet controller: it enrolls agents, holds their
// sessions, queues their commands and serves the operator API.
package controller

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bud-ecosystem/budfleet/controller/artifact"
	"github.com/bud-ecosystem/budfleet/controller/ca"
	"github.com/bud-ecosystem/budfleet/controller/kube"
	"github.com/bud-ecosystem/budfleet/controller/maintenance/runner"
	"github.com/bud-ecosystem/budfleet/controller/providers"
	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/internal/dispatch"
)

// Options configure a Server.
type Options struct {
	Store  store.Store
	CA     *ca.CA
	Logger *slog.Logger
	// Registerer receives the controller's metrics; nil means none.
	Registerer prometheus.Registerer
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// AuditLog receives operator actions; nil keeps them in the log only.
	AuditLog *AuditLog

	// AgentCertTTL is the lifetime of node certificates. Agents renew them
	// over their session after two thirds of it.
	AgentCertTTL time.Duration
	// HeartbeatInterval is what agents are told to use.
	HeartbeatInterval time.Duration
	// HeartbeatGrace is how long after its last heartbeat a node is Ready.
	HeartbeatGrace time.Duration
	// FullInventoryInterval is how often agents resend unchanged inventory.
	FullInventoryInterval time.Duration
	// ReportInterval is the least time between two stored reports of one
	// kind from one node (DefaultReportInterval; coalesce.go).
	ReportInterval time.Duration

	// Kube tunes the Kubernetes side (controller/kube: timeouts, the
	// eviction retry delay); its Store, Logger and Now are the Server's.
	Kube kube.Options
	// Cluster is the Kubernetes side of maintenance campaigns; nil means
	// the registered clusters (controller/kube). Tests put a fake here.
	Cluster runner.Cluster
	// MaintenanceInterval is how often the campaign runner steps (default
	// 1s); events wake it sooner.
	MaintenanceInterval time.Duration
	// GPUQuarantine is the optional policy that cordons and taints a node
	// with an Unhealthy GPU (quarantine.go); the zero value is off.
	GPUQuarantine QuarantinePolicy
	// Artifacts is the artifact store (controller/artifact); nil answers
	// the artifact services with FailedPrecondition.
	Artifacts *artifact.Store
	// JoinArtifacts finds the artifacts a kubelet join installs
	// (kubeletjoin.go); nil queues joins without any, for nodes that have
	// what they need.
	JoinArtifacts ArtifactLookup

	// Providers are the provider plugins machines are made by
	// (machines.go); nil means none.
	Providers *providers.Host
	// Advertise is the controller address handed to the machines providers
	// make, for their agents to dial.
	Advertise string
	// EnrollRate and EnrollBurst are the token bucket each source address
	// gets for Enroll calls (defaults DefaultEnrollRate, DefaultEnrollBurst).
	EnrollRate  float64
	EnrollBurst int

	// MachineTokenTTL is the lifetime of each machine's single-use join
	// token: the time it has to boot and enroll.
	MachineTokenTTL time.Duration

	// Peers, when set, are the other controllers on the same store
	// (cluster.go): presence, queue watch, leadership of campaigns and
	// the other singletons, and the controller set in the welcome.
	Peers Peers
	// PKIDir holds the CA and server key files, for backups that include
	// them; empty when unknown.
	PKIDir string
	// PresenceInterval is how often the sessions' last heartbeats are
	// published to Peers (default DefaultPresenceInterval, or a quarter of
	// HeartbeatGrace when that is shorter).
	PresenceInterval time.Duration

	// MemoryReleaseBurst is how many session opens make a storm after
	// which, once MemoryReleaseQuiet passes with no more than a trickle of
	// them, the free heap is
	// returned to the OS (memrelease.go), at most once a
	// MemoryReleaseInterval; 0 never does (bud-controller serve defaults
	// it to DefaultMemoryReleaseBurst).
	MemoryReleaseBurst    int
	MemoryReleaseQuiet    time.Duration
	MemoryReleaseInterval time.Duration
}

// Defaults for Options.
const (
	DefaultAgentCertTTL          = 7 * 24 * time.Hour
	DefaultHeartbeatInterval     = 10 * time.Second
	DefaultHeartbeatGrace        = 40 * time.Second
	DefaultFullInventoryInterval = 10 * time.Minute
	DefaultTokenTTL              = 24 * time.Hour
	MaxTokenTTL                  = 365 * 24 * time.Hour
)

// Server implements the agent and fleet services.
type Server struct {
	opts    Options
	log     *slog.Logger
	store   serverStore
	ca      *ca.CA
	metrics *metrics

	// The capabilities on agent sessions, and their message handlers by
	// kind. Two are also reached from the operator API; progress from
	// commands, which stores a command's streamed tail with its result.
	modules  []module
	handlers *dispatch.Table[*session]
	commands *commandDelivery
	reports  *coalescer // node reports, written at most once per interval
	progress *commandProgress
	siem     *siemPush
	// refusals samples refusal logs and counts them for the audit trail.
	refusals *refusals
	// enrollLimit rate-limits Enroll per source address.
	enrollLimit *addrLimiter
	// kube is the Kubernetes side: clusters and node operations (clusters.go).
	kube *kube.Manager
	// campaigns runs maintenance campaigns (campaigns.go, maintapi.go).
	campaigns *campaigns
	// quarantine applies the GPU quarantine policy; nil when it is off.
	quarantine *gpuQuarantine
	// machines are the provider plugins' machines (machines.go,
	// machineapi.go).
	machines *machines
	// started is when the Server was made: agents reconnect after it.
	started time.Time
	// memRelease returns the free heap after a storm of session opens.
	memRelease *stormRelease

	mu       sync.Mutex
	sessions map[string]*session // by node id
	lastSeen map[string]time.Time
	// shuttingDown refuses new sessions once shutdown has begun.
	shuttingDown bool
}

// New checks opts and returns a Server.
func New(opts Options) (*Server, error) {
	if opts.Store == nil {
		return nil, errors.New("controller: Store must be set")
	}
	if opts.CA == nil {
		return nil, errors.New("controller: CA must be set")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	if opts.AgentCertTTL == 0 {
		opts.AgentCertTTL = DefaultAgentCertTTL
	}
	if opts.HeartbeatInterval == 0 {
		opts.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if opts.HeartbeatGrace == 0 {
		opts.HeartbeatGrace = DefaultHeartbeatGrace
	}
	if opts.ReportInterval == 0 {
		opts.ReportInterval = DefaultReportInterval
	}
	if opts.FullInventoryInterval == 0 {
		opts.FullInventoryInterval = DefaultFullInventoryInterval
	}
	if opts.PresenceInterval == 0 {
		// Published last heartbeats are at most a quarter of the grace old.
		opts.PresenceInterval = min(DefaultPresenceInterval, max(opts.HeartbeatGrace, 4*time.Millisecond)/4)
	}
	if opts.EnrollRate == 0 {
		opts.EnrollRate = DefaultEnrollRate
	}
	if opts.EnrollBurst == 0 {
		opts.EnrollBurst = DefaultEnrollBurst
	}
	if opts.MachineTokenTTL == 0 {
		opts.MachineTokenTTL = DefaultMachineTokenTTL
	}
	if opts.MachineTokenTTL < time.Minute || opts.MachineTokenTTL > MaxTokenTTL {
		return nil, fmt.Errorf("controller: machine token TTL %s must be between a minute and %s", opts.MachineTokenTTL, MaxTokenTTL)
	}
	if opts.MemoryReleaseBurst < 0 || opts.MemoryReleaseQuiet < 0 || opts.MemoryReleaseInterval < 0 {
		return nil, errors.New("controller: the memory release burst, quiet time and interval must not be negative")
	}
	if opts.MemoryReleaseQuiet == 0 {
		opts.MemoryReleaseQuiet = DefaultMemoryReleaseQuiet
	}
	if opts.MemoryReleaseInterval == 0 {
		opts.MemoryReleaseInterval = DefaultMemoryReleaseInterval
	}
	if opts.HeartbeatGrace <= opts.HeartbeatInterval {
		return nil, fmt.Errorf("controller: heartbeat grace (%s) must be longer than the heartbeat interval (%s)", opts.HeartbeatGrace, opts.HeartbeatInterval)
	}
	if opts.AgentCertTTL < time.Minute {
		return nil, fmt.Errorf("controller: agent certificate TTL %s is under a minute", opts.AgentCertTTL)
	}
	s := &Server{
		opts:     opts,
		log:      opts.Logger,
		store:    opts.Store,
		ca:       opts.CA,
		sessions: map[string]*session{},
		lastSeen: map[string]time.Time{},
		started:  opts.Now(),
	}
	s.metrics = newMetrics(opts.Registerer)
	s.refusals = newRefusals(s)
	s.memRelease = newStormRelease(opts.MemoryReleaseBurst, opts.MemoryReleaseQuiet, opts.MemoryReleaseInterval, opts.Logger, opts.Registerer)
	s.enrollLimit = newAddrLimiter(opts.EnrollRate, opts.EnrollBurst, opts.Now)
	s.commands = &commandDelivery{srv: s, sessions: map[*session]*deliveries{}, marks: newDeliveryMarks(s)}
	s.reports = newCoalescer(s, opts.ReportInterval)
	s.siem = &siemPush{srv: s, reports: map[string]siemReport{}, pushed: map[string]time.Time{}, settled: map[string]string{}}
	s.progress = &commandProgress{srv: s, sessions: map[*session]*progressState{}}
	s.modules = []module{
		&heartbeats{srv: s, siemStatus: s.siem.recordStatus},
		&hostInventory{srv: s},
		&gpuReports{srv: s},
		s.commands,
		s.progress,
		&renewal{srv: s},
		s.siem,
	}
	var err error
	if s.handlers, err = dispatchTable(s.modules); err != nil {
		return nil, err
	}
	ko := opts.Kube
	ko.Store, ko.Logger, ko.Now = opts.Store, opts.Logger, opts.Now
	if s.kube, err = kube.New(ko); err != nil {
		return nil, err
	}
	if s.campaigns, err = newCampaigns(s); err != nil {
		return nil, err
	}
	if s.quarantine, err = newGPUQuarantine(s, s.campaigns.cluster); err != nil {
		return nil, err
	}
	s.machines = newMachines(s)
	if err := opts.Registerer.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "bud_controller_ready_nodes",
		Help: "Nodes whose last heartbeat is within the grace period.",
	}, s.countReady)); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) countReady() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.opts.Now()
	n := 0
	for _, t := range s.lastSeen {
		if now.Sub(t) < s.opts.HeartbeatGrace {
			n++
		}
	}
	return float64(n)
}

// nodeLiveness reports a node's last heartbeat and whether it has a
// session open, on this controller or (with Peers) another.
func (s *Server) nodeLiveness(id string) (time.Time, bool) {
	s.mu.Lock()
	_, connected := s.sessions[id]
	last := s.lastSeen[id]
	s.mu.Unlock()
	if !connected {
		// A session on another controller of the fleet.
		if rl, ok := s.remoteLiveness(id); ok {
			return rl, true
		}
	}
	return last, connected
}

func (s *Server) ready(last time.Time) bool {
	return !last.IsZero() && s.opts.Now().Sub(last) < s.opts.HeartbeatGrace
}

func (s *Server) sawHeartbeat(id string) {
	s.mu.Lock()
	s.lastSeen[id] = s.opts.Now()
	s.mu.Unlock()
}
