package runner_test

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/controller/maintenance"
	"github.com/bud-ecosystem/budfleet/controller/maintenance/runner"
	"github.com/bud-ecosystem/budfleet/controller/maintenance/runner/fake"
	"github.com/bud-ecosystem/budfleet/controller/store"
)

const script = "#!/bin/sh\necho upgrading\n"

// A 3-node campaign with max-unavailable 1 completes one node at a time:
// cordon, drain, task, uncordon, in the campaign's order; each task queued
// once and run once; every step in the audit trail.
func TestThreeNodesOneAtATime(t *testing.T) {
	w := newWorld(t, 3, 0)
	run := w.start(nil)
	c := w.create("c1", maintenance.Spec{MaxUnavailable: 1, Task: script})
	run.r.Track(c.ID)
	c = w.wait(c.ID, "the campaign to complete", 20*time.Second, settled)
	if c.State != maintenance.StateCompleted || c.Failures != 0 {
		t.Fatalf("campaign ended %s with %d failures:\n%s", c.State, c.Failures, describe(c))
	}
	for _, n := range c.Nodes {
		if n.Step != maintenance.StepDone || !n.TaskDone {
			t.Errorf("%s: %s, task done %v", n.K8sNode, n.Step, n.TaskDone)
		}
	}
	if got := w.cluster.MaxUnschedulable(); got != 1 {
		t.Errorf("at most %d Nodes cordoned at once, want 1", got)
	}
	var want []string
	for _, name := range []string{"gpu-0", "gpu-1", "gpu-2"} {
		want = append(want, "cordon "+name, "drain "+name, "drained "+name, "uncordon "+name)
	}
	if got := w.cluster.Events(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("cluster events:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, id := range w.ids {
		if k := w.commands()[id][maintenance.KindTask]; k != 1 {
			t.Errorf("%s has %d task commands, want 1", id, k)
		}
		if q := w.agents.Queued(id); q != 1 {
			t.Errorf("delivery woken %d times for %s, want once", q, id)
		}
	}
	// The audit trail names who, which node, what and the result.
	var whats []string
	for _, e := range w.audit.all() {
		if e.attrs["node_id"] == w.ids[0] {
			whats = append(whats, e.action+"="+e.attrs["result"].(string))
		}
	}
	wantAudit := "maintenance.node.started=started maintenance.node.cordon=started maintenance.node.cordon=succeeded maintenance.node.drain=started maintenance.node.drain=succeeded maintenance.node.task=started maintenance.node.task=succeeded maintenance.node.verify=succeeded maintenance.node.uncordon=succeeded maintenance.node.done=succeeded"
	if got := strings.Join(whats, " "); got != wantAudit {
		t.Errorf("audit of %s:\n%s\nwant\n%s", w.ids[0], got, wantAudit)
	}
	w.finalChecks(c)
}

// crashStore kills its runner right after a chosen campaign write: the
// step is persisted and none of its actions carried out, the window where
// a runner that acted first and persisted after would repeat or lose work.
type crashStore struct {
	runner.Store
	writes  atomic.Int64
	every   int64
	crashed chan struct{}
	once    sync.Once
	cancel  context.CancelFunc
}

func (s *crashStore) UpdateCampaign(ctx context.Context, id string, fn func(*store.Campaign) error) (store.Campaign, error) {
	c, err := s.Store.UpdateCampaign(ctx, id, fn)
	if err == nil && s.writes.Add(1)%s.every == 0 {
		s.once.Do(func() { s.cancel(); close(s.crashed) })
	}
	return c, err
}

// A runner that dies mid-campaign, again and again (after every few
// persisted steps, before their actions), is replaced by a new runner on
// the same store each time: the campaign completes, no task is queued or
// run twice, and the limits hold throughout, per campaign and per rack.
func TestCrashAndResume(t *testing.T) {
	// (Crashing after every write would never let an action run: a step
	// that re-issues a lost action writes too.)
	for _, every := range []int64{2, 3, 5} {
		t.Run("", func(t *testing.T) {
			w := newWorld(t, 6, 3)
			c := w.create("c1", maintenance.Spec{MaxUnavailable: 2, PerDomain: &maintenance.DomainLimit{Label: "rack", Max: 1}, Task: script, Reboot: true})
			crashes := 0
			for !w.get(c.ID).Settled() {
				if crashes > 500 {
					t.Fatalf("not done after %d crashes:\n%s", crashes, describe(w.get(c.ID)))
				}
				cs := &crashStore{Store: w.st, every: every, crashed: make(chan struct{})}
				r, err := runner.New(runner.Options{
					Store: cs, Cluster: w.cluster, Agents: w.agents, Audit: w.audit, Logger: quiet(),
					Interval: 5 * time.Millisecond, MinGap: time.Millisecond,
				})
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				cs.cancel = cancel
				done := make(chan struct{})
				go func() { defer close(done); _ = r.Run(ctx) }()
				deadline := time.Now().Add(10 * time.Second)
			wait:
				for {
					select {
					case <-cs.crashed:
						crashes++
						break wait
					case <-time.After(5 * time.Millisecond):
					}
					switch {
					case w.get(c.ID).Settled():
						break wait
					case time.Now().After(deadline):
						t.Fatalf("no progress in 10s:\n%s", describe(w.get(c.ID)))
					}
				}
				cancel()
				<-done
				if got := w.cluster.MaxUnschedulable(); got > 2 {
					t.Fatalf("%d Nodes cordoned at once, max-unavailable is 2", got)
				}
			}
			c = w.get(c.ID)
			if c.State != maintenance.StateCompleted || c.Failures != 0 {
				t.Fatalf("campaign ended %s:\n%s", c.State, describe(c))
			}
			t.Logf("crash every %d writes: %d crashes", every, crashes)
			if crashes < 3 {
				t.Errorf("only %d crashes; the test means to crash often", crashes)
			}
			// Never two of one rack cordoned at once: racks are gpu-0,3 /
			// gpu-1,4 / gpu-2,5.
			cordoned := map[string]bool{}
			for _, e := range w.cluster.Events() {
				word, name, _ := strings.Cut(e, " ")
				switch word {
				case "cordon":
					cordoned[name] = true
					pair := map[string]string{"gpu-0": "gpu-3", "gpu-3": "gpu-0", "gpu-1": "gpu-4", "gpu-4": "gpu-1", "gpu-2": "gpu-5", "gpu-5": "gpu-2"}[name]
					if cordoned[pair] {
						t.Errorf("%s and %s (one rack) cordoned at once", name, pair)
					}
				case "uncordon":
					cordoned[name] = false
				}
			}
			for _, id := range w.ids {
				if k := w.commands()[id]; k[maintenance.KindTask] != 1 || k[maintenance.KindReboot] != 1 {
					t.Errorf("%s: commands %v, want one task and one reboot", id, k)
				}
			}
			w.finalChecks(c)
		})
	}
}

// Abort leaves nothing cordoned but the failed nodes, which it names: the
// node whose task failed stays cordoned, the node being drained is
// uncordoned (its drain cancelled), the queued one is skipped.
func TestAbort(t *testing.T) {
	w := newWorld(t, 3, 0)
	w.taskExit[w.ids[0]] = 3
	w.cluster.Set("gpu-1", func(n *fake.Node) { n.DrainBlocks = true })
	run := w.start(nil)
	c := w.create("c1", maintenance.Spec{MaxUnavailable: 2, Task: script, MaxFailures: 2, DrainTimeout: time.Minute})
	run.r.Track(c.ID)
	w.wait(c.ID, "gpu-0 failed and gpu-1 draining", 20*time.Second, func(c store.Campaign) bool {
		return node(t, c, "gpu-0").Step == maintenance.StepFailed && node(t, c, "gpu-1").Step == maintenance.StepDrain
	})
	if d := w.cluster.Draining(); len(d) != 1 || d[0] != "gpu-1" {
		t.Fatalf("draining %v, want gpu-1", d)
	}
	if _, err := w.st.UpdateCampaign(t.Context(), c.ID, func(c *store.Campaign) error {
		a, err := c.Abort("bob", time.Now())
		*c = a
		return err
	}); err != nil {
		t.Fatal(err)
	}
	run.r.Track(c.ID)
	c = w.wait(c.ID, "the abort", 20*time.Second, settled)
	if c.State != maintenance.StateAborted {
		t.Fatalf("state %s:\n%s", c.State, describe(c))
	}
	if n := node(t, c, "gpu-0"); n.Step != maintenance.StepFailed || !n.CordonedByUs || !strings.Contains(n.Error, "exit code 3") || !strings.Contains(n.Error, "nvidia-driver-999") {
		t.Errorf("gpu-0: %+v; want failed, left cordoned, with the exit code and stderr", n)
	}
	if n := node(t, c, "gpu-1"); n.Step != maintenance.StepSkipped {
		t.Errorf("gpu-1: %s, want skipped (returned untouched)", n.Step)
	}
	if n := node(t, c, "gpu-2"); n.Step != maintenance.StepSkipped {
		t.Errorf("gpu-2: %s, want skipped", n.Step)
	}
	if f := c.FailedNodes(); len(f) != 1 || f[0].K8sNode != "gpu-0" {
		t.Errorf("failed nodes %v, want gpu-0", f)
	}
	if got := w.cluster.Unschedulable(); len(got) != 1 || got[0] != "gpu-0" {
		t.Errorf("cordoned after the abort: %v, want gpu-0 alone", got)
	}
	if n, _ := w.cluster.Get("gpu-2"); n.Cordons != 0 || n.Drains != 0 {
		t.Errorf("the queued gpu-2 was touched: %+v", n)
	}
	if !strings.Contains(c.StateReason, "aborted by bob") {
		t.Errorf("state reason %q", c.StateReason)
	}
	w.finalChecks(c)
}

// A drain that blocks (a PodDisruptionBudget that never allows an
// eviction) fails at its timeout, and the policy decides: by default the
// node is uncordoned and failed, and with max-failures 1 the breaker stops
// the campaign before another node starts; with on-drain-failure=cordon it
// stays cordoned; with max-failures 2 the campaign goes on and completes.
func TestDrainTimeout(t *testing.T) {
	for _, tc := range []struct {
		name        string
		policy      maintenance.DrainFailurePolicy
		maxFailures int
		state       maintenance.State
		cordoned    bool
	}{
		{"uncordon and stop", maintenance.DrainFailureUncordon, 1, maintenance.StateStopped, false},
		{"stay cordoned and stop", maintenance.DrainFailureCordon, 1, maintenance.StateStopped, true},
		{"uncordon and go on", maintenance.DrainFailureUncordon, 2, maintenance.StateCompleted, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, 3, 0)
			w.cluster.Set("gpu-0", func(n *fake.Node) { n.DrainBlocks = true })
			run := w.start(nil)
			c := w.create("c1", maintenance.Spec{MaxUnavailable: 1, Task: script, DrainTimeout: 300 * time.Millisecond, DrainAttempts: 1, OnDrainFailure: tc.policy, MaxFailures: tc.maxFailures})
			run.r.Track(c.ID)
			start := time.Now()
			c = w.wait(c.ID, "the campaign to end", 20*time.Second, settled)
			if c.State != tc.state {
				t.Fatalf("state %s, want %s:\n%s", c.State, tc.state, describe(c))
			}
			n := node(t, c, "gpu-0")
			if n.Step != maintenance.StepFailed || n.CordonedByUs != tc.cordoned {
				t.Errorf("gpu-0: %s cordoned %v, want failed, cordoned %v", n.Step, n.CordonedByUs, tc.cordoned)
			}
			for _, want := range []string{"300ms timeout", "PodDisruptionBudget default/web"} {
				if !strings.Contains(n.Error, want) {
					t.Errorf("gpu-0's error %q does not say %q", n.Error, want)
				}
			}
			if elapsed := time.Since(start); elapsed < 300*time.Millisecond {
				t.Errorf("the drain failed after %s, before its timeout", elapsed)
			}
			if n.TaskCommandID != "" || w.commands()[w.ids[0]][maintenance.KindTask] != 0 {
				t.Error("a task was queued for the node that did not drain")
			}
			if tc.state == maintenance.StateStopped {
				if !strings.Contains(c.StateReason, "circuit breaker") {
					t.Errorf("state reason %q", c.StateReason)
				}
				for _, name := range []string{"gpu-1", "gpu-2"} {
					if got := node(t, c, name).Step; got != maintenance.StepQueued {
						t.Errorf("%s: %s, want queued (the breaker stops new nodes)", name, got)
					}
					if k, _ := w.cluster.Get(name); k.Cordons != 0 {
						t.Errorf("%s was cordoned after the breaker tripped", name)
					}
				}
			}
			w.finalChecks(c)
		})
	}
}

