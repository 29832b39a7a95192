#!/usr/bin/env bash
# Make sure systemd-analyze is available (Debian/Ubuntu). Idempotent and silent
# when it is already installed. Installing the systemd package does not need
# systemd to be PID 1, so this also works in containers.
set -euo pipefail

if command -v systemd-analyze >/dev/null 2>&1; then
	exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
	echo "ensure-systemd-analyze: systemd-analyze missing and not root; install the 'systemd' package" >&2
	exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "ensure-systemd-analyze: systemd-analyze missing and apt-get not available" >&2
	exit 1
fi

apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null

if ! command -v systemd-analyze >/dev/null 2>&1; then
	echo "ensure-systemd-analyze: installed systemd but systemd-analyze still not found" >&2
	exit 1
fi
