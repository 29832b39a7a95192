package audit

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseRecord(t *testing.T) {
	t0 := time.Unix(1795958082, 876_000_000).UTC()
	tests := []struct {
		name   string
		line   string
		typ    string
		time   time.Time
		serial uint64
		raw    string            // default: line
		want   map[string]string // fields that must have these values
		absent []string          // fields that must not be there
		nField int               // if > 0, the exact number of fields
	}{
		{
			name: "syscall", line: lSyscall, typ: "SYSCALL", time: t0, serial: 8,
			want: map[string]string{
				"arch": "c000003e", "syscall": "257", "success": "yes", "exit": "3",
				"items": "1", "ppid": "1", "pid": "42", "auid": "4294967295",
				"uid": "0", "tty": "(none)", "comm": "bash", "exe": "/usr/bin/bash",
				"subj": "unconfined", "key": "fleet-test",
			},
			absent: []string{"type", "msg"},
			nField: 26,
		},
		{name: "cwd", line: lCwd, typ: "CWD", time: t0, serial: 8, want: map[string]string{"cwd": "/root"}, nField: 1},
		{
			name: "path", line: lPath, typ: "PATH", time: t0, serial: 8,
			want: map[string]string{"item": "0", "name": "/etc/shadow", "mode": "0100640", "nametype": "NORMAL", "dev": "08:01"},
		},
		{
			name: "proctitle hex with NULs", line: lTitle, typ: "PROCTITLE", time: t0, serial: 8,
			want: map[string]string{"proctitle": "/usr/bin/bash -c cat /etc/shadow"}, nField: 1,
		},
		{
			name: "proctitle trailing NULs dropped", line: `type=PROCTITLE msg=audit(1.5:2): proctitle=7375646F002D690000`,
			typ: "PROCTITLE", time: time.Unix(1, 5e8).UTC(), serial: 2, want: map[string]string{"proctitle": "sudo -i"},
		},
		{
			name: "proctitle quoted is not decoded", line: `type=PROCTITLE msg=audit(1.5:2): proctitle="cafe"`,
			typ: "PROCTITLE", time: time.Unix(1, 5e8).UTC(), serial: 2, want: map[string]string{"proctitle": "cafe"},
		},
		{
			name: "proctitle odd length is not decoded", line: `type=PROCTITLE msg=audit(1.5:2): proctitle=ABC`,
			typ: "PROCTITLE", time: time.Unix(1, 5e8).UTC(), serial: 2, want: map[string]string{"proctitle": "ABC"},
		},
		{
			name: "proctitle non-hex is not decoded", line: `type=PROCTITLE msg=audit(1.5:2): proctitle=(null)`,
			typ: "PROCTITLE", time: time.Unix(1, 5e8).UTC(), serial: 2, want: map[string]string{"proctitle": "(null)"},
		},
		{
			name: "hex comm and name decoded, other hex values kept",
			line: `type=SYSCALL msg=audit(1.5:2): a0=6D79 comm=6D7920636F6D6D name=2F746D702F612062 saddr=0200`,
			typ:  "SYSCALL", time: time.Unix(1, 5e8).UTC(), serial: 2,
			want: map[string]string{"a0": "6D79", "comm": "my comm", "name": "/tmp/a b", "saddr": "0200"},
		},
		{name: "eoe", line: lEOE, typ: "EOE", time: t0, serial: 8, want: map[string]string{}, nField: -1},
		{name: "eoe without trailing space", line: `type=EOE msg=audit(1795958082.876:8):`, typ: "EOE", time: t0, serial: 8, nField: -1},
		{
			name: "key (null) kept", line: l9Syscall, typ: "SYSCALL", time: time.Unix(1795958082, 880e6).UTC(), serial: 9,
			want: map[string]string{"key": "(null)", "tty": "pts0"},
		},
		{
			name: "user login nested msg", line: lUserLogin, typ: "USER_LOGIN", time: time.Unix(1795958100, 1e6).UTC(), serial: 31,
			want: map[string]string{
				"pid": "1200", "uid": "0", "auid": "4294967295", "ses": "4294967295", "subj": "unconfined",
				"op": "login", "acct": "root", "exe": "/usr/sbin/sshd", "hostname": "?", "addr": "10.0.0.1",
				"terminal": "sshd", "res": "success",
				"msg": `op=login acct="root" exe="/usr/sbin/sshd" hostname=? addr=10.0.0.1 terminal=sshd res=success`,
			},
		},
		{
			name: "user cmd hex cmd", line: lUserCmd, typ: "USER_CMD", time: time.Unix(1795958100, 300e6).UTC(), serial: 33,
			want: map[string]string{"cmd": "ls -la", "cwd": "/home/ops", "terminal": "pts/0"},
		},
		{
			name: "nested msg with a single quote inside",
			line: `type=USER_AUTH msg=audit(10.000:5): pid=1 uid=0 msg='op=PAM:authentication acct="o'brien" exe="/usr/bin/su" res=failed'`,
			typ:  "USER_AUTH", time: time.Unix(10, 0).UTC(), serial: 5,
			want: map[string]string{"op": "PAM:authentication", "acct": "o'brien", "exe": "/usr/bin/su", "res": "failed"},
		},
		{
			name: "outer fields win over nested ones",
			line: `type=USER_AVC msg=audit(10.000:6): pid=1 uid=0 msg='avc:  received policyload notice (seqno=2) pid=99 exe="/usr/lib/systemd/systemd" res=success'`,
			typ:  "USER_AVC", time: time.Unix(10, 0).UTC(), serial: 6,
			want: map[string]string{"pid": "1", "(seqno": "2)", "exe": "/usr/lib/systemd/systemd"},
		},
		{
			name: "enriched syscall", line: lEnrSyscall, typ: "SYSCALL", time: time.Unix(1795958090, 120e6).UTC(), serial: 20,
			want: map[string]string{
				"syscall": "59", "auid": "4294967295", "uid": "0", "key": "(null)",
				"ARCH": "x86_64", "SYSCALL": "execve", "AUID": "unset", "UID": "root", "FSGID": "root",
			},
		},
		{
			name: "enriched user login", line: lEnrLogin, typ: "USER_LOGIN", time: time.Unix(1795958100, 1e6).UTC(), serial: 31,
			want: map[string]string{"res": "success", "acct": "root", "UID": "root", "AUID": "unset"},
		},
		{
			name: "enriched sockaddr", line: "type=SOCKADDR msg=audit(1795958082.876:8): saddr=02000016C0A800010000000000000000\x1dSADDR={ saddr_fam=inet laddr=192.168.0.1 lport=22 } X={", typ: "SOCKADDR", time: t0, serial: 8,
			want:   map[string]string{"saddr": "02000016C0A800010000000000000000", "SADDR": "{ saddr_fam=inet laddr=192.168.0.1 lport=22 }", "X": "{"},
			nField: 3,
		},
		{
			name: "daemon start", line: lDaemon, typ: "DAEMON_START", time: time.Unix(1795958000, 0).UTC(), serial: 6789,
			want: map[string]string{"op": "start", "ver": "3.1.2", "format": "enriched", "kernel": "6.8.0-45-generic", "res": "success", "AUID": "unset", "UID": "root"},
		},
		{
			name: "avc bare words skipped", line: lAVC, typ: "AVC", time: time.Unix(1795958200, 500e6).UTC(), serial: 40,
			want:   map[string]string{"pid": "1300", "comm": "cat", "name": "shadow", "tclass": "file", "permissive": "0"},
			absent: []string{"avc:", "denied", "{", "read", "}", "for"},
		},
		{
			name: "node prefix", line: `node=gpu-7 type=CWD msg=audit(1795958082.876:8): cwd="/root"`, typ: "CWD", time: t0, serial: 8,
			want: map[string]string{"node": "gpu-7", "cwd": "/root"}, absent: []string{"type"}, nField: 2,
		},
		{
			name: "unknown type", line: `type=UNKNOWN[1334] msg=audit(1795958082.876:8): prog-id=12 op=LOAD`, typ: "UNKNOWN[1334]", time: t0, serial: 8,
			want: map[string]string{"prog-id": "12", "op": "LOAD"},
		},
		{
			name: "crlf", line: lCwd + "\r\n", raw: lCwd, typ: "CWD", time: t0, serial: 8, want: map[string]string{"cwd": "/root"},
		},
		{
			name: "invalid utf-8 kept", line: "type=PATH msg=audit(1795958082.876:8): name=\"/tmp/\xff\xfe\" item=0", typ: "PATH", time: t0, serial: 8,
			want: map[string]string{"name": "/tmp/\xff\xfe", "item": "0"},
		},
		{
			name: "unclosed quote runs to the end", line: `type=PATH msg=audit(1795958082.876:8): item=0 name="/tmp/x y`, typ: "PATH", time: t0, serial: 8,
			want: map[string]string{"item": "0", "name": "/tmp/x y"},
		},
		{
			name: "first occurrence wins", line: `type=PATH msg=audit(1795958082.876:8): item=0 item=1 =x`, typ: "PATH", time: t0, serial: 8,
			want: map[string]string{"item": "0"}, nField: 1,
		},
		{
			name: "whole seconds, nanoseconds", line: `type=CWD msg=audit(1795958082:8): cwd="/"`, typ: "CWD", time: time.Unix(1795958082, 0).UTC(), serial: 8,
		},
		{
			name: "more than 9 fraction digits", line: `type=CWD msg=audit(1.1234567891:18446744073709551615): cwd="/"`, typ: "CWD", time: time.Unix(1, 123456789).UTC(), serial: 1<<64 - 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := ParseRecord([]byte(tt.line))
			if err != nil {
				t.Fatalf("ParseRecord: %v", err)
			}
			if r.Type != tt.typ || !r.Time.Equal(tt.time) || r.Serial != tt.serial {
				t.Errorf("got %s %v %d, want %s %v %d", r.Type, r.Time, r.Serial, tt.typ, tt.time, tt.serial)
			}
			if r.Time.Location() != time.UTC {
				t.Errorf("time %v not in UTC", r.Time)
			}
			raw := tt.raw
			if raw == "" {
				raw = tt.line
			}
			if string(r.Raw) != raw {
				t.Errorf("Raw = %q, want %q", r.Raw, raw)
			}
			if r.Fields == nil {
				t.Errorf("Fields is nil")
			}
			for k, v := range tt.want {
				if got, ok := r.Fields.Lookup(k); !ok || got != v {
					t.Errorf("Fields[%q] = %q (%v), want %q", k, got, ok, v)
				}
			}
			for _, k := range tt.absent {
				if v, ok := r.Fields.Lookup(k); ok {
					t.Errorf("Fields[%q] = %q, want none", k, v)
				}
			}
			switch {
			case tt.nField > 0 && len(r.Fields) != tt.nField:
				t.Errorf("%d fields, want %d: %q", len(r.Fields), tt.nField, r.Fields)
			case tt.nField < 0 && len(r.Fields) != 0:
				t.Errorf("%d fields, want none: %q", len(r.Fields), r.Fields)
			}
		})
	}
}

