package maintenance

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

func gpuSpec() Spec {
	return Spec{Selector: map[string]string{"pool": "gpu"}, MaxUnavailable: 1, Task: "#!/bin/sh\napt-get install -y nvidia-driver\n", Reboot: true, MaxFailures: 10}
}

// events returns the logged events matching any of the words.
func (s *sim) eventsWith(words ...string) []string {
	var out []string
	for _, e := range s.events {
		for _, w := range words {
			if strings.Contains(e, w) {
				out = append(out, e[strings.Index(e, " ")+1:])
				break
			}
		}
	}
	return out
}

func TestHappyPathOneAtATimeInOrder(t *testing.T) {
	s := newSim(t, 3, 0)
	s.check = func(s *sim) {
		if k, _ := s.held(); k > 1 {
			t.Fatalf("tick %d: %d nodes cordoned, max-unavailable 1: %v", s.tick, k, s.cordoned())
		}
	}
	s.start(gpuSpec())
	c := s.run(500)
	if c.State != StateCompleted || c.Failures != 0 {
		t.Fatalf("campaign: %s", describe(c))
	}
	want := []string{}
	for _, n := range []string{"node-000", "node-001", "node-002"} {
		want = append(want, n+" cordon", n+" drain 1", n+" maintenance.task", n+" maintenance.reboot", n+" uncordon")
	}
	if got := s.eventsWith("cordon", "drain", "maintenance."); !slices.Equal(got, want) {
		t.Errorf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, n := range c.Nodes {
		if n.Step != StepDone || !n.TaskDone || n.BootIDAfter == "" || n.BootIDAfter == n.BootIDBefore {
			t.Errorf("node %+v", n)
		}
		if id := CommandID("c1", n.NodeID, KindTask, 1); s.creates[id] != 1 || s.taskRuns[n.NodeID] != 1 {
			t.Errorf("%s: task %s made %d times, ran %d times", n.K8sNode, id, s.creates[id], s.taskRuns[n.NodeID])
		}
	}
	if s.maxHeld != 1 {
		t.Errorf("max cordoned %d, want 1", s.maxHeld)
	}
	s.finalChecks(c)
}

func limitCheck(t *testing.T, max, perRack int) func(s *sim) {
	return func(s *sim) {
		total, per := s.held()
		if total > max {
			t.Fatalf("tick %d: %d nodes cordoned, max-unavailable %d", s.tick, total, max)
		}
		for r, k := range per {
			if k > perRack {
				t.Fatalf("tick %d: %d nodes cordoned in rack %s, per-domain %d", s.tick, k, r, perRack)
			}
		}
	}
}

func fleetSpec() Spec {
	s := gpuSpec()
	s.MaxUnavailable = 10
	s.PerDomain = &DomainLimit{Label: "rack", Max: 2}
	return s
}

func TestFleetOf100KeepsLimits(t *testing.T) {
	s := newSim(t, 100, 10)
	s.check = limitCheck(t, 10, 2)
	s.start(fleetSpec())
	c := s.run(2000)
	if c.State != StateCompleted || c.Failures != 0 {
		t.Fatalf("campaign: %s", describe(c))
	}
	if s.maxHeld != 10 {
		t.Errorf("at most %d nodes at once; want the campaign to use all 10 slots", s.maxHeld)
	}
	for r, k := range s.maxPerRack {
		if k != 2 {
			t.Errorf("rack %s had at most %d at once, want 2", r, k)
		}
	}
	s.finalChecks(c)
}

// A crash at random steps, in every way the runner can die, never runs a
// task twice, never exceeds the limits, and ends with nothing cordoned but
// the failed nodes.
func TestFleetOf100SurvivesCrashes(t *testing.T) {
	for seed := uint64(1); seed <= 8; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 99))
			s := newSim(t, 100, 10)
			failing := map[string]bool{}
			for _, id := range s.order {
				n := s.nodes[id]
				n.drainTicks, n.taskTicks, n.rebootTicks = 1+rng.IntN(4), 1+rng.IntN(4), 1+rng.IntN(6)
				if rng.IntN(10) == 0 {
					n.drainFails = 1 // succeeds on the retry
				}
			}
			// Three failures, in different racks: left cordoned, each holds
			// its slot to the end.
			for _, i := range []int{5 + rng.IntN(5), 30 + rng.IntN(10), 70 + rng.IntN(10)} {
				n := s.byName(fmt.Sprintf("node-%03d", i))
				n.taskExit = 2
				failing[n.name] = true
			}
			s.check = limitCheck(t, 10, 2)
			s.crash = func(s *sim, acts []Action) (crashMode, int) {
				if rng.IntN(100) >= 10 {
					return noCrash, 0
				}
				return crashMode(1 + rng.IntN(3)), rng.IntN(len(acts) + 1)
			}
			spec := fleetSpec()
			spec.DrainRetryDelay = tick
			spec.MaxFailures = 50
			s.start(spec)
			c := s.run(5000)
			if s.crashes < 15 {
				t.Fatalf("only %d crashes", s.crashes)
			}
			if c.State != StateCompleted || c.Failures != len(failing) {
				t.Fatalf("campaign (want %d failures): %s", len(failing), describe(c))
			}
			for _, n := range c.Nodes {
				if failing[n.K8sNode] != (n.Step == StepFailed) {
					t.Errorf("%s: step %s, error %q", n.K8sNode, n.Step, n.Error)
				}
				if n.Step == StepDone && s.taskRuns[n.NodeID] != 1 {
					t.Errorf("%s: task ran %d times", n.K8sNode, s.taskRuns[n.NodeID])
				}
			}
			s.finalChecks(c)
		})
	}
}

