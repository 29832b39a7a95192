package agent

// The agent's sessions over the fake transport: what a controller sees on
// the stream, without one running.

import (
	"bytes"
	"context"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bud-ecosystem/budfleet/agent/gpu"
	"github.com/bud-ecosystem/budfleet/agent/state"
	"github.com/bud-ecosystem/budfleet/agent/transport"
	"github.com/bud-ecosystem/budfleet/pki"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	hostv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/host/v1"
	siemv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/siem/v1"
	"github.com/bud-ecosystem/budfleet/version"
)

// logBuffer collects an agent's log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// running is an Agent running over a fake transport.
type running struct {
	t    *testing.T
	ctx  context.Context // bounds the test's waits
	a    *Agent
	fake *transport.Fake
	log  *logBuffer
	stop func() error
}

// runAgent starts opts' agent over opts.Transport, a fake (a new one when
// unset), with fast reconnects;
// opts.State must hold an identity whose certificate parses (identityState).
func runAgent(t *testing.T, opts Options) *running {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	r := &running{t: t, ctx: ctx, log: &logBuffer{}}
	if f, ok := opts.Transport.(*transport.Fake); ok {
		r.fake = f
	} else {
		r.fake = transport.NewFake()
		opts.Transport = r.fake
	}
	opts.Logger = slog.New(slog.NewTextHandler(r.log, nil))
	if opts.Inventory == nil {
		opts.Inventory = &fakeInventory{host: &hostv1.Inventory{Hostname: "node-a"}}
	}
	if opts.BackoffInitial == 0 {
		opts.BackoffInitial, opts.BackoffMax = 10*time.Millisecond, 40*time.Millisecond
	}
	a, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	r.a = a
	agentCtx, stopAgent := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(agentCtx) }()
	var once sync.Once
	var runErr error
	r.stop = func() error {
		once.Do(func() {
			stopAgent()
			select {
			case runErr = <-done:
			case <-time.After(10 * time.Second):
				t.Error("Agent.Run did not return after cancel")
			}
		})
		return runErr
	}
	t.Cleanup(func() { r.stop() })
	return r
}

// session takes the agent's next stream, checks its hello and welcomes it.
func (r *running) session(heartbeat, fullInventory time.Duration) *transport.Peer {
	r.t.Helper()
	peer, err := r.fake.Accept(r.ctx)
	if err != nil {
		r.t.Fatalf("the agent did not connect: %v", err)
	}
	first, err := peer.Recv(r.ctx)
	if err != nil {
		r.t.Fatal(err)
	}
	if h := first.GetHello(); h.GetNodeId() != "node-1" || h.GetAgentVersion() != version.Version {
		r.t.Fatalf("first message %v; want a hello for node-1", first)
	}
	if err := peer.Send(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Welcome{Welcome: &agentv1.Welcome{
		HeartbeatIntervalMs: heartbeat.Milliseconds(), FullInventoryIntervalMs: fullInventory.Milliseconds(),
	}}}); err != nil {
		r.t.Fatal(err)
	}
	return peer
}

// next returns the agent's next message that match accepts, skipping others.
func (r *running) next(peer *transport.Peer, what string, match func(*agentv1.ConnectRequest) bool) *agentv1.ConnectRequest {
	r.t.Helper()
	for {
		m, err := peer.Recv(r.ctx)
		if err != nil {
			r.t.Fatalf("waiting for %s: %v", what, err)
		}
		if match(m) {
			return m
		}
	}
}

// collect returns what the agent sends in the next d.
func (r *running) collect(peer *transport.Peer, d time.Duration) []*agentv1.ConnectRequest {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(r.ctx, d)
	defer cancel()
	var out []*agentv1.ConnectRequest
	for {
		m, err := peer.Recv(ctx)
		if err != nil {
			return out
		}
		out = append(out, m)
	}
}

func isHeartbeat(m *agentv1.ConnectRequest) bool { return m.GetHeartbeat() != nil }
func isInventory(m *agentv1.ConnectRequest) bool { return m.GetInventory() != nil }
func isResult(m *agentv1.ConnectRequest) bool    { return m.GetCommandResult() != nil }
func isRenewal(m *agentv1.ConnectRequest) bool   { return m.GetRenewRequest() != nil }

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func freshIdentity(t *testing.T) *state.DB {
	t.Helper()
	st, _ := identityState(t, time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour))
	return st
}

