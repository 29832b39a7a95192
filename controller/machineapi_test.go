package controller

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bud-ecosystem/budfleet/controller/maintenance"
	"github.com/bud-ecosystem/budfleet/controller/providers"
	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/pki"
	"github.com/bud-ecosystem/budfleet/plugins/sdk"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
	machinev1 "github.com/bud-ecosystem/budfleet/proto/budfleet/machine/v1"
	providerv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/provider/v1"
)

// fakeProvider is a machineProvider over an sdk mock that keeps what it
// was asked.
type fakeProvider struct {
	*sdk.MockProvider
	mu      sync.Mutex
	boots   []sdk.Bootstrap
	specs   []sdk.MachineSpec
	deleted []string
}

func (f *fakeProvider) AgentPackage() string { return "https://repo.example/bud-agent.deb" }

type fakeProviders map[string]*fakeProvider

func (f fakeProviders) provider(name string) (machineProvider, error) {
	if p, ok := f[name]; ok {
		return p, nil
	}
	return nil, fmt.Errorf("%w %q", providers.ErrUnknownProvider, name)
}

func (f fakeProviders) status() []providers.Status {
	return []providers.Status{{Name: "vc", Info: sdk.Info{Name: "vsphere", Version: "1.0"}, Health: providers.HealthHealthy, Running: true}}
}

// newFakeProvider makes machines vm-1, vm-2... unless fail says otherwise
// for a name.
func newFakeProvider(fail func(name string) error) *fakeProvider {
	f := &fakeProvider{}
	n := 0
	f.MockProvider = &sdk.MockProvider{
		CreateMachineF: func(_ context.Context, spec sdk.MachineSpec, boot sdk.Bootstrap) (sdk.Machine, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.specs, f.boots = append(f.specs, spec), append(f.boots, boot)
			if err := fail(spec.Name); err != nil {
				return sdk.Machine{}, err
			}
			n++
			return sdk.Machine{
				ProviderID: fmt.Sprintf("vm-%d", n), Name: spec.Name, Addresses: []string{"10.0.0.1"}, Power: sdk.PowerOn,
				Labels: map[string]string{"gpu_type": "nvidia-a100", "Bad Label": "x"},
			}, nil
		},
		DeleteMachineF: func(_ context.Context, id string) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.deleted = append(f.deleted, id)
			return nil
		},
		GetMachineF: func(_ context.Context, id string) (sdk.Machine, error) {
			return sdk.Machine{ProviderID: id, Addresses: []string{"10.0.0.9"}, Power: sdk.PowerOff}, nil
		},
		PowerF: func(_ context.Context, id string, a sdk.PowerAction) (sdk.Machine, error) {
			if a == sdk.PowerActionPXE {
				return sdk.Machine{}, fmt.Errorf("%w: no network boot", sdk.ErrUnsupported)
			}
			return sdk.Machine{ProviderID: id, Power: sdk.PowerOff}, nil
		},
	}
	return f
}

func newMachineServer(t *testing.T, f *fakeProvider) (*testEnv, context.Context) {
	t.Helper()
	e := newTestServer(t)
	e.srv.opts.Advertise = "ctl.example:7443"
	e.srv.machines.providers = fakeProviders{"vc": f}
	return e, context.WithValue(t.Context(), identityKey{}, Identity{Name: "alice", Role: pki.RoleAdmin})
}

func code(err error) codes.Code { return status.Code(err) }

