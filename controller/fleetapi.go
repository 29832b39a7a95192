package controller

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bud-ecosystem/budfleet/command"
	"github.com/bud-ecosystem/budfleet/controller/ca"
	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/pki"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

// FleetAPI serves the operator API.
type FleetAPI struct {
	fleetv1.UnimplementedFleetServiceServer
	s *Server
}

// FleetAPI returns the operator service of s.
func (s *Server) FleetAPI() *FleetAPI { return &FleetAPI{s: s} }

// Label keys and values follow Kubernetes' rules: the labels end up on the
// node's Kubernetes object.
var (
	labelKeyRe   = regexp.MustCompile(`^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$`)
	labelValueRe = regexp.MustCompile(`^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$`)
)

func validateLabels(labels map[string]string) error {
	for k, v := range labels {
		prefix, _, hasPrefix := strings.Cut(k, "/")
		if (hasPrefix && len(prefix) > 253) || !labelKeyRe.MatchString(k) {
			return fmt.Errorf("label key %q is not a valid Kubernetes label key", truncate(k, 64))
		}
		if !labelValueRe.MatchString(v) {
			return fmt.Errorf("label %s: value %q is not a valid Kubernetes label value", k, truncate(v, 64))
		}
	}
	return nil
}

// audit records an operator action in the log and, when the controller has
// one, in its audit log file (which goes to the SIEM).
func (a *FleetAPI) audit(ctx context.Context, action string, args ...any) {
	who := ""
	if id, ok := IdentityFrom(ctx); ok {
		who = id.Name
	}
	a.s.log.InfoContext(ctx, "operator action", append([]any{"action", action, "operator", who}, args...)...)
	a.s.auditRecord(ctx, action, who, args...)
}

// auditRecord writes one event into the audit log file, when there is one:
// operator actions, and what nodes do that security teams follow
// (enrollments, renewals, renames, refusals in aggregate). who is the
// operator or node.
func (s *Server) auditRecord(ctx context.Context, action, who string, args ...any) {
	if s.opts.AuditLog == nil {
		return
	}
	attrs := map[string]any{}
	for i := 0; i+1 < len(args); i += 2 {
		if k, ok := args[i].(string); ok {
			attrs[k] = fmt.Sprint(args[i+1])
		}
	}
	if err := s.opts.AuditLog.Record(s.opts.Now(), action, who, attrs); err != nil {
		s.log.ErrorContext(ctx, "write audit log", "action", action, "error", err)
	}
}

func storeErr(err error) error {
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	case errors.Is(err, store.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, store.ErrAlreadyExists):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, store.ErrUnavailable):
		return status.Error(codes.Unavailable, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

// CreateToken mints a join token.
func (a *FleetAPI) CreateToken(ctx context.Context, req *fleetv1.CreateTokenRequest) (*fleetv1.CreateTokenResponse, error) {
	s := a.s
	ttl := DefaultTokenTTL
	if req.GetTtl() != nil {
		if err := req.GetTtl().CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "ttl: %v", err)
		}
		ttl = req.GetTtl().AsDuration()
	}
	if ttl < time.Second || ttl > MaxTokenTTL {
		return nil, status.Errorf(codes.InvalidArgument, "ttl must be between 1s and %s, got %s", MaxTokenTTL, ttl)
	}
	if err := validateLabels(req.GetLabels()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if len(req.GetDescription()) > 256 {
		return nil, status.Error(codes.InvalidArgument, "description is longer than 256 characters")
	}
	jt, err := ca.NewJoinToken(pki.PublicKeyHash(s.ca.Cert))
	if err != nil {
		return nil, status.Errorf(codes.Internal, "make token: %v", err)
	}
	now := s.opts.Now()
	t := store.Token{
		ID:          jt.ID,
		SecretHash:  ca.HashSecret(jt.Secret),
		CreatedAt:   now,
		ExpiresAt:   now.Add(ttl),
		MaxUses:     req.GetMaxUses(),
		Labels:      req.GetLabels(),
		Description: req.GetDescription(),
	}
	if err := s.store.CreateToken(ctx, t); err != nil {
		return nil, storeErr(err)
	}
	a.audit(ctx, "token.create", "token_id", t.ID, "ttl", ttl, "max_uses", t.MaxUses)
	return &fleetv1.CreateTokenResponse{Token: tokenToProto(t), JoinToken: jt.String()}, nil
}

