package relp_test

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
	"github.com/bud-ecosystem/budfleet/internal/tcpvalve"
	"github.com/bud-ecosystem/budfleet/siem"
	"github.com/bud-ecosystem/budfleet/siem/output"
	"github.com/bud-ecosystem/budfleet/siem/output/relp"
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
// once; it returns the number of duplicates.
func checkReceived(t *testing.T, s *rsyslogtest.Server, n int) int {
	t.Helper()
	seen := make([]int, n)
	dups := 0
	for _, r := range s.Records(t) {
		if r.Input != "relp" || r.MsgID != "audit" || r.Host != "gpu-7" || r.App != "budfleet-agent" {
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
		if seen[i] > 0 {
			dups++
		}
		seen[i]++
	}
	for i, c := range seen {
		if c == 0 {
			t.Fatalf("event %d never arrived", i)
		}
	}
	return dups
}

func newClient(t testing.TB, s *rsyslogtest.Server, cfg *tls.Config, mod func(*relp.Config)) *relp.Client {
	t.Helper()
	c := relp.Config{Addr: s.RELPAddr, TLS: cfg, Format: syslog.Formatter{Hostname: "gpu-7"}}
	if mod != nil {
		mod(&c)
	}
	cl, err := relp.New(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

func TestRsyslogRELP10000(t *testing.T) {
	s := rsyslogtest.Start(t, rsyslogtest.Options{})
	cl := newClient(t, s, goodTLS(t, s), nil)
	const n = 10000
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := cl.Send(ctx, events(n, 0)); err != nil {
		t.Fatal(err)
	}
	if err := cl.Close(); err != nil {
		t.Fatal(err)
	}
	s.WaitFor(t, n, 30*time.Second)
	if dups := checkReceived(t, s, n); dups != 0 {
		t.Fatalf("%d duplicates without any failure", dups)
	}
}

// holdBytes is how much of a batch's stream reaches rsyslog before the
// valve holds the rest: about 2,000 of the tests' audit events.
const holdBytes = 1 << 20

// viaValve points the client at a valve in front of rsyslog's RELP port.
func viaValve(v *tcpvalve.Valve) func(*relp.Config) {
	return func(c *relp.Config) { c.Addr = v.Addr }
}

// TestRsyslogRELPStoppedMidBatch stops rsyslog while a batch is in flight:
// Send must fail; after a restart the resent batch arrives whole
// (duplicates allowed, nothing lost). The batch's first MiB reaches rsyslog
// and the valve holds the rest, so the stop always lands mid-batch
// (unheld, a fast machine had all 50,000 acknowledged before the stop).
func TestRsyslogRELPStoppedMidBatch(t *testing.T) {
	s := rsyslogtest.Start(t, rsyslogtest.Options{})
	v := tcpvalve.Start(t, s.RELPAddr)
	cl := newClient(t, s, goodTLS(t, s), viaValve(v))
	const n = 50000
	batch := events(n, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	held := v.HoldAfter(holdBytes)
	errc := make(chan error, 1)
	go func() { errc <- cl.Send(ctx, batch) }()
	select {
	case <-held:
	case err := <-errc:
		t.Fatalf("Send returned (%v) before %d bytes were sent", err, holdBytes)
	}
	s.WaitFor(t, 1000, 30*time.Second)
	s.Stop()
	v.Open()
	err := <-errc
	if err == nil {
		t.Fatalf("Send succeeded although rsyslog was stopped after %d of %d messages", s.Count(), n)
	}
	before := s.Count()
	t.Logf("Send failed after rsyslog stopped (%d messages written): %v", before, err)
	if before >= n {
		t.Fatalf("rsyslog wrote all %d messages before it stopped; make the batch larger", before)
	}

	// While the SIEM is down, Send fails fast.
	if err := cl.Send(ctx, batch[:10]); err == nil {
		t.Fatal("Send succeeded while rsyslog is down")
	} else {
		t.Logf("while down: %v", err)
	}

	s.Restart()
	if err := cl.Send(ctx, batch); err != nil {
		t.Fatal(err)
	}
	cl.Close()
	s.WaitFor(t, n, time.Minute)
	dups := checkReceived(t, s, n)
	t.Logf("%d lines, %d duplicates, all %d events present", len(s.Received()), dups, n)
}

func TestRsyslogRELPBadTLS(t *testing.T) {
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
				// rsyslog never answers a client with an expired
				// certificate; a short dial timeout keeps the test quick.
				cl := newClient(t, s, cfg, func(c *relp.Config) { c.DialTimeout = 2 * time.Second })
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

func auditLine(i int) siem.Event {
	return siem.Event{Tag: "audit", Time: time.Unix(1700000000, int64(i)), Raw: []byte(fmt.Sprintf(
		`type=SYSCALL msg=audit(1700000000.%03d:%d): arch=c000003e syscall=257 success=yes exit=3 a0=ffffff9c a1=7ffd9 a2=0 a3=0 items=1 ppid=1 pid=2 auid=1000 uid=0 gid=0 euid=0 tty=pts0 ses=1 comm="cat" exe="/usr/bin/cat" key="fleet"`, i%1000, i))}
}

// BenchmarkRELPRsyslog sends b.N events to a real rsyslogd over RELP/TLS.
// acked/s counts to the last Send returning (every message acknowledged),
// events/s to the last line in received.log.
func BenchmarkRELPRsyslog(b *testing.B) {
	for _, shape := range []struct {
		name   string
		ev     func(int) siem.Event
		window int
	}{{"line", auditLine, 0}, {"event+sd", auditEvent, 0}, {"line/window128", auditLine, 128}} {
		b.Run(shape.name, func(b *testing.B) {
			s := rsyslogtest.Start(b, rsyslogtest.Options{})
			cl := newClient(b, s, goodTLS(b, s), func(c *relp.Config) { c.Window = shape.window })
			const batch = 20000
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
			acked := time.Since(start)
			s.WaitFor(b, b.N+1, 5*time.Minute)
			total := time.Since(start)
			b.StopTimer()
			self, rs := rsyslogtest.CPUTime(os.Getpid())-self0, s.CPUTime()-rs0
			b.ReportMetric(float64(b.N)/acked.Seconds(), "acked/s")
			b.ReportMetric(float64(b.N)/total.Seconds(), "events/s")
			b.ReportMetric(self.Seconds()/float64(b.N)*1e6, "client-cpu-s/Mevents")
			b.ReportMetric(rs.Seconds()/float64(b.N)*1e6, "rsyslogd-cpu-s/Mevents")
		})
	}
}

// TestRsyslogRELPPipelineStoppedMidWindow keeps several batches in flight
// (Start) and stops rsyslog meanwhile: the batches acknowledged are a
// prefix of those started, and resending from the first one that failed
// after a restart loses nothing, with duplicates bounded by the window
// (plus the acknowledged part of the first failed batch).
func TestRsyslogRELPPipelineStoppedMidWindow(t *testing.T) {
	s := rsyslogtest.Start(t, rsyslogtest.Options{})
	const window, size, batches = 2000, 500, 100
	v := tcpvalve.Start(t, s.RELPAddr)
	cl := newClient(t, s, goodTLS(t, s), func(c *relp.Config) { c.Window = window; c.Addr = v.Addr })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	all := events(size*batches, 0)
	var started []output.Pending
	held := v.HoldAfter(holdBytes)
	stopped := make(chan struct{})
	go func() {
		<-held
		s.WaitFor(t, 1000, 30*time.Second)
		s.Stop()
		v.Open()
		close(stopped)
	}()
	for i := range batches {
		p, err := cl.Start(ctx, all[i*size:(i+1)*size])
		if err != nil {
			t.Logf("Start of batch %d failed: %v", i, err)
			break
		}
		started = append(started, p)
	}
	<-stopped
	firstFailed := len(started)
	for i, p := range started {
		select {
		case <-p.Done():
		case <-ctx.Done():
			t.Fatalf("batch %d never resolved", i)
		}
		if p.Err() != nil && firstFailed == len(started) {
			firstFailed = i
			t.Logf("batch %d failed: %v", i, p.Err())
		}
		if p.Err() == nil && i > firstFailed {
			t.Fatalf("batch %d acknowledged after batch %d failed", i, firstFailed)
		}
	}
	if firstFailed == batches {
		t.Fatalf("every batch acknowledged although rsyslog was stopped after %d messages", s.Count())
	}
	s.Restart()
	if err := cl.Send(ctx, all[firstFailed*size:]); err != nil {
		t.Fatal(err)
	}
	cl.Close()
	s.WaitFor(t, len(all), time.Minute)
	dups := checkReceived(t, s, len(all))
	t.Logf("%d batches acknowledged before the stop, %d duplicates, all %d events present", firstFailed, dups, len(all))
	if dups > window+size {
		t.Fatalf("%d duplicates, more than the window (%d) and a batch (%d)", dups, window, size)
	}
}
