package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

// TestMaintenanceTask: a maintenance.task queued with budctl runs on the
// node; its output tail shows in 'budctl commands get' while it runs, and
// its exit code and output at the end. The node shows its boot id.
func TestMaintenanceTask(t *testing.T) {
	t.Parallel()
	c := startController(t)
	a := joinAgent(t, c, c.createToken(t), "node-maint")
	a.start(t)
	a.waitReady(t)

	dir := t.TempDir()
	release := filepath.Join(dir, "release")
	script := filepath.Join(dir, "task.sh")
	if err := os.WriteFile(script, []byte(fmt.Sprintf(`echo "node=$BUD_NODE_ID name=$BUD_NODE_NAME campaign=$BUD_CAMPAIGN_ID"
echo started
while [ ! -e %s ]; do sleep 0.05; done
echo "disk 3 replaced" >&2
echo finished
exit 3
`, release)), 0o600); err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(c.mustBudctl(t, "commands", "create", "maintenance.task", "--node", a.nodeID,
		"--script", script, "--param", "campaign_id=camp-e2e", "--param", "timeout=2m"))

	// Streamed while it runs: the script waits for the release file.
	wantHead := fmt.Sprintf("node=%s name=node-maint campaign=camp-e2e\nstarted\n", a.nodeID)
	eventually(t, 20*time.Second, func() error {
		cm, err := c.getCommand(id)
		if err != nil {
			return err
		}
		switch cm.GetState() {
		case fleetv1.CommandState_COMMAND_STATE_DELIVERED:
		case fleetv1.CommandState_COMMAND_STATE_PENDING:
			return errors.New("command not yet marked delivered") // written shortly after the send
		default:
			t.Fatalf("command %s before the script was released; want it running", cm.GetState())
		}
		if got := cm.GetOutputTail().GetStdout(); got != wantHead {
			return fmt.Errorf("streamed stdout %q, want %q", got, wantHead)
		}
		return nil
	})
	table := c.mustBudctl(t, "commands", "get", id)
	if !strings.Contains(table, "Streamed stdout:\n    node="+a.nodeID) || !strings.Contains(table, "    started\n") || !strings.Contains(table, "delivered") {
		t.Errorf("commands get while it runs:\n%s", table)
	}

	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var cm *fleetv1.Command
	eventually(t, 20*time.Second, func() error {
		var err error
		if cm, err = c.getCommand(id); err != nil {
			return err
		}
		if cm.GetState() != fleetv1.CommandState_COMMAND_STATE_FAILED {
			return fmt.Errorf("command %s", cm.GetState())
		}
		return nil
	})
	out := cm.GetOutput()
	if cm.GetMessage() != "the task exited with status 3" || out["exit_code"] != "3" || out["stdout"] != wantHead+"finished\n" || out["stderr"] != "disk 3 replaced\n" || cm.GetDeliveries() != 1 {
		t.Errorf("result: %s, output %v, deliveries %d", cm.GetMessage(), out, cm.GetDeliveries())
	}
	if tail := cm.GetOutputTail(); tail.GetStdout() != wantHead+"finished\n" || tail.GetStderr() != "disk 3 replaced\n" {
		t.Errorf("streamed tail at the end: %v", tail)
	}
	table = c.mustBudctl(t, "commands", "get", id)
	if !strings.Contains(table, "Output stdout:\n    node=") || !strings.Contains(table, "    finished\n") || !regexpMatch(`Output exit_code:\s+3\n`, table) {
		t.Errorf("commands get at the end:\n%s", table)
	}

	// Bad input is refused when queued, and nothing is stored.
	big := filepath.Join(dir, "big.sh")
	if err := os.WriteFile(big, make([]byte, 256<<10+1), 0o600); err != nil {
		t.Fatal(err)
	}
	before, _, _ := c.budctl("commands", "list", "--node", a.nodeID, "-o", "json")
	if _, stderr, err := c.budctl("commands", "create", "maintenance.task", "--node", a.nodeID, "--script", big); err == nil || !strings.Contains(stderr, "256 KiB") {
		t.Errorf("an oversized script: %v %s", err, stderr)
	}
	if _, stderr, err := c.budctl("commands", "create", "maintenance.task", "--node", a.nodeID, "--script", script, "--param", "timeout=forever"); err == nil || !strings.Contains(stderr, "Go duration") {
		t.Errorf("a bad timeout: %v %s", err, stderr)
	}
	if after, _, _ := c.budctl("commands", "list", "--node", a.nodeID, "-o", "json"); after != before {
		t.Errorf("a refused command was stored:\n%s", after)
	}

	// The node's boot id is this machine's.
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		if n := c.mustGetNode(t, a.nodeID); n.GetBootId() != strings.TrimSpace(string(b)) || n.GetInventory().GetBootId() != n.GetBootId() {
			t.Errorf("node boot id %q, inventory %q; want %q", n.GetBootId(), n.GetInventory().GetBootId(), strings.TrimSpace(string(b)))
		}
		if table := c.mustBudctl(t, "nodes", "get", a.nodeID); !regexpMatch(`Boot ID:\s+`+strings.TrimSpace(string(b)), table) {
			t.Errorf("nodes get shows no boot id:\n%s", table)
		}
	}
}

