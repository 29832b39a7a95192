package kubetest

// Two control planes in all, one per test function, started in parallel:
// TestControlPlane a bare one (etcd + kube-apiserver), TestKwokDrain one
// with the controller manager and kwok, shared by its subtests in order.

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/kubectl/pkg/drain"
)

// TestControlPlane: a bare control plane is ready, reports v1.37.2, its
// kubeconfig file, CA and URL work, pods are admitted in a namespace made
// by CreateNamespace, and Stop leaves no process behind.
func TestControlPlane(t *testing.T) {
	t.Parallel()
	began := time.Now()
	cp := Start(t)
	t.Logf("Start: %v", time.Since(began).Round(time.Millisecond))
	ctx := t.Context()

	b, err := cp.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
	if err != nil || string(b) != "ok" {
		t.Fatalf("/readyz = %q, %v; want ok", b, err)
	}
	v, err := cp.Client.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.GitVersion != Version {
		t.Errorf("server version %s, want %s", v.GitVersion, Version)
	}

	// The kubeconfig file is the admin's.
	cfg, err := clientcmd.BuildConfigFromFlags("", cp.KubeconfigFile)
	if err != nil {
		t.Fatal(err)
	}
	fromFile, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	review, err := fromFile.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if u := review.Status.UserInfo; !slices.Contains(u.Groups, "system:masters") {
		t.Errorf("kubeconfig user %s in groups %v, want system:masters", u.Username, u.Groups)
	}

	// CAPEM verifies the server at URL (anonymous: /readyz is public).
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(cp.CAPEM) {
		t.Fatal("CAPEM holds no certificate")
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get(cp.URL + "/readyz")
	if err != nil {
		t.Fatalf("GET /readyz verified by CAPEM: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "ok" {
		t.Errorf("anonymous /readyz: %s %q", resp.Status, body)
	}

	// No controller manager: CreateNamespace makes the service account
	// the ServiceAccount admission plugin wants.
	cp.CreateNamespace("bare")
	if _, err := cp.Client.CoreV1().Pods("bare").Create(ctx, pod("p", "nowhere", nil), metav1.CreateOptions{}); err != nil {
		t.Errorf("pod in a CreateNamespace namespace: %v", err)
	}

	pids := cp.pids()
	if len(pids) != 2 {
		t.Fatalf("processes %v, want etcd and kube-apiserver", pids)
	}
	began = time.Now()
	cp.Stop()
	t.Logf("Stop: %v", time.Since(began).Round(time.Millisecond))
	assertGone(t, cp, pids)
	if c, err := net.DialTimeout("tcp", strings.TrimPrefix(cp.URL, "https://"), time.Second); err == nil {
		c.Close()
		t.Errorf("apiserver %s still accepts connections after Stop", cp.URL)
	}
	cp.Stop() // twice is fine
}

// TestKwokDrain, on one control plane with the controller manager and
// kwok: three kwok nodes turn Ready, a Deployment's pods run on one of
// them, kubectl's drain (cordon, then evict with IgnoreAllDaemonSets and
// DeleteEmptyDirData) evicts them, and a PodDisruptionBudget with
// maxUnavailable 0 holds a drain until its timeout, the eviction refusal
// naming the budget; without the budget the drain goes through.
func TestKwokDrain(t *testing.T) {
	t.Parallel()
	began := time.Now()
	cp := Start(t, WithControllerManager(), WithKwok())
	t.Logf("Start with controller manager and kwok: %v", time.Since(began).Round(time.Millisecond))
	ctx := t.Context()
	if n := len(cp.pids()); n != 4 {
		t.Fatalf("%d processes, want etcd, kube-apiserver, kube-controller-manager, kwok", n)
	}

	t.Run("nodes", func(t *testing.T) {
		began := time.Now()
		for i := range 3 {
			cp.AddKwokNode("kwok-"+strconv.Itoa(i), map[string]string{"budfleet.io/pool": "test"})
		}
		t.Logf("3 nodes Ready in %v", time.Since(began).Round(time.Millisecond))
		nodes, err := cp.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: "budfleet.io/pool=test,type=kwok"})
		if err != nil {
			t.Fatal(err)
		}
		if len(nodes.Items) != 3 {
			t.Fatalf("%d nodes, want 3", len(nodes.Items))
		}
		for _, n := range nodes.Items {
			if !NodeReady(&n) {
				t.Errorf("node %s not Ready", n.Name)
			}
		}
		// The controller manager's IPAM gives each node a pod CIDR.
		if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			n, err := cp.Client.CoreV1().Nodes().Get(ctx, "kwok-0", metav1.GetOptions{})
			return err == nil && n.Spec.PodCIDR != "", nil
		}); err != nil {
			t.Errorf("kwok-0 has no pod CIDR: %v", err)
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	const ns = "drain"
	cp.CreateNamespace(ns)

	t.Run("drain evicts a deployment", func(t *testing.T) {
		began := time.Now()
		createDeployment(t, cp, ns, "web", "kwok-0", 2)
		before := waitRunning(t, cp, ns, "app=web", 2)
		t.Logf("2 pods Running in %v", time.Since(began).Round(time.Millisecond))
		for _, p := range before {
			if p.Spec.NodeName != "kwok-0" {
				t.Errorf("pod %s on %q, want kwok-0", p.Name, p.Spec.NodeName)
			}
		}

		var out bytes.Buffer
		h := drainer(ctx, cp, &out, 60*time.Second)
		began = time.Now()
		cordonAndDrain(t, cp, h, "kwok-0")
		t.Logf("drained kwok-0 in %v:\n%s", time.Since(began).Round(time.Millisecond), out.String())

		n, err := cp.Client.CoreV1().Nodes().Get(ctx, "kwok-0", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !n.Spec.Unschedulable {
			t.Error("kwok-0 is not cordoned")
		}
		for _, p := range before {
			got, err := cp.Client.CoreV1().Pods(ns).Get(ctx, p.Name, metav1.GetOptions{})
			switch {
			case apierrors.IsNotFound(err):
			case err != nil:
				t.Fatal(err)
			case got.UID == p.UID:
				t.Errorf("pod %s still there after the drain (phase %s)", p.Name, got.Status.Phase)
			}
		}
		if !strings.Contains(out.String(), "evicting pod "+ns+"/web-") {
			t.Errorf("drain output names no eviction:\n%s", out.String())
		}
		// The ReplicaSet replaces them. Its template names kwok-0 (there is
		// no scheduler), so the replacements are new pods on kwok-0.
		after := waitRunning(t, cp, ns, "app=web", 2)
		for _, p := range after {
			for _, b := range before {
				if p.UID == b.UID {
					t.Errorf("pod %s was not replaced", p.Name)
				}
			}
		}
	})

	t.Run("pdb blocks drain", func(t *testing.T) {
		createDeployment(t, cp, ns, "db", "kwok-1", 1)
		pods := waitRunning(t, cp, ns, "app=db", 1)
		pdb := &policyv1.PodDisruptionBudget{
			ObjectMeta: metav1.ObjectMeta{Name: "db-pdb", Namespace: ns},
			Spec: policyv1.PodDisruptionBudgetSpec{
				MaxUnavailable: new(intstr.FromInt32(0)),
				Selector:       &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
			},
		}
		if _, err := cp.Client.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, pdb, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// The controller manager's disruption controller computes its status.
		if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			got, err := cp.Client.PolicyV1().PodDisruptionBudgets(ns).Get(ctx, "db-pdb", metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			return got.Status.ObservedGeneration == got.Generation && got.Status.ExpectedPods == 1 && got.Status.CurrentHealthy == 1, nil
		}); err != nil {
			t.Fatalf("db-pdb status not computed: %v", err)
		}

		var out bytes.Buffer
		const timeout = 3 * time.Second
		h := drainer(ctx, cp, &out, timeout)
		if err := drain.RunCordonOrUncordon(h, node(t, cp, "kwok-1"), true); err != nil {
			t.Fatal(err)
		}
		began := time.Now()
		err := drain.RunNodeDrain(h, "kwok-1")
		took := time.Since(began)
		t.Logf("drain of kwok-1 returned after %v: %v\n%s", took.Round(time.Millisecond), err, out.String())
		if err == nil || !strings.Contains(err.Error(), "global timeout reached") {
			t.Fatalf("drain with a blocking PDB: %v, want a timeout", err)
		}
		if took < timeout {
			t.Errorf("drain gave up after %v, before its %v timeout", took, timeout)
		}
		if !strings.Contains(out.String(), "would violate the pod's disruption budget") {
			t.Errorf("drain output does not say the PDB refused the eviction:\n%s", out.String())
		}
		if _, err := cp.Client.CoreV1().Pods(ns).Get(ctx, pods[0].Name, metav1.GetOptions{}); err != nil {
			t.Errorf("pod %s under the PDB: %v", pods[0].Name, err)
		}
		// The eviction refusal itself names the budget (a cause the drain
		// output leaves out).
		err = cp.Client.CoreV1().Pods(ns).EvictV1(ctx, &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: pods[0].Name, Namespace: ns}})
		if !apierrors.IsTooManyRequests(err) {
			t.Fatalf("eviction under the PDB: %v, want 429", err)
		}
		if msg := pdbCause(err); !strings.Contains(msg, "db-pdb") {
			t.Errorf("eviction refusal %v: cause %q does not name db-pdb", err, msg)
		}

		// Without the budget, the same drain goes through.
		if err := cp.Client.PolicyV1().PodDisruptionBudgets(ns).Delete(ctx, "db-pdb", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		out.Reset()
		h.Timeout = 60 * time.Second
		if err := drain.RunNodeDrain(h, "kwok-1"); err != nil {
			t.Fatalf("drain without the PDB: %v\n%s", err, out.String())
		}
		if _, err := cp.Client.CoreV1().Pods(ns).Get(ctx, pods[0].Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("pod %s after the drain without the PDB: %v, want NotFound", pods[0].Name, err)
		}
	})

	t.Run("stop", func(t *testing.T) {
		pids := cp.pids()
		began := time.Now()
		cp.Stop()
		t.Logf("Stop: %v", time.Since(began).Round(time.Millisecond))
		assertGone(t, cp, pids)
	})
}

