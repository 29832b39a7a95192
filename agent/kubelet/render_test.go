package kubelet

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/clientcmd"
	kubeletv1beta1 "k8s.io/kubelet/config/v1beta1"

	"github.com/bud-ecosystem/budfleet/command"
)

func testSpec() command.KubeletJoinSpec {
	return command.KubeletJoinSpec{
		Cluster: "k1", Server: "https://10.0.0.1:6443", CAPEM: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
		Token: "abcdef.0123456789abcdef", TokenExpires: time.Now().Add(time.Hour),
		NodeName: "gpu-1", KubeletVersion: "v1.37.2",
		Labels: map[string]string{"nvidia.com/gpu": "true", "node.kubernetes.io/gpu": "true", "nvidia.com/gpu.count": "8"},
		Taints: []string{"nvidia.com/gpu=true:NoSchedule", "dedicated:NoExecute"},
		GPU:    true,
	}
}

func TestKubeletConfigIsTypedAndDecodes(t *testing.T) {
	p := newPaths("/srv/node")
	b, err := renderKubeletConfig(p, host{systemd: true, cgroup2: false}, func(c *kubeletv1beta1.KubeletConfiguration) { c.MaxPods = 42 })
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"apiVersion: kubelet.config.k8s.io/v1beta1", "kind: KubeletConfiguration", "cgroupDriver: systemd", "failCgroupV1: false",
		"containerRuntimeEndpoint: unix:///srv/node/run/containerd/containerd.sock", "clientCAFile: /srv/node/etc/kubernetes/pki/ca.crt", "rotateCertificates: true", "maxPods: 42"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("config lacks %q:\n%s", want, b)
		}
	}
	// It decodes strictly with the kubelet's own scheme.
	obj, _, err := kubeletCodecs.UniversalDecoder(kubeletv1beta1.SchemeGroupVersion).Decode(b, nil, nil)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	c, ok := obj.(*kubeletv1beta1.KubeletConfiguration)
	if !ok || c.MaxPods != 42 || c.Authentication.Webhook.Enabled == nil || !*c.Authentication.Webhook.Enabled {
		t.Errorf("decoded %T %+v", obj, obj)
	}
	var _ runtime.Object = c
}

func TestBootstrapKubeconfig(t *testing.T) {
	p := newPaths("/srv/node")
	b, err := renderBootstrapKubeconfig(p, testSpec())
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.Load(b)
	if err != nil {
		t.Fatal(err)
	}
	ctx := cfg.Contexts[cfg.CurrentContext]
	if ctx == nil || cfg.Clusters[ctx.Cluster].Server != "https://10.0.0.1:6443" || cfg.Clusters[ctx.Cluster].CertificateAuthority != p.caFile || cfg.AuthInfos[ctx.AuthInfo].Token != "abcdef.0123456789abcdef" {
		t.Errorf("bootstrap kubeconfig:\n%s", b)
	}
}

func TestKubeletArgsAndDropIn(t *testing.T) {
	p := newPaths("/")
	args := kubeletArgs(p, host{nodeIP: "10.1.2.3"}, testSpec())
	joined := strings.Join(args, " ")
	for _, want := range []string{"--hostname-override=gpu-1", "--node-ip=10.1.2.3",
		"--node-labels=node.kubernetes.io/gpu=true,nvidia.com/gpu=true,nvidia.com/gpu.count=8",
		"--register-with-taints=nvidia.com/gpu=true:NoSchedule,dedicated:NoExecute",
		"--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf", "--kubeconfig=/etc/kubernetes/kubelet.conf", "--config=/var/lib/kubelet/config.yaml"} {
		if !strings.Contains(joined, want) {
			t.Errorf("args lack %q: %s", want, joined)
		}
	}
	d := string(renderKubeletDropIn(p, args))
	if !strings.Contains(d, "ExecStart=\nExecStart=/usr/local/bin/kubelet \\\n\t--bootstrap-kubeconfig=") {
		t.Errorf("drop-in:\n%s", d)
	}
}

