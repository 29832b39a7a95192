package maintenance

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestNew(t *testing.T) {
	spec := Spec{Selector: map[string]string{"pool": "gpu"}, MaxUnavailable: 2, PerDomain: &DomainLimit{Label: "rack", Max: 1}, Reboot: true}
	c, err := New("c1", "kernel", spec, []Target{
		{NodeID: "z", K8sNode: "gpu-b", Labels: map[string]string{"rack": "r2"}},
		{NodeID: "y", K8sNode: "gpu-a", Labels: map[string]string{"rack": "r1"}},
		{NodeID: "x", K8sNode: "gpu-b"},
	}, t0.In(time.FixedZone("X", 3600)))
	if err != nil {
		t.Fatal(err)
	}
	var order, domains []string
	for _, n := range c.Nodes {
		order, domains = append(order, n.NodeID), append(domains, n.Domain)
		if n.Step != StepQueued {
			t.Errorf("%s: %s", n.NodeID, n.Step)
		}
	}
	if !slices.Equal(order, []string{"y", "x", "z"}) || !slices.Equal(domains, []string{"r1", "", "r2"}) {
		t.Errorf("order %v, domains %v: want by Node name then id, domains from the rack label", order, domains)
	}
	if c.State != StatePending || c.Spec.DrainTimeout != DefaultDrainTimeout || c.CreatedAt.Location() != time.UTC || c.Name != "kernel" {
		t.Errorf("campaign %+v", c)
	}

	for _, tc := range []struct {
		id      string
		spec    Spec
		targets []Target
		want    string
	}{
		{"c1", spec, nil, "selector pool=gpu matches no node"},
		{"c1", spec, []Target{{NodeID: "a"}, {NodeID: "a"}}, "node a is listed twice"},
		{"c1", spec, []Target{{}}, "a target has an empty node id"},
		{"", spec, []Target{{NodeID: "a"}}, "campaign id is empty"},
		{"c1", Spec{Selector: spec.Selector, Reboot: true}, []Target{{NodeID: "a"}}, "max-unavailable must be at least 1"},
	} {
		if _, err := New(tc.id, "", tc.spec, tc.targets, t0); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New: %v; want %q", err, tc.want)
		}
	}
}

func TestOperatorTransitions(t *testing.T) {
	base, _ := New("c1", "", gpuSpec(), []Target{{NodeID: "a", K8sNode: "a"}}, t0)
	in := func(s State) Campaign { c := base; c.State = s; return c }
	for _, tc := range []struct {
		op   string
		from State
		to   State
		err  string
	}{
		{"pause", StatePending, StatePaused, ""},
		{"pause", StateRunning, StatePaused, ""},
		{"pause", StatePaused, StatePaused, ""},
		{"pause", StateStopped, StateStopped, "campaign c1 is stopped; only a pending or running campaign can be paused"},
		{"pause", StateCompleted, StateCompleted, "campaign c1 is completed"},
		{"resume", StatePaused, StateRunning, ""},
		{"resume", StateStopped, StateRunning, ""},
		{"resume", StateStopping, StateRunning, ""},
		{"resume", StateRunning, StateRunning, ""},
		{"resume", StateAborting, StateAborting, "campaign c1 is aborting; only a paused or stopped campaign can be resumed"},
		{"resume", StateCompleted, StateCompleted, "only a paused or stopped campaign can be resumed"},
		{"abort", StateRunning, StateAborting, ""},
		{"abort", StatePending, StateAborting, ""},
		{"abort", StateStopped, StateAborting, ""},
		{"abort", StateAborting, StateAborting, ""},
		{"abort", StateAborted, StateAborted, "campaign c1 is already aborted"},
		{"abort", StateCompleted, StateCompleted, "campaign c1 is already completed"},
	} {
		c := in(tc.from)
		var got Campaign
		var err error
		switch tc.op {
		case "pause":
			got, err = c.Pause("alice", t0)
		case "resume":
			got, err = c.Resume("alice", t0)
		case "abort":
			got, err = c.Abort("alice", t0)
		}
		if (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) || got.State != tc.to {
			t.Errorf("%s from %s: %s, %v; want %s, %q", tc.op, tc.from, got.State, err, tc.to, tc.err)
		}
	}
	// Resuming after the breaker resets it.
	c := in(StateStopped)
	c.Failures = 3
	if c, _ = c.Resume("alice", t0); c.BreakerBase != 3 || c.StateReason != "resumed by alice" {
		t.Errorf("resumed %+v", c)
	}
}
