package runner

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/bud-ecosystem/budfleet/controller/maintenance"
	"github.com/bud-ecosystem/budfleet/controller/store"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
	gpuv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/gpu/v1"
)

// K8sNodeLabel names a fleet node's Kubernetes Node when it differs from
// the hostname.
const K8sNodeLabel = "budfleet.io/k8s-node"

// observe gathers what Step needs of c's watchlist. It returns the stored
// nodes too, for the actions.
func (r *Runner) observe(ctx context.Context, c store.Campaign) (maintenance.Observations, map[string]store.Node) {
	r.mu.Lock()
	obs := maintenance.Observations{Now: r.opts.Now(), AuditedThrough: r.audited[c.ID], Nodes: map[string]maintenance.NodeObservation{}}
	r.mu.Unlock()
	nodes := map[string]store.Node{}
	startable := mayStart(c, obs.Now)
	steps := map[string]maintenance.NodeProgress{}
	for _, n := range c.Nodes {
		steps[n.NodeID] = n
	}
	for _, w := range c.Watchlist() {
		if n := steps[w.NodeID]; n.Step == maintenance.StepQueued && !startable(n) {
			// It cannot start this step: spare the API server the read.
			// Left out, it waits; a queued node has no deadline.
			continue
		}
		node, o, ok := r.observeNode(ctx, c.ID, w, c.Spec.Upgrade == nil)
		nodes[w.NodeID] = node
		if ok {
			obs.Nodes[w.NodeID] = o
		}
	}
	return obs, nodes
}

// mayStart says which queued nodes could start at this step: none unless
// the campaign runs (or is about to), its window is open and a slot is
// free; then those whose domain has room. Step decides; this only spares
// the reads of nodes it could not start anyway.
func mayStart(c store.Campaign, now time.Time) func(maintenance.NodeProgress) bool {
	none := func(maintenance.NodeProgress) bool { return false }
	if (c.State != maintenance.StateRunning && c.State != maintenance.StatePending) || !c.Spec.Window.Open(now) {
		return none
	}
	held, byDomain := 0, map[string]int{}
	for _, n := range c.Nodes {
		switch {
		case n.Step == maintenance.StepQueued, n.Step.Terminal() && !(n.Step == maintenance.StepFailed && n.CordonedByUs):
			continue
		}
		held++
		byDomain[n.Domain]++
	}
	if held >= c.Spec.MaxUnavailable {
		return none
	}
	return func(n maintenance.NodeProgress) bool {
		return c.Spec.PerDomain == nil || byDomain[n.Domain] < c.Spec.PerDomain.Max
	}
}

// removedNode stands for a fleet node deleted during a campaign: its
// Kubernetes Node can still be seen and uncordoned, by the name the
// campaign recorded.
func removedNode(w maintenance.Watch) store.Node {
	return store.Node{ID: w.NodeID, Hostname: w.K8sNode, Labels: map[string]string{K8sNodeLabel: w.K8sNode}}
}

