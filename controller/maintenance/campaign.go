package maintenance

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// State is where a campaign is in its life.
type State string

// Campaign states. Pending, running, paused, stopping and aborting move on
// by themselves (Step); stopped, aborted and completed wait for an operator
// (stopped may be resumed; the other two are final).
const (
	StatePending   State = "pending"   // made, not yet stepped
	StateRunning   State = "running"   // starting nodes as slots, window and breaker allow
	StatePaused    State = "paused"    // no new node starts; nodes in progress finish
	StateStopping  State = "stopping"  // breaker tripped; nodes in progress are finished or returned
	StateStopped   State = "stopped"   // breaker tripped and nothing is in progress; Resume or Abort
	StateAborting  State = "aborting"  // aborted; nodes in progress are finished or returned
	StateAborted   State = "aborted"   // final: nothing in progress, nothing cordoned but failed nodes
	StateCompleted State = "completed" // final: every node done or failed
)

// Done reports whether nothing more happens without an operator: the
// campaign is completed, aborted, or stopped by its breaker.
func (s State) Done() bool {
	return s == StateStopped || s == StateAborted || s == StateCompleted
}

// NodeStep is where a node is in its maintenance. See the package comment
// for the diagram.
type NodeStep string

// Node steps.
const (
	StepQueued   NodeStep = "queued"   // waiting for a slot
	StepCordon   NodeStep = "cordon"   // slot taken; waiting for the cordon to show
	StepDrain    NodeStep = "drain"    // a drain attempt runs or waits for its retry
	StepDrained  NodeStep = "drained"  // drained; the disruptive step is next, after the cordon check
	StepTask     NodeStep = "task"     // the task command is queued or running
	StepReboot   NodeStep = "reboot"   // the reboot command is queued; waiting for a new boot id
	StepVerify   NodeStep = "verify"   // waiting for Node Ready, agent connected, GPUs as before
	StepUpgrade  NodeStep = "upgrade"  // agent.upgrade queued; waiting for the agent back on the new version
	StepUncordon NodeStep = "uncordon" // waiting for the uncordon to show; Result says what follows
	StepDone     NodeStep = "done"     // maintained and back in service; slot released
	StepFailed   NodeStep = "failed"   // failed (Error says why); holds its slot while left cordoned
	StepSkipped  NodeStep = "skipped"  // never maintained: the campaign was aborted first
)

// inFlight reports whether a node in step s holds a slot as in progress.
func (s NodeStep) inFlight() bool {
	switch s {
	case StepCordon, StepDrain, StepDrained, StepTask, StepReboot, StepVerify, StepUncordon, StepUpgrade:
		return true
	}
	return false
}

// Terminal reports whether the node's course in this campaign is over.
func (s NodeStep) Terminal() bool {
	return s == StepDone || s == StepFailed || s == StepSkipped
}

// Result is the outcome a node in StepUncordon moves to once the uncordon
// shows.
type Result string

// Results.
const (
	ResultSucceeded Result = "succeeded" // -> done
	ResultFailed    Result = "failed"    // -> failed, not cordoned
	ResultReturned  Result = "returned"  // -> queued again (stopping), or skipped (aborting)
)

// Command kinds and parameters the campaign queues for agents. They are
// registered in the command package; their names are repeated here because
// this package imports nothing of budfleet.
const (
	KindTask    = "maintenance.task"
	KindReboot  = "maintenance.reboot"
	KindUpgrade = "agent.upgrade"

	ParamScript     = "script"      // the task script
	ParamTimeout    = "timeout"     // the task timeout, as a Go duration ("30m0s")
	ParamCampaignID = "campaign_id" // for BUD_CAMPAIGN_ID
	ParamNodeName   = "node_name"   // the Kubernetes Node name, for BUD_NODE_NAME
	ParamDigest     = "digest"      // the upgrade's bud-agent artifact
	ParamVersion    = "version"     // the version the new agent reports
)

// commandAttempt is the attempt number in every command id: each node gets
// at most one task and one reboot per campaign. The number is in the id so a
// later "retry the failed nodes" can run a node again under new ids.
const commandAttempt = 1

// CommandID is the deterministic id of a campaign's command of kind for a
// node: "<campaign>/<node>/<kind>/<attempt>". Enqueueing the same id again
// is a no-op in the store (it answers ErrAlreadyExists) and the agent runs
// an id once, so a command lost or repeated in a crash still runs at most
// once.
func CommandID(campaignID, nodeID, kind string, attempt int) string {
	return fmt.Sprintf("%s/%s/%s/%d", campaignID, nodeID, kind, attempt)
}

