package audit

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// clock is a fake clock for the Grouper.
type clock struct{ now time.Time }

func newClock() *clock                             { return &clock{now: time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)} }
func (c *clock) advance(d time.Duration) time.Time { c.now = c.now.Add(d); return c.now }

// step is one call on a Grouper in a scripted test.
type step struct {
	add   string        // Add this line (unless flush or flushAll is set)
	wait  time.Duration // advance the clock before the call
	flush bool          // call Flush instead of Add
	all   bool          // call FlushAll instead of Add
	want  []string      // the Raw of each group the call returns
	open  int           // Open() after the call; -1: don't check
}

func runSteps(t *testing.T, o GrouperOptions, steps []step) {
	t.Helper()
	g := NewGrouper(o)
	c := newClock()
	for i, s := range steps {
		now := c.advance(s.wait)
		var got []Group
		switch {
		case s.flush:
			got = g.Flush(now)
		case s.all:
			got = g.FlushAll()
		default:
			got = g.Add([]byte(s.add), now)
		}
		var raws []string
		for _, gr := range got {
			raws = append(raws, string(gr.Raw))
			checkGroup(t, gr)
		}
		if strings.Join(raws, "\n--\n") != strings.Join(s.want, "\n--\n") || len(raws) != len(s.want) {
			t.Errorf("step %d (%.40q): got groups\n%s\nwant\n%s", i, s.add, strings.Join(raws, "\n--\n"), strings.Join(s.want, "\n--\n"))
		}
		if s.open >= 0 && g.Open() != s.open {
			t.Errorf("step %d (%.40q): Open() = %d, want %d", i, s.add, g.Open(), s.open)
		}
	}
}

// checkGroup checks a group's invariants: Raw is its records' Raws joined
// by "\n"; every record has the group's stamp (but UNPARSED ones).
func checkGroup(t *testing.T, g Group) {
	t.Helper()
	if len(g.Records) == 0 {
		t.Fatalf("group without records: %q", g.Raw)
	}
	var raws [][]byte
	for _, r := range g.Records {
		raws = append(raws, r.Raw)
		if r.Type == TypeUnparsed && r.Time.IsZero() {
			if len(g.Records) != 1 || g.Serial != 0 || r.Fields.Get("type") != TypeUnparsed {
				t.Errorf("bad UNPARSED group %+v", g)
			}
			continue
		}
		if r.Serial != g.Serial || !r.Time.Equal(g.Time) {
			t.Errorf("record %q in group %d@%v", r.Raw, g.Serial, g.Time)
		}
	}
	if !bytes.Equal(bytes.Join(raws, []byte("\n")), g.Raw) {
		t.Errorf("records' Raw %q, group Raw %q", raws, g.Raw)
	}
}