// The three kill points the issue names: right after the step that queues
// the task, during the task, and during the reboot wait, each in every
// crash mode.
func TestCrashAtTaskAndReboot(t *testing.T) {
	for _, mode := range []crashMode{crashUnsaved, crashMidActs, crashNoActs} {
		for _, at := range []string{"enqueue-task", "task-running", "enqueue-reboot", "reboot-wait"} {
			t.Run(fmt.Sprintf("%d/%s", mode, at), func(t *testing.T) {
				s := newSim(t, 2, 0)
				crashed := map[string]bool{}
				s.crash = func(s *sim, acts []Action) (crashMode, int) {
					c := s.load()
					for _, n := range c.Nodes {
						hit := false
						switch at {
						case "task-running":
							hit = n.Step == StepTask && s.cmds[n.TaskCommandID] != nil && s.cmds[n.TaskCommandID].state == CommandDelivered
						case "reboot-wait":
							hit = n.Step == StepReboot && s.nodes[n.NodeID].rebooting
						}
						for _, a := range acts {
							if e, ok := a.(EnqueueCommand); ok && e.NodeID == n.NodeID {
								hit = hit || (at == "enqueue-task" && e.Kind == KindTask) || (at == "enqueue-reboot" && e.Kind == KindReboot)
							}
						}
						if hit && !crashed[n.NodeID] {
							crashed[n.NodeID] = true
							return mode, 0
						}
					}
					return noCrash, 0
				}
				s.start(gpuSpec())
				c := s.run(500)
				if c.State != StateCompleted || c.Failures != 0 || s.crashes != 2 {
					t.Fatalf("%d crashes; campaign: %s", s.crashes, describe(c))
				}
				for _, n := range c.Nodes {
					if s.taskRuns[n.NodeID] != 1 || s.nodes[n.NodeID].boots != 1 {
						t.Errorf("%s: task ran %d times, %d reboots", n.K8sNode, s.taskRuns[n.NodeID], s.nodes[n.NodeID].boots)
					}
				}
				s.finalChecks(c)
			})
		}
	}
}

