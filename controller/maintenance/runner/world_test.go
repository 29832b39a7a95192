package runner_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/controller/maintenance"
	"github.com/bud-ecosystem/budfleet/controller/maintenance/runner"
	"github.com/bud-ecosystem/budfleet/controller/maintenance/runner/fake"
	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/controller/store/bolt"
	"github.com/bud-ecosystem/budfleet/controller/store/storetest"
)

// The world of these tests: the real bbolt store, a fake Kubernetes
// cluster, fake agent sessions, and a fake agent per node that takes its
// commands from the store the way the controller's delivery and the agent
// do (each command id run once), a task taking taskTime, a reboot taking
// the agent away for rebootTime and bringing it back with a new boot id.

type auditEntry struct {
	at               time.Time
	action, operator string
	attrs            map[string]any
}

type recAudit struct {
	mu      sync.Mutex
	entries []auditEntry
}

func (a *recAudit) Record(at time.Time, action, operator string, attrs map[string]any) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.entries = append(a.entries, auditEntry{at, action, operator, attrs})
	return nil
}

func (a *recAudit) all() []auditEntry {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]auditEntry(nil), a.entries...)
}

type world struct {
	t       *testing.T
	st      *bolt.Store
	cluster *fake.Cluster
	agents  *fake.Agents
	audit   *recAudit
	ids     []string // node ids, in the campaign's order
	names   map[string]string

	mu         sync.Mutex
	taskRuns   map[string]int // by node id
	taskExit   map[string]int // by node id; non-zero fails the task
	taskTime   time.Duration
	rebootTime time.Duration
	started    map[string]time.Time // command id -> delivered at
	errs       []string
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newWorld makes n nodes gpu-0 .. gpu-(n-1), labelled pool=gpu and rack
// r<i%racks>, enrolled, connected and Ready, and starts their agents.
func newWorld(t *testing.T, n, racks int) *world {
	t.Helper()
	st, err := bolt.Open(filepath.Join(t.TempDir(), "controller.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	w := &world{t: t, st: st, audit: &recAudit{}, names: map[string]string{},
		taskRuns: map[string]int{}, taskExit: map[string]int{},
		taskTime: 20 * time.Millisecond, rebootTime: 40 * time.Millisecond, started: map[string]time.Time{}}
	var hosts []string
	for i := range n {
		// ids descend while names ascend: the campaign orders by name
		id := fmt.Sprintf("id-%02d", n-i)
		host := fmt.Sprintf("gpu-%d", i)
		storetest.EnrollNode(t, st, storetest.NewNode(id, host))
		if _, err := st.UpdateNode(t.Context(), id, func(nd *store.Node) error {
			nd.Labels = map[string]string{"pool": "gpu", "rack": fmt.Sprintf("r%d", i%max(racks, 1))}
			nd.BootID = id + "-boot-0"
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		w.ids = append(w.ids, id)
		w.names[id] = host
		hosts = append(hosts, host)
	}
	w.cluster = fake.NewCluster(hosts...)
	w.agents = fake.NewAgents(w.ids...)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.agentLoop(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		w.mu.Lock()
		defer w.mu.Unlock()
		for _, e := range w.errs {
			t.Error(e)
		}
	})
	return w
}

// agentLoop plays every node's agent.
func (w *world) agentLoop(ctx context.Context) {
	for ctx.Err() == nil {
		for _, id := range w.ids {
			if connected, _ := w.agents.AgentConnected(id); !connected {
				continue
			}
			cmds, err := w.st.PendingCommands(ctx, id)
			if err != nil {
				continue
			}
			for _, c := range cmds {
				w.agentStep(ctx, id, c)
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(2 * time.Millisecond):
		}
	}
}

func (w *world) agentStep(ctx context.Context, id string, c store.Command) {
	w.mu.Lock()
	defer w.mu.Unlock()
	name := w.names[id]
	if _, running := w.started[c.ID]; !running {
		// Delivered: the agent records the id and runs it once.
		if n, _ := w.cluster.Get(name); !n.Unschedulable {
			w.errs = append(w.errs, fmt.Sprintf("%s %s delivered while %s is schedulable", c.Kind, c.ID, name))
		}
		w.started[c.ID] = time.Now()
		if _, err := w.st.UpdateCommand(ctx, c.ID, func(c *store.Command) error {
			c.State, c.Deliveries = store.CommandDelivered, c.Deliveries+1
			return nil
		}); err != nil {
			return
		}
		if c.Kind == maintenance.KindTask {
			w.taskRuns[id]++
			if _, err := base64.StdEncoding.DecodeString(c.Params[maintenance.ParamScript]); err != nil {
				w.errs = append(w.errs, fmt.Sprintf("task %s: script is not base64: %v", c.ID, err))
			}
		}
		return
	}
	since := time.Since(w.started[c.ID])
	switch c.Kind {
	case maintenance.KindTask:
		if since < w.taskTime {
			return
		}
		exit := w.taskExit[id]
		_, _ = w.st.UpdateCommand(ctx, c.ID, func(c *store.Command) error {
			c.State = store.CommandSucceeded
			c.Output = map[string]string{"exit_code": fmt.Sprint(exit), "stderr": ""}
			if exit != 0 {
				c.State, c.Message = store.CommandFailed, fmt.Sprintf("exit status %d", exit)
				c.Output["stderr"] = "E: Unable to locate package nvidia-driver-999\n"
			}
			return nil
		})
	case maintenance.KindReboot:
		_, _ = w.st.UpdateCommand(ctx, c.ID, func(c *store.Command) error {
			c.State, c.Message = store.CommandSucceeded, "reboot started"
			return nil
		})
		w.agents.SetConnected(id, false)
		w.cluster.Set(name, func(n *fake.Node) { n.Ready = false })
		time.AfterFunc(w.rebootTime, func() {
			// Back with a new boot id in its hello, which the controller
			// stores on the node.
			_, _ = w.st.UpdateNode(context.Background(), id, func(n *store.Node) error {
				n.BootID = fmt.Sprintf("%s-boot-%d", id, time.Now().UnixNano())
				return nil
			})
			w.cluster.Set(name, func(n *fake.Node) { n.Ready = true })
			w.agents.SetConnected(id, true)
		})
	}
}

func (w *world) targets() []maintenance.Target {
	var ts []maintenance.Target
	for _, id := range w.ids {
		n, err := w.st.GetNode(w.t.Context(), id)
		if err != nil {
			w.t.Fatal(err)
		}
		ts = append(ts, maintenance.Target{NodeID: id, K8sNode: n.Hostname, Labels: n.Labels})
	}
	return ts
}

// create stores a campaign over every node.
func (w *world) create(id string, spec maintenance.Spec) store.Campaign {
	w.t.Helper()
	if spec.Selector == nil {
		spec.Selector = map[string]string{"pool": "gpu"}
	}
	c, err := maintenance.New(id, "test", spec, w.targets(), time.Now())
	if err != nil {
		w.t.Fatal(err)
	}
	c.CreatedBy = "alice"
	if err := w.st.CreateCampaign(w.t.Context(), c); err != nil {
		w.t.Fatal(err)
	}
	return c
}

type running struct {
	r      *runner.Runner
	cancel context.CancelFunc
	done   chan struct{}
}

// stop ends the runner and waits for it (its drains included).
func (r *running) stop() {
	r.cancel()
	<-r.done
}

// start runs a runner over st (the world's store unless given).
func (w *world) start(st runner.Store) *running {
	w.t.Helper()
	if st == nil {
		st = w.st
	}
	r, err := runner.New(runner.Options{
		Store: st, Cluster: w.cluster, Agents: w.agents, Audit: w.audit, Logger: quiet(),
		Interval: 10 * time.Millisecond, MinGap: time.Millisecond,
	})
	if err != nil {
		w.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	run := &running{r: r, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(run.done)
		if err := r.Run(ctx); err != nil {
			w.t.Errorf("Run: %v", err)
		}
	}()
	w.t.Cleanup(run.stop)
	return run
}

func (w *world) get(id string) store.Campaign {
	w.t.Helper()
	c, err := w.st.GetCampaign(context.Background(), id)
	if err != nil {
		w.t.Fatal(err)
	}
	return c
}

// wait polls the stored campaign until ok says so.
func (w *world) wait(id string, what string, timeout time.Duration, ok func(store.Campaign) bool) store.Campaign {
	w.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c := w.get(id)
		if ok(c) {
			return c
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("timed out waiting for %s: %s\ncluster events %v", what, describe(c), w.cluster.Events())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func settled(c store.Campaign) bool { return c.Settled() }

func describe(c store.Campaign) string {
	var b strings.Builder
	fmt.Fprintf(&b, "campaign %s %s (%s) failures %d waiting %q\n", c.ID, c.State, c.StateReason, c.Failures, c.Waiting)
	for _, n := range c.Nodes {
		fmt.Fprintf(&b, "  %s %s %s %s\n", n.K8sNode, n.Step, n.Result, n.Error)
	}
	return b.String()
}

func node(t *testing.T, c store.Campaign, name string) maintenance.NodeProgress {
	t.Helper()
	for _, n := range c.Nodes {
		if n.K8sNode == name {
			return n
		}
	}
	t.Fatalf("no node %s in campaign %s", name, c.ID)
	return maintenance.NodeProgress{}
}

// commands counts the stored commands by node and kind.
func (w *world) commands() map[string]map[string]int {
	cs, err := w.st.ListCommands(context.Background(), "")
	if err != nil {
		w.t.Fatal(err)
	}
	out := map[string]map[string]int{}
	for _, c := range cs {
		if out[c.NodeID] == nil {
			out[c.NodeID] = map[string]int{}
		}
		out[c.NodeID][c.Kind]++
	}
	return out
}

// finalChecks holds for every campaign: every audit event of it written,
// at most one task and one reboot per node, each run at most once, and
// nothing cordoned but the failed nodes the campaign left cordoned.
func (w *world) finalChecks(c store.Campaign) {
	w.t.Helper()
	seen := map[string]bool{}
	for _, e := range w.audit.all() {
		if e.attrs["campaign_id"] == c.ID {
			seen[fmt.Sprint(e.attrs["audit_id"])] = true
			if e.operator != "alice" {
				w.t.Errorf("audit %v: operator %q, want the campaign's creator", e.attrs["audit_id"], e.operator)
			}
		}
	}
	for seq := uint64(1); seq <= c.AuditSeq; seq++ {
		if id := fmt.Sprintf("%s#%d", c.ID, seq); !seen[id] {
			w.t.Errorf("audit event %s never written", id)
		}
	}
	for nodeID, kinds := range w.commands() {
		for kind, k := range kinds {
			if k > 1 {
				w.t.Errorf("%d %s commands for %s", k, kind, nodeID)
			}
		}
	}
	w.mu.Lock()
	for id, k := range w.taskRuns {
		if k > 1 {
			w.t.Errorf("the task ran %d times on %s", k, id)
		}
	}
	w.mu.Unlock()
	var want []string
	for _, n := range c.Nodes {
		if n.Step == maintenance.StepFailed && n.CordonedByUs {
			want = append(want, n.K8sNode)
		}
	}
	sort.Strings(want)
	if got := w.cluster.Unschedulable(); strings.Join(got, ",") != strings.Join(want, ",") {
		w.t.Errorf("cordoned at the end: %v; want only the failed nodes left cordoned: %v", got, want)
	}
	if d := w.cluster.Draining(); len(d) > 0 {
		w.t.Errorf("drains still running at the end: %v", d)
	}
}
