package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bud-ecosystem/budfleet/agent/inventory"
	"github.com/bud-ecosystem/budfleet/agent/state"
	"github.com/bud-ecosystem/budfleet/command"
	"github.com/bud-ecosystem/budfleet/pki"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	hostv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/host/v1"
	"github.com/bud-ecosystem/budfleet/siem"
	"github.com/bud-ecosystem/budfleet/version"
)

// InventorySource collects the host inventory.
type InventorySource interface {
	Collect(ctx context.Context) (*hostv1.Inventory, error)
}

// Handler runs one kind of command. The returned output and message are
// reported to the controller; an error marks the command failed.
type Handler func(ctx context.Context, params map[string]string) (output map[string]string, err error)

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
	// Handlers adds or replaces command handlers by kind.
	Handlers map[string]Handler
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

var errCertExpired = errors.New("certificate expired")

// commandRecordTTL is how long the agent remembers a finished command.
const commandRecordTTL = 30 * 24 * time.Hour

// Agent is a node agent.
type Agent struct {
	opts     Options
	log      *slog.Logger
	state    *state.DB
	handlers map[string]Handler

	mu      sync.Mutex
	nodeID  string
	invSent chan *hostv1.Inventory // inventory.collect results to send now
	renewed chan struct{}          // a renewed certificate was stored
	siemErr string                 // why the last SIEM configuration was refused
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
	id, err := opts.State.Identity()
	if err != nil {
		if errors.Is(err, state.ErrNotEnrolled) {
			return nil, errors.New("agent is not enrolled: run 'bud-agent join --controller ADDR --token TOKEN' with the same --state-dir first")
		}
		return nil, err
	}
	a := &Agent{opts: opts, state: opts.State, nodeID: id.NodeID, invSent: make(chan *hostv1.Inventory, 1), renewed: make(chan struct{}, 1)}
	a.log = opts.Logger.With("node_id", id.NodeID)
	a.handlers = map[string]Handler{
		command.InventoryCollect: a.collectInventoryCommand,
	}
	for k, h := range opts.Handlers {
		a.handlers[k] = h
	}
	return a, nil
}

// NodeID returns the agent's node id.
func (a *Agent) NodeID() string { return a.nodeID }

// Run holds a session with the controller, reconnecting with capped
// exponential backoff and full jitter, until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	a.startSIEM(ctx)
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
		err := a.session(ctx)
		if ctx.Err() != nil {
			return nil
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
			return nil
		case <-time.After(wait):
		}
	}
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

func (a *Agent) dial() (*grpc.ClientConn, *x509.Certificate, error) {
	id, err := a.state.Identity()
	if err != nil {
		return nil, nil, err
	}
	addr := id.Controller
	if a.opts.Controller != "" {
		addr = a.opts.Controller
	}
	serverName := id.ServerName
	if a.opts.ServerName != "" {
		serverName = a.opts.ServerName
	} else if a.opts.Controller != "" {
		if serverName, err = serverNameFor(addr, ""); err != nil {
			return nil, nil, err
		}
	}
	key, err := pki.DecodeKey(id.KeyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("stored key: %w", err)
	}
	cert, err := x509.ParseCertificate(id.CertDER)
	if err != nil {
		return nil, nil, fmt.Errorf("stored certificate: %w", err)
	}
	if now := a.opts.Now(); now.After(cert.NotAfter) {
		return nil, nil, fmt.Errorf("%w: the node certificate expired at %s (the agent was offline longer than its lifetime); join again with a new token and an empty --state-dir", errCertExpired, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	ca, err := x509.ParseCertificate(id.CADER)
	if err != nil {
		return nil, nil, fmt.Errorf("stored CA: %w", err)
	}
	tc := pki.ClientTLS(ca, &tls.Certificate{Certificate: [][]byte{id.CertDER}, PrivateKey: key, Leaf: cert}, serverName)
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(credentials.NewTLS(tc)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
	)
	return conn, cert, err
}

// session runs one Connect stream to its end.
func (a *Agent) session(ctx context.Context) error {
	conn, cert, err := a.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stream, err := agentv1.NewAgentServiceClient(conn).Connect(sctx)
	if err != nil {
		return err
	}
	if err := stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{NodeId: a.nodeID, AgentVersion: version.Version}}}); err != nil {
		return recvErr(stream, err)
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	welcome := first.GetWelcome()
	if welcome == nil {
		return errors.New("controller did not answer the hello with a welcome")
	}
	hb := time.Duration(welcome.GetHeartbeatIntervalMs()) * time.Millisecond
	if hb <= 0 {
		hb = 10 * time.Second
	}
	fullInv := time.Duration(welcome.GetFullInventoryIntervalMs()) * time.Millisecond
	if fullInv <= 0 {
		fullInv = 10 * time.Minute
	}
	a.log.Info("connected to controller", "heartbeat_interval", hb)

	s := &sessionState{
		a:      a,
		stream: stream,
		out:    make(chan *agentv1.ConnectRequest, 16),
		cmds:   make(chan *agentv1.Command, 64),
		ctx:    sctx,
		runCtx: ctx,
	}
	var wg sync.WaitGroup
	run := func(f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil {
				cancel(err)
			}
		}()
	}
	run(s.sendLoop)
	run(func() error { return s.heartbeats(hb) })
	run(func() error { return s.inventoryLoop(fullInv) })
	run(func() error { return s.gpuLoop(fullInv) })
	run(func() error { return s.renewLoop(cert) })
	run(s.commandLoop)
	run(s.recvLoop)
	<-sctx.Done()
	wg.Wait()
	if err := context.Cause(sctx); !errors.Is(err, context.Canceled) || ctx.Err() == nil {
		return err
	}
	return nil
}