func TestCircuitBreaker(t *testing.T) {
	s := newSim(t, 6, 0)
	s.byName("node-000").taskExit = 1
	s.byName("node-001").taskExit = 1
	spec := gpuSpec()
	spec.MaxUnavailable, spec.MaxFailures = 2, 2
	s.start(spec)
	c := s.run(500)
	if c.State != StateStopped || c.Failures != 2 {
		t.Fatalf("campaign: %s", describe(c))
	}
	for _, name := range []string{"node-000", "node-001"} {
		n := nodeNamed(t, c, name)
		if n.Step != StepFailed || !strings.Contains(n.Error, "task failed with exit code 1: driver install failed") || !strings.Contains(c.StateReason, n.NodeID) {
			t.Errorf("%s: %+v; reason %q", name, n, c.StateReason)
		}
	}
	if !strings.Contains(c.StateReason, "circuit breaker: 2 nodes failed (max-failures 2)") {
		t.Errorf("reason %q", c.StateReason)
	}
	if got := s.cordoned(); !slices.Equal(got, []string{"node-000", "node-001"}) {
		t.Errorf("cordoned %v, want the failed nodes", got)
	}
	for _, name := range []string{"node-002", "node-003", "node-004", "node-005"} {
		if n := nodeNamed(t, c, name); n.Step != StepQueued {
			t.Errorf("%s is %s after the breaker tripped", name, n.Step)
		}
	}
	if len(s.eventsWith("node-002")) != 0 {
		t.Errorf("node-002 was touched: %v", s.eventsWith("node-002"))
	}
	// Stopped stays stopped.
	for range 20 {
		c = s.step()
	}
	if c.State != StateStopped || len(s.eventsWith("node-002")) != 0 {
		t.Fatalf("after the stop: %s", describe(c))
	}

	// Resumed, the breaker is reset, but the two failed nodes still hold
	// both slots: nothing starts until one is uncordoned.
	s.edit(func(c Campaign) (Campaign, error) { return c.Resume("alice", s.now) })
	for range 5 {
		c = s.step()
	}
	if c.State != StateRunning || !strings.Contains(c.Waiting, "all 2 slots in use (2 by failed nodes left cordoned") {
		t.Fatalf("resumed: %s", describe(c))
	}
	s.byName("node-000").unsched = false // the operator takes node-000 back
	c = s.run(500)
	if c.State != StateCompleted || c.Failures != 2 {
		t.Fatalf("campaign: %s", describe(c))
	}
	if n := nodeNamed(t, c, "node-000"); n.CordonedByUs {
		t.Errorf("node-000 still counted as cordoned by the campaign")
	}
	if s.maxHeld > 2 {
		t.Errorf("%d nodes cordoned at once", s.maxHeld)
	}
	s.finalChecks(c)
}

func TestPauseResume(t *testing.T) {
	s := newSim(t, 4, 0)
	s.start(gpuSpec())
	paused := false
	s.before = func(s *sim) {
		if !paused && nodeNamed(t, s.load(), "node-000").Step == StepDrain {
			paused = true
			s.edit(func(c Campaign) (Campaign, error) { return c.Pause("alice", s.now) })
		}
	}
	var c Campaign
	for range 200 {
		c = s.step()
	}
	if c.State != StatePaused || c.StateReason != "paused by alice" {
		t.Fatalf("campaign: %s", describe(c))
	}
	if n := nodeNamed(t, c, "node-000"); n.Step != StepDone {
		t.Errorf("node-000 in progress at the pause is %s, want done", n.Step)
	}
	for _, name := range []string{"node-001", "node-002", "node-003"} {
		if n := nodeNamed(t, c, name); n.Step != StepQueued {
			t.Errorf("%s started while paused: %s", name, n.Step)
		}
	}
	// A second pause changes nothing; Step on a paused, idle campaign is a
	// no-op the runner need not write.
	s.edit(func(c Campaign) (Campaign, error) { return c.Pause("bob", s.now) })
	before := s.load()
	after, acts := Step(before, s.observe(before))
	if len(acts) != 0 || after.UpdatedAt != before.UpdatedAt || after.StateReason != "paused by alice" {
		t.Errorf("idle paused step: %d actions, updated %v -> %v", len(acts), before.UpdatedAt, after.UpdatedAt)
	}

	s.edit(func(c Campaign) (Campaign, error) { return c.Resume("alice", s.now) })
	c = s.run(500)
	if c.State != StateCompleted || c.Failures != 0 {
		t.Fatalf("campaign: %s", describe(c))
	}
	s.finalChecks(c)
}

