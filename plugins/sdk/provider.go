// Package sdk is the contract of a budfleet provider plugin: the Provider
// interface over plain Go structs, the go-plugin glue that carries it over
// gRPC (Serve on the plugin side, Plugin for the host), a func-field mock
// and in-process test helpers.
//
// A plugin's main is one line:
//
//	func main() { sdk.Serve(vsphere.New()) }
//
// The controller starts the binary, calls Info, then ValidateConfig with
// the config block of its providers file, then whatever the operator asks.
// Every call carries a deadline; a plugin should honour its context.
package sdk

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Provider is what a plugin implements.
type Provider interface {
	// Info names the plugin. It must work before ValidateConfig.
	Info(ctx context.Context) (Info, error)
	// ValidateConfig checks config (the JSON object of the providers
	// file's config block) and, when it is good, keeps it for every later
	// call. A bad config is an error wrapping ErrInvalid that says which
	// key to change. The host calls it after each start of the plugin.
	ValidateConfig(ctx context.Context, config json.RawMessage) error
	// ListMachines returns every machine the provider manages.
	ListMachines(ctx context.Context) ([]Machine, error)
	// CreateMachine makes (or enrolls) one machine and starts it so that
	// its agent joins with boot. A bad spec wraps ErrInvalid and creates
	// nothing.
	CreateMachine(ctx context.Context, spec MachineSpec, boot Bootstrap) (Machine, error)
	// GetMachine returns one machine, or an error wrapping ErrNotFound.
	GetMachine(ctx context.Context, providerID string) (Machine, error)
	// DeleteMachine removes a machine; one already gone is not an error.
	DeleteMachine(ctx context.Context, providerID string) error
	// Power acts on a machine and returns it afterwards. An action the
	// provider cannot do wraps ErrUnsupported.
	Power(ctx context.Context, providerID string, action PowerAction) (Machine, error)
}

// The errors that keep their meaning across the wire: test for them with
// errors.Is on the host side. Wrap them with what the operator should do.
var (
	ErrNotFound    = errors.New("machine not found")
	ErrInvalid     = errors.New("invalid input")
	ErrUnsupported = errors.New("not supported by this provider")
)

// Info names a plugin.
type Info struct {
	Name    string
	Version string
}

// PowerState is what a machine's power is.
type PowerState string

const (
	PowerUnknown PowerState = ""
	PowerOn      PowerState = "on"
	PowerOff     PowerState = "off"
	// PowerOther is suspended, or whatever else is neither on nor off.
	PowerOther PowerState = "other"
)

// PowerAction is what Power does.
type PowerAction string

const (
	PowerActionOn    PowerAction = "on"
	PowerActionOff   PowerAction = "off"
	PowerActionReset PowerAction = "reset"
	// PowerActionPXE boots once from the network: it powers on, or resets
	// a machine that is on.
	PowerActionPXE PowerAction = "pxe"
)

// PowerActions lists every action, in the order budctl shows them.
var PowerActions = []PowerAction{PowerActionOn, PowerActionOff, PowerActionReset, PowerActionPXE}

// ParsePowerAction reads on, off, reset or pxe.
func ParsePowerAction(s string) (PowerAction, error) {
	for _, a := range PowerActions {
		if string(a) == s {
			return a, nil
		}
	}
	names := make([]string, len(PowerActions))
	for i, a := range PowerActions {
		names[i] = string(a)
	}
	return "", fmt.Errorf("%w: power action %q: use one of %s", ErrInvalid, s, strings.Join(names, ", "))
}

// Machine is one machine as the provider sees it.
type Machine struct {
	// ProviderID is the provider's own id (a VM's managed object id, a
	// host's inventory name), stable for the machine's life.
	ProviderID string
	Name       string
	Addresses  []string
	Power      PowerState
	// Labels are what the node should carry, such as inventory groups.
	Labels map[string]string
}

// MachineSpec says what to make.
type MachineSpec struct {
	// Name is the name the operator asked for (budctl machines create
	// --name). A provider that makes machines names them so; one that
	// enrolls existing hosts may read it as the host to enroll. The
	// returned Machine.Name is what the controller records.
	Name string
	// Options is the provider-specific part as a JSON object (CPUs,
	// memory, the host to enroll); nil for the provider's defaults.
	// DecodeStrict reads it.
	Options json.RawMessage
	Labels  map[string]string
}

// Validate checks what every provider needs.
func (s MachineSpec) Validate() error {
	if s.Name == "" {
		return fmt.Errorf("%w: the machine spec has no name", ErrInvalid)
	}
	return nil
}

// Bootstrap is what a machine needs to join the fleet on first boot: the
// agent dials ControllerAddress, pins the CA by CAPin and enrolls with
// JoinToken (one use, short TTL, minted for this machine alone).
type Bootstrap struct {
	ControllerAddress string
	// CAPin is the SHA-256 of the controller CA's public key, hex.
	CAPin     string
	JoinToken string
	// AgentPackage is where the agent package comes from: a URL or a path
	// on the machine; empty when the provider's own config says.
	AgentPackage string
}

// Validate checks that the agent could join with it.
func (b Bootstrap) Validate() error {
	switch {
	case b.ControllerAddress == "":
		return fmt.Errorf("%w: the bootstrap has no controller address", ErrInvalid)
	case b.JoinToken == "":
		return fmt.Errorf("%w: the bootstrap has no join token", ErrInvalid)
	}
	return nil
}

// DecodeStrict reads a JSON object into v, refusing unknown keys, so a
// misspelt config or spec key is an error rather than a silent default.
// Empty input leaves v as it is. Errors wrap ErrInvalid.
func DecodeStrict(raw json.RawMessage, v any) error {
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: more than one JSON value", ErrInvalid)
	}
	return nil
}
