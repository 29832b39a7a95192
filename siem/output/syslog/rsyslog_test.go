package syslog_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/internal/rsyslogtest"
	"github.com/bud-ecosystem/budfleet/siem"
	"github.com/bud-ecosystem/budfleet/siem/output"
	"github.com/bud-ecosystem/budfleet/siem/output/syslog"
)

// Tests against a real rsyslogd (internal/rsyslogtest); they install
// rsyslog with scripts/ensure-rsyslog.sh when it is missing.

func loadTLS(t testing.TB, c output.TLSConfig) *tls.Config {
	t.Helper()
	cfg, err := c.Load()
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func goodTLS(t testing.TB, s *rsyslogtest.Server) *tls.Config {
	return loadTLS(t, output.TLSConfig{CAFile: s.CAFile, CertFile: s.ClientCertFile, KeyFile: s.ClientKeyFile, ServerName: "localhost"})
}

// auditEvent is event i: a two-record audit event whose fields include
// characters SD-PARAM values must escape.
func auditEvent(i int) siem.Event {
	ts := time.Unix(1700000000, int64(i)*1000).UTC()
	raw := fmt.Sprintf(`type=SYSCALL msg=audit(%d.%03d:%d): arch=c000003e syscall=257 success=yes exit=3 comm="cat" exe="/usr/bin/cat" key="fleet]\test"`+"\n"+
		`type=PATH msg=audit(%d.%03d:%d): item=0 name="/etc/shadow" é`, ts.Unix(), i%1000, i, ts.Unix(), i%1000, i)
	return siem.Event{
		Tag:    "audit",
		Source: "/var/log/audit/audit.log",
		Time:   ts,
		Raw:    []byte(raw),
		Fields: siem.FieldsOf(map[string]string{
			"type":    "SYSCALL",
			"serial":  strconv.Itoa(i),
			"exe":     "/usr/bin/cat",
			"comm":    `c"a\t]`,
			"key":     `fleet]\test`,
			"success": "yes",
		}),
	}
}

func events(n, from int) []siem.Event {
	out := make([]siem.Event, n)
	for i := range out {
		out[i] = auditEvent(from + i)
	}
	return out
}

// checkReceived checks that every serial in [0, n) arrived intact at least
// once and returns how many lines there were.
func checkReceived(t *testing.T, s *rsyslogtest.Server, input string, n int) {
	t.Helper()
	seen := make([]int, n)
	for _, r := range s.Records(t) {
		if r.Input != input {
			t.Fatalf("input %q, want %q", r.Input, input)
		}
		if r.MsgID != "audit" || r.Host != "gpu-7" || r.App != "budfleet-agent" {
			t.Fatalf("header: %+v", r)
		}
		sd, err := syslog.ParseStructuredData([]byte(r.SD))
		if err != nil {
			t.Fatalf("sd %q: %v", r.SD, err)
		}
		if len(sd) != 1 || sd[0].ID != syslog.DefaultSDID {
			t.Fatalf("sd %q", r.SD)
		}
		got := map[string]string{}
		for _, p := range sd[0].Params {
			got[p.Name] = p.Value
		}
		i, err := strconv.Atoi(got["serial"])
		if err != nil || i < 0 || i >= n {
			t.Fatalf("serial %q", got["serial"])
		}
		want := auditEvent(i)
		if fmt.Sprint(got) != fmt.Sprint(want.Fields.Map()) {
			t.Fatalf("fields %v, want %v", got, want.Fields.Map())
		}
		if string(r.Msg) != string(want.Raw) || !r.BOM {
			t.Fatalf("msg %q (BOM %v), want %q", r.Msg, r.BOM, want.Raw)
		}
		seen[i]++
	}
	for i, c := range seen {
		if c == 0 {
			t.Fatalf("event %d never arrived", i)
		}
	}
}

func newClient(t testing.TB, s *rsyslogtest.Server, cfg *tls.Config, mod func(*syslog.Config)) *syslog.Client {
	t.Helper()
	c := syslog.Config{Addr: s.TLSAddr, TLS: cfg, Format: syslog.Formatter{Hostname: "gpu-7"}}
	if mod != nil {
		mod(&c)
	}
	cl, err := syslog.New(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

func TestRsyslogTLS10000(t *testing.T) {
	s := rsyslogtest.Start(t, rsyslogtest.Options{})
	cl := newClient(t, s, goodTLS(t, s), nil)
	const n = 10000
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	all := events(n, 0)
	for i := 0; i < n; i += 1000 {
		if err := cl.Send(ctx, all[i:i+1000]); err != nil {
			t.Fatal(err)
		}
	}
	if err := cl.Close(); err != nil {
		t.Fatal(err)
	}
	s.WaitFor(t, n, 30*time.Second)
	checkReceived(t, s, "tls", n)
	if got := len(s.Received()); got != n {
		t.Fatalf("%d lines, want %d (syslog over one connection should not duplicate)", got, n)
	}
}

// TestRsyslogRestartBetweenBatches: the receiver restarts while the client
// idles; the client notices the close and reconnects instead of writing
// the next batch into the dead connection.
func TestRsyslogRestartBetweenBatches(t *testing.T) {
	s := rsyslogtest.Start(t, rsyslogtest.Options{})
	cl := newClient(t, s, goodTLS(t, s), nil)
	ctx := context.Background()
	if err := cl.Send(ctx, events(100, 0)); err != nil {
		t.Fatal(err)
	}
	s.WaitFor(t, 100, 10*time.Second)
	s.Restart()
	time.Sleep(100 * time.Millisecond) // let the client's reader see the close
	if err := cl.Send(ctx, events(100, 100)); err != nil {
		t.Fatal(err)
	}
	cl.Close()
	s.WaitFor(t, 200, 10*time.Second)
	checkReceived(t, s, "tls", 200)
}

func TestRsyslogConfirmEachBatch(t *testing.T) {
	s := rsyslogtest.Start(t, rsyslogtest.Options{})
	cl := newClient(t, s, goodTLS(t, s), func(c *syslog.Config) { c.ConfirmEachBatch = true })
	for i := 0; i < 5; i++ {
		if err := cl.Send(context.Background(), events(200, i*200)); err != nil {
			t.Fatal(err)
		}
		// Confirmed: rsyslog's input read the batch; it reaches the file
		// right after.
		s.WaitFor(t, (i+1)*200, 5*time.Second)
	}
	checkReceived(t, s, "tls", 1000)
}

func TestRsyslogBadTLS(t *testing.T) {
	s := rsyslogtest.Start(t, rsyslogtest.Options{BadTLS: true})
	cases := []struct {
		name string
		tls  output.TLSConfig
		want string
	}{
		{"client cert from another CA", output.TLSConfig{CAFile: s.CAFile, CertFile: s.ForeignClientCertFile, KeyFile: s.ForeignClientKeyFile},
			"the SIEM rejected our client certificate"},
		{"expired client cert", output.TLSConfig{CAFile: s.CAFile, CertFile: s.ExpiredClientCertFile, KeyFile: s.ExpiredClientKeyFile},
			"our client certificate (tls.cert_file) expired at"},
		{"no client cert", output.TLSConfig{CAFile: s.CAFile},
			"server asked for a client certificate: set tls.cert_file/key_file"},
		{"wrong CA file", output.TLSConfig{CAFile: s.OtherCAFile, CertFile: s.ClientCertFile, KeyFile: s.ClientKeyFile},
			"server certificate is signed by an unknown CA: check tls.ca_file"},
	}
	for _, tc := range cases {
		for _, maxVer := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
			t.Run(fmt.Sprintf("%s/TLS1.%d", tc.name, maxVer-tls.VersionTLS10), func(t *testing.T) {
				cfg := loadTLS(t, tc.tls)
				cfg.MaxVersion = maxVer
				cl := newClient(t, s, cfg, nil)
				err := cl.Send(context.Background(), events(10, 0))
				if err == nil {
					t.Fatal("Send succeeded")
				}
				desc := output.DescribeTLSError(err)
				t.Logf("error: %v\n  described: %s", err, desc)
				if !strings.Contains(desc, tc.want) {
					t.Fatalf("described as %q, want it to say %q", desc, tc.want)
				}
			})
		}
	}
	// A marker sent with good credentials after every refused client:
	// once it is in, what the refused ones might have got through is too.
	marker := siem.Event{Tag: "audit", Time: time.Unix(1700000000, 0), Raw: []byte("marker after the refused clients")}
	good := newClient(t, s, goodTLS(t, s), nil)
	if err := good.Send(context.Background(), []siem.Event{marker}); err != nil {
		t.Fatal(err)
	}
	good.Close()
	if got := s.WaitFor(t, 1, 10*time.Second); len(got) != 1 || !strings.Contains(got[0], string(marker.Raw)) {
		t.Fatalf("rsyslog received %d messages, want only the marker: %q", len(got), got)
	}
}

// auditLine is a single audit record without parsed fields, like the
// lines RECIPES measured rsyslog's own forwarder with.
func auditLine(i int) siem.Event {
	return siem.Event{Tag: "audit", Time: time.Unix(1700000000, int64(i)), Raw: []byte(fmt.Sprintf(
		`type=SYSCALL msg=audit(1700000000.%03d:%d): arch=c000003e syscall=257 success=yes exit=3 a0=ffffff9c a1=7ffd9 a2=0 a3=0 items=1 ppid=1 pid=2 auid=1000 uid=0 gid=0 euid=0 tty=pts0 ses=1 comm="cat" exe="/usr/bin/cat" key="fleet"`, i%1000, i))}
}

// BenchmarkSyslogRsyslog sends b.N events to a real rsyslogd over TLS and
// waits until all are in received.log. events/s counts to the last line
// written; sent/s to the last Send returning. cpu-s/Mevents are this
// process's and rsyslogd's CPU seconds per million events.
func BenchmarkSyslogRsyslog(b *testing.B) {
	for _, shape := range []struct {
		name string
		ev   func(int) siem.Event
	}{{"line", auditLine}, {"event+sd", auditEvent}} {
		b.Run(shape.name, func(b *testing.B) {
			s := rsyslogtest.Start(b, rsyslogtest.Options{})
			cl := newClient(b, s, goodTLS(b, s), nil)
			const batch = 2000
			evs := make([]siem.Event, batch)
			for i := range evs {
				evs[i] = shape.ev(i)
			}
			ctx := context.Background()
			if err := cl.Send(ctx, evs[:1]); err != nil { // connect
				b.Fatal(err)
			}
			s.WaitFor(b, 1, 10*time.Second)
			self0, rs0 := rsyslogtest.CPUTime(os.Getpid()), s.CPUTime()
			b.ResetTimer()
			start := time.Now()
			for sent := 0; sent < b.N; sent += batch {
				if err := cl.Send(ctx, evs[:min(batch, b.N-sent)]); err != nil {
					b.Fatal(err)
				}
			}
			sendDone := time.Since(start)
			s.WaitFor(b, b.N+1, 5*time.Minute)
			total := time.Since(start)
			b.StopTimer()
			self, rs := rsyslogtest.CPUTime(os.Getpid())-self0, s.CPUTime()-rs0
			b.ReportMetric(float64(b.N)/total.Seconds(), "events/s")
			b.ReportMetric(float64(b.N)/sendDone.Seconds(), "sent/s")
			b.ReportMetric(self.Seconds()/float64(b.N)*1e6, "client-cpu-s/Mevents")
			b.ReportMetric(rs.Seconds()/float64(b.N)*1e6, "rsyslogd-cpu-s/Mevents")
		})
	}
}
