// Package kubetest runs a real Kubernetes control plane for tests, in the
// manner of controller-runtime's envtest: etcd and kube-apiserver v1.37.2
// on loopback, optionally kube-controller-manager (service accounts, CSR
// signing, PodDisruptionBudget status, garbage collection, ReplicaSets) and
// kwok playing the kubelets of fake nodes.
//
//	cp := kubetest.Start(t, kubetest.WithControllerManager(), kubetest.WithKwok())
//	node := cp.AddKwokNode("gpu-1", map[string]string{"budfleet.io/pool": "a"})
//	cp.Client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{})
//
// # Binaries
//
// The binaries are the ones scripts/ensure-k8s.sh builds from the project's
// pinned modules (tools/k8s, tools/etcd, kwok) and caches outside the clone,
// in ${XDG_CACHE_HOME:-$HOME/.cache}/budfleet/k8s-v1.37.2/, or those in
// $BUD_K8S_DIR when it is set (the Makefile sets it). When the cache lacks
// one, Start runs scripts/ensure-k8s.sh itself, once per test binary: a
// cold build takes about 17 minutes on 2 cores, longer than go test's
// default -timeout, so a fresh machine should run `make test-unit` (or the
// script) first. A missing binary fails the test; it never skips it.
//
// # What runs
//
// Everything lives in t.TempDir(): pki/ (a cluster CA, the apiserver's
// serving certificate, client certificates, the service-account key pair),
// the kubeconfigs, etcd's data and logs/NAME.log for each component. The
// admin kubeconfig (Kubeconfig, KubeconfigFile, Config, Client) holds a
// client certificate in group system:masters. The apiserver runs with
// --authorization-mode=Node,RBAC, bootstrap-token authentication, the
// NodeRestriction admission plugin and --endpoint-reconciler-type=none
// (needed on loopback); it reaches kubelets with a client certificate in
// system:masters at their InternalIP (logs, exec of a real kubelet's
// pods). There is no kube-scheduler: a pod runs only when
// it names its node (spec.nodeName).
//
// Each process gets SIGKILL when Stop is called, when the test ends
// (t.Cleanup) and when the test binary itself dies (Pdeathsig), so a
// failing or timed-out test leaves nothing running. kube-apiserver takes
// about a minute to exit on SIGTERM, which is why Stop does not send it.
// When the test failed, the tail of each component's log is printed with
// t.Log.
//
// Start(t) ties the control plane to t: share one between subtests of one
// test function, not between test functions (it stops when the test that
// started it ends). The helpers (AddKwokNode, CreateNamespace) report
// failures with t.Fatal of that t, so call them from its goroutine.
package kubetest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/bud-ecosystem/budfleet/internal/freeport"
)

// Version is the Kubernetes version of the control plane.
const Version = "v1.37.2"

// binaries are the programs scripts/ensure-k8s.sh builds into BinDir.
var binaries = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kubelet", "kwok"}

// Network ranges of the test cluster.
const (
	ServiceCIDR = "10.96.0.0/12"
	ClusterCIDR = "10.244.0.0/16"
)

// Option configures Start.
type Option func(*options)

type options struct {
	controllerManager bool
	kwok              bool
	apiserverFlags    []string
	kcmFlags          []string
	startTimeout      time.Duration
}

// WithControllerManager also runs kube-controller-manager: every
// controller plus bootstrapsigner and tokencleaner, each with its own
// service-account credentials, signing approved CSRs with the cluster CA,
// allocating node pod CIDRs from ClusterCIDR, without leader election.
// Start returns once it is healthy and has made the default service
// account of the default namespace.
func WithControllerManager() Option { return func(o *options) { o.controllerManager = true } }

// WithKwok also runs kwok, managing the nodes annotated
// kwok.x-k8s.io/node=fake (AddKwokNode makes them) with kwok's fast stages:
// such nodes turn Ready at once and renew their lease, pods bound to them
// run at once, and deleted pods go at once.
func WithKwok() Option { return func(o *options) { o.kwok = true } }

