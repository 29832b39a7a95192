package kubelet

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	clientcmdlatest "k8s.io/client-go/tools/clientcmd/api/latest"
	kubeletv1beta1 "k8s.io/kubelet/config/v1beta1"

	"github.com/bud-ecosystem/budfleet/command"
)

// paths are where a join puts everything, under Options.Root: the places
// kubeadm uses, so that the node looks like any other to an operator.
type paths struct {
	root string

	kubeletBin, containerdBin, ctrBin, runcBin string
	binDir, sbinDir, cniBinDir                 string

	kubernetesDir, pkiDir, caFile          string
	bootstrapKubeconfig, kubeconfig        string
	manifestsDir                           string
	kubeletDir, kubeletConfig, kubeletCert string
	podLogsDir                             string

	unitDir, kubeletUnit, kubeletDropIn, containerdUnit string

	containerdConfig, containerdRoot, containerdState, containerdSocket, containerdOpt string

	cniConfDir, cniConfList, cniDataDir string

	stateDir, record, logDir string
}

func newPaths(root string) paths {
	j := func(p ...string) string { return filepath.Join(append([]string{root}, p...)...) }
	return paths{
		root:                root,
		binDir:              j("usr/local/bin"),
		sbinDir:             j("usr/local/sbin"),
		kubeletBin:          j("usr/local/bin/kubelet"),
		containerdBin:       j("usr/local/bin/containerd"),
		ctrBin:              j("usr/local/bin/ctr"),
		runcBin:             j("usr/local/sbin/runc"),
		cniBinDir:           j("opt/cni/bin"),
		kubernetesDir:       j("etc/kubernetes"),
		pkiDir:              j("etc/kubernetes/pki"),
		caFile:              j("etc/kubernetes/pki/ca.crt"),
		bootstrapKubeconfig: j("etc/kubernetes/bootstrap-kubelet.conf"),
		kubeconfig:          j("etc/kubernetes/kubelet.conf"),
		manifestsDir:        j("etc/kubernetes/manifests"),
		kubeletDir:          j("var/lib/kubelet"),
		kubeletConfig:       j("var/lib/kubelet/config.yaml"),
		kubeletCert:         j("var/lib/kubelet/pki"),
		podLogsDir:          j("var/log/pods"),
		unitDir:             j("etc/systemd/system"),
		kubeletUnit:         j("etc/systemd/system/kubelet.service"),
		kubeletDropIn:       j("etc/systemd/system/kubelet.service.d/10-budfleet.conf"),
		containerdUnit:      j("etc/systemd/system/containerd.service"),
		containerdConfig:    j("etc/containerd/config.toml"),
		containerdRoot:      j("var/lib/containerd"),
		containerdState:     j("run/containerd"),
		containerdSocket:    j("run/containerd/containerd.sock"),
		containerdOpt:       j("opt/containerd"),
		cniConfDir:          j("etc/cni/net.d"),
		cniConfList:         j("etc/cni/net.d/10-budfleet-bridge.conflist"),
		cniDataDir:          j("var/lib/cni/networks"),
		stateDir:            j("var/lib/budfleet/kubelet"),
		record:              j("var/lib/budfleet/kubelet/join.json"),
		logDir:              j("var/log/budfleet"),
	}
}

// host is what the rendering needs to know about the node beyond the spec.
type host struct {
	systemd bool // PID 1 is systemd: units, cgroup driver systemd
	cgroup2 bool // the unified hierarchy
	// restrictOOMScoreAdj: the agent lacks CAP_SYS_RESOURCE (a container),
	// so runc may not lower OOM scores.
	restrictOOMScoreAdj bool
	nodeIP              string
	cniBinDir           string
	runcBin             string // "" is runc on containerd's PATH
	nvidiaRuntime       string
}

// bootstrapKubeconfig is the kubeconfig the kubelet bootstraps with: the
// API server, its CA (a file, as the kubelet's own kubeconfig also names
// it) and the bootstrap token.
func renderBootstrapKubeconfig(p paths, s command.KubeletJoinSpec) ([]byte, error) {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[s.Cluster] = &clientcmdapi.Cluster{Server: s.Server, CertificateAuthority: p.caFile}
	cfg.AuthInfos["tls-bootstrap-token-user"] = &clientcmdapi.AuthInfo{Token: s.Token}
	cfg.Contexts["tls-bootstrap-token-user@"+s.Cluster] = &clientcmdapi.Context{Cluster: s.Cluster, AuthInfo: "tls-bootstrap-token-user"}
	cfg.CurrentContext = "tls-bootstrap-token-user@" + s.Cluster
	return runtime.Encode(clientcmdlatest.Codec, cfg)
}

