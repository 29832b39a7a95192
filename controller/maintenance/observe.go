package maintenance

import "time"

// Observations are what the runner saw just before a Step: the time, and
// for each node in the campaign's Watchlist, the Kubernetes Node, the agent,
// the drain and the commands. A node missing from Nodes is not known this
// step (say the API server did not answer): Step leaves it as it is, and no
// deadline of it fires, until it is observed again.
type Observations struct {
	// Now is the runner's clock; Step reads no other.
	Now time.Time `json:"now"`
	// AuditedThrough is the highest audit Seq that the runner has written
	// with every lower one. Step drops the outbox up to it and emits the
	// rest again. A runner that restarted passes 0: the last step's events
	// go out again under their ids (at least once, never lost).
	AuditedThrough uint64 `json:"audited_through"`
	// Nodes by fleet node id.
	Nodes map[string]NodeObservation `json:"nodes"`
}

// NodeObservation is one node as the runner saw it.
type NodeObservation struct {
	// K8sNodeExists: the Kubernetes Node named in the campaign exists. When
	// false the other Kubernetes fields mean nothing.
	K8sNodeExists bool `json:"k8s_node_exists"`
	// K8sReady: the Node's Ready condition is True.
	K8sReady bool `json:"k8s_ready"`
	// Unschedulable: the Node is cordoned (spec.unschedulable).
	Unschedulable bool `json:"unschedulable"`

	// AgentConnected: the agent has a live session with a recent heartbeat.
	AgentConnected bool `json:"agent_connected"`
	// BootID is the boot id the agent last reported ("" when never).
	BootID string `json:"boot_id,omitempty"`
	// AgentVersion is the version the connected agent said in its hello
	// ("" when not connected).
	AgentVersion string `json:"agent_version,omitempty"`
	// GPUCount is the GPUs in the agent's latest inventory; GPUHealthy is
	// false when any of them is unhealthy (true with no GPUs).
	GPUCount   int  `json:"gpu_count"`
	GPUHealthy bool `json:"gpu_healthy"`

	// Drain is the runner's drain of this node with the highest attempt it
	// knows of; the zero value when it knows none (after a restart).
	Drain DrainObservation `json:"drain,omitzero"`

	// Commands holds the commands of the Watch's CommandIDs that exist in
	// the store, by id. An id absent here does not exist: the runner must
	// leave the node out of Nodes when it could not tell.
	Commands map[string]CommandObservation `json:"commands,omitempty"`
}

// DrainState is where one drain attempt is.
type DrainState string

// Drain states.
const (
	DrainRunning   DrainState = "running"
	DrainSucceeded DrainState = "succeeded"
	DrainFailed    DrainState = "failed"
)

// DrainObservation is one drain attempt as the runner knows it.
type DrainObservation struct {
	Attempt int        `json:"attempt"`
	State   DrainState `json:"state"`
	// Message says what blocked a failed drain (the pod, the
	// PodDisruptionBudget) or that it timed out.
	Message string `json:"message,omitempty"`
}

// CommandState is where a command is, as the store has it.
type CommandState string

// Command states (the store's).
const (
	CommandPending   CommandState = "pending"
	CommandDelivered CommandState = "delivered"
	CommandSucceeded CommandState = "succeeded"
	CommandFailed    CommandState = "failed"
)

// CommandObservation is one stored command.
type CommandObservation struct {
	State CommandState `json:"state"`
	// ExitCode of a finished task (-1 when it was killed at its timeout).
	ExitCode int `json:"exit_code"`
	// Message is the agent's summary: the error, "timed out after 30m", the
	// tail of stderr.
	Message string `json:"message,omitempty"`
}
