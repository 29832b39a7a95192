package audit

import (
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/siem/output/syslog"
)

// goldenExtra are lines beyond fuzzLines that exercise what the field
// representation must keep: repeated keys, escapes, ENRICHED keys of both
// cases, node= prefixes, events interleaved.
var goldenExtra = []string{
	`type=SYSCALL msg=audit(1795958082.900:50): arch=c000003e syscall=59 pid=1 pid=2 uid=0 uid=5 comm="a]b" exe="/x\"y" key="k\\v" success=no`,
	`type=EXECVE msg=audit(1795958082.900:50): argc=2 a0="ls" a1="]]" pid=9 cwd=2F746D70`,
	`type=CWD msg=audit(1795958082.900:50): cwd="/tmp" cwd="/other"`,
	`node=gpu-7 type=PATH msg=audit(1795958082.900:50): item=0 name=2F6574632F70617373776400 node=other`,
	`type=EOE msg=audit(1795958082.900:50): `,
	`node=gpu-8 type=USER_LOGIN msg=audit(1795958100.001:51): pid=1200 uid=0 auid=4294967295 ses=4294967295 msg='op=login acct=726F6F74 exe="/usr/sbin/sshd" hostname=? addr=10.0.0.1 terminal=sshd res=success uid=7'` + "\x1dUID=\"root\" AUID=\"unset\" uid=9",
	"type=USER_CMD msg=audit(1795958100.300:52): pid=1 uid=1000 msg='cwd=\"/home/\xff\" cmd=FF41 exe=\"/usr/bin/sudo\" terminal=pts/0 res=success'",
	`type=SYSCALL msg=audit(1795958101.000:60): syscall=1 pid=3 key=(null)`,
	`type=AVC msg=audit(1795958101.000:61): avc:  denied  { read } for pid=4 comm="cat"`,
	`type=SYSCALL msg=audit(1795958101.000:61): syscall=2 pid=4 comm="cat" exe="/usr/bin/cat"`,
	`type=PROCTITLE msg=audit(1795958101.000:60): proctitle=6C73`,
	`type=EOE msg=audit(1795958101.000:60): `,
	`type=EOE msg=audit(1795958101.000:61): `,
	`type=CONFIG_CHANGE msg=audit(1795958102.000:70): auid=1000 ses=3 op=add_rule key="x" list=4 res=1`,
	`type=DAEMON_END msg=audit(1795958103.000:71): op=terminate auid=0 pid=1 subj=unconfined res=success`,
	`type=UNKNOWN[1334] msg=audit(1795958104.000:72): prog-id=12 op=LOAD`,
	`type=UNKNOWN[1100] msg=audit(1795958104.000:73): pid=1 op=x`,
	`garbage ] " \ line`,
}

func goldenPipelineLines(n int) []string {
	lines := make([]string, 0, n)
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
		lines = append(lines, s)
	}
	return lines
}

// goldenInput is every line the golden test feeds through.
func goldenInput() []string {
	in := slices.Clone(fuzzLines)
	in = append(in, goldenExtra...)
	for _, l := range benchLines(64) {
		in = append(in, string(l))
	}
	return append(in, goldenPipelineLines(16)...)
}

// goldenOutput returns, for each input line, its ParseRecord result (the
// fields as a JSON object), then each group the Grouper makes of all the
// lines: its records' fields, its Event's fields, and the RFC 5424 message.
func goldenOutput(o GrouperOptions) []string {
	in := goldenInput()
	var out []string
	for _, l := range in {
		r, err := ParseRecord([]byte(l))
		if err != nil {
			out = append(out, fmt.Sprintf("parse %q: error %v", l, err))
			continue
		}
		fj, _ := json.Marshal(fieldsMap(r.Fields))
		out = append(out, fmt.Sprintf("parse %q: %s %d %s %s", l, r.Type, r.Serial, r.Time.Format(time.RFC3339Nano), fj))
	}
	g := NewGrouper(o)
	now := time.Unix(1795958200, 123456789)
	f := syslog.Formatter{Hostname: "gpu-7", AppName: "bud-agent"}
	var groups []Group
	for _, l := range in {
		groups = append(groups, g.Add([]byte(l), now)...)
	}
	groups = append(groups, g.FlushAll()...)
	for _, gr := range groups {
		for _, r := range gr.Records {
			fj, _ := json.Marshal(fieldsMap(r.Fields))
			out = append(out, fmt.Sprintf("record %s %s", r.Type, fj))
		}
		// What the forwarder calls; TestGrouperEvent checks it is
		// Group.Event.
		ev := g.Event(gr, "audit", "/var/log/audit/audit.log")
		ej, _ := json.Marshal(ev.Fields)
		out = append(out, fmt.Sprintf("event %s", ej))
		out = append(out, fmt.Sprintf("message %q", f.Append(nil, ev)))
	}
	return out
}

