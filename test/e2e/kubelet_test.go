package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bud-ecosystem/budfleet/command"
	"github.com/bud-ecosystem/budfleet/internal/kubetest"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

// TestKubeletJoin, with the real controller, agent and budctl, a real
// kubelet v1.37.2, Debian's containerd, runc and CNI plugins and the test
// control plane signing CSRs: 'budctl nodes join-cluster' queues the
// join, the controller is SIGKILLed while the agent runs it and started
// again, and 'nodes get' follows the phases to ready; the Node carries the
// labels and taint asked for; joining again makes no new CSR. These
// binaries have no artifact store yet, so the node has the kubelet at its
// place already and the join uses it. Root only; one kubelet per machine
// (kubetest.LockKubelet), so it does not run in parallel.
func TestKubeletJoin(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a real kubelet needs root (network links, mounts, cgroups)")
	}
	kubetest.LockKubelet(t, 10*time.Minute)
	if out, err := exec.Command(filepath.Join(repoRoot, "scripts", "ensure-kubelet-deps.sh")).CombinedOutput(); err != nil {
		t.Fatalf("scripts/ensure-kubelet-deps.sh: %v: %s", err, out)
	}
	cp := kubetest.Start(t, kubetest.WithControllerManager())
	kubetest.AddNodeLink(t)
	c := startController(t)
	ctx := t.Context()
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, cp.Kubeconfig, 0o600); err != nil {
		t.Fatal(err)
	}
	c.mustBudctl(t, "clusters", "add", "k1", "--kubeconfig", kubeconfig)

	const host = "e2e-kubelet-1"
	a := joinAgent(t, c, c.createToken(t), host)
	root := t.TempDir()
	kubelet := filepath.Join(root, "usr/local/bin/kubelet")
	if err := os.MkdirAll(filepath.Dir(kubelet), 0o755); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(cp.BinDir, "kubelet")); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(kubelet, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg, err := os.ReadFile(a.configPath)
	if err != nil {
		t.Fatal(err)
	}
	// A build machine's disk and memory are not a node's: low eviction
	// thresholds; no iptables chains of the kubelet's own on this host.
	cfg = append(cfg, fmt.Sprintf(`kubelet:
  root: %s
  node_ip: %s
  supervise: agent
  configuration:
    failSwapOn: false
    makeIPTablesUtilChains: false
    evictionHard: {memory.available: 1Mi, nodefs.available: 1%%, imagefs.available: 1%%, nodefs.inodesFree: 1%%}
`, root, kubetest.NodeIP)...)
	if err := os.WriteFile(a.configPath, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	a.start(t)
	t.Cleanup(func() {
		if a.proc != nil && !a.proc.exited() {
			a.stop(t) // the agent stops the kubelet and containerd first
		}
		kubetest.CleanupNode(t, root)
		if t.Failed() {
			for _, f := range []string{"kubelet.log", "containerd.log"} {
				b, _ := os.ReadFile(filepath.Join(root, "var/log/budfleet", f))
				t.Logf("%s:\n%s", f, tail(string(b), 8<<10))
			}
		}
	})
	a.waitReady(t)

	began := time.Now()
	out := c.mustBudctl(t, "nodes", "join-cluster", a.nodeID, "--cluster", "k1", "--kubelet-version", kubetest.Version,
		"--label", "budfleet.io/pool=e2e", "--taint", "dedicated=e2e:NoSchedule")
	t.Logf("budctl nodes join-cluster:\n%s", out)
	for _, want := range []string{"Kubernetes Node " + host + " in cluster k1", "Kubelet:", kubetest.Version, "budfleet.io/pool=e2e", "dedicated=e2e:NoSchedule", "none: the node uses what it has"} {
		if !strings.Contains(out, want) {
			t.Errorf("join-cluster output lacks %q", want)
		}
	}
	joinPhase := func() *fleetv1.Node {
		n, err := c.getNode(a.nodeID)
		if err != nil {
			return nil
		}
		return n
	}
	// The controller dies while the agent joins, and comes back.
	eventually(t, 30*time.Second, func() error {
		if p := joinPhase().GetKubeletJoin().GetPhase(); p == "queued" || p == "" {
			return fmt.Errorf("join phase %q", p)
		}
		return nil
	})
	c.kill(t)
	time.Sleep(500 * time.Millisecond)
	c.restart(t)
	var seen []string
	eventually(t, 3*time.Minute, func() error {
		j := joinPhase().GetKubeletJoin()
		if len(seen) == 0 || seen[len(seen)-1] != j.GetPhase() {
			seen = append(seen, j.GetPhase())
		}
		switch j.GetPhase() {
		case command.JoinReady:
			return nil
		case command.JoinFailed:
			t.Fatalf("join failed: %s", j.GetReason())
		}
		return fmt.Errorf("join phase %q (%s)", j.GetPhase(), j.GetReason())
	})
	t.Logf("join-cluster to 'nodes get' ready across a controller SIGKILL: %v; phases seen after the restart %v", time.Since(began).Round(time.Millisecond), seen)
	shown := c.mustBudctl(t, "nodes", "get", a.nodeID)
	t.Logf("budctl nodes get:\n%s", shown)
	if !strings.Contains(shown, "Kubelet join:") || !strings.Contains(shown, "ready") || !strings.Contains(shown, "Kubernetes Node:") {
		t.Errorf("nodes get:\n%s", shown)
	}
	for _, secret := range []string{"ca_pem", "BEGIN CERTIFICATE", `"token"`} {
		if cmds := c.mustBudctl(t, "commands", "list", "--node", a.nodeID, "-o", "json"); strings.Contains(cmds, secret) {
			t.Errorf("commands list shows %q", secret)
		}
	}

	kn, err := cp.Client.CoreV1().Nodes().Get(ctx, host, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if kn.Labels["budfleet.io/pool"] != "e2e" {
		t.Errorf("Node labels %v", kn.Labels)
	}
	tainted := false
	for _, tt := range kn.Spec.Taints {
		if tt.Key == "dedicated" && tt.Value == "e2e" && tt.Effect == corev1.TaintEffectNoSchedule {
			tainted = true
		}
	}
	if !tainted {
		t.Errorf("Node taints %v", kn.Spec.Taints)
	}

	// Joining again: left alone, no new CSR.
	first := joinPhase().GetKubeletJoin().GetCommandId()
	c.mustBudctl(t, "nodes", "join-cluster", a.nodeID, "--cluster", "k1")
	eventually(t, time.Minute, func() error {
		if j := joinPhase().GetKubeletJoin(); j.GetCommandId() == first || j.GetPhase() != command.JoinReady {
			return fmt.Errorf("second join: %v", j)
		}
		return nil
	})
	csrs, err := cp.Client.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(csrs.Items) != 1 {
		t.Errorf("%d CSRs after two joins, want 1", len(csrs.Items))
	}
}