// Heartbeats come at the welcome's interval, numbered from 1 each session,
// stamped, with the SIEM status; the inventory goes at the start and then
// only when it changed, or when the welcome's full interval has passed.
func TestSessionHeartbeatsAndInventory(t *testing.T) {
	inv := &fakeInventory{host: &hostv1.Inventory{Hostname: "node-a"}}
	fwd := &fakeSIEM{}
	r := runAgent(t, Options{State: freshIdentity(t), Inventory: inv, InventoryCheck: 10 * time.Millisecond, SIEM: fwd, LocalSIEM: localSIEM()})
	peer := r.session(40*time.Millisecond, time.Hour)

	msgs := r.collect(peer, 400*time.Millisecond)
	var seqs []uint64
	var inventories []*hostv1.Inventory
	for _, m := range msgs {
		if hb := m.GetHeartbeat(); hb != nil {
			seqs = append(seqs, hb.GetSeq())
			if hb.GetSentAt() == nil || hb.GetSiem().GetConfigSource() != "local" {
				t.Errorf("heartbeat %v; want a time and the SIEM status (local config)", hb)
			}
		}
		if i := m.GetInventory(); i != nil {
			inventories = append(inventories, i)
		}
	}
	// 400ms at 40ms: about ten, in order from 1.
	if len(seqs) < 4 || len(seqs) > 14 {
		t.Errorf("%d heartbeats in 400ms at a 40ms interval", len(seqs))
	}
	for i, s := range seqs {
		if s != uint64(i+1) {
			t.Fatalf("heartbeat seqs %v; want 1, 2, 3, ...", seqs)
		}
	}
	if len(inventories) != 1 || inventories[0].GetHostname() != "node-a" {
		t.Fatalf("inventories %v; want node-a once (checked every 10ms, unchanged)", inventories)
	}

	inv.mu.Lock()
	inv.host = &hostv1.Inventory{Hostname: "node-b"}
	inv.mu.Unlock()
	if m := r.next(peer, "the changed inventory", isInventory); m.GetInventory().GetHostname() != "node-b" {
		t.Errorf("inventory after the change: %v", m)
	}

	// Next session: seq starts again; an unchanged inventory is resent in
	// full every interval the welcome set.
	peer.End(status.Error(codes.Unavailable, "controller is shutting down"))
	peer = r.session(40*time.Millisecond, 100*time.Millisecond)
	if m := r.next(peer, "a heartbeat", isHeartbeat); m.GetHeartbeat().GetSeq() != 1 {
		t.Errorf("first heartbeat of the new session has seq %d", m.GetHeartbeat().GetSeq())
	}
	n := 0
	for _, m := range r.collect(peer, 450*time.Millisecond) {
		if isInventory(m) {
			n++
		}
	}
	if n < 2 || n > 6 {
		t.Errorf("%d unchanged inventories in 450ms with a 100ms full interval", n)
	}
	if err := r.stop(); err != nil {
		t.Errorf("Run = %v", err)
	}
}

// A command delivered again, on the same session or after a reconnect, runs
// once; every delivery is answered with the stored result.
func TestSessionCommandRunsOnceAcrossRedelivery(t *testing.T) {
	h := &counter{out: map[string]string{"lines": "3"}}
	r := runAgent(t, Options{State: freshIdentity(t), Handlers: map[string]Handler{"test.echo": h.handle}})
	deliver := func(peer *transport.Peer) *agentv1.CommandResult {
		t.Helper()
		if err := peer.Send(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Command{Command: cmd("c1", "test.echo", map[string]string{"p": "v"})}}); err != nil {
			t.Fatal(err)
		}
		return r.next(peer, "a command result", isResult).GetCommandResult()
	}

	peer := r.session(time.Second, time.Hour)
	for want := uint32(1); want <= 2; want++ {
		res := deliver(peer)
		if res.GetCommandId() != "c1" || !res.GetSuccess() || res.GetOutput()["lines"] != "3" || res.GetDeliveries() != want || res.GetFinishedAt() == nil {
			t.Errorf("result of delivery %d: %v", want, res)
		}
	}
	peer.End(status.Error(codes.Unavailable, "gone"))
	peer = r.session(time.Second, time.Hour)
	if res := deliver(peer); !res.GetSuccess() || res.GetDeliveries() != 3 {
		t.Errorf("result after the reconnect: %v", res)
	}
	if n := h.n.Load(); n != 1 {
		t.Errorf("the command ran %d times, want once", n)
	}
	if n := strings.Count(r.log.String(), "running command"); n != 1 {
		t.Errorf("logged %d runs", n)
	}
}

