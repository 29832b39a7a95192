package controller

import (
	"context"
	"crypto/tls"
	"net"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/bud-ecosystem/budfleet/controller/ca"
	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/controller/store/bolt"
	"github.com/bud-ecosystem/budfleet/pki"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
	hostv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/host/v1"
)

// tlsEnv is a controller serving on a real loopback listener over real mTLS
// with the options bud-controller serves with, on the real clock.
type tlsEnv struct {
	srv   *Server
	store *bolt.Store
	ca    *ca.CA
	addr  string
}

func newTLSEnv(t *testing.T) *tlsEnv {
	t.Helper()
	now := time.Now()
	st, err := bolt.Open(filepath.Join(t.TempDir(), StoreFile), bolt.Options{LockTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	authority, err := ca.NewCA(now)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Options{Store: st, CA: authority, Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := pki.NewKey()
	cert, err := authority.IssueServer(key.Public(), []string{"127.0.0.1", "localhost"}, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(srv.GRPCOptions(authority.ServerTLS(tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}))...)
	srv.RegisterServices(gs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	return &tlsEnv{srv: srv, store: st, ca: authority, addr: lis.Addr().String()}
}

// enroll stores node id as enrollment does, with the serial of the
// certificate it returns, signed by the controller's CA (or by other).
func (e *tlsEnv) enroll(t *testing.T, id string) tls.Certificate {
	t.Helper()
	key, _ := pki.NewKey()
	cert, err := e.ca.IssueClient(key.Public(), pki.NodeSubject(id), time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tok := store.Token{ID: "bbbbbbbbbbbb", SecretHash: ca.HashSecret("s"), CreatedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)}
	if _, err := e.store.GetToken(t.Context(), tok.ID); err != nil {
		if err := e.store.CreateToken(t.Context(), tok); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.store.Enroll(t.Context(), tok.ID, func(store.Token) error { return nil }, store.Node{
		ID: id, Hostname: "h-" + id, TokenID: tok.ID, EnrolledAt: time.Now(),
		CertSerial: cert.SerialNumber.Text(16), CertExpiresAt: cert.NotAfter,
	}); err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}
}

// dial opens a Connect stream presenting cert.
func (e *tlsEnv) dial(t *testing.T, trust *ca.CA, cert tls.Certificate) agentv1.AgentService_ConnectClient {
	t.Helper()
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(pki.ClientTLS(trust.Cert, &cert, "127.0.0.1"))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	stream, err := agentv1.NewAgentServiceClient(conn).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return stream
}

// storeState is everything a session could write for a node.
type storeState struct {
	nodes    []store.Node
	commands []store.Command
}

func (e *tlsEnv) state(t *testing.T) storeState {
	t.Helper()
	n, err := e.store.ListNodes(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	c, err := e.store.ListCommands(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	return storeState{n, c}
}

// ended reads from the stream until the controller ends it and returns
// the status it ended with; anything but a welcome before that fails.
func ended(t *testing.T, stream agentv1.AgentService_ConnectClient) error {
	t.Helper()
	for {
		m, err := stream.Recv()
		if err != nil {
			return err
		}
		if m.GetWelcome() == nil && m.GetCommand() == nil {
			t.Fatalf("before the end the controller sent %v", m)
		}
	}
}

// Each way a hostile (or broken) agent can abuse its Connect stream, over
// real mTLS against the real gRPC server: the session is refused with the
// status that says what was wrong, and the store is as it was.
func TestConnectAbuseRefused(t *testing.T) {
	e := newTLSEnv(t)
	n1 := e.enroll(t, "n1")
	e.enroll(t, "n2")
	other, err := e.srv.FleetAPI().CreateCommand(t.Context(), &fleetv1.CreateCommandRequest{NodeId: "n2", Kind: "inventory.collect"})
	if err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("x", MaxMessageBytes+1)
	for _, tc := range []struct {
		name  string
		msgs  []*agentv1.ConnectRequest
		code  codes.Code
		words string
	}{
		{"no hello first", []*agentv1.ConnectRequest{{Msg: &agentv1.ConnectRequest_Heartbeat{Heartbeat: &agentv1.Heartbeat{Seq: 1}}}}, codes.InvalidArgument, "first message"},
		{"hello for another node", []*agentv1.ConnectRequest{hello("n2")}, codes.InvalidArgument, `"n2"`},
		{"a second hello", []*agentv1.ConnectRequest{hello("n1"), hello("n1")}, codes.InvalidArgument, "hello"},
		{"an unknown message", []*agentv1.ConnectRequest{hello("n1"), {}}, codes.InvalidArgument, ""},
		{"an oversized message", []*agentv1.ConnectRequest{hello("n1"), {Msg: &agentv1.ConnectRequest_Inventory{Inventory: &hostv1.Inventory{Hostname: big}}}}, codes.ResourceExhausted, "larger than max"},
		{"an oversized hello", []*agentv1.ConnectRequest{{Msg: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{NodeId: "n1", AgentVersion: big}}}}, codes.ResourceExhausted, "larger than max"},
		{"a result for another node's command", []*agentv1.ConnectRequest{hello("n1"), {Msg: &agentv1.ConnectRequest_CommandResult{CommandResult: &agentv1.CommandResult{CommandId: other.GetCommand().GetId(), Success: true, Message: "forged"}}}}, codes.PermissionDenied, "not this node's"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.state(t)
			stream := e.dial(t, e.ca, n1)
			for _, m := range tc.msgs {
				if err := stream.Send(m); err != nil {
					break // the controller ended the stream: Recv says why
				}
			}
			err := ended(t, stream)
			if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.words) {
				t.Fatalf("Connect ended with %v; want %s saying %q", err, tc.code, tc.words)
			}
			if after := e.state(t); !reflect.DeepEqual(before, after) {
				t.Fatalf("the store changed:\nbefore %+v\nafter  %+v", before, after)
			}
		})
	}
	if c, err := e.store.GetCommand(t.Context(), other.GetCommand().GetId()); err != nil || c.State.Done() || c.Message != "" {
		t.Fatalf("n2's command after n1 forged its result: %+v, %v", c, err)
	}
}

// A renewal with a CSR that does not parse, or one for another key, is
// answered with an error and no certificate; the session goes on and the
// node keeps its certificate.
func TestConnectBadRenewCSRRefused(t *testing.T) {
	e := newTLSEnv(t)
	n1 := e.enroll(t, "n1")
	before := e.state(t)
	stream := e.dial(t, e.ca, n1)
	if err := stream.Send(hello("n1")); err != nil {
		t.Fatal(err)
	}
	if m, err := stream.Recv(); err != nil || m.GetWelcome() == nil {
		t.Fatalf("first message %v, %v; want the welcome", m, err)
	}
	otherKey, _ := pki.NewKey()
	otherCSR, _ := pki.NewCSR(otherKey, "n1")
	for name, der := range map[string][]byte{
		"junk":          []byte("not a CSR"),
		"empty":         nil,
		"another key":   otherCSR,
		"truncated DER": otherCSR[:40],
	} {
		if err := stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_RenewRequest{RenewRequest: &agentv1.RenewRequest{CsrDer: der}}}); err != nil {
			t.Fatal(err)
		}
		var resp *agentv1.RenewResponse
		for resp == nil {
			m, err := stream.Recv()
			if err != nil {
				t.Fatalf("%s: the session ended: %v", name, err)
			}
			resp = m.GetRenewResponse()
		}
		if resp.GetError() == "" || len(resp.GetCertificateDer()) != 0 {
			t.Errorf("%s: renewal answered %v; want an error and no certificate", name, resp)
		}
	}
	if after := e.state(t); !reflect.DeepEqual(before, after) {
		t.Fatalf("the store changed:\nbefore %+v\nafter  %+v", before, after)
	}
}

// A node certificate from another CA, even for an enrolled node's id, does
// not get past the TLS handshake: no session, nothing stored.
func TestConnectForeignCARefused(t *testing.T) {
	e := newTLSEnv(t)
	e.enroll(t, "n1")
	before := e.state(t)
	foreign, err := ca.NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key, _ := pki.NewKey()
	cert, err := foreign.IssueClient(key.Public(), pki.NodeSubject("n1"), time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// The client trusts the real controller: only its own certificate is
	// foreign.
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(pki.ClientTLS(e.ca.Cert, &tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}, "127.0.0.1"))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	// The refusal shows at the stream's opening or at its first read,
	// depending on how the server's alert races the client's first write.
	stream, err := agentv1.NewAgentServiceClient(conn).Connect(ctx)
	if err == nil {
		_ = stream.Send(hello("n1"))
		err = ended(t, stream)
	}
	// The message is "bad certificate" or a broken pipe, by the same race:
	// the code is what is certain.
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("Connect with a foreign CA's certificate: %v; want Unavailable", err)
	}
	if _, connected := e.srv.nodeLiveness("n1"); connected {
		t.Fatal("n1 has a session")
	}
	if after := e.state(t); !reflect.DeepEqual(before, after) {
		t.Fatalf("the store changed:\nbefore %+v\nafter  %+v", before, after)
	}
}
