package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

const refusedLine = "controller refuses this node"

// TestDeletedNodeIsRefused: deleting a node ends its session and every
// reconnect after is refused; the node does not come back.
func TestDeletedNodeIsRefused(t *testing.T) {
	t.Parallel()
	c := startController(t)
	tok := c.createToken(t)
	a := joinAgent(t, c, tok, "node-doomed")
	b := joinAgent(t, c, tok, "node-bystander")
	a.start(t)
	b.start(t)
	a.waitReady(t)
	b.waitReady(t)

	out := c.mustBudctl(t, "nodes", "delete", a.nodeID)
	if !strings.Contains(out, a.nodeID) || !strings.Contains(out, "deleted") {
		t.Errorf("nodes delete printed %q", out)
	}

	// The session ends and the next connection is refused for good.
	eventually(t, 15*time.Second, func() error {
		if !strings.Contains(a.log(), refusedLine) {
			return fmt.Errorf("agent log has no %q yet", refusedLine)
		}
		return nil
	})
	if !strings.Contains(a.log(), "not enrolled (deleted?)") {
		t.Errorf("agent log does not carry the controller's reason (node not enrolled):\n%s", tail(a.log(), 2048))
	}
	if _, err := c.getNode(a.nodeID); err == nil || !strings.Contains(err.Error(), "NotFound") {
		t.Errorf("nodes get of the deleted node: %v; want NotFound", err)
	}

	// Several more reconnect cycles (backoff at most 1s): each refused, the
	// node stays gone, the other node is untouched.
	first := strings.Count(a.log(), refusedLine)
	eventually(t, 15*time.Second, func() error {
		ns, err := c.listNodes()
		if err != nil {
			return err
		}
		for _, n := range ns {
			if n.GetId() == a.nodeID {
				t.Fatalf("the deleted node is listed again: %v", n)
			}
		}
		if len(ns) != 1 || ns[0].GetId() != b.nodeID {
			t.Fatalf("nodes %v; want only %s", ns, b.nodeID)
		}
		if n := strings.Count(a.log(), refusedLine); n < first+3 {
			return fmt.Errorf("%d refused reconnects so far", n)
		}
		return nil
	})
	if strings.Count(a.log(), "connected to controller") != 1 {
		t.Errorf("the deleted agent got a session again:\n%s", tail(a.log(), 4096))
	}
	if a.proc.exited() {
		t.Errorf("the agent exited (%v); it should keep retrying until an operator acts", a.proc.waitErr)
	}
	if err := b.readyErr(); err != nil {
		t.Errorf("the other node: %v", err)
	}
	// Only the bystander counts as connected and ready.
	eventually(t, 5*time.Second, func() error {
		m := c.metrics(t)
		for _, want := range []string{"bud_controller_connected_agents 1\n", "bud_controller_ready_nodes 1\n"} {
			if !strings.Contains(m, want) {
				return fmt.Errorf("metrics: %v %v", metricSamples(m, "bud_controller_connected_agents"), metricSamples(m, "bud_controller_ready_nodes"))
			}
		}
		return nil
	})
	if !strings.Contains(readLog(c.logPath), `"action":"node.delete"`) {
		t.Error("the controller did not audit-log the deletion")
	}
}

