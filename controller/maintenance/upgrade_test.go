package maintenance

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

// upgradeRun drives an upgrade campaign with observations made by hand.
type upgradeRun struct {
	t        *testing.T
	c        Campaign
	now      time.Time
	versions map[string]string // connected agents' versions; absent: not connected
	commands map[string]CommandObservation
	queued   map[string]EnqueueCommand // every command asked for, by id
}

func newUpgradeRun(t *testing.T, spec Spec, nodes ...string) *upgradeRun {
	t.Helper()
	var targets []Target
	for _, n := range nodes {
		targets = append(targets, Target{NodeID: n, K8sNode: n, UpgradeDigest: "sha256:" + strings.Repeat("a", 64)})
	}
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	c, err := New("c1", "upgrade", spec, targets, now)
	if err != nil {
		t.Fatal(err)
	}
	r := &upgradeRun{t: t, c: c, now: now, versions: map[string]string{}, commands: map[string]CommandObservation{}, queued: map[string]EnqueueCommand{}}
	for _, n := range nodes {
		r.versions[n] = "v1"
	}
	return r
}

func upgradeSpec() Spec {
	return Spec{Selector: map[string]string{"pool": "gpu"}, MaxUnavailable: 2, MaxFailures: 1, Upgrade: &Upgrade{Version: "v2", Timeout: time.Minute}}
}

// step takes one Step a second later, through a JSON round trip of the
// campaign (what the store keeps), and returns the commands it asked for.
func (r *upgradeRun) step() []EnqueueCommand {
	r.t.Helper()
	b, err := json.Marshal(r.c)
	if err != nil {
		r.t.Fatal(err)
	}
	var stored Campaign
	if err := json.Unmarshal(b, &stored); err != nil {
		r.t.Fatal(err)
	}
	r.now = r.now.Add(time.Second)
	obs := Observations{Now: r.now, AuditedThrough: r.c.AuditSeq, Nodes: map[string]NodeObservation{}}
	for _, n := range stored.Nodes {
		v, ok := r.versions[n.NodeID]
		o := NodeObservation{AgentConnected: ok, AgentVersion: v, Commands: map[string]CommandObservation{}}
		if cmd, ok := r.commands[n.UpgradeCommandID]; ok {
			o.Commands[n.UpgradeCommandID] = cmd
		}
		obs.Nodes[n.NodeID] = o
	}
	next, acts := Step(stored, obs)
	var cmds []EnqueueCommand
	for _, a := range acts {
		switch a := a.(type) {
		case EnqueueCommand:
			cmds = append(cmds, a)
			if _, ok := r.commands[a.ID]; !ok {
				r.commands[a.ID] = CommandObservation{State: CommandPending}
			}
			r.queued[a.ID] = a
		case Cordon, Uncordon, Drain:
			r.t.Fatalf("an upgrade campaign asked for %#v", a)
		}
	}
	r.c = next
	return cmds
}

func (r *upgradeRun) node(id string) NodeProgress {
	for _, n := range r.c.Nodes {
		if n.NodeID == id {
			return n
		}
	}
	r.t.Fatalf("no node %s", id)
	return NodeProgress{}
}

func (r *upgradeRun) inStep(step NodeStep) []string {
	var out []string
	for _, n := range r.c.Nodes {
		if n.Step == step {
			out = append(out, n.NodeID)
		}
	}
	return out
}

