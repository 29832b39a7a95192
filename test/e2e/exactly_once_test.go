package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

// onceTask is a maintenance.task whose side effect can be counted: each run
// appends a line to count, writes its process group to pid, and then waits
// for release.
type onceTask struct {
	dir, count, pid, release, script string
}

func newOnceTask(t *testing.T) *onceTask {
	t.Helper()
	dir := t.TempDir()
	o := &onceTask{dir: dir, count: filepath.Join(dir, "count"), pid: filepath.Join(dir, "pid"), release: filepath.Join(dir, "release"), script: filepath.Join(dir, "task.sh")}
	if err := os.WriteFile(o.script, []byte(fmt.Sprintf("echo $$ > %s\necho ran >> %s\nwhile [ ! -e %s ]; do sleep 0.05; done\necho finished\n", o.pid, o.count, o.release)), 0o600); err != nil {
		t.Fatal(err)
	}
	// The task runs in its own process group, which outlives a SIGKILLed
	// agent: end it with the test.
	t.Cleanup(func() {
		if b, err := os.ReadFile(o.pid); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
				_ = syscall.Kill(-pid, syscall.SIGKILL)
			}
		}
	})
	return o
}

func (o *onceTask) runs(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile(o.count)
	if os.IsNotExist(err) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "ran\n")
}

// start queues the task and waits until it runs: delivered, its effect
// done, no result yet.
func (o *onceTask) start(t *testing.T, c *controller, a *agent) string {
	t.Helper()
	id := strings.TrimSpace(c.mustBudctl(t, "commands", "create", "maintenance.task", "--node", a.nodeID, "--script", o.script, "--param", "timeout=2m"))
	// The delivered state is written shortly after the send.
	eventually(t, 20*time.Second, func() error {
		if n := o.runs(t); n != 1 {
			return fmt.Errorf("the task ran %d times", n)
		}
		cm, err := c.getCommand(id)
		if err != nil {
			return err
		}
		if cm.GetState() != fleetv1.CommandState_COMMAND_STATE_DELIVERED {
			return fmt.Errorf("command %s while its task runs; want delivered", cm.GetState())
		}
		return nil
	})
	return id
}

func waitDone(t *testing.T, c *controller, id string) *fleetv1.Command {
	t.Helper()
	var cm *fleetv1.Command
	eventually(t, 30*time.Second, func() error {
		var err error
		if cm, err = c.getCommand(id); err != nil {
			return err
		}
		if s := cm.GetState(); s != fleetv1.CommandState_COMMAND_STATE_SUCCEEDED && s != fleetv1.CommandState_COMMAND_STATE_FAILED {
			return fmt.Errorf("command %s", s)
		}
		return nil
	})
	return cm
}

// TestExactlyOnceAgentKilledMidCommand: the agent is SIGKILLed while a
// delivered task runs, before its result is stored. The restarted agent is
// sent the command again and reports it interrupted instead of running it a
// second time: the side effect happened once.
func TestExactlyOnceAgentKilledMidCommand(t *testing.T) {
	t.Parallel()
	c := startController(t)
	a := joinAgent(t, c, c.createToken(t), "node-once-agent")
	a.start(t)
	a.waitReady(t)
	o := newOnceTask(t)
	id := o.start(t, c, a)

	a.kill(t)
	a.start(t)
	a.waitReady(t)
	cm := waitDone(t, c, id)
	if cm.GetState() != fleetv1.CommandState_COMMAND_STATE_FAILED || !strings.Contains(cm.GetMessage(), "interrupted") {
		t.Fatalf("command %s %q; want failed as interrupted", cm.GetState(), cm.GetMessage())
	}
	if cm.GetDeliveries() < 2 {
		t.Fatalf("delivered %d times; want again after the restart", cm.GetDeliveries())
	}
	// The first run is still waiting for its release: had the restarted
	// agent run the task again, the count would be 2 already.
	if n := o.runs(t); n != 1 {
		t.Fatalf("the task ran %d times", n)
	}
	// A second restart, and the stored result is reported, nothing run.
	a.stop(t)
	a.start(t)
	a.waitReady(t)
	if err := os.WriteFile(o.release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if cm2 := waitDone(t, c, id); cm2.GetState() != cm.GetState() || cm2.GetMessage() != cm.GetMessage() {
		t.Fatalf("after another restart: %s %q", cm2.GetState(), cm2.GetMessage())
	}
	if n := o.runs(t); n != 1 {
		t.Fatalf("the task ran %d times", n)
	}
}

// TestExactlyOnceControllerKilledMidCommand: the controller is SIGKILLed
// between a task's delivery and its result. The task finishes while no
// controller runs; the restarted controller gets the agent's stored result
// (delivering the command again if it must), and the task ran once.
func TestExactlyOnceControllerKilledMidCommand(t *testing.T) {
	t.Parallel()
	c := startController(t)
	a := joinAgent(t, c, c.createToken(t), "node-once-ctl")
	a.start(t)
	a.waitReady(t)
	o := newOnceTask(t)
	id := o.start(t, c, a)

	c.kill(t)
	if err := os.WriteFile(o.release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, func() error {
		b, err := os.ReadFile(o.pid)
		if err != nil {
			return err
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		if pid > 1 && syscall.Kill(pid, 0) == nil {
			return fmt.Errorf("the task (pid %d) still runs", pid)
		}
		return nil
	})
	c.restart(t)
	a.waitReady(t)
	cm := waitDone(t, c, id)
	if cm.GetState() != fleetv1.CommandState_COMMAND_STATE_SUCCEEDED || cm.GetOutput()["stdout"] != "finished\n" || cm.GetOutput()["exit_code"] != "0" {
		t.Fatalf("command %s %q output %v; want succeeded with the run's output", cm.GetState(), cm.GetMessage(), cm.GetOutput())
	}
	if n := o.runs(t); n != 1 {
		t.Fatalf("the task ran %d times", n)
	}
}