func TestParseRecordMalformed(t *testing.T) {
	tests := []struct {
		line string
		err  error
	}{
		{"", ErrNoHeader},
		{"\r\n", ErrNoHeader},
		{lGarbage, ErrNoHeader},
		{"type=SYSCALL arch=c000003e", ErrNoHeader},
		{"type=SYSCALL msg=audit", ErrNoHeader},
		{"msg=audit(1.2:3): a=b", ErrNoType},
		{"type= msg=audit(1.2:3): a=b", ErrNoType},
		{"type=SYSCALL msg=audit(", ErrBadStamp},
		{"type=SYSCALL msg=audit(abc:1): a=b", ErrBadStamp},
		{"type=SYSCALL msg=audit(1.2:): a=b", ErrBadStamp},
		{"type=SYSCALL msg=audit(1.:2): a=b", ErrBadStamp},
		{"type=SYSCALL msg=audit(1.2): a=b", ErrBadStamp},
		{"type=SYSCALL msg=audit(1.2:3 a=b", ErrBadStamp},
		{"type=SYSCALL msg=audit(1.2:3x): a=b", ErrBadStamp},
		{"type=SYSCALL msg=audit(1.2:18446744073709551616): a=b", ErrBadStamp}, // serial overflows uint64
		{"type=SYSCALL msg=audit(99999999999999999999.2:3): a=b", ErrBadStamp}, // seconds overflow
		{"type=SYSCALL msg=audit(253402300800.000:3): a=b", ErrBadStamp},       // year 10000
		{"type=SYSCALL\x1d msg=audit(1.2:3): a=b", ErrNoHeader},                // header after the GS
		{"\x00\xff type=\xfe msg=audit(1.2:3): a=b", nil},                      // odd but parseable
		{"type=SYSCALL msg=audit(253402300799.999:3): a=b", nil},               // the last second of 9999
		{strings.Repeat("x=", 100000) + " type=T msg=audit(1.2:3): a=b", nil},  // long prefix
		{"type=T msg=audit(1.2:3): " + strings.Repeat("a=\"", 50000), nil},     // many unclosed quotes
		{"type=T msg=audit(1.2:3): msg='" + strings.Repeat("'", 50000), nil},   // many single quotes
		{"type=T msg=audit(1.2:3): proctitle=" + strings.Repeat("00", 50000), nil},
	}
	for _, tt := range tests {
		name := tt.line
		if len(name) > 60 {
			name = name[:60]
		}
		r, err := ParseRecord([]byte(tt.line))
		if !errors.Is(err, tt.err) {
			t.Errorf("ParseRecord(%q) error = %v, want %v", name, err, tt.err)
		}
		if err != nil && (r.Type != "" || r.Fields != nil || r.Raw != nil) {
			t.Errorf("ParseRecord(%q) = %+v with error %v, want zero Record", name, r, err)
		}
	}
}