var kubeletCodecs = func() serializer.CodecFactory {
	scheme := runtime.NewScheme()
	if err := kubeletv1beta1.AddToScheme(scheme); err != nil {
		panic(err) // a static registration
	}
	return serializer.NewCodecFactory(scheme)
}()

// KubeletConfigTuner changes the KubeletConfiguration a join writes, after
// the defaults are set (agent config, tests).
type KubeletConfigTuner func(*kubeletv1beta1.KubeletConfiguration)

// ConfigurationPatch checks fields of a KubeletConfiguration (by their
// YAML names) and returns the tuner that lays them over a join's
// configuration; nil for none. Unknown fields are errors.
func ConfigurationPatch(fields map[string]any) (KubeletConfigTuner, error) {
	if len(fields) == 0 {
		return nil, nil
	}
	for _, k := range []string{"apiVersion", "kind"} {
		if _, ok := fields[k]; ok {
			return nil, fmt.Errorf("%s is the join's to set; give only the fields to change", k)
		}
	}
	b, err := json.Marshal(fields)
	if err != nil {
		return nil, err
	}
	apply := func(c *kubeletv1beta1.KubeletConfiguration) error {
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		return dec.Decode(c)
	}
	if err := apply(&kubeletv1beta1.KubeletConfiguration{}); err != nil {
		return nil, fmt.Errorf("not KubeletConfiguration (kubelet.config.k8s.io/v1beta1) fields: %w", err)
	}
	return func(c *kubeletv1beta1.KubeletConfiguration) { _ = apply(c) }, nil
}

// renderKubeletConfig is the kubelet's --config, a typed
// KubeletConfiguration serialized with the kubelet's own scheme.
func renderKubeletConfig(p paths, h host, tune KubeletConfigTuner) ([]byte, error) {
	t, f := true, false
	driver := "cgroupfs"
	if h.systemd {
		driver = "systemd"
	}
	c := &kubeletv1beta1.KubeletConfiguration{
		TypeMeta: metav1.TypeMeta{APIVersion: kubeletv1beta1.SchemeGroupVersion.String(), Kind: "KubeletConfiguration"},
		Authentication: kubeletv1beta1.KubeletAuthentication{
			X509:      kubeletv1beta1.KubeletX509Authentication{ClientCAFile: p.caFile},
			Webhook:   kubeletv1beta1.KubeletWebhookAuthentication{Enabled: &t},
			Anonymous: kubeletv1beta1.KubeletAnonymousAuthentication{Enabled: &f},
		},
		Authorization:            kubeletv1beta1.KubeletAuthorization{Mode: kubeletv1beta1.KubeletAuthorizationModeWebhook},
		CgroupDriver:             driver,
		ClusterDomain:            "cluster.local",
		ContainerRuntimeEndpoint: "unix://" + p.containerdSocket,
		ImageServiceEndpoint:     "unix://" + p.containerdSocket,
		RotateCertificates:       true,
		ReadOnlyPort:             0,
		HealthzBindAddress:       "127.0.0.1",
		StaticPodPath:            p.manifestsDir,
		PodLogsDir:               p.podLogsDir,
	}
	if !h.cgroup2 {
		// cgroup v1 is deprecated, not gone: such a host runs the kubelet
		// only when it is told to.
		c.FailCgroupV1 = &f
	}
	if tune != nil {
		tune(c)
	}
	info, ok := runtime.SerializerInfoForMediaType(kubeletCodecs.SupportedMediaTypes(), runtime.ContentTypeYAML)
	if !ok {
		return nil, fmt.Errorf("no YAML serializer for %s", kubeletv1beta1.SchemeGroupVersion)
	}
	return runtime.Encode(kubeletCodecs.EncoderForVersion(info.Serializer, kubeletv1beta1.SchemeGroupVersion), c)
}

// kubeletArgs is the kubelet's command line, the same under systemd (the
// drop-in's ExecStart) and under the agent.
func kubeletArgs(p paths, h host, s command.KubeletJoinSpec) []string {
	args := []string{
		"--bootstrap-kubeconfig=" + p.bootstrapKubeconfig,
		"--kubeconfig=" + p.kubeconfig,
		"--config=" + p.kubeletConfig,
		"--cert-dir=" + p.kubeletCert,
		"--root-dir=" + p.kubeletDir,
		"--hostname-override=" + s.NodeName,
	}
	if h.nodeIP != "" {
		args = append(args, "--node-ip="+h.nodeIP)
	}
	if l := labelsFlag(s.Labels); l != "" {
		args = append(args, "--node-labels="+l)
	}
	if len(s.Taints) > 0 {
		args = append(args, "--register-with-taints="+strings.Join(s.Taints, ","))
	}
	return args
}

func labelsFlag(l map[string]string) string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + l[k]
	}
	return strings.Join(parts, ",")
}

