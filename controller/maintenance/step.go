package maintenance

import (
	"fmt"
	"reflect"
	"strings"
	"time"
)

// Timing and bounds Step applies beyond the Spec.
const (
	// CordonTimeout: a cordon that does not show within it fails the node
	// (it is uncordoned, in case the cordon lands late).
	CordonTimeout = 2 * time.Minute
	// ReportGrace is the allowance beyond a drain attempt's timeout for the
	// runner to report it before Step counts the attempt failed.
	ReportGrace = time.Minute
	// CommandGrace is the allowance beyond the task timeout for delivering
	// the task and reporting its result.
	CommandGrace = 5 * time.Minute
	// UpgradeGrace is the allowance beyond an upgrade's timeout for
	// delivering agent.upgrade, fetching the artifact and restarting.
	UpgradeGrace = 5 * time.Minute
	// MaxRecordons is how often a node found uncordoned before its task or
	// reboot is cordoned and drained again before it fails: something else
	// keeps uncordoning it.
	MaxRecordons = 3
)

// Step advances the campaign by what obs shows and returns the new campaign
// and the actions to carry out. It is pure: no I/O, no clock but obs.Now,
// and c is not modified. The runner persists the returned campaign before it
// carries out any action (see the package comment). When nothing changed,
// the campaign comes back equal to c (UpdatedAt included), so the runner can
// skip the write.
func Step(c Campaign, obs Observations) (Campaign, []Action) {
	s := &stepper{c: c.clone(), obs: obs, now: obs.Now.UTC()}
	s.run()
	out := s.c
	for _, a := range out.Outbox {
		s.acts = append(s.acts, a)
	}
	if !reflect.DeepEqual(out, c) {
		out.UpdatedAt = s.now
	}
	return out, s.acts
}

type stepper struct {
	c    Campaign
	obs  Observations
	now  time.Time
	acts []Action
}

func (s *stepper) run() {
	c := &s.c
	keep := c.Outbox[:0]
	for _, a := range c.Outbox {
		if a.Seq > s.obs.AuditedThrough {
			keep = append(keep, a)
		}
	}
	c.Outbox = keep
	if len(c.Outbox) == 0 {
		c.Outbox = nil
	}

	if c.State == StatePending {
		c.State, c.StartedAt = StateRunning, s.now
		s.audit(nil, "campaign.started", AuditStarted, fmt.Sprintf("%d nodes, max-unavailable %d%s", len(c.Nodes), c.Spec.MaxUnavailable, domainText(c.Spec.PerDomain)))
	}
	if c.State == StateAborting {
		for i := range c.Nodes {
			if c.Nodes[i].Step == StepQueued {
				s.skip(&c.Nodes[i])
			}
		}
	}
	// Pass 1: move every node in progress on by what is observed. Nothing
	// here takes a node past the point of no return: that is pass 2, after
	// every failure this step is counted.
	for i := range c.Nodes {
		s.advance(&c.Nodes[i])
	}
	// Pass 2: drained nodes go on to their task or reboot, or are returned.
	for i := range c.Nodes {
		if c.Nodes[i].Step == StepDrained {
			s.gate(&c.Nodes[i])
		}
	}
	// Pass 3: start queued nodes as the limits allow.
	s.start()
	s.settle()
}

func domainText(d *DomainLimit) string {
	if d == nil {
		return ""
	}
	return ", per-domain " + d.String()
}

func (s *stepper) returning() bool {
	switch s.c.State {
	case StateStopping, StateStopped, StateAborting, StateAborted:
		return true
	}
	return false
}

func (s *stepper) emit(a Action) { s.acts = append(s.acts, a) }

func (s *stepper) audit(n *NodeProgress, what, result, msg string) {
	c := &s.c
	c.AuditSeq++
	a := Audit{
		ID: fmt.Sprintf("%s#%d", c.ID, c.AuditSeq), Seq: c.AuditSeq, At: s.now,
		CampaignID: c.ID, What: what, Result: result, Message: msg,
	}
	if n != nil {
		a.NodeID, a.K8sNode = n.NodeID, n.K8sNode
	}
	c.Outbox = append(c.Outbox, a)
}

func (s *stepper) setStep(n *NodeProgress, step NodeStep) {
	n.Step, n.StepSince = step, s.now
}

