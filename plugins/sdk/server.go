package sdk

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	providerv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/provider/v1"
)

// server is the plugin side: it serves the gRPC service from a Provider.
type server struct {
	providerv1.UnimplementedProviderServiceServer
	impl Provider
}

func (s *server) Info(ctx context.Context, _ *providerv1.InfoRequest) (*providerv1.InfoResponse, error) {
	info, err := s.impl.Info(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &providerv1.InfoResponse{Name: info.Name, Version: info.Version}, nil
}

func (s *server) ValidateConfig(ctx context.Context, req *providerv1.ValidateConfigRequest) (*providerv1.ValidateConfigResponse, error) {
	if err := s.impl.ValidateConfig(ctx, req.GetConfig()); err != nil {
		return nil, toStatus(err)
	}
	return &providerv1.ValidateConfigResponse{}, nil
}

func (s *server) ListMachines(ctx context.Context, _ *providerv1.ListMachinesRequest) (*providerv1.ListMachinesResponse, error) {
	ms, err := s.impl.ListMachines(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &providerv1.ListMachinesResponse{}
	for _, m := range ms {
		resp.Machines = append(resp.Machines, toProtoMachine(m))
	}
	return resp, nil
}

func (s *server) CreateMachine(ctx context.Context, req *providerv1.CreateMachineRequest) (*providerv1.CreateMachineResponse, error) {
	spec := MachineSpec{
		Name:    req.GetSpec().GetName(),
		Options: req.GetSpec().GetOptions(),
		Labels:  req.GetSpec().GetLabels(),
	}
	boot := Bootstrap{
		ControllerAddress: req.GetBootstrap().GetControllerAddress(),
		CAPin:             req.GetBootstrap().GetCaPin(),
		JoinToken:         req.GetBootstrap().GetJoinToken(),
		AgentPackage:      req.GetBootstrap().GetAgentPackage(),
	}
	// Checked here once, so that no provider has to.
	if err := spec.Validate(); err != nil {
		return nil, toStatus(err)
	}
	if err := boot.Validate(); err != nil {
		return nil, toStatus(err)
	}
	m, err := s.impl.CreateMachine(ctx, spec, boot)
	if err != nil {
		return nil, toStatus(err)
	}
	return &providerv1.CreateMachineResponse{Machine: toProtoMachine(m)}, nil
}

func (s *server) GetMachine(ctx context.Context, req *providerv1.GetMachineRequest) (*providerv1.GetMachineResponse, error) {
	m, err := s.impl.GetMachine(ctx, req.GetProviderId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &providerv1.GetMachineResponse{Machine: toProtoMachine(m)}, nil
}

func (s *server) DeleteMachine(ctx context.Context, req *providerv1.DeleteMachineRequest) (*providerv1.DeleteMachineResponse, error) {
	if err := s.impl.DeleteMachine(ctx, req.GetProviderId()); err != nil {
		return nil, toStatus(err)
	}
	return &providerv1.DeleteMachineResponse{}, nil
}

func (s *server) Power(ctx context.Context, req *providerv1.PowerRequest) (*providerv1.PowerResponse, error) {
	action, ok := fromProtoAction(req.GetAction())
	if !ok {
		return nil, status.Errorf(codes.InvalidArgument, "power action %v: use on, off, reset or pxe", req.GetAction())
	}
	m, err := s.impl.Power(ctx, req.GetProviderId(), action)
	if err != nil {
		return nil, toStatus(err)
	}
	return &providerv1.PowerResponse{Machine: toProtoMachine(m)}, nil
}

// toStatus gives the sentinels their status codes; the text stays the
// plugin's, for the operator to read.
func toStatus(err error) error {
	code := codes.Unknown
	switch {
	case errors.Is(err, ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, ErrInvalid):
		code = codes.InvalidArgument
	case errors.Is(err, ErrUnsupported):
		code = codes.Unimplemented
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	}
	return status.Error(code, err.Error())
}
