// Package fleetsim is the fleet simulator behind cmd/bud-fleetsim: many
// virtual agents in one process, each the real agent library (agent.Enroll,
// agent.New, Run) with its state in memory, and the floor: a minimal grpc-go
// mutual-TLS bidi server and client with the same heartbeat, so the
// controller's figures can be read as ratios to what a bare stream costs.
//
// A process of virtual agents is driven over a small HTTP control API on
// loopback (see Control): test/fleetbench starts several such processes,
// since one process here may hold under 20,000 descriptors.
package fleetsim

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"

	"github.com/bud-ecosystem/budfleet/agent"
	"github.com/bud-ecosystem/budfleet/agent/gpu"
	"github.com/bud-ecosystem/budfleet/agent/inventory"
	"github.com/bud-ecosystem/budfleet/agent/session"
	"github.com/bud-ecosystem/budfleet/agent/state"
	"github.com/bud-ecosystem/budfleet/agent/transport"
	"github.com/bud-ecosystem/budfleet/command"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	hostv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/host/v1"
)

// AgentsOptions configure a process of virtual agents.
type AgentsOptions struct {
	Controller string // host:port
	Token      string
	Count      int
	// NamePrefix makes the hostnames, NamePrefix + a five-digit index.
	NamePrefix string
	// EnrollParallel is how many enrollments run at once (default 2).
	EnrollParallel int
	// GPUBackend is a mock:* backend of agent/gpu ("" or "none": no GPUs).
	GPUBackend string
	// BackoffInitial and BackoffMax are the agents' reconnect backoff
	// (0: the agent's defaults, 1 s and 1 min).
	BackoffInitial, BackoffMax time.Duration
	Logger                     *slog.Logger
}

