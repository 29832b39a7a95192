package e2e

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

// TestHungAgent: an agent that hangs (SIGSTOP) with its connection left
// open is NotReady once the grace has passed since its last heartbeat, and
// not before, though its session is still up; after SIGCONT it is Ready
// again.
func TestHungAgent(t *testing.T) {
	t.Parallel()
	const grace = 3 * time.Second
	c := startController(t, withHeartbeat("500ms", grace.String()))
	a := joinAgent(t, c, c.createToken(t), "node-hung")
	a.start(t)
	a.waitReady(t)
	pid := a.proc.cmd.Process
	// Runs before the harness's kill: a stopped process is let go on.
	t.Cleanup(func() { _ = pid.Signal(syscall.SIGCONT) })

	if err := pid.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	// Every observation is bracketed by when its budctl call started and
	// ended: a Ready one says the controller counted the node Ready at
	// some moment in between, and so for a NotReady one.
	var last time.Time // the last heartbeat the controller saw
	var firstNotReadyStart, firstNotReadyEnd time.Time
	for deadline := stopped.Add(grace + 15*time.Second); firstNotReadyEnd.IsZero(); {
		if time.Now().After(deadline) {
			t.Fatalf("still Ready %s after SIGSTOP (grace %s)", time.Since(stopped), grace)
		}
		start := time.Now()
		n, err := c.getNode(a.nodeID)
		end := time.Now()
		if err != nil {
			t.Fatal(err)
		}
		if !n.GetConnected() {
			t.Fatalf("%s after SIGSTOP the node is disconnected: the connection is open, the agent only hung", end.Sub(stopped))
		}
		last = n.GetLastHeartbeat().AsTime()
		if n.GetStatus() == fleetv1.NodeStatus_NODE_STATUS_NOT_READY {
			firstNotReadyStart, firstNotReadyEnd = start, end
		}
	}
	if last.After(stopped) {
		t.Fatalf("a heartbeat at %s, after the SIGSTOP at %s", last.Format(time.RFC3339Nano), stopped.Format(time.RFC3339Nano))
	}
	// Not before: the controller's NotReady came at least a grace after the
	// last heartbeat.
	if firstNotReadyEnd.Before(last.Add(grace)) {
		t.Fatalf("NotReady by %s, %s after the last heartbeat: before the %s grace", firstNotReadyEnd.Format(time.RFC3339Nano), firstNotReadyEnd.Sub(last), grace)
	}
	// After the grace: the first poll that started over a second past
	// it saw NotReady (polls follow each other back to back).
	if late := firstNotReadyStart.Sub(last.Add(grace)); late > time.Second {
		t.Fatalf("NotReady first seen by a poll started %s after the grace ran out", late)
	}
	t.Logf("last heartbeat %s before SIGSTOP; NotReady seen %s-%s after it (grace %s)",
		stopped.Sub(last).Round(time.Millisecond), firstNotReadyStart.Sub(last).Round(time.Millisecond), firstNotReadyEnd.Sub(last).Round(time.Millisecond), grace)

	if err := pid.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	eventually(t, 10*time.Second, func() error {
		if err := a.readyErr(); err != nil {
			return fmt.Errorf("%s after SIGCONT: %w", time.Since(resumed).Round(time.Millisecond), err)
		}
		return nil
	})
	t.Logf("Ready again %s after SIGCONT", time.Since(resumed).Round(time.Millisecond))
}
