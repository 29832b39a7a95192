package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bud-ecosystem/budfleet/controller/maintenance"
	"github.com/bud-ecosystem/budfleet/internal/kubetest"
	maintv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/maint/v1"
)

// TestCampaignFaults runs three campaigns at once against the real control
// plane, real agents and a real controller, each meeting faults:
//   - tasks: on one node the task fails (exit 3), on one it outlives its
//     --task-timeout, and one node has no Kubernetes Node. Each fails with
//     its reason; the two whose tasks ran stay cordoned and are named; the
//     third was never touched; the third failure trips the breaker
//     (--max-failures 3) and the campaign stops. Abort then leaves the failed
//     nodes cordoned and lists them.
//   - reboot: the agent's reboot command takes it down and it never comes
//     back: the node fails at --reboot-timeout, left cordoned.
//   - drain: a PodDisruptionBudget holds the drain; the controller is
//     SIGKILLed during it. The new controller drains again; once the budget
//     is gone the drain succeeds, the task runs once and the node is
//     uncordoned.
//
// Then bad input: a task over the size limit, and a cluster whose API
// server is down, refused with a clear error and nothing stored.
func TestCampaignFaults(t *testing.T) {
	t.Parallel()
	cp := kubetest.Start(t, kubetest.WithControllerManager(), kubetest.WithKwok())
	c := startController(t)
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, cp.Kubeconfig, 0o600); err != nil {
		t.Fatal(err)
	}
	c.mustBudctl(t, "clusters", "add", "dc1", "--kubeconfig", kubeconfig)
	const ns = "faults"
	cp.CreateNamespace(ns)

	// The nodes: each pool is one campaign's selector.
	type host struct{ name, pool string }
	hosts := []host{
		{"e2e-f-fail", "tasks"}, {"e2e-f-slow", "tasks"}, {"e2e-f-nok8s", "tasks"},
		{"e2e-f-gone", "reboot"},
		{"e2e-f-pdb", "drain"},
	}
	tokens := map[string]string{}
	agents := map[string]*agent{}
	for _, h := range hosts {
		if h.name != "e2e-f-nok8s" {
			cp.AddKwokNode(h.name, nil)
		}
		if tokens[h.pool] == "" {
			tokens[h.pool] = c.createToken(t, "--label", "pool="+h.pool)
		}
		agents[h.name] = joinAgent(t, c, tokens[h.pool], h.name)
	}
	// The reboot never returns: the command stops the agent, and nothing
	// starts it again.
	rebootScript := filepath.Join(dir, "reboot.sh")
	if err := os.WriteFile(rebootScript, []byte("#!/bin/sh\nkill -TERM $PPID\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(agents["e2e-f-gone"].configPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "maintenance:\n  reboot_command: [/bin/sh, %s]\n", rebootScript)
	f.Close()
	for _, a := range agents {
		a.start(t)
	}
	for _, a := range agents {
		a.waitReady(t)
	}
	runDB(t, cp, ns, "e2e-f-pdb") // db, under db-pdb, which allows no eviction

	runs := filepath.Join(dir, "runs")
	task := filepath.Join(dir, "task.sh")
	script := fmt.Sprintf(`echo "$BUD_NODE_NAME" >> %s
case "$BUD_NODE_NAME" in
*-fail) echo "firmware flash failed" >&2; exit 3 ;;
*-slow) sleep 60 ;;
esac
`, runs)
	if err := os.WriteFile(task, []byte(script), 0o600); err != nil {
		t.Fatal(err)
	}
	start := func(args ...string) string {
		return strings.TrimSpace(c.mustBudctl(t, append([]string{"maintenance", "start", "--task", task}, args...)...))
	}
	tasksID := start("--selector", "pool=tasks", "--max-unavailable", "3", "--task-timeout", "2s", "--max-failures", "3", "--name", "tasks")
	rebootID := start("--selector", "pool=reboot", "--max-unavailable", "1", "--reboot", "--reboot-timeout", "5s", "--name", "reboot")
	drainID := start("--selector", "pool=drain", "--max-unavailable", "1", "--drain-timeout", "2m", "--drain-attempts", "1", "--name", "drain")

	// The drain is held by the budget: kill the controller during it.
	eventually(t, time.Minute, func() error {
		cm, err := c.getCampaign(drainID)
		if err != nil {
			return err
		}
		if n := cm.GetNodes()[0]; n.GetStep() != maintv1.NodeStep_NODE_STEP_DRAIN {
			return fmt.Errorf("drain campaign node at %s", n.GetStep())
		}
		return nil
	})
	// Kill it once the API server has refused an eviction, so that the
	// new controller takes up a drain the budget has already held.
	eventually(t, time.Minute, func() error {
		if n, err := refusedEvictions(t, cp); err != nil || n == 0 {
			return fmt.Errorf("no eviction refused yet (%v)", err)
		}
		return nil
	})
	c.kill(t)
	c.restart(t)
	eventually(t, time.Minute, func() error {
		audit := readLog(filepath.Join(c.dataDir, "audit.log"))
		if strings.Count(audit, `"action":"maintenance.node.drain"`) < 2 {
			return fmt.Errorf("the new controller has not taken up the drain yet")
		}
		return nil
	})
	if err := cp.Client.PolicyV1().PodDisruptionBudgets(ns).Delete(t.Context(), "db-pdb", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}

	settled := func(id string) *maintv1.Campaign {
		t.Helper()
		var cm *maintv1.Campaign
		eventually(t, 2*time.Minute, func() error {
			var err error
			if cm, err = c.getCampaign(id); err != nil {
				return err
			}
			switch cm.GetState() {
			case maintv1.CampaignState_CAMPAIGN_STATE_COMPLETED, maintv1.CampaignState_CAMPAIGN_STATE_STOPPED, maintv1.CampaignState_CAMPAIGN_STATE_ABORTED:
				return nil
			}
			return fmt.Errorf("campaign %s %s", cm.GetName(), cm.GetState())
		})
		return cm
	}
	byNode := func(cm *maintv1.Campaign) map[string]*maintv1.NodeProgress {
		out := map[string]*maintv1.NodeProgress{}
		for _, n := range cm.GetNodes() {
			out[agentHost(agents, n.GetNodeId())] = n
		}
		return out
	}
	cordoned := func(name string) bool {
		kn, err := cp.Client.CoreV1().Nodes().Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return kn.Spec.Unschedulable
	}

	// Tasks: three failures, each with its reason; the breaker stops it.
	cm := settled(tasksID)
	if cm.GetState() != maintv1.CampaignState_CAMPAIGN_STATE_STOPPED || cm.GetFailures() != 3 || !strings.Contains(cm.GetStateReason(), "circuit breaker") {
		t.Errorf("tasks campaign: %s, %d failures, %q; want stopped by the breaker after 3", cm.GetState(), cm.GetFailures(), cm.GetStateReason())
	}
	nodes := byNode(cm)
	for name, want := range map[string]struct {
		saying   string
		cordoned bool
	}{
		"e2e-f-fail":  {"task failed with exit code 3", true},
		"e2e-f-slow":  {"timed out after 2s", true},
		"e2e-f-nok8s": {`no Kubernetes Node "e2e-f-nok8s"`, false},
	} {
		n := nodes[name]
		if n.GetStep() != maintv1.NodeStep_NODE_STEP_FAILED || !strings.Contains(n.GetError(), want.saying) || n.GetCordonedByCampaign() != want.cordoned {
			t.Errorf("%s: %s, cordoned by the campaign %v, error %q; want failed saying %q, cordoned %v", name, n.GetStep(), n.GetCordonedByCampaign(), n.GetError(), want.saying, want.cordoned)
		}
	}
	if out := c.mustBudctl(t, "maintenance", "get", tasksID); !strings.Contains(out, "firmware flash failed") && !strings.Contains(out, "exit code 3") {
		t.Errorf("maintenance get does not show why e2e-f-fail failed:\n%s", out)
	}
	stdout, stderr, err := c.budctl("maintenance", "abort", tasksID)
	if err != nil {
		t.Fatalf("abort: %v\n%s%s", err, stdout, stderr)
	}
	if all := stdout + stderr; !strings.Contains(all, "e2e-f-fail") || !strings.Contains(all, "e2e-f-slow") {
		t.Errorf("abort does not list the failed nodes it leaves cordoned:\n%s", all)
	}
	cm = settled(tasksID)
	for _, name := range []string{"e2e-f-fail", "e2e-f-slow"} {
		if !cordoned(name) {
			t.Errorf("%s is not cordoned after the abort; a failed node stays cordoned", name)
		}
	}

	// Reboot: the agent never came back.
	cm = settled(rebootID)
	n := byNode(cm)["e2e-f-gone"]
	if cm.GetFailures() != 1 || n.GetStep() != maintv1.NodeStep_NODE_STEP_FAILED || !strings.Contains(n.GetError(), "not back with a new boot id within 5s") || !cordoned("e2e-f-gone") {
		t.Errorf("reboot campaign: %s, %d failures; node %s %q, cordoned %v; want failed at the reboot timeout, left cordoned", cm.GetState(), cm.GetFailures(), n.GetStep(), n.GetError(), cordoned("e2e-f-gone"))
	}

	// Drain: resumed across the SIGKILL and done once the budget went.
	cm = settled(drainID)
	n = byNode(cm)["e2e-f-pdb"]
	if cm.GetState() != maintv1.CampaignState_CAMPAIGN_STATE_COMPLETED || n.GetStep() != maintv1.NodeStep_NODE_STEP_DONE || cordoned("e2e-f-pdb") {
		t.Errorf("drain campaign: %s; node %s %q, cordoned %v; want done and uncordoned", cm.GetState(), n.GetStep(), n.GetError(), cordoned("e2e-f-pdb"))
	}
	b, _ := os.ReadFile(runs)
	for name, want := range map[string]int{"e2e-f-fail": 1, "e2e-f-slow": 1, "e2e-f-nok8s": 0, "e2e-f-gone": 1, "e2e-f-pdb": 1} {
		if k := strings.Count(string(b), name+"\n"); k != want {
			t.Errorf("the task ran %d times on %s, want %d:\n%s", k, name, want, b)
		}
	}

	// Bad input, refused, nothing stored.
	var before maintv1.ListCampaignsResponse
	if err := c.budctlJSON(&before, "maintenance", "list"); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.sh")
	if err := os.WriteFile(big, []byte(strings.Repeat("# padding\n", maintenance.MaxTaskBytes/10+1)), 0o600); err != nil {
		t.Fatal(err)
	}
	cp.Stop()
	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"--selector", "pool=drain", "--max-unavailable", "1", "--task", big}, fmt.Sprintf("the limit is %d", maintenance.MaxTaskBytes)},
		{[]string{"--selector", "pool=drain", "--max-unavailable", "1", "--task", task}, "check that the cluster's API server is reachable"},
	} {
		stdout, stderr, err := c.budctl(append([]string{"maintenance", "start"}, bad.args...)...)
		if err == nil || !strings.Contains(stderr, bad.want) || stdout != "" {
			t.Errorf("maintenance start %v: %v\nstdout: %s\nstderr: %s\nwant an error saying %q", bad.args, err, stdout, stderr, bad.want)
		}
	}
	var after maintv1.ListCampaignsResponse
	if err := c.budctlJSON(&after, "maintenance", "list"); err != nil || len(after.GetCampaigns()) != len(before.GetCampaigns()) {
		t.Errorf("campaigns after refused starts: %d, was %d (%v)", len(after.GetCampaigns()), len(before.GetCampaigns()), err)
	}
}

// agentHost names the agent with node id id.
func agentHost(agents map[string]*agent, id string) string {
	for h, a := range agents {
		if a.nodeID == id {
			return h
		}
	}
	return id
}

// refusedEvictions is how many evictions the API server has answered with
// 429 (a PodDisruptionBudget's refusal), read from its own request metric.
func refusedEvictions(t testing.TB, cp *kubetest.ControlPlane) (int, error) {
	raw, err := cp.Client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(t.Context())
	if err != nil {
		return 0, err
	}
	n := 0
	for _, line := range strings.Split(string(raw), "\n") {
		if !strings.HasPrefix(line, "apiserver_request_total{") || !strings.Contains(line, `subresource="eviction"`) || !strings.Contains(line, `code="429"`) {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("metric line %q: %w", line, err)
		}
		n += int(v)
	}
	return n, nil
}
