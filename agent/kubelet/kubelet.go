// Package kubelet is the node side of joining a Kubernetes cluster
// (command kind kubelet.join): from the join spec the controller sends, it
// installs the kubelet, and containerd, runc and the CNI plugins where
// the node lacks them, from the artifact Source; writes the cluster CA,
// bootstrap-kubelet.conf, a typed KubeletConfiguration, the kubelet's
// systemd unit and drop-in (--node-labels, --register-with-taints) and
// containerd's config (the NVIDIA container runtime as the default
// runtime on GPU nodes); imports image tarballs into containerd's k8s.io
// namespace; and starts containerd and the kubelet, under systemd where
// PID 1 is systemd and otherwise as the agent's own supervised children.
// The kubelet bootstraps through TLS bootstrap: its CSR is approved and
// signed in the cluster, it writes kubelet.conf and registers its Node.
//
// Everything sits under Options.Root (default "/"), at kubeadm's paths
// (etc/kubernetes, var/lib/kubelet, etc/containerd, etc/systemd/system),
// so tests use a temporary directory. The join's own record is
// var/lib/budfleet/kubelet/join.json: which cluster (server and CA) the
// node joined, and the phase it reached.
//
// A join is idempotent and resumable: run again for the same cluster, it
// rewrites what differs, keeps the kubelet's credentials (no new CSR),
// and restarts only what changed; on a node already joined and Ready it
// only checks. A node joined to another cluster is refused and left as it
// is. A failure leaves the phase it reached and the reason in the record
// and in the command's result.
package kubelet

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/bud-ecosystem/budfleet/command"
)

// Supervision modes (Options.Supervise).
const (
	SuperviseAuto    = ""        // systemd when PID 1 is systemd and Root is "/", else the agent
	SuperviseSystemd = "systemd" // units and systemctl
	SuperviseAgent   = "agent"   // the agent's own children
)

