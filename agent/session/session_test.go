package session_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/agent/session"
	"github.com/bud-ecosystem/budfleet/agent/transport"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	siemv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/siem/v1"
	"github.com/bud-ecosystem/budfleet/version"
)

// module is a session.Module made of funcs.
type module struct {
	name     string
	handlers []session.Handler
	run      func(ctx context.Context, s *session.Session) error
}

func (m *module) Name() string                { return m.name }
func (m *module) Handlers() []session.Handler { return m.handlers }
func (m *module) Run(ctx context.Context, s *session.Session) error {
	if m.run == nil {
		return nil
	}
	return m.run(ctx, s)
}

// syncBuffer is a log sink several goroutines may write.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func newRunner(t *testing.T, tr session.Transport, log io.Writer, modules ...session.Module) *session.Runner {
	t.Helper()
	if log == nil {
		log = io.Discard
	}
	r, err := session.NewRunner(session.Options{NodeID: "node-1", Transport: tr, Modules: modules, Logger: slog.New(slog.NewTextHandler(log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// start runs one session in the background; the returned func waits for
// Run's result.
func start(t *testing.T, ctx context.Context, r *session.Runner) func() error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	return func() error {
		t.Helper()
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return")
			return nil
		}
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func welcome(hb, full time.Duration) *agentv1.ConnectResponse {
	return &agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Welcome{Welcome: &agentv1.Welcome{HeartbeatIntervalMs: hb.Milliseconds(), FullInventoryIntervalMs: full.Milliseconds()}}}
}

func command(id string) *agentv1.ConnectResponse {
	return &agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Command{Command: &agentv1.Command{Id: id}}}
}

// The session opens with a hello naming the node and this build; modules
// start only after the welcome and see its intervals; their messages go
// out through the one writer; controller messages reach the module that
// registered their kind.
func TestSessionHelloWelcomeDispatch(t *testing.T) {
	ctx := testCtx(t)
	fake := transport.NewFake()
	welcomed := make(chan session.Welcome, 1)
	commands := make(chan string, 4)
	sender := &module{name: "sender", run: func(ctx context.Context, s *session.Session) error {
		welcomed <- s.Welcome()
		for i := range 3 {
			if err := s.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Heartbeat{Heartbeat: &agentv1.Heartbeat{Seq: uint64(i + 1)}}}); err != nil {
				return err
			}
		}
		<-ctx.Done()
		return nil
	}}
	taker := &module{name: "taker", handlers: []session.Handler{session.On(func(_ context.Context, _ *session.Session, m *agentv1.ConnectResponse_Command) error {
		commands <- m.Command.GetId()
		return nil
	})}}
	r := newRunner(t, fake, nil, sender, taker)
	runCtx, stop := context.WithCancel(ctx)
	wait := start(t, runCtx, r)

	peer, err := fake.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	first, err := peer.Recv(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h := first.GetHello(); h.GetNodeId() != "node-1" || h.GetAgentVersion() != version.Version {
		t.Fatalf("first message %v; want a hello for node-1, version %s", first, version.Version)
	}
	select {
	case w := <-welcomed:
		t.Fatalf("a module ran before the welcome (saw %+v)", w)
	case <-time.After(50 * time.Millisecond):
	}
	if err := peer.Send(welcome(1500*time.Millisecond, 0)); err != nil {
		t.Fatal(err)
	}
	if w := <-welcomed; w.HeartbeatInterval != 1500*time.Millisecond || w.FullInventoryInterval != session.DefaultFullInventoryInterval {
		t.Errorf("module saw %+v; want the welcome's 1.5s heartbeat and the default full-inventory interval", w)
	}
	for i := range 3 {
		m, err := peer.Recv(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if m.GetHeartbeat().GetSeq() != uint64(i+1) {
			t.Errorf("message %d = %v; want heartbeat seq %d", i, m, i+1)
		}
	}
	for _, id := range []string{"c1", "c2"} {
		if err := peer.Send(command(id)); err != nil {
			t.Fatal(err)
		}
		if got := <-commands; got != id {
			t.Errorf("handler got %s, want %s", got, id)
		}
	}

	stop()
	if err := wait(); err != nil {
		t.Errorf("Run after cancel = %v, want nil", err)
	}
	// The agent half-closes and then releases the stream.
	if _, err := peer.Recv(ctx); err != io.EOF {
		t.Errorf("controller side after the session ended: %v, want io.EOF", err)
	}
	select {
	case <-peer.Closed():
	case <-time.After(5 * time.Second):
		t.Error("the stream was not closed")
	}
}

// A message no module registered is logged and skipped; the session and the
// messages behind it carry on.
func TestSessionUnhandledMessageIgnored(t *testing.T) {
	ctx := testCtx(t)
	fake := transport.NewFake()
	var log syncBuffer
	commands := make(chan string, 4)
	taker := &module{name: "taker", handlers: []session.Handler{session.On(func(_ context.Context, _ *session.Session, m *agentv1.ConnectResponse_Command) error {
		commands <- m.Command.GetId()
		return nil
	})}}
	runCtx, stop := context.WithCancel(ctx)
	wait := start(t, runCtx, newRunner(t, fake, &log, taker))
	peer, _ := fake.Accept(ctx)
	_, _ = peer.Recv(ctx)
	_ = peer.Send(welcome(time.Second, time.Minute))
	for _, m := range []*agentv1.ConnectResponse{
		{Msg: &agentv1.ConnectResponse_SiemConfig{SiemConfig: &siemv1.ConfigPush{Version: 1}}}, // nobody here takes it
		{},                      // a kind newer than this agent: no oneof set
		welcome(time.Second, 0), // a second welcome
		command("after"),
	} {
		if err := peer.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case id := <-commands:
		if id != "after" {
			t.Errorf("got command %s", id)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the message after the unhandled ones was not handled")
	}
	if n := strings.Count(log.String(), "ignoring an unexpected message from the controller"); n != 3 {
		t.Errorf("logged %d ignored messages, want 3:\n%s", n, log.String())
	}
	stop()
	if err := wait(); err != nil {
		t.Errorf("Run = %v", err)
	}
}

// The session ends, with the reason, when the controller ends the stream,
// when a handler fails or when a module's loop fails; Send then fails too.
func TestSessionEnds(t *testing.T) {
	errHandler := errors.New("handler failed")
	errLoop := errors.New("loop failed")
	for name, tc := range map[string]struct {
		end  func(p *transport.Peer)
		loop error
		want error
	}{
		"stream error":  {end: func(p *transport.Peer) { p.End(io.ErrUnexpectedEOF) }, want: io.ErrUnexpectedEOF},
		"handler error": {end: func(p *transport.Peer) { _ = p.Send(command("boom")) }, want: errHandler},
		"loop error":    {loop: errLoop, want: errLoop},
	} {
		t.Run(name, func(t *testing.T) {
			ctx := testCtx(t)
			fake := transport.NewFake()
			sendErr := make(chan error, 1)
			m := &module{name: "m",
				handlers: []session.Handler{session.On(func(context.Context, *session.Session, *agentv1.ConnectResponse_Command) error { return errHandler })},
				run: func(ctx context.Context, s *session.Session) error {
					if tc.loop != nil {
						return tc.loop
					}
					<-ctx.Done()
					sendErr <- s.Send(&agentv1.ConnectRequest{})
					return nil
				}}
			wait := start(t, ctx, newRunner(t, fake, nil, m))
			peer, _ := fake.Accept(ctx)
			_, _ = peer.Recv(ctx)
			_ = peer.Send(welcome(time.Second, time.Minute))
			if tc.end != nil {
				tc.end(peer)
			}
			if err := wait(); !errors.Is(err, tc.want) {
				t.Errorf("Run = %v, want %v", err, tc.want)
			}
			if tc.loop == nil {
				if err := <-sendErr; !errors.Is(err, tc.want) {
					t.Errorf("Send after the end = %v, want %v", err, tc.want)
				}
			}
		})
	}
}

// Without a welcome there is no session: the modules never run.
func TestSessionNeedsWelcome(t *testing.T) {
	ctx := testCtx(t)
	fake := transport.NewFake()
	ran := make(chan struct{}, 1)
	m := &module{name: "m", run: func(context.Context, *session.Session) error { ran <- struct{}{}; return nil }}
	wait := start(t, ctx, newRunner(t, fake, nil, m))
	peer, _ := fake.Accept(ctx)
	_, _ = peer.Recv(ctx)
	_ = peer.Send(command("too-early"))
	if err := wait(); err == nil || !strings.Contains(err.Error(), "did not answer the hello with a welcome") {
		t.Errorf("Run = %v; want the missing welcome", err)
	}
	select {
	case <-ran:
		t.Error("a module ran without a welcome")
	default:
	}

	// A refused connect is the session's error.
	refused := errors.New("connection refused")
	fake.Refuse(refused)
	if err := newRunner(t, fake, nil, m).Run(ctx); !errors.Is(err, refused) {
		t.Errorf("Run over a refused connect = %v", err)
	}
}

// A message kind is one module's: a second claim, a kind that is not a
// controller message, and the welcome (the session's own) are refused when
// the Runner is made.
func TestNewRunnerRefusesBadRegistrations(t *testing.T) {
	onCommand := session.On(func(context.Context, *session.Session, *agentv1.ConnectResponse_Command) error { return nil })
	for name, tc := range map[string]struct {
		modules []session.Module
		want    string
	}{
		"kind twice": {[]session.Module{
			&module{name: "commands", handlers: []session.Handler{onCommand}},
			&module{name: "kubelet", handlers: []session.Handler{onCommand}},
		}, `both module "commands" and module "kubelet"`},
		"module twice": {[]session.Module{&module{name: "a"}, &module{name: "a"}}, `module "a" registered twice`},
		"agent message": {[]session.Module{&module{name: "m", handlers: []session.Handler{
			session.On(func(context.Context, *session.Session, *agentv1.ConnectRequest_Heartbeat) error { return nil }),
		}}}, "not a ConnectResponse message"},
		"inner message": {[]session.Module{&module{name: "m", handlers: []session.Handler{
			session.On(func(context.Context, *session.Session, *agentv1.Command) error { return nil }),
		}}}, "not a ConnectResponse message"},
		"welcome": {[]session.Module{&module{name: "m", handlers: []session.Handler{
			session.On(func(context.Context, *session.Session, *agentv1.ConnectResponse_Welcome) error { return nil }),
		}}}, "the session itself takes"},
		"zero handler": {[]session.Module{&module{name: "m", handlers: []session.Handler{{}}}}, "not made with On"},
	} {
		_, err := session.NewRunner(session.Options{NodeID: "n", Transport: transport.NewFake(), Modules: tc.modules})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: NewRunner = %v; want an error with %q", name, err, tc.want)
		}
	}
	if _, err := session.NewRunner(session.Options{NodeID: "n", Modules: nil}); err == nil {
		t.Error("NewRunner without a transport succeeded")
	}
}

// The hello carries the boot id when the runner knows how to read it, read
// anew for every session.
func TestSessionHelloBootID(t *testing.T) {
	ctx := testCtx(t)
	fake := transport.NewFake()
	ids := []string{"boot-1", "boot-2"}
	n := 0
	r, err := session.NewRunner(session.Options{NodeID: "node-1", Transport: fake, BootID: func() string { n++; return ids[n-1] }})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range ids {
		wait := start(t, ctx, r)
		peer, err := fake.Accept(ctx)
		if err != nil {
			t.Fatal(err)
		}
		first, err := peer.Recv(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if h := first.GetHello(); h.GetBootId() != want || h.GetNodeId() != "node-1" {
			t.Errorf("hello %v; want boot id %s", first, want)
		}
		peer.End(io.ErrUnexpectedEOF)
		_ = wait()
	}
	// Without BootID the hello has none.
	wait := start(t, ctx, newRunner(t, fake, nil))
	peer, _ := fake.Accept(ctx)
	if first, _ := peer.Recv(ctx); first.GetHello().GetBootId() != "" {
		t.Errorf("hello without a BootID source: %v", first)
	}
	peer.End(io.ErrUnexpectedEOF)
	_ = wait()
}
