package sdk

import (
	"context"
	"encoding/json"
	"fmt"
)

// MockProvider is a Provider whose methods call its fields; a method whose
// field is nil returns an error wrapping ErrUnsupported. Tests of hosts set
// the few they need; tests of the wire pass it to TestProvider.
type MockProvider struct {
	InfoF           func(ctx context.Context) (Info, error)
	ValidateConfigF func(ctx context.Context, config json.RawMessage) error
	ListMachinesF   func(ctx context.Context) ([]Machine, error)
	CreateMachineF  func(ctx context.Context, spec MachineSpec, boot Bootstrap) (Machine, error)
	GetMachineF     func(ctx context.Context, providerID string) (Machine, error)
	DeleteMachineF  func(ctx context.Context, providerID string) error
	PowerF          func(ctx context.Context, providerID string, action PowerAction) (Machine, error)
}

var _ Provider = (*MockProvider)(nil)

func unset(method string) error {
	return fmt.Errorf("%w: MockProvider.%sF is not set", ErrUnsupported, method)
}

func (m *MockProvider) Info(ctx context.Context) (Info, error) {
	if m.InfoF == nil {
		return Info{}, unset("Info")
	}
	return m.InfoF(ctx)
}

func (m *MockProvider) ValidateConfig(ctx context.Context, config json.RawMessage) error {
	if m.ValidateConfigF == nil {
		return unset("ValidateConfig")
	}
	return m.ValidateConfigF(ctx, config)
}

func (m *MockProvider) ListMachines(ctx context.Context) ([]Machine, error) {
	if m.ListMachinesF == nil {
		return nil, unset("ListMachines")
	}
	return m.ListMachinesF(ctx)
}

func (m *MockProvider) CreateMachine(ctx context.Context, spec MachineSpec, boot Bootstrap) (Machine, error) {
	if m.CreateMachineF == nil {
		return Machine{}, unset("CreateMachine")
	}
	return m.CreateMachineF(ctx, spec, boot)
}

func (m *MockProvider) GetMachine(ctx context.Context, providerID string) (Machine, error) {
	if m.GetMachineF == nil {
		return Machine{}, unset("GetMachine")
	}
	return m.GetMachineF(ctx, providerID)
}

func (m *MockProvider) DeleteMachine(ctx context.Context, providerID string) error {
	if m.DeleteMachineF == nil {
		return unset("DeleteMachine")
	}
	return m.DeleteMachineF(ctx, providerID)
}

func (m *MockProvider) Power(ctx context.Context, providerID string, action PowerAction) (Machine, error) {
	if m.PowerF == nil {
		return Machine{}, unset("Power")
	}
	return m.PowerF(ctx, providerID, action)
}
