package controller

import (
	"context"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"

	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
	siemv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/siem/v1"
)

// agentStream is the server side of a Connect stream in memory: the test
// plays the agent through in and out.
type agentStream struct {
	grpc.ServerStream // unused methods panic
	ctx               context.Context
	in                chan *agentv1.ConnectRequest // what the agent sends; closed = agent closed its side
	out               chan *agentv1.ConnectResponse
}

func (a *agentStream) Context() context.Context { return a.ctx }

func (a *agentStream) Recv() (*agentv1.ConnectRequest, error) {
	select {
	case m, ok := <-a.in:
		if !ok {
			return nil, io.EOF
		}
		return m, nil
	case <-a.ctx.Done():
		return nil, status.FromContextError(a.ctx.Err()).Err()
	}
}

func (a *agentStream) Send(m *agentv1.ConnectResponse) error {
	select {
	case a.out <- m:
		return nil
	case <-a.ctx.Done():
		return io.EOF
	}
}

// connect runs Connect for node id on an in-memory stream; the returned
// func waits for Connect's result.
func connect(t *testing.T, e *testEnv, id string) (*agentStream, func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.WithValue(context.Background(), identityKey{}, Identity{Name: id}), 20*time.Second)
	t.Cleanup(cancel)
	stream := &agentStream{ctx: ctx, in: make(chan *agentv1.ConnectRequest, 16), out: make(chan *agentv1.ConnectResponse, 64)}
	done := make(chan error, 1)
	go func() { done <- e.srv.AgentAPI().Connect(stream) }()
	return stream, func() error {
		t.Helper()
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			t.Fatal("Connect did not return")
			return nil
		}
	}
}

func (a *agentStream) next(t *testing.T, what string) *agentv1.ConnectResponse {
	t.Helper()
	select {
	case m := <-a.out:
		return m
	case <-time.After(5 * time.Second):
		t.Fatalf("no %s from the controller", what)
		return nil
	}
}

func hello(id string) *agentv1.ConnectRequest {
	return &agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{NodeId: id, AgentVersion: "test"}}}
}

// A session begins with the welcome; the command delivery and SIEM push
// loops then send what is pending, a command queued later is delivered at
// once, results and heartbeats reach their modules, and the session ends
// when the agent closes its side.
func TestConnectSessionModules(t *testing.T) {
	e := newTestServer(t)
	siemTestNode(t, e, "n1", map[string]string{"rack": "r1"})
	siemApply(t, e, siemTestYAML, nil)
	first, err := e.srv.FleetAPI().CreateCommand(context.Background(), &fleetv1.CreateCommandRequest{NodeId: "n1", Kind: "inventory.collect"})
	if err != nil {
		t.Fatal(err)
	}

	stream, wait := connect(t, e, "n1")
	stream.in <- hello("n1")
	if w := stream.next(t, "welcome").GetWelcome(); w == nil || w.GetHeartbeatIntervalMs() != DefaultHeartbeatInterval.Milliseconds() {
		t.Fatalf("first message %v; want the welcome", w)
	}
	var gotCommand, gotPush bool
	for range 2 {
		m := stream.next(t, "command or SIEM push")
		gotCommand = gotCommand || m.GetCommand().GetId() == first.GetCommand().GetId()
		gotPush = gotPush || m.GetSiemConfig().GetVersion() == 1
	}
	if !gotCommand || !gotPush {
		t.Fatalf("after the welcome: command %v, push %v; want both", gotCommand, gotPush)
	}

	later, err := e.srv.FleetAPI().CreateCommand(context.Background(), &fleetv1.CreateCommandRequest{NodeId: "n1", Kind: "inventory.collect"})
	if err != nil {
		t.Fatal(err)
	}
	if m := stream.next(t, "the later command"); m.GetCommand().GetId() != later.GetCommand().GetId() {
		t.Fatalf("got %v; want command %s, and the first not again", m, later.GetCommand().GetId())
	}

	stream.in <- &agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Heartbeat{Heartbeat: &agentv1.Heartbeat{Seq: 1, Siem: &siemv1.Status{ConfigVersion: 1, ConfigSource: "controller"}}}}
	stream.in <- &agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_CommandResult{CommandResult: &agentv1.CommandResult{CommandId: later.GetCommand().GetId(), Success: true}}}
	eventually(t, "the result stored and the node Ready", func() bool {
		c, err := e.store.GetCommand(t.Context(), later.GetCommand().GetId())
		last, connected := e.srv.nodeLiveness("n1")
		return err == nil && c.State.Done() && connected && e.srv.ready(last) && e.srv.siem.report("n1").status.GetConfigVersion() == 1
	})

	close(stream.in)
	if err := wait(); err != nil {
		t.Errorf("Connect after the agent closed = %v", err)
	}
	if _, connected := e.srv.nodeLiveness("n1"); connected {
		t.Error("still connected after the session ended")
	}
	eventually(t, "the first command marked delivered once", func() bool {
		c, err := e.store.GetCommand(t.Context(), first.GetCommand().GetId())
		return err == nil && c.Deliveries == 1
	})
}

