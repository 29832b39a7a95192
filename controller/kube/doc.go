// Package kube is the controller's side of Kubernetes: the registered
// clusters (their kubeconfigs kept in the controller store) and the node
// operations on them, cordon, uncordon and drain, through client-go and
// kubectl's own drain helper (k8s.io/kubectl/pkg/drain).
//
// # Clusters
//
// Manager.AddCluster takes a name and a kubeconfig. The kubeconfig must be
// self-contained (CA, client certificate and key, or a token, embedded; no
// file paths, exec plugins or auth providers: the controller neither reads
// its own files nor runs programs on an operator's say-so); only its
// current context is kept. Before anything is stored the API server is
// checked: its version (with a short timeout), who it takes the
// credentials for (SelfSubjectReview), and whether they may get and patch
// Nodes, list pods and evict them (SelfSubjectAccessReview). A failed
// check is ErrUnreachable with the reason in words ("nothing listens at
// ... (connection refused)", "... x509: certificate signed by unknown
// authority ...", "... refused the credentials of user ... (401
// Unauthorized)", "user ... may not patch nodes ...", "no answer ...
// within 5s (timeout)"). Nothing this package returns carries the
// credentials.
//
// # Which cluster and which Node
//
// A fleet node (FleetNode: id, hostname, labels; fleet labels come from
// the join token) maps to
//
//   - the cluster named by its label budfleet.io/cluster; without the
//     label, the only registered cluster. With several clusters registered
//     a node without the label is ErrNoCluster, saying to set it.
//   - the Node named by its label budfleet.io/k8s-node; without it, its
//     hostname in lower case (the kubelet's default Node name).
//
// A cluster that has no Node of that name is ErrNodeNotFound for Cordon,
// Uncordon and Drain, and State.Exists false for NodeState.
//
// # Drain
//
// Drain cordons the Node and runs drain.RunNodeDrain: evictions through
// the eviction API (PodDisruptionBudgets respected), DaemonSet pods left
// with IgnoreDaemonSets, emptyDir data deleted with DeleteEmptyDirData,
// unmanaged pods deleted only with Force. A refused eviction (429) is
// retried every EvictRetryDelay until the timeout; the DrainReport names
// each pod left and the PodDisruptionBudget that refused it, read from the
// refusal's status cause.
//
// The maintenance campaign runner uses the Nodes interface.
package kube
