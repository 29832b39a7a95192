package controller

// The cluster service without a cluster: who may call it, bad input, no
// credentials in any answer, the audit trail. With a real control plane:
// controller/kube's tests and test/e2e.

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/bud-ecosystem/budfleet/controller/kube"
	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/pki"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
	kubev1 "github.com/bud-ecosystem/budfleet/proto/budfleet/kube/v1"
)

// Every ClusterService method needs an admin operator certificate.
func TestClusterServiceAccess(t *testing.T) {
	c := issueCerts(t)
	desc := kubev1.ClusterService_ServiceDesc
	if len(desc.Methods) != 8 {
		t.Errorf("ClusterService has %d methods; this test expects 8, update it", len(desc.Methods))
	}
	for _, m := range desc.Methods {
		method := "/" + desc.ServiceName + "/" + m.MethodName
		if methodAccess(method) != accessOperator {
			t.Errorf("%s is not operator-only", method)
		}
		for _, tc := range []struct {
			who  string
			ctx  context.Context
			want codes.Code
		}{
			{"admin", withPeer(c.admin, c.ca.Cert), codes.OK},
			{"viewer", withPeer(c.viewer, c.ca.Cert), roleCode(pki.RoleViewer, method)},
			{"node", withPeer(c.node, c.ca.Cert), codes.PermissionDenied},
			{"no cert", withPeer(nil, nil), codes.Unauthenticated},
		} {
			if _, err := authorize(tc.ctx, method); status.Code(err) != tc.want {
				t.Errorf("%s calling %s: %v, want %s", tc.who, method, err, tc.want)
			}
		}
	}
}

// auditEnv is a test server with an audit log.
type auditEnv struct {
	*testEnv
	auditPath string
}

func newAuditedServer(t *testing.T) *auditEnv {
	t.Helper()
	e := newTestServer(t)
	path := filepath.Join(t.TempDir(), AuditLogFile)
	al, err := OpenAuditLog(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { al.Close() })
	e.srv.opts.AuditLog = al
	return &auditEnv{testEnv: e, auditPath: path}
}

