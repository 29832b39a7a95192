package audit

import (
	"encoding/json"
	"testing"
	"time"
)

// groupOf feeds lines to a fresh Grouper and returns the one group they
// make (flushing at the end).
func groupOf(t *testing.T, now time.Time, lines ...string) Group {
	t.Helper()
	g := NewGrouper(GrouperOptions{})
	var out []Group
	for _, l := range lines {
		out = append(out, g.Add([]byte(l), now)...)
	}
	out = append(out, g.FlushAll()...)
	if len(out) != 1 {
		t.Fatalf("%d groups from %q", len(out), lines)
	}
	return out[0]
}

func TestEvent(t *testing.T) {
	read := time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		name  string
		lines []string
		time  time.Time
		want  map[string]string // the exact Fields
	}{
		{
			name:  "syscall event",
			lines: []string{lSyscall, lCwd, lPath, lTitle, lEOE},
			time:  time.Unix(1795958082, 876e6),
			want: map[string]string{
				"type": "SYSCALL", "types": "SYSCALL,CWD,PATH,PROCTITLE", "serial": "8",
				"time": "2026-11-29T13:14:42.876Z",
				"uid":  "0", "auid": "4294967295", "euid": "0", "pid": "42", "ppid": "1", "ses": "4294967295",
				"tty": "(none)", "exe": "/usr/bin/bash", "comm": "bash", "key": "fleet-test", "success": "yes",
				"exit": "3", "syscall": "257", "arch": "c000003e",
				"cwd": "/root", "proctitle": "/usr/bin/bash -c cat /etc/shadow",
			},
		},
		{
			name:  "SYSCALL record wins over the records before it",
			lines: []string{lLogin, lLoginSys, lLoginEOE},
			time:  time.Unix(1795958100, 50e6),
			want: map[string]string{
				"type": "LOGIN", "types": "LOGIN,SYSCALL", "serial": "32", "time": "2026-11-29T13:15:00.05Z",
				"uid": "0", "auid": "1000", "euid": "0", "pid": "1200", "ppid": "900", "ses": "3", "tty": "(none)",
				"exe": "/usr/sbin/sshd", "comm": "sshd", "key": "(null)", "success": "yes", "exit": "4",
				"syscall": "1", "arch": "c000003e", "res": "1",
			},
		},
		{
			name:  "user login",
			lines: []string{lUserLogin},
			time:  time.Unix(1795958100, 1e6),
			want: map[string]string{
				"type": "USER_LOGIN", "types": "USER_LOGIN", "serial": "31", "time": "2026-11-29T13:15:00.001Z",
				"uid": "0", "auid": "4294967295", "pid": "1200", "ses": "4294967295", "exe": "/usr/sbin/sshd",
				"op": "login", "acct": "root", "res": "success", "addr": "10.0.0.1", "hostname": "?", "terminal": "sshd",
			},
		},
		{
			name:  "enriched syscall",
			lines: []string{lEnrSyscall, lEnrEOE},
			time:  time.Unix(1795958090, 120e6),
			want: map[string]string{
				"type": "SYSCALL", "types": "SYSCALL", "serial": "20", "time": "2026-11-29T13:14:50.12Z",
				"uid": "0", "auid": "4294967295", "euid": "0", "pid": "77", "ppid": "1", "ses": "4294967295",
				"tty": "(none)", "exe": "/usr/bin/id", "comm": "id", "key": "(null)", "success": "yes", "exit": "0",
				"syscall": "59", "arch": "c000003e",
				"UID": "root", "AUID": "unset", "EUID": "root", "SYSCALL": "execve", "ARCH": "x86_64",
			},
		},
		{
			name:  "daemon start",
			lines: []string{lDaemon},
			time:  time.Unix(1795958000, 0),
			want: map[string]string{
				"type": "DAEMON_START", "types": "DAEMON_START", "serial": "6789", "time": "2026-11-29T13:13:20Z",
				"uid": "0", "auid": "4294967295", "pid": "812", "ses": "4294967295", "op": "start", "res": "success",
				"UID": "root", "AUID": "unset",
			},
		},
		{
			name:  "node",
			lines: []string{`node=gpu-7 type=CWD msg=audit(1795958082.876:8): cwd="/root"`},
			time:  time.Unix(1795958082, 876e6),
			want: map[string]string{
				"type": "CWD", "types": "CWD", "serial": "8", "time": "2026-11-29T13:14:42.876Z", "cwd": "/root", "node": "gpu-7",
			},
		},
		{
			name:  "orphan EOE",
			lines: []string{lEOE},
			time:  time.Unix(1795958082, 876e6),
			want:  map[string]string{"type": "EOE", "types": "EOE", "serial": "8", "time": "2026-11-29T13:14:42.876Z"},
		},
		{
			name:  "unparsed",
			lines: []string{"garbage \xff"},
			time:  read,
			want:  map[string]string{"type": "UNPARSED"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gr := groupOf(t, read, tt.lines...)
			ev := gr.Event("audit", "/var/log/audit/audit.log")
			if ev.Tag != "audit" || ev.Source != "/var/log/audit/audit.log" || !ev.Time.Equal(tt.time) {
				t.Errorf("Tag %q Source %q Time %v, want time %v", ev.Tag, ev.Source, ev.Time, tt.time)
			}
			if string(ev.Raw) != join(tt.lines...) {
				t.Errorf("Raw %q", ev.Raw)
			}
			if ev.Truncated || ev.Part != 0 {
				t.Errorf("Truncated %v Part %d", ev.Truncated, ev.Part)
			}
			for k, v := range tt.want {
				if got, ok := ev.Fields.Lookup(k); !ok || got != v {
					t.Errorf("Fields[%q] = %q (%v), want %q", k, got, ok, v)
				}
			}
			for _, e := range ev.Fields {
				if _, ok := tt.want[e.Key]; !ok {
					t.Errorf("unexpected Fields[%q] = %q", e.Key, e.Value)
				}
			}
			if !ev.Fields.Sorted() {
				t.Errorf("Fields not sorted by key: %q", ev.Fields)
			}
			if _, err := json.Marshal(ev); err != nil {
				t.Errorf("json.Marshal: %v", err)
			}
		})
	}
}

