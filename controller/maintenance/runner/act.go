package runner

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bud-ecosystem/budfleet/command"
	"github.com/bud-ecosystem/budfleet/controller/maintenance"
	"github.com/bud-ecosystem/budfleet/controller/store"
)

// execute carries out one step's actions, after the step was persisted.
// A failed action is logged and skipped: Step asks again for whatever did
// not take effect. Audit events go out in order and stop at the first
// failure, so that AuditedThrough never passes an event not written.
func (r *Runner) execute(ctx context.Context, c store.Campaign, acts []maintenance.Action, nodes map[string]store.Node) {
	node := func(id, k8s string) store.Node {
		if n, ok := nodes[id]; ok {
			return n
		}
		return removedNode(maintenance.Watch{NodeID: id, K8sNode: k8s})
	}
	auditing := true
	for _, a := range acts {
		if ctx.Err() != nil {
			return
		}
		var err error
		switch a := a.(type) {
		case maintenance.Cordon:
			cctx, cancel := r.callCtx(ctx)
			err = r.opts.Cluster.Cordon(cctx, node(a.NodeID, a.K8sNode))
			cancel()
		case maintenance.Uncordon:
			r.cancelDrain(c.ID, a.NodeID)
			cctx, cancel := r.callCtx(ctx)
			err = r.opts.Cluster.Uncordon(cctx, node(a.NodeID, a.K8sNode))
			cancel()
		case maintenance.Drain:
			r.startDrain(c.ID, a, node(a.NodeID, a.K8sNode))
		case maintenance.EnqueueCommand:
			err = r.enqueue(ctx, a)
		case maintenance.Audit:
			if !auditing {
				continue
			}
			if err = r.audit(ctx, c, a); err != nil {
				auditing = false
			}
		default:
			err = fmt.Errorf("unknown action %T", a)
		}
		if err != nil && ctx.Err() == nil {
			r.log.WarnContext(ctx, "maintenance action failed; the next step asks again", append([]any{"campaign_id", c.ID, "action", actionName(a), "error", err}, nodeLog(a)...)...)
		}
	}
}

// enqueue queues a campaign's command under its deterministic id; one the
// store has already is done.
func (r *Runner) enqueue(ctx context.Context, a maintenance.EnqueueCommand) error {
	params, err := CommandParams(a)
	if err != nil {
		return err
	}
	err = r.opts.Store.EnqueueCommand(ctx, store.Command{
		ID:        a.ID,
		NodeID:    a.NodeID,
		Kind:      a.Kind,
		Params:    params,
		State:     store.CommandPending,
		CreatedAt: r.opts.Now(),
	})
	switch {
	case errors.Is(err, store.ErrAlreadyExists):
		return nil
	case err != nil:
		return err
	}
	r.log.InfoContext(ctx, "maintenance command queued", "command_id", a.ID, "node_id", a.NodeID, "kind", a.Kind)
	r.opts.Agents.CommandQueued(a.NodeID)
	return nil
}

// CommandParams is the parameters of a campaign's command as the agent
// takes them (the command package's maintenance.task and
// maintenance.reboot), checked: the script in standard base64, since
// command parameters are protobuf strings and a script need not be UTF-8;
// the reboot with the campaign id alone. The operator API calls it for
// every node before it stores a campaign, so a campaign never queues a
// command the agent refuses.
func CommandParams(a maintenance.EnqueueCommand) (map[string]string, error) {
	var p map[string]string
	switch a.Kind {
	case command.MaintenanceTask:
		t := command.MaintenanceTaskParams{
			Script:     []byte(a.Params[maintenance.ParamScript]),
			CampaignID: a.Params[maintenance.ParamCampaignID],
			NodeName:   a.Params[maintenance.ParamNodeName],
		}
		if v := a.Params[maintenance.ParamTimeout]; v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				return nil, fmt.Errorf("task timeout %q: %w", v, err)
			}
			t.Timeout = d
		}
		p = t.Params()
	case command.MaintenanceReboot:
		p = command.MaintenanceRebootParams{CampaignID: a.Params[maintenance.ParamCampaignID]}.Params()
	case command.AgentUpgrade:
		u := command.AgentUpgradeParams{
			Digest:     a.Params[maintenance.ParamDigest],
			Version:    a.Params[maintenance.ParamVersion],
			CampaignID: a.Params[maintenance.ParamCampaignID],
		}
		if v := a.Params[maintenance.ParamTimeout]; v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				return nil, fmt.Errorf("upgrade timeout %q: %w", v, err)
			}
			u.Timeout = d
		}
		p = u.Params()
	default:
		return nil, fmt.Errorf("a campaign queues no command of kind %q", a.Kind)
	}
	if err := command.Validate(a.Kind, p); err != nil {
		return nil, err
	}
	return p, nil
}

