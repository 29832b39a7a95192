package kube

import (
	"context"
	"errors"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/kubectl/pkg/drain"

	"github.com/bud-ecosystem/budfleet/controller/store"
)

// Fleet node labels this package reads. Fleet labels come from the join
// token a node enrolled with (budctl tokens create --label K=V).
const (
	// LabelK8sNode names the node's Kubernetes Node when it is not the
	// node's hostname.
	LabelK8sNode = "budfleet.io/k8s-node"
	// LabelCluster names the registered cluster the node belongs to; it is
	// needed only when more than one cluster is registered.
	LabelCluster = "budfleet.io/cluster"
)

// Nodes is what a maintenance campaign needs from Kubernetes: a fleet
// node's Node state, and cordon, uncordon and drain of it. *Manager
// implements it; every method is safe to call again (idempotent) and from
// several goroutines.
//
// Errors wrap, for errors.Is: ErrNoCluster (the node has no cluster),
// ErrNodeNotFound (the cluster has no such Node; NodeState reports that as
// State.Exists false instead), ErrUnreachable (the API server did not
// answer or refused), ErrInvalid (bad DrainOptions), ErrDrainBlocked (a
// drain ran and left pods: see the report), and the context's error.
type Nodes interface {
	// NodeState reads the node's Kubernetes Node. A Node that does not
	// exist is State.Exists false and no error; an error means the state
	// is not known (leave the node out of the observations).
	NodeState(ctx context.Context, n FleetNode) (State, error)
	// Cordon marks the Node unschedulable (spec.unschedulable true).
	Cordon(ctx context.Context, n FleetNode) error
	// Uncordon marks the Node schedulable again.
	Uncordon(ctx context.Context, n FleetNode) error
	// Drain cordons the Node and evicts its pods through the eviction API
	// (PodDisruptionBudgets respected), as `kubectl drain` does, until
	// every pod to evict is gone or opts.Timeout passes. The report says
	// what was evicted and what blocked; the error is nil only when the
	// drain succeeded (ErrDrainBlocked when it ran but left pods; the
	// report is filled as far as it got in every case).
	Drain(ctx context.Context, n FleetNode, opts DrainOptions) (DrainReport, error)
	// SetTaint adds (present true) or removes a taint of the Node.
	SetTaint(ctx context.Context, n FleetNode, taint corev1.Taint, present bool) error
}

// FleetNode is what mapping a fleet node to Kubernetes needs: its id,
// hostname and labels (see FleetNodeOf).
type FleetNode struct {
	ID       string
	Hostname string
	Labels   map[string]string
}

// FleetNodeOf is the FleetNode of a stored node.
func FleetNodeOf(n store.Node) FleetNode {
	return FleetNode{ID: n.ID, Hostname: n.Hostname, Labels: n.Labels}
}

// Target is where a fleet node lives in Kubernetes.
type Target struct {
	// Cluster is the registered cluster's name.
	Cluster string
	// Node is the Kubernetes Node's name.
	Node string
	// MappedBy says how Node was found: "label budfleet.io/k8s-node" or
	// "hostname".
	MappedBy string
}

// State is a fleet node's Kubernetes Node as last read.
type State struct {
	Target
	// Exists: the Node exists; the other fields mean nothing when false.
	Exists bool
	// Ready: the Node's Ready condition is True.
	Ready bool
	// Unschedulable: the Node is cordoned.
	Unschedulable bool
}

// NodeName is the Kubernetes Node name of a fleet node, and how it was
// found: the label budfleet.io/k8s-node when set, else the hostname in
// lower case (as the kubelet names its Node). It reads no cluster.
func NodeName(n FleetNode) (name, mappedBy string) {
	if v := n.Labels[LabelK8sNode]; v != "" {
		return v, "label " + LabelK8sNode
	}
	return strings.ToLower(n.Hostname), "hostname"
}

// Resolve says which cluster and Node a fleet node maps to, without
// calling the cluster: the cluster named by the node's label
// budfleet.io/cluster, else the only registered one (several without the
// label is ErrNoCluster, saying to set it).
func (m *Manager) Resolve(ctx context.Context, n FleetNode) (Target, error) {
	t, _, err := m.resolve(ctx, n)
	return t, err
}

func (m *Manager) resolve(ctx context.Context, n FleetNode) (Target, store.Cluster, error) {
	var t Target
	t.Node, t.MappedBy = NodeName(n)
	if t.Node == "" {
		return t, store.Cluster{}, fmt.Errorf("%w: node %s has no hostname and no %s label", ErrNoCluster, n.ID, LabelK8sNode)
	}
	if name := n.Labels[LabelCluster]; name != "" {
		c, err := m.opts.Store.GetCluster(ctx, name)
		if err != nil {
			if ctx.Err() != nil {
				return t, c, ctx.Err()
			}
			return t, c, fmt.Errorf("%w: node %s has the label %s=%s but no cluster %s is registered: add it with 'budctl clusters add %s --kubeconfig FILE' (%v)", ErrNoCluster, n.ID, LabelCluster, name, name, name, err)
		}
		t.Cluster = c.Name
		return t, c, nil
	}
	cs, err := m.opts.Store.ListClusters(ctx)
	if err != nil {
		return t, store.Cluster{}, err
	}
	switch len(cs) {
	case 0:
		return t, store.Cluster{}, fmt.Errorf("%w: no Kubernetes cluster is registered: add the cluster of node %s with 'budctl clusters add NAME --kubeconfig FILE'", ErrNoCluster, n.ID)
	case 1:
		t.Cluster = cs[0].Name
		return t, cs[0], nil
	}
	names := make([]string, len(cs))
	for i, c := range cs {
		names[i] = c.Name
	}
	return t, store.Cluster{}, fmt.Errorf("%w: %d clusters are registered (%s) and node %s has no %s label saying which is its: enroll it with a token that carries it (budctl tokens create --label %s=NAME)", ErrNoCluster, len(cs), strings.Join(names, ", "), n.ID, LabelCluster, LabelCluster)
}

