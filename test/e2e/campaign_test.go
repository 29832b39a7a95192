package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/bud-ecosystem/budfleet/internal/kubetest"
	maintv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/maint/v1"
)

// nodeWatch follows the Node objects and keeps what it saw: each change of
// spec.unschedulable in order, and the most Nodes unschedulable at once.
type nodeWatch struct {
	mu         sync.Mutex
	unsched    map[string]bool
	events     []string
	maxAtOnce  int
	rackOf     func(node string) string
	maxPerRack map[string]int
}

// watchNodes starts the watch; rackOf (nil: one rack) names each Node's
// failure domain for the per-rack maxima.
func watchNodes(t testing.TB, cp *kubetest.ControlPlane, rackOf func(node string) string) *nodeWatch {
	t.Helper()
	if rackOf == nil {
		rackOf = func(string) string { return "" }
	}
	w := &nodeWatch{unsched: map[string]bool{}, rackOf: rackOf, maxPerRack: map[string]int{}}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	wi, err := cp.Client.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer wi.Stop()
		for ev := range wi.ResultChan() {
			n, ok := ev.Object.(*corev1.Node)
			if !ok || ev.Type == watch.Deleted {
				continue
			}
			w.mu.Lock()
			if was := w.unsched[n.Name]; was != n.Spec.Unschedulable {
				w.unsched[n.Name] = n.Spec.Unschedulable
				word := "uncordon"
				if n.Spec.Unschedulable {
					word = "cordon"
				}
				w.events = append(w.events, word+" "+n.Name)
				k, racks := 0, map[string]int{}
				for name, v := range w.unsched {
					if v {
						k++
						racks[w.rackOf(name)]++
					}
				}
				w.maxAtOnce = max(w.maxAtOnce, k)
				for r, k := range racks {
					w.maxPerRack[r] = max(w.maxPerRack[r], k)
				}
			}
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *nodeWatch) seen() ([]string, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.events), w.maxAtOnce
}

// cordoned returns the Nodes unschedulable now, as the watch saw them.
func (w *nodeWatch) cordoned() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for name, v := range w.unsched {
		if v {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// runApp runs a one-pod Deployment named name on node (its pods name the
// node: there is no scheduler), with an emptyDir volume.
func runApp(t testing.TB, cp *kubetest.ControlPlane, ns, name, node string) {
	t.Helper()
	if _, err := cp.Client.AppsV1().Deployments(ns).Create(t.Context(), appDeployment(ns, name, node), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, func() error {
		pods, err := cp.Client.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{LabelSelector: "app=" + name})
		if err != nil {
			return err
		}
		for _, p := range pods.Items {
			if p.Status.Phase == corev1.PodRunning {
				return nil
			}
		}
		return fmt.Errorf("no pod of %s running yet", name)
	})
}

// appDeployment is runApp's Deployment: one pod, bound to node by nodeName.
func appDeployment(ns, name, node string) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	one := int32(1)
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: &one,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					NodeName:                      node,
					Containers:                    []corev1.Container{{Name: name, Image: "registry.invalid/" + name + ":1", VolumeMounts: []corev1.VolumeMount{{Name: "scratch", MountPath: "/scratch"}}}},
					Volumes:                       []corev1.Volume{{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
					TerminationGracePeriodSeconds: new(int64(1)),
				},
			},
		},
	}
	return d
}

