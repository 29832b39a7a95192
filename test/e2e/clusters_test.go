package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/bud-ecosystem/budfleet/internal/kubetest"
	kubev1 "github.com/bud-ecosystem/budfleet/proto/budfleet/kube/v1"
)

// TestClusters, with the real controller, agent and budctl and a real
// Kubernetes control plane (kubetest with kwok): an unreachable cluster is
// refused and nothing stored; 'budctl clusters add' with the control
// plane's kubeconfig; an enrolled agent whose hostname names a kwok Node is
// cordoned and uncordoned, and 'nodes get' shows it; a drain held by a
// PodDisruptionBudget names the budget and the pod and exits non-zero, and
// goes through once the budget is gone. No output shows the credentials.
func TestClusters(t *testing.T) {
	t.Parallel()
	cp := kubetest.Start(t, kubetest.WithControllerManager(), kubetest.WithKwok())
	c := startController(t)
	ctx := t.Context()
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, cp.Kubeconfig, 0o600); err != nil {
		t.Fatal(err)
	}

	// An unreachable API server: refused, saying why; nothing stored.
	bad := filepath.Join(dir, "bad-kubeconfig")
	if err := os.WriteFile(bad, []byte(strings.ReplaceAll(string(cp.Kubeconfig), cp.URL, "https://127.0.0.1:"+fmt.Sprint(freePort(t)))), 0o600); err != nil {
		t.Fatal(err)
	}
	if stdout, stderr, err := c.budctl("clusters", "add", "dc1", "--kubeconfig", bad); err == nil || !strings.Contains(stderr, "connection refused") || stdout != "" {
		t.Errorf("clusters add of an unreachable cluster: %v\nstdout: %s\nstderr: %s", err, stdout, stderr)
	}
	var list kubev1.ListClustersResponse
	if err := c.budctlJSON(&list, "clusters", "list"); err != nil || len(list.GetClusters()) != 0 {
		t.Fatalf("clusters list after a refused add: %v, %v", list.GetClusters(), err)
	}

	out := c.mustBudctl(t, "clusters", "add", "dc1", "--kubeconfig", kubeconfig)
	t.Logf("budctl clusters add:\n%s", out)
	if !strings.Contains(out, "cluster dc1 added: "+cp.URL) || !strings.Contains(out, kubetest.Version) {
		t.Errorf("clusters add printed %q", out)
	}
	if err := c.budctlJSON(&list, "clusters", "list"); err != nil || len(list.GetClusters()) != 1 || !list.GetClusters()[0].GetCheck().GetReachable() || list.GetClusters()[0].GetServer() != cp.URL {
		t.Fatalf("clusters list: %v, %v", list.GetClusters(), err)
	}
	shown := c.mustBudctl(t, "clusters", "list") + c.mustBudctl(t, "clusters", "get", "dc1") +
		c.mustBudctl(t, "clusters", "get", "dc1", "-o", "yaml") + c.mustBudctl(t, "clusters", "list", "-o", "json")
	t.Logf("budctl clusters list, get, get -o yaml, list -o json:\n%s", shown)
	for _, secret := range []string{"PRIVATE KEY", "BEGIN CERTIFICATE", "client-key-data", "LS0t"} {
		if strings.Contains(shown, secret) {
			t.Errorf("budctl clusters output shows %q:\n%s", secret, shown)
		}
	}

	// An agent whose hostname is a kwok Node's name.
	const host = "e2e-gpu-1"
	cp.AddKwokNode(host, nil)
	a := joinAgent(t, c, c.createToken(t), host)
	a.start(t)
	a.waitReady(t)
	k := c.mustGetNode(t, a.nodeID).GetKubernetes()
	if k.GetCluster() != "dc1" || k.GetName() != host || k.GetMappedBy() != "hostname" || !k.GetExists() || !k.GetReady() || k.GetUnschedulable() || k.GetError() != "" {
		t.Fatalf("nodes get kubernetes: %v", k)
	}

	out = c.mustBudctl(t, "nodes", "cordon", a.nodeID)
	if !strings.Contains(out, "Kubernetes Node "+host+" in cluster dc1 cordoned") {
		t.Errorf("nodes cordon printed %q", out)
	}
	if n, err := cp.Client.CoreV1().Nodes().Get(ctx, host, metav1.GetOptions{}); err != nil || !n.Spec.Unschedulable {
		t.Errorf("Node %s after budctl nodes cordon: unschedulable %v, %v", host, n.Spec.Unschedulable, err)
	}
	if k := c.mustGetNode(t, a.nodeID).GetKubernetes(); !k.GetUnschedulable() || !k.GetReady() {
		t.Errorf("nodes get after cordon: %v, want Ready and unschedulable", k)
	}
	tbl := c.mustBudctl(t, "nodes", "get", a.nodeID)
	t.Logf("budctl nodes get after cordon:\n%s", tbl)
	if !strings.Contains(tbl, "Kubernetes Node "+host+" in cluster dc1 (by hostname)") || !strings.Contains(tbl, "Ready, unschedulable (cordoned)") {
		t.Errorf("nodes get table after cordon:\n%s", tbl)
	}
	c.mustBudctl(t, "nodes", "uncordon", a.nodeID)
	if k := c.mustGetNode(t, a.nodeID).GetKubernetes(); k.GetUnschedulable() {
		t.Errorf("nodes get after uncordon: %v, want schedulable", k)
	}

	// A drain that a PodDisruptionBudget holds.
	const ns = "e2e"
	cp.CreateNamespace(ns)
	runDB(t, cp, ns, host)
	stdout, stderr, err := c.budctl("nodes", "drain", a.nodeID, "--timeout", "2s")
	t.Logf("budctl nodes drain under the PDB (%v):\n%s%s", err, stdout, stderr)
	if err == nil {
		t.Fatalf("nodes drain under a PDB succeeded:\n%s", stdout)
	}
	for _, want := range []string{"Result:", "timed out", "Blocked:", ns + "/db-", "by PodDisruptionBudget db-pdb", "cordoned"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("nodes drain output lacks %q:\n%s", want, stdout)
		}
	}
	if !strings.Contains(stderr, "drain did not finish") || !strings.Contains(stderr, "PodDisruptionBudget db-pdb") {
		t.Errorf("nodes drain stderr: %s", stderr)
	}
	if err := cp.Client.PolicyV1().PodDisruptionBudgets(ns).Delete(ctx, "db-pdb", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	var drained kubev1.DrainNodeResponse
	if err := c.budctlJSON(&drained, "nodes", "drain", a.nodeID, "--timeout", "60s"); err != nil {
		t.Fatal(err)
	}
	rep := drained.GetReport()
	if rep.GetResult() != kubev1.DrainResult_DRAIN_RESULT_SUCCEEDED || len(rep.GetEvicted()) != 1 || !strings.HasPrefix(rep.GetEvicted()[0].GetName(), "db-") || len(rep.GetBlocked()) != 0 || !rep.GetNode().GetUnschedulable() {
		t.Errorf("drain without the PDB: %v", rep)
	}

	// The API lists the service; the audit trail has the actions.
	cfg := loadAdminConfig(t, c.adminConfig)
	caPath, certPath, keyPath := writePEMFiles(t, t.TempDir(), cfg.CA, cfg.Certificate, cfg.Key)
	if stdout, stderr, err := grpcurl("-cacert", caPath, "-cert", certPath, "-key", keyPath, c.addr(), "list"); err != nil || !strings.Contains(stdout, "budfleet.kube.v1.ClusterService") {
		t.Errorf("grpcurl list: %v\n%s%s", err, stdout, stderr)
	}
	logs := readLog(c.logPath)
	for _, action := range []string{"cluster.add", "node.cordon", "node.uncordon", "node.drain"} {
		if !strings.Contains(logs, `"action":"`+action+`"`) {
			t.Errorf("the controller did not audit-log %s", action)
		}
	}
	if strings.Contains(logs, "PRIVATE KEY") {
		t.Error("the controller log holds a private key")
	}
}

