package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/internal/kubetest"
	maintv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/maint/v1"
)

// campaignLeader says which controller's log says it leads the campaigns
// now (the last "leading"/"no longer leading" line of each).
func campaignLeader(cs []*controller) *controller {
	for _, c := range cs {
		lines := strings.Split(readLog(c.logPath), "\n")
		for i := len(lines) - 1; i >= 0; i-- {
			l := lines[i]
			if !strings.Contains(l, `"singleton":"campaigns"`) {
				continue
			}
			if strings.Contains(l, `"msg":"leading"`) && (c.proc == nil || !c.proc.exited()) {
				return c
			}
			break
		}
	}
	return nil
}

// Two controllers on etcd run one campaign: SIGKILL the leader while a task
// runs, the other takes the campaign over and finishes it, max-unavailable
// holds throughout (as the Kubernetes Nodes' cordons show) and no task runs
// twice.
func TestEtcdCampaignLeaderFailover(t *testing.T) {
	cp := kubetest.Start(t, kubetest.WithKwok())
	f := startFleetOnEtcd(t, 3, 2)
	cs := f.controllers
	c0 := cs[0]
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, cp.Kubeconfig, 0o600); err != nil {
		t.Fatal(err)
	}
	c0.mustBudctl(t, "clusters", "add", "dc1", "--kubeconfig", kubeconfig)
	token := c0.createToken(t, "--label", "pool=gpu")
	hosts := []string{"lf-a", "lf-b", "lf-c", "lf-d", "lf-e"}
	var agents []*agent
	for _, h := range hosts {
		cp.AddKwokNode(h, nil)
		a := joinAgent(t, c0, token, h)
		a.start(t)
		agents = append(agents, a)
	}
	for _, c := range cs {
		if err := poll(30*time.Second, func() error { return allReady(c, agents) }); err != nil {
			t.Fatal(err)
		}
	}
	nw := watchNodes(t, cp, nil)

	runs := filepath.Join(dir, "runs")
	task := filepath.Join(dir, "task.sh")
	if err := os.WriteFile(task, []byte(fmt.Sprintf("echo \"$BUD_NODE_NAME\" >> %s\nsleep 2\necho done\n", runs)), 0o600); err != nil {
		t.Fatal(err)
	}
	var leader *controller
	eventually(t, 20*time.Second, func() error {
		if leader = campaignLeader(cs); leader == nil {
			return fmt.Errorf("no controller leads the campaigns")
		}
		return nil
	})
	// Started through the controller that does not lead.
	other := cs[0]
	if other == leader {
		other = cs[1]
	}
	id := strings.TrimSpace(other.mustBudctl(t, "maintenance", "start", "--selector", "pool=gpu", "--max-unavailable", "2", "--task", task,
		"--drain-timeout", "5s", "--name", "leader-failover"))
	eventually(t, time.Minute, func() error {
		b, _ := os.ReadFile(runs)
		if len(strings.Fields(string(b))) == 0 {
			return fmt.Errorf("no task has started")
		}
		return nil
	})
	killed := time.Now()
	leader.kill(t)
	eventually(t, 30*time.Second, func() error {
		if l := campaignLeader(cs); l != other {
			return fmt.Errorf("the surviving controller does not lead yet")
		}
		return nil
	})
	t.Logf("campaign leadership moved %s after the SIGKILL", time.Since(killed).Round(time.Millisecond))
	eventually(t, 3*time.Minute, func() error {
		cm, err := other.getCampaign(id)
		if err != nil {
			return err
		}
		if cm.GetState() != maintv1.CampaignState_CAMPAIGN_STATE_COMPLETED {
			return fmt.Errorf("campaign %s", cm.GetState())
		}
		return nil
	})
	cm, err := other.getCampaign(id)
	if err != nil {
		t.Fatal(err)
	}
	if cm.GetFailures() != 0 {
		t.Errorf("campaign finished with %d failures: %v", cm.GetFailures(), cm)
	}
	events, most := nw.seen()
	t.Logf("cordons: %v; most at once %d", events, most)
	if most > 2 {
		t.Errorf("%d nodes unschedulable at once, max-unavailable is 2", most)
	}
	b, _ := os.ReadFile(runs)
	for _, h := range hosts {
		if k := strings.Count(string(b), h+"\n"); k != 1 {
			t.Errorf("the task ran %d times on %s, want once:\n%s", k, h, b)
		}
	}
}
