package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

// TestControllerCrashRestart: SIGKILL the controller with two nodes and a
// pending command; after a restart on the same data dir and port the running
// agent comes back by itself, the stopped one gets its command, nothing is
// lost.
func TestControllerCrashRestart(t *testing.T) {
	t.Parallel()
	c := startController(t)
	tok := c.createToken(t)
	_, tokenID, _ := tokenParts(t, tok)
	a := joinAgent(t, c, tok, "node-survivor")
	b := joinAgent(t, c, tok, "node-sleeper")
	a.start(t)
	b.start(t)
	a.waitReady(t)
	b.waitReady(t)

	// b goes away, then gets a command: it stays pending.
	b.stop(t)
	b.waitDisconnected(t)
	stdout := c.mustBudctl(t, "commands", "create", "inventory.collect", "--node", b.nodeID)
	cmdID := strings.TrimSpace(stdout)
	if len(cmdID) != 36 || strings.Count(stdout, "\n") != 1 {
		t.Fatalf("commands create printed %q; want the command id alone", stdout)
	}
	if err := commandIs(c, cmdID, fleetv1.CommandState_COMMAND_STATE_PENDING); err != nil {
		t.Fatal(err)
	}

	c.kill(t)
	if err := c.health(); err == nil {
		t.Fatal("the controller still answers after SIGKILL")
	}
	// The agent notices and keeps trying.
	eventually(t, 10*time.Second, func() error {
		if !strings.Contains(a.log(), "session with controller ended") {
			return fmt.Errorf("agent %s has not noticed the controller going", a.hostname)
		}
		return nil
	})
	c.restart(t)

	// a reconnects on its own.
	a.waitReady(t)
	if n := strings.Count(a.log(), "connected to controller"); n < 2 {
		t.Errorf("agent %s logged %d sessions, want a new one after the restart", a.hostname, n)
	}
	// The command survived the crash, still pending: b is still down.
	if err := commandIs(c, cmdID, fleetv1.CommandState_COMMAND_STATE_PENDING); err != nil {
		t.Error(err)
	}
	if n := c.mustGetNode(t, b.nodeID); n.GetConnected() || n.GetStatus() == fleetv1.NodeStatus_NODE_STATUS_READY {
		t.Errorf("stopped node %s: status %s connected %v", b.nodeID, n.GetStatus(), n.GetConnected())
	}

	b.start(t)
	b.waitReady(t)
	eventually(t, 15*time.Second, func() error { return commandIs(c, cmdID, fleetv1.CommandState_COMMAND_STATE_SUCCEEDED) })
	cm, err := c.getCommand(cmdID)
	if err != nil {
		t.Fatal(err)
	}
	if cm.GetOutput()["hostname"] != b.hostname || cm.GetNodeId() != b.nodeID {
		t.Errorf("command %s: output %v node %s; want the inventory of %s", cmdID, cm.GetOutput(), cm.GetNodeId(), b.nodeID)
	}
	if n := strings.Count(b.log(), `"msg":"running command"`); n != 1 {
		t.Errorf("agent %s ran a command %d times, want once", b.hostname, n)
	}
	// A session that opens with a command pending must still start with the
	// Welcome (see TestSessionStartsWithWelcome); otherwise bud-agent drops it
	// and every retry counts as one more delivery.
	if cm.GetDeliveries() != 1 || strings.Contains(b.log(), "did not answer the hello with a welcome") {
		t.Errorf("command %s delivered %d times to an agent that connected once; sessions the agent dropped for a missing welcome: %d",
			cmdID, cm.GetDeliveries(), strings.Count(b.log(), "did not answer the hello with a welcome"))
	}

	// No node lost, none added, the token not spent again.
	ns := c.mustListNodes(t)
	ids := map[string]string{}
	for _, n := range ns {
		ids[n.GetId()] = n.GetHostname()
	}
	if len(ns) != 2 || ids[a.nodeID] != a.hostname || ids[b.nodeID] != b.hostname {
		t.Errorf("nodes after the restart: %v; want %s and %s", ids, a.nodeID, b.nodeID)
	}
	if uses := c.tokenUses(t); uses[tokenID] != 2 {
		t.Errorf("token uses %d, want 2", uses[tokenID])
	}
	for _, x := range []*agent{a, b} {
		if err := x.readyErr(); err != nil {
			t.Error(err)
		}
	}
	if n := strings.Count(readLog(c.logPath), `"msg":"controller serving"`); n != 2 {
		t.Errorf("controller log shows %d starts, want 2", n)
	}

	// A graceful stop ends the sessions, exits cleanly, and both agents
	// come back after the next start too.
	c.stop(t)
	c.restart(t)
	a.waitReady(t)
	b.waitReady(t)
	if ns := c.mustListNodes(t); len(ns) != 2 {
		t.Errorf("%d nodes after a graceful restart, want 2", len(ns))
	}
}