// TestBinDirFromEnv: BUD_K8S_DIR must hold every binary; one that does not
// is an error that says what to do, not a skip and not a build.
func TestBinDirFromEnv(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "etcd"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("BUD_K8S_DIR", dir)
	_, err := BinDir()
	if err == nil || !strings.Contains(err.Error(), "lacks kube-apiserver, kube-controller-manager, kubelet, kwok") {
		t.Fatalf("BinDir with an incomplete BUD_K8S_DIR: %v", err)
	}
}

// TestKwokStages: the stages file is kwok's five stages, in order.
func TestKwokStages(t *testing.T) {
	b, err := kwokStages()
	if err != nil {
		t.Fatal(err)
	}
	docs := strings.Split(string(b), "\n---\n")
	want := []string{"node-initialize", "node-heartbeat-with-lease", "pod-ready", "pod-complete", "pod-delete"}
	if len(docs) != len(want) {
		t.Fatalf("%d documents, want %d", len(docs), len(want))
	}
	for i, d := range docs {
		if !strings.Contains(d, "kind: Stage") || !strings.Contains(d, "name: "+want[i]+"\n") {
			t.Errorf("document %d is not stage %s:\n%s", i, want[i], d)
		}
	}
}

func (cp *ControlPlane) pids() []int {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	var pids []int
	for _, p := range cp.procs {
		pids = append(pids, p.cmd.Process.Pid)
	}
	return pids
}