// Options configure a Module.
type Options struct {
	// Root is where every file goes (default "/").
	Root string
	// Source fetches the spec's artifacts; nil fails a spec that names any.
	Source Source
	Logger *slog.Logger
	// Supervise is how containerd and the kubelet run (SuperviseAuto).
	Supervise string
	// NodeIP is the kubelet's --node-ip; "" lets the kubelet choose.
	NodeIP string
	// NVIDIARuntime is the NVIDIA container runtime containerd runs on GPU
	// nodes (default /usr/bin/nvidia-container-runtime).
	NVIDIARuntime string
	// TuneKubeletConfig changes the KubeletConfiguration after the
	// defaults (tests lower eviction thresholds, for instance).
	TuneKubeletConfig KubeletConfigTuner
	// ReadyTimeout bounds the wait for the Node to register and turn Ready
	// (default 5m).
	ReadyTimeout time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Module runs kubelet.join and keeps what it started running.
type Module struct {
	opts  Options
	log   *slog.Logger
	paths paths
	sup   *supervisor

	// mu makes joins run one at a time.
	mu sync.Mutex
}

// New checks opts and returns a Module; Start ties it to the agent.
func New(opts Options) (*Module, error) {
	if opts.Root == "" {
		opts.Root = "/"
	}
	if !filepath.IsAbs(opts.Root) {
		return nil, fmt.Errorf("kubelet root %q is not an absolute path", opts.Root)
	}
	switch opts.Supervise {
	case SuperviseAuto, SuperviseSystemd, SuperviseAgent:
	default:
		return nil, fmt.Errorf("kubelet supervise %q: want systemd, agent or empty (automatic)", opts.Supervise)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.NVIDIARuntime == "" {
		opts.NVIDIARuntime = "/usr/bin/nvidia-container-runtime"
	}
	if opts.ReadyTimeout <= 0 {
		opts.ReadyTimeout = 5 * time.Minute
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger.With("module", "kubelet")
	p := newPaths(opts.Root)
	sup := newSupervisor(log)
	sup.path = strings.Join([]string{p.binDir, p.sbinDir, os.Getenv("PATH")}, string(os.PathListSeparator))
	return &Module{opts: opts, log: log, paths: p, sup: sup}, nil
}

// systemd reports whether containerd and the kubelet run under systemd.
func (m *Module) systemd() bool {
	switch m.opts.Supervise {
	case SuperviseSystemd:
		return true
	case SuperviseAgent:
		return false
	}
	if filepath.Clean(m.opts.Root) != "/" {
		return false
	}
	_, err := os.Stat("/run/systemd/system") // systemd's own test for "booted with systemd"
	return err == nil
}

// Start ties the module to the agent's lifetime (ctx): where the agent
// supervises containerd and the kubelet, a node that joined before the
// agent last stopped has them started again, and they are stopped when
// ctx ends.
func (m *Module) Start(ctx context.Context) {
	m.sup.start(ctx)
	if m.systemd() {
		return
	}
	rec, err := m.readRecord()
	if err != nil || rec == nil || rec.Phase == command.JoinFailed || len(rec.KubeletArgs) == 0 {
		return
	}
	if err := m.startContainerd(ctx, m.hostOf()); err != nil {
		m.log.Error("could not start containerd again for the joined node", "cluster", rec.Cluster, "error", err)
		return
	}
	if _, err := m.sup.ensure("kubelet", append([]string{m.paths.kubeletBin}, rec.KubeletArgs...), filepath.Join(m.paths.logDir, "kubelet.log")); err != nil {
		m.log.Error("could not start the kubelet again for the joined node", "cluster", rec.Cluster, "error", err)
		return
	}
	m.log.Info("kubelet started again for the joined node", "cluster", rec.Cluster, "node_name", rec.NodeName)
}

// Wait returns once what the module supervised (containerd, the kubelet)
// has stopped after the context Start was given ended, so that the agent
// exits after them.
func (m *Module) Wait() { m.sup.wait() }

// Record is what var/lib/budfleet/kubelet/join.json keeps of the node's
// join.
type Record struct {
	Cluster       string    `json:"cluster"`
	Server        string    `json:"server"`
	CASHA256      string    `json:"ca_sha256"`
	NodeName      string    `json:"node_name"`
	KubeletVer    string    `json:"kubelet_version"`
	GPU           bool      `json:"gpu,omitempty"`
	Phase         string    `json:"phase"`
	Reason        string    `json:"reason,omitempty"`
	StartedAt     time.Time `json:"started_at"`
	UpdatedAt     time.Time `json:"updated_at"`
	ReadyAt       time.Time `json:"ready_at,omitzero"`
	KubeletArgs   []string  `json:"kubelet_args,omitempty"`
	ImportedImage []string  `json:"imported_images,omitempty"`
}

func (m *Module) readRecord() (*Record, error) {
	b, err := os.ReadFile(m.paths.record)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("the join record %s is damaged (%v): remove it to join again", m.paths.record, err)
	}
	return &r, nil
}

func (m *Module) writeRecord(r *Record) error {
	r.UpdatedAt = m.opts.Now()
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	_, err = writeFile(m.paths.record, append(b, '\n'), 0o600)
	return err
}

// ReadRecord returns the node's join record, nil when it never joined.
func (m *Module) ReadRecord() (*Record, error) { return m.readRecord() }

func caDigest(caPEM string) string {
	var der []byte
	rest := []byte(caPEM)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		der = append(der, b.Bytes...)
	}
	sum := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Progress is told each phase the join enters, with what it is doing.
type Progress func(phase, detail string)

// Result is how a join ended.
type Result struct {
	Phase    string
	Reason   string
	NodeName string
	Cluster  string
	// Already: the node was joined to the cluster and Ready; the join only
	// checked it.
	Already  bool
	Duration time.Duration
}

// Map is the result as command output.
func (r Result) Map() map[string]string {
	out := map[string]string{
		command.OutputJoinPhase:    r.Phase,
		command.OutputJoinNode:     r.NodeName,
		command.OutputJoinCluster:  r.Cluster,
		command.OutputJoinDuration: r.Duration.Round(time.Millisecond).String(),
	}
	if r.Reason != "" {
		out[command.OutputJoinReason] = r.Reason
	}
	if r.Already {
		out[command.OutputJoinAlready] = "true"
	}
	return out
}

// joinError is a failure in a phase.
type joinError struct {
	phase string
	err   error
}

func (e *joinError) Error() string { return e.phase + ": " + e.err.Error() }
func (e *joinError) Unwrap() error { return e.err }

// ErrOtherCluster: the node is joined to another cluster.
var ErrOtherCluster = errors.New("the node is joined to another cluster")

// Join joins the node as spec says, reporting phases to progress (nil:
// none). The error says in which phase and why it failed; the Result has
// the phase reached either way.
func (m *Module) Join(ctx context.Context, spec command.KubeletJoinSpec, progress Progress) (Result, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	began := m.opts.Now()
	if progress == nil {
		progress = func(string, string) {}
	}
	res := Result{Cluster: spec.Cluster, NodeName: spec.NodeName}
	var rec *Record
	phase := func(p, detail string) {
		res.Phase = p
		progress(p, detail)
		m.log.Info("kubelet join", "phase", p, "detail", detail, "cluster", spec.Cluster, "node_name", spec.NodeName)
		if rec != nil {
			rec.Phase, rec.Reason = p, ""
			if err := m.writeRecord(rec); err != nil {
				m.log.Warn("could not write the join record", "error", err)
			}
		}
	}
	fail := func(err error) (Result, error) {
		res.Duration = m.opts.Now().Sub(began)
		res.Reason = err.Error()
		failedIn := res.Phase
		res.Phase = command.JoinFailed
		progress(command.JoinFailed, res.Reason)
		m.log.Error("kubelet join failed", "in_phase", failedIn, "error", err, "cluster", spec.Cluster)
		if rec != nil {
			rec.Phase, rec.Reason = command.JoinFailed, failedIn+": "+res.Reason
			_ = m.writeRecord(rec)
		}
		return res, &joinError{phase: failedIn, err: err}
	}

	phase(command.JoinPreparing, "checking the node and the cluster")
	prev, err := m.readRecord()
	if err != nil {
		return fail(err)
	}
	ca := caDigest(spec.CAPEM)
	if prev != nil && (prev.Cluster != spec.Cluster || prev.Server != spec.Server || prev.CASHA256 != ca) {
		if prev.Phase != command.JoinFailed || m.hasCredentials() {
			return fail(fmt.Errorf("%w: this node joined cluster %s (API server %s, CA %s) on %s, not %s (API server %s): leave that cluster first (remove the Node there, then %s and %s on the node) before joining another",
				ErrOtherCluster, prev.Cluster, prev.Server, prev.CASHA256, prev.StartedAt.UTC().Format(time.RFC3339), spec.Cluster, spec.Server, m.paths.record, m.paths.kubeconfig))
		}
		prev = nil // a failed join elsewhere that left no credentials
	}
	if prev == nil {
		if other, ok := m.kubeconfigServer(); ok && other != spec.Server {
			return fail(fmt.Errorf("%w: %s exists and points at the API server %s, not %s: this node is in a cluster budfleet did not join it to; remove the Node there and that file before joining", ErrOtherCluster, m.paths.kubeconfig, other, spec.Server))
		}
	}
	bootstrapped := prev != nil && m.hasCredentials()
	if !bootstrapped {
		// Before anything changes: the CA must verify the API server and the
		// token must be taken, or the kubelet would only retry forever.
		if err := preflight(ctx, spec); err != nil {
			return fail(err)
		}
	}
	if prev != nil && prev.Phase == command.JoinReady {
		if ready, err := m.nodeReady(ctx, spec.NodeName); err == nil && ready && m.running() {
			res.Already, res.Phase = true, command.JoinReady
			res.Duration = m.opts.Now().Sub(began)
			progress(command.JoinReady, "already joined to "+spec.Cluster+"; left as it is")
			return res, nil
		}
	}
	rec = prev
	if rec == nil {
		rec = &Record{Cluster: spec.Cluster, Server: spec.Server, CASHA256: ca, StartedAt: began}
	}
	rec.NodeName, rec.KubeletVer, rec.GPU = spec.NodeName, spec.KubeletVersion, spec.GPU
	phase(command.JoinPreparing, "writing the configuration")

	h := m.hostOf()
	if spec.GPU {
		if _, err := os.Stat(h.nvidiaRuntime); err != nil {
			return fail(fmt.Errorf("this node has NVIDIA GPUs but no NVIDIA container runtime at %s, which containerd would run its pods with: install the NVIDIA Container Toolkit (nvidia-container-toolkit) first", h.nvidiaRuntime))
		}
	}

	phase(command.JoinInstalling, "binaries and images")
	if err := m.install(ctx, spec, &h, func(d string) { progress(command.JoinInstalling, d) }); err != nil {
		return fail(err)
	}
	args := kubeletArgs(m.paths, h, spec)
	changed, err := m.writeConfig(spec, h, args)
	if err != nil {
		return fail(err)
	}
	rec.KubeletArgs = args

	phase(command.JoinStarting, "containerd")
	if err := m.startContainerd(ctx, h); err != nil {
		return fail(err)
	}
	for _, a := range spec.Artifact(command.ArtifactImage) {
		if slices.Contains(rec.ImportedImage, a.Digest) {
			continue
		}
		progress(command.JoinStarting, "importing image "+a.Name+" "+a.Version)
		p, err := m.fetch(ctx, a)
		if err != nil {
			return fail(err)
		}
		if err := m.importImage(ctx, p); err != nil {
			return fail(fmt.Errorf("import image %s %s: %w", a.Name, a.Version, err))
		}
		rec.ImportedImage = append(rec.ImportedImage, a.Digest)
	}
	progress(command.JoinStarting, "kubelet")
	if err := m.startKubelet(ctx, args, changed); err != nil {
		return fail(err)
	}

	wctx, cancel := context.WithTimeout(ctx, m.opts.ReadyTimeout)
	defer cancel()
	node, err := m.waitRegistered(wctx, spec.NodeName)
	if err != nil {
		return fail(err)
	}
	phase(command.JoinRegistered, "Node "+node.Name+" registered")
	if err := m.ensureCNI(wctx, node.Name); err != nil {
		return fail(err)
	}
	if err := m.waitReady(wctx, node.Name); err != nil {
		return fail(err)
	}
	rec.ReadyAt = m.opts.Now()
	res.Duration = m.opts.Now().Sub(began)
	phase(command.JoinReady, fmt.Sprintf("Node %s Ready after %s", node.Name, res.Duration.Round(time.Millisecond)))
	return res, nil
}

// hostOf finds what the rendering needs to know about this host.
func (m *Module) hostOf() host {
	h := host{
		systemd:             m.systemd(),
		cgroup2:             fileExists("/sys/fs/cgroup/cgroup.controllers"),
		restrictOOMScoreAdj: !hasCapSysResource(),
		nodeIP:              m.opts.NodeIP,
		nvidiaRuntime:       m.opts.NVIDIARuntime,
	}
	h.cniBinDir = m.paths.cniBinDir
	if !fileExists(filepath.Join(h.cniBinDir, "bridge")) {
		for _, d := range []string{"/opt/cni/bin", "/usr/lib/cni"} { // upstream's and Debian's
			if fileExists(filepath.Join(d, "bridge")) {
				h.cniBinDir = d
				break
			}
		}
	}
	if fileExists(m.paths.runcBin) {
		h.runcBin = m.paths.runcBin
	}
	return h
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// hasCapSysResource reads the agent's effective capabilities: without
// CAP_SYS_RESOURCE (24), as in a container, runc may not lower a
// container's OOM score and every sandbox would fail.
func hasCapSysResource() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		v, ok := strings.CutPrefix(line, "CapEff:")
		if !ok {
			continue
		}
		var caps uint64
		if _, err := fmt.Sscanf(strings.TrimSpace(v), "%x", &caps); err != nil {
			return false
		}
		return caps&(1<<24) != 0
	}
	return false
}

func (m *Module) hasCredentials() bool { return fileExists(m.paths.kubeconfig) }

// kubeconfigServer is the API server of an existing kubelet.conf.
func (m *Module) kubeconfigServer() (string, bool) {
	cfg, err := clientcmd.LoadFromFile(m.paths.kubeconfig)
	if err != nil {
		return "", false
	}
	if c := cfg.Contexts[cfg.CurrentContext]; c != nil {
		if cl := cfg.Clusters[c.Cluster]; cl != nil {
			return cl.Server, true
		}
	}
	return "", false
}

// tokenSettle is how long a refused bootstrap token is retried before the
// refusal is believed.
const tokenSettle = 5 * time.Second

// preflight checks the spec against the API server: the cluster CA must
// verify it and the bootstrap token must be accepted.
func preflight(ctx context.Context, spec command.KubeletJoinSpec) error {
	if !spec.TokenExpires.IsZero() && time.Now().After(spec.TokenExpires) {
		return fmt.Errorf("the bootstrap token expired at %s: run the join again for a new one ('budctl nodes join-cluster')", spec.TokenExpires.UTC().Format(time.RFC3339))
	}
	cfg := &rest.Config{
		Host:            spec.Server,
		BearerToken:     spec.Token,
		TLSClientConfig: rest.TLSClientConfig{CAData: []byte(spec.CAPEM)},
		Timeout:         15 * time.Second,
		UserAgent:       "bud-agent",
	}
	// Listing CSRs is what node-bootstrapper grants the token's group.
	code, body, err := apiGet(ctx, cfg, "/apis/certificates.k8s.io/v1/certificatesigningrequests?limit=1")
	// The API server's bootstrap-token authenticator reads the token
	// Secrets from an informer, so a token minted a moment ago can be
	// refused until that cache catches up; kubeadm join retries the same
	// way. Only a refusal that outlasts the window is the token's fault.
	for deadline := time.Now().Add(tokenSettle); err == nil && code == http.StatusUnauthorized && time.Now().Before(deadline); {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
		code, body, err = apiGet(ctx, cfg, "/apis/certificates.k8s.io/v1/certificatesigningrequests?limit=1")
	}
	switch {
	case err != nil && (strings.Contains(err.Error(), "x509:") || strings.Contains(err.Error(), "certificate")):
		return fmt.Errorf("the cluster CA in the join spec does not verify the API server %s (%v): the cluster's kubeconfig on the controller names another CA; add the cluster again with the right certificate-authority-data", spec.Server, err)
	case err != nil:
		return fmt.Errorf("the API server %s could not be reached from this node: %w", spec.Server, err)
	case code == http.StatusOK, code == http.StatusNotFound: // 404: no certificates.k8s.io/v1 here, not ours to judge
		return nil
	case code == http.StatusUnauthorized:
		return fmt.Errorf("the API server %s refused the bootstrap token (expired, or deleted from kube-system): run the join again for a new one", spec.Server)
	case code == http.StatusForbidden:
		return fmt.Errorf("the API server %s took the bootstrap token but does not let it manage CSRs (%s): the cluster's bootstrap RBAC is missing; the controller ensures it when it queues the join", spec.Server, statusMessage(body))
	}
	return fmt.Errorf("the API server %s answered %d: %s", spec.Server, code, statusMessage(body))
}

// apiGet GETs path from the API server of cfg with its credentials. The
// agent makes two kinds of call (list CSRs, get its Node), so it does
// them over rest's HTTP client rather than with client-go's clientsets,
// whose scheme of every API group would more than double the agent's
// binary.
func apiGet(ctx context.Context, cfg *rest.Config, path string) (code int, body []byte, err error) {
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return 0, nil, err
	}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(cfg.Host, "/")+path, nil)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return resp.StatusCode, body, err
}

