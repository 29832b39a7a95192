package kube

// Against a real control plane (internal/kubetest: etcd, kube-apiserver,
// kube-controller-manager and kwok): adding clusters good and bad, the
// mapping, cordon and uncordon, drains that succeed, that kubectl's filters
// stop, and one a PodDisruptionBudget holds until its timeout.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/util/retry"

	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/internal/kubetest"
	"github.com/bud-ecosystem/budfleet/pki"
)

func TestAgainstControlPlane(t *testing.T) {
	cp := kubetest.Start(t, kubetest.WithControllerManager(), kubetest.WithKwok())
	st := openStore(t)
	m, err := New(Options{Store: st, Logger: discard(), CheckTimeout: 2 * time.Second, EvictRetryDelay: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	noClusters := func(t *testing.T) {
		t.Helper()
		if cs, err := st.ListClusters(ctx); err != nil || len(cs) != 0 {
			t.Errorf("clusters stored: %v, %v; want none", cs, err)
		}
	}

	t.Run("bad kubeconfigs store nothing", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			kc     []byte
			is     error
			saying []string
		}{
			{"malformed", []byte("apiVersion: v1\nkind: Config\nclusters: [{{\n"), ErrInvalid, []string{"not a kubeconfig file"}},
			{"unreachable port", withServer(t, cp, "https://"+closedAddr(t)), ErrUnreachable, []string{"connection refused", "nothing listens at https://127.0.0.1:"}},
			{"wrong CA", withCA(t, cp), ErrUnreachable, []string{"certificate signed by unknown authority", "certificate-authority-data"}},
			{"wrong token", withUser(t, cp, &clientcmdapi.AuthInfo{Token: "not-a-token-of-this-cluster"}), ErrUnreachable, []string{"401 Unauthorized", "bearer token"}},
			{"user without rights", withUser(t, cp, clientCertUser(t, cp, "nobody")), ErrUnreachable, []string{`user "nobody" may not get nodes`, "patch nodes", "create pods/eviction"}},
			{"no answer", withServer(t, cp, "https://"+silentAddr(t)), ErrUnreachable, []string{"within 2s (timeout)"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				began := time.Now()
				_, err := m.AddCluster(ctx, "dc1", tc.kc, "alice")
				if !errors.Is(err, tc.is) {
					t.Fatalf("AddCluster = %v, want %v", err, tc.is)
				}
				for _, s := range tc.saying {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("AddCluster error %q does not say %q", err, s)
					}
				}
				if took := time.Since(began); took > 10*time.Second {
					t.Errorf("AddCluster took %v", took)
				}
				t.Logf("%s: %v", tc.name, err)
				noClusters(t)
			})
		}
		if _, err := m.AddCluster(ctx, "DC 1", cp.Kubeconfig, "alice"); !errors.Is(err, ErrInvalid) {
			t.Errorf("AddCluster with a bad name = %v", err)
		}
		noClusters(t)
	})

	t.Run("add", func(t *testing.T) {
		ci, err := m.AddCluster(ctx, "dc1", cp.Kubeconfig, "alice")
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(cp.CAPEM)
		sum := sha256.Sum256(blk.Bytes)
		if ci.Name != "dc1" || ci.Server != cp.URL || ci.CAFingerprint != "sha256:"+hex.EncodeToString(sum[:]) || ci.Insecure || ci.AddedBy != "alice" {
			t.Errorf("ClusterInfo %+v", ci)
		}
		if !ci.Check.Reachable || ci.Check.ServerVersion != kubetest.Version || ci.Check.AuthenticatedAs == "" || ci.Check.Reason != "" {
			t.Errorf("check %+v", ci.Check)
		}
		if _, err := m.AddCluster(ctx, "dc1", cp.Kubeconfig, "bob"); !errors.Is(err, store.ErrAlreadyExists) {
			t.Errorf("AddCluster twice = %v", err)
		}
		list, err := m.Clusters(ctx)
		if err != nil || len(list) != 1 || !list[0].Check.Reachable || list[0].AddedBy != "alice" {
			t.Errorf("Clusters = %+v, %v", list, err)
		}
		got, err := m.Cluster(ctx, "dc1")
		if err != nil || !got.Check.Reachable || got.Check.ServerVersion != kubetest.Version {
			t.Errorf("Cluster(dc1) = %+v, %v", got, err)
		}
		if _, err := m.Cluster(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Cluster(nope) = %v", err)
		}
		// The stored kubeconfig is the current context alone, credentials in.
		sc, err := st.GetCluster(ctx, "dc1")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := clientcmd.RESTConfigFromKubeConfig(sc.Kubeconfig); err != nil {
			t.Errorf("stored kubeconfig: %v", err)
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	t.Run("cordon and uncordon", func(t *testing.T) {
		cp.AddKwokNode("kwok-a", nil)
		cp.AddKwokNode("kwok-b", nil)
		byHost := FleetNode{ID: "n-a", Hostname: "KWOK-A"}
		s, err := m.NodeState(ctx, byHost)
		if err != nil || !s.Exists || !s.Ready || s.Unschedulable || s.Node != "kwok-a" || s.Cluster != "dc1" || s.MappedBy != "hostname" {
			t.Fatalf("NodeState = %+v, %v", s, err)
		}
		for _, want := range []bool{true, true, false, false} {
			op := m.Cordon
			if !want {
				op = m.Uncordon
			}
			if err := op(ctx, byHost); err != nil {
				t.Fatalf("cordon %v: %v", want, err)
			}
			if got := kubeNode(t, cp, "kwok-a").Spec.Unschedulable; got != want {
				t.Errorf("kwok-a unschedulable %v, want %v", got, want)
			}
			if s, err := m.NodeState(ctx, byHost); err != nil || s.Unschedulable != want || !s.Ready {
				t.Errorf("NodeState = %+v, %v", s, err)
			}
		}

		// Names differ: the label says which Node.
		byLabel := FleetNode{ID: "n-b", Hostname: "gpu-host-17", Labels: map[string]string{LabelK8sNode: "kwok-b"}}
		if err := m.Cordon(ctx, byLabel); err != nil {
			t.Fatal(err)
		}
		if !kubeNode(t, cp, "kwok-b").Spec.Unschedulable || kubeNode(t, cp, "kwok-a").Spec.Unschedulable {
			t.Error("cordon by label did not cordon kwok-b alone")
		}
		if s, _ := m.NodeState(ctx, byLabel); s.Node != "kwok-b" || s.MappedBy != "label "+LabelK8sNode || !s.Unschedulable {
			t.Errorf("NodeState by label = %+v", s)
		}
		if err := m.Uncordon(ctx, byLabel); err != nil {
			t.Fatal(err)
		}

		// A fleet node without a Kubernetes Node.
		none := FleetNode{ID: "n-x", Hostname: "not-in-k8s"}
		err = m.Cordon(ctx, none)
		if !errors.Is(err, ErrNodeNotFound) || !strings.Contains(err.Error(), `Kubernetes Node "not-in-k8s" (by hostname) in cluster dc1`) {
			t.Errorf("Cordon of a node with no Node = %v", err)
		}
		if s, err := m.NodeState(ctx, none); err != nil || s.Exists {
			t.Errorf("NodeState of a node with no Node = %+v, %v", s, err)
		}
	})

	t.Run("taints", func(t *testing.T) {
		// kwok-b carries a taint of someone else's; SetTaint keeps it.
		other := corev1.Taint{Key: "example.com/other", Value: "x", Effect: corev1.TaintEffectNoExecute}
		if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			kn := kubeNode(t, cp, "kwok-b") // kwok writes its status meanwhile
			kn.Spec.Taints = append(kn.Spec.Taints, other)
			_, err := cp.Client.CoreV1().Nodes().Update(ctx, kn, metav1.UpdateOptions{})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		n := FleetNode{ID: "n-b", Hostname: "kwok-b"}
		gpu := corev1.Taint{Key: "nvidia.com/gpu.unhealthy", Value: "true", Effect: corev1.TaintEffectNoSchedule}
		taints := func() []string {
			var out []string
			for _, x := range kubeNode(t, cp, "kwok-b").Spec.Taints {
				// The node lifecycle controller's own (not-ready while a
				// loaded machine delays kwok's heartbeats) come and go.
				if !strings.HasPrefix(x.Key, "node.kubernetes.io/") {
					out = append(out, x.ToString())
				}
			}
			slices.Sort(out)
			return out
		}
		for _, step := range []struct {
			taint   corev1.Taint
			present bool
			want    []string
		}{
			{gpu, true, []string{"example.com/other=x:NoExecute", "nvidia.com/gpu.unhealthy=true:NoSchedule"}},
			{gpu, true, []string{"example.com/other=x:NoExecute", "nvidia.com/gpu.unhealthy=true:NoSchedule"}}, // again: unchanged
			{corev1.Taint{Key: gpu.Key, Value: "xid-79", Effect: gpu.Effect}, true, []string{"example.com/other=x:NoExecute", "nvidia.com/gpu.unhealthy=xid-79:NoSchedule"}},
			{gpu, false, []string{"example.com/other=x:NoExecute"}},
			{gpu, false, []string{"example.com/other=x:NoExecute"}},
		} {
			if err := m.SetTaint(ctx, n, step.taint, step.present); err != nil {
				t.Fatalf("SetTaint(%s, %v): %v", step.taint.ToString(), step.present, err)
			}
			if got := taints(); !slices.Equal(got, step.want) {
				t.Errorf("after SetTaint(%s, %v): taints %v, want %v", step.taint.ToString(), step.present, got, step.want)
			}
		}
		if err := m.SetTaint(ctx, FleetNode{ID: "n-x", Hostname: "not-in-k8s"}, gpu, true); !errors.Is(err, ErrNodeNotFound) {
			t.Errorf("SetTaint of a node with no Node = %v, want ErrNodeNotFound", err)
		}
	})

	const ns = "work"
	cp.CreateNamespace(ns)

	t.Run("drain", func(t *testing.T) {
		cp.AddKwokNode("kwok-d", map[string]string{"role": "drain"})
		createDeployment(t, cp, ns, "web", "kwok-d", 2)
		web := waitRunning(t, cp, ns, "app=web", 2)
		agent := runDaemonSet(t, cp, ns, "agent", "kwok-d")
		n := FleetNode{ID: "n-d", Hostname: "kwok-d"}

		// Not ignoring DaemonSets: kubectl's filter stops the drain before
		// any eviction, naming the pod.
		opts := DefaultDrainOptions()
		opts.IgnoreDaemonSets = false
		rep, err := m.Drain(ctx, n, opts)
		if !errors.Is(err, ErrDrainBlocked) || rep.Result != DrainFailed || len(rep.Evicted) != 0 {
			t.Fatalf("drain without ignoring DaemonSets = %v; report %+v", err, rep)
		}
		if len(rep.Blocked) != 1 || rep.Blocked[0].PodRef != (PodRef{ns, agent.Name}) || !strings.Contains(rep.Blocked[0].Reason, "DaemonSet-managed Pods (use --ignore-daemonsets") {
			t.Errorf("blocked %+v", rep.Blocked)
		}
		if len(waitRunning(t, cp, ns, "app=web", 2)) != 2 {
			t.Error("web pods gone after a drain that evicted nothing")
		}
		if !kubeNode(t, cp, "kwok-d").Spec.Unschedulable {
			t.Error("the drain did not cordon kwok-d")
		}

		opts = DefaultDrainOptions()
		opts.Timeout = time.Minute
		began := time.Now()
		rep, err = m.Drain(ctx, n, opts)
		t.Logf("drain in %v: %+v\n%s", time.Since(began), rep, rep.Output)
		if err != nil || rep.Result != DrainSucceeded || len(rep.Blocked) != 0 {
			t.Fatalf("drain = %v; report %+v", err, rep)
		}
		var want []PodRef
		for _, p := range web {
			want = append(want, PodRef{ns, p.Name})
		}
		slices.SortFunc(want, func(a, b PodRef) int { return strings.Compare(a.String(), b.String()) })
		if fmt.Sprint(rep.Evicted) != fmt.Sprint(want) {
			t.Errorf("evicted %v, want %v", rep.Evicted, want)
		}
		if !slices.ContainsFunc(rep.Warnings, func(w string) bool {
			return strings.HasPrefix(w, "ignoring DaemonSet-managed Pods") && strings.Contains(w, ns+"/"+agent.Name)
		}) {
			t.Errorf("warnings %q do not name the DaemonSet pod", rep.Warnings)
		}
		if rep.Message != "drained Node kwok-d in cluster dc1: evicted 2 pods" {
			t.Errorf("message %q", rep.Message)
		}
		for _, p := range web {
			if got, err := cp.Client.CoreV1().Pods(ns).Get(ctx, p.Name, metav1.GetOptions{}); err == nil && got.UID == p.UID {
				t.Errorf("pod %s is still there", p.Name)
			}
		}
		if got, err := cp.Client.CoreV1().Pods(ns).Get(ctx, agent.Name, metav1.GetOptions{}); err != nil || got.UID != agent.UID || got.DeletionTimestamp != nil {
			t.Errorf("DaemonSet pod after the drain: %v, %v; want it untouched", got, err)
		}
	})

	t.Run("pdb blocks the drain", func(t *testing.T) {
		cp.AddKwokNode("kwok-p", nil)
		createDeployment(t, cp, ns, "db", "kwok-p", 1)
		db := waitRunning(t, cp, ns, "app=db", 1)[0]
		createPDB(t, cp, ns, "db-pdb", "db")
		opts := DefaultDrainOptions()
		opts.Timeout = 3 * time.Second
		began := time.Now()
		rep, err := m.Drain(ctx, FleetNode{ID: "n-p", Hostname: "kwok-p"}, opts)
		took := time.Since(began)
		t.Logf("drain returned after %v: %v\n%s", took, err, rep.Output)
		if !errors.Is(err, ErrDrainBlocked) || rep.Result != DrainTimedOut {
			t.Fatalf("drain under the PDB = %v (result %q), want ErrDrainBlocked, timed out", err, rep.Result)
		}
		if took < opts.Timeout {
			t.Errorf("drain gave up after %v, before its %v timeout", took, opts.Timeout)
		}
		if len(rep.Blocked) != 1 || rep.Blocked[0].PodRef != (PodRef{ns, db.Name}) || rep.Blocked[0].PDB != "db-pdb" || !strings.Contains(rep.Blocked[0].Reason, "disruption budget") {
			t.Errorf("blocked %+v", rep.Blocked)
		}
		for _, s := range []string{"timed out after 3s", ns + "/" + db.Name, "PodDisruptionBudget db-pdb"} {
			if !strings.Contains(rep.Message, s) || !strings.Contains(err.Error(), s) {
				t.Errorf("message %q / error %q does not say %q", rep.Message, err, s)
			}
		}
		if got, err := cp.Client.CoreV1().Pods(ns).Get(ctx, db.Name, metav1.GetOptions{}); err != nil || got.UID != db.UID {
			t.Errorf("pod under the PDB: %v", err)
		}
	})

	t.Run("remove", func(t *testing.T) {
		if err := m.RemoveCluster(ctx, "dc1"); err != nil {
			t.Fatal(err)
		}
		if err := m.RemoveCluster(ctx, "dc1"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("RemoveCluster twice = %v", err)
		}
		if err := m.Cordon(ctx, FleetNode{ID: "n-a", Hostname: "kwok-a"}); !errors.Is(err, ErrNoCluster) {
			t.Errorf("Cordon after the cluster was removed = %v", err)
		}
	})
}

func kubeNode(t *testing.T, cp *kubetest.ControlPlane, name string) *corev1.Node {
	t.Helper()
	n, err := cp.Client.CoreV1().Nodes().Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// adminConfig is cp's admin kubeconfig, parsed, for changing.
func adminConfig(t *testing.T, cp *kubetest.ControlPlane) *clientcmdapi.Config {
	t.Helper()
	cfg, err := clientcmd.Load(cp.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func withServer(t *testing.T, cp *kubetest.ControlPlane, server string) []byte {
	cfg := adminConfig(t, cp)
	for _, c := range cfg.Clusters {
		c.Server = server
	}
	return write(t, cfg)
}

// withCA has another CA's certificate in place of cp's.
func withCA(t *testing.T, cp *kubetest.ControlPlane) []byte {
	other, _ := testCert(t, "another-ca")
	cfg := adminConfig(t, cp)
	for _, c := range cfg.Clusters {
		c.CertificateAuthorityData = other
	}
	return write(t, cfg)
}

func withUser(t *testing.T, cp *kubetest.ControlPlane, ai *clientcmdapi.AuthInfo) []byte {
	cfg := adminConfig(t, cp)
	for name := range cfg.AuthInfos {
		cfg.AuthInfos[name] = ai
	}
	return write(t, cfg)
}

// clientCertUser is a user with a client certificate from cp's CA, in no
// group: authenticated, allowed nothing beyond the defaults.
func clientCertUser(t *testing.T, cp *kubetest.ControlPlane, cn string) *clientcmdapi.AuthInfo {
	t.Helper()
	caPEM, err := os.ReadFile(cp.CACertFile)
	if err != nil {
		t.Fatal(err)
	}
	caKeyPEM, err := os.ReadFile(cp.CAKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.DecodeCert(caPEM)
	if err != nil {
		t.Fatal(err)
	}
	caKey, err := pki.DecodeKey(caKeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(now.UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := pki.EncodeKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return &clientcmdapi.AuthInfo{ClientCertificateData: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), ClientKeyData: keyPEM}
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// silentAddr accepts connections and never answers.
func silentAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

func podSpec(nodeName string) corev1.PodSpec {
	return corev1.PodSpec{
		NodeName: nodeName,
		Containers: []corev1.Container{{
			Name:         "app",
			Image:        "registry.invalid/app:1",
			VolumeMounts: []corev1.VolumeMount{{Name: "scratch", MountPath: "/scratch"}},
		}},
		// emptyDir data is what DeleteEmptyDirData is for.
		Volumes:                       []corev1.Volume{{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
		TerminationGracePeriodSeconds: new(int64(1)),
	}
}

// createDeployment makes a Deployment whose pods name nodeName (there is
// no scheduler).
func createDeployment(t *testing.T, cp *kubetest.ControlPlane, ns, name, nodeName string, replicas int32) {
	t.Helper()
	labels := map[string]string{"app": name}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: podSpec(nodeName)},
		},
	}
	if _, err := cp.Client.AppsV1().Deployments(ns).Create(t.Context(), d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// runDaemonSet makes a DaemonSet for the nodes labelled role=drain and,
// standing in for the scheduler, binds its pod to nodeName; it returns the
// pod once Running.
func runDaemonSet(t *testing.T, cp *kubetest.ControlPlane, ns, name, nodeName string) corev1.Pod {
	t.Helper()
	ctx := t.Context()
	labels := map[string]string{"app": name}
	spec := podSpec("")
	spec.NodeSelector = map[string]string{"role": "drain"}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: appsv1.DaemonSetSpec{
			Selector:       &metav1.LabelSelector{MatchLabels: labels},
			Template:       corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: spec},
			UpdateStrategy: appsv1.DaemonSetUpdateStrategy{Type: appsv1.OnDeleteDaemonSetStrategyType},
		},
	}
	if _, err := cp.Client.AppsV1().DaemonSets(ns).Create(ctx, ds, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var pending string
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := cp.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
		if err != nil || len(list.Items) == 0 {
			return false, nil
		}
		pending = list.Items[0].Name
		return true, nil
	}); err != nil {
		t.Fatalf("the DaemonSet controller made no pod: %v", err)
	}
	if err := cp.Client.CoreV1().Pods(ns).Bind(ctx, &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: pending, Namespace: ns},
		Target:     corev1.ObjectReference{Kind: "Node", Name: nodeName},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("bind %s to %s: %v", pending, nodeName, err)
	}
	return waitRunning(t, cp, ns, "app="+name, 1)[0]
}

// createPDB makes a PodDisruptionBudget with maxUnavailable 0 for app and
// waits until the disruption controller has computed its status.
func createPDB(t *testing.T, cp *kubetest.ControlPlane, ns, name, app string) {
	t.Helper()
	ctx := t.Context()
	pdb := &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: policyv1.PodDisruptionBudgetSpec{
			MaxUnavailable: new(intstr.FromInt32(0)),
			Selector:       &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}},
		},
	}
	if _, err := cp.Client.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, pdb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		got, err := cp.Client.PolicyV1().PodDisruptionBudgets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return got.Status.ObservedGeneration == got.Generation && got.Status.ExpectedPods >= 1 && got.Status.CurrentHealthy >= 1, nil
	}); err != nil {
		t.Fatalf("%s status not computed: %v", name, err)
	}
}

// waitRunning waits until exactly n pods match selector, all Running and
// none being deleted, and returns them.
func waitRunning(t *testing.T, cp *kubetest.ControlPlane, ns, selector string, n int) []corev1.Pod {
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
