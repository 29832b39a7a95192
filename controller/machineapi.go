package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bud-ecosystem/budfleet/controller/providers"
	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/plugins/sdk"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
	machinev1 "github.com/bud-ecosystem/budfleet/proto/budfleet/machine/v1"
	providerv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/provider/v1"
)

// MachineAPI serves the operator's providers and machines.
type MachineAPI struct {
	machinev1.UnimplementedMachineServiceServer
	s *Server
}

// MachineAPI returns the machine service of s.
func (s *Server) MachineAPI() *MachineAPI { return &MachineAPI{s: s} }

// Limits of CreateMachines.
const (
	maxMachinesPerCall = 100
	maxSpecBytes       = 64 << 10
)

// machineNameRe: a machine's name becomes a VM's or host's name, so it is
// a DNS label.
var machineNameRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

func (a *MachineAPI) audit(ctx context.Context, action string, args ...any) {
	(&FleetAPI{s: a.s}).audit(ctx, action, args...)
}

// machineErr maps what the machines and providers return to a status.
func machineErr(ctx context.Context, err error) error {
	switch {
	case ctx.Err() != nil:
		return status.FromContextError(ctx.Err()).Err()
	case errors.Is(err, errInCampaign):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, providers.ErrUnknownProvider), errors.Is(err, sdk.ErrNotFound), errors.Is(err, store.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, store.ErrAlreadyExists):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, sdk.ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, providers.ErrUnavailable):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	// The provider's backend refused (a wrong password, an unknown
	// template) or the store failed: the text says which.
	return status.Error(codes.FailedPrecondition, err.Error())
}

// ListProviders reports the providers without starting any.
func (a *MachineAPI) ListProviders(context.Context, *machinev1.ListProvidersRequest) (*machinev1.ListProvidersResponse, error) {
	out := &machinev1.ListProvidersResponse{}
	for _, st := range a.s.machines.providers.status() {
		out.Providers = append(out.Providers, &machinev1.Provider{
			Name:        st.Name,
			Plugin:      st.Info.Name,
			Version:     st.Info.Version,
			Health:      providerHealth[st.Health],
			Running:     st.Running,
			LastError:   st.LastError,
			LastErrorAt: ts(st.LastErrorAt),
			Restarts:    uint32(st.Restarts),
			Path:        st.Path,
			Sha256:      st.SHA256,
		})
	}
	return out, nil
}

var providerHealth = map[providers.Health]machinev1.ProviderHealth{
	providers.HealthIdle:      machinev1.ProviderHealth_PROVIDER_HEALTH_IDLE,
	providers.HealthHealthy:   machinev1.ProviderHealth_PROVIDER_HEALTH_HEALTHY,
	providers.HealthUnhealthy: machinev1.ProviderHealth_PROVIDER_HEALTH_UNHEALTHY,
}

// CreateMachines asks a provider for machines, one at a time.
func (a *MachineAPI) CreateMachines(ctx context.Context, req *machinev1.CreateMachinesRequest) (*machinev1.CreateMachinesResponse, error) {
	m := a.s.machines
	count := int(req.GetCount())
	if count == 0 {
		count = 1
	}
	if count > maxMachinesPerCall {
		return nil, invalid("count %d is over the limit of %d a call", count, maxMachinesPerCall)
	}
	spec := bytes.TrimSpace(req.GetSpec())
	if len(spec) > maxSpecBytes {
		return nil, invalid("the spec is %d bytes, over the limit of %d", len(spec), maxSpecBytes)
	}
	if len(spec) > 0 {
		var obj map[string]any
		if err := json.Unmarshal(spec, &obj); err != nil {
			return nil, invalid("the spec is not a JSON object: %v", err)
		}
	}
	if err := validateLabels(req.GetLabels()); err != nil {
		return nil, invalid("%v", err)
	}
	if _, ok := req.GetLabels()[LabelMachine]; ok {
		return nil, invalid("label %s is the controller's: it names the machine", LabelMachine)
	}
	prefix := req.GetName()
	if prefix == "" {
		prefix = req.GetProvider()
	}
	if !machineNameRe.MatchString(prefix) || (count > 1 && len(prefix) > 56) {
		return nil, invalid("name %q: a machine's name is a DNS label (lower-case letters, digits and dashes, at most 63, or 56 with --count)", truncate(prefix, 64))
	}
	prov, err := m.providers.provider(req.GetProvider())
	if err != nil {
		return nil, machineErr(ctx, err)
	}
	names, err := a.names(ctx, req.GetProvider(), prefix, count, req.GetName() != "")
	if err != nil {
		return nil, err
	}
	out := &machinev1.CreateMachinesResponse{}
	var firstErr error
	for _, name := range names {
		rec, err := m.create(ctx, prov, req.GetProvider(), name, spec, req.GetLabels())
		if err != nil {
			a.audit(ctx, "machine.create", "provider", req.GetProvider(), "name", name, "result", "failed", "error", err.Error())
			if ctx.Err() != nil {
				return nil, machineErr(ctx, err)
			}
			if firstErr == nil {
				firstErr = err
			}
			out.Failures = append(out.Failures, &machinev1.CreateFailure{Name: name, Error: err.Error()})
			continue
		}
		a.audit(ctx, "machine.create", "machine_id", rec.ID, "provider", rec.Provider, "provider_id", rec.ProviderID, "name", rec.Name, "token_id", rec.TokenID)
		out.Machines = append(out.Machines, a.s.machineToProto(ctx, rec))
	}
	if len(out.Machines) == 0 {
		return nil, machineErr(ctx, firstErr)
	}
	return out, nil
}

