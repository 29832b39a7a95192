package controller

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	corev1 "k8s.io/api/core/v1"

	"github.com/bud-ecosystem/budfleet/controller/kube"
	"github.com/bud-ecosystem/budfleet/controller/maintenance"
	"github.com/bud-ecosystem/budfleet/controller/maintenance/runner"
	"github.com/bud-ecosystem/budfleet/controller/store"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
	gpuv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/gpu/v1"
)

// QuarantinePolicy is the optional policy that takes a node with an
// Unhealthy GPU out of scheduling, as NVSentinel does: the Node is cordoned
// and tainted nvidia.com/gpu.unhealthy=true:NoSchedule, and optionally a
// one-node campaign drains it and runs a remediation task. The quarantine
// lifts when every GPU reports healthy again. The zero value is off.
type QuarantinePolicy struct {
	Enabled bool
	// MaxNodes is the circuit breaker: at most this many nodes quarantined
	// at once; more are held (and named in 'budctl nodes get') until one
	// is released, so a fleet-wide fault such as a bad driver push cannot
	// cordon the fleet. Default DefaultQuarantineMaxNodes.
	MaxNodes int
	// Task, when set, opens a one-node campaign for each quarantined node
	// that drains it and runs this script (Reboot: and reboots it).
	Task        string
	TaskTimeout time.Duration
	Reboot      bool
	// RetryInterval is how often quarantines that failed to apply or lift,
	// or that the breaker holds, are tried again. Default 30s.
	RetryInterval time.Duration
}

// Quarantine defaults.
const (
	DefaultQuarantineMaxNodes      = 3
	DefaultQuarantineRetryInterval = 30 * time.Second
	// TaintGPUUnhealthy is the taint a quarantined Node carries.
	TaintGPUUnhealthy = "nvidia.com/gpu.unhealthy"
	// quarantineOperator names the controller itself in the audit trail
	// and as the creator of remediation campaigns.
	quarantineOperator = "bud-controller (gpu quarantine)"
)

var quarantineTaint = corev1.Taint{Key: TaintGPUUnhealthy, Value: "true", Effect: corev1.TaintEffectNoSchedule}

// quarantineCluster is what the quarantine needs from Kubernetes: the
// campaign runner's node calls and a taint.
type quarantineCluster interface {
	runner.Cluster
	SetTaint(ctx context.Context, n store.Node, t corev1.Taint, present bool) error
}

func (k kubeCluster) SetTaint(ctx context.Context, n store.Node, t corev1.Taint, present bool) error {
	return k.nodes.SetTaint(ctx, kube.FleetNodeOf(n), t, present)
}

// gpuQuarantine applies the policy. GPU health reports (gpus.go) wake it
// for their node; it works off the session's path, so a slow API server
// never holds a report. Its state is in the node's stored GPU record
// (NodeGpus.quarantine), written before each Kubernetes change, so a
// controller killed half way finishes the job, and a Node found cordoned
// is never uncordoned by the release.
type gpuQuarantine struct {
	srv     *Server
	policy  QuarantinePolicy
	cluster quarantineCluster

	mu      sync.Mutex
	pending map[string]bool
	wake    chan struct{}
}

func newGPUQuarantine(s *Server, cluster runner.Cluster) (*gpuQuarantine, error) {
	p := s.opts.GPUQuarantine
	if !p.Enabled {
		return nil, nil
	}
	qc, ok := cluster.(quarantineCluster)
	if !ok {
		return nil, errors.New("controller: the GPU quarantine needs a cluster that can taint Nodes")
	}
	if p.MaxNodes == 0 {
		p.MaxNodes = DefaultQuarantineMaxNodes
	}
	if p.MaxNodes < 0 {
		return nil, fmt.Errorf("controller: gpu-quarantine-max-nodes must be at least 1 (got %d)", p.MaxNodes)
	}
	if p.RetryInterval == 0 {
		p.RetryInterval = DefaultQuarantineRetryInterval
	}
	if p.Task != "" || p.Reboot {
		spec := remediationSpec(p, "check")
		if err := spec.Validate(); err != nil {
			return nil, fmt.Errorf("controller: gpu quarantine remediation: %w", err)
		}
	}
	return &gpuQuarantine{srv: s, policy: p, cluster: qc, pending: map[string]bool{}, wake: make(chan struct{}, 1)}, nil
}