// Stopping the runner cancels its drains and waits for them; the Node
// stays cordoned, and the next runner issues the drain again.
func TestShutdownCancelsDrains(t *testing.T) {
	w := newWorld(t, 1, 0)
	w.cluster.Set("gpu-0", func(n *fake.Node) { n.DrainBlocks = true })
	run := w.start(nil)
	c := w.create("c1", maintenance.Spec{MaxUnavailable: 1, Task: script, DrainTimeout: time.Minute})
	run.r.Track(c.ID)
	w.wait(c.ID, "the drain", 10*time.Second, func(c store.Campaign) bool { return len(w.cluster.Draining()) == 1 })
	begin := time.Now()
	run.stop()
	if d := time.Since(begin); d > 5*time.Second {
		t.Errorf("stopping took %s", d)
	}
	if d := w.cluster.Draining(); len(d) != 0 {
		t.Errorf("drains still running after Run returned: %v", d)
	}
	if got := w.cluster.Unschedulable(); len(got) != 1 {
		t.Errorf("cordoned after the stop: %v, want gpu-0 (the campaign goes on later)", got)
	}
	if n := node(t, w.get(c.ID), "gpu-0"); n.Step != maintenance.StepDrain || n.DrainFailures != 0 {
		t.Errorf("after the stop gpu-0 is %s with %d drain failures; a stop is not a failure", n.Step, n.DrainFailures)
	}
	w.cluster.Set("gpu-0", func(n *fake.Node) { n.DrainBlocks = false })
	w.start(nil)
	c = w.wait(c.ID, "the campaign to complete", 20*time.Second, settled)
	if c.State != maintenance.StateCompleted {
		t.Fatalf("state %s:\n%s", c.State, describe(c))
	}
	if n, _ := w.cluster.Get("gpu-0"); n.Drains != 2 {
		t.Errorf("%d drains, want 2 (the second after the restart)", n.Drains)
	}
	w.finalChecks(c)
}

