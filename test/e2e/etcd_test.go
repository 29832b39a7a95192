package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/internal/etcdtest"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

// fleetOnEtcd is several controllers of one fleet on a real etcd cluster:
// the first made by 'bud-controller init', the others sharing its PKI
// (--pki-dir) and its etcd prefix.
type fleetOnEtcd struct {
	etcd        *etcdtest.Cluster
	controllers []*controller
}

func etcdServeArgs(e *etcdtest.Cluster, id string) []string {
	return []string{"--store", "etcd", "--etcd-endpoints", strings.Join(e.Endpoints(), ","),
		"--etcd-prefix", "/e2e", "--controller-id", id, "--etcd-lease-ttl", "3"}
}

func startFleetOnEtcd(t *testing.T, members, controllers int) *fleetOnEtcd {
	t.Helper()
	f := &fleetOnEtcd{etcd: etcdtest.Start(t, members)}
	first := startController(t, withServeArgs(etcdServeArgs(f.etcd, "c0")...))
	f.controllers = append(f.controllers, first)
	for i := 1; i < controllers; i++ {
		f.controllers = append(f.controllers, startPeerController(t, first, f.etcd, "c"+strconv.Itoa(i)))
	}
	return f
}

// startPeerController starts another controller of first's fleet: its own
// data dir (audit log, artifacts), first's CA and server certificate.
func startPeerController(t *testing.T, first *controller, e *etcdtest.Cluster, id string) *controller {
	t.Helper()
	dir := t.TempDir()
	c := &controller{
		owner:       t,
		cfg:         first.cfg,
		dataDir:     filepath.Join(dir, "data"),
		logPath:     filepath.Join(dir, "controller.log"),
		port:        freePort(t),
		metricsPort: freePort(t),
		caPEM:       first.caPEM,
		caHash:      first.caHash,
	}
	c.cfg.extra = append(etcdServeArgs(e, id), "--pki-dir", first.dataDir)
	if err := os.MkdirAll(c.dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	c.adminConfig = filepath.Join(c.dataDir, "admin.budctl.yaml")
	b, err := os.ReadFile(first.adminConfig)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.adminConfig, b, 0o600); err != nil {
		t.Fatal(err)
	}
	c.setServer(t, c.addr())
	dumpLogOnFailure(t, "controller "+id, c.logPath)
	if err := c.tryStart(t); err != nil {
		t.Fatal(err)
	}
	return c
}

