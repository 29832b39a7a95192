package controller

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bud-ecosystem/budfleet/controller/artifact"
	"github.com/bud-ecosystem/budfleet/controller/store"
	hostv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/host/v1"
	maintv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/maint/v1"
)

// An agent upgrade needs no Kubernetes cluster, and finds the bud-agent
// artifact of each node's platform; a missing or wrong artifact, a node
// whose architecture is unknown, or a task beside the upgrade is refused,
// storing nothing.
func TestStartAgentUpgrade(t *testing.T) {
	var arts *artifact.Store
	e := newMaintServerWith(t, nil, func(o *Options) {
		var err error
		if arts, err = artifact.Open(t.Context(), artifact.Options{Dir: filepath.Join(t.TempDir(), "artifacts"), Meta: o.Store}); err != nil {
			t.Fatal(err)
		}
		o.Artifacts = arts
	})
	for id, arch := range map[string]string{"n1": "amd64", "n2": "arm64"} {
		if _, err := e.store.UpdateNode(t.Context(), id, func(n *store.Node) error { n.Inventory = &hostv1.Inventory{Architecture: arch}; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	push := func(platform string, kind store.ArtifactKind, content string) string {
		a, _, err := arts.Push(t.Context(), artifact.Push{Name: "bud-agent", Version: "v2", Platform: platform, Kind: kind, Size: int64(len(content))}, strings.NewReader(content))
		if err != nil {
			t.Fatal(err)
		}
		return a.Digest
	}
	req := func(pool string) *maintv1.StartCampaignRequest {
		return &maintv1.StartCampaignRequest{Selector: map[string]string{"pool": pool}, MaxUnavailable: 1, AgentUpgrade: &maintv1.AgentUpgrade{Version: "v2"}}
	}
	refused := func(r *maintv1.StartCampaignRequest, code codes.Code, want string) {
		t.Helper()
		if _, err := e.api.StartCampaign(e.ctx, r); status.Code(err) != code || !strings.Contains(err.Error(), want) {
			t.Errorf("StartCampaign = %v; want %s saying %q", err, code, want)
		}
		if cs := e.campaigns(t); len(cs) != 0 {
			t.Fatalf("a refused upgrade was stored: %v", cs)
		}
	}
	refused(req("gpu"), codes.FailedPrecondition, "no artifact bud-agent@v2 for linux/amd64")
	amd := push("linux/amd64", store.ArtifactBinary, "agent for amd64")
	refused(req("gpu"), codes.FailedPrecondition, "no artifact bud-agent@v2 for linux/arm64 (node n2, gpu-2)")
	withTask := req("gpu")
	withTask.Task = []byte("true\n")
	refused(withTask, codes.InvalidArgument, "an agent upgrade runs no task and no reboot")
	refused(req("cpu"), codes.FailedPrecondition, "node n3 (cpu-3) has reported no inventory yet")
	arm := push("linux/arm64", store.ArtifactBinary, "agent for arm64")

	resp, err := e.api.StartCampaign(e.ctx, req("gpu"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := e.store.GetCampaign(context.Background(), resp.GetId())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, n := range c.Nodes {
		got[n.NodeID] = n.UpgradeDigest
	}
	if got["n1"] != amd || got["n2"] != arm || len(got) != 2 {
		t.Errorf("the nodes' artifacts: %v; want n1 %s, n2 %s", got, amd, arm)
	}
	if u := resp.GetCampaign().GetSpec().GetAgentUpgrade(); u.GetVersion() != "v2" || u.GetTimeout().AsDuration().String() != "2m0s" {
		t.Errorf("the stored spec's upgrade: %v", u)
	}
}
