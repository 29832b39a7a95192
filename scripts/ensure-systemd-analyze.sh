#!/usr/bin/env bash
# Make sure systemd-analyze is available (Debian/Ubuntu). Idempotent and silent
# when it is already installed. Installing the systemd package does not need
# systemd to be PID 1, so this also works in containers.
set -euo pipefail

if command -v systemd-analyze >/dev/null 2>&1; then
	exit 0
fi

"$(dirname "$0")/apt-install.sh" ensure-systemd-analyze systemd

if ! command -v systemd-analyze >/dev/null 2>&1; then
	echo "ensure-systemd-analyze: installed systemd but systemd-analyze still not found" >&2
	exit 1
fi
