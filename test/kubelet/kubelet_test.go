// Package kubelet proves the kubelet join with the real parts: a real
// kubelet v1.37.2 (built by scripts/ensure-k8s.sh), Debian's containerd,
// runc and CNI plugins (scripts/ensure-kubelet-deps.sh), the test control
// plane (internal/kubetest) with kube-controller-manager approving and
// signing CSRs, the controller's cluster side (controller/kube: the
// bootstrap token and RBAC) and the agent's node side (agent/kubelet),
// the binaries and images served from a directory by digest in place of
// the artifact store.
//
// Serial by design: one kubelet per machine (see host_test.go).
package kubelet

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubeletv1beta1 "k8s.io/kubelet/config/v1beta1"

	"github.com/bud-ecosystem/budfleet/agent/kubelet"
	"github.com/bud-ecosystem/budfleet/agent/kubelet/kubelettest"
	"github.com/bud-ecosystem/budfleet/command"
	"github.com/bud-ecosystem/budfleet/controller/kube"
	"github.com/bud-ecosystem/budfleet/controller/store/bolt"
	"github.com/bud-ecosystem/budfleet/internal/kubetest"
)

const (
	busyboxImage = "docker.io/library/busybox:budfleet-test"
	clusterName  = "k1"
)

func logger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// tune is the KubeletConfiguration of a test kubelet: low eviction
// thresholds (a build machine's disk is not a node's), no iptables chains
// of its own, swap tolerated.
func tune(c *kubeletv1beta1.KubeletConfiguration) {
	f := false
	c.FailSwapOn = &f
	c.MakeIPTablesUtilChains = &f
	c.EvictionHard = map[string]string{"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%", "nodefs.inodesFree": "1%"}
	c.ImageGCHighThresholdPercent = ptr(int32(100))
	c.ImageGCLowThresholdPercent = ptr(int32(99))
}

func ptr[T any](v T) *T { return &v }

// artifacts puts the kubelet and the two images into a DirSource and
// returns the spec's artifact list.
func artifacts(t *testing.T, src *kubelettest.DirSource, binDir string) []command.JoinArtifact {
	t.Helper()
	kd, err := src.Add(filepath.Join(binDir, "kubelet"))
	if err != nil {
		t.Fatal(err)
	}
	out := []command.JoinArtifact{{Kind: command.ArtifactKubelet, Name: "kubelet", Version: kubetest.Version, Digest: kd}}
	tmp := t.TempDir()
	for _, img := range []kubelettest.Image{
		{Name: kubelet.PauseImage, Binary: "/bin/busybox", Applets: []string{"sh", "sleep"},
			// PID 1 ignores SIGTERM without a handler: trap it, so a sandbox
			// stops at once.
			Cmd: []string{"/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"}},
		{Name: busyboxImage, Binary: "/bin/busybox", Applets: []string{"sh", "echo", "sleep", "cat", "ls"}, Cmd: []string{"/bin/sh"}},
	} {
		p := filepath.Join(tmp, strings.NewReplacer("/", "_", ":", "_").Replace(img.Name)+".tar")
		if err := kubelettest.BuildOCI(img, p); err != nil {
			t.Fatal(err)
		}
		d, err := src.Add(p)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, command.JoinArtifact{Kind: command.ArtifactImage, Name: img.Name, Version: "test", Digest: d})
	}
	return out
}

func checkDeps(t *testing.T) {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(filepath.Join(root, "scripts", "ensure-kubelet-deps.sh")).CombinedOutput(); err != nil {
		t.Fatalf("scripts/ensure-kubelet-deps.sh: %v: %s", err, out)
	}
}

// specFor asks the controller side for the join of fleet node id.
func specFor(t *testing.T, ctx context.Context, m *kube.Manager, id, hostname string, arts []command.JoinArtifact) command.KubeletJoinSpec {
	t.Helper()
	j, err := m.PrepareJoin(ctx, kube.FleetNode{ID: id, Hostname: hostname}, 0)
	if err != nil {
		t.Fatalf("PrepareJoin: %v", err)
	}
	s := command.KubeletJoinSpec{
		Cluster: j.Cluster, Server: j.Server, CAPEM: string(j.CAPEM), Token: j.Token, TokenExpires: j.TokenExpires,
		NodeName: j.Node, KubeletVersion: kubetest.Version,
		Labels:    map[string]string{"nvidia.com/gpu": "true", "node.kubernetes.io/gpu": "true", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "budfleet.io/pool": "test"},
		Taints:    []string{"nvidia.com/gpu=true:NoSchedule"},
		Artifacts: arts,
	}
	// Through the command's own encoding, as the agent gets it.
	p, err := s.Params()
	if err != nil {
		t.Fatal(err)
	}
	got, err := command.ParseKubeletJoin(p)
	if err != nil {
		t.Fatalf("the spec does not pass its own check: %v", err)
	}
	return got
}