// A command running when its session breaks does not keep the agent off
// the controller: it reconnects at once and heartbeats while the command
// runs. A redelivery of the running command on the new session is not
// queued again; the result goes out on the new session when the command
// ends, and so does that of a command queued behind it on the old session.
// Each ran once.
func TestSessionReconnectsWhileACommandRuns(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	var ran []string
	handle := func(ctx context.Context, p map[string]string) (map[string]string, error) {
		mu.Lock()
		ran = append(ran, p["id"])
		mu.Unlock()
		if p["id"] == "slow" {
			<-release
		}
		return nil, nil
	}
	r := runAgent(t, Options{State: freshIdentity(t), Handlers: map[string]Handler{"test.run": handle}})
	send := func(peer *transport.Peer, id string) {
		t.Helper()
		if err := peer.Send(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Command{Command: cmd(id, "test.run", map[string]string{"id": id})}}); err != nil {
			t.Fatal(err)
		}
	}
	peer := r.session(time.Second, time.Hour)
	send(peer, "slow")
	eventually(t, "the slow command to start", func() bool { mu.Lock(); defer mu.Unlock(); return len(ran) == 1 })
	send(peer, "queued") // waits behind the slow one
	eventually(t, "the queued command in the worker's queue", func() bool {
		m := r.a.commands
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.queued["queued"] && len(m.work) == 1
	})
	peer.End(status.Error(codes.Unavailable, "gone"))

	// The new session opens and lives while the command still runs.
	peer = r.session(20*time.Millisecond, time.Hour)
	r.next(peer, "a heartbeat while the command runs", isHeartbeat)
	send(peer, "slow") // the controller delivers it again
	for _, m := range r.collect(peer, 100*time.Millisecond) {
		if isResult(m) {
			t.Fatalf("a result while the command still runs: %v", m)
		}
	}
	close(release)
	results := map[string]*agentv1.CommandResult{}
	for len(results) < 2 {
		res := r.next(peer, "the commands' results", isResult).GetCommandResult()
		if results[res.GetCommandId()] != nil {
			t.Errorf("a second result for %s: %v", res.GetCommandId(), res)
		}
		results[res.GetCommandId()] = res
	}
	for _, id := range []string{"slow", "queued"} {
		if res := results[id]; !res.GetSuccess() || res.GetDeliveries() != 1 {
			t.Errorf("%s: %v; want success on its first delivery", id, res)
		}
	}
	for _, m := range r.collect(peer, 100*time.Millisecond) {
		if isResult(m) {
			t.Errorf("an extra result: %v", m)
		}
	}
	send(peer, "queued") // delivered again: the stored result
	if res := r.next(peer, "the stored result", isResult).GetCommandResult(); res.GetCommandId() != "queued" || res.GetDeliveries() != 2 {
		t.Errorf("redelivered queued: %v; want its stored result, second delivery", res)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(ran) != 2 || ran[0] != "slow" || ran[1] != "queued" {
		t.Errorf("ran %v; want slow, then queued, once each", ran)
	}
}