// Agents is a process's virtual agents.
type Agents struct {
	opts   AgentsOptions
	log    *slog.Logger
	agents []*simAgent

	enrolled  atomic.Int64
	enrollErr atomic.Pointer[string]

	mu      sync.Mutex
	running bool
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// simAgent is one virtual agent and what the simulator saw on its wire.
type simAgent struct {
	name   string
	nodeID string
	st     *state.DB
	gpus   agent.GPUSource
	inv    *staticInventory
	a      *agent.Agent

	sessions atomic.Int64 // Connect streams opened
	runs     atomic.Int64 // inventory.collect handler runs

	mu   sync.Mutex
	seen map[string]*CommandSeen
}

// CommandSeen is what one agent saw of one command on its wire.
type CommandSeen struct {
	Node string `json:"node"`
	ID   string `json:"id"`
	// FirstDelivery and FirstResult are unix nanoseconds: when the command
	// first arrived and when its result first left.
	FirstDelivery int64 `json:"first_delivery"`
	FirstResult   int64 `json:"first_result"`
	Deliveries    int   `json:"deliveries"`
	Results       int   `json:"results"`
}

// AgentCount is, for one agent, how often the command handler ran and how
// many distinct commands were delivered: equal when each ran exactly once.
type AgentCount struct {
	Node     string `json:"node"`
	Runs     int64  `json:"runs"`
	Distinct int    `json:"distinct"`
	Sessions int64  `json:"sessions"`
}

// Stats is GET /stats.
type Stats struct {
	Count       int    `json:"count"`
	Enrolled    int64  `json:"enrolled"`
	EnrollError string `json:"enroll_error,omitempty"`
	Running     bool   `json:"running"`
	Sessions    int64  `json:"sessions"`
	// GCCycles is the process's completed GC cycles: a collection in a
	// simulator during a measurement is CPU taken from the controller's
	// cores on a shared machine.
	GCCycles uint64 `json:"gc_cycles"`
}

// Commands is GET /commands.
type Commands struct {
	Commands []CommandSeen `json:"commands"`
	Agents   []AgentCount  `json:"agents"`
}

// NewAgents prepares Count virtual agents; Enroll enrolls them.
func NewAgents(opts AgentsOptions) (*Agents, error) {
	if opts.Count <= 0 {
		return nil, errors.New("count must be positive")
	}
	if opts.Controller == "" || opts.Token == "" {
		return nil, errors.New("controller and token are required")
	}
	if opts.EnrollParallel <= 0 {
		opts.EnrollParallel = 2
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Agents{opts: opts, log: opts.Logger}
	for i := range opts.Count {
		s.agents = append(s.agents, &simAgent{name: fmt.Sprintf("%s%05d", opts.NamePrefix, i), st: state.OpenMemory(), seen: map[string]*CommandSeen{}})
	}
	return s, nil
}

// Enroll enrolls every agent (a join token and a CSR over TLS each, the
// real agent.Enroll), a few at a time, and builds its agent. The identities
// stay in memory for the life of the process, so one enrolled fleet serves
// every phase of a benchmark.
func (s *Agents) Enroll(ctx context.Context) error {
	base, err := (&inventory.Collector{}).Collect(ctx)
	if err != nil {
		return fmt.Errorf("host inventory: %w", err)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.opts.EnrollParallel)
	for _, sa := range s.agents {
		g.Go(func() error {
			id, err := agent.Enroll(gctx, agent.EnrollOptions{Controller: s.opts.Controller, Token: s.opts.Token, Hostname: sa.name, MachineID: machineID(sa.name), State: sa.st})
			if err != nil {
				return fmt.Errorf("enroll %s: %w", sa.name, err)
			}
			sa.nodeID = id
			if err := s.build(gctx, sa, base); err != nil {
				return fmt.Errorf("agent %s: %w", sa.name, err)
			}
			s.enrolled.Add(1)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		msg := err.Error()
		s.enrollErr.Store(&msg)
		return err
	}
	return nil
}

func machineID(name string) string {
	sum := sha256.Sum256([]byte("fleetsim/" + name))
	return hex.EncodeToString(sum[:16])
}

// build makes the agent: the real library with in-memory state, an
// inventory of this host under the agent's own name and machine id, and a
// GPU snapshot read once from a mock backend seeded by the name.
func (s *Agents) build(ctx context.Context, sa *simAgent, base *hostv1.Inventory) error {
	inv := proto.Clone(base).(*hostv1.Inventory)
	inv.Hostname, inv.MachineId = sa.name, machineID(sa.name)
	sum := sha256.Sum256([]byte("boot/" + sa.name))
	sa.inv = &staticInventory{inv: inv, bootID: hex.EncodeToString(sum[:16])}
	if b := s.opts.GPUBackend; b != "" && b != gpu.BackendNone {
		snap, err := snapshotGPUs(ctx, b, sa.name, s.log)
		if err != nil {
			return err
		}
		sa.gpus = snap
	}
	opts := agent.Options{
		State:          sa.st,
		Inventory:      sa.inv,
		Logger:         s.log.With("agent", sa.name),
		BackoffInitial: s.opts.BackoffInitial,
		BackoffMax:     s.opts.BackoffMax,
		Transport:      &watchedTransport{inner: &transport.GRPC{State: sa.st}, sa: sa},
		// The handler of inventory.collect counts its runs, so the harness
		// can check that each delivered command ran exactly once; what it
		// reports is the agent's inventory.
		Handlers: map[string]agent.Handler{command.InventoryCollect: func(ctx context.Context, _ map[string]string) (map[string]string, error) {
			sa.runs.Add(1)
			return map[string]string{"hostname": sa.inv.inv.GetHostname()}, nil
		}},
	}
	if sa.gpus != nil {
		opts.GPU = sa.gpus
	}
	a, err := agent.New(opts)
	if err != nil {
		return err
	}
	sa.a = a
	return nil
}

// Start runs every agent's session loop (the real reconnect backoff
// included) until Stop; once per process.
func (s *Agents) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cancel != nil {
		// An agent.Agent runs once; a fresh process makes a fresh fleet.
		return errors.New("the agents were started already")
	}
	if int(s.enrolled.Load()) != len(s.agents) {
		return fmt.Errorf("only %d of %d agents enrolled", s.enrolled.Load(), len(s.agents))
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel, s.running = cancel, true
	for _, sa := range s.agents {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := sa.a.Run(ctx); err != nil {
				s.log.Error("agent run ended", "agent", sa.name, "error", err)
			}
		}()
	}
	return nil
}

// Stop ends every agent's session and waits for them.
func (s *Agents) Stop() {
	s.mu.Lock()
	cancel, running := s.cancel, s.running
	s.running = false
	s.mu.Unlock()
	if running {
		cancel()
		s.wg.Wait()
	}
}

func (s *Agents) stats() Stats {
	st := Stats{Count: len(s.agents), Enrolled: s.enrolled.Load()}
	if e := s.enrollErr.Load(); e != nil {
		st.EnrollError = *e
	}
	s.mu.Lock()
	st.Running = s.running
	s.mu.Unlock()
	for _, sa := range s.agents {
		st.Sessions += sa.sessions.Load()
	}
	gc := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(gc)
	if gc[0].Value.Kind() == metrics.KindUint64 {
		st.GCCycles = gc[0].Value.Uint64()
	}
	return st
}

func (s *Agents) commands() Commands {
	var out Commands
	for _, sa := range s.agents {
		sa.mu.Lock()
		for _, c := range sa.seen {
			out.Commands = append(out.Commands, *c)
		}
		distinct := len(sa.seen)
		sa.mu.Unlock()
		out.Agents = append(out.Agents, AgentCount{Node: sa.nodeID, Runs: sa.runs.Load(), Distinct: distinct, Sessions: sa.sessions.Load()})
	}
	return out
}

// Handler is the control API:
//
//	GET  /stats     Stats
//	POST /start     run every agent
//	POST /stop      stop every agent
//	GET  /commands  Commands: what each agent saw of each command
//	GET  /debug/pprof/profile  a CPU profile (pprof)
func (s *Agents) Handler() http.Handler {
	mux := http.NewServeMux()
	writeJSON := func(w http.ResponseWriter, v any) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	}
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, s.stats()) })
	mux.HandleFunc("GET /commands", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, s.commands()) })
	mux.HandleFunc("POST /start", func(w http.ResponseWriter, _ *http.Request) {
		if err := s.Start(); err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
		}
	})
	mux.HandleFunc("POST /stop", func(w http.ResponseWriter, _ *http.Request) { s.Stop() })
	// The simulators' own CPU is half of P3's on a shared machine: the
	// harness profiles them too.
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	return mux
}

