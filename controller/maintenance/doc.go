// Package maintenance is the core of a maintenance campaign: cordon, drain,
// run a task, reboot, check and uncordon a set of nodes, never more at once
// than the operator allowed, surviving a controller crash at any point.
//
// The campaign is plain data (Campaign, kept by the store as JSON) moved on
// by one pure function:
//
//	Step(c Campaign, obs Observations) (Campaign, []Action)
//
// Step does no I/O, reads no clock (obs.Now is the time) and starts no
// goroutine; this package imports nothing of budfleet. A thin runner drives
// it.
//
// # Per node
//
//	queued ─slot─▶ cordon ─▶ drain ─▶ drained ═gate═▶ task ─▶ reboot ─▶ verify ─▶ uncordon ─▶ done
//	   │             │         │ ↻ retry     ║          │         │          │
//	   ▼             ▼         ▼             ║          ▼         ▼          ▼
//	 failed        failed    failed          ║        failed    failed     failed
//	 untouched     uncordoned  per policy    ║        left cordoned, holding the slot
//	                                         ╚═ not cordoned any more? cordon and drain again (≤3)
//
// The steps:
//
//   - queued: waits for a slot. A slot is free when fewer than
//     MaxUnavailable nodes are held, and fewer than K in the node's domain
//     (PerDomain). A node is held while in progress (cordon … uncordon) and
//     while failed under the campaign's cordon, so the campaign never has
//     more nodes out of service than allowed, failures included; uncordoning
//     a failed node frees its slot. Queued nodes start in the campaign's
//     order, by Kubernetes Node name then node id, the first whose domain
//     has room; only while the campaign is running and its window open.
//     Starting checks that the Kubernetes Node exists and the agent is
//     connected (else the node fails at once, untouched), and reads the GPU
//     count and health to come back to.
//   - cordon: the campaign records that it cordons the node before the
//     Cordon runs (a node already cordoned is maintained and left cordoned).
//   - drain: a Drain attempt, bounded by DrainTimeout; a failed attempt is
//     retried after DrainRetryDelay, DrainAttempts in all, then
//     OnDrainFailure decides: uncordon at once and fail (default), fail and
//     stay cordoned, or proceed.
//   - drained → gate: right before the task, and again before the reboot,
//     the node must still be cordoned; one found uncordoned is cordoned and
//     drained again, never disrupted undrained. Past the gate the node is
//     disrupted: it is finished, never returned.
//   - task: command maintenance.task; fails the node on a non-zero exit or
//     when not done within TaskTimeout + CommandGrace.
//   - reboot (with Spec.Reboot): command maintenance.reboot; the node goes on
//     when the agent is connected with a boot id other than the one read
//     just before; a failed reboot command or RebootTimeout fails it.
//   - verify: waits up to HealthTimeout for the Node Ready, the agent
//     connected, at least as many GPUs as before and, if they were healthy,
//     healthy GPUs. A node that lost a GPU is not returned to serve
//     inference at reduced capacity: it fails and stays cordoned.
//   - uncordon: repeated until it shows; a cordon the campaign placed is
//     never forgotten.
//
// # Campaign
//
//	pending ─▶ running ◀──resume──▶ paused          (paused: no new node; nodes in progress finish)
//	              │  ╲
//	 max-failures │   ╲ all nodes done or failed ─▶ completed
//	              ▼    ╲
//	          stopping ─▶ stopped ──resume──▶ running (breaker reset)
//	              any ──abort──▶ aborting ─▶ aborted
//
// Stopping (the circuit breaker) and aborting start no node; in-progress
// nodes not yet past the gate are uncordoned and returned (to the queue when
// stopping, skipped when aborting), the others are finished; failed nodes
// stay cordoned and are named in StateReason and FailedNodes. Pause, Resume
// and Abort are pure methods the operator API applies to the stored
// campaign.
//
// # The runner's contract
//
// In a loop, for each campaign not Settled (Done, with every audit event
// written):
//
//  1. Read the campaign from the store.
//  2. Observe what Campaign.Watchlist names: for each node, its Kubernetes
//     Node (exists, Ready, unschedulable), its agent (connected, boot id, GPU
//     count and health), the drain it runs for the node (the highest attempt
//     it knows, with state and message), and each listed command id as the
//     store has it. A node it cannot observe reliably is left out of
//     Observations.Nodes; a command id the store lacks is left out of
//     Commands (absent means "not in the store"). Pass the highest audit
//     seq written so far (0 after a restart).
//  3. Call Step.
//  4. Persist the campaign Step returned (skippable when it equals the one
//     read), BEFORE carrying out any action.
//  5. Carry out the actions in order, each idempotently: Cordon and
//     Uncordon are; Drain runs in the background keyed by (node, attempt)
//     and Uncordon cancels it; EnqueueCommand uses the deterministic id
//     (CommandID) and takes ErrAlreadyExists as success; Audit writes the
//     event with its id. An action that fails is logged and skipped and the
//     others still carried out: no two actions of one step conflict on a
//     node, and Step asks again for whatever did not take effect.
//
// Step is level-triggered: it asks again for every effect it does not see
// (a cordon not showing, a drain the runner does not know, a command not in
// the store, an audit not confirmed). A crash before step 4 repeats the
// step; a crash after it loses some actions, which the next Step asks for
// again; a task is queued under one id per node, and the gate runs again
// before a re-queue, so it runs at most once. Limits hold across restarts
// because slots are taken only in the persisted state, before the Cordon.
package maintenance
