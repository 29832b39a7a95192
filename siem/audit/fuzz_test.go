package audit

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// fuzzLines seeds both fuzzers: the table tests' inputs.
var fuzzLines = []string{
	lSyscall, lCwd, lPath, lTitle, lEOE, l9Syscall, l9Execve, l9Path, l9EOE,
	lUserLogin, lUserCmd, lLogin, lLoginSys, lLoginEOE, lAVC,
	lEnrSyscall, lEnrEOE, lEnrLogin, lDaemon, lGarbage,
	`node=gpu-7 type=CWD msg=audit(1795958082.876:8): cwd="/root"`,
	`type=UNKNOWN[1334] msg=audit(1795958082.876:8): prog-id=12 op=LOAD`,
	`type=PROCTITLE msg=audit(1.5:2): proctitle=7375646F002D690000`,
	`type=PROCTITLE msg=audit(1.5:2): proctitle="cafe"`,
	`type=SYSCALL msg=audit(1.5:2): a0=6D79 comm=6D7920636F6D6D name=2F746D702F612062 saddr=0200`,
	`type=USER_AUTH msg=audit(10.000:5): pid=1 uid=0 msg='op=PAM:authentication acct="o'brien" exe="/usr/bin/su" res=failed'`,
	`type=PATH msg=audit(1795958082.876:8): item=0 name="/tmp/x y`,
	"type=PATH msg=audit(1795958082.876:8): name=\"/tmp/\xff\xfe\" item=0",
	`type=CWD msg=audit(1.1234567891:18446744073709551615): cwd="/"`,
	"type=SYSCALL msg=audit(253402300799.999:3): a=b",
	"type=SYSCALL msg=audit(253402300800.000:3): a=b",
	"type=SYSCALL msg=audit(1.2:18446744073709551616): a=b",
	"type=SYSCALL msg=audit(1.2:3x): a=b",
	"type=SYSCALL\x1d msg=audit(1.2:3): a=b",
	"msg=audit(1.2:3): a=b",
	"type=SOCKADDR msg=audit(1795958082.876:8): saddr=0200\x1dSADDR={ saddr_fam=inet laddr=192.168.0.1 lport=22 } X={",
	"type=SYSCALL msg=audit(", "", "\r", " ",
}

func FuzzParseRecord(f *testing.F) {
	for _, l := range fuzzLines {
		f.Add([]byte(l))
		f.Add([]byte(l + "\r\n"))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		in := append([]byte(nil), line...)
		r, err := ParseRecord(line)
		if !bytes.Equal(line, in) {
			t.Fatalf("ParseRecord modified its input")
		}
		if err != nil {
			if r.Type != "" || r.Fields != nil || r.Raw != nil || r.Serial != 0 || !r.Time.IsZero() {
				t.Fatalf("error %v with a non-zero Record %+v", err, r)
			}
			return
		}
		if r.Type == "" || r.Fields == nil {
			t.Fatalf("Record %+v without type or fields", r)
		}
		if !bytes.Equal(r.Raw, trimEOL(line)) {
			t.Fatalf("Raw %q, line %q", r.Raw, line)
		}
		if y := r.Time.Year(); y < 1970 || y > 9999 {
			t.Fatalf("time %v out of range", r.Time)
		}
		for i := range line {
			line[i] = 0 // Raw and Fields must not alias the input
		}
		if !bytes.Equal(r.Raw, trimEOL(in)) {
			t.Fatalf("Raw aliases the input")
		}
		ev := Group{Serial: r.Serial, Time: r.Time, Records: []Record{r}, Raw: r.Raw}.Event("audit", "f")
		if ev.Fields.Get("type") != r.Type {
			t.Fatalf("Event type %q, record type %q", ev.Fields.Get("type"), r.Type)
		}
		if !ev.Fields.Sorted() {
			t.Fatalf("Event fields not sorted: %q", ev.Fields)
		}
		if _, err := json.Marshal(ev); err != nil {
			t.Fatalf("json.Marshal(Event): %v", err)
		}
	})
}

// FuzzGrouper feeds the lines of data to a Grouper, with a small MaxOpen,
// a fake clock and Flush calls, and checks that the groups returned hold
// every non-empty line exactly once.
func FuzzGrouper(f *testing.F) {
	// Small seeds: the fuzzer minimizes each new input before going on,
	// which takes long for inputs of many lines.
	for i, l := range fuzzLines {
		f.Add([]byte(l+"\r\n"+fuzzLines[(i+1)%len(fuzzLines)]), uint8(i), uint16(i*100), uint8(i*10))
	}
	for _, seq := range [][]string{
		{lSyscall, lCwd, lPath, lTitle, lEOE},
		{lSyscall, l9Syscall, lCwd, l9Execve, lPath, l9Path, l9EOE, lTitle, lEOE},
		{lSyscall, lUserLogin, lDaemon, lEnrLogin, lUserCmd, lCwd, lEOE},
		{lLogin, lSyscall, lUserLogin, lEOE, lLoginSys, lLoginEOE},
		{lAVC, lSyscall, lGarbage, "", "\r", lEOE, lEOE},
		{lEnrSyscall, lEnrEOE, lSyscall, `type=SYSCALL msg=audit(1795990000.000:8): arch=c000003e syscall=2`, lEOE},
	} {
		f.Add([]byte(strings.Join(seq, "\n")), uint8(1), uint16(1000), uint8(200))
		f.Add([]byte(strings.Join(seq, "\n")+"\n"), uint8(255), uint16(0), uint8(0))
	}
	f.Fuzz(func(t *testing.T, data []byte, maxOpen uint8, waitMs uint16, stepMs uint8) {
		g := NewGrouper(GrouperOptions{
			MaxWait: time.Duration(waitMs) * time.Millisecond,
			MaxOpen: int(maxOpen % 8), // 0: the default
		})
		now := time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)
		want := map[string]int{}
		var groups []Group
		for i, line := range bytes.Split(data, []byte("\n")) {
			if l := trimEOL(line); len(l) > 0 {
				want[string(l)]++
			}
			now = now.Add(time.Duration(stepMs) * time.Millisecond)
			out := g.Add(line, now)
			if len(trimEOL(line)) == 0 && len(out) > 0 {
				t.Fatalf("an empty line completed %d groups", len(out))
			}
			groups = append(groups, out...)
			if i%3 == 2 {
				groups = append(groups, g.Flush(now)...)
			}
			if g.Open() > max(1, int(maxOpen%8)) && maxOpen%8 != 0 {
				t.Fatalf("%d groups open, MaxOpen %d", g.Open(), maxOpen%8)
			}
		}
		groups = append(groups, g.FlushAll()...)
		if g.Open() != 0 {
			t.Fatalf("%d groups open after FlushAll", g.Open())
		}

		got := map[string]int{}
		for _, gr := range groups {
			checkGroup(t, gr)
			for _, r := range gr.Records {
				got[string(r.Raw)]++
			}
			ev := gr.Event("audit", "f")
			if !bytes.Equal(ev.Raw, gr.Raw) || ev.Fields.Get("type") == "" {
				t.Fatalf("Event %+v of group %q", ev, gr.Raw)
			}
			if _, err := json.Marshal(ev); err != nil {
				t.Fatalf("json.Marshal(Event): %v", err)
			}
		}
		for l, n := range want {
			if got[l] != n {
				t.Errorf("line %q given %d times, in groups %d times", l, n, got[l])
			}
		}
		for l, n := range got {
			if want[l] == 0 {
				t.Errorf("line %q never given, in groups %d times", l, n)
			}
		}
	})
}
