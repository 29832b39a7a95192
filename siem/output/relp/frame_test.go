package relp

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestReadFrame(t *testing.T) {
	in := "1 rsp 6 200 OK\n0 serverclose 0\n999999999 syslog 3 a\nb\n"
	r := bufio.NewReader(strings.NewReader(in))
	want := []Frame{{1, "rsp", []byte("200 OK")}, {0, "serverclose", nil}, {999999999, "syslog", []byte("a\nb")}}
	for _, w := range want {
		f, err := ReadFrame(r)
		if err != nil || f.Txnr != w.Txnr || f.Command != w.Command || !bytes.Equal(f.Data, w.Data) {
			t.Fatalf("got %+v %v, want %+v", f, err, w)
		}
		if got := string(AppendFrame(nil, f)); !strings.Contains(in, got) {
			t.Fatalf("re-encoded %q", got)
		}
	}
	if _, err := ReadFrame(r); err != io.EOF {
		t.Fatalf("at end: %v", err)
	}
	for in, want := range map[string]error{
		"1 rsp 6 200 OK":                        io.ErrUnexpectedEOF,
		"1 rsp 6 200":                           io.ErrUnexpectedEOF,
		"1 rsp":                                 io.ErrUnexpectedEOF,
		"1":                                     io.ErrUnexpectedEOF,
		"1000000000 rsp 0\n":                    ErrBadFrame, // 10 digits
		"1 rsp 1000000000 x\n":                  ErrBadFrame,
		"1 rsp 131073 x\n":                      ErrBadFrame, // over 128 KiB
		"1 rsp 6 200 OKX":                       ErrBadFrame, // trailer
		"1 rsp 0 \n":                            ErrBadFrame, // SP after DATALEN 0
		"1 rsp 1\nx\n":                          ErrBadFrame,
		"1  rsp 0\n":                            ErrBadFrame,
		"1 rs_p 0\n":                            ErrBadFrame,
		"1 " + strings.Repeat("a", 33) + " 0\n": ErrBadFrame,
		" 1 rsp 0\n":                            ErrBadFrame,
		"x rsp 0\n":                             ErrBadFrame,
		"1 rsp x\n":                             ErrBadFrame,
		"1\trsp 0\n":                            ErrBadFrame,
		"1 rsp 0":                               io.ErrUnexpectedEOF,
	} {
		_, err := ReadFrame(bufio.NewReader(strings.NewReader(in)))
		if !errors.Is(err, want) {
			t.Errorf("%q: %v, want %v", in, err, want)
		}
	}
	// The limit is a parameter.
	if _, err := ReadFrameLimit(bufio.NewReader(strings.NewReader("1 rsp 3 abc\n")), 2); !errors.Is(err, ErrBadFrame) {
		t.Fatal(err)
	}
}

func TestRspCode(t *testing.T) {
	for in, want := range map[string]int{"200 OK": 200, "200": 200, "200\nx": 200, "500 error": 500, "20": -1, "2000": -1, "abc": -1, "": -1} {
		if got := rspCode([]byte(in)); got != want {
			t.Errorf("%q: %d, want %d", in, got, want)
		}
	}
}

func FuzzReadFrame(f *testing.F) {
	for _, s := range []string{
		"1 rsp 6 200 OK\n", "0 serverclose 0\n", "2 syslog 5 hello\n3 syslog 1 x\n", "1 rsp 0 \n",
		"999999999 open 85 relp_version=0\nrelp_software=librelp,1.11.0,http://librelp.adiscon.com\ncommands=syslog\n",
		"1234567890 rsp 0\n", "1 rsp 131072 ", "1 rsp 6 200 OK",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		src := bytes.NewReader(data)
		r := bufio.NewReaderSize(src, 16)
		consumed := 0
		for {
			fr, err := ReadFrame(r)
			if err != nil {
				if err != io.EOF && err != io.ErrUnexpectedEOF && !errors.Is(err, ErrBadFrame) {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if fr.Txnr < 0 || fr.Txnr > MaxTxnr || len(fr.Data) > DefaultMaxDataLen || fr.Command == "" || len(fr.Command) > MaxCommandLen {
				t.Fatalf("frame out of bounds: %d %q %d", fr.Txnr, fr.Command, len(fr.Data))
			}
			end := len(data) - src.Len() - r.Buffered()
			raw := data[consumed:end]
			// Leading zeros in numbers are accepted but not re-encoded;
			// compare the frame parsed again from its canonical form.
			again, err := ReadFrame(bufio.NewReader(bytes.NewReader(AppendFrame(nil, fr))))
			if err != nil || again.Txnr != fr.Txnr || again.Command != fr.Command || !bytes.Equal(again.Data, fr.Data) {
				t.Fatalf("frame %q does not survive re-encoding: %+v %v", raw, again, err)
			}
			if raw[len(raw)-1] != '\n' {
				t.Fatalf("frame %q does not end in LF", raw)
			}
			consumed = end
		}
	})
}