// allReady says which of agents c does not see Ready and connected.
func allReady(c *controller, agents []*agent) error {
	nodes, err := c.listNodes()
	if err != nil {
		return err
	}
	by := map[string]*fleetv1.Node{}
	for _, n := range nodes {
		by[n.GetId()] = n
	}
	var bad []string
	for _, a := range agents {
		n := by[a.nodeID]
		if n == nil || n.GetStatus() != fleetv1.NodeStatus_NODE_STATUS_READY || !n.GetConnected() {
			bad = append(bad, a.hostname)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%d of %d nodes not Ready and connected: %v", len(bad), len(agents), bad)
	}
	return nil
}

func failoverAgents() int {
	if n, err := strconv.Atoi(os.Getenv("BUD_E2E_FAILOVER_AGENTS")); err == nil && n > 0 {
		return n
	}
	return 12
}

func (a *agent) runCount(id string) int {
	n := 0
	for _, l := range strings.Split(a.log(), "\n") {
		if strings.Contains(l, "running command") && strings.Contains(l, id) {
			n++
		}
	}
	return n
}

func waitCommandSucceeded(t *testing.T, c *controller, id string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	eventually(t, timeout, func() error {
		cmd, err := c.getCommand(id)
		if err != nil {
			return err
		}
		if cmd.GetState() != fleetv1.CommandState_COMMAND_STATE_SUCCEEDED {
			return fmt.Errorf("command %s is %s", id, cmd.GetState())
		}
		return nil
	})
	return time.Since(start)
}

// Three controllers on a real three-member etcd, real agents: an operator
// call on any controller sees the whole fleet, a command queued on one
// reaches a node connected to another promptly, and after a SIGKILL of the
// controller every agent is on, they are all back on the others well within
// 30 s, with no command lost and one queued during the failover run once.
func TestEtcdControllerFailover(t *testing.T) {
	f := startFleetOnEtcd(t, 3, 3)
	c0, c1, c2 := f.controllers[0], f.controllers[1], f.controllers[2]
	n := failoverAgents()
	tok := c0.createToken(t)
	agents := make([]*agent, n)
	for i := range n {
		agents[i] = joinAgent(t, c0, tok, fmt.Sprintf("fo-%03d", i))
		agents[i].start(t)
	}
	// The whole fleet, seen through the controllers the agents are not on.
	for _, c := range []*controller{c1, c2} {
		if err := poll(30*time.Second, func() error { return allReady(c, agents) }); err != nil {
			t.Fatalf("controller %s: %v", c.addr(), err)
		}
	}

	// etcd's write rate with the fleet idle (heartbeats every 500 ms).
	const idle = 10 * time.Second
	p0 := etcdProposals(t, f.etcd)
	time.Sleep(idle)
	p1 := etcdProposals(t, f.etcd)
	rate := float64(p1-p0) / idle.Seconds()
	t.Logf("etcd write rate, %d idle agents on 3 controllers, heartbeats every 500 ms: %.2f proposals/s (%.4f per agent per s; the heartbeats alone would be %d/s)", n, rate, rate/float64(n), n*2)
	if rate > float64(n) {
		t.Errorf("etcd takes %.1f writes/s from %d idle agents: heartbeats are not batched", rate, n)
	}

	// Queued on c2 for nodes whose sessions are on c0.
	var before []string
	var worst time.Duration
	for _, a := range agents[:3] {
		start := time.Now()
		id := strings.TrimSpace(c2.mustBudctl(t, "commands", "create", "inventory.collect", "--node", a.nodeID))
		waitCommandSucceeded(t, c2, id, 10*time.Second)
		worst = max(worst, time.Since(start))
		before = append(before, id)
	}
	t.Logf("a command queued on another controller ran within %s (worst of 3, budctl round trips included)", worst.Round(time.Millisecond))

	// SIGKILL the controller all agents are on.
	killed := time.Now()
	c0.kill(t)
	during := strings.TrimSpace(c1.mustBudctl(t, "commands", "create", "inventory.collect", "--node", agents[0].nodeID))
	// Back means a session on a live controller (c0's published presence
	// outlives it by its lease, so Ready alone would not tell).
	if err := poll(30*time.Second, func() error {
		if got := connectedAgents(t, c1) + connectedAgents(t, c2); got != n {
			return fmt.Errorf("%d of %d agents have a session on c1 or c2", got, n)
		}
		return allReady(c1, agents)
	}); err != nil {
		t.Fatalf("30 s after the SIGKILL: %v", err)
	}
	back := time.Since(killed)
	t.Logf("%d agents back on the other controllers %s after the SIGKILL", n, back.Round(time.Millisecond))
	waitCommandSucceeded(t, c1, during, 20*time.Second)
	if got := agents[0].runCount(during); got != 1 {
		t.Errorf("the command queued during the failover ran %d times, want once", got)
	}
	for _, id := range before {
		cmd, err := c2.getCommand(id)
		if err != nil || cmd.GetState() != fleetv1.CommandState_COMMAND_STATE_SUCCEEDED {
			t.Errorf("command %s after the failover: %v, %v", id, cmd.GetState(), err)
		}
	}
	t.Logf("sessions after the failover: c1 %d, c2 %d", connectedAgents(t, c1), connectedAgents(t, c2))

	// A node deleted through one controller loses its session on the
	// other too.
	last := agents[n-1]
	via := c1 // the controller without its session
	if strings.Contains(readLog(c1.logPath), `"msg":"agent connected","node_id":"`+last.nodeID) {
		via = c2
	}
	via.mustBudctl(t, "nodes", "delete", last.nodeID)
	eventually(t, 10*time.Second, func() error {
		if got := connectedAgents(t, c1) + connectedAgents(t, c2); got != n-1 {
			return fmt.Errorf("%d sessions after deleting one of %d nodes", got, n)
		}
		return nil
	})
}

// etcdProposals is etcd's etcd_server_proposals_committed_total (every
// write, leases' keep-alives aside, is one), from the first member.
func etcdProposals(t *testing.T, e *etcdtest.Cluster) int64 {
	t.Helper()
	resp, err := http.Get(e.Members[0].ClientURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range metricSamples(string(b), "etcd_server_proposals_committed_total") {
		f := strings.Fields(l)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			return int64(v)
		}
	}
	t.Fatal("etcd has no etcd_server_proposals_committed_total")
	return 0
}

// connectedAgents is the controller's bud_controller_connected_agents.
func connectedAgents(t *testing.T, c *controller) int {
	t.Helper()
	for _, l := range metricSamples(c.metrics(t), "bud_controller_connected_agents") {
		f := strings.Fields(l)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			return int(v)
		}
	}
	return -1
}