// TestAgentRestart: an agent stopped gracefully or killed comes back as the
// same node without spending its token again, and a command it already ran
// is not run again.
func TestAgentRestart(t *testing.T) {
	t.Parallel()
	c := startController(t)
	tok := c.createToken(t)
	_, tokenID, _ := tokenParts(t, tok)
	a := joinAgent(t, c, tok, "node-phoenix")
	a.start(t)
	a.waitReady(t)

	cmdID := strings.TrimSpace(c.mustBudctl(t, "commands", "create", "inventory.collect", "--node", a.nodeID))
	eventually(t, 15*time.Second, func() error { return commandIs(c, cmdID, fleetv1.CommandState_COMMAND_STATE_SUCCEEDED) })

	check := func(t *testing.T) {
		t.Helper()
		ns := c.mustListNodes(t)
		if len(ns) != 1 || ns[0].GetId() != a.nodeID {
			t.Errorf("nodes %v; want only %s", ns, a.nodeID)
		}
		if uses := c.tokenUses(t); uses[tokenID] != 1 {
			t.Errorf("token uses %d, want 1", uses[tokenID])
		}
		// The command is never delivered or run again.
		consistently(t, 1500*time.Millisecond, func() error {
			cm, err := c.getCommand(cmdID)
			if err != nil {
				return err
			}
			if cm.GetState() != fleetv1.CommandState_COMMAND_STATE_SUCCEEDED || cm.GetDeliveries() != 1 {
				return fmt.Errorf("command %s: %s, %d deliveries; want SUCCEEDED, 1", cmdID, cm.GetState(), cm.GetDeliveries())
			}
			return nil
		})
		if n := strings.Count(a.log(), `"msg":"running command"`); n != 1 {
			t.Errorf("the agent ran a command %d times, want once", n)
		}
	}

	t.Run("SIGTERM", func(t *testing.T) {
		a.stop(t)
		if !strings.Contains(a.log(), "agent stopped") {
			t.Error("the agent did not log a clean stop")
		}
		a.waitDisconnected(t)
		a.start(t)
		a.waitReady(t)
		if n := strings.Count(a.log(), "connected to controller"); n != 2 {
			t.Errorf("%d sessions in the agent log, want 2", n)
		}
		check(t)
	})
	t.Run("SIGKILL", func(t *testing.T) {
		a.kill(t)
		a.waitDisconnected(t)
		a.start(t)
		a.waitReady(t)
		check(t)
	})
}

func commandIs(c *controller, id string, want fleetv1.CommandState) error {
	cm, err := c.getCommand(id)
	if err != nil {
		return err
	}
	if cm.GetState() != want {
		return fmt.Errorf("command %s: %s (%d deliveries) %q; want %s", id, cm.GetState(), cm.GetDeliveries(), cm.GetMessage(), want)
	}
	return nil
}

// TestHeartbeatGrace: a killed agent's node turns NotReady once the grace
// period (2s) has passed since its last heartbeat.
func TestHeartbeatGrace(t *testing.T) {
	t.Parallel()
	c := startController(t, withHeartbeat("500ms", "2s"))
	tok := c.createToken(t)
	a := joinAgent(t, c, tok, "node-mortal")
	a.start(t)
	a.waitReady(t)
	// It stays Ready while heartbeats flow: longer than the grace period.
	consistently(t, 3*time.Second, a.readyErr)

	a.kill(t)
	killed := time.Now()
	eventually(t, 4*time.Second, func() error {
		n, err := c.getNode(a.nodeID)
		if err != nil {
			return err
		}
		if n.GetStatus() != fleetv1.NodeStatus_NODE_STATUS_NOT_READY || n.GetConnected() {
			return fmt.Errorf("%.1fs after SIGKILL: status %s, connected %v", time.Since(killed).Seconds(), n.GetStatus(), n.GetConnected())
		}
		return nil
	})
	t.Logf("NotReady %.1fs after SIGKILL", time.Since(killed).Seconds())

	n := c.mustGetNode(t, a.nodeID)
	if n.GetLastHeartbeat() == nil || n.GetLastHeartbeat().AsTime().After(killed) {
		t.Errorf("last heartbeat %v; want one before the kill at %v", n.GetLastHeartbeat(), killed)
	}
	if tbl := c.mustBudctl(t, "nodes", "list"); !strings.Contains(tbl, "NotReady") {
		t.Errorf("nodes list table:\n%s\nwant NotReady", tbl)
	}
	if m := c.metrics(t); !strings.Contains(m, "bud_controller_ready_nodes 0") || !strings.Contains(m, "bud_controller_connected_agents 0") {
		t.Errorf("metrics: %v %v; want no ready or connected node", metricSamples(m, "bud_controller_ready_nodes"), metricSamples(m, "bud_controller_connected_agents"))
	}
}