func TestAbort(t *testing.T) {
	s := newSim(t, 6, 0)
	s.byName("node-000").taskTicks = 6
	s.byName("node-001").drainTicks = 40
	s.byName("node-002").taskExit = 4
	spec := gpuSpec()
	spec.MaxUnavailable, spec.MaxFailures = 3, 5
	s.start(spec)
	aborted := false
	s.before = func(s *sim) {
		c := s.load()
		if !aborted && nodeNamed(t, c, "node-000").Step == StepTask && nodeNamed(t, c, "node-001").Step == StepDrain && nodeNamed(t, c, "node-002").Step == StepFailed {
			aborted = true
			s.edit(func(c Campaign) (Campaign, error) { return c.Abort("alice", s.now) })
		}
	}
	c := s.run(500)
	if !aborted || c.State != StateAborted || c.StateReason != "aborted by alice" {
		t.Fatalf("aborted %v; campaign: %s", aborted, describe(c))
	}
	want := map[string]NodeStep{"node-000": StepDone, "node-001": StepSkipped, "node-002": StepFailed, "node-003": StepSkipped, "node-004": StepSkipped, "node-005": StepSkipped}
	for name, step := range want {
		if n := nodeNamed(t, c, name); n.Step != step {
			t.Errorf("%s: %s (%s), want %s", name, n.Step, n.Error, step)
		}
	}
	if got := s.cordoned(); !slices.Equal(got, []string{"node-002"}) {
		t.Errorf("cordoned after abort: %v, want only the failed node-002", got)
	}
	if s.taskRuns[s.byName("node-001").id] != 0 || len(s.eventsWith("node-003")) != 0 {
		t.Errorf("abort let node-001's task run or node-003 start")
	}
	last := s.auditLog[len(s.auditLog)-1]
	if last.What != "campaign.aborted" || !strings.Contains(last.Message, "failed: "+s.byName("node-002").id) {
		t.Errorf("last audit %+v", last)
	}
	if _, err := c.Resume("alice", s.now); err == nil || !strings.Contains(err.Error(), "aborted") {
		t.Errorf("Resume of an aborted campaign: %v", err)
	}
	s.finalChecks(c)
}

func TestWindowClosedStartsNothing(t *testing.T) {
	s := newSim(t, 2, 0)
	spec := gpuSpec()
	var err error
	if spec.Window, err = ParseWindow("Sun 02:00-06:00"); err != nil {
		t.Fatal(err)
	}
	s.start(spec)
	var c Campaign
	for range 50 {
		c = s.step()
	}
	if c.State != StateRunning || len(s.cordoned()) != 0 || len(s.events) != 0 {
		t.Fatalf("outside the window: %s %v", describe(c), s.events)
	}
	if !strings.Contains(c.Waiting, `outside the window "Sun 02:00-06:00"; it opens 2026-03-08T02:00:00Z`) {
		t.Errorf("waiting %q", c.Waiting)
	}
	s.now = time.Date(2026, 3, 8, 2, 0, 0, 0, time.UTC)
	c = s.run(500)
	if c.State != StateCompleted {
		t.Fatalf("campaign: %s", describe(c))
	}
	s.finalChecks(c)
}

func TestWindowClosingLetsInFlightFinish(t *testing.T) {
	s := newSim(t, 2, 0)
	spec := gpuSpec()
	spec.Window, _ = ParseWindow("Sat 02:00-02:01")
	s.start(spec)
	var c Campaign
	for range 150 {
		c = s.step()
	}
	if n := nodeNamed(t, c, "node-000"); n.Step != StepDone {
		t.Errorf("node-000 started in the window: %s", n.Step)
	}
	if n := nodeNamed(t, c, "node-001"); n.Step != StepQueued || !strings.Contains(c.Waiting, "it opens 2026-03-14T02:00:00Z") {
		t.Errorf("node-001 %s, waiting %q", n.Step, c.Waiting)
	}
}

func TestDrainFailure(t *testing.T) {
	for _, tc := range []struct {
		name     string
		fails    int
		policy   DrainFailurePolicy
		step     NodeStep
		cordoned bool
		errHas   string
		attempts int
		failures int
		forced   bool
		taskRuns int
		max      int
	}{
		{name: "retried, then succeeds", fails: 2, step: StepDone, attempts: 3, taskRuns: 1},
		{name: "uncordon by default", fails: 9, step: StepFailed, attempts: 3, failures: 1,
			errHas: "drain failed 3 times; last: evicting pod web-1: PodDisruptionBudget web allows no disruption"},
		{name: "stay cordoned", fails: 9, policy: DrainFailureCordon, max: 2, step: StepFailed, cordoned: true, attempts: 3, failures: 1, errHas: "drain failed 3 times"},
		{name: "proceed", fails: 9, policy: DrainFailureProceed, step: StepDone, attempts: 3, forced: true, taskRuns: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t, 2, 0)
			s.byName("node-000").drainFails = tc.fails
			spec := gpuSpec()
			spec.OnDrainFailure = tc.policy
			spec.MaxUnavailable = max(1, tc.max)
			spec.DrainRetryDelay = time.Minute
			s.start(spec)
			c := s.run(500)
			n := nodeNamed(t, c, "node-000")
			if n.Step != tc.step || c.Failures != tc.failures || n.DrainAttempt != tc.attempts || n.DrainForced != tc.forced || !strings.Contains(n.Error, tc.errHas) {
				t.Errorf("node-000 %+v; campaign %s", n, describe(c))
			}
			if n.CordonedByUs != tc.cordoned || slices.Contains(s.cordoned(), "node-000") != tc.cordoned {
				t.Errorf("cordoned %v (by us %v), want %v", s.cordoned(), n.CordonedByUs, tc.cordoned)
			}
			if s.taskRuns[n.NodeID] != tc.taskRuns {
				t.Errorf("task ran %d times", s.taskRuns[n.NodeID])
			}
			if got := s.eventsWith("node-000 drain"); len(got) != tc.attempts {
				t.Errorf("drains %v", got)
			}
			if tc.failures == 1 && !tc.cordoned {
				// uncordoned at once: the uncordon follows the last failure
				// in the same step
				ev := s.eventsWith("node-000")
				if ev[len(ev)-1] != "node-000 uncordon" {
					t.Errorf("events %v", ev)
				}
			}
			if nodeNamed(t, c, "node-001").Step != StepDone {
				t.Errorf("node-001 not done")
			}
			s.finalChecks(c)
		})
	}
}