func TestGrouper(t *testing.T) {
	syscallGroup := join(lSyscall, lCwd, lPath, lTitle, lEOE)
	tests := []struct {
		name  string
		o     GrouperOptions
		steps []step
	}{
		{
			name: "syscall event closed by its EOE",
			steps: []step{
				{add: lSyscall, open: 1},
				{add: lCwd, open: 1},
				{add: lPath, open: 1},
				{add: lTitle, open: 1},
				{add: lEOE, want: []string{syscallGroup}, open: 0},
			},
		},
		{
			name: "interleaved serials",
			steps: []step{
				{add: lSyscall, open: 1},
				{add: l9Syscall, open: 2},
				{add: lCwd, open: 2},
				{add: l9Execve, open: 2},
				{add: lPath, open: 2},
				{add: l9Path, open: 2},
				{add: l9EOE, want: []string{join(l9Syscall, l9Execve, l9Path, l9EOE)}, open: 1},
				{add: lTitle, open: 1},
				{add: lEOE, want: []string{syscallGroup}, open: 0},
			},
		},
		{
			name: "user-space records are events of their own, at once",
			steps: []step{
				{add: lSyscall, open: 1},
				{add: lUserLogin, want: []string{lUserLogin}, open: 1},
				{add: lDaemon, want: []string{lDaemon}, open: 1},
				{add: lEnrLogin, want: []string{lEnrLogin}, open: 1},
				{add: lUserCmd, want: []string{lUserCmd}, open: 1},
				{add: lCwd, open: 1},
				{add: lEOE, want: []string{join(lSyscall, lCwd, lEOE)}, open: 0},
			},
		},
		{
			name: "a user-space record of an open serial joins it",
			steps: []step{
				{add: lLogin, open: 1},
				{add: `type=USER_ERR msg=audit(1795958100.050:32): pid=1 msg='res=failed'`, open: 1},
				{add: lLoginEOE, want: []string{join(lLogin, `type=USER_ERR msg=audit(1795958100.050:32): pid=1 msg='res=failed'`, lLoginEOE)}, open: 0},
			},
		},
		{
			name: "LOGIN then its syscall, with other events in between",
			steps: []step{
				{add: lLogin, open: 1},
				{add: lSyscall, open: 2},
				{add: lUserLogin, want: []string{lUserLogin}, open: 2},
				{add: lEOE, want: []string{join(lSyscall, lEOE)}, open: 1},
				{add: lLoginSys, open: 1},
				{add: lLoginEOE, want: []string{join(lLogin, lLoginSys, lLoginEOE)}, open: 0},
			},
		},
		{
			name: "AVC alone waits MaxWait",
			o:    GrouperOptions{MaxWait: time.Second},
			steps: []step{
				{add: lAVC, open: 1},
				{flush: true, wait: time.Second - 1, open: 1},
				{add: lSyscall, open: 2},
				{flush: true, wait: 1, want: []string{lAVC}, open: 1},
				{flush: true, wait: time.Second - 2, open: 1},
				{flush: true, wait: 1, want: []string{lSyscall}, open: 0},
				{flush: true, wait: time.Hour, open: 0},
			},
		},
		{
			name: "default MaxWait is 2s; Flush returns the oldest first",
			steps: []step{
				{add: lLogin, open: 1},
				{add: lSyscall, wait: time.Second, open: 2},
				{add: l9Syscall, wait: time.Millisecond, open: 3},
				{flush: true, wait: time.Second - time.Millisecond, want: []string{lLogin}, open: 2},
				{add: lCwd, open: 2},
				{flush: true, wait: time.Hour, want: []string{join(lSyscall, lCwd), l9Syscall}, open: 0},
			},
		},
		{
			name: "a late record after its group was flushed makes a new group",
			o:    GrouperOptions{MaxWait: time.Second},
			steps: []step{
				{add: lSyscall, open: 1},
				{flush: true, wait: 2 * time.Second, want: []string{lSyscall}, open: 0},
				{add: lCwd, open: 1},
				{add: lEOE, want: []string{join(lCwd, lEOE)}, open: 0},
				{add: lEOE, want: []string{lEOE}, open: 0}, // orphan EOE
			},
		},
		{
			name: "MaxOpen exceeded closes the oldest",
			o:    GrouperOptions{MaxOpen: 2},
			steps: []step{
				{add: lSyscall, open: 1},
				{add: l9Syscall, open: 2},
				{add: lCwd, open: 2},
				{add: lLogin, want: []string{join(lSyscall, lCwd)}, open: 2},
				{add: lAVC, want: []string{l9Syscall}, open: 2},
				{add: lUserLogin, want: []string{lUserLogin}, open: 2}, // opens nothing
				{all: true, want: []string{lLogin, lAVC}, open: 0},
				{all: true, open: 0},
			},
		},
		{
			name: "MaxOpen 1",
			o:    GrouperOptions{MaxOpen: 1},
			steps: []step{
				{add: lSyscall, open: 1},
				{add: l9Syscall, want: []string{lSyscall}, open: 1},
				{add: l9EOE, want: []string{join(l9Syscall, l9EOE)}, open: 0},
			},
		},
		{
			name: "same serial, new stamp: the old group is over",
			steps: []step{
				{add: lSyscall, open: 1},
				{add: `type=SYSCALL msg=audit(1795990000.000:8): arch=c000003e syscall=2`, want: []string{lSyscall}, open: 1},
				{add: `type=EOE msg=audit(1795990000.000:8): `, want: []string{join(`type=SYSCALL msg=audit(1795990000.000:8): arch=c000003e syscall=2`, `type=EOE msg=audit(1795990000.000:8): `)}, open: 0},
				{add: lSyscall, open: 1},
				{add: `type=USER_END msg=audit(1795990000.000:8): pid=1`, want: []string{lSyscall, `type=USER_END msg=audit(1795990000.000:8): pid=1`}, open: 0},
			},
		},
		{
			name: "unparsed lines are groups of their own, at once",
			steps: []step{
				{add: lSyscall, open: 1},
				{add: lGarbage, want: []string{lGarbage}, open: 1},
				{add: "type=SYSCALL msg=audit(garbage", want: []string{"type=SYSCALL msg=audit(garbage"}, open: 1},
				{add: "\xff\xfe\x00", want: []string{"\xff\xfe\x00"}, open: 1},
				{add: " ", want: []string{" "}, open: 1},
				{add: lEOE, want: []string{join(lSyscall, lEOE)}, open: 0},
			},
		},
		{
			name: "line endings stripped, empty lines ignored",
			steps: []step{
				{add: lSyscall + "\r\n", open: 1},
				{add: "", open: 1},
				{add: "\r\n", open: 1},
				{add: "\n", open: 1},
				{add: lCwd + "\n", open: 1},
				{add: lEOE + "\r", want: []string{join(lSyscall, lCwd, lEOE)}, open: 0},
			},
		},
		{
			name: "enriched",
			steps: []step{
				{add: lEnrSyscall, open: 1},
				{add: lEnrEOE, want: []string{join(lEnrSyscall, lEnrEOE)}, open: 0},
			},
		},
		{
			name: "very long line",
			steps: []step{
				{add: lSyscall, open: 1},
				{add: `type=PATH msg=audit(1795958082.876:8): name="` + strings.Repeat("a", 1<<20) + `"`, open: 1},
				{add: lEOE, want: []string{join(lSyscall, `type=PATH msg=audit(1795958082.876:8): name="`+strings.Repeat("a", 1<<20)+`"`, lEOE)}, open: 0},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { runSteps(t, tt.o, tt.steps) })
	}
}

func TestGrouperGroupFields(t *testing.T) {
	g := NewGrouper(GrouperOptions{})
	now := time.Now()
	for _, l := range []string{lSyscall, lCwd, lPath, lTitle} {
		if out := g.Add([]byte(l), now); out != nil {
			t.Fatalf("Add(%q) = %v", l, out)
		}
	}
	out := g.Add([]byte(lEOE), now)
	if len(out) != 1 {
		t.Fatalf("got %d groups", len(out))
	}
	gr := out[0]
	if gr.Serial != 8 || !gr.Time.Equal(time.Unix(1795958082, 876e6)) {
		t.Errorf("stamp %d %v", gr.Serial, gr.Time)
	}
	var types []string
	for _, r := range gr.Records {
		types = append(types, r.Type)
	}
	if strings.Join(types, ",") != "SYSCALL,CWD,PATH,PROCTITLE,EOE" {
		t.Errorf("types %v", types)
	}
	if gr.Records[3].Fields.Get("proctitle") != "/usr/bin/bash -c cat /etc/shadow" || gr.Records[0].Fields.Get("key") != "fleet-test" {
		t.Errorf("fields %v %v", gr.Records[0].Fields, gr.Records[3].Fields)
	}
	// A record's Raw may be appended to without touching the next one.
	_ = append(gr.Records[0].Raw, 'X')
	if string(gr.Raw) != join(lSyscall, lCwd, lPath, lTitle, lEOE) {
		t.Errorf("Raw changed by an append to a record's Raw")
	}
}

// The Grouper must not keep the caller's line buffer.
func TestGrouperCopiesLines(t *testing.T) {
	g := NewGrouper(GrouperOptions{})
	buf := make([]byte, 0, 4096)
	now := time.Now()
	var got []Group
	for _, l := range []string{lSyscall, lUserLogin, lCwd, lGarbage, lEOE} {
		buf = append(buf[:0], l...)
		got = append(got, g.Add(buf, now)...)
		for i := range buf {
			buf[i] = '#'
		}
	}
	var raws []string
	for _, gr := range got {
		raws = append(raws, string(gr.Raw))
		for _, r := range gr.Records {
			for _, e := range r.Fields {
				if strings.Contains(e.Key+e.Value, "#") {
					t.Errorf("field %q=%q aliases the caller's buffer", e.Key, e.Value)
				}
			}
		}
	}
	want := []string{lUserLogin, lGarbage, join(lSyscall, lCwd, lEOE)}
	if strings.Join(raws, "\n--\n") != strings.Join(want, "\n--\n") {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(raws, "\n--\n"), strings.Join(want, "\n--\n"))
	}
}