// WithAPIServerFlags appends flags to kube-apiserver's command line (a
// flag given twice takes the last value).
func WithAPIServerFlags(flags ...string) Option {
	return func(o *options) { o.apiserverFlags = append(o.apiserverFlags, flags...) }
}

// WithControllerManagerFlags appends flags to kube-controller-manager's
// command line; it does not turn the controller manager on.
func WithControllerManagerFlags(flags ...string) Option {
	return func(o *options) { o.kcmFlags = append(o.kcmFlags, flags...) }
}

// WithStartTimeout bounds how long Start waits for the components to be
// ready (default 2 minutes).
func WithStartTimeout(d time.Duration) Option { return func(o *options) { o.startTimeout = d } }

// ControlPlane is a running (or stopped) test cluster.
type ControlPlane struct {
	// Dir holds every file of this control plane (a t.TempDir()).
	Dir string
	// BinDir is where the binaries came from.
	BinDir string
	// URL is the apiserver's address, https://127.0.0.1:PORT.
	URL string
	// KubeconfigFile is the admin kubeconfig, Kubeconfig its contents.
	KubeconfigFile string
	Kubeconfig     []byte
	// Config and Client are the admin's: a client certificate in
	// system:masters. Copy Config (rest.CopyConfig) before changing it.
	Config *rest.Config
	Client kubernetes.Interface
	// CAPEM is the cluster CA's certificate, CACertFile and CAKeyFile the
	// CA's files: it signs the serving certificate and client
	// certificates, and the controller manager signs approved CSRs with it.
	CAPEM      []byte
	CACertFile string
	CAKeyFile  string
	// ServiceAccountKeyFile is the private key service-account tokens are
	// signed with (ECDSA P-256, PEM).
	ServiceAccountKeyFile string
	// EtcdURL is etcd's client URL.
	EtcdURL string

	t     testing.TB
	kwok  bool
	procs []*process // in start order

	mu       sync.Mutex
	stopped  bool
	stopOnce sync.Once
}

// Start runs a control plane for t and waits until it is ready; t.Cleanup
// stops it. It fails t when a binary is missing and cannot be built, or a
// component does not come up (printing the component logs).
func Start(t testing.TB, opts ...Option) *ControlPlane {
	t.Helper()
	o := options{startTimeout: 2 * time.Minute}
	for _, opt := range opts {
		opt(&o)
	}
	bin, err := BinDir()
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	cp := &ControlPlane{Dir: t.TempDir(), BinDir: bin, t: t, kwok: o.kwok}
	t.Cleanup(cp.cleanup)
	began := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), o.startTimeout)
	defer cancel()
	if err := cp.start(ctx, &o); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	names := make([]string, len(cp.procs))
	for i, p := range cp.procs {
		names[i] = p.name
	}
	t.Logf("kubetest: %s at %s ready in %v (%s)", Version, cp.URL, time.Since(began).Round(time.Millisecond), strings.Join(names, ", "))
	return cp
}

