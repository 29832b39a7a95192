package controller

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/bud-ecosystem/budfleet/command"
	"github.com/bud-ecosystem/budfleet/controller/kube"
	"github.com/bud-ecosystem/budfleet/controller/maintenance"
	"github.com/bud-ecosystem/budfleet/controller/maintenance/runner"
	"github.com/bud-ecosystem/budfleet/controller/store"
	maintv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/maint/v1"
)

// MaintenanceAPI serves the operator's maintenance campaigns.
type MaintenanceAPI struct {
	maintv1.UnimplementedMaintenanceServiceServer
	s *Server
}

// MaintenanceAPI returns the maintenance service of s.
func (s *Server) MaintenanceAPI() *MaintenanceAPI { return &MaintenanceAPI{s: s} }

// Limits of StartCampaign beyond the campaign's own.
const (
	maxCampaignName = 128
	// watchRefresh resends a watched campaign this often even without a
	// change, so that a watcher sees the controller is alive.
	watchRefresh = 30 * time.Second
)

var drainPolicies = map[maintv1.DrainFailurePolicy]maintenance.DrainFailurePolicy{
	maintv1.DrainFailurePolicy_DRAIN_FAILURE_POLICY_UNSPECIFIED: "",
	maintv1.DrainFailurePolicy_DRAIN_FAILURE_POLICY_UNCORDON:    maintenance.DrainFailureUncordon,
	maintv1.DrainFailurePolicy_DRAIN_FAILURE_POLICY_CORDON:      maintenance.DrainFailureCordon,
	maintv1.DrainFailurePolicy_DRAIN_FAILURE_POLICY_PROCEED:     maintenance.DrainFailureProceed,
}

func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}

// spec turns a request into a campaign spec, checking what the proto
// carries beyond what Spec.Validate checks.
func specFromRequest(req *maintv1.StartCampaignRequest) (maintenance.Spec, error) {
	var errs []string
	dur := func(name string, d *durationpb.Duration) time.Duration {
		if d == nil {
			return 0
		}
		if err := d.CheckValid(); err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", name, err))
			return 0
		}
		v := d.AsDuration()
		if v <= 0 {
			errs = append(errs, fmt.Sprintf("%s must be more than 0 (got %s); leave it out for the default", name, v))
		}
		return v
	}
	spec := maintenance.Spec{
		Selector:        req.GetSelector(),
		MaxUnavailable:  int(req.GetMaxUnavailable()),
		DrainTimeout:    dur("drain-timeout", req.GetDrainTimeout()),
		DrainAttempts:   int(req.GetDrainAttempts()),
		DrainRetryDelay: dur("drain-retry-delay", req.GetDrainRetryDelay()),
		GracePeriod:     dur("grace-period", req.GetGracePeriod()),
		Task:            string(req.GetTask()),
		TaskTimeout:     dur("task-timeout", req.GetTaskTimeout()),
		Reboot:          req.GetReboot(),
		RebootTimeout:   dur("reboot-timeout", req.GetRebootTimeout()),
		HealthTimeout:   dur("health-timeout", req.GetHealthTimeout()),
		MaxFailures:     int(req.GetMaxFailures()),
	}
	if req.GetMaxUnavailable() > 1<<20 || req.GetMaxFailures() > 1<<20 || req.GetDrainAttempts() > 100 {
		errs = append(errs, "max-unavailable and max-failures are at most 1048576, drain-attempts at most 100")
	}
	if p, ok := drainPolicies[req.GetOnDrainFailure()]; ok {
		spec.OnDrainFailure = p
	} else {
		errs = append(errs, fmt.Sprintf("on-drain-failure %v: want uncordon, cordon or proceed", req.GetOnDrainFailure()))
	}
	if u := req.GetAgentUpgrade(); u != nil {
		spec.Upgrade = &maintenance.Upgrade{Version: strings.TrimSpace(u.GetVersion()), Timeout: dur("upgrade-timeout", u.GetTimeout())}
		if spec.Upgrade.Timeout > command.MaxUpgradeTimeout {
			errs = append(errs, fmt.Sprintf("upgrade-timeout %s is over the agent's limit of %s", spec.Upgrade.Timeout, command.MaxUpgradeTimeout))
		}
	}
	if d := req.GetPerDomain(); d != nil {
		spec.PerDomain = &maintenance.DomainLimit{Label: strings.TrimSpace(d.GetLabel()), Max: int(min(d.GetMax(), 1<<20))}
	}
	if spec.DrainTimeout > kube.MaxDrainTimeout {
		errs = append(errs, fmt.Sprintf("drain-timeout %s is over the limit of %s", spec.DrainTimeout, kube.MaxDrainTimeout))
	}
	if spec.TaskTimeout > command.MaxTaskTimeout {
		errs = append(errs, fmt.Sprintf("task-timeout %s is over the agent's limit of %s", spec.TaskTimeout, command.MaxTaskTimeout))
	}
	if len(spec.Task) <= maintenance.MaxTaskBytes && !utf8.ValidString(spec.Task) {
		errs = append(errs, "the task is not UTF-8 text: give a shell script, and fetch binary payloads from it")
	}
	if w := strings.TrimSpace(req.GetWindow()); w != "" {
		win, err := maintenance.ParseWindow(w)
		if err != nil {
			errs = append(errs, err.Error())
		}
		spec.Window = win
	}
	if err := spec.Validate(); err != nil {
		errs = append(errs, strings.Split(err.Error(), "\n")...)
	}
	if len(errs) > 0 {
		return spec, errors.New(strings.Join(errs, "; "))
	}
	return spec, nil
}

