#!/usr/bin/env bash
# Make sure auditd and auditctl are installed (Debian/Ubuntu), for the
# end-to-end test that forwards a real audit log (test/e2e/siem_test.go).
# Idempotent and silent when they are already there. The system auditd
# service is never started (see apt-install.sh); the test runs its own
# `auditd -n -c DIR` in the foreground.
set -euo pipefail

present() {
	{ command -v auditd >/dev/null 2>&1 || [ -x /usr/sbin/auditd ] || [ -x /sbin/auditd ]; } &&
		{ command -v auditctl >/dev/null 2>&1 || [ -x /usr/sbin/auditctl ] || [ -x /sbin/auditctl ]; }
}

if present; then
	exit 0
fi

"$(dirname "$0")/apt-install.sh" ensure-auditd auditd

if ! present; then
	echo "ensure-auditd: installed auditd but auditd or auditctl is still missing" >&2
	exit 1
fi
