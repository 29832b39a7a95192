// Package runner drives maintenance campaigns: the thin, impure loop around
// the pure maintenance.Step.
//
// Every tick (Options.Interval, and sooner when Wake or NodeEvent says
// something changed) the runner, for each campaign not yet settled:
//
//  1. reads the campaign from the store;
//  2. observes what its Watchlist names: the Kubernetes Node through the
//     Cluster, the agent's session through Agents, the boot id and GPUs
//     from the stored node (as the agent last reported them), each listed command from the store, and the
//     drains from its own registry. A node it cannot observe reliably (the
//     API server did not answer, the store failed, the controller started
//     too recently to know whether the agent is connected) is left out, so
//     Step leaves it alone and no deadline of it fires;
//  3. calls Step;
//  4. persists the result with UpdateCampaign, only if the stored campaign
//     is still the one it read (an operator's pause or abort in between
//     wins, and the step is taken again at once), and BEFORE any action;
//  5. carries out the actions, each idempotently: Cordon and Uncordon
//     through the Cluster (Uncordon first cancels the node's drain); Drain
//     in a goroutine of its own, keyed by (campaign, node), bounded by its
//     timeout, a higher attempt replacing a lower one; EnqueueCommand under
//     its deterministic id, ErrAlreadyExists counting as done; Audit to the
//     audit trail, in order, stopping at the first failure so that
//     AuditedThrough never skips an event.
//
// A runner killed anywhere loses only what Step asks for again: the next
// runner on the same store loads the unsettled campaigns and goes on. On
// shutdown (Run's context ends) it cancels its drains and waits for them;
// the campaign is left as persisted, the cordons in place.
package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sort"
	"sync"
	"time"

	"github.com/bud-ecosystem/budfleet/controller/maintenance"
	"github.com/bud-ecosystem/budfleet/controller/store"
)

// Store is what the runner reads and writes; a store.Store is one.
type Store interface {
	GetCampaign(ctx context.Context, id string) (store.Campaign, error)
	ListCampaigns(ctx context.Context) ([]store.Campaign, error)
	UpdateCampaign(ctx context.Context, id string, fn func(*store.Campaign) error) (store.Campaign, error)
	GetNode(ctx context.Context, id string) (store.Node, error)
	GetCommand(ctx context.Context, id string) (store.Command, error)
	EnqueueCommand(ctx context.Context, c store.Command) error
}

// Cluster is the Kubernetes side: the Node a fleet node maps to (by
// hostname, or by the label budfleet.io/k8s-node), its state, and cordon,
// uncordon and drain through the API server. Every method honours ctx.
type Cluster interface {
	// NodeState returns the Kubernetes Node the fleet node maps to. An
	// error means the state is unknown (the API server did not answer);
	// a Node that does not exist is not an error (Exists false).
	NodeState(ctx context.Context, node store.Node) (NodeState, error)
	// Cordon marks the Node unschedulable; idempotent.
	Cordon(ctx context.Context, node store.Node) error
	// Uncordon marks the Node schedulable; idempotent.
	Uncordon(ctx context.Context, node store.Node) error
	// Drain evicts the Node's pods as the fleet playbook does: through the
	// eviction API with PodDisruptionBudgets respected, DaemonSet pods
	// ignored, emptyDir data deleted, not forced; within timeout, with
	// gracePeriod overriding the pods' own when it is not 0. The error says
	// what blocked it (the pod, the PodDisruptionBudget).
	Drain(ctx context.Context, node store.Node, timeout, gracePeriod time.Duration) error
}

// NodeState is a Kubernetes Node as Cluster.NodeState sees it.
type NodeState struct {
	// Name is the Node the fleet node maps to; "" when none does.
	Name string
	// Exists: the Node exists. The other fields mean nothing without it.
	Exists bool
	// Ready: its Ready condition is True.
	Ready bool
	// Unschedulable: it is cordoned (spec.unschedulable).
	Unschedulable bool
}

// Agents is the controller's view of agent sessions.
type Agents interface {
	// AgentConnected reports whether the node's agent has a live session
	// with a recent heartbeat. known is false while the controller cannot
	// tell yet (it started too recently for agents to have reconnected):
	// the runner then leaves the node out of its observations.
	AgentConnected(nodeID string) (connected, known bool)
	// AgentVersion returns the version the node's connected agent said in
	// its hello; "" when it is not connected.
	AgentVersion(nodeID string) string
	// CommandQueued tells delivery that the node has a new command.
	CommandQueued(nodeID string)
}

