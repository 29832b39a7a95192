#!/usr/bin/env bash
# ensure-cross-cc.sh TRIPLET: make sure Debian's cross C compiler for TRIPLET
# (aarch64-linux-gnu, x86-64-linux-gnu) and its C library are installed, for
# the agent's cgo cross-build (scripts/packages.sh). Idempotent and silent
# when they are there.
set -euo pipefail
triplet=$1
gcc=${triplet//x86-64/x86_64}-gcc
if command -v "$gcc" >/dev/null 2>&1; then
	exit 0
fi
case "$triplet" in
aarch64-linux-gnu) libc=libc6-dev-arm64-cross ;;
x86-64-linux-gnu) libc=libc6-dev-amd64-cross ;;
*) echo "ensure-cross-cc: unknown triplet $triplet (aarch64-linux-gnu or x86-64-linux-gnu)" >&2; exit 2 ;;
esac
"$(dirname "$0")/apt-install.sh" ensure-cross-cc "gcc-$triplet" "$libc"
if ! command -v "$gcc" >/dev/null 2>&1; then
	echo "ensure-cross-cc: installed gcc-$triplet but $gcc is still not found" >&2
	exit 1
fi
