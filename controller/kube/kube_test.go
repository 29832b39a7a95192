package kube

// Unit tests: kubeconfig checks, the mapping rule, drain options and the
// drain report's reading of kubectl's errors. The behaviour against a real
// API server is in cluster_test.go.

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/controller/store/bolt"
	"github.com/bud-ecosystem/budfleet/pki"
)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openStore(t *testing.T) *bolt.Store {
	t.Helper()
	st, err := bolt.Open(filepath.Join(t.TempDir(), "controller.db"), bolt.Options{LockTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// testCert is a self-signed certificate for cn and its key, as PEM.
func testCert(t *testing.T, cn string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(now.UnixNano()),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"tests"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	if keyPEM, err = pki.EncodeKey(key); err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM
}

// kubeconfigFor is a valid, self-contained kubeconfig with a client
// certificate.
func kubeconfigFor(t *testing.T, server string) *clientcmdapi.Config {
	t.Helper()
	caPEM, _ := testCert(t, "test-ca")
	certPEM, keyPEM := testCert(t, "admin")
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["c"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: certPEM, ClientKeyData: keyPEM}
	cfg.Contexts["ctx"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "admin"}
	cfg.CurrentContext = "ctx"
	return cfg
}

func write(t *testing.T, cfg *clientcmdapi.Config) []byte {
	t.Helper()
	b, err := clientcmd.Write(*cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseKubeconfig(t *testing.T) {
	good := kubeconfigFor(t, "https://127.0.0.1:6443")
	// A second context the file also has: minified away.
	good.Clusters["other"] = &clientcmdapi.Cluster{Server: "https://other:6443"}
	good.AuthInfos["other"] = &clientcmdapi.AuthInfo{Token: "other-secret-token"}
	good.Contexts["other"] = &clientcmdapi.Context{Cluster: "other", AuthInfo: "other"}
	k, err := parseKubeconfig(write(t, good))
	if err != nil {
		t.Fatalf("good kubeconfig: %v", err)
	}
	if k.server != "https://127.0.0.1:6443" || k.user != "admin" || !strings.HasPrefix(k.caFingerprint, "sha256:") || len(k.caFingerprint) != 7+64 {
		t.Errorf("parsed %+v", k)
	}
	if !strings.HasPrefix(k.auth, "client certificate CN=admin") || !strings.Contains(k.auth, "expires ") {
		t.Errorf("auth %q", k.auth)
	}
	if strings.Contains(string(k.raw), "other-secret-token") || strings.Contains(string(k.raw), "https://other") {
		t.Errorf("the kept kubeconfig still has the other context:\n%s", k.raw)
	}
	if k.rest.Host != "https://127.0.0.1:6443" || len(k.rest.CertData) == 0 {
		t.Errorf("rest config host %q, cert %d bytes", k.rest.Host, len(k.rest.CertData))
	}
	// The kept kubeconfig parses again to the same (the store's copy is
	// read this way).
	again, err := parseKubeconfig(k.raw)
	if err != nil || again.caFingerprint != k.caFingerprint || again.server != k.server {
		t.Errorf("the minified kubeconfig does not parse back: %+v, %v", again, err)
	}

	token := kubeconfigFor(t, "https://h:6443")
	token.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: "s3cret"}
	if k, err := parseKubeconfig(write(t, token)); err != nil || k.auth != "bearer token" {
		t.Errorf("token kubeconfig: %+v, %v", k, err)
	}
	noCurrent := kubeconfigFor(t, "https://h:6443")
	noCurrent.CurrentContext = ""
	if _, err := parseKubeconfig(write(t, noCurrent)); err != nil {
		t.Errorf("one context and no current-context: %v, want it used", err)
	}

	mod := func(f func(*clientcmdapi.Config)) []byte {
		c := kubeconfigFor(t, "https://h:6443")
		f(c)
		return write(t, c)
	}
	for _, tc := range []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", []byte("  \n"), "it is empty"},
		{"not yaml", []byte("{{{ not: yaml"), "not a kubeconfig file"},
		{"too big", []byte(strings.Repeat("#", MaxKubeconfigBytes+1)), "more than the"},
		{"wrong kind", []byte("apiVersion: v1\nkind: Pod\n"), "not a kubeconfig file"},
		{"no contexts", []byte("apiVersion: v1\nkind: Config\n"), "no current-context"},
		{"two contexts, none current", mod(func(c *clientcmdapi.Config) {
			c.CurrentContext = ""
			c.Contexts["b"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "admin"}
		}), "2 contexts and no current-context"},
		{"unknown current", mod(func(c *clientcmdapi.Config) { c.CurrentContext = "nope" }), `current-context "nope" is not among`},
		{"unknown cluster", mod(func(c *clientcmdapi.Config) { c.Contexts["ctx"].Cluster = "x" }), `names cluster "x"`},
		{"unknown user", mod(func(c *clientcmdapi.Config) { c.Contexts["ctx"].AuthInfo = "x" }), `names user "x"`},
		{"no server", mod(func(c *clientcmdapi.Config) { c.Clusters["c"].Server = "" }), "no server URL"},
		{"http", mod(func(c *clientcmdapi.Config) { c.Clusters["c"].Server = "http://h:8080" }), "not an https:// URL"},
		{"CA file", mod(func(c *clientcmdapi.Config) { c.Clusters["c"].CertificateAuthority = "/etc/shadow" }), "reads its CA from the file /etc/shadow"},
		{"cert file", mod(func(c *clientcmdapi.Config) { c.AuthInfos["admin"].ClientKey = "/k" }), "--flatten"},
		{"token file", mod(func(c *clientcmdapi.Config) { c.AuthInfos["admin"].TokenFile = "/t" }), "reads its token from the file /t"},
		{"exec", mod(func(c *clientcmdapi.Config) {
			c.AuthInfos["admin"].Exec = &clientcmdapi.ExecConfig{Command: "rm", APIVersion: "client.authentication.k8s.io/v1"}
		}), `runs the credential plugin "rm"`},
		{"auth provider", mod(func(c *clientcmdapi.Config) {
			c.AuthInfos["admin"].AuthProvider = &clientcmdapi.AuthProviderConfig{Name: "oidc"}
		}), `auth provider "oidc"`},
		{"basic auth", mod(func(c *clientcmdapi.Config) { c.AuthInfos["admin"].Username = "u" }), "basic authentication"},
		{"no credentials", mod(func(c *clientcmdapi.Config) { c.AuthInfos["admin"] = &clientcmdapi.AuthInfo{} }), "has no credentials"},
		{"bad CA data", mod(func(c *clientcmdapi.Config) { c.Clusters["c"].CertificateAuthorityData = []byte("nope") }), "holds no PEM certificate"},
		{"bad cert data", mod(func(c *clientcmdapi.Config) { c.AuthInfos["admin"].ClientCertificateData = []byte("nope") }), "client-certificate-data holds no PEM"},
		{"cert without key", mod(func(c *clientcmdapi.Config) { c.AuthInfos["admin"].ClientKeyData = nil }), "no client-key-data"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseKubeconfig(tc.in)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("parseKubeconfig = %v, want ErrInvalid saying %q", err, tc.want)
			}
		})
	}
}

func TestValidClusterName(t *testing.T) {
	for name, ok := range map[string]bool{
		"prod": true, "dc1-gpu": true, "a": true, "0": true, strings.Repeat("a", 63): true,
		"": false, "Prod": false, "-a": false, "a-": false, "a_b": false, "a.b": false, strings.Repeat("a", 64): false, "a b": false,
	} {
		if err := ValidClusterName(name); (err == nil) != ok {
			t.Errorf("ValidClusterName(%q) = %v, want ok=%v", name, err, ok)
		}
	}
}

func TestNodeName(t *testing.T) {
	for _, tc := range []struct {
		n         FleetNode
		name, why string
	}{
		{FleetNode{Hostname: "gpu-1"}, "gpu-1", "hostname"},
		{FleetNode{Hostname: "GPU-1"}, "gpu-1", "hostname"},
		{FleetNode{Hostname: "gpu-1", Labels: map[string]string{LabelK8sNode: "worker-7"}}, "worker-7", "label budfleet.io/k8s-node"},
		{FleetNode{Hostname: "gpu-1", Labels: map[string]string{LabelK8sNode: ""}}, "gpu-1", "hostname"},
	} {
		if name, why := NodeName(tc.n); name != tc.name || why != tc.why {
			t.Errorf("NodeName(%+v) = %q, %q; want %q, %q", tc.n, name, why, tc.name, tc.why)
		}
	}
}

// The cluster of a node: the labelled one, else the only one.
func TestResolve(t *testing.T) {
	st := openStore(t)
	m, err := New(Options{Store: st, Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	n := FleetNode{ID: "n1", Hostname: "GPU-1"}
	if _, err := m.Resolve(ctx, n); !errors.Is(err, ErrNoCluster) || !strings.Contains(err.Error(), "budctl clusters add") {
		t.Errorf("Resolve with no cluster = %v, want ErrNoCluster saying to add one", err)
	}
	if err := st.AddCluster(ctx, store.Cluster{Name: "dc1", AddedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if tg, err := m.Resolve(ctx, n); err != nil || tg != (Target{Cluster: "dc1", Node: "gpu-1", MappedBy: "hostname"}) {
		t.Errorf("Resolve with one cluster = %+v, %v", tg, err)
	}
	if err := st.AddCluster(ctx, store.Cluster{Name: "dc2", AddedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Resolve(ctx, n); !errors.Is(err, ErrNoCluster) || !strings.Contains(err.Error(), "dc1, dc2") || !strings.Contains(err.Error(), LabelCluster) {
		t.Errorf("Resolve with two clusters and no label = %v, want ErrNoCluster naming both and the label", err)
	}
	n.Labels = map[string]string{LabelCluster: "dc2", LabelK8sNode: "w7"}
	if tg, err := m.Resolve(ctx, n); err != nil || tg != (Target{Cluster: "dc2", Node: "w7", MappedBy: "label " + LabelK8sNode}) {
		t.Errorf("Resolve with labels = %+v, %v", tg, err)
	}
	n.Labels[LabelCluster] = "dc9"
	if _, err := m.Resolve(ctx, n); !errors.Is(err, ErrNoCluster) || !strings.Contains(err.Error(), "no cluster dc9 is registered") {
		t.Errorf("Resolve with an unknown cluster label = %v", err)
	}
	if _, err := m.Resolve(ctx, FleetNode{ID: "n2"}); !errors.Is(err, ErrNoCluster) || !strings.Contains(err.Error(), "no hostname") {
		t.Errorf("Resolve of a node without hostname = %v", err)
	}
}

// Node operations on a fake clientset: state, cordon and uncordon, and a
// missing Node.
func TestNodeOperationsFake(t *testing.T) {
	st := openStore(t)
	ready := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "gpu-1"},
		Status:     corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}},
	}
	cs := fake.NewClientset(ready)
	m, err := New(Options{Store: st, Logger: discard(), NewClient: func(*rest.Config) (kubernetes.Interface, error) { return cs, nil }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if err := st.AddCluster(ctx, store.Cluster{Name: "dc1", Kubeconfig: write(t, kubeconfigFor(t, "https://h:6443")), AddedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	n := FleetNode{ID: "n1", Hostname: "gpu-1"}
	st1, err := m.NodeState(ctx, n)
	if err != nil || !st1.Exists || !st1.Ready || st1.Unschedulable || st1.Cluster != "dc1" || st1.Node != "gpu-1" {
		t.Fatalf("NodeState = %+v, %v", st1, err)
	}
	for _, want := range []bool{true, true, false, false} {
		s, err := m.SetUnschedulable(ctx, n, want)
		if err != nil || s.Unschedulable != want {
			t.Fatalf("SetUnschedulable(%v) = %+v, %v", want, s, err)
		}
		got, _ := cs.CoreV1().Nodes().Get(ctx, "gpu-1", metav1.GetOptions{})
		if got.Spec.Unschedulable != want {
			t.Errorf("after SetUnschedulable(%v) the Node has unschedulable %v", want, got.Spec.Unschedulable)
		}
	}
	missing := FleetNode{ID: "n2", Hostname: "gpu-9"}
	if s, err := m.NodeState(ctx, missing); err != nil || s.Exists || s.Node != "gpu-9" {
		t.Errorf("NodeState of a missing Node = %+v, %v; want Exists false and no error", s, err)
	}
	for name, op := range map[string]func() error{
		"Cordon":   func() error { return m.Cordon(ctx, missing) },
		"Uncordon": func() error { return m.Uncordon(ctx, missing) },
		"Drain":    func() error { _, err := m.Drain(ctx, missing, DefaultDrainOptions()); return err },
	} {
		if err := op(); !errors.Is(err, ErrNodeNotFound) || !strings.Contains(err.Error(), `"gpu-9"`) || !strings.Contains(err.Error(), LabelK8sNode) {
			t.Errorf("%s of a missing Node = %v, want ErrNodeNotFound naming it and the label", name, err)
		}
	}
}

func TestDrainOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		o  DrainOptions
		ok bool
	}{
		{DrainOptions{}, true},
		{DefaultDrainOptions(), true},
		{DrainOptions{Timeout: MaxDrainTimeout, GracePeriod: time.Second}, true},
		{DrainOptions{Timeout: -time.Second}, false},
		{DrainOptions{Timeout: MaxDrainTimeout + 1}, false},
		{DrainOptions{GracePeriod: -1}, false},
	} {
		if err := tc.o.Validate(); (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrInvalid)) {
			t.Errorf("Validate(%+v) = %v, want ok=%v", tc.o, err, tc.ok)
		}
	}
	if d := DefaultDrainOptions(); d.Timeout != 300*time.Second || !d.IgnoreDaemonSets || !d.DeleteEmptyDirData || d.Force || d.GracePeriod != 0 {
		t.Errorf("DefaultDrainOptions = %+v, want the playbook's", d)
	}
}

// pdbRefusal is the API server's 429 for an eviction a budget refuses.
func pdbRefusal(pdb string) error {
	err := apierrors.NewTooManyRequests("Cannot evict pod as it would violate the pod's disruption budget.", 0)
	err.ErrStatus.Details.Causes = append(err.ErrStatus.Details.Causes, metav1.StatusCause{
		Type: policyv1.DisruptionBudgetCause, Message: fmt.Sprintf("The disruption budget %s needs 1 healthy pods and has 1 currently", pdb),
	})
	return err
}

func TestDrainReportReading(t *testing.T) {
	if got := pdbFromCause(pdbRefusal("db-pdb")); got != "db-pdb" {
		t.Errorf("pdbFromCause = %q", got)
	}
	if got := pdbFromCause(fmt.Errorf("wrapped: %w", pdbRefusal("x"))); got != "x" {
		t.Errorf("pdbFromCause(wrapped) = %q", got)
	}
	if got := pdbFromCause(apierrors.NewTooManyRequests("slow down", 1)); got != "" {
		t.Errorf("pdbFromCause(no cause) = %q", got)
	}
	if got := refusalReason(pdbRefusal("db-pdb")); !strings.Contains(got, "disruption budget.") || !strings.Contains(got, "db-pdb needs 1 healthy") {
		t.Errorf("refusalReason = %q", got)
	}

	agg := utilerrors.NewAggregate([]error{
		errors.New("cannot delete Pods with local storage (use --delete-emptydir-data to override): ns/a, ns/b"),
		errors.New("cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore): kube-system/ds-1"),
		errors.New("something else"),
	})
	got := filterBlocks(agg)
	if len(got) != 3 || got[0].PodRef != (PodRef{"ns", "a"}) || got[1].PodRef != (PodRef{"ns", "b"}) || got[2].PodRef != (PodRef{"kube-system", "ds-1"}) {
		t.Fatalf("filterBlocks = %+v", got)
	}
	if got[0].Reason != "cannot delete Pods with local storage (use --delete-emptydir-data to override)" {
		t.Errorf("reason %q", got[0].Reason)
	}

	// A drain that timed out: one pod evicted, one refused by a budget,
	// one refused then evicted but still terminating.
	rec := &recorder{pods: map[PodRef]*podRecord{}}
	pod := func(name string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name}}
	}
	rec.started(pod("web-1"), true)
	rec.evicted("ns", "web-1", nil)
	rec.finished(pod("web-1"), true, nil)
	rec.started(pod("db-0"), true)
	rec.evicted("ns", "db-0", pdbRefusal("db-pdb"))
	rec.started(pod("slow"), true)
	rec.evicted("ns", "slow", pdbRefusal("other"))
	rec.evicted("ns", "slow", nil)
	rec.started(pod("gone"), true)
	rec.evicted("ns", "gone", apierrors.NewNotFound(corev1.Resource("pods"), "gone"))
	rec.warning("ignoring DaemonSet-managed Pods: ns/ds-x; deleting Pods with local storage: ns/web-1")
	m := &Manager{opts: Options{CallTimeout: time.Second}}
	rep := DrainReport{Target: Target{Cluster: "dc1", Node: "gpu-1"}}
	m.fillReport(t.Context(), &rep, rec, nil, errors.New(`error when evicting pods/"db-0" -n "ns": global timeout reached: 3s`), 3*time.Second)
	if rep.Result != DrainTimedOut {
		t.Errorf("result %q", rep.Result)
	}
	if fmt.Sprint(rep.Evicted) != "[ns/gone ns/web-1]" {
		t.Errorf("evicted %v", rep.Evicted)
	}
	if len(rep.Blocked) != 2 || rep.Blocked[0].Name != "db-0" || rep.Blocked[0].PDB != "db-pdb" || rep.Blocked[1].Name != "slow" || rep.Blocked[1].PDB != "" || !strings.Contains(rep.Blocked[1].Reason, "still terminating") {
		t.Errorf("blocked %+v", rep.Blocked)
	}
	if len(rep.Warnings) != 2 || rep.Warnings[0] != "ignoring DaemonSet-managed Pods: ns/ds-x" {
		t.Errorf("warnings %q", rep.Warnings)
	}
	for _, want := range []string{"Node gpu-1 in cluster dc1", "timed out after 3s with 2 pods left", "ns/db-0 (PodDisruptionBudget db-pdb: Cannot evict pod"} {
		if !strings.Contains(rep.Message, want) {
			t.Errorf("message %q lacks %q", rep.Message, want)
		}
	}

	// A drain that succeeded.
	ok := DrainReport{Target: rep.Target}
	rec = &recorder{pods: map[PodRef]*podRecord{}}
	rec.started(pod("a"), true)
	rec.finished(pod("a"), true, nil)
	m.fillReport(t.Context(), &ok, rec, nil, nil, time.Minute)
	if ok.Result != DrainSucceeded || ok.Message != "drained Node gpu-1 in cluster dc1: evicted 1 pod" || len(ok.Blocked) != 0 {
		t.Errorf("report %+v", ok)
	}
	// A drain its caller stopped (the campaign runner cancels a drain
	// when it uncordons).
	stopped := DrainReport{Target: rep.Target}
	done, cancel := context.WithCancel(t.Context())
	cancel()
	rec = &recorder{pods: map[PodRef]*podRecord{}}
	rec.started(pod("db-0"), true)
	rec.evicted("ns", "db-0", pdbRefusal("db-pdb"))
	m.fillReport(done, &stopped, rec, nil, errors.New("global timeout reached"), time.Minute)
	if stopped.Result != DrainFailed || !strings.Contains(stopped.Message, "stopped (context canceled) with 1 pod left: ns/db-0 (PodDisruptionBudget db-pdb") {
		t.Errorf("report %+v", stopped)
	}
	// A drain kubectl's filters stopped.
	f := DrainReport{Target: rep.Target}
	m.fillReport(context.Background(), &f, &recorder{pods: map[PodRef]*podRecord{}}, nil, agg, time.Minute)
	if f.Result != DrainFailed || len(f.Blocked) != 3 || !strings.Contains(f.Message, "failed with 3 pods left: kube-system/ds-1 (cannot delete DaemonSet-managed Pods") {
		t.Errorf("report %+v", f)
	}
}

func TestDrainOutput(t *testing.T) {
	rec := &recorder{pods: map[PodRef]*podRecord{}}
	o := &drainOutput{rec: rec}
	fmt.Fprint(o, "evicting pod ns/a\nWARNING: ignoring DaemonSet-")
	fmt.Fprint(o, "managed Pods: ns/ds\nerror when evicting\n")
	if len(rec.warnings) != 1 || rec.warnings[0] != "ignoring DaemonSet-managed Pods: ns/ds" {
		t.Errorf("warnings %q", rec.warnings)
	}
	if o.String() != "evicting pod ns/a\nWARNING: ignoring DaemonSet-managed Pods: ns/ds\nerror when evicting\n" {
		t.Errorf("output %q", o.String())
	}
	big := strings.Repeat("x", MaxDrainOutput)
	fmt.Fprint(o, big+"\nEND\n")
	s := o.String()
	if !strings.HasPrefix(s, "[... ") || !strings.HasSuffix(s, "x\nEND\n") || len(s) > MaxDrainOutput+64 {
		t.Errorf("bounded output: %d bytes, starts %q", len(s), s[:min(40, len(s))])
	}
}