func fieldsMap(f Fields) map[string]string {
	m := make(map[string]string, len(f))
	for _, e := range f {
		if _, dup := m[e.Key]; dup {
			panic("key " + e.Key + " twice in a record's Fields")
		}
		m[e.Key] = e.Value
	}
	return m
}

// TestRepresentationGolden checks that records, events and messages are
// what they were when records and events held their fields in maps:
// testdata/representation.golden was written by that code (commit 8e55766,
// with this file's goldenOutput and fieldsMap returning the map as it is).
func TestRepresentationGolden(t *testing.T) {
	want, err := os.ReadFile("testdata/representation.golden")
	if err != nil {
		t.Fatal(err)
	}
	wantLines := strings.Split(strings.TrimSuffix(string(want), "\n"), "\n")
	for _, keep := range []bool{false, true} {
		t.Run(fmt.Sprintf("KeepLines=%v", keep), func(t *testing.T) {
			checkGolden(t, wantLines, goldenOutput(GrouperOptions{KeepLines: keep}))
		})
	}
}

func checkGolden(t *testing.T, wantLines, got []string) {
	if len(got) != len(wantLines) {
		t.Errorf("%d lines, want %d", len(got), len(wantLines))
	}
	for i := range min(len(got), len(wantLines)) {
		if got[i] != wantLines[i] {
			t.Errorf("line %d:\n got %s\nwant %s", i+1, got[i], wantLines[i])
		}
	}
}

// TestGrouperEvent checks that Grouper.Event, which cuts fields and
// strings from shared blocks and formats the time from a cached second,
// returns what Group.Event does.
func TestGrouperEvent(t *testing.T) {
	g := NewGrouper(GrouperOptions{})
	var groups []Group
	for _, l := range goldenInput() {
		groups = append(groups, g.Add([]byte(l), time.Unix(1795958200, 5))...)
	}
	groups = append(groups, g.FlushAll()...)
	for _, ns := range []int64{0, 1, 10, 100_000_000, 123_456_789, 999_999_999, 500_000_000, 20} {
		for _, sec := range []int64{0, 1, 1795958082, 1795958082, 253402300799, -1, -62135596800} {
			gr := Group{Serial: 7, Time: time.Unix(sec, ns), Records: []Record{{Type: "SYSCALL", Serial: 7, Time: time.Unix(sec, ns)}}}
			groups = append(groups, gr)
		}
	}
	for _, gr := range groups {
		want := gr.Event("audit", "f")
		got := g.Event(gr, "audit", "f")
		if !reflect.DeepEqual(got, want) {
			t.Errorf("Grouper.Event = %+v\nGroup.Event   = %+v", got, want)
		}
	}
}

// TestGrouperKeepLines checks that with KeepLines a group returned at once
// points into the caller's line, and a record that waits in an open group
// into a copy of its own (so open groups do not keep the caller's blocks).
func TestGrouperKeepLines(t *testing.T) {
	g := NewGrouper(GrouperOptions{KeepLines: true})
	now := time.Now()
	user := []byte(lUserLogin)
	out := g.Add(user, now)
	if len(out) != 1 || &out[0].Raw[0] != &user[0] {
		t.Fatalf("a standalone record's Raw is not the caller's line")
	}
	sys := []byte(lSyscall)
	if out := g.Add(sys, now); len(out) != 0 {
		t.Fatalf("SYSCALL completed %d groups", len(out))
	}
	for i := range sys {
		sys[i] = '#' // the Grouper copied it: this changes nothing
	}
	out = g.Add([]byte(lEOE), now)
	if len(out) != 1 || string(out[0].Raw) != join(lSyscall, lEOE) || out[0].Records[0].Fields.Get("comm") != "bash" {
		t.Fatalf("group %q, fields %q", out[0].Raw, out[0].Records[0].Fields)
	}
}