func (cp *ControlPlane) start(ctx context.Context, o *options) error {
	pkiDir := filepath.Join(cp.Dir, "pki")
	if err := os.MkdirAll(pkiDir, 0o700); err != nil {
		return err
	}
	ca, err := newClusterCA()
	if err != nil {
		return fmt.Errorf("cluster CA: %w", err)
	}
	cp.CAPEM = ca.certPEM
	if cp.CACertFile, cp.CAKeyFile, err = ca.writeFiles(pkiDir); err != nil {
		return err
	}
	servingCert, servingKey, err := ca.issueFiles(pkiDir, "apiserver", leaf{
		cn:     "kube-apiserver",
		server: true,
		dns:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		ips:    []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(10, 96, 0, 1)},
	})
	if err != nil {
		return err
	}
	kubeletClientCert, kubeletClientKey, err := ca.issueFiles(pkiDir, "apiserver-kubelet-client", leaf{
		cn: "kube-apiserver-kubelet-client", orgs: []string{"system:masters"},
	})
	if err != nil {
		return err
	}
	saKey, saPub, err := writeServiceAccountKeys(pkiDir)
	if err != nil {
		return err
	}
	cp.ServiceAccountKeyFile = saKey

	var etcdPort, peerPort, apiPort int
	for _, p := range []*int{&etcdPort, &peerPort, &apiPort} {
		if *p, err = freeport.Pick(); err != nil {
			return err
		}
	}
	cp.URL = "https://127.0.0.1:" + strconv.Itoa(apiPort)
	cp.EtcdURL = "http://127.0.0.1:" + strconv.Itoa(etcdPort)

	if cp.Kubeconfig, err = cp.kubeconfig(ca, "kubetest-admin", "system:masters"); err != nil {
		return err
	}
	cp.KubeconfigFile = filepath.Join(cp.Dir, "admin.kubeconfig")
	if err := os.WriteFile(cp.KubeconfigFile, cp.Kubeconfig, 0o600); err != nil {
		return err
	}
	if cp.Config, err = clientcmd.RESTConfigFromKubeConfig(cp.Kubeconfig); err != nil {
		return fmt.Errorf("admin kubeconfig: %w", err)
	}
	cp.Config.QPS, cp.Config.Burst = 200, 400
	if cp.Client, err = kubernetes.NewForConfig(cp.Config); err != nil {
		return err
	}

	peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
	etcd, err := cp.run("etcd", []string{
		"--name=kubetest",
		"--data-dir=" + filepath.Join(cp.Dir, "etcd"),
		"--listen-client-urls=" + cp.EtcdURL,
		"--advertise-client-urls=" + cp.EtcdURL,
		"--listen-peer-urls=" + peerURL,
		"--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=kubetest=" + peerURL,
		"--unsafe-no-fsync", // a test's data need not survive a power cut
		"--log-level=warn",
	})
	if err != nil {
		return err
	}
	if err := waitFor(ctx, etcd, "etcd /health", func(ctx context.Context) error {
		return httpOK(ctx, http.DefaultClient, cp.EtcdURL+"/health", `"health":"true"`)
	}); err != nil {
		return err
	}

	api, err := cp.run("kube-apiserver", append([]string{
		"--etcd-servers=" + cp.EtcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(apiPort),
		"--endpoint-reconciler-type=none",
		"--cert-dir=" + filepath.Join(cp.Dir, "apiserver"),
		"--tls-cert-file=" + servingCert,
		"--tls-private-key-file=" + servingKey,
		"--client-ca-file=" + cp.CACertFile,
		"--kubelet-client-certificate=" + kubeletClientCert,
		"--kubelet-client-key=" + kubeletClientKey,
		// A real kubelet's Node lists its --hostname-override first, which
		// resolves nowhere here: reach kubelets (logs, exec) at their IP,
		// as kubeadm's clusters do.
		"--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + saPub,
		"--service-account-signing-key-file=" + saKey,
		"--service-cluster-ip-range=" + ServiceCIDR,
		"--authorization-mode=Node,RBAC",
		"--enable-bootstrap-token-auth=true",
		"--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true",
		"--profiling=false",
	}, o.apiserverFlags...))
	if err != nil {
		return err
	}
	if err := waitFor(ctx, api, "kube-apiserver /readyz", func(ctx context.Context) error {
		b, err := cp.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			return err
		}
		if string(b) != "ok" {
			return fmt.Errorf("/readyz: %q", b)
		}
		return nil
	}); err != nil {
		return err
	}

	if o.controllerManager {
		if err := cp.startControllerManager(ctx, ca, saKey, o.kcmFlags); err != nil {
			return err
		}
	} else {
		// No controller manager, no service accounts: pods in default
		// would be refused without this one.
		if err := cp.ensureDefaultServiceAccount(ctx, metav1.NamespaceDefault); err != nil {
			return err
		}
	}

	if o.kwok {
		if err := cp.startKwok(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (cp *ControlPlane) startControllerManager(ctx context.Context, ca *clusterCA, saKey string, extra []string) error {
	port, err := freeport.Pick()
	if err != nil {
		return err
	}
	kc, err := cp.kubeconfig(ca, "system:kube-controller-manager")
	if err != nil {
		return err
	}
	kcFile := filepath.Join(cp.Dir, "controller-manager.kubeconfig")
	if err := os.WriteFile(kcFile, kc, 0o600); err != nil {
		return err
	}
	kcm, err := cp.run("kube-controller-manager", append([]string{
		"--kubeconfig=" + kcFile,
		"--authentication-kubeconfig=" + kcFile,
		"--authorization-kubeconfig=" + kcFile,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--cert-dir=" + filepath.Join(cp.Dir, "controller-manager"),
		"--cluster-signing-cert-file=" + cp.CACertFile,
		"--cluster-signing-key-file=" + cp.CAKeyFile,
		"--root-ca-file=" + cp.CACertFile,
		"--service-account-private-key-file=" + saKey,
		"--controllers=*,bootstrapsigner,tokencleaner",
		"--use-service-account-credentials",
		"--leader-elect=false",
		"--allocate-node-cidrs",
		"--cluster-cidr=" + ClusterCIDR,
		"--service-cluster-ip-range=" + ServiceCIDR,
		"--profiling=false",
	}, extra...))
	if err != nil {
		return err
	}
	// Its serving certificate is self-signed, made at start in --cert-dir.
	insecure := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	defer insecure.CloseIdleConnections()
	if err := waitFor(ctx, kcm, "kube-controller-manager /healthz", func(ctx context.Context) error {
		return httpOK(ctx, insecure, "https://127.0.0.1:"+strconv.Itoa(port)+"/healthz", "ok")
	}); err != nil {
		return err
	}
	return waitFor(ctx, kcm, "the controller manager's default/default service account", func(ctx context.Context) error {
		_, err := cp.Client.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{})
		return err
	})
}

// kubeconfig returns a kubeconfig for the apiserver with a client
// certificate for user cn in groups, the certificate and key inline.
func (cp *ControlPlane) kubeconfig(ca *clusterCA, cn string, groups ...string) ([]byte, error) {
	certPEM, keyPEM, err := ca.issue(leaf{cn: cn, orgs: groups})
	if err != nil {
		return nil, fmt.Errorf("client certificate for %s: %w", cn, err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubetest"] = &clientcmdapi.Cluster{Server: cp.URL, CertificateAuthorityData: ca.certPEM}
	cfg.AuthInfos[cn] = &clientcmdapi.AuthInfo{ClientCertificateData: certPEM, ClientKeyData: keyPEM}
	cfg.Contexts["kubetest"] = &clientcmdapi.Context{Cluster: "kubetest", AuthInfo: cn}
	cfg.CurrentContext = "kubetest"
	return clientcmd.Write(*cfg)
}

func (cp *ControlPlane) run(name string, args []string) (*process, error) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.stopped {
		return nil, errors.New("control plane stopped while starting")
	}
	p, err := startProcess(cp.Dir, name, filepath.Join(cp.BinDir, name), args)
	if err != nil {
		return nil, err
	}
	cp.procs = append(cp.procs, p)
	return p, nil
}

// waitFor polls check every 100 ms until it succeeds, p exits or ctx ends.
func waitFor(ctx context.Context, p *process, what string, check func(context.Context) error) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		if done, err := p.exited(); done {
			return fmt.Errorf("%s exited (%v) before %s was ready; its log %s ends:\n%s", p.name, err, what, p.logFile, p.logTail(8<<10))
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		last = check(cctx)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last: %v)", what, ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// httpOK GETs url and wants a 200 whose body contains want.
func httpOK(ctx context.Context, c *http.Client, url, want string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), want) {
		return fmt.Errorf("GET %s: %s %q", url, resp.Status, b)
	}
	return nil
}