func (s *stepper) cordon(n *NodeProgress) {
	s.emit(Cordon{NodeID: n.NodeID, K8sNode: n.K8sNode})
}

func (s *stepper) uncordon(n *NodeProgress) {
	s.emit(Uncordon{NodeID: n.NodeID, K8sNode: n.K8sNode})
}

// advance is pass 1 for one node.
func (s *stepper) advance(n *NodeProgress) {
	o, ok := s.obs.Nodes[n.NodeID]
	if !ok {
		return
	}
	switch n.Step {
	case StepFailed:
		if n.CordonedByUs && (!o.K8sNodeExists || !o.Unschedulable) {
			n.CordonedByUs = false
			s.audit(n, "node.uncordon", AuditInfo, "the failed node was uncordoned outside the campaign; its slot is free")
		}
	case StepCordon:
		switch {
		case s.returning():
			s.giveBack(n)
		case !o.K8sNodeExists:
			s.nodeGone(n)
		case o.Unschedulable:
			s.audit(n, "node.cordon", AuditSucceeded, "")
			s.startDrain(n)
		case s.now.Sub(n.StepSince) >= CordonTimeout:
			s.failUncordon(n, fmt.Sprintf("the cordon did not show within %s", CordonTimeout))
		default:
			s.cordon(n)
		}
	case StepDrain:
		s.advanceDrain(n, o)
	case StepTask:
		s.advanceTask(n, o)
	case StepReboot:
		s.advanceReboot(n, o)
	case StepVerify:
		s.advanceVerify(n, o)
	case StepUncordon:
		s.advanceUncordon(n, o)
	case StepUpgrade:
		s.advanceUpgrade(n, o)
	}
}

// startUpgrade starts a queued node of an upgrade campaign, whose agent is
// connected: done at once when it runs the version already.
func (s *stepper) startUpgrade(n *NodeProgress, o NodeObservation) {
	u := s.c.Spec.Upgrade
	n.VersionBefore = o.AgentVersion
	if o.AgentVersion == u.Version {
		n.VersionAfter = o.AgentVersion
		s.setStep(n, StepDone)
		n.FinishedAt = s.now
		s.audit(n, "node.done", AuditSucceeded, "the agent runs "+u.Version+" already")
		return
	}
	s.setStep(n, StepUpgrade)
	n.UpgradeCommandID = CommandID(s.c.ID, n.NodeID, KindUpgrade, commandAttempt)
	s.emit(s.upgradeCommand(n))
	s.audit(n, "node.upgrade", AuditStarted, fmt.Sprintf("command %s: %s to %s", n.UpgradeCommandID, o.AgentVersion, u.Version))
}

func (s *stepper) upgradeCommand(n *NodeProgress) EnqueueCommand {
	u := s.c.Spec.Upgrade
	return EnqueueCommand{ID: n.UpgradeCommandID, NodeID: n.NodeID, Kind: KindUpgrade, Params: map[string]string{
		ParamDigest:     n.UpgradeDigest,
		ParamVersion:    u.Version,
		ParamTimeout:    u.Timeout.String(),
		ParamCampaignID: s.c.ID,
	}}
}

// advanceUpgrade waits for the agent back on the new version. The
// command's result comes from the agent that runs after the restart: it
// fails when the new binary did not connect in time and the agent rolled
// back to the binary it kept.
func (s *stepper) advanceUpgrade(n *NodeProgress, o NodeObservation) {
	u := s.c.Spec.Upgrade
	if o.AgentConnected && o.AgentVersion == u.Version {
		n.VersionAfter = o.AgentVersion
		s.setStep(n, StepDone)
		n.FinishedAt = s.now
		s.audit(n, "node.upgrade", AuditSucceeded, fmt.Sprintf("back on %s (was %s)", o.AgentVersion, n.VersionBefore))
		s.audit(n, "node.done", AuditSucceeded, "")
		return
	}
	cmd, found := o.Commands[n.UpgradeCommandID]
	switch {
	case !found:
		s.emit(s.upgradeCommand(n)) // lost in a crash; the id makes it once
	case cmd.State == CommandFailed:
		s.failLeave(n, "upgrade failed on the node: "+cmd.Message)
	case cmd.State == CommandSucceeded && o.AgentConnected:
		// Upgraded, then restarted on another version: a binary whose
		// version string is not the one the artifact was pushed under.
		s.failLeave(n, fmt.Sprintf("the agent reported the upgrade done but runs %s, not %s: check the version the artifact bud-agent@%s was built with", o.AgentVersion, u.Version, u.Version))
	case s.now.Sub(n.StepSince) >= u.Timeout+UpgradeGrace:
		s.failLeave(n, fmt.Sprintf("the agent is not back on %s within %s (upgrade-timeout %s + %s to deliver, fetch and restart)", u.Version, u.Timeout+UpgradeGrace, u.Timeout, UpgradeGrace))
	}
}