// A session ends with InvalidArgument on a second hello or a message no
// module handles.
func TestConnectRefusesStrayMessages(t *testing.T) {
	e := newTestServer(t)
	addNode(t, e, "n1")
	for name, m := range map[string]*agentv1.ConnectRequest{
		"hello twice":     hello("n1"),
		"unknown message": {},
	} {
		stream, wait := connect(t, e, "n1")
		stream.in <- hello("n1")
		stream.next(t, "welcome")
		stream.in <- m
		if err := wait(); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: Connect = %v; want InvalidArgument", name, err)
		}
	}
	stream, wait := connect(t, e, "n1")
	stream.in <- hello("n2")
	if err := wait(); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "n2") {
		t.Errorf("hello for another node: %v", err)
	}
}

// Every kind an agent may send, but the hello, has a module.
func TestEveryAgentMessageHasAModule(t *testing.T) {
	e := newTestServer(t)
	oneof := (&agentv1.ConnectRequest{}).ProtoReflect().Descriptor().Oneofs().ByName("msg")
	for i := range oneof.Fields().Len() {
		fd := oneof.Fields().Get(i)
		m := &agentv1.ConnectRequest{}
		m.ProtoReflect().Set(fd, protoreflect.ValueOfMessage(m.ProtoReflect().NewField(fd).Message()))
		kind := reflect.TypeOf(m.GetMsg())
		if ok := e.srv.handlers.Handles(m.GetMsg()); ok == (kind == helloKind) {
			t.Errorf("%s: handled %v", fd.Name(), ok)
		}
	}
}

type testModule struct {
	n  string
	hs []handler
}

func (m testModule) name() string                        { return m.n }
func (m testModule) handlers() []handler                 { return m.hs }
func (testModule) start(context.Context, *session) error { return nil }

// A kind is one module's; anything else a module registers that the
// session could not dispatch is refused when the server is made.
func TestDispatchTableRefusesBadRegistrations(t *testing.T) {
	onResult := on(func(context.Context, *session, *agentv1.ConnectRequest_CommandResult) error { return nil })
	for name, tc := range map[string]struct {
		modules []module
		want    string
	}{
		"kind twice":   {[]module{testModule{"commands", []handler{onResult}}, testModule{"kubelet", []handler{onResult}}}, `both module "commands" and module "kubelet"`},
		"module twice": {[]module{testModule{"a", nil}, testModule{"a", nil}}, `module "a" registered twice`},
		"controller message": {[]module{testModule{"m", []handler{on(func(context.Context, *session, *agentv1.ConnectResponse_Command) error { return nil })}}},
			"not a ConnectRequest message"},
		"inner message": {[]module{testModule{"m", []handler{on(func(context.Context, *session, *agentv1.CommandResult) error { return nil })}}},
			"not a ConnectRequest message"},
		"hello": {[]module{testModule{"m", []handler{on(func(context.Context, *session, *agentv1.ConnectRequest_Hello) error { return nil })}}},
			"the session itself takes"},
		"zero handler": {[]module{testModule{"m", []handler{{}}}}, "not made with on"},
	} {
		if _, err := dispatchTable(tc.modules); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: dispatchTable = %v; want an error with %q", name, err, tc.want)
		}
	}
	if _, err := dispatchTable([]module{testModule{"a", []handler{onResult}}, testModule{"b", nil}}); err != nil {
		t.Errorf("good registrations refused: %v", err)
	}
}

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