// selects reports whether labels carry every selector label.
func selects(sel, labels map[string]string) bool {
	for k, v := range sel {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// noMatch explains a selector that matches no node: which keys no node
// carries at all, or which values none has.
func noMatch(sel map[string]string, nodes []store.Node) error {
	keys := make([]string, 0, len(sel))
	for k := range sel {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	var missing []string
	for i, k := range keys {
		parts[i] = k + "=" + sel[k]
		found := false
		for _, n := range nodes {
			if _, ok := n.Labels[k]; ok {
				found = true
				break
			}
		}
		if !found {
			missing = append(missing, k)
		}
	}
	msg := fmt.Sprintf("selector %s matches no node", strings.Join(parts, ","))
	switch {
	case len(nodes) == 0:
		msg += "; the fleet has no nodes"
	case len(missing) > 0:
		msg += fmt.Sprintf("; no node has the label %s (see the labels with 'budctl nodes list -o yaml')", strings.Join(missing, ", "))
	default:
		msg += "; no node has all of those values (see the labels with 'budctl nodes list -o yaml')"
	}
	return errors.New(msg)
}

// StartCampaign checks the request, resolves its nodes and stores the
// campaign; the runner starts it at its next step. Bad input stores
// nothing.
func (a *MaintenanceAPI) StartCampaign(ctx context.Context, req *maintv1.StartCampaignRequest) (*maintv1.StartCampaignResponse, error) {
	s, m := a.s, a.s.campaigns
	name := strings.TrimSpace(req.GetName())
	if len(name) > maxCampaignName || !utf8.ValidString(name) || strings.ContainsFunc(name, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return nil, invalid("name must be at most %d printable characters", maxCampaignName)
	}
	spec, err := specFromRequest(req)
	if err != nil {
		return nil, invalid("%v", err)
	}
	nodes, err := s.store.ListNodes(ctx)
	if err != nil {
		return nil, storeErr(err)
	}
	var matched []store.Node
	for _, n := range nodes {
		if selects(spec.Selector, n.Labels) {
			matched = append(matched, n)
		}
	}
	if len(matched) == 0 {
		return nil, invalid("%v", noMatch(spec.Selector, nodes))
	}
	if err := m.checkFree(ctx, matched); err != nil {
		return nil, err
	}
	var targets []maintenance.Target
	if spec.Upgrade != nil {
		if targets, err = a.upgradeTargets(ctx, spec.Upgrade.Version, matched); err != nil {
			return nil, err
		}
	}
	for _, n := range matched {
		if spec.Upgrade != nil {
			break
		}
		cctx, cancel := context.WithTimeout(ctx, runner.DefaultCallTimeout)
		st, err := m.cluster.NodeState(cctx, n)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil, status.FromContextError(ctx.Err()).Err()
			}
			if errors.Is(err, kube.ErrNoCluster) {
				return nil, status.Errorf(codes.FailedPrecondition, "node %s (%s): %v", n.ID, n.Hostname, err)
			}
			return nil, status.Errorf(codes.Unavailable, "node %s (%s): cannot read its Kubernetes Node: %v; check that the cluster's API server is reachable ('budctl clusters get NAME'), then start the campaign again", n.ID, n.Hostname, err)
		}
		targets = append(targets, maintenance.Target{NodeID: n.ID, K8sNode: st.Name, Labels: n.Labels})
	}
	now := s.opts.Now()
	c, err := maintenance.New(uuid.NewString(), name, spec, targets, now)
	if err != nil {
		return nil, invalid("%v", err)
	}
	c.CreatedBy = operator(ctx)
	if err := checkCommands(c); err != nil {
		return nil, invalid("%v", err)
	}
	if req.GetDryRun() {
		return &maintv1.StartCampaignResponse{Campaign: campaignToProto(c, now)}, nil
	}
	if err := m.store.CreateCampaign(ctx, c); err != nil {
		return nil, storeErr(err)
	}
	m.runner.Track(c.ID)
	attrs := []any{"campaign_id", c.ID, "name", c.Name, "nodes", len(c.Nodes),
		"selector", labelsText(spec.Selector), "max_unavailable", spec.MaxUnavailable, "task_bytes", len(spec.Task), "reboot", spec.Reboot}
	if spec.Upgrade != nil {
		attrs = append(attrs, "agent_version", spec.Upgrade.Version)
	}
	s.FleetAPI().audit(ctx, "maintenance.start", attrs...)
	return &maintv1.StartCampaignResponse{Id: c.ID, Campaign: campaignToProto(c, now)}, nil
}

// upgradeArtifact is the agent artifact an upgrade installs: a binary, one per
// platform.
const upgradeArtifact = "bud-agent"

// upgradeTargets finds, for each node, the bud-agent artifact of version
// for its platform (linux/<the architecture in its inventory>).
func (a *MaintenanceAPI) upgradeTargets(ctx context.Context, version string, nodes []store.Node) ([]maintenance.Target, error) {
	arts, err := a.s.artifactStore()
	if err != nil {
		return nil, err
	}
	ref := upgradeArtifact + "@" + version
	var targets []maintenance.Target
	for _, n := range nodes {
		arch := n.Inventory.GetArchitecture()
		if arch == "" {
			return nil, status.Errorf(codes.FailedPrecondition, "node %s (%s) has reported no inventory yet, so its architecture is unknown; wait for it to connect, then start the upgrade again", n.ID, n.Hostname)
		}
		platform := "linux/" + arch
		art, err := arts.Resolve(ctx, ref, platform)
		if err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return nil, status.Errorf(codes.FailedPrecondition, "no artifact %s for %s (node %s, %s): push it ('budctl artifacts push bud-agent --name %s --version %s --platform %s --kind binary') or load a bundle that has it", ref, platform, n.ID, n.Hostname, upgradeArtifact, version, platform)
			}
			return nil, artifactErr(err)
		}
		if art.Kind != store.ArtifactBinary {
			return nil, status.Errorf(codes.FailedPrecondition, "artifact %s (%s) is a %s, not a binary: push the bud-agent binary as --kind binary", ref, platform, art.Kind)
		}
		targets = append(targets, maintenance.Target{NodeID: n.ID, K8sNode: n.Hostname, Labels: n.Labels, UpgradeDigest: art.Digest})
	}
	return targets, nil
}