// Auditor writes operator audit events; *controller.AuditLog is one.
type Auditor interface {
	Record(at time.Time, action, operator string, attrs map[string]any) error
}

// Options configure a Runner.
type Options struct {
	Store   Store
	Cluster Cluster
	Agents  Agents
	// Audit receives every campaign event; nil keeps them in the log only.
	Audit  Auditor
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Interval is the tick (default 1s). Events wake the runner sooner.
	Interval time.Duration
	// MinGap spaces steps woken by events (default 100ms), so a burst of
	// events costs one step.
	MinGap time.Duration
	// CallTimeout bounds each Cluster call other than Drain (default 30s).
	CallTimeout time.Duration
}

// Defaults for Options.
const (
	DefaultInterval    = time.Second
	DefaultMinGap      = 100 * time.Millisecond
	DefaultCallTimeout = 30 * time.Second
)

// Runner steps the campaigns in a store.
type Runner struct {
	opts Options
	log  *slog.Logger
	wake chan struct{}

	// drainCtx is the parent of every drain: Run's context.
	drainCtx context.Context
	drainWG  sync.WaitGroup

	mu      sync.Mutex
	loaded  bool
	active  map[string]bool // campaign ids to step
	watched map[string]int  // node id -> active campaigns watching it
	byCamp  map[string][]string
	audited map[string]uint64 // campaign id -> every audit seq up to this is written
	drains  map[drainKey]*drainRun
	changed chan struct{} // closed on each change of a campaign
}

// New checks opts and returns a Runner; Run starts it.
func New(opts Options) (*Runner, error) {
	if opts.Store == nil || opts.Cluster == nil || opts.Agents == nil {
		return nil, errors.New("maintenance runner: Store, Cluster and Agents must be set")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Interval <= 0 {
		opts.Interval = DefaultInterval
	}
	if opts.MinGap <= 0 {
		opts.MinGap = DefaultMinGap
	}
	if opts.CallTimeout <= 0 {
		opts.CallTimeout = DefaultCallTimeout
	}
	return &Runner{
		opts:    opts,
		log:     opts.Logger.With("component", "maintenance"),
		wake:    make(chan struct{}, 1),
		active:  map[string]bool{},
		watched: map[string]int{},
		byCamp:  map[string][]string{},
		audited: map[string]uint64{},
		drains:  map[drainKey]*drainRun{},
		changed: make(chan struct{}),
	}, nil
}

// Wake makes the runner step soon.
func (r *Runner) Wake() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// NodeEvent says something changed about a node (its session opened or
// closed, a command of it finished): the runner steps soon if a campaign
// watches the node.
func (r *Runner) NodeEvent(nodeID string) {
	r.mu.Lock()
	watched := r.watched[nodeID] > 0
	r.mu.Unlock()
	if watched {
		r.Wake()
	}
}

// Track makes the runner step the campaign id: after it was created, or
// changed by an operator (resumed, aborted). It also tells watchers.
func (r *Runner) Track(id string) {
	r.mu.Lock()
	r.active[id] = true
	r.mu.Unlock()
	r.notify()
	r.Wake()
}

// Changed returns a channel closed at the next change of any campaign the
// runner persists or Track is told of.
func (r *Runner) Changed() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changed
}

func (r *Runner) notify() {
	r.mu.Lock()
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

// Run steps campaigns until ctx ends, then cancels the drains it runs and
// waits for them. The campaigns stay as persisted: the next Run (of this
// runner or another, on the same store) resumes them.
func (r *Runner) Run(ctx context.Context) error {
	r.drainCtx = ctx
	defer r.drainWG.Wait()
	ticker := time.NewTicker(r.opts.Interval)
	defer ticker.Stop()
	var last time.Time
	for {
		r.stepAll(ctx)
		last = time.Now()
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		case <-r.wake:
			if gap := r.opts.MinGap - time.Since(last); gap > 0 {
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(gap):
				}
			}
		}
	}
}