func (s *stepper) startDrain(n *NodeProgress) {
	s.setStep(n, StepDrain)
	n.DrainAttempt++
	n.DrainIssuedAt, n.DrainNotBefore = s.now, time.Time{}
	s.emit(Drain{NodeID: n.NodeID, K8sNode: n.K8sNode, Attempt: n.DrainAttempt, Timeout: s.c.Spec.DrainTimeout, GracePeriod: s.c.Spec.GracePeriod})
	s.audit(n, "node.drain", AuditStarted, fmt.Sprintf("attempt %d, timeout %s", n.DrainAttempt, s.c.Spec.DrainTimeout))
}

func (s *stepper) advanceDrain(n *NodeProgress, o NodeObservation) {
	switch {
	case s.returning():
		s.giveBack(n)
		return
	case !o.K8sNodeExists:
		s.nodeGone(n)
		return
	case !o.Unschedulable:
		s.recordon(n, "while it drained")
		return
	}
	if n.DrainIssuedAt.IsZero() { // waiting to retry
		if !s.now.Before(n.DrainNotBefore) {
			s.startDrain(n)
		}
		return
	}
	deadline := n.DrainIssuedAt.Add(s.c.Spec.DrainTimeout)
	if d := o.Drain; d.Attempt == n.DrainAttempt {
		switch d.State {
		case DrainSucceeded:
			s.audit(n, "node.drain", AuditSucceeded, fmt.Sprintf("attempt %d", n.DrainAttempt))
			s.setStep(n, StepDrained)
			return
		case DrainFailed:
			s.drainFailed(n, d.Message)
			return
		case DrainRunning:
			if s.now.After(deadline.Add(ReportGrace)) {
				s.drainFailed(n, fmt.Sprintf("not finished %s after its %s timeout", ReportGrace, s.c.Spec.DrainTimeout))
			}
			return
		}
	}
	// The runner does not know this attempt: it restarted, or the action
	// was dropped. Issue it again with what is left of its time.
	left := deadline.Sub(s.now)
	if left <= 0 {
		s.drainFailed(n, fmt.Sprintf("not finished within its %s timeout", s.c.Spec.DrainTimeout))
		return
	}
	s.emit(Drain{NodeID: n.NodeID, K8sNode: n.K8sNode, Attempt: n.DrainAttempt, Timeout: left, GracePeriod: s.c.Spec.GracePeriod})
}

func (s *stepper) drainFailed(n *NodeProgress, msg string) {
	spec := s.c.Spec
	n.DrainFailures++
	n.DrainMessage = msg
	if n.DrainFailures < spec.DrainAttempts {
		s.audit(n, "node.drain", AuditFailed, fmt.Sprintf("attempt %d (%d of %d): %s; retrying in %s", n.DrainAttempt, n.DrainFailures, spec.DrainAttempts, msg, spec.DrainRetryDelay))
		n.DrainIssuedAt, n.DrainNotBefore = time.Time{}, s.now.Add(spec.DrainRetryDelay)
		return
	}
	reason := fmt.Sprintf("drain failed %d times; last: %s", n.DrainFailures, msg)
	switch spec.OnDrainFailure {
	case DrainFailureProceed:
		n.DrainForced = true
		s.audit(n, "node.drain", AuditFailed, reason+"; going on with the node, as on-drain-failure=proceed says")
		s.setStep(n, StepDrained)
	case DrainFailureCordon:
		s.failLeave(n, reason)
	default:
		s.failUncordon(n, reason)
	}
}

