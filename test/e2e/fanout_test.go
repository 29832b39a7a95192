package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

var batchLineRe = regexp.MustCompile(`^([0-9a-f-]{36})\s+(\d+) commands\n$`)

// TestFanOut: one command to many real agents (a label selector, then all
// nodes) is delivered to each and succeeds; 'commands batch -w' follows it
// to the end; a selector matching nothing and bad input are refused with a
// clear error and queue nothing; the fan-out is one audit event.
func TestFanOut(t *testing.T) {
	t.Parallel()
	c := startController(t)
	r1 := c.createToken(t, "--label", "rack=r1")
	r2 := c.createToken(t, "--label", "rack=r2")
	var agents []*agent
	for i, tok := range []string{r1, r1, r1, r2} {
		a := joinAgent(t, c, tok, fmt.Sprintf("fanout-%d", i))
		a.start(t)
		agents = append(agents, a)
	}
	for _, a := range agents {
		a.waitReady(t)
	}

	commandCount := func() int {
		t.Helper()
		var resp fleetv1.ListCommandsResponse
		if err := c.budctlJSON(&resp, "commands", "list"); err != nil {
			t.Fatal(err)
		}
		return len(resp.GetCommands())
	}

	out := c.mustBudctl(t, "commands", "create", "inventory.collect", "--selector", "rack=r1")
	m := batchLineRe.FindStringSubmatch(out)
	if m == nil || m[2] != "3" {
		t.Fatalf("commands create --selector printed %q; want a batch id and 3 commands", out)
	}
	batch := m[1]
	// -w returns once every command has a result, and fails if one failed.
	stdout, stderr, err := runBudctlTimeout(c, 30*time.Second, "commands", "batch", batch, "-w")
	if err != nil {
		t.Fatalf("commands batch -w: %v\n%s%s", err, stdout, stderr)
	}
	var b fleetv1.GetCommandBatchResponse
	if err := c.budctlJSON(&b, "commands", "batch", batch); err != nil {
		t.Fatal(err)
	}
	if b.GetTotal() != 3 || b.GetSucceeded() != 3 || b.GetKind() != "inventory.collect" {
		t.Fatalf("batch %s = %v; want 3 succeeded", batch, &b)
	}
	var list fleetv1.ListCommandsResponse
	if err := c.budctlJSON(&list, "commands", "list", "--batch", batch); err != nil {
		t.Fatal(err)
	}
	nodes := map[string]bool{}
	for _, cmd := range list.GetCommands() {
		nodes[cmd.GetNodeId()] = cmd.GetBatchId() == batch && cmd.GetState() == fleetv1.CommandState_COMMAND_STATE_SUCCEEDED && cmd.GetDeliveries() == 1
	}
	for i, a := range agents {
		if want := i < 3; nodes[a.nodeID] != want {
			t.Errorf("node %s (%s) in the rack=r1 batch done once: %v, want %v", a.nodeID, a.hostname, nodes[a.nodeID], want)
		}
	}

	all := batchLineRe.FindStringSubmatch(c.mustBudctl(t, "commands", "create", "inventory.collect", "--all"))
	if all == nil || all[2] != "4" {
		t.Fatal("commands create --all did not queue 4 commands")
	}
	eventually(t, 30*time.Second, func() error {
		var b fleetv1.GetCommandBatchResponse
		if err := c.budctlJSON(&b, "commands", "batch", all[1]); err != nil {
			return err
		}
		if b.GetSucceeded() != 4 {
			return fmt.Errorf("all-nodes batch: %v", &b)
		}
		return nil
	})
	named := batchLineRe.FindStringSubmatch(c.mustBudctl(t, "commands", "create", "inventory.collect", "--node", agents[0].nodeID, "--node", agents[3].nodeID))
	if named == nil || named[2] != "2" {
		t.Fatal("commands create with two --node did not queue a batch of 2")
	}

	// Refusals change nothing.
	before := commandCount()
	for _, tc := range []struct {
		args []string
		says string
	}{
		{[]string{"--selector", "rack=r9"}, "matches no node"},
		{[]string{"--selector", "rack in (r1"}, "label selector"},
		{[]string{"--node", agents[0].nodeID, "--node", "00000000-0000-0000-0000-000000000000"}, "no such node"},
		{[]string{"--all", "--selector", "rack=r1"}, "exactly one"},
		{[]string{"--all", "--param", "bogus=1"}, "bogus"},
	} {
		_, stderr, err := c.budctl(append([]string{"commands", "create", "inventory.collect"}, tc.args...)...)
		if err == nil || !strings.Contains(stderr, tc.says) {
			t.Errorf("commands create %v: %v, stderr %q; want a refusal saying %q", tc.args, err, stderr, tc.says)
		}
	}
	if n := commandCount(); n != before {
		t.Errorf("%d commands after the refusals, %d before", n, before)
	}
	if _, stderr, err := c.budctl("commands", "batch", "no-such-batch"); err == nil || !strings.Contains(stderr, "not found") {
		t.Errorf("commands batch of an unknown id: %v, %q", err, stderr)
	}

	// One audit event per fan-out, naming the batch, count and selector.
	type entry struct {
		Action   string `json:"action"`
		BatchID  string `json:"batch_id"`
		Count    string `json:"count"`
		Selector string `json:"selector"`
	}
	var fanouts []entry
	for _, line := range strings.Split(readLog(filepath.Join(c.dataDir, "audit.log")), "\n") {
		var e entry
		if json.Unmarshal([]byte(line), &e) == nil && e.Action == "command.fanout" {
			fanouts = append(fanouts, e)
		}
	}
	if len(fanouts) != 3 || fanouts[0].BatchID != batch || fanouts[0].Count != "3" || fanouts[0].Selector != "selector: rack=r1" || fanouts[1].Selector != "all" {
		t.Errorf("fan-out audit events = %+v; want 3, the first for %s (3, selector: rack=r1)", fanouts, batch)
	}
}

func runBudctlTimeout(c *controller, timeout time.Duration, args ...string) (string, string, error) {
	return runCmd(timeout, filepath.Join(binDir, "budctl"), append([]string{"--config", c.adminConfig}, args...)...)
}
