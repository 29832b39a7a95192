#!/usr/bin/env bash
# Make sure the node-side peers of the real-kubelet tests are installed
# (Debian/Ubuntu): containerd and runc (the container runtime the kubelet
# drives, started by the test itself, never as a service), the CNI plugins
# (bridge, host-local, loopback in /usr/lib/cni) and busybox-static (the
# static binary the tests' hand-built images are made of). Idempotent and
# silent when everything is already there.
set -euo pipefail

missing=()
command -v containerd >/dev/null 2>&1 || missing+=(containerd)
command -v ctr >/dev/null 2>&1 || missing+=(containerd)
command -v runc >/dev/null 2>&1 || missing+=(runc)
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/loopback ] ||
	missing+=(containernetworking-plugins)
if ! [ -x /bin/busybox ] || ! LC_ALL=C ldd /bin/busybox 2>&1 | grep -q "not a dynamic executable"; then
	missing+=(busybox-static)
fi
if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi

# shellcheck disable=SC2207 # package names have no spaces
pkgs=($(printf '%s\n' "${missing[@]}" | sort -u))
"$(dirname "$0")/apt-install.sh" ensure-kubelet-deps "${pkgs[@]}"

for b in containerd ctr runc; do
	if ! command -v "$b" >/dev/null 2>&1; then
		echo "ensure-kubelet-deps: installed ${pkgs[*]} but $b still not found" >&2
		exit 1
	fi
done
for p in bridge host-local loopback; do
	if [ ! -x "/usr/lib/cni/$p" ]; then
		echo "ensure-kubelet-deps: installed ${pkgs[*]} but /usr/lib/cni/$p is missing" >&2
		exit 1
	fi
done
