package audit

import "strings"

// Real-looking audit.log lines (RAW and ENRICHED log_format).
const (
	lSyscall = `type=SYSCALL msg=audit(1795958082.876:8): arch=c000003e syscall=257 success=yes exit=3 a0=ffffff9c a1=7ffd1a2b3c4d a2=0 a3=0 items=1 ppid=1 pid=42 auid=4294967295 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=4294967295 comm="bash" exe="/usr/bin/bash" subj=unconfined key="fleet-test"`
	lCwd     = `type=CWD msg=audit(1795958082.876:8): cwd="/root"`
	lPath    = `type=PATH msg=audit(1795958082.876:8): item=0 name="/etc/shadow" inode=1234 dev=08:01 mode=0100640 ouid=0 ogid=42 rdev=00:00 nametype=NORMAL cap_fp=0 cap_fi=0 cap_fe=0 cap_fver=0 cap_frootid=0`
	lTitle   = `type=PROCTITLE msg=audit(1795958082.876:8): proctitle=2F7573722F62696E2F62617368002D6300636174202F6574632F736861646F77`
	lEOE     = `type=EOE msg=audit(1795958082.876:8): `

	// Serial 9, interleaved with 8 in some tests.
	l9Syscall = `type=SYSCALL msg=audit(1795958082.880:9): arch=c000003e syscall=59 success=yes exit=0 a0=55d0 a1=55d1 a2=55d2 a3=0 items=2 ppid=42 pid=43 auid=1000 uid=1000 gid=1000 euid=1000 suid=1000 fsuid=1000 egid=1000 sgid=1000 fsgid=1000 tty=pts0 ses=3 comm="ls" exe="/usr/bin/ls" subj=unconfined key=(null)`
	l9Execve  = `type=EXECVE msg=audit(1795958082.880:9): argc=2 a0="ls" a1="-la"`
	l9Path    = `type=PATH msg=audit(1795958082.880:9): item=0 name="/usr/bin/ls" inode=99 dev=08:01 mode=0100755 ouid=0 ogid=0 rdev=00:00 nametype=NORMAL`
	l9EOE     = `type=EOE msg=audit(1795958082.880:9): `

	lUserLogin = `type=USER_LOGIN msg=audit(1795958100.001:31): pid=1200 uid=0 auid=4294967295 ses=4294967295 subj=unconfined msg='op=login acct="root" exe="/usr/sbin/sshd" hostname=? addr=10.0.0.1 terminal=sshd res=success'`
	lUserCmd   = `type=USER_CMD msg=audit(1795958100.300:33): pid=1250 uid=1000 auid=1000 ses=3 subj=unconfined msg='cwd="/home/ops" cmd=6C73202D6C61 exe="/usr/bin/sudo" terminal=pts/0 res=success'`
	lLogin     = `type=LOGIN msg=audit(1795958100.050:32): pid=1200 uid=0 subj=unconfined old-auid=4294967295 auid=1000 tty=(none) old-ses=4294967295 ses=3 res=1`
	lLoginSys  = `type=SYSCALL msg=audit(1795958100.050:32): arch=c000003e syscall=1 success=yes exit=4 a0=8 a1=7ffc a2=4 a3=0 items=0 ppid=900 pid=1200 auid=1000 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=3 comm="sshd" exe="/usr/sbin/sshd" subj=unconfined key=(null)`
	lLoginEOE  = `type=EOE msg=audit(1795958100.050:32): `
	lAVC       = `type=AVC msg=audit(1795958200.500:40): avc:  denied  { read } for  pid=1300 comm="cat" name="shadow" dev="sda1" ino=1234 scontext=system_u:system_r:httpd_t:s0 tcontext=system_u:object_r:shadow_t:s0 tclass=file permissive=0`

	// ENRICHED log_format: raw record, 0x1D, translated fields.
	lEnrSyscall = "type=SYSCALL msg=audit(1795958090.120:20): arch=c000003e syscall=59 success=yes exit=0 a0=1 a1=2 a2=3 a3=0 items=2 ppid=1 pid=77 auid=4294967295 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=4294967295 comm=\"id\" exe=\"/usr/bin/id\" subj=unconfined key=(null)\x1dARCH=x86_64 SYSCALL=execve AUID=\"unset\" UID=\"root\" GID=\"root\" EUID=\"root\" SUID=\"root\" FSUID=\"root\" EGID=\"root\" SGID=\"root\" FSGID=\"root\""
	lEnrEOE     = "type=EOE msg=audit(1795958090.120:20): "
	lEnrLogin   = "type=USER_LOGIN msg=audit(1795958100.001:31): pid=1200 uid=0 auid=4294967295 ses=4294967295 subj=unconfined msg='op=login acct=\"root\" exe=\"/usr/sbin/sshd\" hostname=? addr=10.0.0.1 terminal=sshd res=success'\x1dUID=\"root\" AUID=\"unset\""
	lDaemon     = "type=DAEMON_START msg=audit(1795958000.000:6789): op=start ver=3.1.2 format=enriched kernel=6.8.0-45-generic auid=4294967295 pid=812 uid=0 ses=4294967295 subj=unconfined res=success\x1dAUID=\"unset\" UID=\"root\""

	lGarbage = `Nov 28 10:00:01 gpu-7 kernel: [12345.678] nvidia: module loaded`
)

// join joins lines with "\n".
func join(lines ...string) string { return strings.Join(lines, "\n") }
