package controller

import (
	"context"
	"time"

	"github.com/bud-ecosystem/budfleet/controller/kube"
	"github.com/bud-ecosystem/budfleet/controller/maintenance/runner"
	"github.com/bud-ecosystem/budfleet/controller/store"
)

// campaigns is the controller's part in maintenance campaigns: the runner
// that moves them on, the store that keeps them and the Kubernetes side.
// The operator API is maintapi.go.
type campaigns struct {
	srv     *Server
	store   store.CampaignStore
	cluster runner.Cluster
	runner  *runner.Runner
}

// kubeCluster is the runner's Cluster over controller/kube: the cluster a
// node belongs to (its label budfleet.io/cluster, or the only one), its
// Node by hostname or the label budfleet.io/k8s-node, and the fleet
// playbook's drain (DaemonSet pods stay, emptyDir data goes, not forced).
type kubeCluster struct{ nodes kube.Nodes }

func (k kubeCluster) NodeState(ctx context.Context, n store.Node) (runner.NodeState, error) {
	st, err := k.nodes.NodeState(ctx, kube.FleetNodeOf(n))
	if err != nil {
		return runner.NodeState{}, err
	}
	return runner.NodeState{Name: st.Node, Exists: st.Exists, Ready: st.Ready, Unschedulable: st.Unschedulable}, nil
}

func (k kubeCluster) Cordon(ctx context.Context, n store.Node) error {
	return k.nodes.Cordon(ctx, kube.FleetNodeOf(n))
}

func (k kubeCluster) Uncordon(ctx context.Context, n store.Node) error {
	return k.nodes.Uncordon(ctx, kube.FleetNodeOf(n))
}

func (k kubeCluster) Drain(ctx context.Context, n store.Node, timeout, gracePeriod time.Duration) error {
	opts := kube.DefaultDrainOptions()
	opts.Timeout, opts.GracePeriod = min(timeout, kube.MaxDrainTimeout), gracePeriod
	_, err := k.nodes.Drain(ctx, kube.FleetNodeOf(n), opts)
	return err
}

func newCampaigns(s *Server) (*campaigns, error) {
	c := &campaigns{srv: s, store: s.opts.Store, cluster: s.opts.Cluster}
	if c.cluster == nil {
		c.cluster = kubeCluster{s.kube}
	}
	ro := runner.Options{
		Store:    s.opts.Store,
		Cluster:  c.cluster,
		Agents:   campaignAgents{s},
		Logger:   s.log,
		Now:      s.opts.Now,
		Interval: s.opts.MaintenanceInterval,
	}
	if s.opts.AuditLog != nil {
		ro.Audit = s.opts.AuditLog
	}
	var err error
	c.runner, err = runner.New(ro)
	return c, err
}

// nodeEvent wakes the runner when a campaign watches the node: its session
// opened or closed, or a command of it finished.
func (s *Server) nodeEvent(nodeID string) { s.campaigns.runner.NodeEvent(nodeID) }

// RunMaintenance runs the maintenance campaigns until ctx ends (Serve does;
// tests may). It resumes the campaigns the store has unsettled.
func (s *Server) RunMaintenance(ctx context.Context) error { return s.campaigns.runner.Run(ctx) }

// campaignAgents is the runner's view of agent sessions.
type campaignAgents struct{ s *Server }

// AgentConnected: the node has a session whose agent sent a heartbeat
// within the grace period, or opened it within the grace period (the first
// heartbeat comes one interval after the welcome). Until the controller
// has run for one grace period an agent without a session is not known to
// be away: it may be reconnecting to this new controller.
func (a campaignAgents) AgentConnected(nodeID string) (connected, known bool) {
	s := a.s
	now := s.opts.Now()
	s.mu.Lock()
	sess, last := s.sessions[nodeID], s.lastSeen[nodeID]
	s.mu.Unlock()
	connected = sess != nil && (s.ready(last) || now.Sub(sess.opened) < s.opts.HeartbeatGrace)
	return connected, connected || now.Sub(s.started) >= s.opts.HeartbeatGrace
}

// AgentVersion: the version in the hello of the node's session.
func (a campaignAgents) AgentVersion(nodeID string) string {
	a.s.mu.Lock()
	defer a.s.mu.Unlock()
	if sess := a.s.sessions[nodeID]; sess != nil {
		return sess.version
	}
	return ""
}

// CommandQueued delivers the node's new command if it is connected.
func (a campaignAgents) CommandQueued(nodeID string) { a.s.commands.wakeNode(nodeID) }