// The retry waits DrainRetryDelay between attempts.
func TestDrainRetryDelay(t *testing.T) {
	s := newSim(t, 1, 0)
	s.byName("node-000").drainFails = 1
	spec := gpuSpec()
	spec.DrainRetryDelay = time.Minute
	s.start(spec)
	var at []int
	s.onAct = func(s *sim, a Action) {
		if d, ok := a.(Drain); ok && d.Attempt > len(at) {
			at = append(at, s.tick)
		}
	}
	s.run(500)
	if len(at) != 2 || at[1]-at[0] < 2+6 { // drain takes 2 ticks, then 6 ticks of delay
		t.Errorf("drain attempts at ticks %v", at)
	}
}

func TestUncordonedBeforeTaskIsCaught(t *testing.T) {
	s := newSim(t, 1, 0)
	n := s.byName("node-000")
	done := false
	s.before = func(s *sim) {
		if d := s.drains[n.id]; !done && d != nil && d.state == DrainSucceeded {
			done = true
			n.unsched = false // another controller uncordons it
			s.logf("node-000 uncordoned by someone")
		}
	}
	s.start(gpuSpec())
	c := s.run(500)
	want := []string{"node-000 cordon", "node-000 drain 1", "node-000 uncordoned by someone", "node-000 cordon", "node-000 drain 2", "node-000 maintenance.task", "node-000 maintenance.reboot", "node-000 uncordon"}
	if got := s.eventsWith("node-000"); !slices.Equal(got, want) {
		t.Errorf("events %v\nwant %v", got, want)
	}
	if p := nodeNamed(t, c, "node-000"); p.Step != StepDone || p.Recordons != 1 {
		t.Errorf("node %+v", p)
	}
	s.finalChecks(c)
}

// The gate itself: a drained node found uncordoned is cordoned again, and
// nothing is queued for it.
func TestGateBeforeTask(t *testing.T) {
	c, err := New("c1", "", gpuSpec(), []Target{{NodeID: "a", K8sNode: "a"}}, t0)
	if err != nil {
		t.Fatal(err)
	}
	c.State = StateRunning
	c.Nodes[0].Step, c.Nodes[0].CordonedByUs, c.Nodes[0].DrainAttempt = StepDrained, true, 1
	obs := Observations{Now: t0, Nodes: map[string]NodeObservation{"a": {K8sNodeExists: true, K8sReady: true, AgentConnected: true, BootID: "b"}}}
	next, acts := Step(c, obs)
	if n := next.Nodes[0]; n.Step != StepCordon || n.TaskCommandID != "" || !n.CordonedByUs {
		t.Errorf("node %+v", n)
	}
	for _, a := range acts {
		if _, ok := a.(EnqueueCommand); ok {
			t.Errorf("queued %+v for an uncordoned node", a)
		}
	}
	if !slices.ContainsFunc(acts, func(a Action) bool { return a == Action(Cordon{NodeID: "a", K8sNode: "a"}) }) {
		t.Errorf("actions %v: want a Cordon", acts)
	}
	// Cordoned, the same node gets its task, under the deterministic id.
	o := obs.Nodes["a"]
	o.Unschedulable = true
	obs.Nodes["a"] = o
	next, acts = Step(c, obs)
	want := EnqueueCommand{ID: "c1/a/maintenance.task/1", NodeID: "a", Kind: KindTask, Params: map[string]string{
		ParamScript: c.Spec.Task, ParamTimeout: "30m0s", ParamCampaignID: "c1", ParamNodeName: "a"}}
	if next.Nodes[0].Step != StepTask || len(acts) == 0 || fmt.Sprint(acts[0]) != fmt.Sprint(want) {
		t.Errorf("node %s, actions %v", next.Nodes[0].Step, acts)
	}
}

