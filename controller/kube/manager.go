package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/bud-ecosystem/budfleet/controller/store"
)

// Errors, for errors.Is. The messages wrapping them say what to do.
var (
	// ErrInvalid: bad input (a cluster name, a kubeconfig, drain options).
	ErrInvalid = errors.New("invalid")
	// ErrUnreachable: the cluster's API server could not be reached, or
	// refused the credentials or the permissions needed.
	ErrUnreachable = errors.New("cluster not reachable")
	// ErrNoCluster: no registered cluster is the node's (none registered,
	// several and the node does not say which, or it names an unknown one).
	ErrNoCluster = errors.New("no cluster for the node")
	// ErrNodeNotFound: the cluster has no Node of the fleet node's name.
	ErrNodeNotFound = errors.New("no Kubernetes Node")
	// ErrDrainBlocked: a drain ran but left pods on the Node; the
	// DrainReport says which and why.
	ErrDrainBlocked = errors.New("drain did not finish")
)

// Defaults for Options.
const (
	DefaultCheckTimeout    = 5 * time.Second
	DefaultCallTimeout     = 30 * time.Second
	DefaultEvictRetryDelay = 5 * time.Second
)

// Store is the slice of the controller store the Manager uses.
type Store interface {
	AddCluster(ctx context.Context, c store.Cluster) error
	GetCluster(ctx context.Context, name string) (store.Cluster, error)
	ListClusters(ctx context.Context) ([]store.Cluster, error)
	DeleteCluster(ctx context.Context, name string) error
}

// Options configure a Manager.
type Options struct {
	Store  Store
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// CheckTimeout bounds a reachability check (default 5s).
	CheckTimeout time.Duration
	// CallTimeout bounds each single API call of a node operation (get,
	// patch) beyond the caller's context (default 30s); a drain's
	// evictions are bounded by its own timeout.
	CallTimeout time.Duration
	// EvictRetryDelay is the wait before asking again for an eviction that
	// a PodDisruptionBudget refused (default 5s, kubectl's).
	EvictRetryDelay time.Duration
	// NewClient builds a clientset for a cluster; nil means
	// kubernetes.NewForConfig. Tests pass fakes.
	NewClient func(*rest.Config) (kubernetes.Interface, error)
}

// Manager keeps the registered clusters and carries out node operations
// on them. It is safe for concurrent use; it implements Nodes.
type Manager struct {
	opts Options
	log  *slog.Logger

	mu      sync.Mutex
	clients map[string]*clusterClient // by cluster name
}

var _ Nodes = (*Manager)(nil)

// clusterClient is a cluster's parsed kubeconfig and clientsets, built
// once per registration (a cluster removed and added again under the same
// name gets new ones).
type clusterClient struct {
	addedAt time.Time
	k       *kubeconfig
	client  kubernetes.Interface // for node operations: no overall timeout
	checker kubernetes.Interface // for checks: CheckTimeout per request
}