// recordon handles a node found uncordoned before its disruptive step: it
// is cordoned and drained again, at most MaxRecordons times.
func (s *stepper) recordon(n *NodeProgress, when string) {
	n.Recordons++
	n.CordonedByUs = false // someone lifted the cordon
	if n.Recordons > MaxRecordons {
		s.failLeave(n, fmt.Sprintf("found uncordoned %s %d times; something else keeps uncordoning it, so the campaign leaves it alone", when, n.Recordons))
		return
	}
	s.audit(n, "node.cordon", AuditStarted, fmt.Sprintf("found uncordoned %s; cordoning and draining it again", when))
	n.CordonedByUs = true
	n.DrainIssuedAt, n.DrainNotBefore, n.DrainForced = time.Time{}, time.Time{}, false
	s.setStep(n, StepCordon)
	s.cordon(n)
}

// gate is pass 2: the check right before the disruptive step.
func (s *stepper) gate(n *NodeProgress) {
	o, ok := s.obs.Nodes[n.NodeID]
	if !ok {
		return
	}
	spec := s.c.Spec
	switch {
	case s.returning() && !n.disrupted():
		s.giveBack(n)
	case !o.K8sNodeExists:
		s.nodeGone(n)
	case !o.Unschedulable:
		s.recordon(n, "after its drain")
	case spec.Task != "" && !n.TaskDone:
		s.setStep(n, StepTask)
		n.TaskCommandID = CommandID(s.c.ID, n.NodeID, KindTask, commandAttempt)
		s.emit(s.taskCommand(n))
		s.audit(n, "node.task", AuditStarted, "command "+n.TaskCommandID)
	case spec.Reboot && n.BootIDAfter == "":
		s.setStep(n, StepReboot)
		s.tryReboot(n, o)
	default:
		s.setStep(n, StepVerify)
	}
}

func (s *stepper) taskCommand(n *NodeProgress) EnqueueCommand {
	return EnqueueCommand{ID: n.TaskCommandID, NodeID: n.NodeID, Kind: KindTask, Params: map[string]string{
		ParamScript:     s.c.Spec.Task,
		ParamTimeout:    s.c.Spec.TaskTimeout.String(),
		ParamCampaignID: s.c.ID,
		ParamNodeName:   n.K8sNode,
	}}
}

func (s *stepper) advanceTask(n *NodeProgress, o NodeObservation) {
	cmd, found := o.Commands[n.TaskCommandID]
	if !found {
		// Not in the store: the enqueue was lost in a crash, so the task
		// never ran and the node is not disrupted yet. Look again before
		// queueing it.
		switch {
		case s.returning():
			n.TaskCommandID = ""
			s.giveBack(n)
		case !o.K8sNodeExists:
			n.TaskCommandID = ""
			s.nodeGone(n)
		case !o.Unschedulable:
			n.TaskCommandID = ""
			s.recordon(n, "before its task")
		default:
			s.emit(s.taskCommand(n))
		}
		return
	}
	spec := s.c.Spec
	switch cmd.State {
	case CommandSucceeded:
		n.TaskDone, n.TaskMessage = true, cmd.Message
		s.audit(n, "node.task", AuditSucceeded, cmd.Message)
		if spec.Reboot {
			s.setStep(n, StepReboot)
			s.tryReboot(n, o)
		} else {
			s.setStep(n, StepVerify)
		}
	case CommandFailed:
		n.TaskMessage = cmd.Message
		msg := "task failed"
		if cmd.ExitCode != 0 {
			msg += fmt.Sprintf(" with exit code %d", cmd.ExitCode)
		}
		if cmd.Message != "" {
			msg += ": " + cmd.Message
		}
		s.failLeave(n, msg)
	default:
		if limit := spec.TaskTimeout + CommandGrace; s.now.Sub(n.StepSince) >= limit {
			s.failLeave(n, fmt.Sprintf("task not finished within %s (task-timeout %s + %s to deliver and report; the agent may still run it)", limit, spec.TaskTimeout, CommandGrace))
		}
	}
}