// runDaemonSet makes a DaemonSet for every Node and, standing in for the
// scheduler kubetest does not run, binds each of its pods to the Node the
// DaemonSet controller meant it for; it returns the pods' UIDs by Node once
// all are Running.
func runDaemonSet(t testing.TB, cp *kubetest.ControlPlane, ns, name string, nodes int) map[string]string {
	t.Helper()
	labels := map[string]string{"app": name}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Containers:                    []corev1.Container{{Name: name, Image: "registry.invalid/" + name + ":1"}},
					TerminationGracePeriodSeconds: new(int64(1)),
				},
			},
		},
	}
	if _, err := cp.Client.AppsV1().DaemonSets(ns).Create(t.Context(), ds, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	uids := map[string]string{}
	eventually(t, time.Minute, func() error {
		pods, err := cp.Client.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{LabelSelector: "app=" + name})
		if err != nil {
			return err
		}
		running := 0
		for _, p := range pods.Items {
			if p.Spec.NodeName == "" {
				node := daemonPodNode(p)
				if node == "" {
					return fmt.Errorf("DaemonSet pod %s names no Node in its affinity", p.Name)
				}
				if err := cp.Client.CoreV1().Pods(ns).Bind(t.Context(), &corev1.Binding{
					ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: ns},
					Target:     corev1.ObjectReference{Kind: "Node", Name: node},
				}, metav1.CreateOptions{}); err != nil {
					return err
				}
				continue
			}
			if p.Status.Phase == corev1.PodRunning {
				running++
				uids[p.Spec.NodeName] = string(p.UID)
			}
		}
		if running != nodes {
			return fmt.Errorf("%d of %d DaemonSet pods running", running, nodes)
		}
		return nil
	})
	return uids
}

// daemonPodNode is the Node a DaemonSet pod is for: the DaemonSet
// controller pins it with a required node affinity on metadata.name.
func daemonPodNode(p corev1.Pod) string {
	if p.Spec.Affinity == nil || p.Spec.Affinity.NodeAffinity == nil || p.Spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
		return ""
	}
	for _, term := range p.Spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
		for _, f := range term.MatchFields {
			if f.Key == "metadata.name" && len(f.Values) == 1 {
				return f.Values[0]
			}
		}
	}
	return ""
}

func (c *controller) getCampaign(id string) (*maintv1.Campaign, error) {
	var resp maintv1.GetCampaignResponse
	err := c.budctlJSON(&resp, "maintenance", "get", id)
	return resp.GetCampaign(), err
}