// checkFree refuses nodes that are in a campaign not yet final: two
// campaigns would fight over their cordons.
func (m *campaigns) checkFree(ctx context.Context, nodes []store.Node) error {
	cs, err := m.store.ListCampaigns(ctx)
	if err != nil {
		return storeErr(err)
	}
	want := map[string]bool{}
	for _, n := range nodes {
		want[n.ID] = true
	}
	for _, c := range cs {
		if c.State == maintenance.StateAborted || c.State == maintenance.StateCompleted {
			continue
		}
		for _, n := range c.Nodes {
			if want[n.NodeID] {
				return status.Errorf(codes.FailedPrecondition, "node %s is already in campaign %s (%s, %s); wait for that campaign to end or abort it ('budctl maintenance abort %s')", n.NodeID, c.ID, c.State, n.Step, c.ID)
			}
		}
	}
	return nil
}

// checkCommands checks, for every node, the commands the campaign will
// queue as the agent will check them, so that none is refused later.
func checkCommands(c store.Campaign) error {
	if u := c.Spec.Upgrade; u != nil {
		for _, n := range c.Nodes {
			p := map[string]string{maintenance.ParamDigest: n.UpgradeDigest, maintenance.ParamVersion: u.Version, maintenance.ParamTimeout: u.Timeout.String(), maintenance.ParamCampaignID: c.ID}
			if _, err := runner.CommandParams(maintenance.EnqueueCommand{Kind: maintenance.KindUpgrade, NodeID: n.NodeID, Params: p}); err != nil {
				return fmt.Errorf("node %s: %w", n.NodeID, err)
			}
		}
		return nil
	}
	for _, n := range c.Nodes {
		if n.K8sNode == "" {
			continue // fails at its start, untouched
		}
		params := map[string]string{maintenance.ParamCampaignID: c.ID, maintenance.ParamNodeName: n.K8sNode}
		var kinds []string
		if c.Spec.Task != "" {
			kinds = append(kinds, maintenance.KindTask)
		}
		if c.Spec.Reboot {
			kinds = append(kinds, maintenance.KindReboot)
		}
		for _, kind := range kinds {
			p := map[string]string{maintenance.ParamScript: c.Spec.Task, maintenance.ParamTimeout: c.Spec.TaskTimeout.String()}
			for k, v := range params {
				p[k] = v
			}
			if _, err := runner.CommandParams(maintenance.EnqueueCommand{Kind: kind, NodeID: n.NodeID, Params: p}); err != nil {
				return fmt.Errorf("node %s (Kubernetes Node %q): %w", n.NodeID, n.K8sNode, err)
			}
		}
	}
	return nil
}