// Two thirds into the certificate's life the agent asks for a new one with
// its own key; a refusal, a certificate from another CA and one for another
// node are not stored; a good one is, and the asking stops.
func TestSessionRenewal(t *testing.T) {
	now := time.Now()
	st, ca := identityState(t, now.Add(-2*time.Hour), now.Add(time.Hour)) // two thirds passed
	before, err := st.Identity()
	if err != nil {
		t.Fatal(err)
	}
	r := runAgent(t, Options{State: st})
	peer := r.session(time.Second, time.Hour)
	req := r.next(peer, "a renew request", isRenewal).GetRenewRequest()
	csr, err := pki.ParseCSR(req.GetCsrDer())
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.DecodeKey(before.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if !key.PublicKey.Equal(csr.PublicKey) || csr.Subject.CommonName != "node-1" {
		t.Fatalf("CSR for %v (%s); want the node's own key and name", csr.PublicKey, csr.Subject.CommonName)
	}
	respond := func(r *agentv1.RenewResponse) {
		t.Helper()
		if err := peer.Send(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_RenewResponse{RenewResponse: r}}); err != nil {
			t.Fatal(err)
		}
	}
	respond(&agentv1.RenewResponse{Error: "CA is offline"})
	respond(&agentv1.RenewResponse{CertificateDer: newTestCA(t).sign(t, csr.PublicKey, "node-1", now, now.Add(3*time.Hour)).Raw})
	respond(&agentv1.RenewResponse{CertificateDer: ca.sign(t, csr.PublicKey, "node-2", now, now.Add(3*time.Hour)).Raw})
	good := ca.sign(t, csr.PublicKey, "node-1", now, now.Add(3*time.Hour))
	respond(&agentv1.RenewResponse{CertificateDer: good.Raw})
	eventually(t, "the renewed certificate stored", func() bool {
		id, err := st.Identity()
		return err == nil && bytes.Equal(id.CertDER, good.Raw) && strings.Contains(r.log.String(), "node certificate renewed")
	})
	log := r.log.String()
	if !strings.Contains(log, "controller refused to renew the node certificate") || strings.Count(log, "does not verify or names another node") != 2 || !strings.Contains(log, "node certificate renewed") {
		t.Errorf("log:\n%s", log)
	}
	for _, m := range r.collect(peer, 200*time.Millisecond) {
		if isRenewal(m) {
			t.Fatal("asked again after a renewal")
		}
	}
	if id, _ := st.Identity(); !bytes.Equal(id.KeyPEM, before.KeyPEM) {
		t.Error("the key changed")
	}
}

// A SIEM configuration pushed over the session is applied with the agent's
// context, not the session's: forwarding goes on while the agent
// reconnects. The next heartbeat reports it.
func TestSessionSIEMPush(t *testing.T) {
	fwd := &fakeSIEM{}
	r := runAgent(t, Options{State: freshIdentity(t), SIEM: fwd})
	peer := r.session(20*time.Millisecond, time.Hour)
	if err := peer.Send(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_SiemConfig{SiemConfig: &siemv1.ConfigPush{Version: 3, Yaml: siemYAML("soc")}}}); err != nil {
		t.Fatal(err)
	}
	r.next(peer, "a heartbeat reporting version 3", func(m *agentv1.ConnectRequest) bool {
		s := m.GetHeartbeat().GetSiem()
		return s.GetConfigVersion() == 3 && s.GetConfigSource() == "controller"
	})
	// Stored after it is applied, so possibly after that heartbeat.
	eventually(t, "the push stored", func() bool {
		pc, ok, err := r.a.state.PushedSIEM()
		return err == nil && ok && pc.Version == 3
	})
	peer.End(status.Error(codes.Unavailable, "gone"))
	<-peer.Context().Done()
	if err := fwd.applyCtx().Err(); err != nil {
		t.Errorf("the forwarder's context ended with the session: %v", err)
	}
	r.session(20*time.Millisecond, time.Hour)
	if n := len(fwd.applies()); n != 1 {
		t.Errorf("%d applies; the reconnect should change nothing", n)
	}
	r.stop()
	if fwd.applyCtx().Err() == nil {
		t.Error("the forwarder's context outlived the agent")
	}
}

// GPU inventory and health go out at the start of a session.
func TestSessionGPUReports(t *testing.T) {
	src := &fakeGPUs{inv: gpu.Inventory{Available: true, GPUs: []gpu.GPU{{Index: 0, UUID: "GPU-1"}}}, health: []gpu.Health{{UUID: "GPU-1", State: gpu.Healthy}}}
	r := runAgent(t, Options{State: freshIdentity(t), GPU: src, GPUHealthInterval: time.Hour, InventoryCheck: time.Hour})
	peer := r.session(time.Second, time.Hour)
	inv := r.next(peer, "the GPU inventory", func(m *agentv1.ConnectRequest) bool { return m.GetGpuInventory() != nil }).GetGpuInventory()
	if len(inv.GetGpus()) != 1 || inv.GetGpus()[0].GetUuid() != "GPU-1" {
		t.Errorf("GPU inventory %v", inv)
	}
	health := r.next(peer, "GPU health", func(m *agentv1.ConnectRequest) bool { return m.GetGpuHealth() != nil }).GetGpuHealth()
	if len(health.GetGpus()) != 1 || health.GetGpus()[0].GetUuid() != "GPU-1" {
		t.Errorf("GPU health %v", health)
	}
}