// assertGone checks that no process of cp is left: none of pids exists
// (not even as a zombie) and no process's command line names cp.Dir.
func assertGone(t *testing.T, cp *ControlPlane, pids []int) {
	t.Helper()
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("pid %d still exists after Stop (kill 0: %v)", pid, err)
		}
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(cmdline, []byte(cp.Dir)) {
			t.Errorf("process %s still runs after Stop: %s", e.Name(), bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '}))
		}
	}
}

func drainer(ctx context.Context, cp *ControlPlane, out io.Writer, timeout time.Duration) *drain.Helper {
	w := &lockedWriter{w: out}
	return &drain.Helper{
		Ctx:                  ctx,
		Client:               cp.Client,
		GracePeriodSeconds:   -1, // the pods' own
		IgnoreAllDaemonSets:  true,
		DeleteEmptyDirData:   true,
		Timeout:              timeout,
		EvictErrorRetryDelay: 200 * time.Millisecond,
		Out:                  w,
		ErrOut:               w,
	}
}

func cordonAndDrain(t *testing.T, cp *ControlPlane, h *drain.Helper, name string) {
	t.Helper()
	if err := drain.RunCordonOrUncordon(h, node(t, cp, name), true); err != nil {
		t.Fatalf("cordon %s: %v", name, err)
	}
	if err := drain.RunNodeDrain(h, name); err != nil {
		t.Fatalf("drain %s: %v", name, err)
	}
}

func node(t *testing.T, cp *ControlPlane, name string) *corev1.Node {
	t.Helper()
	n, err := cp.Client.CoreV1().Nodes().Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func pod(name, nodeName string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec:       podSpec(nodeName),
	}
}

func podSpec(nodeName string) corev1.PodSpec {
	return corev1.PodSpec{
		NodeName: nodeName,
		Containers: []corev1.Container{{
			Name:         "app",
			Image:        "registry.invalid/app:1",
			VolumeMounts: []corev1.VolumeMount{{Name: "scratch", MountPath: "/scratch"}},
		}},
		// An emptyDir is what DeleteEmptyDirData is for.
		Volumes:                       []corev1.Volume{{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
		TerminationGracePeriodSeconds: new(int64(1)),
	}
}

func createDeployment(t *testing.T, cp *ControlPlane, ns, name, nodeName string, replicas int32) {
	t.Helper()
	labels := map[string]string{"app": name}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       podSpec(nodeName),
			},
		},
	}
	if _, err := cp.Client.AppsV1().Deployments(ns).Create(t.Context(), d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// waitRunning waits until exactly n pods match selector, all Running and
// none being deleted, and returns them.
func waitRunning(t *testing.T, cp *ControlPlane, ns, selector string, n int) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	var last string
	err := wait.PollUntilContextTimeout(t.Context(), 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := cp.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return false, err
		}
		last = ""
		for _, p := range list.Items {
			last += " " + p.Name + "=" + string(p.Status.Phase)
			if p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil {
				return false, nil
			}
		}
		pods = list.Items
		return len(pods) == n, nil
	})
	if err != nil {
		t.Fatalf("waiting for %d Running pods %s in %s: %v (last:%s)", n, selector, ns, err, last)
	}
	return pods
}

// pdbCause returns the message of err's DisruptionBudget cause.
func pdbCause(err error) string {
	var se apierrors.APIStatus
	if !errors.As(err, &se) || se.Status().Details == nil {
		return ""
	}
	for _, c := range se.Status().Details.Causes {
		if c.Type == policyv1.DisruptionBudgetCause {
			return c.Message
		}
	}
	return ""
}

// lockedWriter serialises the drain helper's writes (it evicts pods
// from several goroutines).
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