// node resolves n and reads its Node; a missing Node is ErrNodeNotFound.
func (m *Manager) node(ctx context.Context, n FleetNode) (Target, *clusterClient, *corev1.Node, error) {
	t, c, err := m.resolve(ctx, n)
	if err != nil {
		return t, nil, nil, err
	}
	cc, err := m.clientFor(c)
	if err != nil {
		return t, nil, nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, m.opts.CallTimeout)
	defer cancel()
	kn, err := cc.client.CoreV1().Nodes().Get(cctx, t.Node, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return t, cc, nil, fmt.Errorf("%w: fleet node %s maps to Kubernetes Node %q (by %s) in cluster %s, which has no such Node: check that the node joined the cluster, or set the fleet label %s to its Node name", ErrNodeNotFound, n.ID, t.Node, t.MappedBy, t.Cluster, LabelK8sNode)
	case err != nil:
		return t, cc, nil, m.callErr(ctx, t, cc, err)
	}
	return t, cc, kn, nil
}

// callErr words an error of an API call on cluster t.Cluster.
func (m *Manager) callErr(ctx context.Context, t Target, cc *clusterClient, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("cluster %s, Node %s: %w", t.Cluster, t.Node, ctx.Err())
	}
	return fmt.Errorf("%w: cluster %s, Node %s: %s", ErrUnreachable, t.Cluster, t.Node, explain(err, cc.k, m.opts.CallTimeout))
}

// NodeState reads the node's Kubernetes Node.
func (m *Manager) NodeState(ctx context.Context, n FleetNode) (State, error) {
	t, _, kn, err := m.node(ctx, n)
	st := State{Target: t}
	switch {
	case isNodeNotFound(err):
		return st, nil
	case err != nil:
		return st, err
	}
	return stateOf(t, kn), nil
}

func stateOf(t Target, kn *corev1.Node) State {
	st := State{Target: t, Exists: true, Unschedulable: kn.Spec.Unschedulable}
	for _, c := range kn.Status.Conditions {
		if c.Type == corev1.NodeReady {
			st.Ready = c.Status == corev1.ConditionTrue
		}
	}
	return st
}

// Cordon marks the node's Node unschedulable.
func (m *Manager) Cordon(ctx context.Context, n FleetNode) error {
	_, err := m.SetUnschedulable(ctx, n, true)
	return err
}

// Uncordon marks the node's Node schedulable.
func (m *Manager) Uncordon(ctx context.Context, n FleetNode) error {
	_, err := m.SetUnschedulable(ctx, n, false)
	return err
}

// SetUnschedulable cordons (true) or uncordons (false) the node's Node
// with kubectl's cordon helper and returns its state after.
func (m *Manager) SetUnschedulable(ctx context.Context, n FleetNode, unschedulable bool) (State, error) {
	t, cc, kn, err := m.node(ctx, n)
	if err != nil {
		return State{Target: t}, err
	}
	if err := m.cordon(ctx, t, cc, kn, unschedulable); err != nil {
		return stateOf(t, kn), err
	}
	return stateOf(t, kn), nil
}

// cordon patches kn (and updates it) unless it already is as desired.
func (m *Manager) cordon(ctx context.Context, t Target, cc *clusterClient, kn *corev1.Node, desired bool) error {
	cctx, cancel := context.WithTimeout(ctx, m.opts.CallTimeout)
	defer cancel()
	h := &drain.Helper{Ctx: cctx, Client: cc.client}
	if err := drain.RunCordonOrUncordon(h, kn, desired); err != nil {
		return m.callErr(ctx, t, cc, err)
	}
	kn.Spec.Unschedulable = desired
	return nil
}

func isNodeNotFound(err error) bool { return err != nil && errors.Is(err, ErrNodeNotFound) }

// SetTaint adds taint to the node's Node (present true), replacing one with
// the same key and effect, or removes it (false). It rereads and retries on
// a conflicting write, so taints others set meanwhile are kept.
func (m *Manager) SetTaint(ctx context.Context, n FleetNode, taint corev1.Taint, present bool) error {
	t, cc, _, err := m.node(ctx, n)
	if err != nil {
		return err
	}
	nodes := cc.client.CoreV1().Nodes()
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cctx, cancel := context.WithTimeout(ctx, m.opts.CallTimeout)
		defer cancel()
		kn, err := nodes.Get(cctx, t.Node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		kept := make([]corev1.Taint, 0, len(kn.Spec.Taints)+1)
		found := false
		for _, x := range kn.Spec.Taints {
			if x.Key == taint.Key && x.Effect == taint.Effect {
				if present && x.Value == taint.Value {
					found = true
					kept = append(kept, x)
				}
				continue
			}
			kept = append(kept, x)
		}
		if present && !found {
			kept = append(kept, taint)
		}
		if len(kept) == len(kn.Spec.Taints) && (found || !present) {
			return nil // already as desired
		}
		kn.Spec.Taints = kept
		_, err = nodes.Update(cctx, kn, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		if apierrors.IsNotFound(err) {
			return fmt.Errorf("%w: Kubernetes Node %q in cluster %s is gone", ErrNodeNotFound, t.Node, t.Cluster)
		}
		return m.callErr(ctx, t, cc, err)
	}
	return nil
}