// TestMaintenanceReboot: maintenance.reboot runs the agent's configured
// reboot command after its result is recorded; here that command stands
// in for a reboot by writing a new boot id and stopping the agent, which
// the test starts again as systemd would. The result is recorded once,
// the node comes back with the new boot id, and the reboot is not
// repeated.
func TestMaintenanceReboot(t *testing.T) {
	t.Parallel()
	c := startController(t)
	a := joinAgent(t, c, c.createToken(t), "node-reboot")
	dir := t.TempDir()
	bootIDFile, reboots := filepath.Join(dir, "boot_id"), filepath.Join(dir, "reboots")
	const boot1, boot2 = "5b0c6a7e-1d2f-4e3a-9b8c-7d6e5f4a3b21", "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"
	if err := os.WriteFile(bootIDFile, []byte(boot1+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rebootScript := filepath.Join(dir, "reboot.sh")
	if err := os.WriteFile(rebootScript, []byte(fmt.Sprintf(`#!/bin/sh
echo reboot >> %s
echo %s > %s
kill -TERM $PPID
`, reboots, boot2, bootIDFile)), 0o700); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(a.configPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "boot_id_file: %s\nmaintenance:\n  reboot_command: [/bin/sh, %s]\n", bootIDFile, rebootScript)
	f.Close()
	a.start(t)
	a.waitReady(t)
	if n := c.mustGetNode(t, a.nodeID); n.GetBootId() != boot1 {
		t.Fatalf("boot id %q before the reboot, want %q", n.GetBootId(), boot1)
	}

	id := strings.TrimSpace(c.mustBudctl(t, "commands", "create", "maintenance.reboot", "--node", a.nodeID, "--param", "campaign_id=camp-e2e"))
	// The "reboot" takes the agent down.
	select {
	case <-a.proc.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the agent did not stop: the reboot command did not run")
	}
	if a.proc.waitErr != nil {
		t.Errorf("the agent exited with %v; want a clean stop on SIGTERM", a.proc.waitErr)
	}
	// Its result was recorded and sent before the reboot ran.
	cm, err := c.getCommand(id)
	if err != nil {
		t.Fatal(err)
	}
	if cm.GetState() != fleetv1.CommandState_COMMAND_STATE_SUCCEEDED || cm.GetMessage() != "reboot started" || cm.GetOutput()["boot_id"] != boot1 {
		t.Fatalf("command after the reboot began: %s %q %v; want succeeded, \"reboot started\", the old boot id", cm.GetState(), cm.GetMessage(), cm.GetOutput())
	}
	finished := cm.GetFinishedAt().AsTime()

	// The node boots: the supervisor starts the agent again.
	a.start(t)
	a.waitReady(t)
	eventually(t, 10*time.Second, func() error {
		if n := c.mustGetNode(t, a.nodeID); n.GetBootId() != boot2 {
			return fmt.Errorf("boot id %q, want the new %q", n.GetBootId(), boot2)
		}
		return nil
	})
	// A second boot without any reboot: still nothing repeated.
	a.stop(t)
	a.start(t)
	a.waitReady(t)
	consistently(t, 2*time.Second, func() error {
		if a.proc.exited() {
			return fmt.Errorf("the agent stopped again: %v", a.proc.waitErr)
		}
		b, _ := os.ReadFile(reboots)
		if n := strings.Count(string(b), "reboot"); n != 1 {
			return fmt.Errorf("rebooted %d times, want once", n)
		}
		cm, err := c.getCommand(id)
		if err != nil {
			return err
		}
		if cm.GetState() != fleetv1.CommandState_COMMAND_STATE_SUCCEEDED || !cm.GetFinishedAt().AsTime().Equal(finished) || cm.GetDeliveries() != 1 {
			return fmt.Errorf("command now %s, finished %s (was %s), deliveries %d", cm.GetState(), cm.GetFinishedAt().AsTime(), finished, cm.GetDeliveries())
		}
		return nil
	})
	if n := strings.Count(readLog(c.logPath), `"command_id":"`+id+`","kind":"maintenance.reboot","state":"succeeded"`); n != 1 {
		t.Errorf("the controller recorded the reboot's result %d times, want once", n)
	}
	if n := strings.Count(a.log(), "rebooting the node"); n != 1 {
		t.Errorf("the agent logged %d reboots, want one", n)
	}
}

func regexpMatch(pattern, s string) bool { return regexp.MustCompile(pattern).MatchString(s) }
