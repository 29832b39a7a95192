//go:build tools

// Package tools pins the Kubernetes control-plane binaries the tests run
// (kube-apiserver, kube-controller-manager, kubelet), built by
// scripts/ensure-k8s.sh from k8s.io/kubernetes with each staging module
// replaced by its published twin.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