func operator(ctx context.Context) string {
	if id, ok := IdentityFrom(ctx); ok {
		return id.Name
	}
	return ""
}

func labelsText(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i, k := range keys {
		keys[i] = k + "=" + m[k]
	}
	return strings.Join(keys, ",")
}

// ListCampaigns returns every campaign, oldest first.
func (a *MaintenanceAPI) ListCampaigns(ctx context.Context, req *maintv1.ListCampaignsRequest) (*maintv1.ListCampaignsResponse, error) {
	cs, err := a.s.campaigns.store.ListCampaigns(ctx)
	if err != nil {
		return nil, storeErr(err)
	}
	now := a.s.opts.Now()
	list, next, err := page(cs, func(c store.Campaign) string { return c.ID }, func(c store.Campaign) *maintv1.Campaign { return campaignToProto(c, now) }, req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	return &maintv1.ListCampaignsResponse{Campaigns: list, NextPageToken: next}, nil
}

func (a *MaintenanceAPI) get(ctx context.Context, id string) (store.Campaign, error) {
	if id == "" {
		return store.Campaign{}, invalid("campaign id is required (see 'budctl maintenance list')")
	}
	c, err := a.s.campaigns.store.GetCampaign(ctx, id)
	if err != nil {
		return c, storeErr(err)
	}
	return c, nil
}

// GetCampaign returns one campaign.
func (a *MaintenanceAPI) GetCampaign(ctx context.Context, req *maintv1.GetCampaignRequest) (*maintv1.GetCampaignResponse, error) {
	c, err := a.get(ctx, req.GetId())
	if err != nil {
		return nil, err
	}
	return &maintv1.GetCampaignResponse{Campaign: campaignToProto(c, a.s.opts.Now())}, nil
}

// WatchCampaign sends the campaign, then again on each change, until it is
// done or the caller goes.
func (a *MaintenanceAPI) WatchCampaign(req *maintv1.WatchCampaignRequest, stream maintv1.MaintenanceService_WatchCampaignServer) error {
	ctx := stream.Context()
	var last []byte
	for {
		changed := a.s.campaigns.runner.Changed() // before the read: no change is missed
		c, err := a.get(ctx, req.GetId())
		if err != nil {
			return err
		}
		b, err := json.Marshal(c)
		if err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		if string(b) != string(last) {
			if err := stream.Send(&maintv1.WatchCampaignResponse{Campaign: campaignToProto(c, a.s.opts.Now())}); err != nil {
				return err
			}
			last = b
		}
		if c.State.Done() {
			return nil
		}
		// With other controllers the leader may be another: its changes
		// are in the store only, so look every second (unchanged views are
		// not sent again).
		var peers <-chan time.Time
		if a.s.opts.Peers != nil {
			peers = time.After(time.Second)
		}
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-changed:
		case <-peers:
		case <-time.After(watchRefresh):
			last = nil
		}
	}
}

// errState marks a change the campaign's state does not allow.
type errState struct{ error }

