#!/usr/bin/env bash
# ensure-rpm.sh: make sure rpm is installed (Debian/Ubuntu), for the package
# test that lists the built .rpm with `rpm -qpl` (test/packages). Idempotent
# and silent when it is there.
set -euo pipefail
if command -v rpm >/dev/null 2>&1; then
	exit 0
fi
"$(dirname "$0")/apt-install.sh" ensure-rpm rpm
if ! command -v rpm >/dev/null 2>&1; then
	echo "ensure-rpm: installed rpm but rpm is still not found" >&2
	exit 1
fi