func remediationSpec(p QuarantinePolicy, nodeID string) maintenance.Spec {
	return maintenance.Spec{
		Selector:       map[string]string{"budfleet.io/node-id": nodeID},
		MaxUnavailable: 1,
		Task:           p.Task,
		TaskTimeout:    p.TaskTimeout,
		Reboot:         p.Reboot,
		// The drain is retried until it succeeds or fails; the node stays
		// cordoned by the quarantine either way.
		OnDrainFailure: maintenance.DrainFailureCordon,
	}.WithDefaults()
}

// observe queues nodeID to be looked at; safe on a nil receiver (policy
// off).
func (q *gpuQuarantine) observe(nodeID string) {
	if q == nil {
		return
	}
	q.mu.Lock()
	q.pending[nodeID] = true
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// run works the queue until ctx ends; at start and every RetryInterval it
// looks again at every node with a quarantine under way.
func (q *gpuQuarantine) run(ctx context.Context) error {
	t := time.NewTicker(q.policy.RetryInterval)
	defer t.Stop()
	q.rescan(ctx)
	for {
		q.mu.Lock()
		batch := q.pending
		q.pending = map[string]bool{}
		q.mu.Unlock()
		for id := range batch {
			if err := q.reconcile(ctx, id); err != nil && ctx.Err() == nil {
				q.srv.log.Warn("gpu quarantine", "node_id", id, "error", err)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-q.wake:
		case <-t.C:
			q.rescan(ctx)
		}
	}
}

// rescan queues the nodes whose quarantine is not settled: pending,
// releasing, held by the breaker, or active with a GPU healthy again.
func (q *gpuQuarantine) rescan(ctx context.Context) {
	nodes, err := q.srv.store.ListNodes(ctx)
	if err != nil {
		q.srv.log.Warn("gpu quarantine: list nodes", "error", err)
		return
	}
	for _, n := range nodes {
		g, err := decodeGPUs(n)
		if err != nil {
			continue
		}
		if g.GetQuarantine() != nil || len(unhealthyGPUs(g)) > 0 {
			q.observe(n.ID)
		}
	}
}

// unhealthyGPUs names the node's GPUs that report Unhealthy, with why.
func unhealthyGPUs(g *fleetv1.NodeGpus) []string {
	var out []string
	for _, h := range g.GetHealth() {
		if h.GetState() != gpuv1.HealthState_HEALTH_STATE_UNHEALTHY {
			continue
		}
		id := fmt.Sprintf("GPU %d", h.GetIndex())
		if h.GetUuid() != "" {
			id += " (" + h.GetUuid() + ")"
		}
		if r := strings.Join(h.GetReasons(), "; "); r != "" {
			id += ": " + r
		}
		out = append(out, id)
	}
	return out
}

// reconcile moves one node's quarantine a step towards what its GPU health
// asks for, persisting each decision before acting on it.
func (q *gpuQuarantine) reconcile(ctx context.Context, nodeID string) error {
	n, err := q.srv.store.GetNode(ctx, nodeID)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	g, err := decodeGPUs(n)
	if err != nil {
		return err
	}
	bad := unhealthyGPUs(g)
	cur := g.GetQuarantine()
	switch {
	case len(bad) > 0 && (cur == nil || cur.GetState() == fleetv1.QuarantineState_QUARANTINE_STATE_HELD):
		return q.quarantine(ctx, n, cur, strings.Join(bad, "; "))
	case len(bad) > 0 && cur.GetState() == fleetv1.QuarantineState_QUARANTINE_STATE_PENDING:
		return q.apply(ctx, n, cur)
	case len(bad) > 0 && cur.GetState() == fleetv1.QuarantineState_QUARANTINE_STATE_RELEASING:
		// Unhealthy again before the release finished: quarantine again,
		// keeping who cordoned the Node.
		next := proto.Clone(cur).(*fleetv1.GpuQuarantine)
		next.State, next.Reason, next.Error = fleetv1.QuarantineState_QUARANTINE_STATE_PENDING, strings.Join(bad, "; "), ""
		if err := q.save(ctx, n.ID, next); err != nil {
			return err
		}
		return q.apply(ctx, n, next)
	case len(bad) == 0 && cur != nil:
		return q.release(ctx, n, cur)
	}
	return nil
}

// quarantine decides on a quarantine for n, unless the breaker holds it.
func (q *gpuQuarantine) quarantine(ctx context.Context, n store.Node, cur *fleetv1.GpuQuarantine, reason string) error {
	active, err := q.countActive(ctx, n.ID)
	if err != nil {
		return err
	}
	if active >= q.policy.MaxNodes {
		if cur.GetState() == fleetv1.QuarantineState_QUARANTINE_STATE_HELD {
			return nil
		}
		msg := fmt.Sprintf("circuit breaker: %d nodes are quarantined already (gpu-quarantine-max-nodes %d); this node waits until one is released", active, q.policy.MaxNodes)
		q.audit(ctx, "gpu.quarantine.held", n, "held", reason+"; "+msg)
		return q.save(ctx, n.ID, &fleetv1.GpuQuarantine{
			State: fleetv1.QuarantineState_QUARANTINE_STATE_HELD, Since: timestamppb.New(q.srv.opts.Now()), Reason: reason, Error: msg,
		})
	}
	// Whether the quarantine will own the cordon is decided, and stored,
	// before cordoning: a controller killed after the cordon must not take
	// its own cordon for the operator's.
	st, err := q.cluster.NodeState(ctx, n)
	if err != nil {
		return q.failed(ctx, n, &fleetv1.GpuQuarantine{State: fleetv1.QuarantineState_QUARANTINE_STATE_HELD, Since: cur.GetSince(), Reason: reason}, fmt.Errorf("read its Kubernetes Node: %w", err))
	}
	if !st.Exists {
		return q.failed(ctx, n, &fleetv1.GpuQuarantine{State: fleetv1.QuarantineState_QUARANTINE_STATE_HELD, Since: cur.GetSince(), Reason: reason},
			fmt.Errorf("no Kubernetes Node %q to cordon (a node maps by hostname, or by the label budfleet.io/k8s-node)", st.Name))
	}
	next := &fleetv1.GpuQuarantine{
		State: fleetv1.QuarantineState_QUARANTINE_STATE_PENDING, Since: timestamppb.New(q.srv.opts.Now()),
		Reason: reason, CordonedByQuarantine: !st.Unschedulable,
	}
	if q.policy.Task != "" || q.policy.Reboot {
		next.CampaignId = uuid.NewString()
	}
	if err := q.save(ctx, n.ID, next); err != nil {
		return err
	}
	return q.apply(ctx, n, next)
}

// apply puts a pending quarantine on the Node and opens its campaign.
func (q *gpuQuarantine) apply(ctx context.Context, n store.Node, cur *fleetv1.GpuQuarantine) error {
	if cur.GetCordonedByQuarantine() {
		if err := q.cluster.Cordon(ctx, n); err != nil {
			return q.failed(ctx, n, cur, fmt.Errorf("cordon: %w", err))
		}
	}
	if err := q.cluster.SetTaint(ctx, n, quarantineTaint, true); err != nil {
		return q.failed(ctx, n, cur, fmt.Errorf("taint %s: %w", TaintGPUUnhealthy, err))
	}
	next := proto.Clone(cur).(*fleetv1.GpuQuarantine)
	next.State, next.Error = fleetv1.QuarantineState_QUARANTINE_STATE_ACTIVE, ""
	if id := cur.GetCampaignId(); id != "" {
		if err := q.openCampaign(ctx, n, id); err != nil {
			// The quarantine stands; the remediation is the operator's.
			next.CampaignId = ""
			next.Error = "no remediation campaign: " + err.Error()
		}
	}
	if err := q.save(ctx, n.ID, next); err != nil {
		return err
	}
	detail := cur.GetReason()
	if next.GetCampaignId() != "" {
		detail += "; remediation campaign " + next.GetCampaignId()
	}
	if !cur.GetCordonedByQuarantine() {
		detail += "; the Node was cordoned already"
	}
	q.audit(ctx, "gpu.quarantine", n, "succeeded", detail)
	return nil
}

// openCampaign stores the one-node remediation campaign id for n, once.
func (q *gpuQuarantine) openCampaign(ctx context.Context, n store.Node, id string) error {
	m := q.srv.campaigns
	if _, err := m.store.GetCampaign(ctx, id); err == nil {
		return nil // made before a crash
	} else if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	if err := m.checkFree(ctx, []store.Node{n}); err != nil {
		return err
	}
	st, err := q.cluster.NodeState(ctx, n)
	if err != nil {
		return err
	}
	c, err := maintenance.New(id, "gpu-quarantine "+n.Hostname, remediationSpec(q.policy, n.ID),
		[]maintenance.Target{{NodeID: n.ID, K8sNode: st.Name, Labels: n.Labels}}, q.srv.opts.Now())
	if err != nil {
		return err
	}
	c.CreatedBy = quarantineOperator
	if err := m.store.CreateCampaign(ctx, c); err != nil {
		return err
	}
	m.runner.Track(c.ID)
	return nil
}

// release lifts n's quarantine once its GPUs are healthy: the taint, and
// the cordon if the quarantine placed it, after its campaign has settled.
func (q *gpuQuarantine) release(ctx context.Context, n store.Node, cur *fleetv1.GpuQuarantine) error {
	if cur.GetState() == fleetv1.QuarantineState_QUARANTINE_STATE_HELD {
		q.audit(ctx, "gpu.quarantine.released", n, "succeeded", "the GPUs are healthy again; the held quarantine was never applied")
		return q.save(ctx, n.ID, nil)
	}
	if cur.GetState() != fleetv1.QuarantineState_QUARANTINE_STATE_RELEASING {
		next := proto.Clone(cur).(*fleetv1.GpuQuarantine)
		next.State, next.Error = fleetv1.QuarantineState_QUARANTINE_STATE_RELEASING, ""
		if err := q.save(ctx, n.ID, next); err != nil {
			return err
		}
		cur = next
	}
	if id := cur.GetCampaignId(); id != "" {
		c, err := q.srv.campaigns.store.GetCampaign(ctx, id)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if err == nil && !c.Settled() {
			return q.failed(ctx, n, cur, fmt.Errorf("waiting for remediation campaign %s (%s) to end before uncordoning", id, c.State))
		}
	}
	if err := q.cluster.SetTaint(ctx, n, quarantineTaint, false); err != nil && !errors.Is(err, kube.ErrNodeNotFound) {
		return q.failed(ctx, n, cur, fmt.Errorf("remove taint %s: %w", TaintGPUUnhealthy, err))
	}
	if cur.GetCordonedByQuarantine() {
		if err := q.cluster.Uncordon(ctx, n); err != nil && !errors.Is(err, kube.ErrNodeNotFound) {
			return q.failed(ctx, n, cur, fmt.Errorf("uncordon: %w", err))
		}
	}
	if err := q.save(ctx, n.ID, nil); err != nil {
		return err
	}
	detail := "the GPUs are healthy again"
	if !cur.GetCordonedByQuarantine() {
		detail += "; left cordoned, as it was found"
	}
	q.audit(ctx, "gpu.quarantine.released", n, "succeeded", detail)
	// A node the breaker held may go now.
	q.rescan(ctx)
	return nil
}

// countActive counts the quarantines other than nodeID's that hold a Node
// (pending, active or releasing).
func (q *gpuQuarantine) countActive(ctx context.Context, nodeID string) (int, error) {
	nodes, err := q.srv.store.ListNodes(ctx)
	if err != nil {
		return 0, err
	}
	k := 0
	for _, n := range nodes {
		if n.ID == nodeID {
			continue
		}
		g, err := decodeGPUs(n)
		if err != nil {
			continue
		}
		switch g.GetQuarantine().GetState() {
		case fleetv1.QuarantineState_QUARANTINE_STATE_PENDING, fleetv1.QuarantineState_QUARANTINE_STATE_ACTIVE, fleetv1.QuarantineState_QUARANTINE_STATE_RELEASING:
			k++
		}
	}
	return k, nil
}

// failed records why a step failed (it is retried) and returns the error.
func (q *gpuQuarantine) failed(ctx context.Context, n store.Node, cur *fleetv1.GpuQuarantine, err error) error {
	next := proto.Clone(cur).(*fleetv1.GpuQuarantine)
	if next.GetError() != err.Error() {
		q.audit(ctx, "gpu.quarantine", n, "failed", err.Error())
	}
	next.Error = err.Error()
	if serr := q.save(ctx, n.ID, next); serr != nil {
		return errors.Join(err, serr)
	}
	return err
}

// save stores the node's quarantine; nil clears it.
func (q *gpuQuarantine) save(ctx context.Context, nodeID string, gq *fleetv1.GpuQuarantine) error {
	_, err := q.srv.store.UpdateNode(ctx, nodeID, func(n *store.Node) error {
		g, err := decodeGPUs(*n)
		if err != nil {
			return err
		}
		g.Quarantine = gq
		b, err := proto.Marshal(g)
		if err != nil {
			return err
		}
		n.GPUs = b
		return nil
	})
	return err
}

func (q *gpuQuarantine) audit(ctx context.Context, action string, n store.Node, result, detail string) {
	q.srv.log.InfoContext(ctx, "gpu quarantine", "action", action, "node_id", n.ID, "hostname", n.Hostname, "result", result, "detail", detail)
	if q.srv.opts.AuditLog == nil {
		return
	}
	attrs := map[string]any{"node_id": n.ID, "hostname": n.Hostname, "result": result, "detail": detail}
	if err := q.srv.opts.AuditLog.Record(q.srv.opts.Now(), action, quarantineOperator, attrs); err != nil {
		q.srv.log.ErrorContext(ctx, "write audit log", "action", action, "error", err)
	}
}