// audit writes one campaign event to the audit trail, with the campaign's
// creator as the operator.
func (r *Runner) audit(ctx context.Context, c store.Campaign, a maintenance.Audit) error {
	attrs := map[string]any{
		"audit_id":    a.ID,
		"campaign_id": a.CampaignID,
		"result":      a.Result,
	}
	if c.Name != "" {
		attrs["campaign_name"] = c.Name
	}
	for k, v := range map[string]string{"node_id": a.NodeID, "k8s_node": a.K8sNode, "message": a.Message} {
		if v != "" {
			attrs[k] = v
		}
	}
	args := []any{"action", "maintenance." + a.What, "operator", c.CreatedBy}
	for _, k := range []string{"audit_id", "campaign_id", "node_id", "k8s_node", "result", "message"} {
		if v, ok := attrs[k]; ok {
			args = append(args, k, v)
		}
	}
	r.log.InfoContext(ctx, "maintenance event", args...)
	if r.opts.Audit != nil {
		if err := r.opts.Audit.Record(a.At, "maintenance."+a.What, c.CreatedBy, attrs); err != nil {
			return err
		}
	}
	r.mu.Lock()
	if a.Seq > r.audited[c.ID] {
		r.audited[c.ID] = a.Seq
	}
	r.mu.Unlock()
	return nil
}

// drainKey names a drain: one per node and campaign.
type drainKey struct{ campaign, node string }

// drainRun is one drain attempt the runner runs or ran.
type drainRun struct {
	attempt int
	state   maintenance.DrainState
	msg     string
	cancel  context.CancelFunc
	done    chan struct{}
}

// startDrain starts the attempt unless it, or a later one, runs or ran
// already; an earlier one is cancelled and waited for first.
func (r *Runner) startDrain(campaignID string, a maintenance.Drain, node store.Node) {
	k := drainKey{campaignID, a.NodeID}
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.drains[k]
	if old != nil && old.attempt >= a.Attempt {
		return
	}
	if old != nil {
		old.cancel()
	}
	parent := r.drainCtx
	if parent == nil {
		parent = context.Background() // not running: only in tests
	}
	dctx, cancel := context.WithTimeout(parent, a.Timeout)
	d := &drainRun{attempt: a.Attempt, state: maintenance.DrainRunning, cancel: cancel, done: make(chan struct{})}
	r.drains[k] = d
	log := r.log.With("campaign_id", campaignID, "node_id", a.NodeID, "k8s_node", a.K8sNode, "attempt", a.Attempt)
	log.Info("draining", "timeout", a.Timeout)
	r.drainWG.Add(1)
	go func() {
		defer r.drainWG.Done()
		defer close(d.done)
		defer cancel()
		if old != nil {
			<-old.done
		}
		err := dctx.Err()
		if err == nil {
			err = r.opts.Cluster.Drain(dctx, node, a.Timeout, a.GracePeriod)
		}
		r.mu.Lock()
		defer r.Wake()
		defer r.mu.Unlock()
		if r.drains[k] != d {
			return // cancelled by an uncordon, or replaced
		}
		switch {
		case err == nil:
			d.state = maintenance.DrainSucceeded
			log.Info("drained")
		case parent.Err() != nil:
			// The runner is stopping: the attempt is neither failed nor
			// done. The next runner issues it again with its time left.
		case errors.Is(dctx.Err(), context.DeadlineExceeded):
			d.state, d.msg = maintenance.DrainFailed, fmt.Sprintf("not drained within its %s timeout: %v", a.Timeout, err)
			log.Warn("drain timed out", "error", err)
		default:
			d.state, d.msg = maintenance.DrainFailed, err.Error()
			log.Warn("drain failed", "error", err)
		}
	}()
}

// cancelDrain stops and forgets the node's drain: a node being uncordoned
// is not drained.
func (r *Runner) cancelDrain(campaignID, nodeID string) {
	k := drainKey{campaignID, nodeID}
	r.mu.Lock()
	defer r.mu.Unlock()
	if d := r.drains[k]; d != nil {
		d.cancel()
		delete(r.drains, k)
	}
}
