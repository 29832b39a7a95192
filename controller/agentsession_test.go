// What an agent's session refuses: inventory that would give a node a name
// enrollment refuses, or fields past their caps, and a new session once the
// controller has begun to shut down.

package controller

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/controller/store"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	hostv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/host/v1"
)

// An inventory report cannot give a node a hostname enrollment would have
// refused (they reach terminals and logs), and oversized fields are capped.
func TestInventoryHostnameChecked(t *testing.T) {
	e := newTestServer(t)
	siemTestNode(t, e, "n1", nil)
	before, err := e.srv.store.GetNode(t.Context(), "n1")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sess, err := e.srv.openSession(ctx, "n1", "peer", "test")
	if err != nil {
		t.Fatal(err)
	}
	defer e.srv.closeSession(sess)
	inv := &hostv1.Inventory{Hostname: "evil\x1b[2Jname", Os: strings.Repeat("x", 10000)}
	if err := e.srv.handleAgentMessage(sess, &agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Inventory{Inventory: inv}}); err != nil {
		t.Fatal(err)
	}
	after, err := e.srv.store.GetNode(t.Context(), "n1")
	if err != nil {
		t.Fatal(err)
	}
	if after.Hostname != before.Hostname {
		t.Errorf("hostname changed to %q", after.Hostname)
	}
	// Control characters anywhere refuse the whole report.
	if after.Inventory != nil {
		t.Errorf("inventory with control characters stored: %+v", after.Inventory)
	}
	// Clean but long: stored, cut.
	inv = &hostv1.Inventory{Hostname: before.Hostname, Os: strings.Repeat("x", 10000), IpAddresses: []string{"10.0.0.1", "10.0.0.2/24", "not-an-ip"}}
	if err := e.srv.handleAgentMessage(sess, &agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Inventory{Inventory: inv}}); err != nil {
		t.Fatal(err)
	}
	after, _ = e.srv.store.GetNode(t.Context(), "n1")
	if after.Inventory == nil || len(after.Inventory.Os) > 300 || len(after.Inventory.IpAddresses) != 2 {
		t.Errorf("inventory stored unchecked: %+v", after.Inventory)
	}
}

// A hostname change that takes another node's name is refused and shown
// as a problem of the node; a free one is a rename.
func TestInventoryHostnameCollisionRefused(t *testing.T) {
	e := newTestServer(t)
	for _, n := range []store.Node{{ID: "n1", Hostname: "alpha"}, {ID: "n2", Hostname: "beta"}} {
		tok := store.Token{ID: "tok" + n.ID, CreatedAt: base, ExpiresAt: base.Add(time.Hour)}
		if err := e.store.CreateToken(t.Context(), tok); err != nil {
			t.Fatal(err)
		}
		if _, err := e.store.Enroll(t.Context(), tok.ID, func(store.Token) error { return nil }, n); err != nil {
			t.Fatal(err)
		}
	}
	sess, err := e.srv.openSession(t.Context(), "n1", "peer", "test")
	if err != nil {
		t.Fatal(err)
	}
	defer e.srv.closeSession(sess)
	send := func(h string) {
		if err := e.srv.handleAgentMessage(sess, &agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Inventory{Inventory: &hostv1.Inventory{Hostname: h}}}); err != nil {
			t.Fatal(err)
		}
	}
	send("BETA")
	n1, _ := e.store.GetNode(t.Context(), "n1")
	if n1.Hostname != "alpha" || !strings.Contains(n1.HostnameConflict, "n2") {
		t.Fatalf("after a colliding rename: %+v", n1)
	}
	if p := e.srv.nodeToProto(n1).GetProblems(); len(p) != 1 || !strings.Contains(p[0], "refused") {
		t.Fatalf("problems %v", p)
	}
	send("gamma")
	n1, _ = e.store.GetNode(t.Context(), "n1")
	if n1.Hostname != "gamma" || n1.HostnameConflict != "" {
		t.Fatalf("after a free rename: %+v", n1)
	}
}

// Once shutdown has begun no new session opens: agents are told to come
// back, rather than holding up the graceful stop.
func TestNoSessionsDuringShutdown(t *testing.T) {
	e := newTestServer(t)
	e.srv.closeAllSessions()
	_, err := e.srv.openSession(context.Background(), "n1", "peer", "test")
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("openSession during shutdown = %v, want Unavailable", err)
	}
}
