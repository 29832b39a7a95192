#!/usr/bin/env bash
# ensure-k8s.sh: the Kubernetes control plane the tests run, built once from
# the pinned Go modules and cached outside the clone, keyed by version, so
# fresh clones (CI) reuse it:
#   ${XDG_CACHE_HOME:-$HOME/.cache}/budfleet/k8s-v1.37.2/
#     kube-apiserver kube-controller-manager kubelet   (tools/k8s: k8s.io/kubernetes)
#     etcd                                             (tools/etcd: etcdmain)
#     kwok                                             (sigs.k8s.io/kwok)
# Prints the directory. Quiet when everything is there; a build's output is
# shown only when it fails. A build goes into a temporary directory and is
# renamed into place, so an interrupted build never leaves half a binary.
# With --dir it only prints the directory (the Makefile's BUD_K8S_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
K8S_VERSION=v1.37.2
ETCD_VERSION=$(sed -n 's#^require go.etcd.io/etcd/server/v3 \(v[0-9.]*\)$#\1#p' tools/etcd/go.mod)
KWOK_VERSION=v0.8.0
GO=${GO:-go}
dir=${XDG_CACHE_HOME:-$HOME/.cache}/budfleet/k8s-$K8S_VERSION
if [ "${1:-}" = --dir ]; then
	echo "$dir"
	exit 0
fi
mkdir -p "$dir"
# The version stamp also names etcd's and kwok's versions: changing either
# pin rebuilds what it names.
stamp() { echo "$2" >"$dir/.$1.version"; }
fresh() { [ -x "$dir/$1" ] && [ "$(cat "$dir/.$1.version" 2>/dev/null)" = "$2" ]; }

build() { # build NAME VERSION COMMAND...
	local name=$1 version=$2
	shift 2
	fresh "$name" "$version" && return 0
	local tmp log
	tmp=$(mktemp -d "$dir/.build.XXXXXX")
	log=$(mktemp)
	echo "ensure-k8s: building $name $version (once; cached in $dir)" >&2
	if ! OUT=$tmp "$@" >"$log" 2>&1; then
		cat "$log" >&2
		rm -rf "$tmp" "$log"
		echo "ensure-k8s: building $name failed" >&2
		return 1
	fi
	mv -f "$tmp/$name" "$dir/$name"
	stamp "$name" "$version"
	rm -rf "$tmp" "$log"
}

k8s_ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37"
for bin in kube-apiserver kube-controller-manager kubelet; do
	build "$bin" "$K8S_VERSION" bash -c "cd tools/k8s && CGO_ENABLED=0 $GO build -trimpath -ldflags '$k8s_ldflags' -o \"\$OUT/$bin\" k8s.io/kubernetes/cmd/$bin"
done
build etcd "$ETCD_VERSION" bash -c "cd tools/etcd && CGO_ENABLED=0 $GO build -trimpath -ldflags '-s -w' -o \"\$OUT/etcd\" ."
build kwok "$KWOK_VERSION" bash -c "GOBIN=\$OUT CGO_ENABLED=0 $GO install sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
echo "$dir"
