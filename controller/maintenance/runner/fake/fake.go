// Package fake has in-memory stand-ins for the runner's Cluster and Agents,
// for unit tests of the runner and of the operator API. A campaign's proof
// is against a real Kubernetes control plane and real agents (test/e2e);
// these check the logic around them.
package fake

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/bud-ecosystem/budfleet/controller/maintenance/runner"
	"github.com/bud-ecosystem/budfleet/controller/store"
)

// Node is one Kubernetes Node of a Cluster and how its drains behave.
type Node struct {
	Ready         bool
	Unschedulable bool
	// DrainTime is how long a drain takes; DrainBlocks makes it wait for
	// its context (a PodDisruptionBudget that never allows an eviction).
	DrainTime   time.Duration
	DrainBlocks bool
	// DrainErr fails every drain with it.
	DrainErr error
	// Drains counts the drains begun, Cordons and Uncordons the calls,
	// Reads the NodeState calls.
	Drains, Cordons, Uncordons, Reads int
}

// Cluster is a fake runner.Cluster: Nodes by name, mapped from fleet nodes
// by the label budfleet.io/k8s-node, else the hostname.
type Cluster struct {
	mu    sync.Mutex
	nodes map[string]*Node
	// unreachable fails every call, as an API server that does not answer.
	unreachable bool
	events      []string
	maxUnsched  int
	running     map[string]int // drains running per Node
}

var _ runner.Cluster = (*Cluster)(nil)

// NewCluster returns a cluster with Ready, schedulable Nodes of the names.
func NewCluster(names ...string) *Cluster {
	c := &Cluster{nodes: map[string]*Node{}, running: map[string]int{}}
	for _, n := range names {
		c.nodes[n] = &Node{Ready: true}
	}
	return c
}

// NameOf is the Node name a fleet node maps to.
func NameOf(n store.Node) string {
	if v := n.Labels[runner.K8sNodeLabel]; v != "" {
		return v
	}
	return n.Hostname
}

// Set changes the Node name (adding it if missing) under the cluster's lock.
func (c *Cluster) Set(name string, fn func(*Node)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.nodes[name]
	if n == nil {
		n = &Node{Ready: true}
		c.nodes[name] = n
	}
	fn(n)
	c.count()
}

// Remove deletes the Node name.
func (c *Cluster) Remove(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.nodes, name)
}

// Get returns a copy of the Node name.
func (c *Cluster) Get(name string) (Node, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, ok := c.nodes[name]
	if !ok {
		return Node{}, false
	}
	return *n, true
}

// SetUnreachable makes every call fail (or work again).
func (c *Cluster) SetUnreachable(v bool) {
	c.mu.Lock()
	c.unreachable = v
	c.mu.Unlock()
}

// Events returns "cordon NAME", "drain NAME", "drained NAME", "uncordon
// NAME" in the order they happened (cordon and uncordon only when they
// changed the Node).
func (c *Cluster) Events() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.events)
}

