// Command etcd is etcd's own server main, built at the version pinned in
// this module for the tests' Kubernetes control plane (Debian's etcd is too
// old for the pinned kube-apiserver).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