// tryReboot queues the reboot of a node in StepReboot that has none queued:
// after checking, right before, that the node is still cordoned, and
// reading the boot id it runs now.
func (s *stepper) tryReboot(n *NodeProgress, o NodeObservation) {
	spec := s.c.Spec
	switch {
	case s.returning() && !n.disrupted():
		s.giveBack(n)
	case !o.K8sNodeExists:
		s.nodeGone(n)
	case !o.Unschedulable:
		s.recordon(n, "before its reboot")
	case !o.AgentConnected || o.BootID == "":
		if s.now.Sub(n.StepSince) >= spec.RebootTimeout {
			s.failLeave(n, fmt.Sprintf("agent not connected for %s to take the reboot", spec.RebootTimeout))
		}
	default:
		n.BootIDBefore = o.BootID
		n.RebootCommandID = CommandID(s.c.ID, n.NodeID, KindReboot, commandAttempt)
		s.setStep(n, StepReboot) // the reboot deadline runs from here
		s.emit(s.rebootCommand(n))
		s.audit(n, "node.reboot", AuditStarted, fmt.Sprintf("command %s; boot id %s", n.RebootCommandID, n.BootIDBefore))
	}
}

func (s *stepper) rebootCommand(n *NodeProgress) EnqueueCommand {
	return EnqueueCommand{ID: n.RebootCommandID, NodeID: n.NodeID, Kind: KindReboot, Params: map[string]string{
		ParamCampaignID: s.c.ID,
		ParamNodeName:   n.K8sNode,
	}}
}

func (s *stepper) advanceReboot(n *NodeProgress, o NodeObservation) {
	if n.RebootCommandID == "" {
		s.tryReboot(n, o)
		return
	}
	if o.AgentConnected && o.BootID != "" && o.BootID != n.BootIDBefore {
		n.BootIDAfter = o.BootID
		s.audit(n, "node.reboot", AuditSucceeded, fmt.Sprintf("back with boot id %s (was %s)", o.BootID, n.BootIDBefore))
		s.setStep(n, StepVerify)
		return
	}
	cmd, found := o.Commands[n.RebootCommandID]
	if !found {
		// The enqueue was lost in a crash and the node still runs the boot
		// it ran: check again and queue it again.
		n.RebootCommandID = ""
		s.tryReboot(n, o)
		return
	}
	spec := s.c.Spec
	switch {
	case cmd.State == CommandFailed:
		s.failLeave(n, "reboot command failed: "+cmd.Message)
	case s.now.Sub(n.StepSince) >= spec.RebootTimeout:
		s.failLeave(n, fmt.Sprintf("agent not back with a new boot id within %s of the reboot (reboot-timeout)", spec.RebootTimeout))
	}
}

func (s *stepper) advanceVerify(n *NodeProgress, o NodeObservation) {
	if !o.K8sNodeExists {
		s.nodeGone(n)
		return
	}
	var not []string
	if !o.K8sReady {
		not = append(not, "the Node is not Ready")
	}
	if !o.AgentConnected {
		not = append(not, "the agent is not connected")
	}
	if o.GPUCount < n.GPUCountBefore {
		not = append(not, fmt.Sprintf("%d GPUs, %d before", o.GPUCount, n.GPUCountBefore))
	}
	if n.GPUHealthyBefore && !o.GPUHealthy {
		not = append(not, "a GPU is unhealthy")
	}
	if len(not) == 0 {
		s.audit(n, "node.verify", AuditSucceeded, fmt.Sprintf("Node Ready, agent connected, %d GPUs", o.GPUCount))
		if n.CordonedByUs {
			n.Result = ResultSucceeded
			s.setStep(n, StepUncordon)
			s.uncordon(n)
		} else {
			s.setStep(n, StepDone)
			n.FinishedAt = s.now
			s.audit(n, "node.done", AuditSucceeded, "left cordoned, as it was found")
		}
		return
	}
	if s.now.Sub(n.StepSince) >= s.c.Spec.HealthTimeout {
		s.failLeave(n, fmt.Sprintf("not back in service within %s (health-timeout): %s", s.c.Spec.HealthTimeout, strings.Join(not, "; ")))
	}
}

func (s *stepper) advanceUncordon(n *NodeProgress, o NodeObservation) {
	if o.K8sNodeExists && o.Unschedulable {
		s.uncordon(n)
		return
	}
	n.CordonedByUs = false
	result := n.Result
	n.Result = ""
	switch result {
	case ResultReturned:
		s.audit(n, "node.uncordon", AuditSucceeded, "returned untouched")
		s.finishReturned(n)
	case ResultFailed:
		s.audit(n, "node.uncordon", AuditSucceeded, "failed, back in service")
		s.setStep(n, StepFailed)
		n.FinishedAt = s.now
	default:
		s.audit(n, "node.uncordon", AuditSucceeded, "")
		s.setStep(n, StepDone)
		n.FinishedAt = s.now
		s.audit(n, "node.done", AuditSucceeded, "")
	}
}

