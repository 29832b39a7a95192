package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	budagent "github.com/bud-ecosystem/budfleet/agent"
	"github.com/bud-ecosystem/budfleet/agent/inventory"
	"github.com/bud-ecosystem/budfleet/agent/state"
	"github.com/bud-ecosystem/budfleet/internal/kubetest"
	maintv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/maint/v1"
)

// TestCampaignHundredNodes: 100 kwok Nodes in 10 racks, their agents
// simulated in this process (the real agent library, each with its own
// state and mTLS session to the real bud-controller), a campaign with
// max-unavailable 10 and per-domain rack=2. A watch on the Node objects
// never sees more than 10 cordoned nor more than 2 in one rack, across a
// SIGKILL of the controller mid-campaign; the task runs once per node;
// nothing is left cordoned.
func TestCampaignHundredNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("a 100-node campaign; not in -short")
	}
	t.Parallel()
	const nodes, racks, maxUnavailable, perRack = 100, 10, 10, 2
	cp := kubetest.Start(t, kubetest.WithControllerManager(), kubetest.WithKwok())
	c := startController(t, withServeArgs("--maintenance-interval", "250ms"))
	f := startSimFleet(t, cp, c, nodes, racks)
	host, rackOf := f.host, f.rackOf
	nw := watchNodes(t, cp, func(n string) string { return rackOf[n] })

	dir := t.TempDir()
	runs := filepath.Join(dir, "runs")
	task := filepath.Join(dir, "task.sh")
	if err := os.WriteFile(task, []byte(fmt.Sprintf("echo \"$BUD_NODE_NAME\" >> %s\nsleep 0.2\n", runs)), 0o600); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	id := strings.TrimSpace(c.mustBudctl(t, "maintenance", "start", "--selector", "pool=sim", "--max-unavailable", fmt.Sprint(maxUnavailable),
		"--per-domain", fmt.Sprintf("rack=%d", perRack), "--task", task, "--name", "fleet"))

	// Kill the controller once a third of the nodes are done.
	eventually(t, 5*time.Minute, func() error {
		cm, err := c.getCampaign(id)
		if err != nil {
			return err
		}
		if cm.GetNodesDone() < nodes/3 {
			return fmt.Errorf("%d nodes done, %d in progress", cm.GetNodesDone(), cm.GetNodesInProgress())
		}
		return nil
	})
	before, _ := c.getCampaign(id)
	t.Logf("SIGKILL with %d nodes done, %d in progress; cordoned %v", before.GetNodesDone(), before.GetNodesInProgress(), nw.cordoned())
	c.kill(t)
	c.restart(t)

	var cm *maintv1.Campaign
	eventually(t, 10*time.Minute, func() error {
		var err error
		if cm, err = c.getCampaign(id); err != nil {
			return err
		}
		if cm.GetState() != maintv1.CampaignState_CAMPAIGN_STATE_COMPLETED {
			return fmt.Errorf("campaign %s: %d done, %d in progress, %d queued", cm.GetState(), cm.GetNodesDone(), cm.GetNodesInProgress(), cm.GetNodesQueued())
		}
		return nil
	})
	wall := time.Since(began)
	if cm.GetFailures() != 0 || cm.GetNodesDone() != nodes {
		t.Fatalf("campaign completed with %d failures, %d done: %v", cm.GetFailures(), cm.GetNodesDone(), cm.GetFailedNodes())
	}
	events, most := nw.seen()
	nw.mu.Lock()
	perRackSeen := maps.Clone(nw.maxPerRack)
	nw.mu.Unlock()
	t.Logf("%d nodes in %s (campaign elapsed %s); at most %d cordoned at once; per rack %v; %d Node events", nodes, wall.Round(time.Second), cm.GetElapsed().AsDuration(), most, perRackSeen, len(events))
	if most > maxUnavailable {
		t.Errorf("%d Nodes cordoned at once; max-unavailable is %d", most, maxUnavailable)
	}
	for r, k := range perRackSeen {
		if k > perRack {
			t.Errorf("%d Nodes of rack %s cordoned at once; per-domain is rack=%d", k, r, perRack)
		}
	}
	if len(perRackSeen) != racks {
		t.Errorf("cordons seen in %d racks, want %d", len(perRackSeen), racks)
	}
	if left := nw.cordoned(); len(left) > 0 {
		t.Errorf("cordoned at the end: %v", left)
	}
	b, _ := os.ReadFile(runs)
	for i := range nodes {
		if k := strings.Count(string(b), host(i)+"\n"); k != 1 {
			t.Errorf("the task ran %d times on %s", k, host(i))
		}
	}
}

// simFleet is startSimFleet's fleet.
type simFleet struct {
	host   func(i int) string // sim-000, sim-001, ...
	rackOf map[string]string  // host to rack
}

// startSimFleet adds c's Kubernetes cluster dc1 (cp) and n kwok Nodes in
// racks (runs of n/racks in name order, so the first nodes of a campaign's
// order share a rack), and runs an agent for each in this process (the real
// agent library, each with its own state and mTLS session to c), labelled
// pool=sim and rack=rNN, until the test ends; it returns once all are
// connected.
func startSimFleet(t testing.TB, cp *kubetest.ControlPlane, c *controller, n, racks int) *simFleet {
	t.Helper()
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, cp.Kubeconfig, 0o600); err != nil {
		t.Fatal(err)
	}
	c.mustBudctl(t, "clusters", "add", "dc1", "--kubeconfig", kubeconfig)

	host := func(i int) string { return fmt.Sprintf("sim-%03d", i) }
	rack := func(i int) string { return fmt.Sprintf("r%02d", i/(n/racks)) }
	f := &simFleet{host: host, rackOf: map[string]string{}}
	tokens := map[string]string{}
	for r := 0; r < n; r += n / racks {
		tokens[rack(r)] = c.createToken(t, "--label", "pool=sim", "--label", "rack="+rack(r), "--uses", fmt.Sprint(n))
	}
	for i := range n {
		cp.AddKwokNode(host(i), nil)
		f.rackOf[host(i)] = rack(i)
	}

	// The agents: enrolled, then run in this process until the test ends.
	states := make([]*state.DB, n)
	t.Cleanup(func() {
		for _, st := range states {
			if st != nil {
				st.Close()
			}
		}
	})
	g, gctx := errgroup.WithContext(t.Context())
	g.SetLimit(8)
	for i := range n {
		g.Go(func() error {
			st, err := state.Open(filepath.Join(dir, "agents", host(i)), 0)
			if err != nil {
				return err
			}
			states[i] = st
			_, err = budagent.Enroll(gctx, budagent.EnrollOptions{Controller: c.addr(), Token: tokens[rack(i)], Hostname: host(i), State: st})
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	actx, stopAgents := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { stopAgents(); wg.Wait() })
	for i, st := range states {
		a, err := budagent.New(budagent.Options{State: st, Inventory: &inventory.Collector{Hostname: host(i)}, Logger: quiet,
			BackoffInitial: 100 * time.Millisecond, BackoffMax: time.Second, Hostname: host(i)})
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() { _ = a.Run(actx) })
	}
	eventually(t, 2*time.Minute, func() error {
		ns, err := c.listNodes()
		if err != nil {
			return err
		}
		ready := 0
		for _, n := range ns {
			if n.GetConnected() {
				ready++
			}
		}
		if ready < n {
			return fmt.Errorf("%d of %d agents connected", ready, n)
		}
		return nil
	})
	return f
}
