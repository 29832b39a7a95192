package fleetbench

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/command"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
	"github.com/bud-ecosystem/budfleet/test/fleetsim"
)

// TestSimulatedAgentsAgainstController runs one bud-fleetsim process of
// virtual agents against a real bud-controller: each enrolls, connects and
// reports its inventory and eight mock H100s under its own name; a command
// runs once on its node; after a SIGKILL and restart of the controller the
// agents come back on their own (their backoff) and the next command runs
// once too.
func TestSimulatedAgentsAgainstController(t *testing.T) {
	const n = 12
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	root := t.TempDir()
	ct, err := startCtl(ctx, root, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { ct.p.stop() }()
	fc, closeFleet, err := ct.fleet(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer closeFleet()
	tok, err := fc.CreateToken(ctx, &fleetv1.CreateTokenRequest{Description: "simtest"})
	if err != nil {
		t.Fatal(err)
	}
	control, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	p, err := startProc("sim", filepath.Join(root, "sim.log"), simBin, "agents", "--controller", ct.addr, "--token", tok.GetJoinToken(),
		"--count", strconv.Itoa(n), "--name-prefix", "simtest-", "--control", control, "--backoff-max", "2s")
	if err != nil {
		t.Fatal(err)
	}
	defer p.stop()
	s := &sim{p: p, control: control, count: n}
	waitFor(t, 60*time.Second, "every agent enrolled", func() (bool, string) {
		var st fleetsim.Stats
		if err := s.get("/stats", &st); err != nil {
			return false, err.Error()
		}
		if st.EnrollError != "" {
			t.Fatalf("enrolment: %s", st.EnrollError)
		}
		return int(st.Enrolled) == n, fmt.Sprintf("%+v", st)
	})
	if v, _ := ct.connected(); v != 0 {
		t.Fatalf("%v agents connected before /start", v)
	}
	if err := s.post("/start"); err != nil {
		t.Fatal(err)
	}
	var nodes []*fleetv1.Node
	waitFor(t, 60*time.Second, "every node connected with its inventory and 8 GPUs", func() (bool, string) {
		resp, err := fc.ListNodes(ctx, &fleetv1.ListNodesRequest{})
		if err != nil {
			return false, err.Error()
		}
		nodes = resp.GetNodes()
		ok := len(nodes) == n
		for _, nd := range nodes {
			if !nd.GetConnected() || nd.GetInventory().GetHostname() != nd.GetHostname() || len(nd.GetGpus().GetInventory().GetGpus()) != 8 {
				ok = false
			}
		}
		return ok, fmt.Sprintf("%d nodes", len(nodes))
	})
	seenHost := map[string]bool{}
	for _, nd := range nodes {
		if seenHost[nd.GetInventory().GetMachineId()] {
			t.Errorf("machine id %s reported by two agents", nd.GetInventory().GetMachineId())
		}
		seenHost[nd.GetInventory().GetMachineId()] = true
	}

	runOnce := func(node string) {
		t.Helper()
		cr, err := fc.CreateCommand(ctx, &fleetv1.CreateCommandRequest{NodeId: node, Kind: command.InventoryCollect})
		if err != nil {
			t.Fatal(err)
		}
		id := cr.GetCommand().GetId()
		waitFor(t, 60*time.Second, "command "+id+" succeeded", func() (bool, string) {
			g, err := fc.GetCommand(ctx, &fleetv1.GetCommandRequest{Id: id})
			if err != nil {
				return false, err.Error()
			}
			return g.GetCommand().GetState() == fleetv1.CommandState_COMMAND_STATE_SUCCEEDED, g.GetCommand().GetState().String()
		})
		var seen fleetsim.Commands
		if err := s.get("/commands", &seen); err != nil {
			t.Fatal(err)
		}
		found := false
		for _, c := range seen.Commands {
			if c.ID == id {
				found = c.Node == node && c.Results >= 1
			}
		}
		if !found {
			t.Fatalf("the simulator did not see command %s reach node %s and answer: %+v", id, node, seen.Commands)
		}
		for _, a := range seen.Agents {
			if int(a.Runs) != a.Distinct {
				t.Fatalf("agent %s ran its handler %d times for %d distinct commands", a.Node, a.Runs, a.Distinct)
			}
		}
	}
	runOnce(nodes[0].GetId())

	// SIGKILL and restart on the same data.
	ct.p.kill()
	if err := ct.start(ctx); err != nil {
		t.Fatal(err)
	}
	closeFleet()
	if fc, closeFleet, err = ct.fleet(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "every agent back after the restart", func() (bool, string) {
		v, err := ct.connected()
		return err == nil && int(v) == n, fmt.Sprint(v, err)
	})
	runOnce(nodes[1].GetId())
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s (last: %s)", what, d, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