func (e *auditEnv) entries(t *testing.T) []map[string]any {
	t.Helper()
	f, err := os.Open(e.auditPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

// closedServer is an https URL on loopback that nothing listens on.
func closedServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "https://" + addr
}

// secretKubeconfig is a well-formed kubeconfig for server with a token and
// a client key that must never be shown.
func secretKubeconfig(t *testing.T, server string) []byte {
	t.Helper()
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := pki.EncodeKey(key)
	if err != nil {
		t.Fatal(err)
	}
	authority := issueCerts(t).ca
	cert, err := authority.IssueClient(key.Public(), pki.OperatorSubject("ops", "admin"), time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["c"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: pki.EncodeCert(authority.Cert)}
	cfg.AuthInfos["ops"] = &clientcmdapi.AuthInfo{Token: "SECRET-TOKEN-0123456789", ClientCertificateData: pki.EncodeCert(cert), ClientKeyData: keyPEM}
	cfg.Contexts["c"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "ops"}
	cfg.CurrentContext = "c"
	b, err := clientcmd.Write(*cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestClusterAPIBadInput(t *testing.T) {
	e := newAuditedServer(t)
	api := e.srv.ClusterAPI()
	ctx := t.Context()

	for _, tc := range []struct {
		name string
		req  *kubev1.AddClusterRequest
		code codes.Code
		says string
	}{
		{"bad name", &kubev1.AddClusterRequest{Name: "Prod DC", Kubeconfig: secretKubeconfig(t, closedServer(t))}, codes.InvalidArgument, "cluster name"},
		{"no kubeconfig", &kubev1.AddClusterRequest{Name: "dc1"}, codes.InvalidArgument, "it is empty"},
		{"malformed", &kubev1.AddClusterRequest{Name: "dc1", Kubeconfig: []byte("clusters: [[[")}, codes.InvalidArgument, "not a kubeconfig file"},
		{"unreachable", &kubev1.AddClusterRequest{Name: "dc1", Kubeconfig: secretKubeconfig(t, closedServer(t))}, codes.Unavailable, "connection refused"},
	} {
		_, err := api.AddCluster(ctx, tc.req)
		if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("AddCluster %s = %v, want %s saying %q", tc.name, err, tc.code, tc.says)
		}
		if strings.Contains(err.Error(), "SECRET-TOKEN") {
			t.Errorf("AddCluster %s error shows the token: %v", tc.name, err)
		}
	}
	if cs, _ := e.store.ListClusters(ctx); len(cs) != 0 {
		t.Errorf("clusters stored after bad adds: %v", cs)
	}
	for _, call := range []func() error{
		func() error { _, err := api.GetCluster(ctx, &kubev1.GetClusterRequest{}); return err },
		func() error { _, err := api.RemoveCluster(ctx, &kubev1.RemoveClusterRequest{}); return err },
		func() error { _, err := api.CordonNode(ctx, &kubev1.CordonNodeRequest{}); return err },
		func() error { _, err := api.DrainNode(ctx, &kubev1.DrainNodeRequest{}); return err },
		func() error {
			_, err := api.DrainNode(ctx, &kubev1.DrainNodeRequest{NodeId: "n1", GracePeriodSeconds: proto.Int32(0)})
			return err
		},
		func() error {
			_, err := api.DrainNode(ctx, &kubev1.DrainNodeRequest{NodeId: "n1", Timeout: durationpb.New(-time.Second)})
			return err
		},
		func() error {
			_, err := api.DrainNode(ctx, &kubev1.DrainNodeRequest{NodeId: "n1", Timeout: durationpb.New(25 * time.Hour)})
			return err
		},
	} {
		if err := call(); status.Code(err) != codes.InvalidArgument {
			t.Errorf("bad request: %v, want InvalidArgument", err)
		}
	}
	if _, err := api.GetCluster(ctx, &kubev1.GetClusterRequest{Name: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("GetCluster(nope) = %v", err)
	}
	if _, err := api.RemoveCluster(ctx, &kubev1.RemoveClusterRequest{Name: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("RemoveCluster(nope) = %v", err)
	}
	if _, err := api.CordonNode(ctx, &kubev1.CordonNodeRequest{NodeId: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("CordonNode(unknown node) = %v", err)
	}

	// A node with no cluster registered.
	addNode(t, e.testEnv, "n1")
	for name, call := range map[string]func() error{
		"cordon":   func() error { _, err := api.CordonNode(ctx, &kubev1.CordonNodeRequest{NodeId: "n1"}); return err },
		"uncordon": func() error { _, err := api.UncordonNode(ctx, &kubev1.UncordonNodeRequest{NodeId: "n1"}); return err },
		"drain":    func() error { _, err := api.DrainNode(ctx, &kubev1.DrainNodeRequest{NodeId: "n1"}); return err },
	} {
		if err := call(); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "budctl clusters add") {
			t.Errorf("%s with no cluster = %v, want FailedPrecondition saying to add one", name, err)
		}
	}
	// GetNode shows no Kubernetes part while no cluster is registered.
	if got, err := e.srv.FleetAPI().GetNode(ctx, &fleetv1.GetNodeRequest{Id: "n1"}); err != nil || got.GetNode().GetKubernetes() != nil {
		t.Errorf("GetNode with no cluster = %v, %v; want no kubernetes field", got.GetNode().GetKubernetes(), err)
	}

	// The failed adds and node calls are in the audit trail.
	var adds, cordons int
	for _, en := range e.entries(t) {
		switch en["action"] {
		case "cluster.add":
			adds++
			if en["result"] != "failed" || en["error"] == "" {
				t.Errorf("audit entry %v", en)
			}
		case "node.cordon", "node.uncordon", "node.drain":
			cordons++
			if en["result"] != "failed" || en["node_id"] != "n1" {
				t.Errorf("audit entry %v", en)
			}
		}
	}
	if adds != 4 || cordons != 3 {
		t.Errorf("audit: %d cluster.add and %d node entries, want 4 and 3", adds, cordons)
	}
}

// No answer carries a cluster's credentials, whatever its state; the
// check says why the cluster is not reachable.
func TestClusterCredentialsNeverReturned(t *testing.T) {
	e := newAuditedServer(t)
	api := e.srv.ClusterAPI()
	ctx := t.Context()
	kc := secretKubeconfig(t, closedServer(t))
	cfg, err := clientcmd.Load(kc)
	if err != nil {
		t.Fatal(err)
	}
	secrets := []string{"SECRET-TOKEN-0123456789", "PRIVATE KEY", string(cfg.AuthInfos["ops"].ClientKeyData[40:80])}
	if err := e.store.AddCluster(ctx, store.Cluster{Name: "dc1", Kubeconfig: kc, Server: cfg.Clusters["c"].Server, User: "ops", Auth: "bearer token", AddedAt: base}); err != nil {
		t.Fatal(err)
	}
	addNode(t, e.testEnv, "n1")

	list, err := api.ListClusters(ctx, &kubev1.ListClustersRequest{})
	if err != nil || len(list.GetClusters()) != 1 {
		t.Fatalf("ListClusters = %v, %v", list, err)
	}
	chk := list.GetClusters()[0].GetCheck()
	if chk.GetReachable() || !strings.Contains(chk.GetReason(), "connection refused") || chk.GetCheckedAt() == nil {
		t.Errorf("check %v, want unreachable with the reason", chk)
	}
	get, err := api.GetCluster(ctx, &kubev1.GetClusterRequest{Name: "dc1"})
	if err != nil {
		t.Fatal(err)
	}
	node, err := e.srv.FleetAPI().GetNode(ctx, &fleetv1.GetNodeRequest{Id: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	k := node.GetNode().GetKubernetes()
	if k.GetCluster() != "dc1" || k.GetName() != "h-n1" || k.GetMappedBy() != "hostname" || k.GetExists() || !strings.Contains(k.GetError(), "connection refused") {
		t.Errorf("GetNode kubernetes = %v, want dc1/h-n1 and the error", k)
	}
	for name, msg := range map[string]proto.Message{"ListClusters": list, "GetCluster": get, "GetNode": node} {
		b, err := protojson.Marshal(msg)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range secrets {
			if strings.Contains(string(b), s) {
				t.Errorf("%s answer holds %q:\n%s", name, s, b)
			}
		}
	}
	b, _ := os.ReadFile(e.auditPath)
	for _, s := range secrets {
		if strings.Contains(string(b), s) {
			t.Errorf("audit log holds %q", s)
		}
	}
}

func TestDrainOptionsFromRequest(t *testing.T) {
	o, err := drainOptions(&kubev1.DrainNodeRequest{})
	if err != nil || o != kube.DefaultDrainOptions() {
		t.Errorf("defaults = %+v, %v", o, err)
	}
	o, err = drainOptions(&kubev1.DrainNodeRequest{
		Timeout: durationpb.New(time.Minute), DeleteEmptydirData: proto.Bool(false), IgnoreDaemonsets: proto.Bool(false),
		Force: true, GracePeriodSeconds: proto.Int32(7),
	})
	want := kube.DrainOptions{Timeout: time.Minute, Force: true, GracePeriod: 7 * time.Second}
	if err != nil || o != want {
		t.Errorf("options = %+v, %v; want %+v", o, err, want)
	}
	if o, err := drainOptions(&kubev1.DrainNodeRequest{GracePeriodSeconds: proto.Int32(-1)}); err != nil || o.GracePeriod != 0 {
		t.Errorf("negative grace = %+v, %v; want each pod's own", o, err)
	}
}
