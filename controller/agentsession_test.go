// What an agent's session refuses: inventory that would give a node a name
// enrollment refuses, or fields past their caps, and a new session once the
// controller has begun to shut down.

package controller

import (
	"context"
	"strings"
	"testing"

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
	if after.Inventory == nil || len(after.Inventory.Os) > 300 || after.Inventory.Hostname != "" {
		t.Errorf("inventory stored unchecked: %+v", after.Inventory)
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