// Unschedulable returns the cordoned Nodes, sorted.
func (c *Cluster) Unschedulable() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for name, n := range c.nodes {
		if n.Unschedulable {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// MaxUnschedulable is the most Nodes ever cordoned at once.
func (c *Cluster) MaxUnschedulable() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.maxUnsched
}

// Draining returns the Nodes with a drain running.
func (c *Cluster) Draining() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for name, k := range c.running {
		if k > 0 {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

func (c *Cluster) count() {
	k := 0
	for _, n := range c.nodes {
		if n.Unschedulable {
			k++
		}
	}
	c.maxUnsched = max(c.maxUnsched, k)
}

var errUnreachable = errors.New(`Get "https://10.0.0.1:6443/api/v1/nodes": dial tcp 10.0.0.1:6443: connect: connection refused`)

// NodeState implements runner.Cluster.
func (c *Cluster) NodeState(ctx context.Context, node store.Node) (runner.NodeState, error) {
	if err := ctx.Err(); err != nil {
		return runner.NodeState{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.unreachable {
		return runner.NodeState{}, errUnreachable
	}
	name := NameOf(node)
	n, ok := c.nodes[name]
	if !ok {
		return runner.NodeState{Name: name}, nil
	}
	n.Reads++
	return runner.NodeState{Name: name, Exists: true, Ready: n.Ready, Unschedulable: n.Unschedulable}, nil
}

func (c *Cluster) setUnsched(ctx context.Context, node store.Node, v bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.unreachable {
		return errUnreachable
	}
	name := NameOf(node)
	n, ok := c.nodes[name]
	if !ok {
		return fmt.Errorf("nodes %q not found", name)
	}
	if v {
		n.Cordons++
	} else {
		n.Uncordons++
	}
	if n.Unschedulable != v {
		n.Unschedulable = v
		word := "uncordon"
		if v {
			word = "cordon"
		}
		c.events = append(c.events, word+" "+name)
	}
	c.count()
	return nil
}

// Cordon implements runner.Cluster.
func (c *Cluster) Cordon(ctx context.Context, node store.Node) error {
	return c.setUnsched(ctx, node, true)
}

// Uncordon implements runner.Cluster.
func (c *Cluster) Uncordon(ctx context.Context, node store.Node) error {
	return c.setUnsched(ctx, node, false)
}

// Drain implements runner.Cluster.
func (c *Cluster) Drain(ctx context.Context, node store.Node, timeout, _ time.Duration) error {
	name := NameOf(node)
	c.mu.Lock()
	if c.unreachable {
		c.mu.Unlock()
		return errUnreachable
	}
	n, ok := c.nodes[name]
	if !ok {
		c.mu.Unlock()
		return fmt.Errorf("nodes %q not found", name)
	}
	n.Drains++
	c.running[name]++
	c.events = append(c.events, "drain "+name)
	wait, blocks, fail := n.DrainTime, n.DrainBlocks, n.DrainErr
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.running[name]--
		c.mu.Unlock()
	}()
	if blocks {
		<-ctx.Done()
		return fmt.Errorf("evicting pod default/web-1: Cannot evict pod as it would violate the pod's disruption budget (PodDisruptionBudget default/web): %w", ctx.Err())
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(wait):
	}
	if fail != nil {
		return fail
	}
	c.mu.Lock()
	c.events = append(c.events, "drained "+name)
	c.mu.Unlock()
	return nil
}

// Agents is a fake runner.Agents: which agents are connected, and whether
// the controller can tell yet.
type Agents struct {
	mu        sync.Mutex
	connected map[string]bool
	unknown   bool
	queued    map[string]int
	onQueued  func(nodeID string)
	versions  map[string]string
}

var _ runner.Agents = (*Agents)(nil)

// NewAgents returns agents connected for the node ids.
func NewAgents(ids ...string) *Agents {
	a := &Agents{connected: map[string]bool{}, queued: map[string]int{}, versions: map[string]string{}}
	for _, id := range ids {
		a.connected[id] = true
	}
	return a
}

// SetConnected connects or disconnects a node's agent.
func (a *Agents) SetConnected(id string, v bool) {
	a.mu.Lock()
	a.connected[id] = v
	a.mu.Unlock()
}

// SetUnknown makes every agent's connection unknown (a controller that
// just started), or known again.
func (a *Agents) SetUnknown(v bool) {
	a.mu.Lock()
	a.unknown = v
	a.mu.Unlock()
}

// OnQueued calls fn (outside the lock) whenever a command is queued.
func (a *Agents) OnQueued(fn func(nodeID string)) {
	a.mu.Lock()
	a.onQueued = fn
	a.mu.Unlock()
}

// Queued counts CommandQueued calls for the node.
func (a *Agents) Queued(id string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.queued[id]
}

// AgentConnected implements runner.Agents.
func (a *Agents) AgentConnected(id string) (bool, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.unknown {
		return false, false
	}
	return a.connected[id], true
}

// SetVersion sets the version AgentVersion reports for a connected node.
func (a *Agents) SetVersion(id, version string) {
	a.mu.Lock()
	a.versions[id] = version
	a.mu.Unlock()
}

// AgentVersion implements runner.Agents.
func (a *Agents) AgentVersion(id string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.connected[id] {
		return ""
	}
	return a.versions[id]
}

// CommandQueued implements runner.Agents.
func (a *Agents) CommandQueued(id string) {
	a.mu.Lock()
	a.queued[id]++
	fn := a.onQueued
	a.mu.Unlock()
	if fn != nil {
		fn(id)
	}
}