// statusMessage is the message of a metav1.Status body, else the body.
func statusMessage(body []byte) string {
	var st metav1.Status
	if json.Unmarshal(body, &st) == nil && st.Message != "" {
		return st.Message
	}
	return strings.TrimSpace(string(body))
}

// install puts the kubelet, containerd, runc and the CNI plugins in place:
// from the spec's artifacts, else what the node has; and checks the
// kubelet's version.
func (m *Module) install(ctx context.Context, spec command.KubeletJoinSpec, h *host, say func(string)) error {
	p := m.paths
	for _, a := range spec.Artifacts {
		var err error
		switch a.Kind {
		case command.ArtifactImage:
			continue // imported once containerd runs
		case command.ArtifactKubelet:
			say("kubelet " + a.Version)
			var src string
			if src, err = m.fetch(ctx, a); err == nil {
				_, err = installFile(src, p.kubeletBin, 0o755)
			}
		case command.ArtifactRunc:
			say("runc " + a.Version)
			var src string
			if src, err = m.fetch(ctx, a); err == nil {
				_, err = installFile(src, p.runcBin, 0o755)
				h.runcBin = p.runcBin
			}
		case command.ArtifactContainerd:
			say("containerd " + a.Version)
			var src string
			if src, err = m.fetch(ctx, a); err == nil {
				var n int
				n, err = extractBinaries(src, p.binDir, func(name string) bool {
					return strings.HasPrefix(filepath.Base(name), "containerd") || filepath.Base(name) == "ctr"
				})
				if err == nil && n == 0 {
					err = fmt.Errorf("artifact %s %s holds no containerd binaries (want containerd's release tarball, bin/containerd...)", a.Name, a.Version)
				}
			}
		case command.ArtifactCNIPlugins:
			say("CNI plugins " + a.Version)
			var src string
			if src, err = m.fetch(ctx, a); err == nil {
				_, err = extractBinaries(src, p.cniBinDir, func(string) bool { return true })
				h.cniBinDir = p.cniBinDir
			}
		}
		if err != nil {
			return err
		}
	}
	kubelet := p.kubeletBin
	if !fileExists(kubelet) {
		if len(spec.Artifact(command.ArtifactKubelet)) == 0 {
			return fmt.Errorf("no kubelet at %s and the join spec names no kubelet artifact: push kubelet %s to the controller ('budctl artifacts push kubelet --name kubelet --version %s') and join again", kubelet, spec.KubeletVersion, spec.KubeletVersion)
		}
	}
	v, err := binaryVersion(ctx, kubelet)
	if err != nil {
		return err
	}
	if v != spec.KubeletVersion {
		return fmt.Errorf("the kubelet at %s is %s, not %s, and the join spec names no kubelet %s artifact: push kubelet %s to the controller ('budctl artifacts push kubelet --name kubelet --version %s') and join again", kubelet, v, spec.KubeletVersion, spec.KubeletVersion, spec.KubeletVersion, spec.KubeletVersion)
	}
	if m.containerdBin() == "" {
		return fmt.Errorf("no containerd at %s or on PATH and the join spec names no containerd artifact: install containerd (apt-get install containerd) or push containerd's release tarball as the artifact %q", p.containerdBin, command.ArtifactContainerd)
	}
	if h.runcBin == "" && findBinary("runc") == "" {
		return fmt.Errorf("no runc at %s or on PATH and the join spec names no runc artifact: install runc or push it as the artifact %q", p.runcBin, command.ArtifactRunc)
	}
	if !fileExists(filepath.Join(h.cniBinDir, "bridge")) {
		return fmt.Errorf("no CNI plugins in %s, /opt/cni/bin or /usr/lib/cni and the join spec names no CNI artifact: install containernetworking-plugins or push the plugins' release tarball as the artifact %q", p.cniBinDir, command.ArtifactCNIPlugins)
	}
	return nil
}

