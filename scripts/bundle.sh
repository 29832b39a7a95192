#!/usr/bin/env bash
# bundle.sh: write the manifest of what `make packages` built (DIST/built.list:
# every package, and each architecture's bud-agent and plugin binaries as
# artifacts, the agent for `budctl agents upgrade`), then the signed bundle.
#
# Usage: scripts/bundle.sh --budctl BUDCTL --key PRIVATE --version V [--dist DIR] [--out BUNDLE.tar]
# Without a key file at PRIVATE it makes a pair there (PRIVATE and PRIVATE.pub)
# and says so: a development key; a site's bundles are signed with the key
# whose public half the site holds.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
dist=$ROOT/dist
budctl= key= version= out=
while [ $# -gt 0 ]; do
	case "$1" in
	--budctl) budctl=$2; shift 2 ;;
	--key) key=$2; shift 2 ;;
	--version) version=$2; shift 2 ;;
	--dist) dist=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	*) echo "bundle.sh: unknown argument $1 (see the usage at the top of the script)" >&2; exit 2 ;;
	esac
done
if [ -z "$budctl" ] || [ -z "$key" ] || [ -z "$version" ]; then
	echo "bundle.sh: --budctl, --key and --version are required" >&2
	exit 2
fi
out=${out:-$dist/budfleet-bundle-$version.tar}
if [ ! -s "$dist/built.list" ]; then
	echo "bundle.sh: $dist/built.list is missing or empty: run make packages first" >&2
	exit 1
fi
if [ ! -e "$key" ]; then
	mkdir -p "$(dirname "$key")"
	"$budctl" bundle keygen --private "$key" --public "$key.pub"
	echo "bundle.sh: made a development key pair at $key; sign a site's bundles with its own key (BUNDLE_KEY=...)"
fi

manifest=$dist/bundle.yaml
{
	echo "# Written by scripts/bundle.sh from $dist/built.list."
	echo "packages:"
	while read -r name arch file; do
		echo "  - {name: $name.${file##*.}, version: $version, platform: linux/$arch, path: $file}"
	done <"$dist/built.list"
	echo "plugins:"
	for arch in $(awk '{print $2}' "$dist/built.list" | sort -u); do
		for b in "$ROOT/bin/linux-$arch"/bud-provider-*; do
			[ -x "$b" ] || continue
			echo "  - {name: $(basename "$b"), version: $version, platform: linux/$arch, path: $b}"
		done
	done
	echo "artifacts:"
	for arch in $(awk '$1 == "bud-agent" {print $2}' "$dist/built.list" | sort -u); do
		echo "  - {name: bud-agent, version: $version, platform: linux/$arch, kind: binary, path: $ROOT/bin/linux-$arch/bud-agent}"
	done
} >"$manifest"
"$budctl" bundle create --manifest "$manifest" --key "$key" -o "$out"
