package maintenance

import "time"

// Action is an external effect Step asks the runner to carry out, after it
// has persisted the campaign Step returned. The set is closed: Cordon,
// Uncordon, Drain, EnqueueCommand and Audit. Every action is safe to carry
// out again, and Step asks again for any whose effect it does not observe,
// so a runner that crashes before, during or after carrying them out loses
// nothing by dropping the rest.
type Action interface{ action() }

// Cordon marks the Node unschedulable. Idempotent.
type Cordon struct {
	NodeID  string `json:"node_id"`
	K8sNode string `json:"k8s_node"`
}

// Uncordon marks the Node schedulable. Idempotent. The runner first cancels
// any drain it runs on the node: a node being uncordoned is not drained.
type Uncordon struct {
	NodeID  string `json:"node_id"`
	K8sNode string `json:"k8s_node"`
}

// Drain evicts the Node's pods, as the fleet playbook does: through the
// eviction API with PodDisruptionBudgets respected, DaemonSet pods ignored,
// emptyDir data deleted, no force. The runner runs it in the background and
// reports it in NodeObservation.Drain under its Attempt. A Drain of an
// attempt the runner already runs or has finished is a no-op; a higher
// attempt supersedes (cancels) a lower one.
type Drain struct {
	NodeID  string `json:"node_id"`
	K8sNode string `json:"k8s_node"`
	Attempt int    `json:"attempt"`
	// Timeout is what is left of the attempt's drain timeout (all of it,
	// unless the attempt is re-issued after a runner restart).
	Timeout time.Duration `json:"timeout"`
	// GracePeriod overrides the pods' grace period; 0 keeps each pod's own.
	GracePeriod time.Duration `json:"grace_period,omitempty"`
}

// EnqueueCommand queues a durable command for the node's agent. The id is
// deterministic (CommandID): when the store already has it (ErrAlreadyExists)
// the runner treats the action as done.
type EnqueueCommand struct {
	ID     string            `json:"id"`
	NodeID string            `json:"node_id"`
	Kind   string            `json:"kind"`
	Params map[string]string `json:"params,omitempty"`
}

// Audit (the action) writes the event to the audit log; once written, the
// runner reports its Seq in Observations.AuditedThrough.
func (Audit) action() {}

func (Cordon) action()         {}
func (Uncordon) action()       {}
func (Drain) action()          {}
func (EnqueueCommand) action() {}
