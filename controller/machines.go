package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/google/uuid"

	"github.com/bud-ecosystem/budfleet/controller/ca"
	"github.com/bud-ecosystem/budfleet/controller/providers"
	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/pki"
	"github.com/bud-ecosystem/budfleet/plugins/sdk"
)

// The labels a machine's join token gives its node, so that a node says
// which machine it is.
const (
	LabelProvider = "budfleet.io/provider"
	LabelMachine  = "budfleet.io/machine"
)

// DefaultMachineTokenTTL is how long a machine has to boot and enroll.
const DefaultMachineTokenTTL = time.Hour

// machineProvider is one provider as the machines use it; a
// *providers.Provider is one, tests put sdk mocks behind it.
type machineProvider interface {
	AgentPackage() string
	CreateMachine(ctx context.Context, spec sdk.MachineSpec, boot sdk.Bootstrap) (sdk.Machine, error)
	GetMachine(ctx context.Context, providerID string) (sdk.Machine, error)
	DeleteMachine(ctx context.Context, providerID string) error
	Power(ctx context.Context, providerID string, action sdk.PowerAction) (sdk.Machine, error)
}

// providerSet finds providers by name and reports them.
type providerSet interface {
	provider(name string) (machineProvider, error)
	status() []providers.Status
}

// hostProviders is the providerSet of a *providers.Host.
type hostProviders struct{ h *providers.Host }

func (p hostProviders) provider(name string) (machineProvider, error) { return p.h.Provider(name) }
func (p hostProviders) status() []providers.Status                    { return p.h.Status() }

// noProviders is the providerSet of a controller run without a providers
// file.
type noProviders struct{}

func (noProviders) provider(name string) (machineProvider, error) {
	return nil, fmt.Errorf("%w %q: the controller has no providers (bud-controller serve --providers FILE)", providers.ErrUnknownProvider, name)
}
func (noProviders) status() []providers.Status { return nil }

// machines is the controller's part in provider plugins: it mints each
// machine's token, asks the provider, keeps the record and links it to the
// node its agent enrolls as. The operator API is machineapi.go.
type machines struct {
	srv       *Server
	store     store.MachineStore
	providers providerSet
}

func newMachines(s *Server) *machines {
	m := &machines{srv: s, store: s.opts.Store, providers: noProviders{}}
	if s.opts.Providers != nil {
		m.providers = hostProviders{s.opts.Providers}
	}
	return m
}

// create makes one machine: the token and the record first (so that an
// agent that enrolls before the provider answers finds its machine), then
// the provider's CreateMachine. When the provider fails, nothing is left:
// the token is revoked and the record deleted.
func (m *machines) create(ctx context.Context, prov machineProvider, provider, name string, spec json.RawMessage, labels map[string]string) (store.Machine, error) {
	s := m.srv
	now := s.opts.Now()
	id := uuid.NewString()
	jt, err := ca.NewJoinToken(pki.PublicKeyHash(s.ca.Cert))
	if err != nil {
		return store.Machine{}, fmt.Errorf("make the machine's join token: %w", err)
	}
	tokLabels := maps.Clone(labels)
	if tokLabels == nil {
		tokLabels = map[string]string{}
	}
	tokLabels[LabelProvider], tokLabels[LabelMachine] = provider, id
	tok := store.Token{
		ID:          jt.ID,
		SecretHash:  ca.HashSecret(jt.Secret),
		CreatedAt:   now,
		ExpiresAt:   now.Add(s.opts.MachineTokenTTL),
		MaxUses:     1,
		Labels:      tokLabels,
		Description: truncate(fmt.Sprintf("machine %s (provider %s)", name, provider), 250),
	}
	if err := s.store.CreateToken(ctx, tok); err != nil {
		return store.Machine{}, err
	}
	rec := store.Machine{
		ID: id, Provider: provider, Name: name, Spec: spec, State: store.MachineCreating,
		Labels: labels, TokenID: tok.ID, CreatedAt: now, UpdatedAt: now, CreatedBy: operatorName(ctx),
	}
	if err := m.store.CreateMachine(ctx, rec); err != nil {
		m.revoke(ctx, tok.ID)
		return store.Machine{}, err
	}
	made, err := prov.CreateMachine(ctx, sdk.MachineSpec{Name: name, Options: spec, Labels: labels}, sdk.Bootstrap{
		ControllerAddress: s.opts.Advertise,
		CAPin:             pki.PublicKeyHash(s.ca.Cert),
		JoinToken:         jt.String(),
		AgentPackage:      prov.AgentPackage(),
	})
	if err != nil {
		m.revoke(ctx, tok.ID)
		if derr := m.store.DeleteMachine(context.WithoutCancel(ctx), id); derr != nil {
			s.log.ErrorContext(ctx, "delete the record of a machine its provider refused", "machine_id", id, "error", derr)
		}
		return store.Machine{}, err
	}
	rec, err = m.store.UpdateMachine(context.WithoutCancel(ctx), id, func(r *store.Machine) error {
		r.ProviderID, r.Name, r.Addresses, r.Power = made.ProviderID, made.Name, made.Addresses, string(made.Power)
		r.Labels = mergeLabels(r.Labels, made.Labels)
		r.UpdatedAt = s.opts.Now()
		if r.State == store.MachineCreating {
			r.State = store.MachineCreated
		}
		return nil
	})
	if err != nil {
		return store.Machine{}, fmt.Errorf("provider %s made machine %s (%s) but the controller could not record it: %w", provider, made.Name, made.ProviderID, err)
	}
	if rec.NodeID != "" {
		// The agent enrolled before the provider answered: the node gets
		// the provider's labels now.
		m.labelNode(ctx, rec)
	}
	return rec, nil
}