// observeNode observes one node; its Kubernetes Node only when kube is
// set (an agent upgrade does not touch the Node).
func (r *Runner) observeNode(ctx context.Context, campaignID string, w maintenance.Watch, kube bool) (store.Node, maintenance.NodeObservation, bool) {
	log := r.log.With("campaign_id", campaignID, "node_id", w.NodeID)
	var o maintenance.NodeObservation
	node, err := r.opts.Store.GetNode(ctx, w.NodeID)
	removed := errors.Is(err, store.ErrNotFound)
	switch {
	case removed:
		node = removedNode(w)
	case err != nil:
		if ctx.Err() == nil {
			log.WarnContext(ctx, "read node; it waits for the next step", "error", err)
		}
		return removedNode(w), o, false
	}

	if kube {
		cctx, cancel := r.callCtx(ctx)
		st, err := r.opts.Cluster.NodeState(cctx, node)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				log.WarnContext(ctx, "read the Kubernetes Node; it waits for the next step", "k8s_node", w.K8sNode, "error", err)
			}
			return node, o, false
		}
		// A Node other than the campaign's is not the campaign's Node: the
		// mapping changed under it, so its Node is gone.
		o.K8sNodeExists = st.Exists && w.K8sNode != "" && st.Name == w.K8sNode
		o.K8sReady, o.Unschedulable = st.Ready, st.Unschedulable
	}

	if !removed {
		connected, known := r.opts.Agents.AgentConnected(w.NodeID)
		if !known {
			return node, o, false
		}
		o.AgentConnected = connected
		if connected {
			o.AgentVersion = r.opts.Agents.AgentVersion(w.NodeID)
		}
		o.BootID = bootID(node)
		o.GPUCount, o.GPUHealthy, err = gpus(node)
		if err != nil {
			log.WarnContext(ctx, "read the node's GPUs; it waits for the next step", "error", err)
			return node, o, false
		}
	}

	r.mu.Lock()
	if d := r.drains[drainKey{campaignID, w.NodeID}]; d != nil {
		o.Drain = maintenance.DrainObservation{Attempt: d.attempt, State: d.state, Message: d.msg}
	}
	r.mu.Unlock()

	for _, id := range w.CommandIDs {
		cmd, err := r.opts.Store.GetCommand(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			continue // absent: not in the store
		}
		if err != nil {
			if ctx.Err() == nil {
				log.WarnContext(ctx, "read command; the node waits for the next step", "command_id", id, "error", err)
			}
			return node, o, false
		}
		if o.Commands == nil {
			o.Commands = map[string]maintenance.CommandObservation{}
		}
		o.Commands[id] = commandObservation(cmd)
	}
	return node, o, true
}

// bootID is the boot id the agent last reported, at connect or in its
// inventory.
func bootID(n store.Node) string {
	if n.BootID != "" {
		return n.BootID
	}
	return n.Inventory.GetBootId()
}

// gpus reads the GPU count and health from the node's stored GPU report:
// healthy unless a GPU is Unhealthy (true with no GPUs).
func gpus(n store.Node) (count int, healthy bool, err error) {
	if len(n.GPUs) == 0 {
		return 0, true, nil
	}
	var g fleetv1.NodeGpus
	if err := proto.Unmarshal(n.GPUs, &g); err != nil {
		return 0, false, err
	}
	healthy = true
	for _, h := range g.GetHealth() {
		if h.GetState() == gpuv1.HealthState_HEALTH_STATE_UNHEALTHY {
			healthy = false
		}
	}
	return len(g.GetInventory().GetGpus()), healthy, nil
}

// maxMessage bounds what a command's result adds to a node's error.
const maxMessage = 300

// commandObservation is a stored command as Step sees it: the state, the
// task's exit code (the agent's output "exit_code"; -1 when it timed out)
// and a message with the last line of its stderr when it failed.
func commandObservation(c store.Command) maintenance.CommandObservation {
	o := maintenance.CommandObservation{State: maintenance.CommandState(c.State), Message: c.Message}
	if v, ok := c.Output["exit_code"]; ok {
		if n, err := strconv.Atoi(v); err == nil {
			o.ExitCode = n
		}
	}
	if c.Output["timed_out"] == "true" {
		o.ExitCode = -1
	}
	if c.State == store.CommandFailed {
		if line := lastLine(c.Output["stderr"]); line != "" && !strings.Contains(o.Message, line) {
			if o.Message != "" {
				o.Message += "; "
			}
			o.Message += "stderr: " + line
		}
	}
	if len(o.Message) > maxMessage {
		o.Message = strings.ToValidUTF8(o.Message[:maxMessage], "") + "…"
	}
	return o
}

func lastLine(s string) string {
	s = strings.TrimRight(s, "\r\n\t ")
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return strings.TrimSpace(s)
}