// TestCampaign, with the real controller, agents and budctl and a real
// Kubernetes control plane (kubetest with kwok): a campaign over three
// nodes with max-unavailable 1 runs its task on each node once, cordoning
// and uncordoning the Nodes in order and never two at once, across a
// SIGKILL of the controller while the first task runs (the agent is back on
// the new controller before the task ends). The third node's
// pod is held by a PodDisruptionBudget: its drain fails at its timeout,
// naming the budget, and the node is uncordoned and counted failed; with
// --max-failures 2 the campaign completes. Every step is in the audit
// trail. A DaemonSet's pods stay on their nodes through the drains. Bad
// input is refused and stores nothing.
func TestCampaign(t *testing.T) {
	t.Parallel()
	cp := kubetest.Start(t, kubetest.WithControllerManager(), kubetest.WithKwok())
	c := startController(t)
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, cp.Kubeconfig, 0o600); err != nil {
		t.Fatal(err)
	}
	c.mustBudctl(t, "clusters", "add", "dc1", "--kubeconfig", kubeconfig)

	const ns = "e2e"
	cp.CreateNamespace(ns)
	token := c.createToken(t, "--label", "pool=gpu")
	hosts := []string{"e2e-m-a", "e2e-m-b", "e2e-m-c"}
	agents := map[string]*agent{}
	for _, h := range hosts {
		cp.AddKwokNode(h, nil)
		a := joinAgent(t, c, token, h)
		a.start(t)
		agents[h] = a
	}
	for _, a := range agents {
		a.waitReady(t)
	}
	runApp(t, cp, ns, "web-a", hosts[0])
	runApp(t, cp, ns, "web-b", hosts[1])
	runDB(t, cp, ns, hosts[2]) // under a PodDisruptionBudget that allows no eviction
	daemons := runDaemonSet(t, cp, ns, "node-exporter", len(hosts))
	nw := watchNodes(t, cp, nil)

	// The task notes each run and waits for the release file, so the
	// controller can be killed while it runs.
	runs, release := filepath.Join(dir, "runs"), filepath.Join(dir, "release")
	task := filepath.Join(dir, "task.sh")
	if err := os.WriteFile(task, []byte(fmt.Sprintf("echo \"$BUD_NODE_NAME $BUD_NODE_ID $BUD_CAMPAIGN_ID\" >> %s\nwhile [ ! -e %s ]; do sleep 0.05; done\necho done\n", runs, release)), 0o600); err != nil {
		t.Fatal(err)
	}

	// Bad input: refused, nothing stored.
	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"--selector", "zone=x", "--max-unavailable", "1", "--task", task}, "matches no node; no node has the label zone"},
		{[]string{"--selector", "pool=gpu", "--max-unavailable", "0", "--task", task}, "max-unavailable must be at least 1"},
		{[]string{"--selector", "pool=gpu", "--max-unavailable", "1", "--task", task, "--window", "Sat 02:00-02:00"}, "never opens"},
		{[]string{"--selector", "pool=gpu", "--max-unavailable", "1", "--task", filepath.Join(dir, "missing.sh")}, "no such file"},
	} {
		stdout, stderr, err := c.budctl(append([]string{"maintenance", "start"}, bad.args...)...)
		if err == nil || !strings.Contains(stderr, bad.want) || stdout != "" {
			t.Errorf("maintenance start %v: %v\nstdout: %s\nstderr: %s\nwant an error saying %q", bad.args, err, stdout, stderr, bad.want)
		}
	}
	var list maintv1.ListCampaignsResponse
	if err := c.budctlJSON(&list, "maintenance", "list"); err != nil || len(list.GetCampaigns()) != 0 {
		t.Fatalf("campaigns after refused starts: %v, %v", list.GetCampaigns(), err)
	}

	out := c.mustBudctl(t, "maintenance", "start", "--selector", "pool=gpu", "--max-unavailable", "1", "--task", task,
		"--drain-timeout", "3s", "--drain-attempts", "1", "--max-failures", "2", "--name", "e2e")
	id := strings.TrimSpace(out)
	if strings.Contains(id, "\n") || len(id) != 36 {
		t.Fatalf("maintenance start printed %q; want the campaign id alone", out)
	}

	// The first node's task runs: kill the controller under it.
	eventually(t, time.Minute, func() error {
		b, _ := os.ReadFile(runs)
		if !strings.Contains(string(b), hosts[0]+" ") {
			return fmt.Errorf("the task has not started on %s: %q", hosts[0], b)
		}
		return nil
	})
	c.kill(t)
	c.restart(t)
	// The agent is back on the new controller while its task still runs.
	eventually(t, 30*time.Second, func() error {
		n, err := c.getNode(agents[hosts[0]].nodeID)
		if err != nil || !n.GetConnected() {
			return fmt.Errorf("%s not connected to the new controller during its task (%v)", hosts[0], err)
		}
		return nil
	})
	if b, _ := os.ReadFile(runs); strings.Count(string(b), hosts[0]+" ") != 1 {
		t.Fatalf("the task is not running once on %s:\n%s", hosts[0], b)
	}
	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	// get -w follows it to the end; it ends non-zero: a node failed.
	stdout, stderr, err := runCmd(3*time.Minute, filepath.Join(binDir, "budctl"), "--config", c.adminConfig, "maintenance", "get", id, "-w")
	t.Logf("budctl maintenance get -w (%v):\n%s%s", err, tail(stdout, 4096), stderr)
	if err == nil || !strings.Contains(stderr, "ended completed") {
		t.Errorf("get -w: %v, stderr %q; want a non-zero exit naming the end", err, stderr)
	}
	if !strings.Contains(stdout, "State:") || !strings.Contains(stdout, "KUBERNETES NODE") {
		t.Errorf("get -w printed no campaign view:\n%s", stdout)
	}

	cm, err := c.getCampaign(id)
	if err != nil {
		t.Fatal(err)
	}
	if cm.GetState() != maintv1.CampaignState_CAMPAIGN_STATE_COMPLETED || cm.GetFailures() != 1 {
		t.Fatalf("campaign %s with %d failures: %v", cm.GetState(), cm.GetFailures(), cm)
	}
	steps := map[string]*maintv1.NodeProgress{}
	for _, n := range cm.GetNodes() {
		steps[n.GetK8SNode()] = n
	}
	for _, h := range hosts[:2] {
		if n := steps[h]; n.GetStep() != maintv1.NodeStep_NODE_STEP_DONE {
			t.Errorf("%s: %s %s", h, n.GetStep(), n.GetError())
		}
	}
	if n := steps[hosts[2]]; n.GetStep() != maintv1.NodeStep_NODE_STEP_FAILED || !strings.Contains(n.GetError(), "db-pdb") || n.GetCordonedByCampaign() {
		t.Errorf("%s: %s, cordoned %v, error %q; want failed by the PDB and uncordoned", hosts[2], n.GetStep(), n.GetCordonedByCampaign(), n.GetError())
	}

	// The task ran once on each node that drained, never on the third.
	b, _ := os.ReadFile(runs)
	for _, h := range hosts {
		want := 1
		if h == hosts[2] {
			want = 0
		}
		if k := strings.Count(string(b), h+" "); k != want {
			t.Errorf("the task ran %d times on %s, want %d:\n%s", k, h, want, b)
		}
	}
	if !strings.Contains(string(b), agents[hosts[0]].nodeID+" "+id) {
		t.Errorf("the task's environment lacks the node or campaign id:\n%s", b)
	}

	// The Nodes were cordoned and uncordoned in order, never two at once,
	// and nothing is left cordoned.
	events, most := nw.seen()
	t.Logf("Node events: %v", events)
	want := []string{"cordon " + hosts[0], "uncordon " + hosts[0], "cordon " + hosts[1], "uncordon " + hosts[1], "cordon " + hosts[2], "uncordon " + hosts[2]}
	if strings.Join(events, ",") != strings.Join(want, ",") {
		t.Errorf("Node events %v, want %v", events, want)
	}
	if most > 1 {
		t.Errorf("%d Nodes unschedulable at once; max-unavailable is 1", most)
	}
	for _, h := range hosts {
		n, err := cp.Client.CoreV1().Nodes().Get(t.Context(), h, metav1.GetOptions{})
		if err != nil || n.Spec.Unschedulable {
			t.Errorf("Node %s at the end: unschedulable %v, %v", h, n.Spec.Unschedulable, err)
		}
	}

	// The DaemonSet's pods stayed through the drains.
	pods, err := cp.Client.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{LabelSelector: "app=node-exporter"})
	if err != nil {
		t.Fatal(err)
	}
	after := map[string]string{}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			after[p.Spec.NodeName] = string(p.UID)
		}
	}
	for node, uid := range daemons {
		if after[node] != uid {
			t.Errorf("the DaemonSet pod on %s was %s before the campaign and %q after; DaemonSet pods stay", node, uid, after[node])
		}
	}

	// Every step is in the audit trail, with the operator.
	audit := readLog(filepath.Join(c.dataDir, "audit.log"))
	for _, action := range []string{"maintenance.start", "maintenance.campaign.started", "maintenance.node.cordon", "maintenance.node.drain",
		"maintenance.node.task", "maintenance.node.verify", "maintenance.node.uncordon", "maintenance.node.failed", "maintenance.campaign.completed"} {
		if !strings.Contains(audit, `"action":"`+action+`"`) {
			t.Errorf("the audit trail has no %s", action)
		}
	}
	if !strings.Contains(audit, `"operator":"admin"`) {
		t.Errorf("the audit trail names no operator")
	}
}