// A machine gets a single-use short-lived token whose bootstrap reaches the
// provider; the agent that enrolls with it is linked to the machine and
// gets the provider's labels.
func TestCreateMachineAndEnroll(t *testing.T) {
	f := newFakeProvider(func(string) error { return nil })
	e, ctx := newMachineServer(t, f)
	api := e.srv.MachineAPI()
	resp, err := api.CreateMachines(ctx, &machinev1.CreateMachinesRequest{
		Provider: "vc", Name: "gpu-worker", Spec: []byte(`{"cpus":16}`), Labels: map[string]string{"pool": "h100"},
	})
	if err != nil {
		t.Fatal(err)
	}
	m := resp.GetMachines()[0]
	if m.GetName() != "gpu-worker" || m.GetProviderId() != "vm-1" || m.GetState() != machinev1.MachineState_MACHINE_STATE_CREATED ||
		m.GetPowerState() != providerv1.PowerState_POWER_STATE_ON || m.GetLabels()["gpu_type"] != "nvidia-a100" || m.GetLabels()["pool"] != "h100" {
		t.Fatalf("created machine = %v", m)
	}
	if _, ok := m.GetLabels()["Bad Label"]; ok {
		t.Error("an invalid label of the provider was kept")
	}
	boot, spec := f.boots[0], f.specs[0]
	if boot.ControllerAddress != "ctl.example:7443" || boot.CAPin != pki.PublicKeyHash(e.ca.Cert) || boot.AgentPackage != "https://repo.example/bud-agent.deb" {
		t.Errorf("bootstrap = %+v", boot)
	}
	if spec.Name != "gpu-worker" || string(spec.Options) != `{"cpus":16}` || spec.Labels["pool"] != "h100" {
		t.Errorf("spec = %+v", spec)
	}
	jt, err := pki.ParseJoinToken(boot.JoinToken)
	if err != nil || jt.ID != m.GetTokenId() || jt.CAHash != boot.CAPin {
		t.Fatalf("join token %q: %+v, %v", boot.JoinToken, jt, err)
	}
	tok, err := e.store.GetToken(t.Context(), jt.ID)
	if err != nil {
		t.Fatal(err)
	}
	if tok.MaxUses != 1 || tok.ExpiresAt.Sub(tok.CreatedAt) != DefaultMachineTokenTTL || tok.Labels[LabelMachine] != m.GetId() || tok.Labels[LabelProvider] != "vc" {
		t.Errorf("machine token = %+v", tok)
	}

	csr, _ := newCSR(t)
	enr, err := e.srv.AgentAPI().Enroll(t.Context(), &agentv1.EnrollRequest{TokenId: jt.ID, TokenSecret: jt.Secret, CsrDer: csr, Hostname: "gpu-worker"})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := e.store.GetMachine(t.Context(), m.GetId())
	if err != nil || rec.NodeID != enr.GetNodeId() || rec.State != store.MachineEnrolled {
		t.Fatalf("machine after enrollment = %+v, %v", rec, err)
	}
	n, err := e.store.GetNode(t.Context(), enr.GetNodeId())
	if err != nil || n.Labels["gpu_type"] != "nvidia-a100" || n.Labels["pool"] != "h100" || n.Labels[LabelMachine] != m.GetId() {
		t.Fatalf("node labels = %v, %v", n.Labels, err)
	}
	// Single use: a second agent cannot enroll with it.
	csr2, _ := newCSR(t)
	if _, err := e.srv.AgentAPI().Enroll(t.Context(), &agentv1.EnrollRequest{TokenId: jt.ID, TokenSecret: jt.Secret, CsrDer: csr2, Hostname: "impostor"}); code(err) != codes.PermissionDenied {
		t.Fatalf("second enrollment = %v", err)
	}

	list, err := api.ListMachines(ctx, &machinev1.ListMachinesRequest{})
	if err != nil || len(list.GetMachines()) != 1 {
		t.Fatal(list, err)
	}
	if ln := list.GetMachines()[0].GetNode(); ln.GetId() != enr.GetNodeId() || ln.GetHostname() != "gpu-worker" || ln.GetStatus() != fleetv1.NodeStatus_NODE_STATUS_NOT_READY {
		t.Errorf("linked node = %v", ln)
	}
	e.srv.sawHeartbeat(enr.GetNodeId())
	list, _ = api.ListMachines(ctx, &machinev1.ListMachinesRequest{})
	if st := list.GetMachines()[0].GetNode().GetStatus(); st != fleetv1.NodeStatus_NODE_STATUS_READY {
		t.Errorf("linked node after a heartbeat: %v", st)
	}

	// Get refreshes from the provider.
	got, err := api.GetMachine(ctx, &machinev1.GetMachineRequest{Id: m.GetId()})
	if err != nil || got.GetMachine().GetPowerState() != providerv1.PowerState_POWER_STATE_OFF || got.GetMachine().GetAddresses()[0] != "10.0.0.9" || got.GetProviderError() != "" {
		t.Fatalf("GetMachine = %v, %v", got, err)
	}
}

