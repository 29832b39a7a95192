package controller

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/bud-ecosystem/budfleet/controller/ca"
	"github.com/bud-ecosystem/budfleet/controller/maintenance"
	"github.com/bud-ecosystem/budfleet/controller/maintenance/runner/fake"
	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/controller/store/bolt"
	"github.com/bud-ecosystem/budfleet/controller/store/storetest"
	"github.com/bud-ecosystem/budfleet/pki"
	maintv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/maint/v1"
)

var maintMethods = []string{
	maintv1.MaintenanceService_StartCampaign_FullMethodName,
	maintv1.MaintenanceService_ListCampaigns_FullMethodName,
	maintv1.MaintenanceService_GetCampaign_FullMethodName,
	maintv1.MaintenanceService_WatchCampaign_FullMethodName,
	maintv1.MaintenanceService_PauseCampaign_FullMethodName,
	maintv1.MaintenanceService_ResumeCampaign_FullMethodName,
	maintv1.MaintenanceService_AbortCampaign_FullMethodName,
}

// The maintenance service takes the admin operator, as the fleet service
// does, and nobody else.
func TestMaintenanceAccess(t *testing.T) {
	c := issueCerts(t)
	for _, m := range maintMethods {
		for _, tc := range []struct {
			name string
			ctx  context.Context
			want codes.Code
		}{
			{"admin", withPeer(c.admin, c.ca.Cert), codes.OK},
			{"viewer", withPeer(c.viewer, c.ca.Cert), roleCode(pki.RoleViewer, m)},
			{"node", withPeer(c.node, c.ca.Cert), codes.PermissionDenied},
			{"no cert", withPeer(nil, nil), codes.Unauthenticated},
		} {
			if _, err := authorize(tc.ctx, m); status.Code(err) != tc.want {
				t.Errorf("%s on %s: %v, want %s", tc.name, m, err, tc.want)
			}
		}
	}
}

type maintEnv struct {
	*testEnv
	cluster *fake.Cluster
	api     *MaintenanceAPI
	ctx     context.Context // as the admin alice
}

// newMaintServer is a test server with a fake cluster (nil: none) and
// nodes n1 (gpu-1, pool=gpu rack=r1), n2 (gpu-2, pool=gpu rack=r2) and n3
// (cpu-3, pool=cpu).
func newMaintServer(t *testing.T, cluster *fake.Cluster) *maintEnv {
	t.Helper()
	return newMaintServerWith(t, cluster, nil)
}