// ListTokens lists join tokens.
func (a *FleetAPI) ListTokens(ctx context.Context, req *fleetv1.ListTokensRequest) (*fleetv1.ListTokensResponse, error) {
	ts, err := a.s.store.ListTokens(ctx)
	if err != nil {
		return nil, storeErr(err)
	}
	tokens, next, err := page(ts, func(t store.Token) string { return t.ID }, tokenToProto, req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	return &fleetv1.ListTokensResponse{Tokens: tokens, NextPageToken: next}, nil
}

// RevokeToken revokes a join token; nodes it enrolled stay enrolled.
func (a *FleetAPI) RevokeToken(ctx context.Context, req *fleetv1.RevokeTokenRequest) (*fleetv1.RevokeTokenResponse, error) {
	if !pki.ValidTokenID(req.GetId()) {
		return nil, status.Error(codes.InvalidArgument, "token id must be 12 hex digits (see 'budctl tokens list')")
	}
	t, err := a.s.store.RevokeToken(ctx, req.GetId(), a.s.opts.Now())
	if err != nil {
		return nil, storeErr(err)
	}
	a.audit(ctx, "token.revoke", "token_id", t.ID)
	return &fleetv1.RevokeTokenResponse{Token: tokenToProto(t)}, nil
}

// ListNodes lists enrolled nodes with their live status.
func (a *FleetAPI) ListNodes(ctx context.Context, req *fleetv1.ListNodesRequest) (*fleetv1.ListNodesResponse, error) {
	ns, err := a.s.store.ListNodes(ctx)
	if err != nil {
		return nil, storeErr(err)
	}
	nodes, next, err := page(ns, func(n store.Node) string { return n.ID }, a.s.nodeToProto, req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	return &fleetv1.ListNodesResponse{Nodes: nodes, NextPageToken: next}, nil
}

// GetNode returns one node.
func (a *FleetAPI) GetNode(ctx context.Context, req *fleetv1.GetNodeRequest) (*fleetv1.GetNodeResponse, error) {
	if req.GetId() == "" {
		return nil, status.Error(codes.InvalidArgument, "node id is required")
	}
	n, err := a.s.store.GetNode(ctx, req.GetId())
	if err != nil {
		return nil, storeErr(err)
	}
	p := a.s.nodeToProto(n)
	p.Kubernetes = a.s.kubernetesNode(ctx, n)  // clusters.go
	p.KubeletJoin = a.s.kubeletJoin(ctx, n.ID) // kubeletjoin.go
	return &fleetv1.GetNodeResponse{Node: p}, nil
}

// DeleteNode forgets a node and revokes its certificate: its session ends
// and its next connection is refused.
func (a *FleetAPI) DeleteNode(ctx context.Context, req *fleetv1.DeleteNodeRequest) (*fleetv1.DeleteNodeResponse, error) {
	if req.GetId() == "" {
		return nil, status.Error(codes.InvalidArgument, "node id is required")
	}
	if err := a.s.store.DeleteNode(ctx, req.GetId()); err != nil {
		return nil, storeErr(err)
	}
	a.s.dropNode(req.GetId())
	a.audit(ctx, "node.delete", "node_id", req.GetId())
	return &fleetv1.DeleteNodeResponse{}, nil
}

// CreateCommand queues a command for a node; it is delivered when the node
// is connected, again after every reconnect until it has a result.
func (a *FleetAPI) CreateCommand(ctx context.Context, req *fleetv1.CreateCommandRequest) (*fleetv1.CreateCommandResponse, error) {
	if req.GetNodeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "node id is required")
	}
	if err := command.Validate(req.GetKind(), req.GetParams()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	c := store.Command{
		ID:        uuid.NewString(),
		NodeID:    req.GetNodeId(),
		Kind:      req.GetKind(),
		Params:    req.GetParams(),
		State:     store.CommandPending,
		CreatedAt: a.s.opts.Now(),
	}
	if err := a.s.store.EnqueueCommand(ctx, c); err != nil {
		return nil, storeErr(err)
	}
	a.s.commands.wakeNode(c.NodeID)
	a.audit(ctx, "command.create", "command_id", c.ID, "node_id", c.NodeID, "kind", c.Kind)
	return &fleetv1.CreateCommandResponse{Command: commandToProto(c)}, nil
}

// ListCommands lists commands of one node or all.
func (a *FleetAPI) ListCommands(ctx context.Context, req *fleetv1.ListCommandsRequest) (*fleetv1.ListCommandsResponse, error) {
	var cs []store.Command
	var err error
	if b := req.GetBatchId(); b != "" {
		// Read through the batch's index: a fan-out's pages then cost its
		// own commands, not a scan of every command of every node.
		cs, err = a.s.store.ListBatchCommands(ctx, b)
		if nodeID := req.GetNodeId(); err == nil && nodeID != "" {
			cs = slices.DeleteFunc(cs, func(c store.Command) bool { return c.NodeID != nodeID })
		}
	} else {
		cs, err = a.s.store.ListCommands(ctx, req.GetNodeId())
	}
	if err != nil {
		return nil, storeErr(err)
	}
	cmds, next, err := page(cs, func(c store.Command) string { return c.ID }, commandToProto, req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	return &fleetv1.ListCommandsResponse{Commands: cmds, NextPageToken: next}, nil
}

// GetCommand returns one command.
func (a *FleetAPI) GetCommand(ctx context.Context, req *fleetv1.GetCommandRequest) (*fleetv1.GetCommandResponse, error) {
	if req.GetId() == "" {
		return nil, status.Error(codes.InvalidArgument, "command id is required")
	}
	c, err := a.s.store.GetCommand(ctx, req.GetId())
	if err != nil {
		return nil, storeErr(err)
	}
	return &fleetv1.GetCommandResponse{Command: commandToProto(c)}, nil
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func tokenToProto(t store.Token) *fleetv1.Token {
	return &fleetv1.Token{
		Id:          t.ID,
		CreatedAt:   ts(t.CreatedAt),
		ExpiresAt:   ts(t.ExpiresAt),
		MaxUses:     t.MaxUses,
		Uses:        t.Uses,
		Labels:      t.Labels,
		Revoked:     t.Revoked(),
		RevokedAt:   ts(t.RevokedAt),
		Description: t.Description,
	}
}

func (s *Server) nodeToProto(n store.Node) *fleetv1.Node {
	last, connected := s.nodeLiveness(n.ID)
	st := fleetv1.NodeStatus_NODE_STATUS_NOT_READY
	if s.ready(last) {
		st = fleetv1.NodeStatus_NODE_STATUS_READY
	}
	if last.IsZero() {
		last = n.LastHeartbeat
	}
	p := &fleetv1.Node{
		Id:                   n.ID,
		Hostname:             n.Hostname,
		Status:               st,
		Labels:               n.Labels,
		EnrolledAt:           ts(n.EnrolledAt),
		LastHeartbeat:        ts(last),
		Connected:            connected,
		TokenId:              n.TokenID,
		InventoryUpdatedAt:   ts(n.InventoryUpdateAt),
		CertificateExpiresAt: ts(n.CertExpiresAt),
		CertificateSerial:    n.CertSerial,
		BootId:               n.BootID,
	}
	if peer := s.sessionPeer(n.ID); peer != "" {
		p.RemoteAddress = peer
	}
	if g, err := decodeGPUs(n); err == nil {
		if len(n.GPUs) > 0 {
			p.Gpus = g
		}
		p.KubernetesLabels = gpuLabels(g.GetInventory())
		p.ProposedTaints = gpuTaints(g.GetInventory())
		p.Problems = gpuProblems(g)
	} else {
		p.Problems = append(p.Problems, err.Error())
	}
	if n.HostnameConflict != "" {
		p.Problems = append(p.Problems, n.HostnameConflict)
	}
	p.Inventory = n.Inventory
	return p
}

func (s *Server) sessionPeer(id string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sess := s.sessions[id]; sess != nil {
		return sess.peer
	}
	return ""
}

var commandStates = map[store.CommandState]fleetv1.CommandState{
	store.CommandPending:   fleetv1.CommandState_COMMAND_STATE_PENDING,
	store.CommandDelivered: fleetv1.CommandState_COMMAND_STATE_DELIVERED,
	store.CommandSucceeded: fleetv1.CommandState_COMMAND_STATE_SUCCEEDED,
	store.CommandFailed:    fleetv1.CommandState_COMMAND_STATE_FAILED,
}

func commandToProto(c store.Command) *fleetv1.Command {
	return &fleetv1.Command{
		Id:          c.ID,
		NodeId:      c.NodeID,
		Kind:        c.Kind,
		Params:      command.Redact(c.Kind, c.Params),
		State:       commandStates[c.State],
		CreatedAt:   ts(c.CreatedAt),
		DeliveredAt: ts(c.DeliveredAt),
		FinishedAt:  ts(c.FinishedAt),
		Deliveries:  c.Deliveries,
		Message:     c.Message,
		Output:      c.Output,
		OutputTail:  outputTailToProto(c.OutputTail),
		BatchId:     c.BatchID,
	}
}

func outputTailToProto(t *store.OutputTail) *fleetv1.CommandOutputTail {
	if t == nil {
		return nil
	}
	return &fleetv1.CommandOutputTail{
		Stdout:      strings.ToValidUTF8(string(t.Stdout), "\uFFFD"),
		Stderr:      strings.ToValidUTF8(string(t.Stderr), "\uFFFD"),
		StdoutBytes: t.StdoutBytes,
		StderrBytes: t.StderrBytes,
		UpdatedAt:   ts(t.UpdatedAt),
	}
}