// Names: exact with --count 1, PREFIX-N otherwise, skipping names in use;
// a failed machine leaves nothing (its token revoked) and the others are
// made.
func TestCreateMachinesNamesAndFailures(t *testing.T) {
	f := newFakeProvider(func(name string) error {
		if name == "w-3" {
			return errors.New("vCenter: datastore DS0 is full")
		}
		return nil
	})
	e, ctx := newMachineServer(t, f)
	api := e.srv.MachineAPI()
	if _, err := api.CreateMachines(ctx, &machinev1.CreateMachinesRequest{Provider: "vc", Name: "w-1"}); err != nil {
		t.Fatal(err)
	}
	resp, err := api.CreateMachines(ctx, &machinev1.CreateMachinesRequest{Provider: "vc", Name: "w", Count: 3})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range resp.GetMachines() {
		names = append(names, m.GetName())
	}
	if strings.Join(names, ",") != "w-2,w-4" || len(resp.GetFailures()) != 1 || resp.GetFailures()[0].GetName() != "w-3" ||
		!strings.Contains(resp.GetFailures()[0].GetError(), "datastore DS0 is full") {
		t.Fatalf("created %v, failures %v", names, resp.GetFailures())
	}
	recs, _ := e.store.ListMachines(t.Context())
	if len(recs) != 3 {
		t.Errorf("%d machines stored, want 3 (the failed one not)", len(recs))
	}
	failedTok, _ := e.store.GetToken(t.Context(), tokenOfBoot(t, f.boots[2]))
	if !failedTok.Revoked() {
		t.Error("the failed machine's token is not revoked")
	}
	// A taken exact name.
	if _, err := api.CreateMachines(ctx, &machinev1.CreateMachinesRequest{Provider: "vc", Name: "w-2"}); code(err) != codes.AlreadyExists {
		t.Errorf("taken name = %v", err)
	}
	// All failed: the call fails with the provider's error.
	_, err = api.CreateMachines(ctx, &machinev1.CreateMachinesRequest{Provider: "vc", Name: "w-3"})
	if code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "datastore DS0 is full") {
		t.Errorf("a refused machine = %v", err)
	}
	if recs, _ := e.store.ListMachines(t.Context()); len(recs) != 3 {
		t.Errorf("%d machines stored after a refused one", len(recs))
	}
}

func tokenOfBoot(t *testing.T, b sdk.Bootstrap) string {
	t.Helper()
	jt, err := pki.ParseJoinToken(b.JoinToken)
	if err != nil {
		t.Fatal(err)
	}
	return jt.ID
}

func TestCreateMachinesRefusesBadInput(t *testing.T) {
	f := newFakeProvider(func(string) error { return nil })
	e, ctx := newMachineServer(t, f)
	api := e.srv.MachineAPI()
	for _, c := range []struct {
		req  *machinev1.CreateMachinesRequest
		code codes.Code
		want string
	}{
		{&machinev1.CreateMachinesRequest{Provider: "nope"}, codes.NotFound, `unknown provider "nope"`},
		{&machinev1.CreateMachinesRequest{Provider: "vc", Count: 101}, codes.InvalidArgument, "over the limit of 100"},
		{&machinev1.CreateMachinesRequest{Provider: "vc", Spec: []byte(`[1]`)}, codes.InvalidArgument, "not a JSON object"},
		{&machinev1.CreateMachinesRequest{Provider: "vc", Name: "Bad_Name"}, codes.InvalidArgument, "DNS label"},
		{&machinev1.CreateMachinesRequest{Provider: "vc", Labels: map[string]string{LabelMachine: "x"}}, codes.InvalidArgument, "the controller's"},
		{&machinev1.CreateMachinesRequest{Provider: "vc", Labels: map[string]string{"bad key!": "x"}}, codes.InvalidArgument, "not a valid Kubernetes label key"},
	} {
		_, err := api.CreateMachines(ctx, c.req)
		if code(err) != c.code || !strings.Contains(err.Error(), c.want) {
			t.Errorf("CreateMachines(%v) = %v, want %s saying %q", c.req, err, c.code, c.want)
		}
	}
	if len(f.specs) != 0 {
		t.Error("the provider was asked despite bad input")
	}
	if ts, _ := e.store.ListTokens(t.Context()); len(ts) != 0 {
		t.Errorf("bad input minted %d tokens", len(ts))
	}
}