// New checks opts and returns a Manager.
func New(opts Options) (*Manager, error) {
	if opts.Store == nil {
		return nil, errors.New("kube: Store must be set")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.CheckTimeout <= 0 {
		opts.CheckTimeout = DefaultCheckTimeout
	}
	if opts.CallTimeout <= 0 {
		opts.CallTimeout = DefaultCallTimeout
	}
	if opts.EvictRetryDelay <= 0 {
		opts.EvictRetryDelay = DefaultEvictRetryDelay
	}
	if opts.NewClient == nil {
		opts.NewClient = func(c *rest.Config) (kubernetes.Interface, error) { return kubernetes.NewForConfig(c) }
	}
	return &Manager{opts: opts, log: opts.Logger, clients: map[string]*clusterClient{}}, nil
}

// ClusterInfo describes a registered cluster without its credentials.
type ClusterInfo struct {
	Name          string
	Server        string
	CAFingerprint string
	Insecure      bool
	User          string
	Auth          string
	AddedAt       time.Time
	AddedBy       string
	Check         Check
}

func info(c store.Cluster, chk Check) ClusterInfo {
	return ClusterInfo{
		Name: c.Name, Server: c.Server, CAFingerprint: c.CAFingerprint, Insecure: c.Insecure,
		User: c.User, Auth: c.Auth, AddedAt: c.AddedAt, AddedBy: c.AddedBy, Check: chk,
	}
}

// newClients builds the clientsets for a kubeconfig.
func (m *Manager) newClients(k *kubeconfig) (client, checker kubernetes.Interface, err error) {
	cfg := rest.CopyConfig(k.rest)
	cfg.UserAgent = "bud-controller"
	// A campaign drains several nodes at once, each polling its pods:
	// client-go's default of 5 requests a second would pace it.
	cfg.QPS, cfg.Burst = 50, 100
	if client, err = m.opts.NewClient(cfg); err != nil {
		return nil, nil, fmt.Errorf("%w: kubeconfig: %v", ErrInvalid, err)
	}
	ccfg := rest.CopyConfig(cfg)
	ccfg.Timeout = m.opts.CheckTimeout
	if checker, err = m.opts.NewClient(ccfg); err != nil {
		return nil, nil, fmt.Errorf("%w: kubeconfig: %v", ErrInvalid, err)
	}
	return client, checker, nil
}

// clientFor returns the clients of a stored cluster, building them the
// first time.
func (m *Manager) clientFor(c store.Cluster) (*clusterClient, error) {
	m.mu.Lock()
	cc := m.clients[c.Name]
	m.mu.Unlock()
	if cc != nil && cc.addedAt.Equal(c.AddedAt) {
		return cc, nil
	}
	k, err := parseKubeconfig(c.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("stored cluster %s: %w (remove it and add it again)", c.Name, err)
	}
	client, checker, err := m.newClients(k)
	if err != nil {
		return nil, err
	}
	cc = &clusterClient{addedAt: c.AddedAt, k: k, client: client, checker: checker}
	m.mu.Lock()
	m.clients[c.Name] = cc
	m.mu.Unlock()
	return cc, nil
}

// AddCluster checks that the cluster's API server can be reached with
// kubeconfig and stores it under name, recording addedBy. A bad name or
// kubeconfig is ErrInvalid, a failed check ErrUnreachable with the reason,
// a taken name store.ErrAlreadyExists; in each case nothing is stored.
func (m *Manager) AddCluster(ctx context.Context, name string, kubeconfig []byte, addedBy string) (ClusterInfo, error) {
	if err := ValidClusterName(name); err != nil {
		return ClusterInfo{}, err
	}
	k, err := parseKubeconfig(kubeconfig)
	if err != nil {
		return ClusterInfo{}, err
	}
	if _, err := m.opts.Store.GetCluster(ctx, name); err == nil {
		return ClusterInfo{}, fmt.Errorf("cluster %s: %w (remove it first to replace it)", name, store.ErrAlreadyExists)
	} else if !errors.Is(err, store.ErrNotFound) {
		return ClusterInfo{}, err
	}
	client, checker, err := m.newClients(k)
	if err != nil {
		return ClusterInfo{}, err
	}
	chk := check(ctx, checker, k, m.opts.Now(), m.opts.CheckTimeout)
	if err := ctx.Err(); err != nil {
		return ClusterInfo{}, err
	}
	if !chk.Reachable {
		return ClusterInfo{}, fmt.Errorf("%w: cluster %s not added: %s", ErrUnreachable, name, chk.Reason)
	}
	c := store.Cluster{
		Name:            name,
		Kubeconfig:      k.raw,
		Server:          k.server,
		CAFingerprint:   k.caFingerprint,
		Insecure:        k.insecure,
		User:            k.user,
		Auth:            k.auth,
		ServerVersion:   chk.ServerVersion,
		AuthenticatedAs: chk.AuthenticatedAs,
		AddedAt:         m.opts.Now(),
		AddedBy:         addedBy,
	}
	if err := m.opts.Store.AddCluster(ctx, c); err != nil {
		if errors.Is(err, store.ErrAlreadyExists) {
			return ClusterInfo{}, fmt.Errorf("%w (remove it first to replace it)", err)
		}
		return ClusterInfo{}, err
	}
	m.mu.Lock()
	m.clients[name] = &clusterClient{addedAt: c.AddedAt, k: k, client: client, checker: checker}
	m.mu.Unlock()
	m.log.InfoContext(ctx, "cluster added", "cluster", name, "server", k.server, "server_version", chk.ServerVersion, "authenticated_as", chk.AuthenticatedAs)
	return info(c, chk), nil
}

// checkCluster checks a stored cluster now.
func (m *Manager) checkCluster(ctx context.Context, c store.Cluster) Check {
	cc, err := m.clientFor(c)
	if err != nil {
		return Check{CheckedAt: m.opts.Now(), Reason: err.Error()}
	}
	return check(ctx, cc.checker, cc.k, m.opts.Now(), m.opts.CheckTimeout)
}

// Cluster returns the cluster with name, checked now; store.ErrNotFound
// naming it.
func (m *Manager) Cluster(ctx context.Context, name string) (ClusterInfo, error) {
	c, err := m.opts.Store.GetCluster(ctx, name)
	if err != nil {
		return ClusterInfo{}, err
	}
	return info(c, m.checkCluster(ctx, c)), nil
}

// Clusters returns every cluster by name, each checked now (at once, so
// the call takes at most about one CheckTimeout).
func (m *Manager) Clusters(ctx context.Context) ([]ClusterInfo, error) {
	cs, err := m.opts.Store.ListClusters(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]ClusterInfo, len(cs))
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Go(func() { out[i] = info(c, m.checkCluster(ctx, c)) })
	}
	wg.Wait()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, ctx.Err()
}

// ClusterNames lists the registered clusters' names, checking nothing.
func (m *Manager) ClusterNames(ctx context.Context) ([]string, error) {
	cs, err := m.opts.Store.ListClusters(ctx)
	names := make([]string, len(cs))
	for i, c := range cs {
		names[i] = c.Name
	}
	return names, err
}

// RemoveCluster forgets a cluster and its credentials; store.ErrNotFound
// naming it.
func (m *Manager) RemoveCluster(ctx context.Context, name string) error {
	if err := m.opts.Store.DeleteCluster(ctx, name); err != nil {
		return err
	}
	m.mu.Lock()
	delete(m.clients, name)
	m.mu.Unlock()
	m.log.InfoContext(ctx, "cluster removed", "cluster", name)
	return nil
}