// Losing one etcd member of three goes unnoticed by operators; losing the
// quorum makes the controllers refuse writes with a clear error while the
// agents keep their sessions, and everything works again once a member is
// back.
func TestEtcdMemberAndQuorumLoss(t *testing.T) {
	f := startFleetOnEtcd(t, 3, 2)
	c0, c1 := f.controllers[0], f.controllers[1]
	tok := c0.createToken(t)
	agents := []*agent{joinAgent(t, c0, tok, "q-0"), joinAgent(t, c0, tok, "q-1")}
	for _, a := range agents {
		a.start(t)
	}
	if err := poll(30*time.Second, func() error { return allReady(c1, agents) }); err != nil {
		t.Fatal(err)
	}

	// One member down: reads and writes go on, on both controllers.
	f.etcd.Members[0].Kill()
	for _, c := range []*controller{c0, c1} {
		start := time.Now()
		c.createToken(t)
		if err := allReady(c, agents); err != nil {
			t.Errorf("with one etcd member down: %v", err)
		}
		t.Logf("with one of three etcd members down: a token and a node list on %s in %s", c.addr(), time.Since(start).Round(time.Millisecond))
	}

	// Quorum lost: writes are refused, clearly.
	f.etcd.Members[1].Kill()
	_, stderr, err := c1.budctl("tokens", "create")
	if err == nil {
		t.Fatal("tokens create succeeded without an etcd quorum")
	}
	if !strings.Contains(stderr, "etcd is unavailable") {
		t.Errorf("tokens create without a quorum said %q, want it to name etcd being unavailable", stderr)
	}
	t.Logf("without a quorum: %s", strings.TrimSpace(stderr))
	ended := func() int {
		n := 0
		for _, a := range agents {
			n += strings.Count(a.log(), "session with controller ended")
		}
		return n
	}
	endedBefore := ended()
	// Checking that nothing happens: without the quorum for more than two
	// heartbeat graces, no agent's session may end (counted below).
	time.Sleep(5 * time.Second)

	// A member back: the quorum returns and so do writes.
	if err := f.etcd.Members[1].Start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, func() error {
		_, stderr, err := c1.budctl("tokens", "create")
		if err != nil {
			return fmt.Errorf("%v: %s", err, stderr)
		}
		return nil
	})
	if got := ended(); got != endedBefore {
		t.Errorf("agents lost %d sessions during the quorum loss, want none", got-endedBefore)
	}
	if err := poll(20*time.Second, func() error { return allReady(c0, agents) }); err != nil {
		t.Errorf("after the quorum came back: %v", err)
	}
}