// giveBack returns a node that is not disrupted: its cordon is lifted and it
// goes back to the queue (stopping) or is skipped (aborting).
func (s *stepper) giveBack(n *NodeProgress) {
	s.audit(n, "node.returned", AuditInfo, fmt.Sprintf("campaign %s before the node's task or reboot", s.c.State))
	if n.CordonedByUs {
		n.Result = ResultReturned
		s.setStep(n, StepUncordon)
		s.uncordon(n)
		return
	}
	s.finishReturned(n)
}

func (s *stepper) finishReturned(n *NodeProgress) {
	if s.c.State == StateAborting || s.c.State == StateAborted {
		s.skip(n)
		return
	}
	*n = NodeProgress{
		NodeID: n.NodeID, K8sNode: n.K8sNode, Domain: n.Domain, Step: StepQueued, StepSince: s.now,
		DrainAttempt: n.DrainAttempt, // attempts stay numbered apart
	}
}

func (s *stepper) skip(n *NodeProgress) {
	s.setStep(n, StepSkipped)
	n.FinishedAt = s.now
	n.Error = "campaign aborted before the node's maintenance"
}

// fail counts a failure and trips the breaker when it is due.
func (s *stepper) fail(n *NodeProgress, reason string) {
	n.Error = reason
	s.c.Failures++
	s.audit(n, "node.failed", AuditFailed, reason)
	spec := s.c.Spec
	if (s.c.State == StateRunning || s.c.State == StatePaused) && s.c.Failures-s.c.BreakerBase >= spec.MaxFailures {
		var names []string
		for _, m := range s.c.Nodes {
			if m.Step == StepFailed || m.Result == ResultFailed || m.NodeID == n.NodeID {
				names = append(names, m.NodeID)
			}
		}
		s.c.State = StateStopping
		s.c.StateReason = fmt.Sprintf("circuit breaker: %d nodes failed (max-failures %d): %s", s.c.Failures-s.c.BreakerBase, spec.MaxFailures, strings.Join(names, ", "))
		s.audit(nil, "campaign.stopping", AuditFailed, s.c.StateReason)
	}
}

// failLeave fails the node and leaves it as it is: cordoned, when the
// campaign cordoned it, holding its slot until someone uncordons it.
func (s *stepper) failLeave(n *NodeProgress, reason string) {
	n.Result = ""
	s.setStep(n, StepFailed)
	n.FinishedAt = s.now
	s.fail(n, reason)
}

// failUncordon fails the node and lifts the campaign's cordon at once.
func (s *stepper) failUncordon(n *NodeProgress, reason string) {
	if !n.CordonedByUs {
		s.failLeave(n, reason)
		return
	}
	n.Result = ResultFailed
	s.setStep(n, StepUncordon)
	s.uncordon(n)
	s.fail(n, reason)
}

func (s *stepper) nodeGone(n *NodeProgress) {
	n.CordonedByUs = false
	s.failLeave(n, fmt.Sprintf("Kubernetes Node %q no longer exists", n.K8sNode))
}