// Right after a controller start the agents' sessions are unknown: the
// runner leaves the nodes out of its observations, so none fails for "agent
// not connected"; it goes on once they are known.
func TestUnknownAgentsWait(t *testing.T) {
	w := newWorld(t, 2, 0)
	w.agents.SetUnknown(true)
	run := w.start(nil)
	c := w.create("c1", maintenance.Spec{MaxUnavailable: 1, Task: script})
	run.r.Track(c.ID)
	time.Sleep(200 * time.Millisecond)
	c = w.get(c.ID)
	if c.State != maintenance.StateRunning || c.Failures != 0 || len(w.cluster.Events()) != 0 {
		t.Fatalf("while agents are unknown: %s, events %v", describe(c), w.cluster.Events())
	}
	w.agents.SetUnknown(false)
	c = w.wait(c.ID, "the campaign to complete", 20*time.Second, settled)
	if c.State != maintenance.StateCompleted {
		t.Fatalf("state %s:\n%s", c.State, describe(c))
	}
	w.finalChecks(c)
}

// An API server that does not answer changes nothing: no node fails, no
// deadline fires; the campaign goes on when it answers again.
func TestClusterUnreachable(t *testing.T) {
	w := newWorld(t, 2, 0)
	w.cluster.SetUnreachable(true)
	run := w.start(nil)
	c := w.create("c1", maintenance.Spec{MaxUnavailable: 1, Task: script})
	run.r.Track(c.ID)
	time.Sleep(200 * time.Millisecond)
	if c = w.get(c.ID); c.Failures != 0 || node(t, c, "gpu-0").Step != maintenance.StepQueued {
		t.Fatalf("while the cluster is unreachable: %s", describe(c))
	}
	w.cluster.SetUnreachable(false)
	c = w.wait(c.ID, "the campaign to complete", 20*time.Second, settled)
	if c.State != maintenance.StateCompleted {
		t.Fatalf("state %s:\n%s", c.State, describe(c))
	}
	w.finalChecks(c)
}

