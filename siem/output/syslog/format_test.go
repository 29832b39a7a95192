package syslog

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/bud-ecosystem/budfleet/siem"
)

func TestFormatGolden(t *testing.T) {
	ev := siem.Event{
		Tag:  "audit",
		Time: time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.FixedZone("x", 3600)),
		Raw:  []byte("type=SYSCALL msg=audit(1:2): comm=\"ls\""),
		Fields: siem.FieldsOf(map[string]string{
			"type":                               "SYSCALL",
			"comm":                               `a"b\c]d`,
			"auid":                               "1000",
			"bad name":                           "x",     // space: sanitized to bad_name
			"k=v":                                "y",     // '=': sanitized to k_v
			"type ":                              "dup",   // sanitized to "type_"
			"":                                   "empty", // dropped
			"bin\xff":                            "bad\xffval",
			"comm]":                              "z", // comm_ ... unique, kept
			"auid\"":                             "q", // auid_
			"auid_":                              "valid wins",
			"0123456789012345678901234567890123": "long", // cut to 32
		}),
	}
	got := string(Format(ev, "gpu 7", "budfleet-agent"))
	want := `<86>1 2024-05-06T06:08:09.123456Z gpu_7 budfleet-agent - audit [audit@32473 ` +
		`auid="1000" auid_="valid wins" comm="a\"b\\c\]d" type="SYSCALL" ` +
		`01234567890123456789012345678901="long" bad_name="x" bin_="bad` + "\uFFFD" + `val" comm_="z" k_v="y" type_="dup"] ` +
		"\xEF\xBB\xBFtype=SYSCALL msg=audit(1:2): comm=\"ls\""
	if got != want {
		t.Fatalf("got\n%q\nwant\n%q", got, want)
	}
	m, err := Parse([]byte(got))
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := m.Param(DefaultSDID, "comm"); v != `a"b\c]d` {
		t.Fatalf("comm %q", v)
	}
	if ts, err := m.Time(); err != nil || !ts.Equal(ev.Time.Truncate(time.Microsecond)) {
		t.Fatalf("time %v %v", ts, err)
	}
}

