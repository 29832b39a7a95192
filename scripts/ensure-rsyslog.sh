#!/usr/bin/env bash
# Make sure rsyslogd and the modules the SIEM tests need (TLS via gtls and
# ossl, RELP) are installed (Debian/Ubuntu). Idempotent and silent when they
# are already there. The system rsyslog service is never started (see
# apt-install.sh); tests run their own rsyslogd in the foreground.
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

"$(dirname "$0")/apt-install.sh" ensure-rsyslog rsyslog rsyslog-gnutls rsyslog-openssl rsyslog-relp

if ! present; then
	echo "ensure-rsyslog: installed rsyslog but rsyslogd or its gtls/ossl/relp modules are still missing" >&2
	exit 1
fi
