package rsyslogtest

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

func clientTLS(t *testing.T, s *Server) *tls.Config {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(s.ClientCertFile, s.ClientKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(s.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, ServerName: "localhost"}
}

// sendRaw sends RFC 5425 frames over TLS and closes the orderly way.
func sendRaw(t *testing.T, s *Server, msgs ...string) {
	t.Helper()
	c, err := tls.Dial("tcp", s.TLSAddr, clientTLS(t, s))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, m := range msgs {
		if _, err := fmt.Fprintf(c, "%d %s", len(m), m); err != nil {
			t.Fatal(err)
		}
	}
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("read after close: %d, %v", n, err)
	}
}

// TestReceivedRecoversMessages: what rsyslog writes to received.log gives
// back the exact message, control characters, quotes, "#012" text and
// bytes that are not UTF-8 included.
func TestReceivedRecoversMessages(t *testing.T) {
	s := Start(t, Options{})
	msgs := []struct {
		wire    string
		sd, msg string
		bom     bool
	}{
		{"<86>1 2024-01-02T03:04:05.000000Z gpu-7 agent - audit [a@32473 k=\"v \\\" \\\\ \\] x/\"] \xEF\xBB\xBFhello\nworld \"q\" \\ / \t é #012 \x01",
			`[a@32473 k="v \" \\ \] x/"]`, "hello\nworld \"q\" \\ / \t é #012 \x01", true},
		{"<86>1 - gpu-7 agent - raw - bad\xff\xfeutf8\r\n\x1b[0m", "-", "bad\xff\xfeutf8\r\n\x1b[0m", false},
		{"<86>1 - gpu-7 agent - raw - 𝄞 \u2028", "-", "𝄞 \u2028", false},
	}
	var wire []string
	for _, m := range msgs {
		wire = append(wire, m.wire)
	}
	sendRaw(t, s, wire...)
	s.WaitFor(t, len(msgs), 10*time.Second)
	recs := s.Records(t)
	for i, r := range recs {
		want := msgs[i]
		if r.Input != "tls" || r.Host != "gpu-7" || r.App != "agent" {
			t.Errorf("%d: header %+v", i, r)
		}
		if r.SD != want.sd || string(r.Msg) != want.msg || r.BOM != want.bom {
			t.Errorf("%d: got sd %q msg %q bom %v, want %q %q %v\nline %q", i, r.SD, r.Msg, r.BOM, want.sd, want.msg, want.bom, r.RawLine)
		}
	}
}

func TestStopRestart(t *testing.T) {
	s := Start(t, Options{})
	sendRaw(t, s, "<86>1 - h a - one - first")
	s.WaitFor(t, 1, 10*time.Second)
	s.Stop()
	if s.Running() {
		t.Fatal("running after Stop")
	}
	if c, err := net.DialTimeout("tcp", s.TLSAddr, time.Second); err == nil {
		c.Close()
		t.Fatal("TLS port still accepts after Stop")
	}
	s.Stop() // no-op
	s.Restart()
	sendRaw(t, s, "<86>1 - h a - two - second")
	lines := s.WaitFor(t, 2, 10*time.Second)
	if !strings.Contains(lines[0], "msgid=one") || !strings.Contains(lines[1], "msgid=two") {
		t.Fatalf("lines %q", lines)
	}
	if s.Count() != 2 {
		t.Fatalf("Count %d", s.Count())
	}
}

func TestBadTLSFixtures(t *testing.T) {
	dir := t.TempDir()
	fx, err := WriteFixtures(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	load := func(f string) *x509.Certificate {
		t.Helper()
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(b)
		if blk == nil || blk.Type != "CERTIFICATE" {
			t.Fatalf("%s: no certificate", f)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		return c
	}
	ca, other := load(fx.CAFile), load(fx.OtherCAFile)
	if err := load(fx.ClientCertFile).CheckSignatureFrom(ca); err != nil {
		t.Fatal(err)
	}
	if err := load(fx.ForeignClientCertFile).CheckSignatureFrom(other); err != nil {
		t.Fatal(err)
	}
	exp := load(fx.ExpiredClientCertFile)
	if err := exp.CheckSignatureFrom(ca); err != nil || !time.Now().After(exp.NotAfter) {
		t.Fatalf("expired cert: %v, NotAfter %v", err, exp.NotAfter)
	}
	srv := load(fx.ServerCertFile)
	if err := srv.VerifyHostname("127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	if err := srv.VerifyHostname("localhost"); err != nil {
		t.Fatal(err)
	}
	for _, pair := range [][2]string{{fx.ClientCertFile, fx.ClientKeyFile}, {fx.ServerCertFile, fx.ServerKeyFile}, {fx.ForeignClientCertFile, fx.ForeignClientKeyFile}, {fx.ExpiredClientCertFile, fx.ExpiredClientKeyFile}} {
		if _, err := tls.LoadX509KeyPair(pair[0], pair[1]); err != nil {
			t.Fatal(err)
		}
	}
}

func TestParseLine(t *testing.T) {
	cases := []struct {
		line string
		want Record
		err  bool
	}{
		{`relp host=h app=a msgid=m sd="-" msg="x"`, Record{Input: "relp", Host: "h", App: "a", MsgID: "m", SD: "-", Msg: []byte("x")}, false},
		{`tls host=h app=a msgid=m sd="[x@1 a=\"b\\\"\\]\"]" msg="\ufeffq\n\u00e9\ud834\udd1e\/\t\"\\ \u0001"`,
			Record{Input: "tls", Host: "h", App: "a", MsgID: "m", SD: `[x@1 a="b\"\]"]`, Msg: []byte("q\né𝄞/\t\"\\ \x01"), BOM: true}, false},
		{"tls host=h app=a msgid=m sd=\"-\" msg=\"\xff\xfe\"", Record{Input: "tls", Host: "h", App: "a", MsgID: "m", SD: "-", Msg: []byte("\xff\xfe")}, false},
		{`tls host=h app=a msgid=m sd="-" msg="unterminated`, Record{}, true},
		{`tls host=h app=a msgid=m sd="-" msg="x" extra`, Record{}, true},
		{`tls host=h app=a sd="-" msg="x"`, Record{}, true},
		{`tls host=h app=a msgid=m sd="-" msg="\x"`, Record{}, true},
		{`tls host=h app=a msgid=m sd="-" msg="\u12"`, Record{}, true},
	}
	for _, tc := range cases {
		got, err := ParseLine(tc.line)
		if tc.err {
			if err == nil {
				t.Errorf("%q: no error", tc.line)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.line, err)
			continue
		}
		got.RawLine = ""
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%q:\n got %+v (msg %q)\nwant %+v (msg %q)", tc.line, got, got.Msg, tc.want, tc.want.Msg)
		}
	}
}
