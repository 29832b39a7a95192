package e2e

import (
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bud-ecosystem/budfleet/agent/kubelet"
	"github.com/bud-ecosystem/budfleet/agent/kubelet/kubelettest"
	"github.com/bud-ecosystem/budfleet/command"
	"github.com/bud-ecosystem/budfleet/internal/kubetest"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

// TestKubeletJoin, with the real controller, agent and budctl, a real
// kubelet v1.37.2, Debian's containerd, runc and CNI plugins and the test
// control plane signing CSRs: 'budctl nodes join-cluster' queues the
// join, the controller is SIGKILLed while the agent runs it and started
// again, and 'nodes get' follows the phases to ready; the Node carries the
// labels and taint asked for; joining again makes no new CSR. The node has
// no kubelet of its own: the kubelet binary, the sandbox image and a
// busybox image come in a signed offline bundle (budctl bundle create,
// verify, push) into the controller's artifact store, the agent installs
// them from there, and a pod of that busybox image
// (imagePullPolicy Never) runs and its log reads back. Root only; one kubelet per machine
// (kubetest.LockKubelet), so it does not run in parallel.
func TestKubeletJoin(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("a real kubelet needs root (network links, mounts, cgroups): run the tests as root")
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

	// The node has no kubelet: it comes from the controller's artifact
	// store, with the sandbox (pause) image and a busybox image built by
	// hand. They arrive as an operator in an air-gapped site brings them: a
	// signed offline bundle, verified and pushed with budctl.
	bdir := t.TempDir()
	kb, err := os.ReadFile(filepath.Join(cp.BinDir, "kubelet"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bdir, "kubelet"), kb, 0o755); err != nil {
		t.Fatal(err)
	}
	kubeletDigest := fmt.Sprintf("sha256:%x", sha256.Sum256(kb))
	for _, img := range []struct {
		kubelettest.Image
		artifact string
	}{
		{kubelettest.Image{Name: kubelet.PauseImage, Binary: "/bin/busybox", Applets: []string{"sh", "sleep"},
			Cmd: []string{"/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"}}, "pause"},
		{kubelettest.Image{Name: e2eBusybox, Binary: "/bin/busybox", Applets: []string{"sh", "echo"}, Cmd: []string{"/bin/sh"}}, "busybox"},
	} {
		if err := kubelettest.BuildOCI(img.Image, filepath.Join(bdir, img.artifact+".tar")); err != nil {
			t.Fatal(err)
		}
	}
	manifest := filepath.Join(bdir, "bundle.yaml")
	if err := os.WriteFile(manifest, []byte(fmt.Sprintf(`artifacts:
  - {name: kubelet, version: %s, platform: linux/amd64, kind: binary, path: ./kubelet}
  - {name: pause, version: test, kind: image, path: ./pause.tar}
  - {name: busybox, version: test, kind: image, path: ./busybox.tar}
`, kubetest.Version)), 0o644); err != nil {
		t.Fatal(err)
	}
	key, pub, bundle := filepath.Join(bdir, "site.key"), filepath.Join(bdir, "site.pub"), filepath.Join(bdir, "site.tar")
	c.mustBudctl(t, "bundle", "keygen", "--private", key, "--public", pub)
	c.mustBudctl(t, "bundle", "create", "--manifest", manifest, "--key", key, "-o", bundle)
	c.mustBudctl(t, "bundle", "verify", bundle, "--key", pub)
	c.mustBudctl(t, "bundle", "push", bundle, "--key", pub)
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
		"--label", "budfleet.io/pool=e2e", "--taint", "dedicated=e2e:NoSchedule", "--image", "pause@test", "--image", "busybox")
	t.Logf("budctl nodes join-cluster:\n%s", out)
	for _, want := range []string{"Kubernetes Node " + host + " in cluster k1", "Kubelet:", kubetest.Version, "budfleet.io/pool=e2e", "dedicated=e2e:NoSchedule", kubeletDigest} {
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
	c.kill(t) // returns once the process is gone
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

	// The kubelet ran from the artifact store's copy.
	if b, err := os.ReadFile(filepath.Join(root, "usr/local/bin/kubelet")); err != nil {
		t.Errorf("no installed kubelet: %v", err)
	} else if d := fmt.Sprintf("sha256:%x", sha256.Sum256(b)); d != kubeletDigest {
		t.Errorf("installed kubelet is %s, the pushed artifact %s", d, kubeletDigest)
	}
	// A pod of the image from the artifact store runs; its log reads back.
	runImportedPod(t, cp, host, e2eBusybox)

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

// e2eBusybox is the busybox image the join imports from the artifact store.
const e2eBusybox = "docker.io/library/busybox:budfleet-e2e"

// runImportedPod runs a pod of image (never pulled: it must be imported)
// on node, tolerating every NoSchedule taint, waits for it to succeed and
// reads its log back.
func runImportedPod(t *testing.T, cp *kubetest.ControlPlane, node, image string) {
	t.Helper()
	ctx := t.Context()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "hello", Namespace: metav1.NamespaceDefault},
		Spec: corev1.PodSpec{
			NodeName:                      node,
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: new(int64(1)),
			Tolerations:                   []corev1.Toleration{{Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}},
			Containers: []corev1.Container{{
				Name: "hello", Image: image, ImagePullPolicy: corev1.PullNever,
				Command: []string{"/bin/sh", "-c", "echo hello from the artifact store"},
			}},
		},
	}
	if _, err := cp.Client.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Minute, func() error {
		p, err := cp.Client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase == corev1.PodFailed {
			t.Fatalf("pod failed: %+v", p.Status)
		}
		if p.Status.Phase != corev1.PodSucceeded {
			return fmt.Errorf("pod %s: %+v", p.Status.Phase, p.Status.ContainerStatuses)
		}
		return nil
	})
	b, err := cp.Client.CoreV1().Pods(pod.Namespace).GetLogs(pod.Name, &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		t.Fatalf("pod log: %v", err)
	}
	if got := strings.TrimSpace(string(b)); got != "hello from the artifact store" {
		t.Errorf("pod log %q", got)
	}
	if err := cp.Client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))}); err != nil {
		t.Error(err)
	}
}