func TestUncordonedBeforeRebootIsRedrained(t *testing.T) {
	s := newSim(t, 1, 0)
	n := s.byName("node-000")
	s.before = func(s *sim) {
		if cmd := s.cmds[CommandID("c1", n.id, KindTask, 1)]; cmd != nil && cmd.state == CommandSucceeded && n.unsched && s.creates[CommandID("c1", n.id, KindReboot, 1)] == 0 && len(s.eventsWith("someone")) == 0 {
			n.unsched = false
			s.logf("node-000 uncordoned by someone")
		}
	}
	s.start(gpuSpec())
	c := s.run(500)
	want := []string{"node-000 cordon", "node-000 drain 1", "node-000 maintenance.task", "node-000 uncordoned by someone", "node-000 cordon", "node-000 drain 2", "node-000 maintenance.reboot", "node-000 uncordon"}
	if got := s.eventsWith("node-000"); !slices.Equal(got, want) {
		t.Errorf("events %v\nwant %v", got, want)
	}
	if c.State != StateCompleted || s.taskRuns[n.id] != 1 {
		t.Errorf("campaign %s; task ran %d times", describe(c), s.taskRuns[n.id])
	}
	s.finalChecks(c)
}

func TestKeepsBeingUncordonedFails(t *testing.T) {
	s := newSim(t, 1, 0)
	n := s.byName("node-000")
	last := 0
	s.before = func(s *sim) {
		if d := s.drains[n.id]; d != nil && d.state == DrainSucceeded && d.attempt > last {
			last = d.attempt
			n.unsched = false
		}
	}
	s.start(gpuSpec())
	c := s.run(500)
	p := nodeNamed(t, c, "node-000")
	if p.Step != StepFailed || p.Recordons != MaxRecordons+1 || !strings.Contains(p.Error, "something else keeps uncordoning it") || s.taskRuns[n.id] != 0 {
		t.Errorf("node %+v", p)
	}
	s.finalChecks(c)
}

func TestReboot(t *testing.T) {
	for _, tc := range []struct {
		name   string
		set    func(n *fakeNode)
		step   NodeStep
		errHas string
	}{
		{name: "new boot id", set: func(n *fakeNode) {}, step: StepDone},
		{name: "same boot id", set: func(n *fakeNode) { n.rebootSameBoot = true }, step: StepFailed, errHas: "agent not back with a new boot id within 15m0s of the reboot"},
		{name: "never back", set: func(n *fakeNode) { n.rebootNever = true }, step: StepFailed, errHas: "agent not back with a new boot id within 15m0s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t, 1, 0)
			tc.set(s.byName("node-000"))
			s.start(gpuSpec())
			var queued time.Time
			s.onAct = func(s *sim, a Action) {
				if e, ok := a.(EnqueueCommand); ok && e.Kind == KindReboot && queued.IsZero() {
					queued = s.now
				}
			}
			c := s.run(500)
			n := nodeNamed(t, c, "node-000")
			if n.Step != tc.step || !strings.Contains(n.Error, tc.errHas) {
				t.Fatalf("node %+v", n)
			}
			if tc.step == StepFailed {
				if took := n.FinishedAt.Sub(queued); took < 15*time.Minute || took > 15*time.Minute+tick {
					t.Errorf("failed %s after the reboot, want 15m", took)
				}
				if !n.CordonedByUs || !slices.Equal(s.cordoned(), []string{"node-000"}) {
					t.Errorf("failed reboot not left cordoned: %v", s.cordoned())
				}
			}
			s.finalChecks(c)
		})
	}
}