// A Kubernetes Node that does not exist fails its node untouched, and an
// agent that is not connected likewise; the others are maintained.
func TestMissingNodeAndAgent(t *testing.T) {
	w := newWorld(t, 3, 0)
	w.cluster.Remove("gpu-0")
	w.agents.SetConnected(w.ids[1], false)
	run := w.start(nil)
	c := w.create("c1", maintenance.Spec{MaxUnavailable: 1, Task: script, MaxFailures: 3})
	run.r.Track(c.ID)
	c = w.wait(c.ID, "the campaign to complete", 20*time.Second, settled)
	if c.State != maintenance.StateCompleted || c.Failures != 2 {
		t.Fatalf("state %s:\n%s", c.State, describe(c))
	}
	if e := node(t, c, "gpu-0").Error; !strings.Contains(e, `no Kubernetes Node "gpu-0"`) {
		t.Errorf("gpu-0: %q", e)
	}
	if e := node(t, c, "gpu-1").Error; !strings.Contains(e, "agent not connected") {
		t.Errorf("gpu-1: %q", e)
	}
	if n := node(t, c, "gpu-2"); n.Step != maintenance.StepDone {
		t.Errorf("gpu-2: %s", n.Step)
	}
	if n, _ := w.cluster.Get("gpu-1"); n.Cordons != 0 {
		t.Error("the node without an agent was cordoned")
	}
	w.finalChecks(c)
}

