package controller

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/bud-ecosystem/budfleet/controller/kube"
	"github.com/bud-ecosystem/budfleet/controller/store"
	kubev1 "github.com/bud-ecosystem/budfleet/proto/budfleet/kube/v1"
)

// ClusterAPI serves budfleet.kube.v1.ClusterService: the registered
// Kubernetes clusters and cordon, uncordon and drain of fleet nodes. Like
// the fleet API it needs an admin operator certificate (auth.go), and no
// answer carries a cluster's credentials.
type ClusterAPI struct {
	kubev1.UnimplementedClusterServiceServer
	s *Server
}

// ClusterAPI returns the cluster service of s.
func (s *Server) ClusterAPI() *ClusterAPI { return &ClusterAPI{s: s} }

// Kube is the controller's Kubernetes side: clusters, and the kube.Nodes
// the maintenance campaigns use.
func (s *Server) Kube() *kube.Manager { return s.kube }

// nodeStateTimeout bounds the Kubernetes lookup of FleetService.GetNode, so
// an unreachable cluster slows a node's page by this much at most.
const nodeStateTimeout = 5 * time.Second

func (a *ClusterAPI) audit(ctx context.Context, action string, args ...any) {
	(&FleetAPI{s: a.s}).audit(ctx, action, args...)
}

func operatorName(ctx context.Context) string {
	if id, ok := IdentityFrom(ctx); ok {
		return id.Name
	}
	return ""
}

// kubeErr maps an error of controller/kube to a status.
func kubeErr(err error) error {
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	case errors.Is(err, kube.ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, kube.ErrUnreachable):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, kube.ErrNoCluster), errors.Is(err, kube.ErrNodeNotFound):
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	return storeErr(err)
}

// AddCluster checks and stores a cluster.
func (a *ClusterAPI) AddCluster(ctx context.Context, req *kubev1.AddClusterRequest) (*kubev1.AddClusterResponse, error) {
	ci, err := a.s.kube.AddCluster(ctx, req.GetName(), req.GetKubeconfig(), operatorName(ctx))
	if err != nil {
		a.audit(ctx, "cluster.add", "cluster", truncate(req.GetName(), 64), "result", "failed", "error", err.Error())
		return nil, kubeErr(err)
	}
	a.audit(ctx, "cluster.add", "cluster", ci.Name, "server", ci.Server, "ca_fingerprint", ci.CAFingerprint, "user", ci.User, "result", "ok")
	return &kubev1.AddClusterResponse{Cluster: clusterToProto(ci)}, nil
}

// ListClusters lists the clusters, each checked now.
func (a *ClusterAPI) ListClusters(ctx context.Context, req *kubev1.ListClustersRequest) (*kubev1.ListClustersResponse, error) {
	cs, err := a.s.kube.Clusters(ctx)
	if err != nil {
		return nil, kubeErr(err)
	}
	list, next, err := page(cs, func(c kube.ClusterInfo) string { return c.Name }, clusterToProto, req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	return &kubev1.ListClustersResponse{Clusters: list, NextPageToken: next}, nil
}

// GetCluster returns one cluster, checked now.
func (a *ClusterAPI) GetCluster(ctx context.Context, req *kubev1.GetClusterRequest) (*kubev1.GetClusterResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "cluster name is required (see 'budctl clusters list')")
	}
	c, err := a.s.kube.Cluster(ctx, req.GetName())
	if err != nil {
		return nil, kubeErr(err)
	}
	return &kubev1.GetClusterResponse{Cluster: clusterToProto(c)}, nil
}

// RemoveCluster forgets a cluster and its credentials.
func (a *ClusterAPI) RemoveCluster(ctx context.Context, req *kubev1.RemoveClusterRequest) (*kubev1.RemoveClusterResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "cluster name is required (see 'budctl clusters list')")
	}
	if err := a.s.kube.RemoveCluster(ctx, req.GetName()); err != nil {
		return nil, kubeErr(err)
	}
	a.audit(ctx, "cluster.remove", "cluster", req.GetName(), "result", "ok")
	return &kubev1.RemoveClusterResponse{}, nil
}