func TestGPUCountAfterMaintenance(t *testing.T) {
	t.Run("dropped: fails after health-timeout, stays cordoned", func(t *testing.T) {
		s := newSim(t, 1, 0)
		s.byName("node-000").gpusAfter = 7
		s.start(gpuSpec())
		var rebooted time.Time
		c := s.load()
		for range 500 {
			if c = s.step(); rebooted.IsZero() && nodeNamed(t, c, "node-000").Step == StepVerify {
				rebooted = s.now
			}
			if c.State.Done() {
				break
			}
		}
		n := nodeNamed(t, c, "node-000")
		if n.Step != StepFailed || n.Error != "not back in service within 10m0s (health-timeout): 7 GPUs, 8 before" {
			t.Fatalf("node %+v", n)
		}
		if took := n.FinishedAt.Sub(rebooted); took != 10*time.Minute {
			t.Errorf("failed %s after the reboot", took)
		}
		if !slices.Equal(s.cordoned(), []string{"node-000"}) || len(s.eventsWith("uncordon")) != 0 {
			t.Errorf("cordoned %v, events %v", s.cordoned(), s.events)
		}
		s.finalChecks(c)
	})
	t.Run("back within the timeout", func(t *testing.T) {
		s := newSim(t, 1, 0)
		n := s.byName("node-000")
		n.gpusAfter = 7
		s.before = func(s *sim) {
			if p := nodeNamed(t, s.load(), "node-000"); p.Step == StepVerify && s.now.Sub(p.StepSince) > 5*time.Minute {
				n.gpus = 8 // the driver finally enumerates the eighth GPU
			}
		}
		s.start(gpuSpec())
		c := s.run(500)
		if p := nodeNamed(t, c, "node-000"); p.Step != StepDone {
			t.Errorf("node %+v", p)
		}
		s.finalChecks(c)
	})
}

func TestTaskFailures(t *testing.T) {
	for _, tc := range []struct {
		name   string
		set    func(n *fakeNode)
		errHas string
	}{
		{name: "non-zero exit", set: func(n *fakeNode) { n.taskExit = 3 }, errHas: "task failed with exit code 3: driver install failed"},
		{name: "never finishes", set: func(n *fakeNode) { n.taskHangs = true }, errHas: "task not finished within 6m0s (task-timeout 1m0s + 5m0s to deliver and report"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t, 2, 0)
			tc.set(s.byName("node-000"))
			spec := gpuSpec()
			spec.TaskTimeout, spec.MaxUnavailable = time.Minute, 2
			s.start(spec)
			c := s.run(500)
			n := nodeNamed(t, c, "node-000")
			if n.Step != StepFailed || !strings.Contains(n.Error, tc.errHas) || n.RebootCommandID != "" {
				t.Fatalf("node %+v", n)
			}
			if !slices.Equal(s.cordoned(), []string{"node-000"}) {
				t.Errorf("cordoned %v", s.cordoned())
			}
			if p := nodeNamed(t, c, "node-001"); p.Step != StepDone || c.State != StateCompleted {
				t.Errorf("node-001 %s, campaign %s", p.Step, c.State)
			}
			s.finalChecks(c)
		})
	}
}

func TestNodeWithoutKubernetesNode(t *testing.T) {
	s := newSim(t, 3, 0)
	s.byName("node-001").exists = false
	s.start(gpuSpec())
	c := s.run(500)
	n := nodeNamed(t, c, "node-001")
	if n.Step != StepFailed || !strings.Contains(n.Error, `no Kubernetes Node "node-001"`) || !strings.Contains(n.Error, "nothing was done to it") {
		t.Errorf("node %+v", n)
	}
	if len(s.eventsWith("node-001")) != 0 || c.State != StateCompleted || c.Failures != 1 {
		t.Errorf("events %v; campaign %s", s.eventsWith("node-001"), describe(c))
	}
	s.finalChecks(c)

	// Unmapped (no Node name at all), and an agent that is not connected.
	c, _ = New("c2", "", gpuSpec(), []Target{{NodeID: "a"}, {NodeID: "b", K8sNode: "b"}}, t0)
	c.Spec.MaxUnavailable = 2
	c, _ = Step(c, Observations{Now: t0, Nodes: map[string]NodeObservation{"a": {}, "b": {K8sNodeExists: true}}})
	if !strings.Contains(c.Nodes[0].Error, "no Kubernetes Node is mapped to this node (by hostname, or by the label budfleet.io/k8s-node)") ||
		c.Nodes[1].Error != "agent not connected; nothing was done to the node" {
		t.Errorf("nodes %+v", c.Nodes)
	}
}

func TestAlreadyCordonedNodeStaysCordoned(t *testing.T) {
	s := newSim(t, 1, 0)
	s.byName("node-000").unsched = true // cordoned by someone before the campaign
	s.start(gpuSpec())
	c := s.run(500)
	if n := nodeNamed(t, c, "node-000"); n.Step != StepDone || n.CordonedByUs || !slices.Equal(s.cordoned(), []string{"node-000"}) {
		t.Errorf("node %+v, cordoned %v", n, s.cordoned())
	}
}

