#!/usr/bin/env bash
# apt-install.sh WHO PACKAGE...: install Debian packages for a test peer,
# quietly, without starting their services (a temporary policy-rc.d forbids
# it; PID 1 is not systemd on build machines, so deb-systemd-invoke does
# nothing either). apt's chatter is shown only when the install fails. WHO
# names the calling script in messages.
set -euo pipefail
who=$1
shift
if [ "$(id -u)" -ne 0 ]; then
	echo "$who: missing; not root, so install these by hand: $*" >&2
	exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "$who: missing, and apt-get is not available to install: $*" >&2
	exit 1
fi
# Tests install their peers in parallel (go test runs packages at once):
# one install at a time, or the second finds dpkg's lock held and fails,
# and the first removes the policy-rc.d the second relies on. apt's own
# lock timeout covers an apt run that is not ours.
exec 9>"${TMPDIR:-/tmp}/budfleet-apt.lock"
if ! flock -w 900 9; then
	echo "$who: another package install held the lock for 15 minutes: $*" >&2
	exit 1
fi
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy"
	chmod 0755 "$policy"
	created_policy=1
fi
log=$(mktemp)
cleanup() {
	if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi
	rm -f "$log"
}
trap cleanup EXIT
if ! {
	apt-get -o DPkg::Lock::Timeout=600 update -qq &&
		DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "$@" >/dev/null
} >"$log" 2>&1; then
	cat "$log" >&2
	echo "$who: apt-get install $* failed" >&2
	exit 1
fi
