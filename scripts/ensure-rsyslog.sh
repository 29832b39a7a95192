#!/usr/bin/env bash
# Make sure rsyslogd and the modules the SIEM tests need (TLS via gtls and
# ossl, RELP) are installed (Debian/Ubuntu). Idempotent and silent when they
# are already there. The system rsyslog service is never started: while the
# packages install, a temporary /usr/sbin/policy-rc.d forbids invoke-rc.d
# from starting services (PID 1 is not systemd here, so deb-systemd-invoke
# does nothing either). Tests run their own rsyslogd in the foreground.
set -euo pipefail

# Module directories used by Debian/Ubuntu builds of rsyslog.
module_present() {
	local m=$1 d
	for d in /usr/lib/*/rsyslog /usr/lib/rsyslog /usr/lib64/rsyslog; do
		[ -e "$d/$m.so" ] && return 0
	done
	return 1
}

present() {
	command -v rsyslogd >/dev/null 2>&1 || [ -x /usr/sbin/rsyslogd ] || return 1
	module_present lmnsd_gtls && module_present lmnsd_ossl && module_present imrelp
}

if present; then
	exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
	echo "ensure-rsyslog: rsyslogd or its gtls/ossl/relp modules are missing and we are not root;" \
		"install rsyslog rsyslog-gnutls rsyslog-openssl rsyslog-relp" >&2
	exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "ensure-rsyslog: rsyslog missing and apt-get not available" >&2
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
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			rsyslog rsyslog-gnutls rsyslog-openssl rsyslog-relp >/dev/null
} >"$log" 2>&1; then
	cat "$log" >&2
	echo "ensure-rsyslog: apt-get install rsyslog rsyslog-gnutls rsyslog-openssl rsyslog-relp failed" >&2
	exit 1
fi

if ! present; then
	echo "ensure-rsyslog: installed rsyslog but rsyslogd or its gtls/ossl/relp modules are still missing" >&2
	exit 1
fi