// A message this agent has no module for is logged and skipped; the
// session carries on.
func TestSessionUnknownMessageIgnored(t *testing.T) {
	h := &counter{}
	r := runAgent(t, Options{State: freshIdentity(t), Handlers: map[string]Handler{"test.echo": h.handle}})
	peer := r.session(time.Second, time.Hour)
	for _, m := range []*agentv1.ConnectResponse{
		{}, // a kind from a newer controller: no oneof field this build knows
		{Msg: &agentv1.ConnectResponse_Welcome{Welcome: &agentv1.Welcome{}}},
		{Msg: &agentv1.ConnectResponse_Command{Command: cmd("c1", "test.echo", nil)}},
	} {
		if err := peer.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	if res := r.next(peer, "the result", isResult).GetCommandResult(); !res.GetSuccess() {
		t.Errorf("result %v", res)
	}
	if n := strings.Count(r.log.String(), "ignoring an unexpected message from the controller"); n != 2 {
		t.Errorf("logged %d ignored messages, want 2", n)
	}
	if r.fake.Connects() != 1 {
		t.Errorf("%d connects; an unknown message must not end the session", r.fake.Connects())
	}
}

// Refused connects and broken streams are retried after a backoff; a
// refusal that needs an operator says so.
func TestSessionReconnectsWithBackoff(t *testing.T) {
	st := freshIdentity(t)
	fake := transport.NewFake()
	fake.Refuse(status.Error(codes.Unavailable, "connection refused"), status.Error(codes.PermissionDenied, "node is not enrolled"))
	r := runAgent(t, Options{State: st, Transport: fake, BackoffInitial: 20 * time.Millisecond, BackoffMax: 80 * time.Millisecond})
	start := time.Now()
	peer := r.session(time.Second, time.Hour)
	if n := fake.Connects(); n != 3 {
		t.Errorf("%d connects before the session, want 3", n)
	}
	log := r.log.String()
	if strings.Count(log, "session with controller ended") != 1 || strings.Count(log, "controller refuses this node; an operator must act") != 1 {
		t.Errorf("log after two refusals:\n%s", log)
	}
	// Full jitter under a ceiling that doubles: 20ms, then 40ms.
	waits := retryWaits(t, log)
	if len(waits) != 2 || waits[0] <= 0 || waits[0] > 20*time.Millisecond || waits[1] <= 0 || waits[1] > 40*time.Millisecond {
		t.Errorf("waited %v; want one wait in (0, 20ms] then one in (0, 40ms]", waits)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %s to get past two refusals", d)
	}
	peer.End(status.Error(codes.Unavailable, "controller is shutting down"))
	r.session(time.Second, time.Hour)
	if n := strings.Count(r.log.String(), "session with controller ended"); n != 2 {
		t.Errorf("%d ended sessions logged, want 2", n)
	}
	if !strings.Contains(r.log.String(), "controller is shutting down") {
		t.Error("the log does not say why the session ended")
	}
	if waits := retryWaits(t, r.log.String()); len(waits) != 3 || waits[2] > 80*time.Millisecond {
		t.Errorf("waited %v; want a third wait under the 80ms cap", waits)
	}
	if err := r.stop(); err != nil {
		t.Errorf("Run = %v, want nil on cancel", err)
	}
}

var retryIn = regexp.MustCompile(`retry_in=(\S+)`)

// retryWaits returns the reconnect waits the agent logged, in order.
func retryWaits(t *testing.T, log string) []time.Duration {
	t.Helper()
	var out []time.Duration
	for _, m := range retryIn.FindAllStringSubmatch(log, -1) {
		d, err := time.ParseDuration(m[1])
		if err != nil {
			t.Fatalf("retry_in=%s: %v", m[1], err)
		}
		out = append(out, d)
	}
	return out
}

// fakeGPUs is a GPUSource with fixed answers.
type fakeGPUs struct {
	inv    gpu.Inventory
	health []gpu.Health
}

func (f *fakeGPUs) Inventory(context.Context) (gpu.Inventory, error) { return f.inv, nil }
func (f *fakeGPUs) Health(context.Context) ([]gpu.Health, error)     { return f.health, nil }
