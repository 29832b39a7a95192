package controller

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bud-ecosystem/budfleet/command"
	"github.com/bud-ecosystem/budfleet/controller/store"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

func labelNode(t *testing.T, e *testEnv, id string, labels map[string]string) {
	t.Helper()
	addNode(t, e, id)
	if _, err := e.store.UpdateNode(t.Context(), id, func(n *store.Node) error { n.Labels = labels; return nil }); err != nil {
		t.Fatal(err)
	}
}

// Bad input is refused with a status that says what is wrong, and nothing
// is stored.
func TestCreateCommandsRefused(t *testing.T) {
	e := newTestServer(t)
	api := e.srv.FleetAPI()
	labelNode(t, e, "n1", map[string]string{"rack": "r1"})
	kind := command.InventoryCollect
	for name, tc := range map[string]struct {
		req  *fleetv1.CreateCommandsRequest
		code codes.Code
		says string
	}{
		"unknown kind":        {&fleetv1.CreateCommandsRequest{Kind: "shell.exec", AllNodes: true}, codes.InvalidArgument, "shell.exec"},
		"unknown param":       {&fleetv1.CreateCommandsRequest{Kind: kind, Params: map[string]string{"x": "y"}, AllNodes: true}, codes.InvalidArgument, "x"},
		"no nodes chosen":     {&fleetv1.CreateCommandsRequest{Kind: kind}, codes.InvalidArgument, "exactly one"},
		"two ways chosen":     {&fleetv1.CreateCommandsRequest{Kind: kind, AllNodes: true, LabelSelector: "rack=r1"}, codes.InvalidArgument, "exactly one"},
		"ids and all":         {&fleetv1.CreateCommandsRequest{Kind: kind, AllNodes: true, NodeIds: []string{"n1"}}, codes.InvalidArgument, "exactly one"},
		"bad selector":        {&fleetv1.CreateCommandsRequest{Kind: kind, LabelSelector: "rack in (r1"}, codes.InvalidArgument, "label selector"},
		"selector matches no": {&fleetv1.CreateCommandsRequest{Kind: kind, LabelSelector: "rack=r9"}, codes.InvalidArgument, "matches no node"},
		"unknown node":        {&fleetv1.CreateCommandsRequest{Kind: kind, NodeIds: []string{"n1", "ghost"}}, codes.NotFound, "ghost"},
		"node named twice":    {&fleetv1.CreateCommandsRequest{Kind: kind, NodeIds: []string{"n1", "n1"}}, codes.InvalidArgument, "twice"},
		"empty node id":       {&fleetv1.CreateCommandsRequest{Kind: kind, NodeIds: []string{""}}, codes.InvalidArgument, "empty"},
	} {
		_, err := api.CreateCommands(context.Background(), tc.req)
		st, _ := status.FromError(err)
		if st.Code() != tc.code || !strings.Contains(st.Message(), tc.says) {
			t.Errorf("%s: %v; want %s saying %q", name, err, tc.code, tc.says)
		}
		if cs, err := e.store.ListCommands(t.Context(), ""); err != nil || len(cs) != 0 {
			t.Fatalf("%s: %d commands stored after a refusal (%v)", name, len(cs), err)
		}
	}
	if _, err := api.GetCommandBatch(context.Background(), &fleetv1.GetCommandBatchRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("GetCommandBatch without an id = %v", err)
	}
	if _, err := api.GetCommandBatch(context.Background(), &fleetv1.GetCommandBatchRequest{BatchId: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("GetCommandBatch(nope) = %v", err)
	}

	// With no node at all, "all" is refused too.
	e = newTestServer(t)
	if _, err := e.srv.FleetAPI().CreateCommands(context.Background(), &fleetv1.CreateCommandsRequest{Kind: kind, AllNodes: true}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("all nodes of an empty fleet = %v", err)
	}
}

// nextCommand reads the stream until a command arrives.
func nextCommand(t *testing.T, s *agentStream) *agentv1.Command {
	t.Helper()
	for {
		if c := s.next(t, "a command").GetCommand(); c != nil {
			return c
		}
	}
}

// A fan-out reaches the connected nodes it chose at once, waits for the
// others, and its counts follow the results.
func TestCreateCommandsDelivers(t *testing.T) {
	e := newTestServer(t)
	api := e.srv.FleetAPI()
	labelNode(t, e, "n1", map[string]string{"rack": "r1"})
	labelNode(t, e, "n2", map[string]string{"rack": "r1"})
	labelNode(t, e, "n3", map[string]string{"rack": "r1"})
	labelNode(t, e, "n4", map[string]string{"rack": "r2"})
	streams := map[string]*agentStream{}
	for _, id := range []string{"n1", "n2", "n4"} {
		s, _ := connect(t, e, id)
		s.in <- hello(id)
		if s.next(t, "welcome").GetWelcome() == nil {
			t.Fatal("no welcome")
		}
		streams[id] = s
	}

	resp, err := api.CreateCommands(context.Background(), &fleetv1.CreateCommandsRequest{Kind: command.InventoryCollect, LabelSelector: "rack=r1"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetCount() != 3 || resp.GetBatchId() == "" {
		t.Fatalf("CreateCommands = %v; want 3 commands in a batch", resp)
	}
	for _, id := range []string{"n1", "n2"} {
		c := nextCommand(t, streams[id])
		// The delivery is written shortly after the send.
		var got store.Command
		var err error
		eventually(t, id+" marked delivered", func() bool {
			got, err = e.store.GetCommand(t.Context(), c.GetId())
			return err == nil && got.State == store.CommandDelivered
		})
		if got.NodeID != id || got.BatchID != resp.GetBatchId() || got.Deliveries != 1 {
			t.Fatalf("%s was sent %+v", id, got)
		}
		streams[id].in <- &agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_CommandResult{CommandResult: &agentv1.CommandResult{CommandId: c.GetId(), Success: id == "n1", Message: "done"}}}
	}
	eventually(t, "both results counted", func() bool {
		b, err := api.GetCommandBatch(context.Background(), &fleetv1.GetCommandBatchRequest{BatchId: resp.GetBatchId()})
		return err == nil && b.GetTotal() == 3 && b.GetSucceeded() == 1 && b.GetFailed() == 1 && b.GetPending() == 1 && b.GetKind() == command.InventoryCollect
	})
	l, err := api.ListCommands(context.Background(), &fleetv1.ListCommandsRequest{BatchId: resp.GetBatchId()})
	if err != nil || len(l.GetCommands()) != 3 {
		t.Fatalf("ListCommands(batch) = %v, %v", l, err)
	}
	for _, c := range l.GetCommands() {
		if c.GetBatchId() != resp.GetBatchId() || c.GetNodeId() == "n4" {
			t.Errorf("batch listing holds %v", c)
		}
	}
	one, err := api.ListCommands(context.Background(), &fleetv1.ListCommandsRequest{BatchId: resp.GetBatchId(), NodeId: "n2"})
	if err != nil || len(one.GetCommands()) != 1 || one.GetCommands()[0].GetNodeId() != "n2" {
		t.Errorf("ListCommands(batch, node n2) = %v, %v; want n2's one command", one, err)
	}
	if _, err := api.ListCommands(context.Background(), &fleetv1.ListCommandsRequest{BatchId: "nope"}); status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), "nope") {
		t.Errorf("ListCommands(unknown batch) = %v; want NotFound naming it", err)
	}

	// n3 gets its command when it connects.
	s3, _ := connect(t, e, "n3")
	s3.in <- hello("n3")
	c := nextCommand(t, s3)
	s3.in <- &agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_CommandResult{CommandResult: &agentv1.CommandResult{CommandId: c.GetId(), Success: true}}}
	eventually(t, "the late node's result counted", func() bool {
		b, err := api.GetCommandBatch(context.Background(), &fleetv1.GetCommandBatchRequest{BatchId: resp.GetBatchId()})
		return err == nil && b.GetSucceeded() == 2 && b.GetPending() == 0 && b.GetDelivered() == 0
	})

	// All nodes, and named nodes.
	all, err := api.CreateCommands(context.Background(), &fleetv1.CreateCommandsRequest{Kind: command.InventoryCollect, AllNodes: true})
	if err != nil || all.GetCount() != 4 {
		t.Fatalf("all nodes = %v, %v", all, err)
	}
	if c := nextCommand(t, streams["n4"]); c.GetId() == "" {
		t.Fatal("n4 got no command of the all-nodes batch")
	}
	named, err := api.CreateCommands(context.Background(), &fleetv1.CreateCommandsRequest{Kind: command.InventoryCollect, NodeIds: []string{"n4", "n2"}})
	if err != nil || named.GetCount() != 2 {
		t.Fatalf("named nodes = %v, %v", named, err)
	}
	b, err := api.GetCommandBatch(context.Background(), &fleetv1.GetCommandBatchRequest{BatchId: named.GetBatchId()})
	if err != nil || b.GetTotal() != 2 {
		t.Fatalf("named batch = %v, %v", b, err)
	}
}
