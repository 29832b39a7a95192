package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
	maintv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/maint/v1"
)

// upgradeAgent is an agent that runs from a copy of bud-agent of its own
// (an upgrade replaces the binary it runs) under a supervisor that starts
// it again whenever it exits, as systemd's Restart= does.
type upgradeAgent struct {
	*agent
	bin string
}

// supervise runs the agent's binary until the test ends, restarting it
// 200ms after each exit.
func (u *upgradeAgent) supervise(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			f, err := os.OpenFile(u.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
			if err != nil {
				return
			}
			fmt.Fprintf(f, "=== %s supervisor starts %s\n", time.Now().Format(time.RFC3339Nano), u.bin)
			cmd := exec.CommandContext(ctx, u.bin, u.runArgs()...)
			cmd.Stdout, cmd.Stderr = f, f
			setDeathSignal(cmd)
			err = cmd.Run()
			fmt.Fprintf(f, "=== %s supervisor: exited: %v\n", time.Now().Format(time.RFC3339Nano), err)
			f.Close()
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
}

// binVersion runs BIN version.
func binVersion(t *testing.T, bin string) string {
	t.Helper()
	return strings.TrimSpace(mustRun(t, bin, "version"))
}

// waitCampaign waits until the campaign is done (completed, stopped or
// aborted) and returns it.
func (c *controller) waitCampaign(t *testing.T, id string, timeout time.Duration) *maintv1.Campaign {
	t.Helper()
	var camp *maintv1.Campaign
	eventually(t, timeout, func() error {
		var err error
		if camp, err = c.getCampaign(id); err != nil {
			return err
		}
		switch camp.GetState() {
		case maintv1.CampaignState_CAMPAIGN_STATE_COMPLETED, maintv1.CampaignState_CAMPAIGN_STATE_STOPPED, maintv1.CampaignState_CAMPAIGN_STATE_ABORTED:
			return nil
		}
		return fmt.Errorf("campaign %s is %s", id, camp.GetState())
	})
	return camp
}

// TestAgentUpgrade rolls a rebuilt bud-agent (a new version string) out to
// three real agents from the artifact store, one at a time, with the
// controller SIGKILLed and restarted mid-rollout: every node comes back on
// the new version, its previous binary kept beside it. Then a "binary" that
// exits at once: the first node rolls itself back (Ready again on the
// version it ran), the campaign fails it and its breaker stops the rollout
// before the other nodes start.
func TestAgentUpgrade(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	const newVersion = "v9.9.9-e2e"
	newBin := filepath.Join(dir, "new", "bud-agent")
	build := exec.Command(goTool(), "build", "-o", newBin, "-ldflags", "-X github.com/bud-ecosystem/budfleet/version.Version="+newVersion, "./cmd/bud-agent")
	build.Dir = repoRoot
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the new agent: %v\n%s", err, out)
	}
	broken := filepath.Join(dir, "broken")
	if err := os.WriteFile(broken, []byte("#!/bin/sh\necho this bud-agent exits at once >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	oldVersion := binVersion(t, filepath.Join(binDir, "bud-agent"))

	c := startController(t)
	platform := "linux/" + runtime.GOARCH
	newDigest, _ := c.push(t, newBin, "--name", "bud-agent", "--version", newVersion, "--platform", platform, "--kind", "binary")
	c.push(t, broken, "--name", "bud-agent", "--version", "v9.9.9-broken", "--platform", platform, "--kind", "binary")

	tok := c.createToken(t, "--label", "pool=upgrade")
	var agents []*upgradeAgent
	for i := range 3 {
		a := joinAgent(t, c, tok, fmt.Sprintf("upg-%d", i))
		cfg, err := os.ReadFile(a.configPath)
		if err != nil {
			t.Fatal(err)
		}
		// The restart stops the agent; the supervisor starts the binary
		// now in place. The rollback watch needs no systemd-run here.
		cfg = append(cfg, "upgrade: {restart_command: [/bin/sh, -c, 'kill -TERM $BUD_AGENT_PID'], watch_prefix: []}\n"...)
		if err := os.WriteFile(a.configPath, cfg, 0o600); err != nil {
			t.Fatal(err)
		}
		u := &upgradeAgent{agent: a, bin: filepath.Join(filepath.Dir(a.stateDir), "bin", "bud-agent")}
		if err := os.MkdirAll(filepath.Dir(u.bin), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := copyInto(filepath.Join(binDir, "bud-agent"), u.bin); err != nil {
			t.Fatal(err)
		}
		u.supervise(t)
		agents = append(agents, u)
	}
	for _, u := range agents {
		if err := poll(20*time.Second, u.readyErr); err != nil {
			t.Fatalf("agent %s not Ready: %v", u.hostname, err)
		}
	}

	// Bad input, refused before anything is stored.
	if _, stderr, err := c.budctl("agents", "upgrade", "--selector", "pool=upgrade", "--version", "v0.0.0-none"); err == nil || !strings.Contains(stderr, "no artifact bud-agent@v0.0.0-none for "+platform) {
		t.Errorf("an upgrade to a version not in the store: %v %q", err, stderr)
	}

	start := time.Now()
	id := strings.TrimSpace(c.mustBudctl(t, "agents", "upgrade", "--selector", "pool=upgrade", "--version", newVersion, "--max-unavailable", "1", "--upgrade-timeout", "30s"))
	// SIGKILL the controller once the first node is done and the second
	// is on its way.
	var doneAtKill uint32
	eventually(t, 90*time.Second, func() error {
		camp, err := c.getCampaign(id)
		if err != nil {
			return err
		}
		if doneAtKill = camp.GetNodesDone(); doneAtKill < 1 {
			return fmt.Errorf("campaign: %d nodes done", camp.GetNodesDone())
		}
		return nil
	})
	c.kill(t)
	if doneAtKill == 3 {
		t.Fatal("the rollout was over before the controller was killed")
	}
	c.restart(t)
	camp := c.waitCampaign(t, id, 3*time.Minute)
	if camp.GetState() != maintv1.CampaignState_CAMPAIGN_STATE_COMPLETED || camp.GetNodesDone() != 3 {
		t.Fatalf("the upgrade campaign ended %s (%s), %d of 3 nodes done", camp.GetState(), camp.GetStateReason(), camp.GetNodesDone())
	}
	t.Logf("three agents upgraded from %s to %s in %s (the controller restarted in the middle)", oldVersion, newVersion, time.Since(start).Round(100*time.Millisecond))
	for _, n := range camp.GetNodes() {
		if n.GetVersionBefore() != oldVersion || n.GetVersionAfter() != newVersion {
			t.Errorf("node %s: %s -> %s; want %s -> %s", n.GetNodeId(), n.GetVersionBefore(), n.GetVersionAfter(), oldVersion, newVersion)
		}
		// The result comes from the new binary, once it connected.
		cmd := c.waitCommandDone(t, n.GetUpgradeCommandId(), 30*time.Second)
		if cmd.GetState() != fleetv1.CommandState_COMMAND_STATE_SUCCEEDED || !strings.Contains(cmd.GetMessage(), "upgraded from "+oldVersion+" to "+newVersion) {
			t.Errorf("node %s's agent.upgrade: %s %q", n.GetNodeId(), cmd.GetState(), cmd.GetMessage())
		}
	}
	for _, u := range agents {
		if v := binVersion(t, u.bin); v != newVersion {
			t.Errorf("%s runs a binary of version %s; want %s", u.hostname, v, newVersion)
		}
		if v := binVersion(t, u.bin+".prev"); v != oldVersion {
			t.Errorf("%s kept a binary of version %s; want %s", u.hostname, v, oldVersion)
		}
		if d := fileDigest(t, u.bin); d != newDigest {
			t.Errorf("%s's binary hashes to %s; want the artifact's %s", u.hostname, d, newDigest)
		}
		if got := c.mustGetNode(t, u.nodeID).GetInventory().GetAgentVersion(); got != newVersion {
			t.Errorf("%s reports agent version %q; want %s", u.hostname, got, newVersion)
		}
	}

	// A binary that exits at once: rolled back, and the breaker stops the
	// rollout at the first failure.
	id = strings.TrimSpace(c.mustBudctl(t, "agents", "upgrade", "--selector", "pool=upgrade", "--version", "v9.9.9-broken", "--max-unavailable", "1", "--max-failures", "1", "--upgrade-timeout", "5s"))
	camp = c.waitCampaign(t, id, 2*time.Minute)
	if camp.GetState() != maintv1.CampaignState_CAMPAIGN_STATE_STOPPED || camp.GetNodesFailed() != 1 || camp.GetNodesQueued() != 2 {
		t.Fatalf("the broken upgrade: %s (%s), %d failed, %d queued; want stopped with 1 failed and 2 never started", camp.GetState(), camp.GetStateReason(), camp.GetNodesFailed(), camp.GetNodesQueued())
	}
	var failed *agent
	for _, n := range camp.GetNodes() {
		if n.GetStep() != maintv1.NodeStep_NODE_STEP_FAILED {
			continue
		}
		if !strings.Contains(n.GetError(), "rolled back to "+newVersion+": v9.9.9-broken did not connect") {
			t.Errorf("the failed node's error: %q; want it to say it rolled back", n.GetError())
		}
		for _, u := range agents {
			if u.nodeID == n.GetNodeId() {
				failed = u.agent
				if v := binVersion(t, u.bin); v != newVersion {
					t.Errorf("after the rollback %s's binary is %s; want %s back", u.hostname, v, newVersion)
				}
			}
		}
	}
	if failed == nil {
		t.Fatal("no failed node in the broken upgrade")
	}
	if err := poll(20*time.Second, failed.readyErr); err != nil {
		t.Fatalf("the rolled-back node is not Ready: %v", err)
	}
	if got := c.mustGetNode(t, failed.nodeID).GetInventory().GetAgentVersion(); got != newVersion {
		t.Errorf("the rolled-back node reports %q; want %s", got, newVersion)
	}
	if log := failed.log(); !strings.Contains(log, "upgrade rolled back") {
		t.Errorf("the rolled-back agent's log says nothing of the rollback")
	}
}

// copyInto copies an executable.
func copyInto(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}
