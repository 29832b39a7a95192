package sdk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	providerv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/provider/v1"
)

// client is the host's Provider: it calls the plugin over gRPC.
type client struct {
	rpc providerv1.ProviderServiceClient
	// done ends when the plugin process exits.
	done context.Context
}

var _ Provider = (*client)(nil)

// call joins ctx with the plugin's lifetime, so a call to a plugin that
// died returns at once rather than at its deadline.
func (c *client) call(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(c.done, cancel)
	return ctx, func() { stop(); cancel() }
}

func (c *client) Info(ctx context.Context) (Info, error) {
	ctx, cancel := c.call(ctx)
	defer cancel()
	resp, err := c.rpc.Info(ctx, &providerv1.InfoRequest{})
	if err != nil {
		return Info{}, c.fromStatus(err)
	}
	return Info{Name: resp.GetName(), Version: resp.GetVersion()}, nil
}

func (c *client) ValidateConfig(ctx context.Context, config json.RawMessage) error {
	ctx, cancel := c.call(ctx)
	defer cancel()
	_, err := c.rpc.ValidateConfig(ctx, &providerv1.ValidateConfigRequest{Config: config})
	return c.fromStatus(err)
}

func (c *client) ListMachines(ctx context.Context) ([]Machine, error) {
	ctx, cancel := c.call(ctx)
	defer cancel()
	resp, err := c.rpc.ListMachines(ctx, &providerv1.ListMachinesRequest{})
	if err != nil {
		return nil, c.fromStatus(err)
	}
	out := make([]Machine, 0, len(resp.GetMachines()))
	for _, m := range resp.GetMachines() {
		out = append(out, fromProtoMachine(m))
	}
	return out, nil
}

func (c *client) CreateMachine(ctx context.Context, spec MachineSpec, boot Bootstrap) (Machine, error) {
	ctx, cancel := c.call(ctx)
	defer cancel()
	resp, err := c.rpc.CreateMachine(ctx, &providerv1.CreateMachineRequest{
		Spec: &providerv1.MachineSpec{Name: spec.Name, Options: spec.Options, Labels: spec.Labels},
		Bootstrap: &providerv1.Bootstrap{
			ControllerAddress: boot.ControllerAddress,
			CaPin:             boot.CAPin,
			JoinToken:         boot.JoinToken,
			AgentPackage:      boot.AgentPackage,
		},
	})
	if err != nil {
		return Machine{}, c.fromStatus(err)
	}
	return fromProtoMachine(resp.GetMachine()), nil
}

func (c *client) GetMachine(ctx context.Context, providerID string) (Machine, error) {
	ctx, cancel := c.call(ctx)
	defer cancel()
	resp, err := c.rpc.GetMachine(ctx, &providerv1.GetMachineRequest{ProviderId: providerID})
	if err != nil {
		return Machine{}, c.fromStatus(err)
	}
	return fromProtoMachine(resp.GetMachine()), nil
}

func (c *client) DeleteMachine(ctx context.Context, providerID string) error {
	ctx, cancel := c.call(ctx)
	defer cancel()
	_, err := c.rpc.DeleteMachine(ctx, &providerv1.DeleteMachineRequest{ProviderId: providerID})
	return c.fromStatus(err)
}

func (c *client) Power(ctx context.Context, providerID string, action PowerAction) (Machine, error) {
	a, ok := powerActions[action]
	if !ok {
		_, err := ParsePowerAction(string(action))
		return Machine{}, err
	}
	ctx, cancel := c.call(ctx)
	defer cancel()
	resp, err := c.rpc.Power(ctx, &providerv1.PowerRequest{ProviderId: providerID, Action: a})
	if err != nil {
		return Machine{}, c.fromStatus(err)
	}
	return fromProtoMachine(resp.GetMachine()), nil
}

// remoteError is an error the plugin returned: its text is the plugin's,
// and errors.Is finds the sentinel its status code stands for.
type remoteError struct {
	msg      string
	sentinel error
}

func (e *remoteError) Error() string        { return e.msg }
func (e *remoteError) Is(target error) bool { return target == e.sentinel }

// fromStatus turns a gRPC status back into the plugin's error. A call cut
// short because the plugin exited says so, rather than "context canceled".
func (c *client) fromStatus(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch st.Code() {
	case codes.NotFound:
		return &remoteError{msg: st.Message(), sentinel: ErrNotFound}
	case codes.InvalidArgument:
		return &remoteError{msg: st.Message(), sentinel: ErrInvalid}
	case codes.Unimplemented:
		return &remoteError{msg: st.Message(), sentinel: ErrUnsupported}
	case codes.Unknown:
		// What the plugin returned as a plain error.
		return errors.New(st.Message())
	case codes.DeadlineExceeded:
		return fmt.Errorf("%w: %s", context.DeadlineExceeded, st.Message())
	}
	if c.done.Err() != nil {
		return fmt.Errorf("%w: %s", ErrPluginExited, st.Message())
	}
	// A transport failure (Unavailable) and the like keep their status,
	// so that a host can tell them from the plugin's own errors.
	return err
}

// ErrPluginExited is a call that ended because the plugin process did.
var ErrPluginExited = errors.New("the provider plugin exited")