// pauseStore pauses the campaign (as an operator would) between the
// runner's read and its write, once.
type pauseStore struct {
	runner.Store
	once sync.Once
}

func (s *pauseStore) UpdateCampaign(ctx context.Context, id string, fn func(*store.Campaign) error) (store.Campaign, error) {
	s.once.Do(func() {
		_, _ = s.Store.UpdateCampaign(ctx, id, func(c *store.Campaign) error {
			p, err := c.Pause("bob", time.Now())
			*c = p
			return err
		})
	})
	return s.Store.UpdateCampaign(ctx, id, fn)
}

// An operator's change between the runner's read and write wins: the
// runner's step is dropped with its actions (nothing cordoned) and taken
// again from what is stored: paused, so no node starts.
func TestOperatorChangeWins(t *testing.T) {
	w := newWorld(t, 2, 0)
	run := w.start(&pauseStore{Store: w.st})
	c := w.create("c1", maintenance.Spec{MaxUnavailable: 1, Task: script})
	run.r.Track(c.ID)
	w.wait(c.ID, "the pause", 10*time.Second, func(c store.Campaign) bool { return c.State == maintenance.StatePaused })
	time.Sleep(200 * time.Millisecond) // many ticks
	c = w.get(c.ID)
	if c.State != maintenance.StatePaused || len(w.cluster.Events()) != 0 {
		t.Fatalf("after the pause: %s, events %v", describe(c), w.cluster.Events())
	}
	for _, n := range c.Nodes {
		if n.Step != maintenance.StepQueued {
			t.Errorf("%s: %s, want queued", n.K8sNode, n.Step)
		}
	}
}

// A campaign made before the runner starts is loaded and run without
// Track; a settled one is left alone.
func TestLoadsOnStart(t *testing.T) {
	w := newWorld(t, 1, 0)
	c := w.create("c1", maintenance.Spec{MaxUnavailable: 1, Task: script})
	run := w.start(nil)
	c = w.wait(c.ID, "the campaign to complete", 20*time.Second, settled)
	if c.State != maintenance.StateCompleted {
		t.Fatalf("state %s", c.State)
	}
	w.wait(c.ID, "the runner to let the settled campaign go", 5*time.Second, func(store.Campaign) bool { return !run.r.Active(c.ID) })
	run.stop()
	before := c.UpdatedAt
	run = w.start(nil)
	time.Sleep(100 * time.Millisecond)
	if c = w.get(c.ID); !c.UpdatedAt.Equal(before) || run.r.Active(c.ID) {
		t.Errorf("a settled campaign was stepped again (active %v)", run.r.Active(c.ID))
	}
}

// New refuses missing parts.
func TestNewValidates(t *testing.T) {
	if _, err := runner.New(runner.Options{}); err == nil || !strings.Contains(err.Error(), "Cluster") {
		t.Errorf("New without parts = %v", err)
	}
}

// Queued nodes are not read while no slot is free: a 100-node campaign
// costs the API server the reads of the nodes in progress, not of all.
func TestQueuedNodesNotReadWithoutASlot(t *testing.T) {
	w := newWorld(t, 3, 0)
	w.cluster.Set("gpu-0", func(n *fake.Node) { n.DrainBlocks = true })
	run := w.start(nil)
	c := w.create("c1", maintenance.Spec{MaxUnavailable: 1, Task: script, DrainTimeout: time.Minute})
	run.r.Track(c.ID)
	w.wait(c.ID, "gpu-0 draining", 10*time.Second, func(c store.Campaign) bool { return node(t, c, "gpu-0").Step == maintenance.StepDrain })
	before, _ := w.cluster.Get("gpu-1")
	first, _ := w.cluster.Get("gpu-0")
	time.Sleep(200 * time.Millisecond) // ~20 ticks
	after, _ := w.cluster.Get("gpu-1")
	busy, _ := w.cluster.Get("gpu-0")
	if after.Reads != before.Reads {
		t.Errorf("the queued gpu-1 was read %d times while the only slot was taken", after.Reads-before.Reads)
	}
	if busy.Reads <= first.Reads {
		t.Error("the node in progress was not read")
	}
	// Once the slot frees, the queued nodes are read and go on.
	w.cluster.Set("gpu-0", func(n *fake.Node) { n.DrainBlocks = false })
	run.stop()
	w.start(nil)
	c = w.wait(c.ID, "the campaign to complete", 20*time.Second, settled)
	if c.State != maintenance.StateCompleted {
		t.Fatalf("state %s:\n%s", c.State, describe(c))
	}
	w.finalChecks(c)
}