func TestContainerdConfig(t *testing.T) {
	p := newPaths("/srv/n")
	gpu := string(renderContainerdConfig(p, host{systemd: true, cniBinDir: "/opt/cni/bin", nvidiaRuntime: "/usr/bin/nvidia-container-runtime"}, true))
	for _, want := range []string{`default_runtime_name = "nvidia"`, `BinaryName = "/usr/bin/nvidia-container-runtime"`, `SystemdCgroup = true`,
		`address = "/srv/n/run/containerd/containerd.sock"`, `sandbox_image = "registry.k8s.io/pause:3.10"`, `bin_dir = "/opt/cni/bin"`} {
		if !strings.Contains(gpu, want) {
			t.Errorf("GPU node config lacks %s:\n%s", want, gpu)
		}
	}
	plain := string(renderContainerdConfig(p, host{restrictOOMScoreAdj: true, cniBinDir: "/usr/lib/cni"}, false))
	if !strings.Contains(plain, `default_runtime_name = "runc"`) || strings.Contains(plain, "nvidia") || !strings.Contains(plain, "restrict_oom_score_adj = true") {
		t.Errorf("plain config:\n%s", plain)
	}
}

// The rendered units pass systemd-analyze verify (scripts/verify-units.sh,
// which installs it when missing), drop-in included.
func TestUnitsVerify(t *testing.T) {
	root := t.TempDir()
	p := newPaths(root)
	for _, bin := range []string{p.kubeletBin, p.containerdBin} {
		if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(bin, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	args := kubeletArgs(p, host{nodeIP: "10.1.2.3"}, testSpec())
	for f, b := range map[string][]byte{
		p.kubeletUnit:    renderKubeletUnit(p),
		p.kubeletDropIn:  renderKubeletDropIn(p, args),
		p.containerdUnit: renderContainerdUnit(p),
	} {
		if _, err := writeFile(f, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	script, err := filepath.Abs("../../scripts/verify-units.sh")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(script, p.kubeletUnit, p.containerdUnit).CombinedOutput()
	if err != nil {
		t.Fatalf("verify-units.sh: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	// And it catches a bad key in the drop-in.
	if err := os.WriteFile(p.kubeletDropIn, append(renderKubeletDropIn(p, args), "BogusKey=1\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(script, p.kubeletUnit).CombinedOutput(); err == nil {
		t.Errorf("a drop-in with a bogus key passed:\n%s", out)
	}
}

func TestSupervisorRestartsAndStops(t *testing.T) {
	dir := t.TempDir()
	s := newSupervisor(discardLogger())
	ctx, cancel := context.WithCancel(t.Context())
	s.start(ctx)
	marker := filepath.Join(dir, "runs")
	// Exits at once the first two times, then stays.
	script := "echo run >> " + marker + "; n=$(wc -l < " + marker + "); [ \"$n\" -ge 3 ] && exec sleep 60; exit 1"
	started, err := s.ensure("prog", []string{"/bin/sh", "-c", script}, filepath.Join(dir, "prog.log"))
	if err != nil || !started {
		t.Fatalf("ensure: %v %v", started, err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if ok, _, starts, _ := s.status("prog"); ok && starts == 3 {
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(dir, "prog.log"))
			t.Fatalf("not restarted to a third, lasting run; log:\n%s", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if again, err := s.ensure("prog", []string{"/bin/sh", "-c", script}, filepath.Join(dir, "prog.log")); err != nil || again {
		t.Errorf("the same argv again: started %v, %v; want left alone", again, err)
	}
	_, pid, _, _ := s.status("prog")
	cancel()
	deadline = time.Now().Add(15 * time.Second)
	for {
		if err := exec.Command("kill", "-0", itoa(pid)).Run(); err != nil {
			break // gone
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still runs after the agent stopped", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := s.ensure("prog", []string{"true"}, filepath.Join(dir, "prog.log")); err == nil {
		t.Error("ensure after the agent stopped succeeded")
	}
}

func TestConfigurationPatch(t *testing.T) {
	tune, err := ConfigurationPatch(map[string]any{"maxPods": 17, "evictionHard": map[string]any{"memory.available": "1Mi"}, "failSwapOn": false})
	if err != nil {
		t.Fatal(err)
	}
	b, err := renderKubeletConfig(newPaths("/"), host{}, tune)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"maxPods: 17", "memory.available: 1Mi", "failSwapOn: false", "rotateCertificates: true"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("config lacks %q:\n%s", want, b)
		}
	}
	if _, err := ConfigurationPatch(map[string]any{"maxPodz": 1}); err == nil || !strings.Contains(err.Error(), "maxPodz") {
		t.Errorf("unknown field: %v", err)
	}
	if _, err := ConfigurationPatch(map[string]any{"kind": "X"}); err == nil {
		t.Error("kind was taken")
	}
}