func TestTypes(t *testing.T) {
	recs := func(types ...string) []Record {
		var rs []Record
		for _, ty := range types {
			rs = append(rs, Record{Type: ty})
		}
		return rs
	}
	many := make([]string, 0, 40)
	for i := 0; i < 20; i++ {
		many = append(many, "PATH", "CWD")
	}
	for _, tt := range []struct {
		recs []Record
		want string
	}{
		{recs("EOE"), "EOE"},
		{recs("SYSCALL", "EOE"), "SYSCALL"},
		{recs("SYSCALL", "PATH", "PATH", "CWD", "PATH", "EOE"), "SYSCALL,PATH,CWD"},
		{recs(append(append([]string{"SYSCALL"}, many...), "EOE")...), "SYSCALL,PATH,CWD"},
	} {
		if got := types(tt.recs); got != tt.want {
			t.Errorf("types = %q, want %q", got, tt.want)
		}
	}
}

// TestEventKey checks that eventKey's switch matches eventKeys.
func TestEventKey(t *testing.T) {
	for i, k := range eventKeys {
		if got := eventKey(k); got != i {
			t.Errorf("eventKey(%q) = %d, want %d", k, got, i)
		}
	}
	for _, k := range []string{"type", "types", "serial", "time", "", "Uid", "gid", "msg"} {
		if got := eventKey(k); got != -1 {
			t.Errorf("eventKey(%q) = %d, want -1", k, got)
		}
	}
	if numKeys > 64 {
		t.Errorf("%d keys do not fit Event's 64-bit set", numKeys)
	}
}
