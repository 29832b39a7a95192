package transport

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/bud-ecosystem/budfleet/agent/state"
	"github.com/bud-ecosystem/budfleet/pki"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
)

func mustKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustCert(t *testing.T, tmpl, parent *x509.Certificate, pub any, signer *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// pkiFixture is a CA, a server certificate for 127.0.0.1 and a node
// identity stored in a state dir.
type pkiFixture struct {
	ca     *x509.Certificate
	server tls.Certificate
	state  *state.DB
}

func newFixture(t *testing.T, nodeNotAfter time.Time) pkiFixture {
	t.Helper()
	now := time.Now()
	caKey := mustKey(t)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	ca := mustCert(t, caTmpl, caTmpl, caKey.Public(), caKey)

	srvKey := mustKey(t)
	srv := mustCert(t, &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "controller"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}, ca, srvKey.Public(), caKey)

	nodeKey := mustKey(t)
	node := mustCert(t, &x509.Certificate{SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "node-1"}, NotBefore: now.Add(-2 * time.Hour), NotAfter: nodeNotAfter,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}, ca, nodeKey.Public(), caKey)
	keyPEM, err := pki.EncodeKey(nodeKey)
	if err != nil {
		t.Fatal(err)
	}
	db, err := state.Open(filepath.Join(t.TempDir(), "state"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.SaveIdentity(state.Identity{NodeID: "node-1", Controller: "127.0.0.1:1", ServerName: "127.0.0.1", KeyPEM: keyPEM, CertDER: node.Raw, CADER: ca.Raw}); err != nil {
		t.Fatal(err)
	}
	return pkiFixture{ca: ca, server: tls.Certificate{Certificate: [][]byte{srv.Raw}, PrivateKey: srvKey, Leaf: srv}, state: db}
}

// welcomer answers a hello with a welcome whose heartbeat interval is the
// length of the hello's node id: proof that the hello got through.
type welcomer struct {
	agentv1.UnimplementedAgentServiceServer
}

func (welcomer) Connect(stream agentv1.AgentService_ConnectServer) error {
	m, err := stream.Recv()
	if err != nil {
		return err
	}
	return stream.Send(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Welcome{Welcome: &agentv1.Welcome{HeartbeatIntervalMs: int64(len(m.GetHello().GetNodeId()))}}})
}

// The gRPC transport dials with the stored identity over mutual TLS, pinned
// to the stored CA, and the overrides pick the address.
func TestGRPCConnect(t *testing.T) {
	f := newFixture(t, time.Now().Add(time.Hour))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(pki.ServerTLS(f.ca, f.server))))
	agentv1.RegisterAgentServiceServer(gs, welcomer{})
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	g := &GRPC{State: f.state, Controller: lis.Addr().String()}
	stream, err := g.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	if err := stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{NodeId: "node-1"}}}); err != nil {
		t.Fatal(err)
	}
	m, err := stream.Recv()
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	if m.GetWelcome().GetHeartbeatIntervalMs() != int64(len("node-1")) {
		t.Errorf("got %v", m)
	}
	if err := stream.CloseSend(); err != nil {
		t.Error(err)
	}

	// A server name the controller's certificate does not carry fails the
	// handshake: the pin is on the stored CA and the name.
	bad := &GRPC{State: f.state, Controller: lis.Addr().String(), ServerName: "elsewhere.example"}
	s2, err := bad.Connect(ctx)
	if err == nil {
		_ = s2.Send(&agentv1.ConnectRequest{})
		_, err = s2.Recv()
		s2.Close()
	}
	if err == nil {
		t.Error("a session with the wrong server name worked")
	}
}

// An expired certificate is refused before dialing, with the sentinel the
// agent reports as needing an operator.
func TestGRPCExpiredCertificate(t *testing.T) {
	f := newFixture(t, time.Now().Add(-time.Minute))
	_, err := (&GRPC{State: f.state}).Connect(context.Background())
	if !errors.Is(err, ErrCertExpired) {
		t.Fatalf("Connect with an expired certificate = %v, want ErrCertExpired", err)
	}
	if _, err := (&GRPC{State: f.state, Controller: "no-port"}).Connect(context.Background()); err == nil {
		t.Error("an address without a port was accepted")
	}
}

// Conn hands out the open session's connection, waits while none is open,
// and no longer hands out one whose session closed.
func TestGRPCConnSharesTheSession(t *testing.T) {
	f := newFixture(t, time.Now().Add(time.Hour))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(pki.ServerTLS(f.ca, f.server))))
	agentv1.RegisterAgentServiceServer(gs, welcomer{})
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	g := &GRPC{State: f.state, Controller: lis.Addr().String()}

	got := make(chan grpc.ClientConnInterface, 1)
	go func() {
		conn, err := g.Conn(t.Context())
		if err != nil {
			t.Error(err)
		}
		got <- conn
	}()
	stream, err := g.Connect(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	select {
	case conn := <-got:
		if conn != stream.(grpcStream).conn {
			t.Errorf("Conn = %p; want the session's connection %p", conn, stream.(grpcStream).conn)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Conn did not return once a session was open")
	}
	stream.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if conn, err := g.Conn(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Conn after the session closed = %v, %v; want to wait until ctx ends", conn, err)
	}
}

// With several controllers known (configured comma-separated, or learned
// from a welcome), connects go round all of them in a random order, and the
// one just left is never first in the next round.
func TestGRPCPicksControllersInRandomOrder(t *testing.T) {
	g := &GRPC{Controller: "a:1,b:1"}
	g.Learn([]string{"b:1", "c:1"})
	seen := map[string]int{}
	last := ""
	for i := range 30 {
		a := g.pick("stored:1")
		if a == last {
			t.Fatalf("pick %d: %s twice in a row", i, a)
		}
		seen[a]++
		last = a
	}
	if len(seen) != 3 || seen["stored:1"] != 0 {
		t.Errorf("picked %v, want a:1, b:1 and c:1 only", seen)
	}
	alone := &GRPC{}
	if got := alone.pick("stored:1"); got != "stored:1" {
		t.Errorf("alone picked %s, want the stored address", got)
	}
}