func (cp *ControlPlane) ensureDefaultServiceAccount(ctx context.Context, ns string) error {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: ns}}
	if _, err := cp.Client.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("default service account of %s: %w", ns, err)
	}
	return nil
}

// CreateNamespace makes namespace name with its default service account
// (which the controller manager, when it runs, would make a moment later),
// so pods can be created in it at once.
func (cp *ControlPlane) CreateNamespace(name string) *corev1.Namespace {
	cp.t.Helper()
	ctx := cp.t.Context()
	ns, err := cp.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		cp.t.Fatalf("kubetest: create namespace %s: %v", name, err)
	}
	if err := cp.ensureDefaultServiceAccount(ctx, name); err != nil {
		cp.t.Fatalf("kubetest: %v", err)
	}
	return ns
}

// Stop kills every component (SIGKILL) and reaps it. It is safe to call
// more than once; t.Cleanup calls it too.
func (cp *ControlPlane) Stop() {
	cp.stopOnce.Do(func() {
		cp.mu.Lock()
		cp.stopped = true
		procs := cp.procs
		cp.mu.Unlock()
		for i := len(procs) - 1; i >= 0; i-- {
			if err := procs[i].kill(); err != nil {
				cp.t.Errorf("kubetest: %v", err)
			}
		}
	})
}

