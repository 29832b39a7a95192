package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bud-ecosystem/budfleet/internal/kubetest"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
	maintv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/maint/v1"
)

// nodeQuarantine reads a Node's cordon and whether it carries the GPU
// quarantine taint.
func nodeQuarantine(t testing.TB, cp *kubetest.ControlPlane, name string) (cordoned, tainted bool, err error) {
	kn, err := cp.Client.CoreV1().Nodes().Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		return false, false, err
	}
	for _, x := range kn.Spec.Taints {
		if x.Key == "nvidia.com/gpu.unhealthy" && x.Value == "true" && x.Effect == corev1.TaintEffectNoSchedule {
			tainted = true
		}
	}
	return kn.Spec.Unschedulable, tainted, nil
}

// TestGPUQuarantine: the controller's optional GPU quarantine, against the
// real control plane with kwok Nodes and agents on the mock DGX H100. XID 79
// makes GPU 3 of node A Unhealthy: its Node is cordoned and tainted
// nvidia.com/gpu.unhealthy=true:NoSchedule, and a one-node remediation
// campaign drains it and runs its task once, leaving it cordoned. With
// --gpu-quarantine-max-nodes 1 a fault on node B is held by the circuit
// breaker (its Node untouched; nodes get says why). Node A's GPUs healthy
// again (an agent restart without faults), the quarantine lifts (taint gone,
// uncordoned) and node B is quarantined in its turn. Every step is in the
// audit trail; a missing remediation script stops the controller at start.
func TestGPUQuarantine(t *testing.T) {
	t.Parallel()
	cp := kubetest.Start(t, kubetest.WithKwok())
	dir := t.TempDir()
	runs := filepath.Join(dir, "runs")
	task := filepath.Join(dir, "remediate.sh")
	if err := os.WriteFile(task, []byte(fmt.Sprintf("echo \"$BUD_NODE_NAME $BUD_CAMPAIGN_ID\" >> %s\n", runs)), 0o600); err != nil {
		t.Fatal(err)
	}

	// Bad input: the controller refuses to start, saying which flag.
	stdout, stderr, err := runCmd(30*time.Second, filepath.Join(binDir, "bud-controller"), "serve", "--data-dir", dir,
		"--gpu-quarantine", "--gpu-quarantine-task", filepath.Join(dir, "missing.sh"))
	if err == nil || !strings.Contains(stderr, "--gpu-quarantine-task") || !strings.Contains(stderr, "no such file") {
		t.Errorf("serve with a missing remediation script: %v\n%s%s\nwant an error naming the flag", err, stdout, stderr)
	}

	c := startController(t, withServeArgs("--gpu-quarantine", "--gpu-quarantine-max-nodes", "1", "--gpu-quarantine-task", task))
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, cp.Kubeconfig, 0o600); err != nil {
		t.Fatal(err)
	}
	c.mustBudctl(t, "clusters", "add", "dc1", "--kubeconfig", kubeconfig)
	tok := c.createToken(t)
	hosts := []string{"e2e-q-a", "e2e-q-b"}
	agents, events := make([]*agent, 2), make([]string, 2)
	for i, h := range hosts {
		cp.AddKwokNode(h, nil)
		events[i] = filepath.Join(dir, h+"-gpu-events.jsonl")
		gpuInject(t, events[i], "# injected faults")
		agents[i] = joinAgent(t, c, tok, h)
		gpuConfigure(t, agents[i], "mock:dgxh100", events[i])
		agents[i].start(t)
	}
	for _, a := range agents {
		a.waitReady(t)
	}
	quarantineOf := func(a *agent) (*fleetv1.GpuQuarantine, error) {
		n, err := c.getNode(a.nodeID)
		return n.GetGpus().GetQuarantine(), err
	}

	// Node A: quarantined, and its remediation campaign runs.
	gpuInject(t, events[0], `{"gpu":3,"xid":79}`)
	var qa *fleetv1.GpuQuarantine
	eventually(t, 30*time.Second, func() error {
		var err error
		if qa, err = quarantineOf(agents[0]); err != nil {
			return err
		}
		cordoned, tainted, err := nodeQuarantine(t, cp, hosts[0])
		if err != nil || qa.GetState() != fleetv1.QuarantineState_QUARANTINE_STATE_ACTIVE || !cordoned || !tainted {
			return fmt.Errorf("node A: quarantine %v; Node cordoned %v, tainted %v (%v)", qa, cordoned, tainted, err)
		}
		return nil
	})
	if !qa.GetCordonedByQuarantine() || !strings.Contains(qa.GetReason(), "GPU 3") || qa.GetCampaignId() == "" {
		t.Errorf("node A's quarantine: %v; want it to own the cordon, name GPU 3 and a campaign", qa)
	}
	var cm *maintv1.Campaign
	eventually(t, time.Minute, func() error {
		var err error
		if cm, err = c.getCampaign(qa.GetCampaignId()); err != nil {
			return err
		}
		if cm.GetState() != maintv1.CampaignState_CAMPAIGN_STATE_COMPLETED {
			return fmt.Errorf("remediation campaign %s", cm.GetState())
		}
		return nil
	})
	if n := cm.GetNodes(); len(n) != 1 || n[0].GetStep() != maintv1.NodeStep_NODE_STEP_DONE || n[0].GetK8SNode() != hosts[0] {
		t.Errorf("remediation campaign nodes: %v; want node A done", n)
	}
	if b, _ := os.ReadFile(runs); strings.Count(string(b), hosts[0]+" "+qa.GetCampaignId()) != 1 {
		t.Errorf("remediation runs:\n%s\nwant one on %s", b, hosts[0])
	}
	if cordoned, tainted, err := nodeQuarantine(t, cp, hosts[0]); err != nil || !cordoned || !tainted {
		t.Errorf("node A after its campaign: cordoned %v, tainted %v (%v); the quarantine holds until the GPUs are healthy", cordoned, tainted, err)
	}
	if out := c.mustBudctl(t, "nodes", "get", agents[0].nodeID); !strings.Contains(out, "GPU quarantine:") || !strings.Contains(out, "active") {
		t.Errorf("nodes get shows no active quarantine:\n%s", out)
	}

	// Node B: the breaker holds it; its Node is left alone.
	gpuInject(t, events[1], `{"gpu":1,"xid":79}`)
	eventually(t, 30*time.Second, func() error {
		q, err := quarantineOf(agents[1])
		if err != nil || q.GetState() != fleetv1.QuarantineState_QUARANTINE_STATE_HELD || !strings.Contains(q.GetError(), "circuit breaker") {
			return fmt.Errorf("node B: quarantine %v (%v); want held by the circuit breaker", q, err)
		}
		return nil
	})
	consistently(t, 3*time.Second, func() error {
		cordoned, tainted, err := nodeQuarantine(t, cp, hosts[1])
		if err != nil || cordoned || tainted {
			return fmt.Errorf("held node B: cordoned %v, tainted %v (%v)", cordoned, tainted, err)
		}
		return nil
	})

	// Node A healthy again: released; node B quarantined in its turn.
	agents[0].stop(t)
	if err := os.WriteFile(events[0], nil, 0o600); err != nil {
		t.Fatal(err)
	}
	agents[0].start(t)
	eventually(t, 30*time.Second, func() error {
		q, err := quarantineOf(agents[0])
		if err != nil || q != nil {
			return fmt.Errorf("node A: quarantine %v (%v); want none", q, err)
		}
		cordoned, tainted, err := nodeQuarantine(t, cp, hosts[0])
		if err != nil || cordoned || tainted {
			return fmt.Errorf("released node A: cordoned %v, tainted %v (%v)", cordoned, tainted, err)
		}
		return nil
	})
	eventually(t, 30*time.Second, func() error {
		q, err := quarantineOf(agents[1])
		cordoned, tainted, kerr := nodeQuarantine(t, cp, hosts[1])
		if err != nil || kerr != nil || q.GetState() != fleetv1.QuarantineState_QUARANTINE_STATE_ACTIVE || !cordoned || !tainted {
			return fmt.Errorf("node B: quarantine %v (%v); Node cordoned %v, tainted %v (%v)", q, err, cordoned, tainted, kerr)
		}
		return nil
	})

	audit := readLog(filepath.Join(c.dataDir, "audit.log"))
	for _, l := range strings.Split(audit, "\n") {
		if strings.Contains(l, `"action":"gpu.`) {
			t.Log(l)
		}
	}
	for _, action := range []string{"gpu.quarantine", "gpu.quarantine.held", "gpu.quarantine.released"} {
		if !strings.Contains(audit, `"action":"`+action+`"`) {
			t.Errorf("the audit trail has no %s", action)
		}
	}
	if !strings.Contains(audit, `"operator":"bud-controller (gpu quarantine)"`) {
		t.Errorf("the audit trail does not name the quarantine as the actor")
	}
}