// fleetNode reads the fleet node a node call names.
func (a *ClusterAPI) fleetNode(ctx context.Context, id string) (store.Node, error) {
	if id == "" {
		return store.Node{}, status.Error(codes.InvalidArgument, "node id is required (see 'budctl nodes list')")
	}
	n, err := a.s.store.GetNode(ctx, id)
	if err != nil {
		return n, storeErr(err)
	}
	return n, nil
}

// CordonNode marks the node's Kubernetes Node unschedulable.
func (a *ClusterAPI) CordonNode(ctx context.Context, req *kubev1.CordonNodeRequest) (*kubev1.CordonNodeResponse, error) {
	st, err := a.setUnschedulable(ctx, req.GetNodeId(), true)
	if err != nil {
		return nil, err
	}
	return &kubev1.CordonNodeResponse{Node: kubeNodeToProto(st)}, nil
}

// UncordonNode marks the node's Kubernetes Node schedulable.
func (a *ClusterAPI) UncordonNode(ctx context.Context, req *kubev1.UncordonNodeRequest) (*kubev1.UncordonNodeResponse, error) {
	st, err := a.setUnschedulable(ctx, req.GetNodeId(), false)
	if err != nil {
		return nil, err
	}
	return &kubev1.UncordonNodeResponse{Node: kubeNodeToProto(st)}, nil
}

func (a *ClusterAPI) setUnschedulable(ctx context.Context, id string, cordon bool) (kube.State, error) {
	n, err := a.fleetNode(ctx, id)
	if err != nil {
		return kube.State{}, err
	}
	action := "node.cordon"
	if !cordon {
		action = "node.uncordon"
	}
	st, err := a.s.kube.SetUnschedulable(ctx, kube.FleetNodeOf(n), cordon)
	if err != nil {
		a.audit(ctx, action, "node_id", n.ID, "cluster", st.Cluster, "k8s_node", st.Node, "result", "failed", "error", err.Error())
		return st, kubeErr(err)
	}
	a.audit(ctx, action, "node_id", n.ID, "cluster", st.Cluster, "k8s_node", st.Node, "result", "ok")
	return st, nil
}

// DrainNode cordons and drains the node's Kubernetes Node. A drain that ran
// answers OK with its report, whatever blocked it.
func (a *ClusterAPI) DrainNode(ctx context.Context, req *kubev1.DrainNodeRequest) (*kubev1.DrainNodeResponse, error) {
	opts, err := drainOptions(req)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	n, err := a.fleetNode(ctx, req.GetNodeId())
	if err != nil {
		return nil, err
	}
	fn := kube.FleetNodeOf(n)
	rep, err := a.s.kube.Drain(ctx, fn, opts)
	if err != nil && !errors.Is(err, kube.ErrDrainBlocked) {
		a.audit(ctx, "node.drain", "node_id", n.ID, "cluster", rep.Cluster, "k8s_node", rep.Node, "result", "failed", "error", err.Error())
		return nil, kubeErr(err)
	}
	blocked := make([]string, len(rep.Blocked))
	for i, b := range rep.Blocked {
		blocked[i] = b.String()
		if b.PDB != "" {
			blocked[i] += " (PodDisruptionBudget " + b.PDB + ")"
		}
	}
	a.audit(ctx, "node.drain", "node_id", n.ID, "cluster", rep.Cluster, "k8s_node", rep.Node,
		"result", string(rep.Result), "evicted", len(rep.Evicted), "blocked", strings.Join(blocked, ", "),
		"duration", rep.Duration.Round(time.Millisecond), "message", rep.Message)

	p := drainReportToProto(rep)
	// The Node as it is now (the drain cordoned it).
	if st, err := a.s.kube.NodeState(ctx, fn); err == nil {
		p.Node = kubeNodeToProto(st)
	} else {
		p.Node.Error = err.Error()
	}
	return &kubev1.DrainNodeResponse{Report: p}, nil
}

