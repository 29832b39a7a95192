package controller

// ClusterService.JoinNode against a real API server (internal/kubetest):
// the bootstrap token Secret and the kubeadm-style RBAC it makes
// (idempotently), the join spec it queues (GPU labels and taint, the
// operator's, the artifacts found), the token redacted from every answer,
// bad input and missing artifacts queueing nothing, and the phase GetNode
// shows as the agent reports it.

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bud-ecosystem/budfleet/command"
	"github.com/bud-ecosystem/budfleet/controller/kube"
	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/internal/kubetest"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
	hostv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/host/v1"
	kubev1 "github.com/bud-ecosystem/budfleet/proto/budfleet/kube/v1"
)

// fakeArtifacts is an artifact store's metadata: name@version/platform to
// digest.
type fakeArtifacts map[string]string

func (f fakeArtifacts) LookupArtifact(_ context.Context, name, version, platform string) (string, string, error) {
	for k, d := range f {
		n, rest, _ := strings.Cut(k, "@")
		v, p, _ := strings.Cut(rest, "/")
		if n == name && (version == "" || v == version) && "linux/"+p == platform {
			return d, v, nil
		}
	}
	return "", "", fmt.Errorf("artifact %s %s for %s: %w", name, version, platform, store.ErrNotFound)
}

func digest(c byte) string { return "sha256:" + strings.Repeat(string(c), 64) }