// Delete is refused while the node is in a campaign not yet ended, with
// the reason; otherwise it deletes at the provider, then the node, token
// and record.
func TestDeleteMachine(t *testing.T) {
	f := newFakeProvider(func(string) error { return nil })
	e, ctx := newMachineServer(t, f)
	api := e.srv.MachineAPI()
	resp, err := api.CreateMachines(ctx, &machinev1.CreateMachinesRequest{Provider: "vc"})
	if err != nil {
		t.Fatal(err)
	}
	m := resp.GetMachines()[0]
	jt, _ := pki.ParseJoinToken(f.boots[0].JoinToken)
	csr, _ := newCSR(t)
	enr, err := e.srv.AgentAPI().Enroll(t.Context(), &agentv1.EnrollRequest{TokenId: jt.ID, TokenSecret: jt.Secret, CsrDer: csr, Hostname: "vc-1"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := maintenance.New("camp1", "kernel", maintenance.Spec{Selector: map[string]string{"a": "b"}, MaxUnavailable: 1, Task: "true"},
		[]maintenance.Target{{NodeID: enr.GetNodeId(), K8sNode: "vc-1"}}, base)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.store.CreateCampaign(t.Context(), c); err != nil {
		t.Fatal(err)
	}
	_, err = api.DeleteMachine(ctx, &machinev1.DeleteMachineRequest{Id: m.GetId()})
	if code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "in maintenance campaign camp1") || !strings.Contains(err.Error(), "budctl maintenance abort camp1") {
		t.Fatalf("delete during a campaign = %v", err)
	}
	if len(f.deleted) != 0 {
		t.Fatal("the provider was asked to delete a machine in a campaign")
	}
	if _, err := e.store.UpdateCampaign(t.Context(), "camp1", func(c *store.Campaign) error {
		c.State = maintenance.StateCompleted
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := api.DeleteMachine(ctx, &machinev1.DeleteMachineRequest{Id: m.GetId()}); err != nil {
		t.Fatal(err)
	}
	if len(f.deleted) != 1 || f.deleted[0] != "vm-1" {
		t.Errorf("provider deletes = %v", f.deleted)
	}
	if _, err := e.store.GetMachine(t.Context(), m.GetId()); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("machine record after delete: %v", err)
	}
	if _, err := e.store.GetNode(t.Context(), enr.GetNodeId()); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("node after its machine's delete: %v", err)
	}
	if _, err := api.DeleteMachine(ctx, &machinev1.DeleteMachineRequest{Id: m.GetId()}); code(err) != codes.NotFound {
		t.Errorf("second delete = %v", err)
	}
}

// A provider that fails a delete leaves the machine deleting with the
// error, to be deleted again.
func TestDeleteMachineProviderFails(t *testing.T) {
	f := newFakeProvider(func(string) error { return nil })
	e, ctx := newMachineServer(t, f)
	api := e.srv.MachineAPI()
	resp, err := api.CreateMachines(ctx, &machinev1.CreateMachinesRequest{Provider: "vc"})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetMachines()[0].GetId()
	f.DeleteMachineF = func(context.Context, string) error {
		return fmt.Errorf("%w: provider vc: DeleteMachine did not answer within 1m", context.DeadlineExceeded)
	}
	if _, err := api.DeleteMachine(ctx, &machinev1.DeleteMachineRequest{Id: id}); code(err) != codes.DeadlineExceeded {
		t.Fatalf("delete = %v", err)
	}
	rec, err := e.store.GetMachine(t.Context(), id)
	if err != nil || rec.State != store.MachineDeleting || !strings.Contains(rec.Error, "did not answer") {
		t.Fatalf("machine after a failed delete = %+v, %v", rec, err)
	}
}

func TestPowerMachine(t *testing.T) {
	f := newFakeProvider(func(string) error { return nil })
	e, ctx := newMachineServer(t, f)
	api := e.srv.MachineAPI()
	resp, err := api.CreateMachines(ctx, &machinev1.CreateMachinesRequest{Provider: "vc"})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetMachines()[0].GetId()
	p, err := api.PowerMachine(ctx, &machinev1.PowerMachineRequest{Id: id, Action: providerv1.PowerAction_POWER_ACTION_OFF})
	if err != nil || p.GetMachine().GetPowerState() != providerv1.PowerState_POWER_STATE_OFF {
		t.Fatalf("power off = %v, %v", p, err)
	}
	if _, err := api.PowerMachine(ctx, &machinev1.PowerMachineRequest{Id: id, Action: providerv1.PowerAction_POWER_ACTION_PXE}); code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "no network boot") {
		t.Errorf("pxe = %v", err)
	}
	if _, err := api.PowerMachine(ctx, &machinev1.PowerMachineRequest{Id: id}); code(err) != codes.InvalidArgument {
		t.Errorf("no action = %v", err)
	}
	if _, err := api.PowerMachine(ctx, &machinev1.PowerMachineRequest{Id: "nope", Action: providerv1.PowerAction_POWER_ACTION_ON}); code(err) != codes.NotFound {
		t.Errorf("unknown machine = %v", err)
	}
}

// Without a providers file every machine call says how to get one.
func TestNoProviders(t *testing.T) {
	e := newTestServer(t)
	_, err := e.srv.MachineAPI().CreateMachines(t.Context(), &machinev1.CreateMachinesRequest{Provider: "vc"})
	if code(err) != codes.NotFound || !strings.Contains(err.Error(), "--providers FILE") {
		t.Fatalf("CreateMachines = %v", err)
	}
	list, err := e.srv.MachineAPI().ListProviders(t.Context(), &machinev1.ListProvidersRequest{})
	if err != nil || len(list.GetProviders()) != 0 {
		t.Fatalf("ListProviders = %v, %v", list, err)
	}
}

func TestMachineAPINeedsAdmin(t *testing.T) {
	if methodAccess(machinev1.MachineService_CreateMachines_FullMethodName) != accessOperator ||
		methodAccess(machinev1.MachineService_ListProviders_FullMethodName) != accessOperator {
		t.Fatal("the machine service is not operator-only")
	}
}
