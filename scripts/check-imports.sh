#!/usr/bin/env bash
# The house's rules, checked from `go list -deps` of the non-test packages:
#   - nothing under agent/, client/ or pki/ depends on controller/...;
#   - nothing under controller/ depends on agent/...;
#   - provider plugins (plugins/) depend on neither daemon: they are
#     separate processes that speak only the SDK's contract;
#   - pki, siem, command, internal, proto and bundle are shared: they depend on
#     neither daemon;
#   - go.etcd.io/bbolt is imported only by internal/boltdb and the packages
#     that own a bbolt file.
set -euo pipefail
cd "$(dirname "$0")/.."
mod=$(go list -m)
fail=0

forbid() { # forbid PKG_PATTERN DEP_PREFIX...
	local pattern=$1
	shift
	local pkg dep prefix
	while read -r pkg; do
		for dep in $(go list -deps -f '{{.ImportPath}}' "$pkg"); do
			for prefix in "$@"; do
				case $dep in
				"$mod/$prefix" | "$mod/$prefix"/*)
					echo "import rule: $pkg depends on $dep" >&2
					fail=1
					;;
				esac
			done
		done
	done < <(go list "./$pattern/..." 2>/dev/null)
}

forbid agent controller
forbid client controller agent
forbid pki controller agent
forbid controller agent
forbid plugins controller agent cmd
for shared in siem command internal proto bundle; do
	forbid "$shared" controller agent cmd
done

# The packages that own a bbolt file, and the helper they share.
bbolt_owners="$mod/internal/boltdb $mod/controller/store/bolt $mod/agent/state $mod/siem/spool"
while read -r pkg imports; do
	case " $imports " in *" go.etcd.io/bbolt "* | *" go.etcd.io/bbolt/"*) ;; *) continue ;; esac
	case " $bbolt_owners " in *" $pkg "*) ;; *)
		echo "import rule: $pkg imports go.etcd.io/bbolt; only internal/boltdb and the owners of a bbolt file may ($bbolt_owners)" >&2
		fail=1
		;;
	esac
done < <(go list -f '{{.ImportPath}} {{join .Imports " "}}' ./...)

if [ "$fail" -ne 0 ]; then
	exit 1
fi