func TestJoinNode(t *testing.T) {
	cp := kubetest.Start(t)
	e := newTestServer(t)
	ctx := t.Context()
	if _, err := e.srv.kube.AddCluster(ctx, "k1", cp.Kubeconfig, "test"); err != nil {
		t.Fatal(err)
	}
	addNode(t, e, "n1")
	if _, err := e.store.UpdateNode(ctx, "n1", func(n *store.Node) error {
		n.Inventory = &hostv1.Inventory{Hostname: "h-n1", Architecture: "amd64"}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := (&gpuReports{srv: e.srv}).recordInventory(ctx, "n1", gpuTestInventory("r", gpuTestH100, 8, 81920)); err != nil {
		t.Fatal(err)
	}
	e.srv.opts.JoinArtifacts = fakeArtifacts{
		"kubelet@v1.37.2/amd64":    digest('a'),
		"containerd@1.7.28/amd64":  digest('b'),
		"pause-image@3.10/amd64":   digest('c'),
		"kubelet@v1.36.0/arm64":    digest('d'),
		"cni-plugins@1.6.2/amd64":  digest('e'),
		"runc@v1.3.0/amd64":        digest('f'),
		"kubelet@v1.37.2/arm64":    digest('9'),
		"unrelated@1.0/amd64":      digest('8'),
		"pause-image@3.9/arm64":    digest('7'),
		"busybox-image@1.36/amd64": digest('6'),
	}
	api := e.srv.ClusterAPI()
	secrets := func() int {
		l, err := cp.Client.CoreV1().Secrets(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{FieldSelector: "type=" + string(corev1.SecretType("bootstrap.kubernetes.io/token"))})
		if err != nil {
			t.Fatal(err)
		}
		return len(l.Items)
	}
	joins := func() int {
		cs, err := e.store.ListCommands(ctx, "n1")
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, c := range cs {
			if c.Kind == command.KubeletJoin {
				n++
			}
		}
		return n
	}

	resp, err := api.JoinNode(ctx, &kubev1.JoinNodeRequest{
		NodeId: "n1", Cluster: "k1", Labels: map[string]string{"budfleet.io/pool": "a"},
		Taints: []string{"dedicated=ml:NoExecute"}, Images: []string{"pause-image@3.10", "busybox-image"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetKubeletVersion() != kubetest.Version {
		t.Errorf("kubelet version %s, want the API server's %s", resp.GetKubeletVersion(), kubetest.Version)
	}
	if resp.GetNode().GetName() != "h-n1" || resp.GetNode().GetCluster() != "k1" {
		t.Errorf("joins %+v", resp.GetNode())
	}

	t.Run("the join spec", func(t *testing.T) {
		c, err := e.store.GetCommand(ctx, resp.GetCommandId())
		if err != nil {
			t.Fatal(err)
		}
		s, err := command.ParseKubeletJoin(c.Params)
		if err != nil {
			t.Fatal(err)
		}
		if s.Server != cp.URL || s.CAPEM != string(cp.CAPEM) || s.NodeName != "h-n1" || !s.GPU || s.Cluster != "k1" {
			t.Errorf("spec %+v", s)
		}
		for k, v := range map[string]string{"nvidia.com/gpu": "true", "node.kubernetes.io/gpu": "true", "nvidia.com/gpu.count": "8", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "budfleet.io/pool": "a"} {
			if s.Labels[k] != v {
				t.Errorf("label %s=%q, want %q", k, s.Labels[k], v)
			}
		}
		if strings.Join(s.Taints, ",") != "dedicated=ml:NoExecute,nvidia.com/gpu=true:NoSchedule" {
			t.Errorf("taints %v", s.Taints)
		}
		var got []string
		for _, a := range s.Artifacts {
			got = append(got, a.Kind+"="+a.Name+"@"+a.Version+"="+a.Digest[7:8])
		}
		want := "kubelet=kubelet@v1.37.2=a containerd=containerd@1.7.28=b runc=runc@v1.3.0=f cni-plugins=cni-plugins@1.6.2=e image=pause-image@3.10=c image=busybox-image@1.36=6"
		if strings.Join(got, " ") != want {
			t.Errorf("artifacts\n %s\nwant\n %s", strings.Join(got, " "), want)
		}
	})

	t.Run("the bootstrap token Secret", func(t *testing.T) {
		sec, err := cp.Client.CoreV1().Secrets(metav1.NamespaceSystem).Get(ctx, "bootstrap-token-"+resp.GetTokenId(), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if sec.Type != "bootstrap.kubernetes.io/token" || string(sec.Data["usage-bootstrap-authentication"]) != "true" ||
			string(sec.Data["auth-extra-groups"]) != "system:bootstrappers:budfleet" || string(sec.Data["token-id"]) != resp.GetTokenId() {
			t.Errorf("secret %s: type %s data %v", sec.Name, sec.Type, sec.Data)
		}
		exp, err := time.Parse(time.RFC3339, string(sec.Data["expiration"]))
		if err != nil || !exp.Equal(base.Add(kube.DefaultBootstrapTokenTTL)) || !resp.GetTokenExpiresAt().AsTime().Equal(exp) {
			t.Errorf("expiration %v (%v), want %v", exp, err, base.Add(kube.DefaultBootstrapTokenTTL))
		}
		if _, ok := sec.Data["usage-bootstrap-signing"]; ok {
			t.Error("the token may sign the cluster-info ConfigMap; it is for authentication only")
		}
	})

	checkRBAC := func(t *testing.T) {
		t.Helper()
		for name, want := range map[string]string{
			"kubeadm:kubelet-bootstrap":                     "system:node-bootstrapper Group/system:bootstrappers:budfleet",
			"kubeadm:node-autoapprove-bootstrap":            "system:certificates.k8s.io:certificatesigningrequests:nodeclient Group/system:bootstrappers:budfleet",
			"kubeadm:node-autoapprove-certificate-rotation": "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient Group/system:nodes",
		} {
			b, err := cp.Client.RbacV1().ClusterRoleBindings().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			var subj []string
			for _, s := range b.Subjects {
				subj = append(subj, s.Kind+"/"+s.Name)
			}
			if got := b.RoleRef.Name + " " + strings.Join(subj, ","); !strings.HasSuffix(got, strings.Fields(want)[1]) || !strings.HasPrefix(got, strings.Fields(want)[0]+" ") {
				t.Errorf("%s: %s, want %s", name, got, want)
			}
		}
	}
	t.Run("the RBAC", checkRBAC)

	t.Run("joining again makes a new token and the same RBAC", func(t *testing.T) {
		before := secrets()
		if _, err := api.JoinNode(ctx, &kubev1.JoinNodeRequest{NodeId: "n1", Cluster: "k1"}); err != nil {
			t.Fatal(err)
		}
		if secrets() != before+1 {
			t.Errorf("%d token secrets, want %d", secrets(), before+1)
		}
		checkRBAC(t)
	})

	t.Run("an existing binding lacking the group gets it; one of another role is an error", func(t *testing.T) {
		crbs := cp.Client.RbacV1().ClusterRoleBindings()
		if err := crbs.Delete(ctx, "kubeadm:kubelet-bootstrap", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := crbs.Create(ctx, &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "kubeadm:kubelet-bootstrap"},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:node-bootstrapper"},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: "system:bootstrappers:kubeadm:default-node-token"}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := kube.EnsureBootstrapRBAC(ctx, cp.Client); err != nil {
			t.Fatal(err)
		}
		b, err := crbs.Get(ctx, "kubeadm:kubelet-bootstrap", metav1.GetOptions{})
		if err != nil || len(b.Subjects) != 2 || b.Subjects[0].Name != "system:bootstrappers:kubeadm:default-node-token" {
			t.Errorf("kubeadm's subject lost or ours not added: %+v %v", b.Subjects, err)
		}
		b.RoleRef.Name = "cluster-admin"
		if err := crbs.Delete(ctx, b.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		b.ResourceVersion = ""
		if _, err := crbs.Create(ctx, b, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		before := secrets()
		_, err = api.JoinNode(ctx, &kubev1.JoinNodeRequest{NodeId: "n1"})
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "binds ClusterRole cluster-admin, not system:node-bootstrapper") {
			t.Errorf("join with a hijacked binding: %v", err)
		}
		if secrets() != before {
			t.Error("a token was minted anyway")
		}
		if err := crbs.Delete(ctx, b.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("answers never carry the token", func(t *testing.T) {
		l, err := e.srv.FleetAPI().ListCommands(ctx, &fleetv1.ListCommandsRequest{NodeId: "n1"})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range l.GetCommands() {
			if c.GetKind() == command.KubeletJoin && c.GetParams()[command.ParamJoinSpec] != command.Redacted {
				t.Errorf("command %s params %v", c.GetId(), c.GetParams())
			}
		}
	})

	t.Run("bad input and missing artifacts queue nothing", func(t *testing.T) {
		for _, tc := range []struct {
			req    *kubev1.JoinNodeRequest
			code   codes.Code
			saying string
		}{
			{&kubev1.JoinNodeRequest{NodeId: "n1", KubeletVersion: "v1.38.0"}, codes.FailedPrecondition, "no kubelet v1.38.0 artifact for linux/amd64"},
			{&kubev1.JoinNodeRequest{NodeId: "n1", KubeletVersion: "1.37"}, codes.InvalidArgument, "want a release such as v1.37.2"},
			{&kubev1.JoinNodeRequest{NodeId: "n1", Taints: []string{"a=b:Sometimes"}}, codes.InvalidArgument, "is not NoSchedule, PreferNoSchedule or NoExecute"},
			{&kubev1.JoinNodeRequest{NodeId: "n1", Labels: map[string]string{"bad key": "v"}}, codes.InvalidArgument, "label key"},
			{&kubev1.JoinNodeRequest{NodeId: "n1", Images: []string{"missing-image"}}, codes.FailedPrecondition, "no image artifact missing-image"},
			{&kubev1.JoinNodeRequest{NodeId: "n1", Cluster: "k9"}, codes.FailedPrecondition, "belongs to cluster k1"},
			{&kubev1.JoinNodeRequest{NodeId: "nope"}, codes.NotFound, "nope"},
		} {
			before, sb := joins(), secrets()
			_, err := api.JoinNode(ctx, tc.req)
			if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.saying) {
				t.Errorf("%v: %v, want %s saying %q", tc.req, err, tc.code, tc.saying)
			}
			if joins() != before || secrets() != sb {
				t.Errorf("%v queued a join or minted a token", tc.req)
			}
		}
	})

	t.Run("without an artifact store the spec names none", func(t *testing.T) {
		prev := e.srv.opts.JoinArtifacts
		e.srv.opts.JoinArtifacts = nil
		defer func() { e.srv.opts.JoinArtifacts = prev }()
		r, err := api.JoinNode(ctx, &kubev1.JoinNodeRequest{NodeId: "n1"})
		if err != nil {
			t.Fatal(err)
		}
		if len(r.GetArtifacts()) != 0 {
			t.Errorf("artifacts %v", r.GetArtifacts())
		}
		if _, err := api.JoinNode(ctx, &kubev1.JoinNodeRequest{NodeId: "n1", Images: []string{"x"}}); status.Code(err) != codes.FailedPrecondition {
			t.Errorf("images without a store: %v", err)
		}
	})

	t.Run("GetNode shows the phase the agent reports", func(t *testing.T) {
		r, err := api.JoinNode(ctx, &kubev1.JoinNodeRequest{NodeId: "n1"})
		if err != nil {
			t.Fatal(err)
		}
		e.clock.Advance(time.Second)
		phase := func() *kubev1.KubeletJoin {
			t.Helper()
			g, err := e.srv.FleetAPI().GetNode(ctx, &fleetv1.GetNodeRequest{Id: "n1"})
			if err != nil {
				t.Fatal(err)
			}
			j := g.GetNode().GetKubeletJoin()
			if j.GetCommandId() != r.GetCommandId() {
				t.Fatalf("GetNode shows join %s, want the latest %s", j.GetCommandId(), r.GetCommandId())
			}
			return j
		}
		if p := phase(); p.GetPhase() != "queued" || p.GetCluster() != "k1" || p.GetNodeName() != "h-n1" {
			t.Errorf("queued join: %+v", p)
		}
		update := func(fn func(*store.Command)) {
			if _, err := e.store.UpdateCommand(ctx, r.GetCommandId(), func(c *store.Command) error { fn(c); return nil }); err != nil {
				t.Fatal(err)
			}
		}
		update(func(c *store.Command) {
			c.State = store.CommandDelivered
			c.OutputTail = &store.OutputTail{Stdout: []byte(command.JoinPhaseLine(command.JoinPreparing, "checking") + command.JoinPhaseLine(command.JoinInstalling, "kubelet v1.37.2")), UpdatedAt: base.Add(2 * time.Second)}
		})
		if p := phase(); p.GetPhase() != command.JoinInstalling || p.GetReason() != "kubelet v1.37.2" {
			t.Errorf("installing: %+v", p)
		}
		update(func(c *store.Command) {
			c.State = store.CommandFailed
			c.Message = "starting: containerd did not answer"
			c.Output = map[string]string{command.OutputJoinPhase: command.JoinFailed, command.OutputJoinReason: "containerd did not answer"}
			c.FinishedAt = base.Add(3 * time.Second)
		})
		if p := phase(); p.GetPhase() != command.JoinFailed || p.GetReason() != "containerd did not answer" {
			t.Errorf("failed: %+v", p)
		}
	})
}
