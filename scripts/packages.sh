#!/usr/bin/env bash
# packages.sh: build the .deb and .rpm packages packaging/packages.list names,
# for each architecture, into an output folder (default dist/).
#
# The binaries are built per architecture into bin/linux-ARCH/. The static ones
# (controller, budctl, plugins) cross-build with CGO_ENABLED=0. The agent keeps
# cgo so that its NVML binding (agent/gpu) is in every build: go-nvml links
# only libc and dlopens the driver at run time, so a plain cross C compiler
# (Debian's gcc-aarch64-linux-gnu, installed by scripts/ensure-cross-cc.sh) is
# all arm64 needs; a Grace-Hopper node reads its GPUs like an x86 one.
#
# Usage: scripts/packages.sh [--arch "amd64 arm64"] [--out DIR] [--version V] [--only PACKAGE]
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
GO=${GO:-go}
arches="amd64 arm64"
out=dist
only=
version=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
while [ $# -gt 0 ]; do
	case "$1" in
	--arch) arches=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	--version) version=$2; shift 2 ;;
	--only) only=$2; shift 2 ;;
	*) echo "packages.sh: unknown argument $1 (see the usage at the top of the script)" >&2; exit 2 ;;
	esac
done

# Package versions must start with a digit (dpkg) and parse as semver
# (nfpm): v1.2.3 is 1.2.3; a commit such as 7d64b77-dirty is
# 0.0.0-git.7d64b77.dirty, which sorts below any release.
pkg_version=${version#v}
if ! [[ $pkg_version =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]]; then
	pkg_version=0.0.0-git.$(printf '%s' "$pkg_version" | tr -c 'A-Za-z0-9.' '.')
fi

host_arch=$($GO env GOHOSTARCH)
ldflags="-X github.com/bud-ecosystem/budfleet/version.Version=$version"
nfpm=("$GO" tool -modfile=tools/go.mod nfpm)
mkdir -p "$out"
# built.list: what this run made, "PACKAGE ARCH FILE" a line, for
# scripts/bundle.sh.
: >"$out/built.list"
specs=$(mktemp -d)
trap 'rm -rf "$specs"' EXIT

# render SPEC NAME ARCH BIN: the spec with its ${PKG_*} filled in (nfpm
# expands the environment in a few fields only, not in contents).
render() {
	sed -e "s|\${PKG_NAME}|$2|g" -e "s|\${PKG_ARCH}|$3|g" \
		-e "s|\${PKG_VERSION}|$pkg_version|g" -e "s|\${PKG_BIN}|$4|g" "packaging/$1" >"$specs/$2-$3.yaml"
	echo "$specs/$2-$3.yaml"
}

# cc_for ARCH: the C compiler for a cgo build for linux/ARCH.
cc_for() {
	if [ "$1" = "$host_arch" ]; then
		echo "${CC:-gcc}"
		return
	fi
	case "$1" in
	arm64) "$ROOT/scripts/ensure-cross-cc.sh" aarch64-linux-gnu >/dev/null && echo aarch64-linux-gnu-gcc ;;
	amd64) "$ROOT/scripts/ensure-cross-cc.sh" x86-64-linux-gnu >/dev/null && echo x86_64-linux-gnu-gcc ;;
	*) echo "packages.sh: no cross C compiler known for $1; add it to cc_for" >&2; return 1 ;;
	esac
}

for arch in $arches; do
	bin=$ROOT/bin/linux-$arch
	mkdir -p "$bin"
	while read -r name spec cgo mains; do
		case "$name" in '' | '#'*) continue ;; esac
		[ -z "$only" ] || [ "$name" = "$only" ] || continue
		missing=
		for m in $mains; do
			[ -d "$m" ] || missing="$missing $m"
		done
		if [ -n "$missing" ]; then
			echo "packages.sh: $name skipped: not in this tree yet:$missing"
			continue
		fi
		if [ "$cgo" = cgo ]; then
			cc=$(cc_for "$arch")
			CGO_ENABLED=1 CC=$cc GOOS=linux GOARCH=$arch $GO build -trimpath -ldflags "$ldflags" -o "$bin/" $mains </dev/null
		else
			CGO_ENABLED=0 GOOS=linux GOARCH=$arch $GO build -trimpath -ldflags "$ldflags" -o "$bin/" $mains </dev/null
		fi
		rendered=$(render "$spec" "$name" "$arch" "$bin")
		for fmt in deb rpm; do
			file=$("${nfpm[@]}" package --config "$rendered" --packager "$fmt" --target "$out/" </dev/null | sed -n 's/^created package: //p')
			echo "$name $arch $(basename "$file")" >>"$out/built.list"
		done
		echo "packages.sh: $name $pkg_version linux/$arch"
	done <packaging/packages.list
done