func TestStandalone(t *testing.T) {
	for typ, want := range map[string]bool{
		"USER_LOGIN": true, "USER_AUTH": true, "USER_CMD": true, "CRED_ACQ": true, "SERVICE_START": true,
		"DAEMON_START": true, "DAEMON_END": true, "ANOM_LOGIN_FAILURES": true, "ADD_USER": true,
		"VIRT_CONTROL": true, "CRYPTO_KEY_USER": true, "USER": true,
		"UNKNOWN[1100]": true, "UNKNOWN[1299]": true, "UNKNOWN[2999]": true, "UNKNOWN[1005]": true,
		"SYSCALL": false, "PATH": false, "CWD": false, "PROCTITLE": false, "EOE": false, "EXECVE": false,
		"LOGIN": false, "AVC": false, "CONFIG_CHANGE": false, "ANOM_ABEND": false, "ANOM_PROMISCUOUS": false,
		"UNKNOWN[1334]": false, "UNKNOWN[1300]": false, "UNKNOWN[": false, "UNKNOWN[]": false, "UNKNOWN[11x0]": false,
		"UNKNOWN[1100": false, "": false,
	} {
		if got := standalone(typ); got != want {
			t.Errorf("standalone(%q) = %v, want %v", typ, got, want)
		}
	}
}