func TestFormatVariants(t *testing.T) {
	cases := []struct {
		name string
		f    Formatter
		ev   siem.Event
		want string
	}{
		{"nil everything", Formatter{}, siem.Event{}, "<86>1 - - - - - -"},
		{"invalid utf8 without BOM", Formatter{Hostname: "h", AppName: "a"}, siem.Event{Tag: "raw", Raw: []byte("a\xffb")}, "<86>1 - h a - raw - a\xffb"},
		{"priority and procid", Formatter{Hostname: "h", AppName: "a", ProcID: "42", Priority: 13*8 + 5}, siem.Event{Tag: "t", Raw: []byte("x")}, "<109>1 - h a 42 t - \xEF\xBB\xBFx"},
		{"priority out of range", Formatter{Hostname: "h", AppName: "a", Priority: 192}, siem.Event{Tag: "t"}, "<86>1 - h a - t -"},
		{"custom SD-ID", Formatter{Hostname: "h", AppName: "a", SDID: "x@1"}, siem.Event{Fields: siem.FieldsOf(map[string]string{"k": "v"})}, `<86>1 - h a - - [x@1 k="v"]`},
		{"long tag cut", Formatter{Hostname: "h", AppName: "a"}, siem.Event{Tag: strings.Repeat("t", 40)}, "<86>1 - h a - " + strings.Repeat("t", 32) + " -"},
		{"year out of range", Formatter{Hostname: "h", AppName: "a"}, siem.Event{Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}, "<86>1 - h a - - -"},
		{"newline in raw", Formatter{Hostname: "h", AppName: "a"}, siem.Event{Tag: "audit", Raw: []byte("one\ntwo")}, "<86>1 - h a - audit - \xEF\xBB\xBFone\ntwo"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := string(tc.f.Append(nil, tc.ev))
			if got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
			if _, err := Parse([]byte(got)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	for _, in := range []string{
		"", "86>1", "<>1 - - - - - -", "<1000>1 - - - - - -", "<192>1 - - - - - -", "<86>2 - - - - - -",
		"<86>1 - - - - -", "<86>1 - h a - t [", "<86>1 - h a - t [x", `<86>1 - h a - t [x k="v]`,
		`<86>1 - h a - t [x k="v"`, `<86>1 - h a - t [x k=v]`, `<86>1 - h a - t [x k="v"]x`,
		"<86>1 - h a - t [x k=\"\xff\"]", "<86>1 - h\x01 a - t -",
	} {
		if _, err := Parse([]byte(in)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%q: %v", in, err)
		}
	}
}

func TestParseFrame(t *testing.T) {
	in := "5 hello3 abc1 \n"
	r := bufio.NewReader(strings.NewReader(in))
	for _, want := range []string{"hello", "abc", "\n"} {
		got, err := ParseFrame(r)
		if err != nil || string(got) != want {
			t.Fatalf("got %q %v, want %q", got, err, want)
		}
	}
	if _, err := ParseFrame(r); err != io.EOF {
		t.Fatalf("at end: %v", err)
	}
	for in, want := range map[string]error{
		"5 hel":       io.ErrUnexpectedEOF,
		"12":          io.ErrUnexpectedEOF,
		"05 hello":    ErrBadFrame,
		" hello":      ErrBadFrame,
		"5x hello":    ErrBadFrame,
		"99999999 x":  ErrBadFrame,
		"-1 x":        ErrBadFrame,
		"0 ":          ErrBadFrame,
		"16777216 xx": io.ErrUnexpectedEOF,
	} {
		_, err := ParseFrame(bufio.NewReader(strings.NewReader(in)))
		if !errors.Is(err, want) {
			t.Errorf("%q: %v, want %v", in, err, want)
		}
	}
	if got := string(AppendFrame([]byte("x"), []byte("hello"))); got != "x5 hello" {
		t.Fatal(got)
	}
}

func FuzzParseFrame(f *testing.F) {
	for _, s := range []string{"5 hello", "5 hello3 abc", "0 ", "05 x", "1", "16777216 a", "99999999999999999999 a", "3 \xff\xfe\x00", ""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		src := bytes.NewReader(data)
		r := bufio.NewReaderSize(src, 16)
		consumed := 0
		for {
			msg, err := ParseFrame(r)
			if err != nil {
				if err != io.EOF && err != io.ErrUnexpectedEOF && !errors.Is(err, ErrBadFrame) {
					t.Fatalf("unexpected error type: %v", err)
				}
				return
			}
			if len(msg) > MaxFrameLen {
				t.Fatalf("frame of %d bytes", len(msg))
			}
			end := len(data) - src.Len() - r.Buffered()
			if got := AppendFrame(nil, msg); !bytes.Equal(got, data[consumed:end]) {
				t.Fatalf("frame %q re-encodes as %q", data[consumed:end], got)
			}
			consumed = end
		}
	})
}

// FuzzFormatRoundTrip: Format -> AppendFrame -> ParseFrame -> Parse gives
// back Raw exactly and every field whose name is a valid SD-NAME with its
// (UTF-8) value; the message is always valid RFC 5424.
func FuzzFormatRoundTrip(f *testing.F) {
	f.Add("audit", "gpu-7", "budfleet-agent", []byte("type=SYSCALL msg=audit(1:2): x"), "type", "SYSCALL", "comm", `a"]\`, "bad name", "v", int64(1700000000123456789))
	f.Add("", "", "", []byte{}, "", "", "=", "", "k", "\xff", int64(0))
	f.Add("t a g", "h\x00st", "\xff", []byte("a\xffb\nc"), "x]", "]", "x_", "dup", "0123456789012345678901234567890123", "long", int64(-62135596800000000))
	f.Fuzz(func(t *testing.T, tag, host, app string, raw []byte, k1, v1, k2, v2, k3, v3 string, nanos int64) {
		ev := siem.Event{Tag: tag, Raw: raw, Time: time.Unix(0, nanos)}
		if nanos == 0 {
			ev.Time = time.Time{}
		}
		fields := map[string]string{}
		for _, kv := range [][2]string{{k1, v1}, {k2, v2}, {k3, v3}} {
			fields[kv[0]] = kv[1]
		}
		ev.Fields = siem.FieldsOf(fields)
		msg := Format(ev, host, app)
		framed := AppendFrame(nil, msg)
		got, err := ParseFrame(bufio.NewReader(bytes.NewReader(framed)))
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("frame round trip: %v", err)
		}
		m, err := Parse(got)
		if err != nil {
			t.Fatalf("Parse(%q): %v", got, err)
		}
		if !bytes.Equal(m.Msg, raw) {
			t.Fatalf("MSG %q, want %q", m.Msg, raw)
		}
		if m.BOM != (len(raw) > 0 && utf8.Valid(raw)) {
			t.Fatalf("BOM %v for %q", m.BOM, raw)
		}
		if m.Priority != DefaultPriority || m.AppName == "" || m.Hostname == "" || m.MsgID == "" {
			t.Fatalf("header %+v", m)
		}
		if tag != "" && len(tag) <= 32 && isPrintUSASCII(tag) && m.MsgID != tag {
			t.Fatalf("MSGID %q, want %q", m.MsgID, tag)
		}
		if !ev.Time.IsZero() && m.Timestamp != NilValue {
			ts, err := m.Time()
			if err != nil || !ts.Equal(ev.Time.Truncate(time.Microsecond)) {
				t.Fatalf("time %q: %v, want %v", m.Timestamp, err, ev.Time)
			}
		}
		params := map[string]string{}
		if len(m.SD) > 1 || len(m.SD) == 1 && m.SD[0].ID != DefaultSDID {
			t.Fatalf("SD %+v", m.SD)
		}
		if len(m.SD) == 1 {
			for _, p := range m.SD[0].Params {
				if !ValidSDName(p.Name) {
					t.Fatalf("param name %q", p.Name)
				}
				if _, dup := params[p.Name]; dup {
					t.Fatalf("param %q twice", p.Name)
				}
				params[p.Name] = p.Value
			}
		}
		for k, v := range fields {
			if !ValidSDName(k) {
				continue
			}
			want := v
			if !utf8.ValidString(v) {
				want = strings.ToValidUTF8(v, "\uFFFD")
			}
			if got, ok := params[k]; !ok || got != want {
				t.Fatalf("field %q: got %q (present %v), want %q", k, got, ok, want)
			}
		}
	})
}

func isPrintUSASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if !printUSASCII(s[i]) {
			return false
		}
	}
	return true
}

func BenchmarkFormat(b *testing.B) {
	ev := siem.Event{
		Tag:    "audit",
		Time:   time.Now(),
		Raw:    []byte(`type=SYSCALL msg=audit(1700000000.123:4567): arch=c000003e syscall=257 success=yes exit=3 a0=ffffff9c a1=7ffd items=1 ppid=1 pid=2 auid=1000 uid=0 comm="cat" exe="/usr/bin/cat" key="fleet"`),
		Fields: siem.FieldsOf(map[string]string{"type": "SYSCALL", "serial": "4567", "auid": "1000", "uid": "0", "comm": "cat", "exe": "/usr/bin/cat", "key": "fleet", "success": "yes"}),
	}
	f := Formatter{Hostname: "gpu-7", AppName: "budfleet-agent"}
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		buf = f.Append(buf[:0], ev)
	}
	b.SetBytes(int64(len(buf)))
}

// TestAppendFrame checks the frames Send writes against AppendFrame of the
// formatted message, for lengths whose LEN has more, then fewer, digits
// than the frame before.
func TestAppendFrame(t *testing.T) {
	f := Formatter{Hostname: "h", AppName: "a"}
	var out, want []byte
	digits := 0
	for _, n := range []int{0, 1, 5, 20, 80, 1000, 3, 20000, 0, 900, 899, 901, 9000, 50, 1 << 20, 2} {
		ev := siem.Event{Tag: "t", Raw: bytes.Repeat([]byte{'x'}, n), Fields: siem.Fields{{Key: "k", Value: strings.Repeat("]", n%7)}}}
		out = f.appendFrame(out, ev, &digits)
		want = AppendFrame(want, Format(ev, "h", "a"))
		if !bytes.Equal(out, want) {
			t.Fatalf("after Raw of %d bytes: frames differ", n)
		}
	}
}