// change applies an operator's change to the stored campaign and has the
// runner step it.
func (a *MaintenanceAPI) change(ctx context.Context, id, action string, fn func(c store.Campaign, by string, now time.Time) (store.Campaign, error)) (*maintv1.Campaign, error) {
	if id == "" {
		return nil, invalid("campaign id is required (see 'budctl maintenance list')")
	}
	by, now := operator(ctx), a.s.opts.Now()
	c, err := a.s.campaigns.store.UpdateCampaign(ctx, id, func(c *store.Campaign) error {
		next, err := fn(*c, by, now)
		if err != nil {
			return errState{err}
		}
		*c = next
		return nil
	})
	var es errState
	switch {
	case errors.As(err, &es):
		return nil, status.Error(codes.FailedPrecondition, es.Error())
	case err != nil:
		return nil, storeErr(err)
	}
	a.s.campaigns.runner.Track(id)
	a.s.FleetAPI().audit(ctx, "maintenance."+action, "campaign_id", id, "state", c.State)
	return campaignToProto(c, now), nil
}

// PauseCampaign stops new nodes from starting.
func (a *MaintenanceAPI) PauseCampaign(ctx context.Context, req *maintv1.PauseCampaignRequest) (*maintv1.PauseCampaignResponse, error) {
	c, err := a.change(ctx, req.GetId(), "pause", store.Campaign.Pause)
	if err != nil {
		return nil, err
	}
	return &maintv1.PauseCampaignResponse{Campaign: c}, nil
}

// ResumeCampaign lets a paused or stopped campaign start nodes again.
func (a *MaintenanceAPI) ResumeCampaign(ctx context.Context, req *maintv1.ResumeCampaignRequest) (*maintv1.ResumeCampaignResponse, error) {
	c, err := a.change(ctx, req.GetId(), "resume", store.Campaign.Resume)
	if err != nil {
		return nil, err
	}
	return &maintv1.ResumeCampaignResponse{Campaign: c}, nil
}

// AbortCampaign ends a campaign.
func (a *MaintenanceAPI) AbortCampaign(ctx context.Context, req *maintv1.AbortCampaignRequest) (*maintv1.AbortCampaignResponse, error) {
	c, err := a.change(ctx, req.GetId(), "abort", store.Campaign.Abort)
	if err != nil {
		return nil, err
	}
	return &maintv1.AbortCampaignResponse{Campaign: c}, nil
}

var campaignStates = map[maintenance.State]maintv1.CampaignState{
	maintenance.StatePending:   maintv1.CampaignState_CAMPAIGN_STATE_PENDING,
	maintenance.StateRunning:   maintv1.CampaignState_CAMPAIGN_STATE_RUNNING,
	maintenance.StatePaused:    maintv1.CampaignState_CAMPAIGN_STATE_PAUSED,
	maintenance.StateStopping:  maintv1.CampaignState_CAMPAIGN_STATE_STOPPING,
	maintenance.StateStopped:   maintv1.CampaignState_CAMPAIGN_STATE_STOPPED,
	maintenance.StateAborting:  maintv1.CampaignState_CAMPAIGN_STATE_ABORTING,
	maintenance.StateAborted:   maintv1.CampaignState_CAMPAIGN_STATE_ABORTED,
	maintenance.StateCompleted: maintv1.CampaignState_CAMPAIGN_STATE_COMPLETED,
}

var nodeSteps = map[maintenance.NodeStep]maintv1.NodeStep{
	maintenance.StepQueued:   maintv1.NodeStep_NODE_STEP_QUEUED,
	maintenance.StepCordon:   maintv1.NodeStep_NODE_STEP_CORDON,
	maintenance.StepDrain:    maintv1.NodeStep_NODE_STEP_DRAIN,
	maintenance.StepDrained:  maintv1.NodeStep_NODE_STEP_DRAINED,
	maintenance.StepTask:     maintv1.NodeStep_NODE_STEP_TASK,
	maintenance.StepReboot:   maintv1.NodeStep_NODE_STEP_REBOOT,
	maintenance.StepVerify:   maintv1.NodeStep_NODE_STEP_VERIFY,
	maintenance.StepUncordon: maintv1.NodeStep_NODE_STEP_UNCORDON,
	maintenance.StepDone:     maintv1.NodeStep_NODE_STEP_DONE,
	maintenance.StepFailed:   maintv1.NodeStep_NODE_STEP_FAILED,
	maintenance.StepSkipped:  maintv1.NodeStep_NODE_STEP_SKIPPED,
	maintenance.StepUpgrade:  maintv1.NodeStep_NODE_STEP_UPGRADE,
}

