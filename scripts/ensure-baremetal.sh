#!/usr/bin/env bash
# Make sure the bare-metal provider's test peers are installed
# (Debian/Ubuntu): sshd and ssh-keygen (openssh-server) for the SSH "hosts"
# in network namespaces, OpenIPMI's ipmi_sim as a BMC, ipmitool to
# cross-check it, and iproute2 for the namespaces. Idempotent and silent
# when they are already there. The system sshd is never started (see
# apt-install.sh); tests run their own `sshd -D -f CONF` per host.
set -euo pipefail

have() {
	command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ] || [ -x "/sbin/$1" ]
}

present() {
	have sshd && have ssh-keygen && have ipmi_sim && have ipmitool && have ip
}

if present; then
	exit 0
fi

"$(dirname "$0")/apt-install.sh" ensure-baremetal openssh-server openipmi ipmitool iproute2

if ! present; then
	echo "ensure-baremetal: installed openssh-server, openipmi, ipmitool and iproute2 but sshd, ssh-keygen, ipmi_sim, ipmitool or ip is still missing" >&2
	exit 1
fi