func TestUpgradeRollsWithinLimits(t *testing.T) {
	r := newUpgradeRun(t, upgradeSpec(), "a", "b", "c", "d")
	r.versions["d"] = "v2" // already there
	cmds := r.step()
	if got := r.inStep(StepUpgrade); !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Fatalf("upgrading after the first step: %v; want a and b (max-unavailable 2)", got)
	}
	if len(cmds) != 2 {
		t.Fatalf("commands: %v", cmds)
	}
	want := map[string]string{ParamDigest: "sha256:" + strings.Repeat("a", 64), ParamVersion: "v2", ParamTimeout: "1m0s", ParamCampaignID: "c1"}
	if cmds[0].Kind != KindUpgrade || cmds[0].ID != CommandID("c1", "a", KindUpgrade, 1) || !reflect.DeepEqual(cmds[0].Params, want) {
		t.Errorf("command %+v; want kind %s, params %v", cmds[0], KindUpgrade, want)
	}
	// a restarts on v2: done, and its slot goes to c.
	delete(r.versions, "a")
	r.step()
	r.versions["a"] = "v2"
	r.commands[r.node("a").UpgradeCommandID] = CommandObservation{State: CommandSucceeded}
	r.step()
	if n := r.node("a"); n.Step != StepDone || n.VersionBefore != "v1" || n.VersionAfter != "v2" {
		t.Fatalf("a: %+v", n)
	}
	if got := r.inStep(StepUpgrade); !reflect.DeepEqual(got, []string{"b", "c"}) {
		t.Errorf("upgrading: %v; want b and c", got)
	}
	// A command lost in a crash is asked for again under its id.
	delete(r.commands, r.node("b").UpgradeCommandID)
	if cmds := r.step(); len(cmds) != 1 || cmds[0].ID != r.node("b").UpgradeCommandID {
		t.Errorf("after b's command was lost: %v; want it again, alone", cmds)
	}
	r.versions["b"], r.versions["c"] = "v2", "v2"
	r.step()
	r.step() // d's turn: on v2 already
	if n := r.node("d"); n.Step != StepDone || n.UpgradeCommandID != "" {
		t.Errorf("d, on v2 already: %+v; want done without a command", n)
	}
	if r.c.State != StateCompleted || r.c.Failures != 0 {
		t.Fatalf("campaign %s (%s), %d failures", r.c.State, r.c.StateReason, r.c.Failures)
	}
	if len(r.queued) != 3 {
		t.Errorf("%d commands queued; want 3 (one per node not on v2)", len(r.queued))
	}
}

func TestUpgradeRollbackTripsBreaker(t *testing.T) {
	r := newUpgradeRun(t, upgradeSpec(), "a", "b", "c")
	r.step()
	r.commands[r.node("a").UpgradeCommandID] = CommandObservation{State: CommandFailed, Message: "rolled back to v1: v2 did not connect to the controller by ..."}
	r.step()
	if n := r.node("a"); n.Step != StepFailed || !strings.Contains(n.Error, "rolled back to v1") {
		t.Fatalf("a: %+v", n)
	}
	if r.c.State != StateStopping {
		t.Fatalf("campaign %s; want stopping (max-failures 1)", r.c.State)
	}
	// b, past its command, finishes; c never starts.
	r.versions["b"] = "v2"
	r.step()
	if r.c.State != StateStopped || r.node("b").Step != StepDone || r.node("c").Step != StepQueued {
		t.Fatalf("campaign %s, b %s, c %s; want stopped, done, queued", r.c.State, r.node("b").Step, r.node("c").Step)
	}
}

func TestUpgradeTimesOut(t *testing.T) {
	spec := upgradeSpec()
	spec.MaxFailures = 5
	r := newUpgradeRun(t, spec, "a")
	r.step()
	r.commands[r.node("a").UpgradeCommandID] = CommandObservation{State: CommandDelivered}
	for range int((time.Minute+UpgradeGrace)/time.Second) - 1 {
		r.step()
	}
	if n := r.node("a"); n.Step != StepUpgrade {
		t.Fatalf("a failed before its time: %+v", n)
	}
	r.step()
	if n := r.node("a"); n.Step != StepFailed || !strings.Contains(n.Error, "not back on v2 within 6m0s") {
		t.Fatalf("a: %+v", n)
	}
}

func TestUpgradeSpecRefused(t *testing.T) {
	for name, c := range map[string]struct {
		spec func(*Spec)
		want string
	}{
		"with a task":  {func(s *Spec) { s.Task = "true" }, "runs no task and no reboot"},
		"with reboot":  {func(s *Spec) { s.Reboot = true }, "runs no task and no reboot"},
		"no version":   {func(s *Spec) { s.Upgrade.Version = " " }, "needs the --version"},
		"neg. timeout": {func(s *Spec) { s.Upgrade.Timeout = -time.Second }, "upgrade-timeout must not be negative"},
	} {
		s := upgradeSpec()
		c.spec(&s)
		if err := s.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want %q", name, err, c.want)
		}
	}
	if _, err := New("c1", "", upgradeSpec(), []Target{{NodeID: "a"}}, time.Now()); err == nil || !strings.Contains(err.Error(), "no bud-agent artifact") {
		t.Errorf("a target without an artifact: %v", err)
	}
	if got := (Spec{Upgrade: &Upgrade{Version: "v2"}}).WithDefaults().Upgrade.Timeout; got != DefaultUpgradeTimeout {
		t.Errorf("default upgrade timeout %s", got)
	}
}