func TestRealKubeletJoin(t *testing.T) {
	requireNode(t)
	checkDeps(t)
	cp := kubetest.Start(t, kubetest.WithControllerManager())
	addNodeLink(t)
	ctx := t.Context()

	st, err := bolt.Open(filepath.Join(t.TempDir(), "controller.db"), bolt.Options{LockTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	km, err := kube.New(kube.Options{Store: st, Logger: logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := km.AddCluster(ctx, clusterName, cp.Kubeconfig, "test"); err != nil {
		t.Fatal(err)
	}

	src := kubelettest.NewDirSource(t.TempDir())
	arts := artifacts(t, src, cp.BinDir)
	root := t.TempDir()
	agentCtx, stopAgent := context.WithCancel(ctx)
	mod, err := kubelet.New(kubelet.Options{
		Root: root, Source: src, Logger: logger(t), Supervise: kubelet.SuperviseAgent,
		NodeIP: nodeIP, TuneKubeletConfig: tune, ReadyTimeout: 3 * time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	mod.Start(agentCtx)
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			stopAgent()
			// The supervisor stops the kubelet and containerd; give it the
			// grace it gives them.
			time.Sleep(500 * time.Millisecond)
		}
	}
	t.Cleanup(func() {
		stop()
		cleanupNode(t, root)
		if t.Failed() {
			for _, f := range []string{"kubelet.log", "containerd.log"} {
				b, _ := os.ReadFile(filepath.Join(root, "var/log/budfleet", f))
				if len(b) > 16<<10 {
					b = b[len(b)-16<<10:]
				}
				t.Logf("%s:\n%s", f, b)
			}
		}
	})

	spec := specFor(t, ctx, km, "node-1", "GPU-Node-1", arts)
	if spec.NodeName != "gpu-node-1" {
		t.Fatalf("node name %q, want the hostname in lower case", spec.NodeName)
	}
	var phases []string
	began := time.Now()
	res, err := mod.Join(ctx, spec, func(phase, detail string) {
		if len(phases) == 0 || phases[len(phases)-1] != phase {
			phases = append(phases, phase)
		}
	})
	took := time.Since(began)
	if err != nil {
		t.Fatalf("join: %v (phases %v)", err, phases)
	}
	t.Logf("join to Ready: %v (phases %v)", took.Round(time.Millisecond), phases)
	want := []string{command.JoinPreparing, command.JoinInstalling, command.JoinStarting, command.JoinRegistered, command.JoinReady}
	if strings.Join(phases, ",") != strings.Join(want, ",") {
		t.Errorf("phases %v, want %v", phases, want)
	}
	if res.Phase != command.JoinReady || res.Already {
		t.Errorf("result %+v", res)
	}

	t.Run("the CSR was approved and signed", func(t *testing.T) {
		csrs, err := cp.Client.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(csrs.Items) != 1 {
			t.Fatalf("%d CSRs, want 1", len(csrs.Items))
		}
		c := csrs.Items[0]
		approved := false
		for _, cond := range c.Status.Conditions {
			if cond.Type == "Approved" {
				approved = true
			}
		}
		if !approved || len(c.Status.Certificate) == 0 {
			t.Errorf("CSR %s: approved %v, certificate %d bytes", c.Name, approved, len(c.Status.Certificate))
		}
		if !strings.HasPrefix(c.Spec.Username, "system:bootstrap:") || !contains(c.Spec.Groups, kube.BootstrapGroup) {
			t.Errorf("CSR by %s %v, want a bootstrap token user in %s", c.Spec.Username, c.Spec.Groups, kube.BootstrapGroup)
		}
	})

	t.Run("the Node is Ready with the labels and taint", func(t *testing.T) {
		n, err := cp.Client.CoreV1().Nodes().Get(ctx, "gpu-node-1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range spec.Labels {
			if n.Labels[k] != v {
				t.Errorf("label %s=%q, want %q", k, n.Labels[k], v)
			}
		}
		found := false
		for _, tt := range n.Spec.Taints {
			if tt.Key == "nvidia.com/gpu" && tt.Value == "true" && tt.Effect == corev1.TaintEffectNoSchedule {
				found = true
			}
		}
		if !found {
			t.Errorf("taints %v lack nvidia.com/gpu=true:NoSchedule", n.Spec.Taints)
		}
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP && a.Address != nodeIP {
				t.Errorf("InternalIP %s, want %s", a.Address, nodeIP)
			}
		}
		if v := n.Status.NodeInfo.KubeletVersion; v != kubetest.Version {
			t.Errorf("kubelet version %s", v)
		}
	})

	t.Run("a pod from an imported image runs and its log reads back", func(t *testing.T) {
		runPod(t, ctx, cp, "gpu-node-1")
	})

	t.Run("joining again converges without a new CSR", func(t *testing.T) {
		fetched := len(src.Fetched())
		again := specFor(t, ctx, km, "node-1", "GPU-Node-1", arts)
		res, err := mod.Join(ctx, again, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !res.Already || res.Phase != command.JoinReady {
			t.Errorf("result %+v, want already joined and ready", res)
		}
		csrs, err := cp.Client.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(csrs.Items) != 1 {
			t.Errorf("%d CSRs after the second join, want 1", len(csrs.Items))
		}
		if n := len(src.Fetched()) - fetched; n != 0 {
			t.Errorf("the second join fetched %d artifacts", n)
		}
	})

	t.Run("the agent restarted: the kubelet comes back with its credentials", func(t *testing.T) {
		stop()
		mod2, err := kubelet.New(kubelet.Options{Root: root, Source: src, Logger: logger(t), Supervise: kubelet.SuperviseAgent, NodeIP: nodeIP, TuneKubeletConfig: tune})
		if err != nil {
			t.Fatal(err)
		}
		actx, cancel := context.WithCancel(ctx)
		defer func() {
			cancel()
			time.Sleep(500 * time.Millisecond)
		}()
		mod2.Start(actx)
		res, err := mod2.Join(ctx, specFor(t, ctx, km, "node-1", "GPU-Node-1", arts), nil)
		if err != nil {
			t.Fatal(err)
		}
		if res.Phase != command.JoinReady {
			t.Errorf("result %+v", res)
		}
		csrs, _ := cp.Client.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
		if len(csrs.Items) != 1 {
			t.Errorf("%d CSRs after the restart, want 1", len(csrs.Items))
		}
	})

	t.Run("a node joined to another cluster is refused", func(t *testing.T) {
		other := spec
		other.Cluster, other.Server = "k2", "https://127.0.0.1:1"
		_, err := mod.Join(ctx, other, nil)
		if !errors.Is(err, kubelet.ErrOtherCluster) || !strings.Contains(err.Error(), "joined cluster k1") {
			t.Errorf("join of another cluster: %v", err)
		}
	})

	// The faults below fail before anything starts, each on a fresh node root.
	freshRoot := func(t *testing.T) (*kubelet.Module, string) {
		r := t.TempDir()
		m, err := kubelet.New(kubelet.Options{Root: r, Source: src, Logger: logger(t), Supervise: kubelet.SuperviseAgent, NodeIP: nodeIP, TuneKubeletConfig: tune})
		if err != nil {
			t.Fatal(err)
		}
		m.Start(ctx)
		return m, r
	}
	fresh := func(t *testing.T) *kubelet.Module {
		m, _ := freshRoot(t)
		return m
	}
	failsWith := func(t *testing.T, m *kubelet.Module, s command.KubeletJoinSpec, want ...string) {
		t.Helper()
		var last string
		res, err := m.Join(ctx, s, func(phase, detail string) { last = phase })
		if err == nil {
			t.Fatalf("join succeeded: %+v", res)
		}
		if res.Phase != command.JoinFailed || last != command.JoinFailed {
			t.Errorf("phase %s (last reported %s), want failed", res.Phase, last)
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q lacks %q", err, w)
			}
		}
		rec, rerr := m.ReadRecord()
		if rerr == nil && rec != nil && rec.Phase != command.JoinFailed {
			t.Errorf("record phase %s", rec.Phase)
		}
	}

	t.Run("a wrong cluster CA", func(t *testing.T) {
		s := specFor(t, ctx, km, "node-2", "node-2", arts)
		s.CAPEM = otherCA(t)
		failsWith(t, fresh(t), s, "preparing:", "the cluster CA in the join spec does not verify the API server")
	})

	t.Run("an expired bootstrap token", func(t *testing.T) {
		past, err := kube.New(kube.Options{Store: st, Logger: logger(t), Now: func() time.Time { return time.Now().Add(-2 * time.Hour) }})
		if err != nil {
			t.Fatal(err)
		}
		s := specFor(t, ctx, past, "node-3", "node-3", arts)
		failsWith(t, fresh(t), s, "the bootstrap token expired at")
		// A node whose clock is behind takes the token for valid; the API
		// server does not.
		s.TokenExpires = time.Now().Add(time.Hour)
		failsWith(t, fresh(t), s, "refused the bootstrap token")
	})

	t.Run("a kubelet version with no artifact", func(t *testing.T) {
		s := specFor(t, ctx, km, "node-4", "node-4", nil)
		s.KubeletVersion = "v1.36.9"
		failsWith(t, fresh(t), s, "installing:", "no kubelet at", "names no kubelet artifact", "v1.36.9")
		// A kubelet present, of another version.
		m, r := freshRoot(t)
		if _, err := kubeletInstall(filepath.Join(cp.BinDir, "kubelet"), filepath.Join(r, "usr/local/bin/kubelet")); err != nil {
			t.Fatal(err)
		}
		failsWith(t, m, s, "installing:", "is "+kubetest.Version+", not v1.36.9")
	})

	t.Run("an artifact with the wrong digest", func(t *testing.T) {
		bad := append([]command.JoinArtifact(nil), arts...)
		d, err := src.AddBytes([]byte("a kubelet that was never pushed"))
		if err != nil {
			t.Fatal(err)
		}
		if err := src.Corrupt(d); err != nil {
			t.Fatal(err)
		}
		bad[0].Digest = d
		s := specFor(t, ctx, km, "node-5", "node-5", bad)
		failsWith(t, fresh(t), s, "installing:", "is corrupted", "refused")
	})
}

// runPod runs a pod of the imported busybox image on node (the GPU taint
// tolerated), waits for it to succeed, reads its log back and deletes it.
func runPod(t *testing.T, ctx context.Context, cp *kubetest.ControlPlane, node string) {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "hello", Namespace: metav1.NamespaceDefault},
		Spec: corev1.PodSpec{
			NodeName:                      node,
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: ptr(int64(1)),
			Tolerations:                   []corev1.Toleration{{Key: "nvidia.com/gpu", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}},
			Containers: []corev1.Container{{
				Name: "hello", Image: busyboxImage, ImagePullPolicy: corev1.PullNever,
				Command: []string{"/bin/sh", "-c", "echo hello from a budfleet node"},
			}},
		},
	}
	began := time.Now()
	if _, err := cp.Client.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var (
		last *corev1.Pod
		err  error
	)
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		last, err = cp.Client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err == nil && (last.Status.Phase == corev1.PodSucceeded || last.Status.Phase == corev1.PodFailed) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if last == nil || last.Status.Phase != corev1.PodSucceeded {
		t.Fatalf("pod did not succeed: %+v", last.Status)
	}
	t.Logf("pod created to Succeeded: %v", time.Since(began).Round(time.Millisecond))
	b, err := cp.Client.CoreV1().Pods(pod.Namespace).GetLogs(pod.Name, &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		t.Fatalf("logs: %v", err)
	}
	if got := strings.TrimSpace(string(b)); got != "hello from a budfleet node" {
		t.Errorf("log %q", got)
	}
	if err := cp.Client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}); err != nil {
		t.Error(err)
	}
}

// kubeletInstall copies the kubelet binary to dst.
func kubeletInstall(src, dst string) (int64, error) {
	b, err := os.ReadFile(src)
	if err != nil {
		return 0, err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return 0, err
	}
	return int64(len(b)), os.WriteFile(dst, b, 0o755)
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// otherCA is a CA certificate that signed nothing the cluster uses.
func otherCA(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "not-the-cluster-ca"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}