func dpb(d time.Duration) *durationpb.Duration {
	if d == 0 {
		return nil
	}
	return durationpb.New(d)
}

// since is the time from start to end, or to now when end is zero; 0
// before the start.
func since(start, end, now time.Time) *durationpb.Duration {
	if start.IsZero() {
		return nil
	}
	if end.IsZero() {
		end = now
	}
	return durationpb.New(max(end.Sub(start), 0).Round(time.Second))
}

func campaignToProto(c store.Campaign, now time.Time) *maintv1.Campaign {
	sp := c.Spec
	spec := &maintv1.CampaignSpec{
		Selector:        sp.Selector,
		MaxUnavailable:  uint32(sp.MaxUnavailable),
		DrainTimeout:    dpb(sp.DrainTimeout),
		DrainAttempts:   uint32(sp.DrainAttempts),
		DrainRetryDelay: dpb(sp.DrainRetryDelay),
		GracePeriod:     dpb(sp.GracePeriod),
		TaskTimeout:     dpb(sp.TaskTimeout),
		Reboot:          sp.Reboot,
		RebootTimeout:   dpb(sp.RebootTimeout),
		HealthTimeout:   dpb(sp.HealthTimeout),
		Window:          sp.Window.String(),
		MaxFailures:     uint32(sp.MaxFailures),
	}
	for p, v := range drainPolicies {
		if v == sp.OnDrainFailure && v != "" {
			spec.OnDrainFailure = p
		}
	}
	if sp.PerDomain != nil {
		spec.PerDomain = &maintv1.DomainLimit{Label: sp.PerDomain.Label, Max: uint32(sp.PerDomain.Max)}
	}
	if u := sp.Upgrade; u != nil {
		spec.AgentUpgrade = &maintv1.AgentUpgrade{Version: u.Version, Timeout: dpb(u.Timeout)}
	}
	if sp.Task != "" {
		sum := sha256.Sum256([]byte(sp.Task))
		spec.TaskBytes, spec.TaskSha256 = uint32(len(sp.Task)), hex.EncodeToString(sum[:])
	}
	p := &maintv1.Campaign{
		Id:          c.ID,
		Name:        c.Name,
		State:       campaignStates[c.State],
		StateReason: c.StateReason,
		CreatedBy:   c.CreatedBy,
		CreatedAt:   ts(c.CreatedAt),
		UpdatedAt:   ts(c.UpdatedAt),
		StartedAt:   ts(c.StartedAt),
		EndedAt:     ts(c.EndedAt),
		Elapsed:     since(c.StartedAt, c.EndedAt, now),
		Spec:        spec,
		Failures:    uint32(c.Failures),
		Waiting:     c.Waiting,
	}
	for _, n := range c.Nodes {
		np := &maintv1.NodeProgress{
			NodeId:             n.NodeID,
			K8SNode:            n.K8sNode,
			Domain:             n.Domain,
			Step:               nodeSteps[n.Step],
			Error:              n.Error,
			StartedAt:          ts(n.StartedAt),
			StepSince:          ts(n.StepSince),
			FinishedAt:         ts(n.FinishedAt),
			Elapsed:            since(n.StartedAt, n.FinishedAt, now),
			CordonedByCampaign: n.CordonedByUs,
			DrainAttempt:       uint32(n.DrainAttempt),
			DrainMessage:       n.DrainMessage,
			TaskCommandId:      n.TaskCommandID,
			TaskMessage:        n.TaskMessage,
			RebootCommandId:    n.RebootCommandID,
			BootIdBefore:       n.BootIDBefore,
			BootIdAfter:        n.BootIDAfter,
			GpuCountBefore:     uint32(n.GPUCountBefore),
			UpgradeCommandId:   n.UpgradeCommandID,
			VersionBefore:      n.VersionBefore,
			VersionAfter:       n.VersionAfter,
		}
		if !n.Step.Terminal() && n.Step != maintenance.StepQueued {
			np.StepElapsed = since(n.StepSince, time.Time{}, now)
		}
		p.Nodes = append(p.Nodes, np)
		switch n.Step {
		case maintenance.StepDone:
			p.NodesDone++
		case maintenance.StepQueued:
			p.NodesQueued++
		case maintenance.StepFailed:
			p.NodesFailed++
			p.FailedNodes = append(p.FailedNodes, n.NodeID)
		case maintenance.StepSkipped:
			p.NodesSkipped++
		default:
			p.NodesInProgress++
		}
	}
	return p
}
