package store

import (
	"context"
	"time"
)

// ClusterStore holds the Kubernetes clusters the controller manages nodes
// in (controller/kube), each with the credentials to reach it.
type ClusterStore interface {
	// AddCluster stores a new cluster; ErrAlreadyExists naming it when the
	// name is taken (the stored cluster is kept).
	AddCluster(ctx context.Context, c Cluster) error
	// GetCluster returns the cluster with name; ErrNotFound naming it.
	GetCluster(ctx context.Context, name string) (Cluster, error)
	// ListClusters returns every cluster by name (byte order).
	ListClusters(ctx context.Context) ([]Cluster, error)
	// DeleteCluster removes the cluster and its credentials; ErrNotFound
	// naming it.
	DeleteCluster(ctx context.Context, name string) error
}

// Cluster is a registered Kubernetes cluster. Kubeconfig is a credential:
// it stays in the store and is never returned by the operator API; the
// other fields describe it without revealing it.
type Cluster struct {
	Name string `json:"name"`
	// Kubeconfig is a self-contained kubeconfig (one context, credentials
	// embedded), as controller/kube minified it.
	Kubeconfig []byte `json:"kubeconfig"`
	// Server is the API server URL of the kubeconfig's context.
	Server string `json:"server"`
	// CAFingerprint is "sha256:<hex>" of the first CA certificate the
	// kubeconfig trusts; empty when it trusts the system roots.
	CAFingerprint string `json:"ca_fingerprint,omitempty"`
	// Insecure: the kubeconfig skips TLS verification of the API server.
	Insecure bool `json:"insecure,omitempty"`
	// User is the kubeconfig's user entry and Auth how it authenticates
	// ("client certificate CN=admin", "bearer token"), never the secret.
	User string `json:"user,omitempty"`
	Auth string `json:"auth,omitempty"`
	// ServerVersion and AuthenticatedAs are what the check at add time saw.
	ServerVersion   string    `json:"server_version,omitempty"`
	AuthenticatedAs string    `json:"authenticated_as,omitempty"`
	AddedAt         time.Time `json:"added_at"`
	AddedBy         string    `json:"added_by,omitempty"`
}