// TestCampaignReboot: a campaign with --reboot over one node whose agent's
// reboot command stands in for a reboot (a new boot id, the agent stopped;
// the test starts it again as systemd would). The controller is SIGKILLed
// while it waits for the node to come back; the new controller sees the new
// boot id, checks the node and uncordons it. The task and the reboot ran
// once each.
func TestCampaignReboot(t *testing.T) {
	t.Parallel()
	cp := kubetest.Start(t, kubetest.WithKwok())
	c := startController(t)
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, cp.Kubeconfig, 0o600); err != nil {
		t.Fatal(err)
	}
	c.mustBudctl(t, "clusters", "add", "dc1", "--kubeconfig", kubeconfig)
	const host = "e2e-reboot"
	cp.AddKwokNode(host, nil)
	a := joinAgent(t, c, c.createToken(t, "--label", "pool=reboot"), host)

	bootIDFile, reboots, runs := filepath.Join(dir, "boot_id"), filepath.Join(dir, "reboots"), filepath.Join(dir, "runs")
	const boot1, boot2 = "0c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5", "f5e4d3c2-b1a0-4987-8654-3210fedcba98"
	if err := os.WriteFile(bootIDFile, []byte(boot1+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rebootScript := filepath.Join(dir, "reboot.sh")
	if err := os.WriteFile(rebootScript, []byte(fmt.Sprintf("#!/bin/sh\necho reboot >> %s\necho %s > %s\nkill -TERM $PPID\n", reboots, boot2, bootIDFile)), 0o700); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(a.configPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "boot_id_file: %s\nmaintenance:\n  reboot_command: [/bin/sh, %s]\n", bootIDFile, rebootScript)
	f.Close()
	a.start(t)
	a.waitReady(t)
	task := filepath.Join(dir, "task.sh")
	if err := os.WriteFile(task, []byte(fmt.Sprintf("echo run >> %s\n", runs)), 0o600); err != nil {
		t.Fatal(err)
	}

	id := strings.TrimSpace(c.mustBudctl(t, "maintenance", "start", "--selector", "pool=reboot", "--max-unavailable", "1", "--task", task, "--reboot"))
	// The reboot takes the agent down; the controller dies during the wait.
	select {
	case <-a.proc.done:
	case <-time.After(time.Minute):
		t.Fatalf("the agent was not rebooted:\n%v", c.mustBudctl(t, "maintenance", "get", id))
	}
	cm, err := c.getCampaign(id)
	if err != nil {
		t.Fatal(err)
	}
	if n := cm.GetNodes()[0]; n.GetStep() != maintv1.NodeStep_NODE_STEP_REBOOT || n.GetBootIdBefore() != boot1 {
		t.Fatalf("while rebooting: %v", n)
	}
	c.kill(t)
	c.restart(t)
	a.start(t)

	eventually(t, 2*time.Minute, func() error {
		if cm, err = c.getCampaign(id); err != nil {
			return err
		}
		if cm.GetState() != maintv1.CampaignState_CAMPAIGN_STATE_COMPLETED {
			return fmt.Errorf("campaign %s, node %s", cm.GetState(), cm.GetNodes()[0].GetStep())
		}
		return nil
	})
	n := cm.GetNodes()[0]
	if n.GetStep() != maintv1.NodeStep_NODE_STEP_DONE || n.GetBootIdBefore() != boot1 || n.GetBootIdAfter() != boot2 {
		t.Errorf("node at the end: %v", n)
	}
	for file, what := range map[string]string{runs: "run", reboots: "reboot"} {
		if b, _ := os.ReadFile(file); strings.Count(string(b), what) != 1 {
			t.Errorf("%s %d times, want once", what, strings.Count(string(b), what))
		}
	}
	if kn, err := cp.Client.CoreV1().Nodes().Get(t.Context(), host, metav1.GetOptions{}); err != nil || kn.Spec.Unschedulable {
		t.Errorf("Node at the end: unschedulable %v, %v", kn.Spec.Unschedulable, err)
	}
	audit := readLog(filepath.Join(c.dataDir, "audit.log"))
	if !strings.Contains(audit, `"action":"maintenance.node.reboot"`) || !strings.Contains(audit, boot2) {
		t.Errorf("the audit trail lacks the reboot and its new boot id")
	}
}
