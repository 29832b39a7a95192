package audit

import (
	"fmt"
	"testing"
	"time"
)

// benchLines returns the lines of n events of a typical mix: syscall events
// of 4 records and their EOE (SYSCALL, CWD, PATH, PROCTITLE), two at a time
// interleaved, and every 8th event a single-record USER_ACCT.
func benchLines(n int) [][]byte {
	var lines [][]byte
	add := func(format string, a ...any) { lines = append(lines, []byte(fmt.Sprintf(format, a...))) }
	sec := int64(1795958082)
	for s := 1; s <= n; s += 2 {
		ms := s % 1000
		if s%8 == 7 {
			add(`type=USER_ACCT msg=audit(%d.%03d:%d): pid=%d uid=0 auid=1000 ses=3 subj=unconfined msg='op=PAM:accounting grantors=pam_unix acct="ops" exe="/usr/bin/sudo" hostname=? addr=? terminal=/dev/pts/0 res=success'`, sec, ms, s, 2000+s)
			add(`type=USER_ACCT msg=audit(%d.%03d:%d): pid=%d uid=0 auid=1000 ses=3 subj=unconfined msg='op=PAM:accounting grantors=pam_unix acct="ops" exe="/usr/bin/sudo" hostname=? addr=? terminal=/dev/pts/0 res=success'`, sec, ms, s+1, 2000+s)
			continue
		}
		for _, r := range []string{
			`type=SYSCALL msg=audit(%d.%03d:%d): arch=c000003e syscall=257 success=yes exit=3 a0=ffffff9c a1=7ffd1a2b3c4d a2=0 a3=0 items=1 ppid=1 pid=%d auid=4294967295 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=4294967295 comm="cat" exe="/usr/bin/cat" subj=unconfined key="fleet-test"`,
			`type=CWD msg=audit(%d.%03d:%d): cwd="/root"`,
			`type=PATH msg=audit(%d.%03d:%d): item=0 name="/etc/shadow" inode=%d dev=08:01 mode=0100640 ouid=0 ogid=42 rdev=00:00 nametype=NORMAL cap_fp=0 cap_fi=0 cap_fe=0 cap_fver=0 cap_frootid=0`,
			`type=PROCTITLE msg=audit(%d.%03d:%d): proctitle=636174002F6574632F736861646F77`,
			`type=EOE msg=audit(%d.%03d:%d): `,
		} {
			for _, serial := range []int{s, s + 1} {
				if r[5] == 'S' || r[5] == 'P' && r[6] == 'A' {
					add(r, sec, ms, serial, 1000+serial)
				} else {
					add(r, sec, ms, serial)
				}
			}
		}
	}
	return lines
}

// BenchmarkGrouper measures Add over the lines of a typical event mix; one
// op is one line. For exactly 1M lines: -benchtime=1000000x.
func BenchmarkGrouper(b *testing.B) {
	lines := benchLines(4096)
	size := 0
	for _, l := range lines {
		size += len(l)
	}
	b.SetBytes(int64(size / len(lines)))
	g := NewGrouper(GrouperOptions{})
	now := time.Now()
	groups := 0
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		groups += len(g.Add(lines[i%len(lines)], now))
	}
	groups += len(g.FlushAll())
	b.StopTimer()
	if groups == 0 {
		b.Fatal("no groups")
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lines/s")
}

func BenchmarkParseRecord(b *testing.B) {
	line := []byte(lSyscall)
	b.SetBytes(int64(len(line)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseRecord(line); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEvent(b *testing.B) {
	g := NewGrouper(GrouperOptions{})
	now := time.Now()
	for _, l := range []string{lSyscall, lCwd, lPath, lTitle} {
		g.Add([]byte(l), now)
	}
	gr := g.Add([]byte(lEOE), now)[0]
	b.ReportAllocs()
	for b.Loop() {
		_ = gr.Event("audit", "/var/log/audit/audit.log")
	}
}
