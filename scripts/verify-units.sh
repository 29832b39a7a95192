#!/usr/bin/env bash
# Verify the unit files in packaging/systemd/ with `systemd-analyze verify`.
#
# systemd-analyze verify requires every Exec*= binary to exist, and the real
# binaries are not installed under /usr/bin here, so each unit is copied into a
# temp dir with its /usr/bin/bud-* paths rewritten to stand-ins: the built
# binaries from $BIN_DIR if set, otherwise tiny executable scripts.
#
# Fails if systemd-analyze exits non-zero or prints anything on stderr that
# mentions the unit (unknown keys, bad values, missing binaries only warn).
#
# A unit's drop-ins (UNIT_FILE.d/*.conf) are verified with it.
#
# Usage: scripts/verify-units.sh [--self-test] [UNIT_FILE...]
#   --self-test  also check that a unit with a bogus key is rejected.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
"$ROOT/scripts/ensure-systemd-analyze.sh"

self_test=0
units=()
for arg in "$@"; do
	case "$arg" in
	--self-test) self_test=1 ;;
	-*) echo "verify-units: unknown flag $arg" >&2; exit 2 ;;
	*) units+=("$arg") ;;
	esac
done
if [ ${#units[@]} -eq 0 ]; then
	units=("$ROOT"/packaging/systemd/*.service)
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/bin"

# verify_unit SRC [EXTRA_LINE]: prints "ok: NAME" or the problems; returns 1 on failure.
verify_unit() {
	local src=$1 extra=${2:-} name dir unit bin b err rc
	name=$(basename "$src")
	dir=$(mktemp -d "$TMP/unit.XXXXXX")
	unit="$dir/$name"

	# Stand-ins for every /usr/bin/bud-* referenced from an Exec*= line.
	for b in $(sed -n 's#^Exec[A-Za-z]*=[-@:+!]*/usr/bin/\(bud-[A-Za-z0-9_-]*\).*#\1#p' "$src" | sort -u); do
		if [ -n "${BIN_DIR:-}" ]; then
			if [ ! -x "$BIN_DIR/$b" ]; then
				echo "FAIL: $name: BIN_DIR=$BIN_DIR has no executable $b" >&2
				return 1
			fi
			bin="$BIN_DIR"
		else
			bin="$TMP/bin"
			[ -x "$bin/$b" ] || printf '#!/bin/sh\nexit 0\n' >"$bin/$b"
			chmod 0755 "$bin/$b"
		fi
		bin=$(cd "$bin" && pwd)
	done
	sed "s#^\(Exec[A-Za-z]*=[-@:+!]*\)/usr/bin/\(bud-[A-Za-z0-9_-]*\)#\1${bin:-/usr/bin}/\2#" "$src" >"$unit"
	if [ -n "$extra" ]; then
		sed -i "/^\[Service\]/a $extra" "$unit"
	fi
	# Drop-ins beside the unit (NAME.d/*.conf) are verified with it.
	if [ -d "$src.d" ]; then
		cp -r "$src.d" "$dir/"
	fi

	# --man=no: Documentation= man: pages need not be installed here.
	# --generators=no: don't run the host's generators (noise, and they need /run).
	rc=0
	err=$(systemd-analyze verify --man=no --generators=no "$unit" 2>&1 >/dev/null) || rc=$?
	# Only lines about our unit count; anything else is host noise.
	local ours
	ours=$(printf '%s\n' "$err" | grep -F -e "$name" || true)
	if [ "$rc" -ne 0 ] || [ -n "$ours" ]; then
		echo "FAIL: $name (systemd-analyze exit $rc)" >&2
		printf '%s\n' "${ours:-$err}" | sed 's/^/  /' >&2
		return 1
	fi
	echo "ok: $name"
}

fail=0
for u in "${units[@]}"; do
	verify_unit "$u" || fail=1
done

if [ "$self_test" -eq 1 ]; then
	if verify_unit "${units[0]}" "BudfleetSelfTestBogusKey=bar" >/dev/null 2>&1; then
		echo "FAIL: self-test: unit with a bogus key was not rejected" >&2
		fail=1
	else
		echo "ok: self-test (bogus key rejected)"
	fi
fi

exit "$fail"