// newMaintServerWith is newMaintServer with edit (when not nil) applied to
// the server's options.
func newMaintServerWith(t *testing.T, cluster *fake.Cluster, edit func(*Options)) *maintEnv {
	t.Helper()
	st, err := bolt.Open(filepath.Join(t.TempDir(), StoreFile), bolt.Options{LockTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	authority, err := ca.NewCA(base)
	if err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{t: base}
	opts := Options{Store: st, CA: authority, Logger: discardLogger(), Now: clock.Now, MaintenanceInterval: 5 * time.Millisecond}
	if cluster != nil {
		opts.Cluster = cluster
	}
	if edit != nil {
		edit(&opts)
	}
	srv, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	e := &testEnv{srv: srv, store: st, ca: authority, clock: clock}
	for _, n := range []struct{ id, host, pool, rack string }{
		{"n1", "gpu-1", "gpu", "r1"}, {"n2", "gpu-2", "gpu", "r2"}, {"n3", "cpu-3", "cpu", ""},
	} {
		storetest.EnrollNode(t, e.store, storetest.NewNode(n.id, n.host))
		labels := map[string]string{"pool": n.pool}
		if n.rack != "" {
			labels["rack"] = n.rack
		}
		if _, err := e.store.UpdateNode(t.Context(), n.id, func(nd *store.Node) error { nd.Labels = labels; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.WithValue(t.Context(), identityKey{}, Identity{Name: "alice", Role: pki.RoleAdmin})
	return &maintEnv{testEnv: e, cluster: cluster, api: e.srv.MaintenanceAPI(), ctx: ctx}
}

func (e *maintEnv) campaigns(t *testing.T) []store.Campaign {
	t.Helper()
	cs, err := e.store.ListCampaigns(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func okRequest() *maintv1.StartCampaignRequest {
	return &maintv1.StartCampaignRequest{Selector: map[string]string{"pool": "gpu"}, MaxUnavailable: 1, Task: []byte("#!/bin/sh\ntrue\n"), Name: "driver 570"}
}

// Each bad input is a clear InvalidArgument and stores nothing.
func TestStartCampaignRefusesBadInput(t *testing.T) {
	e := newMaintServer(t, fake.NewCluster("gpu-1", "gpu-2", "cpu-3"))
	for _, tc := range []struct {
		name string
		edit func(r *maintv1.StartCampaignRequest)
		want string
	}{
		{"selector key no node has", func(r *maintv1.StartCampaignRequest) { r.Selector = map[string]string{"zone": "a"} },
			"selector zone=a matches no node; no node has the label zone"},
		{"selector value no node has", func(r *maintv1.StartCampaignRequest) { r.Selector = map[string]string{"pool": "gpu", "rack": "r9"} },
			"selector pool=gpu,rack=r9 matches no node; no node has all of those values"},
		{"empty selector", func(r *maintv1.StartCampaignRequest) { r.Selector = nil }, "selector is empty"},
		{"max-unavailable 0", func(r *maintv1.StartCampaignRequest) { r.MaxUnavailable = 0 }, "max-unavailable must be at least 1"},
		{"window that never opens", func(r *maintv1.StartCampaignRequest) { r.Window = "Sat 02:00-02:00" }, "never opens"},
		{"window that does not parse", func(r *maintv1.StartCampaignRequest) { r.Window = "Caturday 02:00-03:00" }, "Caturday"},
		{"task too large", func(r *maintv1.StartCampaignRequest) { r.Task = make([]byte, maintenance.MaxTaskBytes+1) },
			"task is 65537 bytes; the limit is 65536"},
		{"no task and no reboot", func(r *maintv1.StartCampaignRequest) { r.Task = nil }, "nothing to do: give --task FILE, --reboot, or both"},
		{"task not UTF-8", func(r *maintv1.StartCampaignRequest) { r.Task = []byte("echo \xff\n") }, "not UTF-8"},
		{"per-domain 0", func(r *maintv1.StartCampaignRequest) { r.PerDomain = &maintv1.DomainLimit{Label: "rack"} }, "K must be at least 1"},
		{"per-domain without label", func(r *maintv1.StartCampaignRequest) { r.PerDomain = &maintv1.DomainLimit{Max: 1} }, "per-domain needs a label"},
		{"task timeout over the agent's limit", func(r *maintv1.StartCampaignRequest) { r.TaskTimeout = durationpb.New(25 * time.Hour) }, "agent's limit of 24h0m0s"},
		{"negative drain timeout", func(r *maintv1.StartCampaignRequest) { r.DrainTimeout = durationpb.New(-time.Second) }, "drain-timeout must be more than 0"},
		{"unknown drain policy", func(r *maintv1.StartCampaignRequest) { r.OnDrainFailure = 9 }, "on-drain-failure"},
		{"name too long", func(r *maintv1.StartCampaignRequest) { r.Name = strings.Repeat("x", 129) }, "name must be at most 128"},
		{"name with a newline", func(r *maintv1.StartCampaignRequest) { r.Name = "a\nb" }, "printable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := okRequest()
			tc.edit(req)
			_, err := e.api.StartCampaign(e.ctx, req)
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("StartCampaign = %v; want InvalidArgument saying %q", err, tc.want)
			}
			if cs := e.campaigns(t); len(cs) != 0 {
				t.Errorf("a refused campaign was stored: %v", cs)
			}
		})
	}
	if n := len(e.cluster.Events()); n != 0 {
		t.Errorf("refused campaigns touched the cluster: %v", e.cluster.Events())
	}
}

// Without a cluster, or with one that does not answer, nothing is stored
// and the error says what to do.
func TestStartCampaignNeedsTheCluster(t *testing.T) {
	e := newMaintServer(t, nil)
	_, err := e.api.StartCampaign(e.ctx, okRequest())
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "budctl clusters add") {
		t.Errorf("without a cluster: %v", err)
	}
	cluster := fake.NewCluster("gpu-1", "gpu-2")
	cluster.SetUnreachable(true)
	e2 := newMaintServer(t, cluster)
	_, err = e2.api.StartCampaign(e2.ctx, okRequest())
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "connection refused") || !strings.Contains(err.Error(), "start the campaign again") {
		t.Errorf("with the API server unreachable: %v", err)
	}
	if len(e.campaigns(t))+len(e2.campaigns(t)) != 0 {
		t.Error("a campaign was stored")
	}
}

func TestStartCampaign(t *testing.T) {
	cluster := fake.NewCluster("gpu-1", "node-b", "cpu-3")
	e := newMaintServer(t, cluster)
	// n2's Kubernetes Node is named by its label.
	if _, err := e.store.UpdateNode(t.Context(), "n2", func(n *store.Node) error { n.Labels["budfleet.io/k8s-node"] = "node-b"; return nil }); err != nil {
		t.Fatal(err)
	}
	req := okRequest()
	req.PerDomain = &maintv1.DomainLimit{Label: "rack", Max: 1}
	req.Window = "Sat 02:00-06:00"
	req.DryRun = true
	dry, err := e.api.StartCampaign(e.ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if dry.GetId() != "" || len(e.campaigns(t)) != 0 {
		t.Errorf("a dry run stored a campaign (id %q)", dry.GetId())
	}
	req.DryRun = false
	resp, err := e.api.StartCampaign(e.ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	c, err := e.store.GetCampaign(t.Context(), resp.GetId())
	if err != nil {
		t.Fatal(err)
	}
	if c.CreatedBy != "alice" || c.Name != "driver 570" || c.State != maintenance.StatePending {
		t.Errorf("stored %+v", c)
	}
	var got []string
	for _, n := range c.Nodes {
		got = append(got, n.NodeID+"="+n.K8sNode+"@"+n.Domain)
	}
	if want := "n1=gpu-1@r1 n2=node-b@r2"; strings.Join(got, " ") != want {
		t.Errorf("targets %v, want %s (the pool=gpu nodes, their Kubernetes Nodes, their racks)", got, want)
	}
	p := resp.GetCampaign()
	if p.GetSpec().GetWindow() != "Sat 02:00-06:00" || p.GetSpec().GetTaskBytes() != uint32(len(req.Task)) || len(p.GetSpec().GetTaskSha256()) != 64 ||
		p.GetSpec().GetDrainTimeout().AsDuration() != maintenance.DefaultDrainTimeout || p.GetNodesQueued() != 2 || p.GetState() != maintv1.CampaignState_CAMPAIGN_STATE_PENDING {
		t.Errorf("response %v", p)
	}
	got2, err := e.api.GetCampaign(e.ctx, &maintv1.GetCampaignRequest{Id: resp.GetId()})
	if err != nil || got2.GetCampaign().GetId() != resp.GetId() || len(got2.GetCampaign().GetNodes()) != 2 {
		t.Errorf("GetCampaign = %v, %v", got2, err)
	}
	list, err := e.api.ListCampaigns(e.ctx, &maintv1.ListCampaignsRequest{})
	if err != nil || len(list.GetCampaigns()) != 1 {
		t.Errorf("ListCampaigns = %v, %v", list, err)
	}

	// A node in a campaign that has not ended is not taken by another.
	req2 := okRequest()
	req2.Selector = map[string]string{"rack": "r1"}
	_, err = e.api.StartCampaign(e.ctx, req2)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "node n1 is already in campaign "+resp.GetId()) {
		t.Errorf("overlapping campaign: %v", err)
	}
	if len(e.campaigns(t)) != 1 {
		t.Error("the overlapping campaign was stored")
	}
	// Once that campaign is over, it may.
	if _, err := e.api.AbortCampaign(e.ctx, &maintv1.AbortCampaignRequest{Id: resp.GetId()}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.UpdateCampaign(t.Context(), resp.GetId(), func(c *store.Campaign) error {
		next, _ := maintenance.Step(*c, maintenance.Observations{Now: base})
		*c = next
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.api.StartCampaign(e.ctx, req2); err != nil {
		t.Errorf("a campaign over the nodes of an aborted one: %v", err)
	}

	_, err = e.api.GetCampaign(e.ctx, &maintv1.GetCampaignRequest{Id: "nope"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("GetCampaign(unknown) = %v", err)
	}
	_, err = e.api.GetCampaign(e.ctx, &maintv1.GetCampaignRequest{})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("GetCampaign() = %v", err)
	}
}

func TestPauseResumeAbort(t *testing.T) {
	e := newMaintServer(t, fake.NewCluster("gpu-1", "gpu-2"))
	resp, err := e.api.StartCampaign(e.ctx, okRequest())
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetId()
	p, err := e.api.PauseCampaign(e.ctx, &maintv1.PauseCampaignRequest{Id: id})
	if err != nil || p.GetCampaign().GetState() != maintv1.CampaignState_CAMPAIGN_STATE_PAUSED || p.GetCampaign().GetStateReason() != "paused by alice" {
		t.Fatalf("pause = %v, %v", p, err)
	}
	r, err := e.api.ResumeCampaign(e.ctx, &maintv1.ResumeCampaignRequest{Id: id})
	if err != nil || r.GetCampaign().GetState() != maintv1.CampaignState_CAMPAIGN_STATE_RUNNING {
		t.Fatalf("resume = %v, %v", r, err)
	}
	a, err := e.api.AbortCampaign(e.ctx, &maintv1.AbortCampaignRequest{Id: id})
	if err != nil || a.GetCampaign().GetState() != maintv1.CampaignState_CAMPAIGN_STATE_ABORTING {
		t.Fatalf("abort = %v, %v", a, err)
	}
	// What the state does not allow is FailedPrecondition and changes
	// nothing.
	before, _ := e.store.GetCampaign(t.Context(), id)
	_, err = e.api.PauseCampaign(e.ctx, &maintv1.PauseCampaignRequest{Id: id})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "only a pending or running campaign can be paused") {
		t.Errorf("pause while aborting = %v", err)
	}
	if after, _ := e.store.GetCampaign(t.Context(), id); after.State != before.State || !after.UpdatedAt.Equal(before.UpdatedAt) {
		t.Errorf("a refused pause changed the campaign: %s", after.State)
	}
	for name, call := range map[string]func(id string) error{
		"pause": func(id string) error {
			_, err := e.api.PauseCampaign(e.ctx, &maintv1.PauseCampaignRequest{Id: id})
			return err
		},
		"resume": func(id string) error {
			_, err := e.api.ResumeCampaign(e.ctx, &maintv1.ResumeCampaignRequest{Id: id})
			return err
		},
		"abort": func(id string) error {
			_, err := e.api.AbortCampaign(e.ctx, &maintv1.AbortCampaignRequest{Id: id})
			return err
		},
	} {
		if err := call("nope"); status.Code(err) != codes.NotFound {
			t.Errorf("%s(unknown) = %v", name, err)
		}
		if err := call(""); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s() = %v", name, err)
		}
	}
}

// watchStream is a server stream for WatchCampaign that hands each message
// to the test.
type watchStream struct {
	grpc.ServerStream
	ctx  context.Context
	msgs chan *maintv1.Campaign
}

func (s *watchStream) Context() context.Context     { return s.ctx }
func (s *watchStream) SetHeader(metadata.MD) error  { return nil }
func (s *watchStream) SendHeader(metadata.MD) error { return nil }
func (s *watchStream) SetTrailer(metadata.MD)       {}
func (s *watchStream) Send(m *maintv1.WatchCampaignResponse) error {
	select {
	case s.msgs <- m.GetCampaign():
		return nil
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
}

// WatchCampaign sends the campaign as the runner moves it on, and ends
// when it is done. With the runner running and the agents connected, the
// first node is cordoned and drained and its task queued; an abort then
// ends the watch.
func TestWatchCampaign(t *testing.T) {
	e := newMaintServer(t, fake.NewCluster("gpu-1", "gpu-2"))
	for _, id := range []string{"n1", "n2"} {
		sess, err := e.srv.openSession(t.Context(), id, "peer", "test")
		if err != nil {
			t.Fatal(err)
		}
		defer e.srv.closeSession(sess)
	}
	ctx, cancel := context.WithCancel(e.ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { _ = e.srv.RunMaintenance(ctx) })
	resp, err := e.api.StartCampaign(e.ctx, okRequest())
	if err != nil {
		t.Fatal(err)
	}
	stream := &watchStream{ctx: ctx, msgs: make(chan *maintv1.Campaign)}
	watchErr := make(chan error, 1)
	go func() { watchErr <- e.api.WatchCampaign(&maintv1.WatchCampaignRequest{Id: resp.GetId()}, stream) }()
	next := func(what string, ok func(*maintv1.Campaign) bool) *maintv1.Campaign {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case c := <-stream.msgs:
				if ok(c) {
					return c
				}
			case err := <-watchErr:
				t.Fatalf("the watch ended (%v) before %s", err, what)
			case <-timeout:
				t.Fatalf("no snapshot with %s", what)
			}
		}
	}
	c := next("gpu-1 at its task", func(c *maintv1.Campaign) bool {
		return c.GetNodes()[0].GetStep() == maintv1.NodeStep_NODE_STEP_TASK
	})
	if n := c.GetNodes()[0]; !n.GetCordonedByCampaign() || n.GetTaskCommandId() == "" || c.GetNodes()[1].GetStep() != maintv1.NodeStep_NODE_STEP_QUEUED {
		t.Errorf("snapshot %v", c)
	}
	// The step is persisted before its command is queued: wait for it.
	var cmd store.Command
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if cmd, err = e.store.GetCommand(t.Context(), c.GetNodes()[0].GetTaskCommandId()); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil || cmd.Kind != maintenance.KindTask || cmd.NodeID != "n1" {
		t.Fatalf("task command %+v, %v", cmd, err)
	}
	if _, err := e.api.AbortCampaign(e.ctx, &maintv1.AbortCampaignRequest{Id: resp.GetId()}); err != nil {
		t.Fatal(err)
	}
	next("the campaign aborting", func(c *maintv1.Campaign) bool {
		return c.GetState() == maintv1.CampaignState_CAMPAIGN_STATE_ABORTING
	})
	// gpu-1 is past its gate: the abort waits for its task. Fail the task
	// as the agent would; the node stays cordoned and the campaign ends.
	if _, err := e.store.UpdateCommand(t.Context(), cmd.ID, func(c *store.Command) error {
		c.State, c.Message, c.Output = store.CommandFailed, "the task exited with status 1", map[string]string{"exit_code": "1"}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	e.srv.nodeEvent("n1")
	c = next("the campaign aborted", func(c *maintv1.Campaign) bool {
		return c.GetState() == maintv1.CampaignState_CAMPAIGN_STATE_ABORTED
	})
	select {
	case err := <-watchErr:
		if err != nil {
			t.Errorf("the watch ended with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("the watch did not end with the campaign")
	}
	if f := c.GetFailedNodes(); len(f) != 1 || f[0] != "n1" || c.GetNodes()[1].GetStep() != maintv1.NodeStep_NODE_STEP_SKIPPED {
		t.Errorf("aborted: %v", c)
	}
	if got := e.cluster.Unschedulable(); len(got) != 1 || got[0] != "gpu-1" {
		t.Errorf("cordoned %v, want the failed gpu-1 alone", got)
	}
}