func (m *Module) containerdBin() string {
	return findBinary("containerd", m.paths.containerdBin)
}

func (m *Module) ctrBin() string {
	return findBinary("ctr", m.paths.ctrBin)
}

// writeConfig writes every file of the join and reports whether one the
// kubelet reads changed (then a running kubelet is restarted).
func (m *Module) writeConfig(spec command.KubeletJoinSpec, h host, args []string) (kubeletChanged bool, err error) {
	p := m.paths
	for _, d := range []string{p.manifestsDir, p.kubeletCert, p.podLogsDir, p.cniConfDir, p.stateDir, p.logDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return false, err
		}
	}
	boot, err := renderBootstrapKubeconfig(p, spec)
	if err != nil {
		return false, err
	}
	cfg, err := renderKubeletConfig(p, h, m.opts.TuneKubeletConfig)
	if err != nil {
		return false, err
	}
	files := []struct {
		path    string
		b       []byte
		mode    os.FileMode
		kubelet bool
	}{
		{p.caFile, []byte(spec.CAPEM), 0o644, true},
		{p.bootstrapKubeconfig, boot, 0o600, false}, // a new token alone restarts nothing
		{p.kubeletConfig, cfg, 0o644, true},
		{p.kubeletUnit, renderKubeletUnit(p), 0o644, false},
		{p.kubeletDropIn, renderKubeletDropIn(p, args), 0o644, true},
		{p.containerdConfig, renderContainerdConfig(p, h, spec.GPU), 0o644, false},
	}
	if h.systemd && m.containerdBin() == p.containerdBin {
		files = append(files, struct {
			path    string
			b       []byte
			mode    os.FileMode
			kubelet bool
		}{p.containerdUnit, renderContainerdUnit(p), 0o644, false})
	}
	for _, f := range files {
		ch, err := writeFile(f.path, f.b, f.mode)
		if err != nil {
			return false, err
		}
		if ch && f.kubelet {
			kubeletChanged = true
		}
	}
	return kubeletChanged, nil
}

