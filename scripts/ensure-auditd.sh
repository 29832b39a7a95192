#!/usr/bin/env bash
# Make sure auditd and auditctl are installed (Debian/Ubuntu), for the
# end-to-end test that forwards a real audit log (test/e2e/siem_test.go).
# Idempotent and silent when they are already there. The system auditd
# service is never started: while the package installs, a temporary
# /usr/sbin/policy-rc.d forbids invoke-rc.d from starting services (PID 1
# is not systemd here, so deb-systemd-invoke does nothing either). The test
# runs its own `auditd -n -c DIR` in the foreground.
set -euo pipefail

present() {
	{ command -v auditd >/dev/null 2>&1 || [ -x /usr/sbin/auditd ] || [ -x /sbin/auditd ]; } &&
		{ command -v auditctl >/dev/null 2>&1 || [ -x /usr/sbin/auditctl ] || [ -x /sbin/auditctl ]; }
}

if present; then
	exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
	echo "ensure-auditd: auditd/auditctl are missing and we are not root; install the auditd package" >&2
	exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "ensure-auditd: auditd missing and apt-get not available" >&2
	exit 1
fi

# Forbid service starts during the install unless a policy is already in place.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy"
	chmod 0755 "$policy"
	created_policy=1
fi
log=$(mktemp)
cleanup() {
	if [ "$created_policy" = 1 ]; then
		rm -f "$policy"
	fi
	rm -f "$log"
}
trap cleanup EXIT

# apt and debconf chatter goes to a log that is shown only on failure.
if ! {
	apt-get update -qq &&
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends auditd >/dev/null
} >"$log" 2>&1; then
	cat "$log" >&2
	echo "ensure-auditd: apt-get install auditd failed" >&2
	exit 1
fi

if ! present; then
	echo "ensure-auditd: installed auditd but auditd or auditctl is still missing" >&2
	exit 1
fi
