package controller

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/bud-ecosystem/budfleet/command"
	"github.com/bud-ecosystem/budfleet/controller/store"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

// CreateCommands queues one command for every chosen node in one store
// write and hands each connected node its command at once. Bad input, an
// unknown node or a selector that matches nothing is refused and stores
// nothing.
func (a *FleetAPI) CreateCommands(ctx context.Context, req *fleetv1.CreateCommandsRequest) (*fleetv1.CreateCommandsResponse, error) {
	if err := command.Validate(req.GetKind(), req.GetParams()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	chosen := 0
	for _, set := range []bool{len(req.GetNodeIds()) > 0, req.GetLabelSelector() != "", req.GetAllNodes()} {
		if set {
			chosen++
		}
	}
	if chosen != 1 {
		return nil, status.Error(codes.InvalidArgument, "choose the nodes with exactly one of node ids, a label selector or all nodes")
	}
	var sel labels.Selector
	if s := req.GetLabelSelector(); s != "" {
		var err error
		if sel, err = labels.Parse(s); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "label selector %q: %v", truncate(s, 256), err)
		}
	}
	var ids []string
	var how string
	switch {
	case req.GetAllNodes():
		how = "all"
		all, err := a.nodeIDs(ctx)
		if err != nil {
			return nil, storeErr(err)
		}
		ids = all
		if len(ids) == 0 {
			return nil, status.Error(codes.InvalidArgument, "there are no enrolled nodes; nothing was queued")
		}
	case sel != nil:
		how = "selector: " + req.GetLabelSelector()
		nodes, err := a.s.store.ListNodes(ctx)
		if err != nil {
			return nil, storeErr(err)
		}
		for _, n := range nodes {
			if sel.Matches(labels.Set(n.Labels)) {
				ids = append(ids, n.ID)
			}
		}
		if len(ids) == 0 {
			return nil, status.Errorf(codes.InvalidArgument, "label selector %q matches no node; nothing was queued", truncate(req.GetLabelSelector(), 256))
		}
	default:
		all, err := a.nodeIDs(ctx)
		if err != nil {
			return nil, storeErr(err)
		}
		known := make(map[string]bool, len(all))
		for _, id := range all {
			known[id] = true
		}
		seen := make(map[string]bool, len(req.GetNodeIds()))
		var unknown []string
		for _, id := range req.GetNodeIds() {
			switch {
			case id == "":
				return nil, status.Error(codes.InvalidArgument, "a node id is empty")
			case seen[id]:
				return nil, status.Errorf(codes.InvalidArgument, "node %s is named twice", truncate(id, 64))
			case !known[id]:
				unknown = append(unknown, truncate(id, 64))
			}
			seen[id] = true
			ids = append(ids, id)
		}
		if len(unknown) > 0 {
			if len(unknown) > 5 {
				unknown = append(unknown[:5], fmt.Sprintf("and %d more", len(unknown)-5))
			}
			return nil, status.Errorf(codes.NotFound, "no such node: %s; nothing was queued (see 'budctl nodes list')", strings.Join(unknown, ", "))
		}
		how = fmt.Sprintf("nodes: %d named", len(ids))
	}
	who := ""
	if id, ok := IdentityFrom(ctx); ok {
		who = id.Name
	}
	now := a.s.opts.Now()
	b := store.CommandBatch{ID: uuid.NewString(), Kind: req.GetKind(), Params: req.GetParams(), Selector: how, CreatedAt: now, CreatedBy: who}
	cs := make([]store.Command, len(ids))
	for i, id := range ids {
		cs[i] = store.Command{
			ID:        uuid.NewString(),
			NodeID:    id,
			Kind:      b.Kind,
			Params:    b.Params,
			State:     store.CommandPending,
			CreatedAt: now,
			BatchID:   b.ID,
		}
	}
	err := a.s.store.EnqueueCommands(ctx, b, cs)
	if err != nil && !errors.Is(err, store.ErrPartialBatch) {
		return nil, storeErr(err)
	}
	// After a partial write the stored part is real work: deliver it (the
	// sessions read their queues, so the unstored part is not sent).
	partial := err != nil
	for i := range cs {
		if partial {
			a.s.commands.wakeNode(cs[i].NodeID)
		} else {
			a.s.commands.wakeWith(cs[i])
		}
	}
	a.audit(ctx, "command.fanout", "batch_id", b.ID, "kind", b.Kind, "count", len(cs), "selector", how, "partial", partial)
	if partial {
		return nil, status.Errorf(codes.Unavailable, "batch %s: %v (see 'budctl commands batch %s')", b.ID, err, b.ID)
	}
	return &fleetv1.CreateCommandsResponse{BatchId: b.ID, Count: uint32(len(cs))}, nil
}

// nodeIDs is every node's id, without decoding the records where the
// store can.
func (a *FleetAPI) nodeIDs(ctx context.Context) ([]string, error) {
	if l, ok := a.s.store.(store.NodeIDLister); ok {
		return l.NodeIDs(ctx)
	}
	nodes, err := a.s.store.ListNodes(ctx)
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(nodes))
	for i, n := range nodes {
		ids[i] = n.ID
	}
	return ids, nil
}

// GetCommandBatch counts a fan-out's commands by state.
func (a *FleetAPI) GetCommandBatch(ctx context.Context, req *fleetv1.GetCommandBatchRequest) (*fleetv1.GetCommandBatchResponse, error) {
	if req.GetBatchId() == "" {
		return nil, status.Error(codes.InvalidArgument, "batch id is required")
	}
	b, n, err := a.s.store.GetCommandBatch(ctx, req.GetBatchId())
	if err != nil {
		return nil, storeErr(err)
	}
	return &fleetv1.GetCommandBatchResponse{
		BatchId:   b.ID,
		Kind:      b.Kind,
		CreatedAt: ts(b.CreatedAt),
		Total:     n.Total,
		Pending:   n.Pending,
		Delivered: n.Delivered,
		Succeeded: n.Succeeded,
		Failed:    n.Failed,
	}, nil
}