// names picks count names: the name itself when exact, else
// PREFIX-1, PREFIX-2... skipping those the provider's machines have.
func (a *MachineAPI) names(ctx context.Context, provider, prefix string, count int, exact bool) ([]string, error) {
	recs, err := a.s.machines.store.ListMachines(ctx)
	if err != nil {
		return nil, storeErr(err)
	}
	taken := map[string]bool{}
	for _, r := range recs {
		if r.Provider == provider {
			taken[r.Name] = true
		}
	}
	if exact && count == 1 {
		if taken[prefix] {
			return nil, status.Errorf(codes.AlreadyExists, "provider %s already has a machine named %s: pick another --name, or delete that one first", provider, prefix)
		}
		return []string{prefix}, nil
	}
	var out []string
	for i := 1; len(out) < count; i++ {
		if n := fmt.Sprintf("%s-%d", prefix, i); !taken[n] {
			out = append(out, n)
		}
	}
	return out, nil
}

// ListMachines lists every machine from the store.
func (a *MachineAPI) ListMachines(ctx context.Context, req *machinev1.ListMachinesRequest) (*machinev1.ListMachinesResponse, error) {
	recs, err := a.s.machines.store.ListMachines(ctx)
	if err != nil {
		return nil, storeErr(err)
	}
	list, next, err := page(recs, func(m store.Machine) string { return m.ID }, func(m store.Machine) *machinev1.Machine { return a.s.machineToProto(ctx, m) }, req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	return &machinev1.ListMachinesResponse{Machines: list, NextPageToken: next}, nil
}

// GetMachine returns one machine, refreshed from its provider when it
// answers.
func (a *MachineAPI) GetMachine(ctx context.Context, req *machinev1.GetMachineRequest) (*machinev1.GetMachineResponse, error) {
	m := a.s.machines
	rec, err := a.record(ctx, req.GetId())
	if err != nil {
		return nil, err
	}
	out := &machinev1.GetMachineResponse{}
	if rec.ProviderID != "" && rec.State != store.MachineDeleting {
		if rec, err = m.refresh(ctx, rec); err != nil {
			out.ProviderError = err.Error()
		}
	}
	out.Machine = a.s.machineToProto(ctx, rec)
	return out, nil
}

func (a *MachineAPI) record(ctx context.Context, id string) (store.Machine, error) {
	if id == "" {
		return store.Machine{}, status.Error(codes.InvalidArgument, "machine id is required (see 'budctl machines list')")
	}
	rec, err := a.s.machines.store.GetMachine(ctx, id)
	if err != nil {
		return store.Machine{}, storeErr(err)
	}
	return rec, nil
}

// refresh stores what the provider says of the machine now; on an error
// rec is returned unchanged.
func (m *machines) refresh(ctx context.Context, rec store.Machine) (store.Machine, error) {
	prov, err := m.providers.provider(rec.Provider)
	if err != nil {
		return rec, err
	}
	got, err := prov.GetMachine(ctx, rec.ProviderID)
	if err != nil {
		return rec, err
	}
	return m.store.UpdateMachine(ctx, rec.ID, func(r *store.Machine) error {
		r.Addresses, r.Power = got.Addresses, string(got.Power)
		r.Labels = mergeLabels(r.Labels, got.Labels)
		return nil
	})
}

// DeleteMachine deletes a machine, its node and its record.
func (a *MachineAPI) DeleteMachine(ctx context.Context, req *machinev1.DeleteMachineRequest) (*machinev1.DeleteMachineResponse, error) {
	rec, err := a.record(ctx, req.GetId())
	if err != nil {
		return nil, err
	}
	if err := a.s.machines.remove(ctx, rec); err != nil {
		a.audit(ctx, "machine.delete", "machine_id", rec.ID, "result", "failed", "error", err.Error())
		return nil, machineErr(ctx, err)
	}
	a.audit(ctx, "machine.delete", "machine_id", rec.ID, "provider", rec.Provider, "provider_id", rec.ProviderID, "node_id", rec.NodeID)
	return &machinev1.DeleteMachineResponse{}, nil
}

var powerActions = map[providerv1.PowerAction]sdk.PowerAction{
	providerv1.PowerAction_POWER_ACTION_ON:    sdk.PowerActionOn,
	providerv1.PowerAction_POWER_ACTION_OFF:   sdk.PowerActionOff,
	providerv1.PowerAction_POWER_ACTION_RESET: sdk.PowerActionReset,
	providerv1.PowerAction_POWER_ACTION_PXE:   sdk.PowerActionPXE,
}

// PowerMachine powers a machine on or off, resets it or boots it from PXE.
func (a *MachineAPI) PowerMachine(ctx context.Context, req *machinev1.PowerMachineRequest) (*machinev1.PowerMachineResponse, error) {
	action, ok := powerActions[req.GetAction()]
	if !ok {
		return nil, invalid("power action %v: want on, off, reset or pxe", req.GetAction())
	}
	rec, err := a.record(ctx, req.GetId())
	if err != nil {
		return nil, err
	}
	if rec.ProviderID == "" {
		return nil, status.Errorf(codes.FailedPrecondition, "machine %s is %s: its provider has not made it", rec.ID, rec.State)
	}
	prov, err := a.s.machines.providers.provider(rec.Provider)
	if err != nil {
		return nil, machineErr(ctx, err)
	}
	got, err := prov.Power(ctx, rec.ProviderID, action)
	if err != nil {
		a.audit(ctx, "machine.power", "machine_id", rec.ID, "action", action, "result", "failed", "error", err.Error())
		return nil, machineErr(ctx, err)
	}
	rec, err = a.s.machines.store.UpdateMachine(ctx, rec.ID, func(r *store.Machine) error {
		r.Power, r.UpdatedAt = string(got.Power), a.s.opts.Now()
		return nil
	})
	if err != nil {
		return nil, storeErr(err)
	}
	a.audit(ctx, "machine.power", "machine_id", rec.ID, "action", action, "power", rec.Power)
	return &machinev1.PowerMachineResponse{Machine: a.s.machineToProto(ctx, rec)}, nil
}

var machineStates = map[store.MachineState]machinev1.MachineState{
	store.MachineCreating: machinev1.MachineState_MACHINE_STATE_CREATING,
	store.MachineCreated:  machinev1.MachineState_MACHINE_STATE_CREATED,
	store.MachineEnrolled: machinev1.MachineState_MACHINE_STATE_ENROLLED,
	store.MachineDeleting: machinev1.MachineState_MACHINE_STATE_DELETING,
}

var powerStates = map[string]providerv1.PowerState{
	string(sdk.PowerOn):    providerv1.PowerState_POWER_STATE_ON,
	string(sdk.PowerOff):   providerv1.PowerState_POWER_STATE_OFF,
	string(sdk.PowerOther): providerv1.PowerState_POWER_STATE_OTHER,
}

// machineToProto adds the linked node's live status to the record.
func (s *Server) machineToProto(ctx context.Context, r store.Machine) *machinev1.Machine {
	p := &machinev1.Machine{
		Id:         r.ID,
		Provider:   r.Provider,
		ProviderId: r.ProviderID,
		Name:       r.Name,
		State:      machineStates[r.State],
		Error:      r.Error,
		Addresses:  r.Addresses,
		PowerState: powerStates[r.Power],
		Labels:     r.Labels,
		TokenId:    r.TokenID,
		Spec:       r.Spec,
		CreatedAt:  ts(r.CreatedAt),
		UpdatedAt:  ts(r.UpdatedAt),
		CreatedBy:  r.CreatedBy,
	}
	if r.NodeID == "" {
		return p
	}
	p.Node = &machinev1.LinkedNode{Id: r.NodeID}
	n, err := s.store.GetNode(ctx, r.NodeID)
	if err != nil {
		p.Node.Deleted = errors.Is(err, store.ErrNotFound)
		return p
	}
	last, connected := s.nodeLiveness(n.ID)
	p.Node.Hostname, p.Node.Connected = n.Hostname, connected
	p.Node.Status = fleetv1.NodeStatus_NODE_STATUS_NOT_READY
	if s.ready(last) {
		p.Node.Status = fleetv1.NodeStatus_NODE_STATUS_READY
	}
	return p
}