// A node the runner could not observe is left as it is: no action, no
// deadline.
func TestUnobservedNodeIsLeftAlone(t *testing.T) {
	s := newSim(t, 1, 0)
	s.byName("node-000").rebootNever = true
	s.start(gpuSpec())
	for nodeNamed(t, s.load(), "node-000").Step != StepReboot {
		s.step()
	}
	c := s.load()
	late := Observations{Now: s.now.Add(time.Hour), AuditedThrough: c.AuditSeq}
	next, acts := Step(c, late)
	if len(acts) != 0 || next.Nodes[0].Step != StepReboot {
		t.Errorf("unobserved: actions %v, step %s", acts, next.Nodes[0].Step)
	}
}

// A task whose enqueue was lost in a crash is not queued again once the
// campaign is aborted: the node was never disrupted and is returned.
func TestAbortAfterLostEnqueueReturnsNode(t *testing.T) {
	c, _ := New("c1", "", gpuSpec(), []Target{{NodeID: "a", K8sNode: "a"}}, t0)
	c.State = StateAborting
	c.Nodes[0].Step, c.Nodes[0].StepSince, c.Nodes[0].CordonedByUs, c.Nodes[0].TaskCommandID = StepTask, t0, true, "c1/a/maintenance.task/1"
	obs := Observations{Now: t0, Nodes: map[string]NodeObservation{"a": {K8sNodeExists: true, Unschedulable: true, AgentConnected: true}}}
	next, acts := Step(c, obs)
	if n := next.Nodes[0]; n.Step != StepUncordon || n.Result != ResultReturned || n.TaskCommandID != "" {
		t.Errorf("node %+v", n)
	}
	if len(acts) == 0 || acts[0] != Action(Uncordon{NodeID: "a", K8sNode: "a"}) {
		t.Errorf("actions %v", acts)
	}
	// With the command in the store, the node is finished instead.
	o := obs.Nodes["a"]
	o.Commands = map[string]CommandObservation{"c1/a/maintenance.task/1": {State: CommandDelivered}}
	obs.Nodes["a"] = o
	next, _ = Step(c, obs)
	if n := next.Nodes[0]; n.Step != StepTask {
		t.Errorf("disrupted node returned: %+v", n)
	}
}

func TestStepIsDeterministic(t *testing.T) {
	s := newSim(t, 20, 4)
	s.start(fleetSpec())
	for range 30 {
		s.step()
	}
	c := s.load()
	obs := s.observe(c)
	a, actsA := Step(c, obs)
	b, actsB := Step(c, obs)
	if fmt.Sprint(a) != fmt.Sprint(b) || fmt.Sprint(actsA) != fmt.Sprint(actsB) {
		t.Error("two Steps of the same input differ")
	}
}

func TestAuditOutbox(t *testing.T) {
	c, _ := New("c1", "", gpuSpec(), []Target{{NodeID: "a", K8sNode: "a"}}, t0)
	obs := Observations{Now: t0, Nodes: map[string]NodeObservation{"a": {K8sNodeExists: true, AgentConnected: true}}}
	c, acts := Step(c, obs)
	var audits []Audit
	for _, a := range acts {
		if au, ok := a.(Audit); ok {
			audits = append(audits, au)
		}
	}
	if len(audits) != 3 || audits[0].What != "campaign.started" || audits[0].ID != "c1#1" || audits[1].What != "node.started" || audits[2].What != "node.cordon" {
		t.Fatalf("audits %+v", audits)
	}
	// Not confirmed: sent again, same ids. Confirmed: dropped.
	obs.Now = t0.Add(tick)
	_, acts = Step(c, obs)
	if n := countAudits(acts); n != 3 {
		t.Errorf("unconfirmed audits re-sent: %d, want 3", n)
	}
	obs.AuditedThrough = 3
	c2, acts := Step(c, obs)
	if n := countAudits(acts); n != 0 || len(c2.Outbox) != 0 {
		t.Errorf("confirmed audits: %d sent, outbox %d", n, len(c2.Outbox))
	}
}

func countAudits(acts []Action) int {
	n := 0
	for _, a := range acts {
		if _, ok := a.(Audit); ok {
			n++
		}
	}
	return n
}
