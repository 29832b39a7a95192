package syslog

import (
	"fmt"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/siem/audit"
)

// pipelineLines returns n single-record user-space audit lines like the
// ones test/siembench forwards (USER_ACCT, CRED_ACQ, USER_CMD, SERVICE_START).
func pipelineLines(n int) [][]byte {
	lines := make([][]byte, 0, n)
	for i := range n {
		sec, ms, serial := 1795958082+i/1000, i%1000, 1000+i
		var s string
		switch i % 4 {
		case 0:
			s = fmt.Sprintf(`type=USER_ACCT msg=audit(%d.%03d:%d): pid=%d uid=0 auid=1000 ses=3 subj=unconfined msg='op=PAM:accounting grantors=pam_permit,pam_unix,pam_faillock acct="ops" exe="/usr/bin/sudo" hostname=10.1.2.3 addr=10.1.2.3 terminal=/dev/pts/0 res=success'`, sec, ms, serial, 2000+i)
		case 1:
			s = fmt.Sprintf(`type=CRED_ACQ msg=audit(%d.%03d:%d): pid=%d uid=1000 auid=1000 ses=3 subj=unconfined msg='op=PAM:setcred grantors=pam_permit,pam_env,pam_unix acct="ops" exe="/usr/sbin/sshd" hostname=10.1.2.3 addr=10.1.2.3 terminal=ssh res=success'`, sec, ms, serial, 2000+i)
		case 2:
			s = fmt.Sprintf(`type=USER_CMD msg=audit(%d.%03d:%d): pid=%d uid=1000 auid=1000 ses=3 subj=unconfined msg='cwd="/home/ops" cmd=6C73202D6C61 exe="/usr/bin/sudo" terminal=pts/0 res=success'`, sec, ms, serial, 2000+i)
		default:
			s = fmt.Sprintf(`type=SERVICE_START msg=audit(%d.%03d:%d): pid=1 uid=0 auid=4294967295 ses=4294967295 subj=unconfined msg='unit=cron comm="systemd" exe="/usr/lib/systemd/systemd" hostname=? addr=? terminal=? res=success'`, sec, ms, serial)
		}
		lines = append(lines, []byte(s))
	}
	return lines
}

// BenchmarkAuditPipeline measures what the forwarder does for each
// linux-audit event of test/siembench before the TLS write: group (parse),
// make the siem.Event, format the RFC 5424 message. One op is one event.
func BenchmarkAuditPipeline(b *testing.B) {
	lines := pipelineLines(4096)
	g := audit.NewGrouper(audit.GrouperOptions{KeepLines: true}) // as the forwarder does
	f := Formatter{Hostname: "gpu-7", AppName: "bud-agent"}
	now := time.Now()
	var buf []byte
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, gr := range g.Add(lines[i%len(lines)], now) {
			buf = f.Append(buf[:0], g.Event(gr, "audit", "/var/log/audit/audit.log"))
		}
	}
	if len(buf) == 0 {
		b.Fatal("nothing formatted")
	}
}