// TestLocks: one controller per data dir, one agent per state dir, and init
// never overwrites a CA.
func TestLocks(t *testing.T) {
	t.Parallel()
	c := startController(t)
	tok := c.createToken(t)
	a := joinAgent(t, c, tok, "node-locked")
	a.start(t)
	a.waitReady(t)

	t.Run("second controller", func(t *testing.T) {
		args := []string{"serve", "--data-dir", c.dataDir,
			"--listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--metrics-listen", fmt.Sprintf("127.0.0.1:%d", freePort(t))}
		stdout, stderr, err := runCmd(30*time.Second, filepath.Join(binDir, "bud-controller"), args...)
		if err == nil {
			t.Fatalf("a second bud-controller serve on %s ran and exited cleanly:\n%s%s", c.dataDir, stdout, stderr)
		}
		if !strings.Contains(stderr, "in use") || !strings.Contains(stderr, "data-dir") {
			t.Errorf("second serve: %v: %q; want a message that the data dir is in use", err, stderr)
		}
	})
	t.Run("second agent", func(t *testing.T) {
		stdout, stderr, err := runCmd(30*time.Second, filepath.Join(binDir, "bud-agent"), a.runArgs()...)
		if err == nil {
			t.Fatalf("a second bud-agent run on %s ran and exited cleanly:\n%s%s", a.stateDir, stdout, stderr)
		}
		if !strings.Contains(stderr, "in use") || !strings.Contains(stderr, "state-dir") {
			t.Errorf("second agent: %v: %q; want a message that the state dir is in use", err, stderr)
		}
		// join on a state dir in use is refused the same way.
		_, stderr, err = a.join(tok)
		if err == nil || !strings.Contains(stderr, "in use") {
			t.Errorf("join on a state dir in use: %v %q", err, stderr)
		}
	})
	t.Run("second init", func(t *testing.T) {
		files := []string{"ca.crt", "ca.key", "server.crt", "server.key", "admin.budctl.yaml"}
		before := map[string][]byte{}
		for _, f := range files {
			b, err := os.ReadFile(filepath.Join(c.dataDir, f))
			if err != nil {
				t.Fatal(err)
			}
			before[f] = b
		}
		stdout, stderr, err := runCmd(30*time.Second, filepath.Join(binDir, "bud-controller"), "init", "--data-dir", c.dataDir, "--advertise", c.addr())
		if err == nil {
			t.Fatalf("a second init on %s succeeded:\n%s", c.dataDir, stdout)
		}
		if !strings.Contains(stderr, "refusing to overwrite") {
			t.Errorf("second init: %v: %q; want 'refusing to overwrite'", err, stderr)
		}
		for _, f := range files {
			b, err := os.ReadFile(filepath.Join(c.dataDir, f))
			if err != nil || string(b) != string(before[f]) {
				t.Errorf("%s changed after the refused init (%v)", f, err)
			}
		}
	})

	// The originals are unharmed.
	if err := a.readyErr(); err != nil {
		t.Error(err)
	}
	if ns := c.mustListNodes(t); len(ns) != 1 {
		t.Errorf("%d nodes, want 1", len(ns))
	}
	if c.proc.exited() || a.proc.exited() {
		t.Error("the first controller or agent exited")
	}
}

// TestAgentSurvivesControllerRestarts: an agent comes back after every
// controller restart, graceful or not. The controller tells the agent to
// heartbeat every 2ms, so that the agent is often sending at the moment its
// session ends: the case where a session's teardown can go wrong.
func TestAgentSurvivesControllerRestarts(t *testing.T) {
	t.Parallel()
	c := startController(t, withHeartbeat("2ms", "2s"))
	tok := c.createToken(t)
	a := joinAgent(t, c, tok, "node-resilient")
	a.start(t)
	a.waitReady(t)

	const rounds = 30
	for i := range rounds {
		how := "SIGTERM"
		if i%2 == 0 {
			c.stop(t)
		} else {
			how = "SIGKILL"
			c.kill(t)
		}
		c.restart(t)
		// The reconnect backoff is at most 1s.
		if err := poll(10*time.Second, a.readyErr); err != nil {
			a.fatalNotReady(t, fmt.Sprintf("within 10s of controller restart %d (%s)", i+1, how), err)
		}
	}
	if ns := c.mustListNodes(t); len(ns) != 1 || ns[0].GetId() != a.nodeID {
		t.Errorf("nodes after %d restarts: %v; want only %s", rounds, ns, a.nodeID)
	}
}