// Target is a node chosen for a campaign.
type Target struct {
	NodeID string `json:"node_id"`
	// K8sNode is the name of its Kubernetes Node (hostname, or the label
	// budfleet.io/k8s-node); empty when it has none.
	K8sNode string `json:"k8s_node"`
	// Labels are the fleet node's labels; the domain label is read from
	// them.
	Labels map[string]string `json:"labels,omitempty"`
	// UpgradeDigest is the bud-agent artifact for the node's platform, in
	// an upgrade campaign.
	UpgradeDigest string `json:"upgrade_digest,omitempty"`
}

// NodeProgress is one node's course through the campaign.
type NodeProgress struct {
	NodeID  string   `json:"node_id"`
	K8sNode string   `json:"k8s_node"`
	Domain  string   `json:"domain,omitempty"`
	Step    NodeStep `json:"step"`
	// Result is set in StepUncordon: what the node becomes after it.
	Result Result `json:"result,omitempty"`
	// Error is why the node failed, or why it was returned.
	Error string `json:"error,omitempty"`

	StartedAt  time.Time `json:"started_at,omitzero"`
	StepSince  time.Time `json:"step_since,omitzero"`
	FinishedAt time.Time `json:"finished_at,omitzero"`

	// CordonedByUs: the node carries a cordon this campaign placed and has
	// not seen lifted. Set before the Cordon action runs, so a crash can
	// never make the campaign forget a cordon it placed. A node cordoned
	// before the campaign reached it is maintained but left cordoned, as
	// found.
	CordonedByUs bool `json:"cordoned_by_us"`
	// Recordons counts the times the node was found uncordoned before a
	// disruptive step and cordoned and drained again.
	Recordons int `json:"recordons,omitempty"`

	// DrainAttempt numbers the node's drains (1, 2, ...); DrainFailures
	// counts the failed ones.
	DrainAttempt  int       `json:"drain_attempt,omitempty"`
	DrainFailures int       `json:"drain_failures,omitempty"`
	DrainIssuedAt time.Time `json:"drain_issued_at,omitzero"`
	// DrainNotBefore delays the next attempt after a failed one.
	DrainNotBefore time.Time `json:"drain_not_before,omitzero"`
	DrainMessage   string    `json:"drain_message,omitempty"`
	// DrainForced: the drain failed and the policy said to proceed.
	DrainForced bool `json:"drain_forced,omitempty"`

	// GPUCountBefore and GPUHealthyBefore are read when the node starts;
	// the node is back when it has at least as many GPUs (and healthy ones
	// if they were).
	GPUCountBefore   int  `json:"gpu_count_before"`
	GPUHealthyBefore bool `json:"gpu_healthy_before"`

	// TaskCommandID is set, before the command is queued, once the task may
	// have been queued: from then on the node is disrupted and is finished
	// rather than returned.
	TaskCommandID string `json:"task_command_id,omitempty"`
	TaskDone      bool   `json:"task_done,omitempty"`
	TaskMessage   string `json:"task_message,omitempty"`

	// BootIDBefore is the boot id read right before the reboot is queued.
	BootIDBefore    string `json:"boot_id_before,omitempty"`
	RebootCommandID string `json:"reboot_command_id,omitempty"`
	BootIDAfter     string `json:"boot_id_after,omitempty"`

	// An upgrade: the artifact, its command, and the agent's version when
	// the node started and when it was back.
	UpgradeDigest    string `json:"upgrade_digest,omitempty"`
	UpgradeCommandID string `json:"upgrade_command_id,omitempty"`
	VersionBefore    string `json:"version_before,omitempty"`
	VersionAfter     string `json:"version_after,omitempty"`
}

// disrupted reports whether a task or reboot may have been queued for the
// node: it can no longer be returned untouched.
func (n NodeProgress) disrupted() bool { return n.TaskCommandID != "" || n.RebootCommandID != "" }

// holdsSlot reports whether the node counts against the limits: in
// progress, or failed and still under the campaign's cordon.
func (n NodeProgress) holdsSlot() bool {
	return n.Step.inFlight() || (n.Step == StepFailed && n.CordonedByUs)
}