// mergeLabels is base with extra's labels that are valid and not in base.
func mergeLabels(base, extra map[string]string) map[string]string {
	out := maps.Clone(base)
	for k, v := range extra {
		if _, ok := out[k]; ok || validateLabels(map[string]string{k: v}) != nil {
			continue
		}
		if out == nil {
			out = map[string]string{}
		}
		out[k] = v
	}
	return out
}

func (m *machines) revoke(ctx context.Context, tokenID string) {
	if _, err := m.srv.store.RevokeToken(context.WithoutCancel(ctx), tokenID, m.srv.opts.Now()); err != nil {
		m.srv.log.ErrorContext(ctx, "revoke a machine's join token", "token_id", tokenID, "error", err)
	}
}

// enrolled links the machine whose token tok is to the node that just
// enrolled with it. Enrollment has succeeded by then: a failure here is
// logged, not returned.
func (m *machines) enrolled(ctx context.Context, tok store.Token, nodeID string) {
	id := tok.Labels[LabelMachine]
	if id == "" {
		return
	}
	rec, err := m.store.UpdateMachine(ctx, id, func(r *store.Machine) error {
		if r.TokenID != tok.ID {
			return fmt.Errorf("machine %s has token %s, not %s", id, r.TokenID, tok.ID)
		}
		r.NodeID, r.State, r.UpdatedAt = nodeID, store.MachineEnrolled, m.srv.opts.Now()
		return nil
	})
	if err != nil {
		m.srv.log.WarnContext(ctx, "link an enrolled node to its machine", "node_id", nodeID, "machine_id", id, "error", err)
		return
	}
	m.srv.log.InfoContext(ctx, "machine enrolled", "machine_id", id, "provider", rec.Provider, "provider_id", rec.ProviderID, "node_id", nodeID)
	m.labelNode(ctx, rec)
}

// labelNode gives the machine's node the machine's labels it lacks (the
// provider's, such as inventory groups).
func (m *machines) labelNode(ctx context.Context, rec store.Machine) {
	_, err := m.srv.store.UpdateNode(ctx, rec.NodeID, func(n *store.Node) error {
		n.Labels = mergeLabels(n.Labels, rec.Labels)
		return nil
	})
	if err != nil {
		m.srv.log.WarnContext(ctx, "label a machine's node", "node_id", rec.NodeID, "machine_id", rec.ID, "error", err)
	}
}

// errInCampaign is a delete refused because the machine's node is in a
// maintenance campaign.
var errInCampaign = errors.New("the machine's node is in a maintenance campaign")

// checkNotInCampaign refuses a node that a campaign not yet ended holds.
func (m *machines) checkNotInCampaign(ctx context.Context, rec store.Machine) error {
	if rec.NodeID == "" {
		return nil
	}
	cs, err := m.srv.opts.Store.ListCampaigns(ctx)
	if err != nil {
		return err
	}
	for _, c := range cs {
		if c.State.Done() {
			continue
		}
		for _, n := range c.Nodes {
			if n.NodeID == rec.NodeID {
				return fmt.Errorf("%w: machine %s is node %s, which is in maintenance campaign %s (%s, node at %s); wait for the campaign to end or abort it ('budctl maintenance abort %s'), then delete the machine",
					errInCampaign, rec.ID, rec.NodeID, c.ID, c.State, n.Step, c.ID)
			}
		}
	}
	return nil
}

// remove deletes the machine at its provider, then its node, token and
// record. A provider that fails leaves the machine deleting, with the
// error, to be deleted again.
func (m *machines) remove(ctx context.Context, rec store.Machine) error {
	s := m.srv
	if err := m.checkNotInCampaign(ctx, rec); err != nil {
		return err
	}
	prov, err := m.providers.provider(rec.Provider)
	if err != nil {
		return err
	}
	if _, err := m.store.UpdateMachine(ctx, rec.ID, func(r *store.Machine) error {
		r.State, r.UpdatedAt = store.MachineDeleting, s.opts.Now()
		return nil
	}); err != nil {
		return err
	}
	if rec.ProviderID != "" {
		if err := prov.DeleteMachine(ctx, rec.ProviderID); err != nil {
			if _, uerr := m.store.UpdateMachine(context.WithoutCancel(ctx), rec.ID, func(r *store.Machine) error {
				r.Error, r.UpdatedAt = err.Error(), s.opts.Now()
				return nil
			}); uerr != nil {
				s.log.ErrorContext(ctx, "record a failed machine delete", "machine_id", rec.ID, "error", uerr)
			}
			return err
		}
	}
	// The machine is gone at its provider: the rest goes even if the
	// caller stops waiting.
	ctx = context.WithoutCancel(ctx)
	m.revoke(ctx, rec.TokenID)
	if rec.NodeID != "" {
		if err := s.store.DeleteNode(ctx, rec.NodeID); err != nil && !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("machine %s is deleted at its provider, but its node %s is not: %w; delete it with 'budctl nodes delete %s'", rec.ID, rec.NodeID, err, rec.NodeID)
		}
		s.dropNode(rec.NodeID)
	}
	return m.store.DeleteMachine(ctx, rec.ID)
}