// load marks the unsettled campaigns active, once.
func (r *Runner) load(ctx context.Context) bool {
	r.mu.Lock()
	loaded := r.loaded
	r.mu.Unlock()
	if loaded {
		return true
	}
	cs, err := r.opts.Store.ListCampaigns(ctx)
	if err != nil {
		if ctx.Err() == nil {
			r.log.ErrorContext(ctx, "load maintenance campaigns; retrying", "error", err)
		}
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range cs {
		if !c.Settled() {
			r.active[c.ID] = true
		}
	}
	r.loaded = true
	if n := len(r.active); n > 0 {
		r.log.InfoContext(ctx, "resuming maintenance campaigns", "campaigns", n)
	}
	return true
}

func (r *Runner) stepAll(ctx context.Context) {
	if !r.load(ctx) {
		return
	}
	r.mu.Lock()
	ids := make([]string, 0, len(r.active))
	for id := range r.active {
		ids = append(ids, id)
	}
	r.mu.Unlock()
	sort.Strings(ids)
	for _, id := range ids {
		if ctx.Err() != nil {
			return
		}
		r.step(ctx, id)
	}
}

// errChanged: the stored campaign is not the one the step read.
var errChanged = errors.New("campaign changed while it was stepped")

// step takes one step of one campaign: read, observe, Step, persist, act.
func (r *Runner) step(ctx context.Context, id string) {
	log := r.log.With("campaign_id", id)
	c, err := r.opts.Store.GetCampaign(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		r.forget(id)
		return
	}
	if err != nil {
		if ctx.Err() == nil {
			log.ErrorContext(ctx, "read campaign", "error", err)
		}
		return
	}
	if c.Settled() {
		r.forget(id)
		return
	}
	obs, nodes := r.observe(ctx, c)
	next, acts := maintenance.Step(c, obs)
	if !reflect.DeepEqual(next, c) {
		read, err := json.Marshal(c)
		if err != nil {
			log.ErrorContext(ctx, "encode campaign", "error", err)
			return
		}
		_, err = r.opts.Store.UpdateCampaign(ctx, id, func(cur *store.Campaign) error {
			now, err := json.Marshal(cur)
			if err != nil {
				return err
			}
			if string(now) != string(read) {
				return errChanged
			}
			*cur = next
			return nil
		})
		switch {
		case errors.Is(err, errChanged):
			r.Wake() // an operator changed it: step again with what is stored
			return
		case err != nil:
			if ctx.Err() == nil {
				log.ErrorContext(ctx, "persist campaign; its actions wait for the next step", "error", err)
			}
			return
		}
		if next.State != c.State {
			log.InfoContext(ctx, "campaign state", "from", c.State, "to", next.State, "reason", next.StateReason)
		}
		r.notify()
	}
	r.watch(next)
	r.execute(ctx, next, acts, nodes)
	if next.Settled() {
		r.forget(id)
	}
}

// watch records which nodes an active campaign watches, for NodeEvent.
func (r *Runner) watch(c store.Campaign) {
	var ids []string
	for _, w := range c.Watchlist() {
		ids = append(ids, w.NodeID)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range r.byCamp[c.ID] {
		if r.watched[n]--; r.watched[n] <= 0 {
			delete(r.watched, n)
		}
	}
	r.byCamp[c.ID] = ids
	for _, n := range ids {
		r.watched[n]++
	}
}

// forget stops stepping a settled (or deleted) campaign.
func (r *Runner) forget(id string) {
	r.watch(store.Campaign{ID: id})
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.active, id)
	delete(r.byCamp, id)
	delete(r.audited, id)
	for k, d := range r.drains {
		if k.campaign == id {
			d.cancel()
			delete(r.drains, k)
		}
	}
}

// Active reports whether the runner steps campaign id.
func (r *Runner) Active(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.active[id]
}

func (r *Runner) callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, r.opts.CallTimeout)
}

func nodeLog(a maintenance.Action) []any {
	switch a := a.(type) {
	case maintenance.Cordon:
		return []any{"node_id", a.NodeID, "k8s_node", a.K8sNode}
	case maintenance.Uncordon:
		return []any{"node_id", a.NodeID, "k8s_node", a.K8sNode}
	case maintenance.Drain:
		return []any{"node_id", a.NodeID, "k8s_node", a.K8sNode, "attempt", a.Attempt}
	case maintenance.EnqueueCommand:
		return []any{"node_id", a.NodeID, "command_id", a.ID, "kind", a.Kind}
	}
	return nil
}

func actionName(a maintenance.Action) string {
	switch a.(type) {
	case maintenance.Cordon:
		return "cordon"
	case maintenance.Uncordon:
		return "uncordon"
	case maintenance.Drain:
		return "drain"
	case maintenance.EnqueueCommand:
		return "enqueue command"
	case maintenance.Audit:
		return "audit"
	}
	return fmt.Sprintf("%T", a)
}