// Audit is one operator audit event: a step of the campaign on a node (or of
// the campaign itself when NodeID is empty). The runner writes it to the
// audit log with the campaign's CreatedBy as the operator.
type Audit struct {
	// ID is "<campaign>#<seq>", unique and stable: an event re-sent after a
	// crash carries the same id.
	ID         string    `json:"id"`
	Seq        uint64    `json:"seq"`
	At         time.Time `json:"at"`
	CampaignID string    `json:"campaign_id"`
	NodeID     string    `json:"node_id,omitempty"`
	K8sNode    string    `json:"k8s_node,omitempty"`
	// What is the step: "campaign.started", "node.cordon", "node.drain",
	// "node.task", "node.reboot", "node.verify", "node.uncordon",
	// "node.failed", "node.returned", ...
	What string `json:"what"`
	// Result is "started", "succeeded", "failed" or "info".
	Result  string `json:"result"`
	Message string `json:"message,omitempty"`
}

// Audit results.
const (
	AuditStarted   = "started"
	AuditSucceeded = "succeeded"
	AuditFailed    = "failed"
	AuditInfo      = "info"
)

// Campaign is the persisted state of one maintenance campaign. It is plain
// data: the store keeps it as JSON and every field round-trips.
type Campaign struct {
	ID    string `json:"id"`
	Name  string `json:"name,omitempty"`
	Spec  Spec   `json:"spec"`
	State State  `json:"state"`
	// StateReason says why the state is what it is ("paused by alice",
	// "circuit breaker: 3 nodes failed ...").
	StateReason string    `json:"state_reason,omitempty"`
	CreatedBy   string    `json:"created_by,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
	StartedAt   time.Time `json:"started_at,omitzero"`
	EndedAt     time.Time `json:"ended_at,omitzero"`

	// Nodes in processing order: by Kubernetes Node name, then node id.
	Nodes []NodeProgress `json:"nodes"`
	// Failures counts failed nodes.
	Failures int `json:"failures"`
	// BreakerBase is Failures when the campaign was last resumed after its
	// breaker tripped: the breaker trips at BreakerBase+MaxFailures.
	BreakerBase int `json:"breaker_base,omitempty"`
	// Waiting says why no new node started at the last step, if one could
	// have ("window closed; opens ...", "all 10 slots in use").
	Waiting string `json:"waiting,omitempty"`

	// AuditSeq is the seq of the last audit event made; Outbox holds those
	// not yet confirmed written (Observations.AuditedThrough).
	AuditSeq uint64  `json:"audit_seq"`
	Outbox   []Audit `json:"outbox,omitempty"`
}

// New makes a pending campaign over targets, in the processing order: by
// Kubernetes Node name, then node id. It validates spec (New never stores a
// campaign that cannot run) and fills in its defaults. The nodes are fixed
// now; nodes that match the selector later are not added.
func New(id, name string, spec Spec, targets []Target, now time.Time) (Campaign, error) {
	if strings.TrimSpace(id) == "" {
		return Campaign{}, errors.New("campaign id is empty")
	}
	if err := spec.Validate(); err != nil {
		return Campaign{}, err
	}
	if len(targets) == 0 {
		return Campaign{}, fmt.Errorf("selector %s matches no node", selectorString(spec.Selector))
	}
	spec = spec.WithDefaults()
	seen := map[string]bool{}
	nodes := make([]NodeProgress, 0, len(targets))
	for _, t := range targets {
		if t.NodeID == "" {
			return Campaign{}, errors.New("a target has an empty node id")
		}
		if seen[t.NodeID] {
			return Campaign{}, fmt.Errorf("node %s is listed twice", t.NodeID)
		}
		seen[t.NodeID] = true
		n := NodeProgress{NodeID: t.NodeID, K8sNode: t.K8sNode, Step: StepQueued, UpgradeDigest: t.UpgradeDigest}
		if spec.Upgrade != nil && t.UpgradeDigest == "" {
			return Campaign{}, fmt.Errorf("node %s has no bud-agent artifact to upgrade to", t.NodeID)
		}
		if spec.PerDomain != nil {
			n.Domain = t.Labels[spec.PerDomain.Label]
		}
		nodes = append(nodes, n)
	}
	sort.SliceStable(nodes, func(i, j int) bool {
		if nodes[i].K8sNode != nodes[j].K8sNode {
			return nodes[i].K8sNode < nodes[j].K8sNode
		}
		return nodes[i].NodeID < nodes[j].NodeID
	})
	now = now.UTC()
	return Campaign{
		ID: id, Name: name, Spec: spec, State: StatePending,
		CreatedAt: now, UpdatedAt: now, Nodes: nodes,
	}, nil
}

func selectorString(sel map[string]string) string {
	keys := make([]string, 0, len(sel))
	for k := range sel {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + sel[k]
	}
	return strings.Join(parts, ",")
}

// Pause stops new nodes from starting; nodes in progress finish. Pausing a
// paused campaign changes nothing. by names the operator.
func (c Campaign) Pause(by string, now time.Time) (Campaign, error) {
	switch c.State {
	case StatePaused:
		return c, nil
	case StatePending, StateRunning:
		c.State, c.StateReason, c.UpdatedAt = StatePaused, "paused by "+who(by), now.UTC()
		return c, nil
	}
	return c, fmt.Errorf("campaign %s is %s; only a pending or running campaign can be paused", c.ID, c.State)
}

// Resume lets a paused campaign, or one its breaker stopped, start nodes
// again. After a breaker stop the breaker is reset: it trips again after
// another MaxFailures failures. Resuming a running campaign changes nothing.
func (c Campaign) Resume(by string, now time.Time) (Campaign, error) {
	switch c.State {
	case StateRunning:
		return c, nil
	case StatePaused, StateStopping, StateStopped:
		if c.State != StatePaused {
			c.BreakerBase = c.Failures
		}
		c.State, c.StateReason, c.EndedAt, c.UpdatedAt = StateRunning, "resumed by "+who(by), time.Time{}, now.UTC()
		return c, nil
	}
	return c, fmt.Errorf("campaign %s is %s; only a paused or stopped campaign can be resumed", c.ID, c.State)
}

// Abort ends the campaign: no new node starts, nodes in progress that have
// not reached their task or reboot are uncordoned, the others are finished,
// and the campaign ends aborted, listing its failed nodes. Aborting an
// aborting campaign changes nothing.
func (c Campaign) Abort(by string, now time.Time) (Campaign, error) {
	switch c.State {
	case StateAborting:
		return c, nil
	case StateAborted, StateCompleted:
		return c, fmt.Errorf("campaign %s is already %s", c.ID, c.State)
	}
	c.State, c.StateReason, c.UpdatedAt = StateAborting, "aborted by "+who(by), now.UTC()
	return c, nil
}

func who(by string) string {
	if by == "" {
		return "an operator"
	}
	return by
}

// Settled reports whether the runner may stop stepping the campaign: it is
// Done and every audit event of it is confirmed written.
func (c Campaign) Settled() bool { return c.State.Done() && len(c.Outbox) == 0 }

// FailedNodes returns the failed nodes, in processing order.
func (c Campaign) FailedNodes() []NodeProgress {
	var out []NodeProgress
	for _, n := range c.Nodes {
		if n.Step == StepFailed {
			out = append(out, n)
		}
	}
	return out
}

// Watch names what the runner must observe for one node before a Step.
type Watch struct {
	NodeID  string `json:"node_id"`
	K8sNode string `json:"k8s_node"`
	// DrainAttempt is the drain attempt whose state the runner reports (0:
	// none).
	DrainAttempt int `json:"drain_attempt,omitempty"`
	// CommandIDs are the commands whose state the runner reports.
	CommandIDs []string `json:"command_ids,omitempty"`
}

// Watchlist returns the nodes Step needs observations of: every node not
// done or skipped (queued ones for their start checks, failed ones for their
// cordon).
func (c Campaign) Watchlist() []Watch {
	var out []Watch
	for _, n := range c.Nodes {
		if n.Step == StepDone || n.Step == StepSkipped || (n.Step == StepFailed && !n.CordonedByUs) {
			continue
		}
		w := Watch{NodeID: n.NodeID, K8sNode: n.K8sNode, DrainAttempt: n.DrainAttempt}
		for _, id := range []string{n.TaskCommandID, n.RebootCommandID, n.UpgradeCommandID} {
			if id != "" {
				w.CommandIDs = append(w.CommandIDs, id)
			}
		}
		out = append(out, w)
	}
	return out
}

func (c Campaign) clone() Campaign {
	c.Nodes = append([]NodeProgress(nil), c.Nodes...)
	c.Outbox = append([]Audit(nil), c.Outbox...)
	return c
}
