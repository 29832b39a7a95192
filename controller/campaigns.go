package controller

import (
	"context"
	"errors"
	"time"

	"github.com/bud-ecosystem/budfleet/controller/maintenance/runner"
	"github.com/bud-ecosystem/budfleet/controller/store"
)

// campaigns is the controller's part in maintenance campaigns: the runner
// that moves them on, the store that keeps them and the Kubernetes side.
// The operator API is maintapi.go.
type campaigns struct {
	srv     *Server
	store   store.CampaignStore
	cluster runner.Cluster // nil: no cluster configured
	runner  *runner.Runner
}

// errNoCluster is what a campaign meets on a controller with no Kubernetes
// cluster: its nodes cannot be observed, so it waits.
var errNoCluster = errors.New("no Kubernetes cluster is configured on the controller: add one ('budctl clusters add NAME --kubeconfig FILE') so campaigns can cordon and drain")

// noCluster stands in for a missing cluster: every call fails.
type noCluster struct{}

func (noCluster) NodeState(context.Context, store.Node) (runner.NodeState, error) {
	return runner.NodeState{}, errNoCluster
}
func (noCluster) Cordon(context.Context, store.Node) error   { return errNoCluster }
func (noCluster) Uncordon(context.Context, store.Node) error { return errNoCluster }
func (noCluster) Drain(context.Context, store.Node, time.Duration, time.Duration) error {
	return errNoCluster
}

func newCampaigns(s *Server) (*campaigns, error) {
	c := &campaigns{srv: s, store: s.opts.Store, cluster: s.opts.Cluster}
	cluster := c.cluster
	if cluster == nil {
		cluster = noCluster{}
	}
	ro := runner.Options{
		Store:    s.opts.Store,
		Cluster:  cluster,
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

// CommandQueued delivers the node's new command if it is connected.
func (a campaignAgents) CommandQueued(nodeID string) { a.s.commands.wakeNode(nodeID) }