// startContainerd runs containerd with the join's config and waits for its
// socket.
func (m *Module) startContainerd(ctx context.Context, h host) error {
	bin := m.containerdBin()
	if bin == "" {
		return errors.New("no containerd binary")
	}
	if h.systemd {
		if err := systemctl(ctx, "daemon-reload"); err != nil {
			return err
		}
		if err := systemctl(ctx, "enable", "containerd.service"); err != nil {
			return err
		}
		if err := systemctl(ctx, "restart", "containerd.service"); err != nil {
			return err
		}
	} else {
		env := []string{bin, "--config", m.paths.containerdConfig}
		if _, err := m.sup.ensure("containerd", env, filepath.Join(m.paths.logDir, "containerd.log")); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		if err := m.ctr(ctx, "version"); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("containerd did not answer on %s within 60s: see %s", m.paths.containerdSocket, filepath.Join(m.paths.logDir, "containerd.log"))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (m *Module) ctr(ctx context.Context, args ...string) error {
	bin := m.ctrBin()
	if bin == "" {
		return errors.New("no ctr binary (containerd's client) beside containerd")
	}
	out, err := exec.CommandContext(ctx, bin, append([]string{"--address", m.paths.containerdSocket}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// importImage imports an image tarball (docker save or OCI layout) into
// the k8s.io namespace, where the kubelet's images live.
func (m *Module) importImage(ctx context.Context, tarball string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	return m.ctr(ctx, "--namespace", "k8s.io", "images", "import", "--all-platforms", tarball)
}

// startKubelet starts the kubelet, or restarts it when its files changed.
func (m *Module) startKubelet(ctx context.Context, args []string, changed bool) error {
	if m.systemd() {
		if err := systemctl(ctx, "daemon-reload"); err != nil {
			return err
		}
		if err := systemctl(ctx, "enable", "kubelet.service"); err != nil {
			return err
		}
		verb := "start"
		if changed {
			verb = "restart"
		}
		return systemctl(ctx, verb, "kubelet.service")
	}
	argv := append([]string{m.paths.kubeletBin}, args...)
	if changed {
		m.sup.stopName("kubelet")
	}
	_, err := m.sup.ensure("kubelet", argv, filepath.Join(m.paths.logDir, "kubelet.log"))
	return err
}

// running reports whether the kubelet runs.
func (m *Module) running() bool {
	if m.systemd() {
		return exec.Command("systemctl", "is-active", "--quiet", "kubelet.service").Run() == nil
	}
	ok, _, _, _ := m.sup.status("kubelet")
	return ok
}

func systemctl(ctx context.Context, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "systemctl", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("systemctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// getNode reads Node name with the kubelet's own credentials
// (kubelet.conf, once bootstrapped): the Node authorizer lets it read its
// own Node.
func (m *Module) getNode(ctx context.Context, name string) (*corev1.Node, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", m.paths.kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.Timeout = 10 * time.Second
	cfg.UserAgent = "bud-agent"
	code, body, err := apiGet(ctx, cfg, "/api/v1/nodes/"+name)
	switch {
	case err != nil:
		return nil, err
	case code == http.StatusNotFound:
		return nil, fmt.Errorf("no Node %s yet", name)
	case code != http.StatusOK:
		return nil, fmt.Errorf("get Node %s: %d: %s", name, code, statusMessage(body))
	}
	var n corev1.Node
	if err := json.Unmarshal(body, &n); err != nil {
		return nil, fmt.Errorf("get Node %s: %w", name, err)
	}
	return &n, nil
}

func (m *Module) nodeReady(ctx context.Context, name string) (bool, error) {
	n, err := m.getNode(ctx, name)
	if err != nil {
		return false, err
	}
	return isReady(n), nil
}

func isReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// poll calls fn every 250 ms until it returns done or an error, or ctx
// ends; then it says what it waited for and what it saw last.
func (m *Module) poll(ctx context.Context, what string, fn func() (done bool, last string)) error {
	last := ""
	for {
		done, l := fn()
		if done {
			return nil
		}
		if l != "" {
			last = l
		}
		select {
		case <-ctx.Done():
			msg := fmt.Sprintf("%s: not within %s", what, m.opts.ReadyTimeout)
			if last != "" {
				msg += " (last: " + last + ")"
			}
			if lt := m.logTail("kubelet.log", 1500); lt != "" {
				msg += "; the kubelet's log ends: " + lt
			}
			return errors.New(msg)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// waitRegistered waits for the kubelet's credentials and its Node.
func (m *Module) waitRegistered(ctx context.Context, name string) (*corev1.Node, error) {
	var node *corev1.Node
	err := m.poll(ctx, "the kubelet to get its certificate and register Node "+name, func() (bool, string) {
		if !m.hasCredentials() {
			if ok, _, starts, lastExit := m.sup.status("kubelet"); !ok && starts > 0 && lastExit != "" {
				return false, "the kubelet exited: " + lastExit
			}
			return false, "no " + m.paths.kubeconfig + " yet (the CSR is not signed)"
		}
		n, err := m.getNode(ctx, name)
		if err != nil {
			return false, err.Error()
		}
		node = n
		return true, ""
	})
	return node, err
}

// ensureCNI writes a bridge network on the Node's pod CIDR when the node
// has no CNI configuration.
func (m *Module) ensureCNI(ctx context.Context, name string) error {
	ents, _ := os.ReadDir(m.paths.cniConfDir)
	for _, e := range ents {
		if e.Name() != filepath.Base(m.paths.cniConfList) && (strings.HasSuffix(e.Name(), ".conflist") || strings.HasSuffix(e.Name(), ".conf")) {
			return nil // the cluster's network add-on is there
		}
	}
	var cidr string
	err := m.poll(ctx, "a pod CIDR on Node "+name+" (the controller manager's --allocate-node-cidrs), for the node's bridge network", func() (bool, string) {
		n, err := m.getNode(ctx, name)
		if err != nil {
			return false, err.Error()
		}
		cidr = n.Spec.PodCIDR
		return cidr != "", "no spec.podCIDR"
	})
	if err != nil {
		return err
	}
	b, err := renderCNIConfList(m.paths, cidr)
	if err != nil {
		return err
	}
	_, err = writeFile(m.paths.cniConfList, b, 0o644)
	return err
}

func (m *Module) waitReady(ctx context.Context, name string) error {
	return m.poll(ctx, "Node "+name+" to turn Ready", func() (bool, string) {
		n, err := m.getNode(ctx, name)
		if err != nil {
			return false, err.Error()
		}
		if isReady(n) {
			return true, ""
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				return false, c.Reason + ": " + c.Message
			}
		}
		return false, "no Ready condition yet"
	})
}

// logTail is the end of a supervised program's log, on one line.
func (m *Module) logTail(name string, limit int64) string {
	f, err := os.Open(filepath.Join(m.paths.logDir, name))
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(st.Size()-limit, 0)
	b := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(b, off); err != nil {
		return ""
	}
	return strings.Join(strings.Fields(string(b)), " ")
}
