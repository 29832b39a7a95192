package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bud-ecosystem/budfleet/controller/maintenance"
	maintv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/maint/v1"
)

func TestStartRequest(t *testing.T) {
	dir := t.TempDir()
	task, big, empty := filepath.Join(dir, "task.sh"), filepath.Join(dir, "big.sh"), filepath.Join(dir, "empty.sh")
	for path, n := range map[string]int{task: 20, big: maintenance.MaxTaskBytes + 1, empty: 0} {
		if err := os.WriteFile(path, bytes.Repeat([]byte("#"), n), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	good := startFlags{selectors: []string{"pool=gpu", "rack=r1"}, maxUnavailable: 2, perDomain: "rack=1", drainTimeout: time.Minute,
		task: task, taskTimeout: time.Hour, window: "Sat 02:00-06:00", maxFailures: 3, name: "n", onDrainFailure: "cordon", reboot: true}
	req, err := good.request()
	if err != nil {
		t.Fatal(err)
	}
	if req.GetSelector()["rack"] != "r1" || req.GetMaxUnavailable() != 2 || req.GetPerDomain().GetMax() != 1 || len(req.GetTask()) != 20 ||
		req.GetDrainTimeout().AsDuration() != time.Minute || req.GetOnDrainFailure() != maintv1.DrainFailurePolicy_DRAIN_FAILURE_POLICY_CORDON ||
		!req.GetReboot() || req.GetWindow() != "Sat 02:00-06:00" || req.GetGracePeriod() != nil {
		t.Errorf("request %v", req)
	}
	for name, tc := range map[string]struct {
		edit func(f *startFlags)
		want string
	}{
		"missing task file":  {func(f *startFlags) { f.task = filepath.Join(dir, "nope.sh") }, "no such file"},
		"task too large":     {func(f *startFlags) { f.task = big }, "the limit is 65536"},
		"empty task":         {func(f *startFlags) { f.task = empty }, "is empty"},
		"task a directory":   {func(f *startFlags) { f.task = dir }, "not a regular file"},
		"no selector":        {func(f *startFlags) { f.selectors = nil }, "at least one --selector"},
		"bad selector":       {func(f *startFlags) { f.selectors = []string{"pool"} }, "want key=value"},
		"bad per-domain":     {func(f *startFlags) { f.perDomain = "rack" }, "want LABEL=K"},
		"per-domain 0":       {func(f *startFlags) { f.perDomain = "rack=0" }, "at least 1"},
		"nothing to do":      {func(f *startFlags) { f.task, f.reboot = "", false }, "nothing to do"},
		"bad drain policy":   {func(f *startFlags) { f.onDrainFailure = "ignore" }, "want uncordon, cordon or proceed"},
		"negative timeout":   {func(f *startFlags) { f.taskTimeout = -time.Second }, "--task-timeout must not be negative"},
		"negative max-fails": {func(f *startFlags) { f.maxFailures = -1 }, "must not be negative"},
	} {
		f := good
		tc.edit(&f)
		if _, err := f.request(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", name, err, tc.want)
		}
	}
}

func TestPrintCampaign(t *testing.T) {
	c := &maintv1.Campaign{
		Id: "c1", Name: "driver 570", State: maintv1.CampaignState_CAMPAIGN_STATE_STOPPED,
		StateReason: "circuit breaker: 1 nodes failed (max-failures 1): n1", CreatedBy: "alice",
		Elapsed: durationpb.New(90 * time.Second),
		Spec: &maintv1.CampaignSpec{Selector: map[string]string{"pool": "gpu"}, MaxUnavailable: 1, MaxFailures: 1,
			PerDomain: &maintv1.DomainLimit{Label: "rack", Max: 1}, DrainTimeout: durationpb.New(5 * time.Minute), TaskBytes: 20, TaskSha256: "abcdef0123456789", Reboot: true},
		Nodes: []*maintv1.NodeProgress{
			{NodeId: "n1", K8SNode: "gpu-1", Domain: "r1", Step: maintv1.NodeStep_NODE_STEP_FAILED, Error: "drain failed 3 times; last: PodDisruptionBudget web", Elapsed: durationpb.New(80 * time.Second), FinishedAt: timestamppb.Now(), CordonedByCampaign: true},
			{NodeId: "n2", K8SNode: "gpu-2", Step: maintv1.NodeStep_NODE_STEP_DRAIN, DrainAttempt: 2, Elapsed: durationpb.New(10 * time.Second), StepElapsed: durationpb.New(4 * time.Second)},
			{NodeId: "n3", Step: maintv1.NodeStep_NODE_STEP_QUEUED},
		},
		NodesFailed: 1, NodesInProgress: 1, NodesQueued: 1, FailedNodes: []string{"n1"},
	}
	var b bytes.Buffer
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	printCampaign(tw, c)
	_ = tw.Flush()
	out := spaces.ReplaceAllString(b.String(), " ")
	for _, want := range []string{
		"State: stopped", "Reason: circuit breaker", "Limits: max-unavailable 1, per-domain rack=1, max-failures 1",
		"Does: drain 5m0s, task 20 bytes (sha256 abcdef012345), timeout -, reboot", "Started by: alice", "Elapsed: 1m30s",
		"Nodes: 0 done, 1 in progress, 1 queued, 1 failed, 0 skipped, of 3", "Failed nodes: n1",
		"n1 gpu-1 r1 failed - 1m20s yes drain failed 3 times; last: PodDisruptionBudget web",
		"n2 gpu-2 - drain (attempt 2) 4s 10s - -", "n3 - - queued - - - -",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in\n%s", want, out)
		}
	}
	// Redraws between snapshots move the clocks of what is still going on.
	moved := advance(c, 3*time.Second)
	if moved.GetElapsed().AsDuration() != 93*time.Second || moved.GetNodes()[1].GetStepElapsed().AsDuration() != 7*time.Second ||
		moved.GetNodes()[0].GetElapsed().AsDuration() != 80*time.Second || c.GetElapsed().AsDuration() != 90*time.Second {
		t.Errorf("advance: %v", moved)
	}
}
