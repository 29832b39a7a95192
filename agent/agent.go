package agent

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"os"
	"time"

	"github.com/bud-ecosystem/budfleet/agent/artifact"
	"github.com/bud-ecosystem/budfleet/agent/inventory"
	"github.com/bud-ecosystem/budfleet/agent/kubelet"
	"github.com/bud-ecosystem/budfleet/agent/maintenance"
	"github.com/bud-ecosystem/budfleet/agent/session"
	"github.com/bud-ecosystem/budfleet/agent/state"
	"github.com/bud-ecosystem/budfleet/agent/transport"
	"github.com/bud-ecosystem/budfleet/command"
	hostv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/host/v1"
	"github.com/bud-ecosystem/budfleet/siem"
)

// Options configure an Agent.
type Options struct {
	State     *state.DB
	Inventory InventorySource
	Logger    *slog.Logger
	// Controller and ServerName override what was stored at enrollment.
	Controller string
	ServerName string
	// Backoff bounds the wait between reconnects.
	BackoffInitial time.Duration
	BackoffMax     time.Duration
	// InventoryCheck is how often the inventory is collected and sent when
	// it changed.
	InventoryCheck time.Duration
	// CommandStopTimeout is how long a running command may go on after
	// shutdown begins.
	CommandStopTimeout time.Duration
	// GPU reads GPU inventory and health; nil reports none.
	GPU GPUSource
	// GPUHealthInterval is how often GPU health is sampled.
	GPUHealthInterval time.Duration
	// SIEM forwards audit logs; LocalSIEM is the config file's section,
	// used until the controller pushes one.
	SIEM      SIEMForwarder
	LocalSIEM *siem.Config
	// SIEMAllow is what a pushed SIEM configuration may read and where it
	// may send (agent.yaml's siem_allow); the zero value is the defaults
	// (siem.Allowlist.WithDefaults).
	SIEMAllow siem.Allowlist
	// Handlers adds or replaces command handlers by kind.
	Handlers map[string]Handler
	// Hostname is the name the node reports, BUD_NODE_NAME of a
	// maintenance task that names none; "" is the name it joined as.
	Hostname string
	// Maintenance runs maintenance.task scripts; nil uses the defaults.
	Maintenance *maintenance.Runner
	// RebootCommand is the argv maintenance.reboot runs (config
	// maintenance.reboot_command); nil is maintenance.DefaultRebootCommand.
	RebootCommand []string
	// RebootDelay is the wait between handing the reboot's result to the
	// session and running the reboot command, for the result to leave the
	// node; 0 is a second.
	RebootDelay time.Duration
	// Kubelet configures the kubelet.join module (agent/kubelet): the zero
	// value is root /, automatic supervision, and no artifact source (the
	// node's own binaries). Its Logger defaults to the agent's.
	Kubelet kubelet.Options
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Transport opens sessions; nil dials the controller over gRPC with the
	// identity stored at enrollment.
	Transport session.Transport
	// ArtifactDir is the cache of artifacts fetched from the controller
	// (<state dir>/artifacts); "" keeps none. Fetches go over the
	// session's connection, so they need a Transport that offers it
	// (artifact.Conns: the gRPC one does).
	ArtifactDir string
	// Upgrade configures agent.upgrade and the rollback of an upgrade to
	// this binary that does not connect in time.
	Upgrade UpgradeOptions
}

// commandRecordTTL is how long the agent remembers a finished command.
const commandRecordTTL = 30 * 24 * time.Hour

// Agent is a node agent.
type Agent struct {
	opts   Options
	log    *slog.Logger
	state  *state.DB
	nodeID string

	sessions *session.Runner
	// Modules of the sessions that are also reached from outside one.
	inventory *hostInventory
	commands  *commands
	siem      *siemForwarding
	kubelet   *kubelet.Module
	// artifacts fetches from the controller's artifact store; nil without
	// an ArtifactDir, which fails every fetch with artifact.ErrNoCache.
	// The capabilities that install artifacts take it as an
	// artifact.Source.
	artifacts *artifact.Fetcher
	upgrader  *upgrader
}