func recvErr(stream agentv1.AgentService_ConnectClient, sendErr error) error {
	// A failed Send hides the real status; Recv reports it.
	if _, err := stream.Recv(); err != nil {
		return err
	}
	return sendErr
}

type sessionState struct {
	a      *Agent
	stream agentv1.AgentService_ConnectClient
	out    chan *agentv1.ConnectRequest
	cmds   chan *agentv1.Command
	ctx    context.Context
	// runCtx outlives the session: forwarding keeps going while the agent
	// reconnects.
	runCtx context.Context
}

func (s *sessionState) send(m *agentv1.ConnectRequest) error {
	select {
	case s.out <- m:
		return nil
	case <-s.ctx.Done():
		return context.Cause(s.ctx)
	}
}

// sendLoop is the only writer of the stream.
func (s *sessionState) sendLoop() error {
	for {
		select {
		case <-s.ctx.Done():
			_ = s.stream.CloseSend()
			return nil
		case m := <-s.out:
			if err := s.stream.Send(m); err != nil {
				// recvLoop is already in Recv and will report the stream's
				// real status; a second concurrent Recv would never return.
				<-s.ctx.Done()
				return nil
			}
		}
	}
}

func (s *sessionState) recvLoop() error {
	for {
		m, err := s.stream.Recv()
		if err != nil {
			return err
		}
		switch msg := m.Msg.(type) {
		case *agentv1.ConnectResponse_Command:
			select {
			case s.cmds <- msg.Command:
			case <-s.ctx.Done():
				return nil
			}
		case *agentv1.ConnectResponse_RenewResponse:
			s.a.handleRenewal(msg.RenewResponse)
		case *agentv1.ConnectResponse_SiemConfig:
			s.a.handleSIEMPush(s.runCtx, msg.SiemConfig)
		default:
			s.a.log.Warn("ignoring an unexpected message from the controller")
		}
	}
}

func (s *sessionState) heartbeats(every time.Duration) error {
	t := time.NewTicker(every)
	defer t.Stop()
	var seq uint64
	for {
		seq++
		if err := s.send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Heartbeat{Heartbeat: &agentv1.Heartbeat{Seq: seq, SentAt: timestamppb.New(s.a.opts.Now()), Siem: s.a.siemStatus()}}}); err != nil {
			return nil
		}
		select {
		case <-s.ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// inventoryLoop sends the inventory at the start of a session, then when it
// changes, and in full every fullEvery.
func (s *sessionState) inventoryLoop(fullEvery time.Duration) error {
	t := time.NewTicker(s.a.opts.InventoryCheck)
	defer t.Stop()
	var last string
	var lastFull time.Time
	for {
		h, err := s.a.opts.Inventory.Collect(s.ctx)
		if err != nil && s.ctx.Err() == nil {
			s.a.log.Warn("collect inventory", "error", err)
		}
		now := s.a.opts.Now()
		if err == nil && (inventory.Fingerprint(h) != last || now.Sub(lastFull) >= fullEvery) {
			if s.send(inventoryMessage(h)) != nil {
				return nil
			}
			last, lastFull = inventory.Fingerprint(h), now
		}
		select {
		case <-s.ctx.Done():
			return nil
		case <-t.C:
		case h := <-s.a.invSent:
			if s.send(inventoryMessage(h)) != nil {
				return nil
			}
			last, lastFull = inventory.Fingerprint(h), s.a.opts.Now()
		}
	}
}

func inventoryMessage(h *hostv1.Inventory) *agentv1.ConnectRequest {
	return &agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Inventory{Inventory: h}}
}

func (a *Agent) collectInventoryCommand(ctx context.Context, _ map[string]string) (map[string]string, error) {
	h, err := a.opts.Inventory.Collect(ctx)
	if err != nil {
		return nil, err
	}
	// Replace a queued snapshot rather than block: the newest wins.
	select {
	case <-a.invSent:
	default:
	}
	a.invSent <- h
	return map[string]string{"hostname": h.Hostname, "fingerprint": inventory.Fingerprint(h)}, nil
}
