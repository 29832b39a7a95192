package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/bud-ecosystem/budfleet/agent/state"
	"github.com/bud-ecosystem/budfleet/pki"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
)

// nodeConn dials the controller with the node identity stored in an agent's
// state dir; the agent must not be running.
func nodeConn(t *testing.T, a *agent) *grpc.ClientConn {
	t.Helper()
	db, err := state.Open(a.stateDir, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	id, err := db.Identity()
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.DecodeKey(id.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(id.CADER)
	if err != nil {
		t.Fatal(err)
	}
	tc := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		RootCAs:      pki.Pool(ca),
		ServerName:   "127.0.0.1",
		Certificates: []tls.Certificate{{Certificate: [][]byte{id.CertDER}, PrivateKey: key}},
	}
	conn, err := grpc.NewClient(a.c.addr(), grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestSessionStartsWithWelcome: the agent protocol says the controller
// answers a Hello with a Welcome. A hand-made agent (the real node
// credential, no bud-agent process) opens sessions while a command is queued
// for its node: every session must still begin with the Welcome, as
// bud-agent drops any session that does not.
func TestSessionStartsWithWelcome(t *testing.T) {
	t.Parallel()
	c := startController(t)
	tok := c.createToken(t)
	a := joinAgent(t, c, tok, "node-handmade")
	other := joinAgent(t, c, tok, "node-other")
	cmdID := strings.TrimSpace(c.mustBudctl(t, "commands", "create", "inventory.collect", "--node", a.nodeID))
	api := agentv1.NewAgentServiceClient(nodeConn(t, a))

	// open runs one session up to its n-th message from the controller.
	open := func(hello *agentv1.Hello, n int) ([]*agentv1.ConnectResponse, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stream, err := api.Connect(ctx)
		if err != nil {
			return nil, err
		}
		if err := stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Hello{Hello: hello}}); err != nil {
			return nil, err
		}
		var got []*agentv1.ConnectResponse
		for range n {
			m, err := stream.Recv()
			if err != nil {
				return got, err
			}
			got = append(got, m)
		}
		return got, nil
	}

	// A hello naming another node is refused: a certificate speaks for one
	// node only.
	if _, err := open(&agentv1.Hello{NodeId: other.nodeID, AgentVersion: "e2e"}, 1); status.Code(err) != codes.InvalidArgument {
		t.Errorf("hello naming another node: %v; want InvalidArgument", err)
	}

	// Each session gets the Welcome and the pending command (redelivered:
	// this client never reports a result); the Welcome must come first.
	const sessions = 16
	var notWelcome []string
	for range sessions {
		msgs, err := open(&agentv1.Hello{NodeId: a.nodeID, AgentVersion: "e2e"}, 2)
		if err != nil {
			t.Fatalf("session: %v", err)
		}
		var welcomes, commands int
		for _, m := range msgs {
			if m.GetWelcome() != nil {
				welcomes++
			}
			if m.GetCommand().GetId() == cmdID {
				commands++
			}
		}
		if welcomes != 1 || commands != 1 {
			t.Fatalf("session got %v; want a Welcome and command %s", msgs, cmdID)
		}
		if msgs[0].GetWelcome() == nil {
			notWelcome = append(notWelcome, msgs[0].String())
		}
	}
	if len(notWelcome) > 0 {
		// Regression check: Connect used to queue the Welcome and wake the
		// send loop at once, and the loop's select picked either first, so
		// about half the sessions opened with a pending command and
		// bud-agent dropped them (fixed in 7788d47 by sending the Welcome
		// before the send loop starts).
		t.Errorf("%d of %d sessions began with something other than the Welcome (controller/agentapi.go Connect), e.g. %s",
			len(notWelcome), sessions, notWelcome[0])
	}
	// The controller writes delivery counts shortly after the sends.
	eventually(t, 10*time.Second, func() error {
		cm, err := c.getCommand(cmdID)
		if err != nil {
			return err
		}
		if cm.GetDeliveries() != sessions {
			return fmt.Errorf("command delivered %d times over %d sessions; want once per session", cm.GetDeliveries(), sessions)
		}
		return nil
	})
}