// renderKubeletUnit is kubelet.service, as kubeadm's packages ship it; the
// drop-in carries the command line.
func renderKubeletUnit(p paths) []byte {
	return []byte(`# Written by bud-agent (kubelet.join); the next join rewrites it.
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target containerd.service
After=network-online.target containerd.service
StartLimitIntervalSec=0

[Service]
ExecStart=` + p.kubeletBin + `
Restart=always
RestartSec=10

[Install]
WantedBy=multi-user.target
`)
}

// renderKubeletDropIn is kubelet.service.d/10-budfleet.conf: the command
// line with the join's --node-labels and --register-with-taints.
func renderKubeletDropIn(p paths, args []string) []byte {
	var b bytes.Buffer
	b.WriteString("# Written by bud-agent (kubelet.join); the next join rewrites it.\n[Service]\nExecStart=\nExecStart=")
	b.WriteString(p.kubeletBin)
	for _, a := range args {
		b.WriteString(" \\\n\t")
		b.WriteString(systemdQuote(a))
	}
	b.WriteString("\n")
	return b.Bytes()
}

// renderContainerdUnit is containerd.service for a containerd installed
// from an artifact (a Debian containerd brings its own), as containerd's
// release ships it.
func renderContainerdUnit(p paths) []byte {
	return []byte(`# Written by bud-agent (kubelet.join); the next join rewrites it.
[Unit]
Description=containerd container runtime
Documentation=https://containerd.io
After=network.target local-fs.target

[Service]
ExecStartPre=-/sbin/modprobe overlay
ExecStart=` + p.containerdBin + ` --config ` + p.containerdConfig + `
Type=notify
Delegate=yes
KillMode=process
Restart=always
RestartSec=5
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
OOMScoreAdjust=-999

[Install]
WantedBy=multi-user.target
`)
}

// systemdQuote quotes an ExecStart argument when it needs it; '%' is
// systemd's specifier character.
func systemdQuote(s string) string {
	s = strings.ReplaceAll(s, "%", "%%")
	if strings.ContainsAny(s, " \t\"'\\;$") {
		return strconv.Quote(s)
	}
	return s
}

// renderContainerdConfig is containerd's config (version 2, containerd
// 1.6 and 1.7): its own root, state and socket under the join's root, the
// CRI plugin with runc, and on GPU nodes the NVIDIA container runtime as
// the default runtime.
func renderContainerdConfig(p paths, h host, gpu bool) []byte {
	q := strconv.Quote
	def := "runc"
	if gpu {
		def = "nvidia"
	}
	var b strings.Builder
	fmt.Fprintf(&b, `# Written by bud-agent (kubelet.join); the next join rewrites it.
version = 2
root = %s
state = %s

[grpc]
  address = %s

[plugins."io.containerd.internal.v1.opt"]
  path = %s

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %s
  restrict_oom_score_adj = %t

  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = %s

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = %t
`, q(p.containerdRoot), q(p.containerdState), q(p.containerdSocket), q(p.containerdOpt),
		q(PauseImage), h.restrictOOMScoreAdj, q(def), h.systemd)
	if h.runcBin != "" {
		fmt.Fprintf(&b, "        BinaryName = %s\n", q(h.runcBin))
	}
	if gpu {
		fmt.Fprintf(&b, `
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia.options]
        BinaryName = %s
        SystemdCgroup = %t
`, q(h.nvidiaRuntime), h.systemd)
	}
	fmt.Fprintf(&b, `
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %s
    conf_dir = %s
`, q(h.cniBinDir), q(p.cniConfDir))
	return []byte(b.String())
}

// PauseImage is the sandbox image containerd runs for every pod: the
// kubelet v1.37 default. An air-gapped node imports it from an image
// artifact.
const PauseImage = "registry.k8s.io/pause:3.10"

// renderCNIConfList is a node-local bridge network on the Node's pod CIDR,
// written when the node has no CNI configuration of its own, so that the
// Node turns Ready before (or without) a cluster-wide network add-on,
// which replaces it by writing its own.
func renderCNIConfList(p paths, podCIDR string) ([]byte, error) {
	conf := map[string]any{
		"cniVersion": "0.4.0",
		"name":       "budfleet-bridge",
		"plugins": []any{
			map[string]any{
				"type":      "bridge",
				"bridge":    "cni0",
				"isGateway": true,
				"ipam": map[string]any{
					"type":    "host-local",
					"dataDir": p.cniDataDir,
					"ranges":  []any{[]any{map[string]string{"subnet": podCIDR}}},
					"routes":  []any{map[string]string{"dst": "0.0.0.0/0"}},
				},
			},
		},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	return append(b, '\n'), err
}
