package kubelet

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bud-ecosystem/budfleet/agent"
	"github.com/bud-ecosystem/budfleet/agent/gpu"
	"github.com/bud-ecosystem/budfleet/agent/kubelet"
	"github.com/bud-ecosystem/budfleet/agent/kubelet/kubelettest"
	"github.com/bud-ecosystem/budfleet/agent/state"
	"github.com/bud-ecosystem/budfleet/client"
	"github.com/bud-ecosystem/budfleet/command"
	"github.com/bud-ecosystem/budfleet/controller"
	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/internal/kubetest"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
	hostv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/host/v1"
	kubev1 "github.com/bud-ecosystem/budfleet/proto/budfleet/kube/v1"
)

// lookup is the artifact store's metadata for the controller: what the
// DirSource holds, by name and version.
type lookup struct {
	mu sync.Mutex
	m  map[string]string // name@version -> digest
}

func (l *lookup) add(name, version, digest string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.m[name+"@"+version] = digest
}

func (l *lookup) LookupArtifact(_ context.Context, name, version, platform string) (string, string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, d := range l.m {
		n, v, _ := strings.Cut(k, "@")
		if n == name && (version == "" || version == v) && platform == "linux/amd64" {
			return d, v, nil
		}
	}
	return "", "", fmt.Errorf("%s %s: %w", name, version, store.ErrNotFound)
}