// start is pass 3: queued nodes, in order, take the free slots.
func (s *stepper) start() {
	c := &s.c
	c.Waiting = ""
	if c.State != StateRunning {
		return
	}
	queued := 0
	for _, n := range c.Nodes {
		if n.Step == StepQueued {
			queued++
		}
	}
	if queued == 0 {
		return
	}
	if !c.Spec.Window.Open(s.now) {
		c.Waiting = fmt.Sprintf("outside the window %q; it opens %s", c.Spec.Window, c.Spec.Window.NextOpen(s.now).UTC().Format(time.RFC3339))
		return
	}
	held, failedHeld := 0, 0
	byDomain := map[string]int{}
	for _, n := range c.Nodes {
		if n.holdsSlot() {
			held++
			byDomain[n.Domain]++
			if n.Step == StepFailed {
				failedHeld++
			}
		}
	}
	limit := c.Spec.PerDomain
	domainFull := false
	for i := range c.Nodes {
		n := &c.Nodes[i]
		if c.State != StateRunning || held >= c.Spec.MaxUnavailable {
			break
		}
		if n.Step != StepQueued {
			continue
		}
		if limit != nil && byDomain[n.Domain] >= limit.Max {
			domainFull = true
			continue
		}
		o, ok := s.obs.Nodes[n.NodeID]
		if !ok {
			continue
		}
		if c.Spec.Upgrade != nil {
			if !o.AgentConnected {
				s.failLeave(n, "agent not connected; nothing was done to the node")
				continue
			}
			held++
			byDomain[n.Domain]++
			n.StartedAt, n.Error = s.now, ""
			s.audit(n, "node.started", AuditStarted, fmt.Sprintf("slot %d of %d", held, c.Spec.MaxUnavailable))
			s.startUpgrade(n, o)
			if n.Step == StepDone {
				held--
				byDomain[n.Domain]--
			}
			continue
		}
		switch {
		case n.K8sNode == "":
			s.failLeave(n, "no Kubernetes Node is mapped to this node (by hostname, or by the label budfleet.io/k8s-node); nothing was done to it")
			continue
		case !o.K8sNodeExists:
			s.failLeave(n, fmt.Sprintf("no Kubernetes Node %q (a node maps by hostname, or by the label budfleet.io/k8s-node); nothing was done to it", n.K8sNode))
			continue
		case !o.AgentConnected:
			s.failLeave(n, "agent not connected; nothing was done to the node")
			continue
		}
		held++
		byDomain[n.Domain]++
		n.StartedAt, n.Error = s.now, ""
		n.GPUCountBefore, n.GPUHealthyBefore = o.GPUCount, o.GPUHealthy
		s.audit(n, "node.started", AuditStarted, fmt.Sprintf("slot %d of %d; %d GPUs", held, c.Spec.MaxUnavailable, o.GPUCount))
		if o.Unschedulable {
			n.CordonedByUs = false
			s.audit(n, "node.cordon", AuditInfo, "already cordoned before the campaign: it stays cordoned afterwards")
			s.startDrain(n)
		} else {
			n.CordonedByUs = true
			s.setStep(n, StepCordon)
			s.cordon(n)
			s.audit(n, "node.cordon", AuditStarted, "")
		}
	}
	switch {
	case c.State != StateRunning:
	case held >= c.Spec.MaxUnavailable:
		c.Waiting = fmt.Sprintf("all %d slots in use", c.Spec.MaxUnavailable)
		if failedHeld > 0 {
			c.Waiting += fmt.Sprintf(" (%d by failed nodes left cordoned: uncordon them to free their slots)", failedHeld)
		}
	case domainFull:
		c.Waiting = fmt.Sprintf("the remaining nodes' domains are full (per-domain %s)", limit)
	}
}

// settle moves the campaign to its next state once nothing is in progress.
func (s *stepper) settle() {
	c := &s.c
	inFlight, open := false, false
	for _, n := range c.Nodes {
		inFlight = inFlight || n.Step.inFlight()
		open = open || !n.Step.Terminal()
	}
	failed := func() string {
		var names []string
		for _, n := range c.FailedNodes() {
			names = append(names, n.NodeID)
		}
		if len(names) == 0 {
			return "no failed nodes"
		}
		return "failed: " + strings.Join(names, ", ")
	}
	switch c.State {
	case StateStopping:
		if !inFlight {
			c.State, c.EndedAt = StateStopped, s.now
			s.audit(nil, "campaign.stopped", AuditFailed, c.StateReason+"; resume or abort it")
		}
	case StateAborting:
		if !inFlight {
			c.State, c.EndedAt = StateAborted, s.now
			s.audit(nil, "campaign.aborted", AuditInfo, failed())
		}
	case StateRunning, StatePaused:
		if !open {
			c.State, c.EndedAt = StateCompleted, s.now
			if c.Failures > 0 {
				c.StateReason = fmt.Sprintf("completed with %d failed nodes", c.Failures)
			} else {
				c.StateReason = "completed"
			}
			s.audit(nil, "campaign.completed", AuditSucceeded, failed())
		}
	}
}