// Open groups are recycled: a long run must neither leak nor mix groups.
func TestGrouperReuse(t *testing.T) {
	g := NewGrouper(GrouperOptions{MaxOpen: 4})
	now := time.Now()
	n := 0
	for i := 0; i < 10000; i++ {
		s1, s2 := uint64(2*i+1), uint64(2*i+2)
		lines := []string{
			sysLine(s1), sysLine(s2), cwdLine(s1), eoeLine(s2), eoeLine(s1),
		}
		for _, l := range lines {
			for _, gr := range g.Add([]byte(l), now) {
				checkGroup(t, gr)
				n++
				if len(gr.Records) != map[uint64]int{s1: 3, s2: 2}[gr.Serial] {
					t.Fatalf("group %d has %d records", gr.Serial, len(gr.Records))
				}
			}
		}
	}
	if n != 20000 || g.Open() != 0 || len(g.free) > 5 {
		t.Errorf("%d groups, %d open, %d free", n, g.Open(), len(g.free))
	}
}

func sysLine(serial uint64) string {
	return "type=SYSCALL msg=audit(1795958082.876:" + itoa(serial) + "): arch=c000003e syscall=257 success=yes exit=3 pid=42 uid=0 comm=\"bash\" exe=\"/usr/bin/bash\" key=(null)"
}
func cwdLine(serial uint64) string {
	return "type=CWD msg=audit(1795958082.876:" + itoa(serial) + "): cwd=\"/root\""
}
func eoeLine(serial uint64) string {
	return "type=EOE msg=audit(1795958082.876:" + itoa(serial) + "): "
}

func itoa(n uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}