func tailOf(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

type fixedInventory struct{ h *hostv1.Inventory }

func (f fixedInventory) Collect(ctx context.Context) (*hostv1.Inventory, error) {
	return f.h, ctx.Err()
}

// The whole path in one process over the real session (gRPC, mTLS): the
// operator asks the controller for the join (ClusterService.JoinNode),
// the controller mints the token and finds the artifacts, the agent (its
// GPUs from go-nvml's dgxh100 mock) runs kubelet.join with the real
// kubelet, streaming its phases, and GetNode shows them up to ready; the
// Node carries the labels derived from the GPU inventory.
func TestJoinThroughTheSession(t *testing.T) {
	requireNode(t)
	checkDeps(t)
	cp := kubetest.Start(t, kubetest.WithControllerManager())
	addNode := addNodeLink
	addNode(t)
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()

	src := kubelettest.NewDirSource(t.TempDir())
	arts := artifacts(t, src, cp.BinDir)
	// The node's runtime from artifacts too: containerd's and the CNI
	// plugins' release tarballs and runc, made of Debian's binaries.
	tmp := t.TempDir()
	runtimeArts := map[string]string{
		command.ArtifactContainerd: filepath.Join(tmp, "containerd.tar.gz"),
		command.ArtifactCNIPlugins: filepath.Join(tmp, "cni-plugins.tar.gz"),
		command.ArtifactRunc:       "/usr/sbin/runc",
	}
	if err := kubelettest.ReleaseTarball(runtimeArts[command.ArtifactContainerd], map[string]string{
		"bin/containerd": "/usr/bin/containerd", "bin/containerd-shim-runc-v2": "/usr/bin/containerd-shim-runc-v2", "bin/ctr": "/usr/bin/ctr",
	}); err != nil {
		t.Fatal(err)
	}
	cni := map[string]string{}
	for _, p := range []string{"bridge", "host-local", "loopback", "portmap"} {
		cni["./"+p] = "/usr/lib/cni/" + p
	}
	if err := kubelettest.ReleaseTarball(runtimeArts[command.ArtifactCNIPlugins], cni); err != nil {
		t.Fatal(err)
	}
	look := &lookup{m: map[string]string{}}
	for name, p := range runtimeArts {
		d, err := src.Add(p)
		if err != nil {
			t.Fatal(err)
		}
		look.add(name, "debian", d)
	}
	for _, a := range arts {
		name := a.Name
		if a.Kind == command.ArtifactImage {
			name = strings.NewReplacer("/", "-", ":", "-", ".", "-").Replace(a.Name)
		}
		look.add(name, a.Version, a.Digest)
	}

	// The controller.
	dataDir := filepath.Join(t.TempDir(), "controller")
	if err := controller.Init(controller.InitConfig{DataDir: dataDir}); err != nil {
		t.Fatal(err)
	}
	sctx, stopServe := context.WithCancel(context.Background())
	ready := make(chan net.Addr, 1)
	served := make(chan error, 1)
	go func() {
		served <- controller.Serve(sctx, controller.ServeConfig{
			DataDir: dataDir, Listen: "127.0.0.1:0", Logger: logger(t), StopTimeout: 5 * time.Second,
			Server: controller.Options{HeartbeatInterval: 500 * time.Millisecond, JoinArtifacts: look},
			Ready:  func(g, _ net.Addr) { ready <- g },
		})
	}()
	t.Cleanup(func() { stopServe(); <-served })
	addr := <-ready
	cfg, err := client.Load(filepath.Join(dataDir, controller.AdminConfigFile))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Server = addr.String()
	conn, err := client.Dial(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fleet, clusters := fleetv1.NewFleetServiceClient(conn), kubev1.NewClusterServiceClient(conn)
	if _, err := clusters.AddCluster(ctx, &kubev1.AddClusterRequest{Name: clusterName, Kubeconfig: cp.Kubeconfig}); err != nil {
		t.Fatal(err)
	}

	// The agent, with eight mock H100s.
	tok, err := fleet.CreateToken(ctx, &fleetv1.CreateTokenRequest{MaxUses: 1})
	if err != nil {
		t.Fatal(err)
	}
	st, err := state.Open(filepath.Join(t.TempDir(), "agent"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	nodeID, err := agent.Enroll(ctx, agent.EnrollOptions{Controller: addr.String(), Token: tok.GetJoinToken(), Hostname: "dgx-7", MachineID: "0123456789abcdef0123456789abcdef", State: st, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	gpus, err := gpu.Open("mock:dgxh100", gpu.Options{Logger: logger(t), MockSeed: "dgx-7"})
	if err != nil {
		t.Fatal(err)
	}
	defer gpus.Close()
	root := t.TempDir()
	// nvidia-container-runtime is runc with NVIDIA's prestart hook; with no
	// GPU to hand to containers, runc alone stands in for it.
	nvidia := filepath.Join(t.TempDir(), "nvidia-container-runtime")
	if err := os.WriteFile(nvidia, []byte("#!/bin/sh\nexec runc \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	ag, err := agent.New(agent.Options{
		State: st, Logger: logger(t), GPU: gpus,
		Kubelet:        kubelet.Options{Root: root, Source: src, Supervise: kubelet.SuperviseAgent, NodeIP: nodeIP, TuneKubeletConfig: tune, NVIDIARuntime: nvidia},
		Inventory:      fixedInventory{&hostv1.Inventory{Hostname: "dgx-7", Architecture: "amd64", AgentVersion: "test"}},
		BackoffInitial: 50 * time.Millisecond, BackoffMax: time.Second, InventoryCheck: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	actx, stopAgent := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- ag.Run(actx) }()
	t.Cleanup(func() {
		stopAgent()
		<-ran
		time.Sleep(500 * time.Millisecond)
		cleanupNode(t, root)
	})
	var n *fleetv1.Node
	for n.GetGpus().GetInventory() == nil || !n.GetConnected() {
		r, err := fleet.GetNode(ctx, &fleetv1.GetNodeRequest{Id: nodeID})
		if err != nil {
			t.Fatal(err)
		}
		n = r.GetNode()
		time.Sleep(100 * time.Millisecond)
	}

	began := time.Now()
	jr, err := clusters.JoinNode(ctx, &kubev1.JoinNodeRequest{
		NodeId: nodeID, Cluster: clusterName, KubeletVersion: kubetest.Version,
		Labels: map[string]string{"budfleet.io/pool": "h100"}, Images: []string{"registry-k8s-io-pause-3-10", "docker-io-library-busybox-budfleet-test"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("queued: %v", jr)
	var seen []string
	var j *kubev1.KubeletJoin
	for {
		r, err := fleet.GetNode(ctx, &fleetv1.GetNodeRequest{Id: nodeID})
		if err != nil {
			t.Fatal(err)
		}
		j = r.GetNode().GetKubeletJoin()
		if len(seen) == 0 || seen[len(seen)-1] != j.GetPhase() {
			seen = append(seen, j.GetPhase())
		}
		if j.GetPhase() == command.JoinReady || j.GetPhase() == command.JoinFailed || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("JoinNode to GetNode's phase ready: %v; phases seen %v", time.Since(began).Round(time.Millisecond), seen)
	if j.GetPhase() != command.JoinReady {
		t.Fatalf("join: %+v", j)
	}
	if len(seen) < 3 {
		t.Errorf("phases seen %v: want the phases on the way to ready", seen)
	}
	kn, err := cp.Client.CoreV1().Nodes().Get(ctx, "dgx-7", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{"nvidia.com/gpu": "true", "node.kubernetes.io/gpu": "true", "nvidia.com/gpu.count": "8", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/mig.capable": "true", "budfleet.io/pool": "h100"} {
		if kn.Labels[k] != v {
			t.Errorf("Node label %s=%q, want %q (labels %v)", k, kn.Labels[k], v, kn.Labels)
		}
	}
	if len(kn.Spec.Taints) == 0 || kn.Spec.Taints[0].Key != "nvidia.com/gpu" {
		t.Errorf("taints %v", kn.Spec.Taints)
	}
	if got := len(src.Fetched()); got != 6 {
		t.Errorf("%d artifacts fetched over the join, want 6 (kubelet, containerd, runc, CNI plugins, two images)", got)
	}
	// containerd, its shim, runc and the CNI plugins ran from where the
	// join installed them.
	if b, err := os.ReadFile(filepath.Join(root, "var/log/budfleet/containerd.log")); err != nil || !strings.Contains(string(b), `starts ["`+filepath.Join(root, "usr/local/bin/containerd")+`"`) {
		t.Errorf("containerd did not run from the join's install: %v %s", err, tailOf(b, 2000))
	}
	cfgToml, _ := os.ReadFile(filepath.Join(root, "etc/containerd/config.toml"))
	for _, want := range []string{`BinaryName = "` + filepath.Join(root, "usr/local/sbin/runc") + `"`, `bin_dir = "` + filepath.Join(root, "opt/cni/bin") + `"`} {
		if !strings.Contains(string(cfgToml), want) {
			t.Errorf("containerd config lacks %s:\n%s", want, cfgToml)
		}
	}
	// A pod runs under containerd's default runtime of a GPU node, nvidia.
	runPod(t, ctx, cp, "dgx-7")
	if b, err := os.ReadFile(filepath.Join(root, "etc/containerd/config.toml")); err != nil || !strings.Contains(string(b), `default_runtime_name = "nvidia"`) {
		t.Errorf("containerd config of a GPU node: %v\n%s", err, b)
	}
	// The node's page shows the Node as the cluster sees it.
	r, err := fleet.GetNode(ctx, &fleetv1.GetNodeRequest{Id: nodeID})
	if err != nil {
		t.Fatal(err)
	}
	if k := r.GetNode().GetKubernetes(); !k.GetExists() || !k.GetReady() {
		t.Errorf("GetNode's Kubernetes Node %+v", k)
	}
}