// drainOptions reads a DrainNodeRequest: the playbook's defaults for what
// it leaves unset.
func drainOptions(req *kubev1.DrainNodeRequest) (kube.DrainOptions, error) {
	o := kube.DefaultDrainOptions()
	if d := req.GetTimeout(); d != nil {
		if err := d.CheckValid(); err != nil {
			return o, fmt.Errorf("timeout: %v", err)
		}
		if d.AsDuration() <= 0 {
			return o, fmt.Errorf("timeout %s: want a positive duration (leave it unset for %s)", d.AsDuration(), kube.DefaultDrainTimeout)
		}
		o.Timeout = d.AsDuration()
	}
	if req.DeleteEmptydirData != nil {
		o.DeleteEmptyDirData = req.GetDeleteEmptydirData()
	}
	if req.IgnoreDaemonsets != nil {
		o.IgnoreDaemonSets = req.GetIgnoreDaemonsets()
	}
	o.Force = req.GetForce()
	if req.GracePeriodSeconds != nil {
		switch g := req.GetGracePeriodSeconds(); {
		case g == 0:
			return o, errors.New("grace period 0 would kill pods without any grace: give 1 or more seconds, or leave it unset (or negative) for each pod's own")
		case g > 0:
			o.GracePeriod = time.Duration(g) * time.Second
		}
	}
	return o, o.Validate()
}

// kubernetesNode is a fleet node's Kubernetes Node for GetNode: nil when no
// cluster is registered, the error in words when it cannot be read.
func (s *Server) kubernetesNode(ctx context.Context, n store.Node) *kubev1.KubernetesNode {
	names, err := s.kube.ClusterNames(ctx)
	if err != nil || len(names) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, nodeStateTimeout)
	defer cancel()
	st, err := s.kube.NodeState(ctx, kube.FleetNodeOf(n))
	p := kubeNodeToProto(st)
	if err != nil {
		p.Error = err.Error()
	}
	return p
}

func clusterToProto(c kube.ClusterInfo) *kubev1.Cluster {
	return &kubev1.Cluster{
		Name:                  c.Name,
		Server:                c.Server,
		CaFingerprint:         c.CAFingerprint,
		InsecureSkipTlsVerify: c.Insecure,
		User:                  c.User,
		Auth:                  c.Auth,
		AddedAt:               ts(c.AddedAt),
		AddedBy:               c.AddedBy,
		Check: &kubev1.ClusterCheck{
			CheckedAt:       ts(c.Check.CheckedAt),
			Reachable:       c.Check.Reachable,
			Reason:          c.Check.Reason,
			ServerVersion:   c.Check.ServerVersion,
			AuthenticatedAs: c.Check.AuthenticatedAs,
		},
	}
}

func kubeNodeToProto(st kube.State) *kubev1.KubernetesNode {
	return &kubev1.KubernetesNode{
		Cluster:       st.Cluster,
		Name:          st.Node,
		MappedBy:      st.MappedBy,
		Exists:        st.Exists,
		Ready:         st.Ready,
		Unschedulable: st.Unschedulable,
	}
}

var drainResults = map[kube.DrainResult]kubev1.DrainResult{
	kube.DrainSucceeded: kubev1.DrainResult_DRAIN_RESULT_SUCCEEDED,
	kube.DrainFailed:    kubev1.DrainResult_DRAIN_RESULT_FAILED,
	kube.DrainTimedOut:  kubev1.DrainResult_DRAIN_RESULT_TIMED_OUT,
}

func drainReportToProto(r kube.DrainReport) *kubev1.DrainReport {
	p := &kubev1.DrainReport{
		Node:     &kubev1.KubernetesNode{Cluster: r.Cluster, Name: r.Node, MappedBy: r.MappedBy, Exists: true},
		Result:   drainResults[r.Result],
		Message:  r.Message,
		Warnings: r.Warnings,
		Duration: durationpb.New(r.Duration),
		Output:   r.Output,
	}
	for _, e := range r.Evicted {
		p.Evicted = append(p.Evicted, &kubev1.PodRef{Namespace: e.Namespace, Name: e.Name})
	}
	for _, b := range r.Blocked {
		p.Blocked = append(p.Blocked, &kubev1.BlockedPod{Namespace: b.Namespace, Name: b.Name, Pdb: b.PDB, Reason: b.Reason})
	}
	return p
}