// ServeControl serves Handler on lis until ctx ends.
func ServeControl(ctx context.Context, lis net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// staticInventory is this host's inventory under a virtual agent's name:
// collecting the real host for each of thousands of agents every minute
// would measure the simulator's /proc reads.
type staticInventory struct {
	inv    *hostv1.Inventory
	bootID string
}

func (s *staticInventory) Collect(ctx context.Context) (*hostv1.Inventory, error) {
	return proto.Clone(s.inv).(*hostv1.Inventory), ctx.Err()
}

func (s *staticInventory) BootID() string { return s.bootID }

// gpuSnapshot is what a mock backend reported once. A live mock per agent
// runs an XID watcher that wakes twice a second: 10,000 of them would cost
// the simulator more than the controller it measures.
type gpuSnapshot struct {
	inv    gpu.Inventory
	health []gpu.Health
}

func snapshotGPUs(ctx context.Context, backend, seed string, log *slog.Logger) (*gpuSnapshot, error) {
	src, err := gpu.Open(backend, gpu.Options{MockSeed: seed, Logger: log})
	if err != nil {
		return nil, err
	}
	defer src.Close()
	inv, err := src.Inventory(ctx)
	if err != nil {
		return nil, err
	}
	h, err := src.Health(ctx)
	if err != nil {
		return nil, err
	}
	return &gpuSnapshot{inv: inv, health: h}, nil
}

func (g *gpuSnapshot) Inventory(ctx context.Context) (gpu.Inventory, error) { return g.inv, ctx.Err() }
func (g *gpuSnapshot) Health(ctx context.Context) ([]gpu.Health, error)     { return g.health, ctx.Err() }

// watchedTransport is the agent's real gRPC transport, recording what the
// agent's wire carries: sessions opened, commands delivered, results sent.
type watchedTransport struct {
	inner session.Transport
	sa    *simAgent
}

func (t *watchedTransport) Connect(ctx context.Context) (session.Stream, error) {
	st, err := t.inner.Connect(ctx)
	if err != nil {
		return nil, err
	}
	t.sa.sessions.Add(1)
	return &watchedStream{Stream: st, sa: t.sa}, nil
}

// watchedStream notes command deliveries and results as they pass.
type watchedStream struct {
	session.Stream
	sa *simAgent
}

func (s *watchedStream) Recv() (*agentv1.ConnectResponse, error) {
	m, err := s.Stream.Recv()
	if c := m.GetCommand(); c != nil {
		s.sa.note(c.GetId(), true)
	}
	return m, err
}

func (s *watchedStream) Send(m *agentv1.ConnectRequest) error {
	err := s.Stream.Send(m)
	if r := m.GetCommandResult(); r != nil && err == nil {
		s.sa.note(r.GetCommandId(), false)
	}
	return err
}

func (sa *simAgent) note(id string, delivery bool) {
	now := time.Now().UnixNano()
	sa.mu.Lock()
	defer sa.mu.Unlock()
	c := sa.seen[id]
	if c == nil {
		c = &CommandSeen{Node: sa.nodeID, ID: id}
		sa.seen[id] = c
	}
	if delivery {
		if c.Deliveries == 0 {
			c.FirstDelivery = now
		}
		c.Deliveries++
	} else {
		if c.Results == 0 {
			c.FirstResult = now
		}
		c.Results++
	}
}