func (cp *ControlPlane) cleanup() {
	cp.Stop()
	if !cp.t.Failed() {
		return
	}
	for _, p := range cp.procs {
		cp.t.Logf("kubetest: %s log (%s):\n%s", p.name, p.logFile, p.logTail(32<<10))
	}
}

var (
	ensureOnce sync.Once
	ensureDir  string
	ensureErr  error
)

// BinDir returns the directory holding etcd, kube-apiserver,
// kube-controller-manager, kubelet and kwok: $BUD_K8S_DIR when set
// (it must hold all of them), else the cache scripts/ensure-k8s.sh builds
// into, running the script (once per process) when the cache lacks one.
func BinDir() (string, error) {
	if dir := os.Getenv("BUD_K8S_DIR"); dir != "" {
		if missing := missingBinaries(dir); len(missing) > 0 {
			return "", fmt.Errorf("BUD_K8S_DIR=%s lacks %s: unset it, or set it to what scripts/ensure-k8s.sh prints", dir, strings.Join(missing, ", "))
		}
		return dir, nil
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", err
		}
		cache = filepath.Join(home, ".cache")
	}
	dir := filepath.Join(cache, "budfleet", "k8s-"+Version)
	if len(missingBinaries(dir)) == 0 {
		return dir, nil
	}
	ensureOnce.Do(func() { ensureDir, ensureErr = runEnsure() })
	if ensureErr != nil {
		return "", ensureErr
	}
	if missing := missingBinaries(ensureDir); len(missing) > 0 {
		return "", fmt.Errorf("scripts/ensure-k8s.sh left %s without %s", ensureDir, strings.Join(missing, ", "))
	}
	return ensureDir, nil
}

func missingBinaries(dir string) []string {
	var missing []string
	for _, b := range binaries {
		if st, err := os.Stat(filepath.Join(dir, b)); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			missing = append(missing, b)
		}
	}
	return missing
}

// runEnsure runs scripts/ensure-k8s.sh of the module this test is in and
// returns the directory it prints. Its progress goes to stderr.
func runEnsure() (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	script := filepath.Join(root, "scripts", "ensure-k8s.sh")
	fmt.Fprintf(os.Stderr, "kubetest: Kubernetes binaries missing; running %s (a cold build takes about 17 minutes on 2 cores)\n", script)
	cmd := exec.Command("bash", script)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s: %w", script, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1], nil
}

// moduleRoot returns the nearest directory at or above the working
// directory that holds go.mod (a test's working directory is its package).
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory, so no scripts/ensure-k8s.sh to build the binaries with")
		}
		dir = parent
	}
}