// runDB runs a one-pod Deployment "db" on node (its pods name it: there is
// no scheduler) under a PodDisruptionBudget db-pdb with maxUnavailable 0,
// and waits for the budget's status.
func runDB(t *testing.T, cp *kubetest.ControlPlane, ns, node string) {
	t.Helper()
	ctx := t.Context()
	labels := map[string]string{"app": "db"}
	one := int32(1)
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: &one,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					NodeName:                      node,
					Containers:                    []corev1.Container{{Name: "db", Image: "registry.invalid/db:1"}},
					TerminationGracePeriodSeconds: new(int64(1)),
				},
			},
		},
	}
	if _, err := cp.Client.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pdb := &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: "db-pdb", Namespace: ns},
		Spec: policyv1.PodDisruptionBudgetSpec{
			MaxUnavailable: new(intstr.FromInt32(0)),
			Selector:       &metav1.LabelSelector{MatchLabels: labels},
		},
	}
	if _, err := cp.Client.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, pdb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		got, err := cp.Client.PolicyV1().PodDisruptionBudgets(ns).Get(ctx, "db-pdb", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return got.Status.ObservedGeneration == got.Generation && got.Status.ExpectedPods == 1 && got.Status.CurrentHealthy == 1, nil
	}); err != nil {
		t.Fatalf("db running under db-pdb: %v", err)
	}
}