// New checks opts and returns an Agent.
func New(opts Options) (*Agent, error) {
	if opts.State == nil {
		return nil, errors.New("agent: State must be set")
	}
	if opts.Inventory == nil {
		opts.Inventory = &inventory.Collector{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.BackoffInitial == 0 {
		opts.BackoffInitial = time.Second
	}
	if opts.BackoffMax == 0 {
		opts.BackoffMax = time.Minute
	}
	if opts.InventoryCheck == 0 {
		opts.InventoryCheck = time.Minute
	}
	if opts.GPUHealthInterval == 0 {
		opts.GPUHealthInterval = 30 * time.Second
	}
	if opts.CommandStopTimeout == 0 {
		opts.CommandStopTimeout = 10 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Maintenance == nil {
		opts.Maintenance = &maintenance.Runner{}
	}
	if opts.RebootCommand == nil {
		opts.RebootCommand = maintenance.DefaultRebootCommand
	}
	if opts.RebootDelay == 0 {
		opts.RebootDelay = time.Second
	}
	id, err := opts.State.Identity()
	if err != nil {
		if errors.Is(err, state.ErrNotEnrolled) {
			return nil, errors.New("agent is not enrolled: run 'bud-agent join --controller ADDR --token TOKEN' with the same --state-dir first")
		}
		return nil, err
	}
	a := &Agent{opts: opts, state: opts.State, nodeID: id.NodeID}
	a.log = opts.Logger.With("node_id", id.NodeID)
	a.inventory = &hostInventory{
		source:    opts.Inventory,
		check:     opts.InventoryCheck,
		now:       opts.Now,
		log:       a.log,
		collected: make(chan *hostv1.Inventory, 1),
	}
	a.siem = &siemForwarding{forwarder: opts.SIEM, local: opts.LocalSIEM, allow: opts.SIEMAllow, state: opts.State, log: a.log}
	bootID := func() string { return "" }
	if src, ok := opts.Inventory.(interface{ BootID() string }); ok {
		bootID = src.BootID
	}
	hostname := opts.Hostname
	if hostname == "" {
		hostname = id.Hostname
	}
	if hostname == "" {
		hostname, _ = os.Hostname()
	}
	maint := &maintenanceCommands{
		runner:        opts.Maintenance,
		nodeID:        id.NodeID,
		hostname:      hostname,
		rebootCommand: opts.RebootCommand,
		rebootDelay:   opts.RebootDelay,
		bootID:        bootID,
		log:           a.log,
	}
	tr := opts.Transport
	if tr == nil {
		tr = &transport.GRPC{State: opts.State, Controller: opts.Controller, ServerName: opts.ServerName, Now: opts.Now}
	}
	if conns, ok := tr.(artifact.Conns); ok && opts.ArtifactDir != "" {
		if a.artifacts, err = artifact.New(artifact.Options{Dir: opts.ArtifactDir, Conns: conns, Logger: a.log}); err != nil {
			return nil, err
		}
	}
	arts := &artifactCommands{fetcher: a.artifacts}
	// Joins install what the controller's artifact store serves, through
	// the agent's fetcher (a nil one fails every fetch with ErrNoCache).
	kopts := opts.Kubelet
	if kopts.Logger == nil {
		kopts.Logger = a.log
	}
	if kopts.Source == nil {
		kopts.Source = a.artifacts
	}
	if a.kubelet, err = kubelet.New(kopts); err != nil {
		return nil, err
	}
	a.upgrader = &upgrader{opts: opts.Upgrade, fetcher: a.artifacts, now: opts.Now, log: a.log}
	handlers := map[string]handler{
		command.InventoryCollect:  plain(a.inventory.collectCommand),
		command.MaintenanceTask:   maint.task,
		command.MaintenanceReboot: maint.reboot,
		command.KubeletJoin:       (&kubeletJoin{module: a.kubelet}).join,
		command.ArtifactFetch:     arts.fetch,
		command.AgentUpgrade:      a.upgrader.upgrade,
	}
	for k, h := range opts.Handlers {
		handlers[k] = plain(h)
	}
	a.commands = &commands{
		state:       opts.State,
		handlers:    handlers,
		now:         opts.Now,
		stopTimeout: opts.CommandStopTimeout,
		log:         a.log,
		settle:      a.upgrader.settle,
	}
	a.upgrader.report = a.commands.report
	modules := []session.Module{
		&heartbeat{now: opts.Now, siemStatus: a.siem.status},
		a.inventory,
	}
	if opts.GPU != nil {
		modules = append(modules, &gpuReporter{source: opts.GPU, check: opts.InventoryCheck, healthEvery: opts.GPUHealthInterval, now: opts.Now, log: a.log})
	}
	modules = append(modules,
		&renewal{state: opts.State, nodeID: id.NodeID, now: opts.Now, log: a.log, renewed: make(chan struct{}, 1)},
		a.commands,
		a.siem,
		a.upgrader,
	)
	if a.sessions, err = session.NewRunner(session.Options{NodeID: id.NodeID, BootID: bootID, Transport: tr, Modules: modules, Logger: a.log}); err != nil {
		return nil, err
	}
	return a, nil
}

// NodeID returns the agent's node id.
func (a *Agent) NodeID() string { return a.nodeID }

// Run holds a session with the controller, reconnecting with capped
// exponential backoff and full jitter, until ctx ends. A binary on trial
// after an upgrade that is rolled back ends Run with ErrRolledBack.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// A command running when ctx ends gets CommandStopTimeout to finish
	// and record its result before Run returns and the state is closed.
	defer a.commands.wait()
	go func() {
		if err := a.upgrader.trial(ctx); err != nil {
			cancel(err)
		}
	}()
	a.siem.start(ctx)
	// What the kubelet module supervises lives as long as the agent runs,
	// and the agent exits after it has stopped.
	a.kubelet.Start(ctx)
	defer a.kubelet.Wait()
	// The controller stops redelivering a command once it has its result;
	// records a month old only take space.
	if n, err := a.state.PruneCommands(a.opts.Now().Add(-commandRecordTTL)); err != nil {
		a.log.Warn("prune old command records", "error", err)
	} else if n > 0 {
		a.log.Info("pruned old command records", "count", n)
	}
	attempt := 0
	for {
		start := a.opts.Now()
		err := a.sessions.Run(ctx)
		if ctx.Err() != nil {
			return rolledBack(ctx)
		}
		if a.opts.Now().Sub(start) > a.opts.BackoffMax {
			attempt = 0 // a session that lived a while was healthy
		}
		wait := backoff(a.opts.BackoffInitial, a.opts.BackoffMax, attempt)
		attempt++
		if permanent(err) {
			a.log.Error("controller refuses this node; an operator must act (was the node deleted? enroll again with a new join token)", "error", describe(err), "retry_in", wait)
		} else {
			a.log.Warn("session with controller ended", "error", describe(err), "retry_in", wait)
		}
		select {
		case <-ctx.Done():
			return rolledBack(ctx)
		case <-time.After(wait):
		}
	}
}

// rolledBack is what Run returns once ctx ended: ErrRolledBack when the
// trial ended it, nil when the caller did.
func rolledBack(ctx context.Context) error {
	if err := context.Cause(ctx); errors.Is(err, ErrRolledBack) {
		return err
	}
	return nil
}

// backoff returns a random wait in [0, min(max, initial*2^attempt)]: full
// jitter, so a restarted controller is not met by every agent at once.
func backoff(initial, max time.Duration, attempt int) time.Duration {
	d := initial
	for i := 0; i < attempt && d < max; i++ {
		if d > max/2 {
			d = max
			break
		}
		d *= 2
	}
	d = min(d, max)
	return time.Duration(rand.Int64N(int64(d)) + 1)
}
