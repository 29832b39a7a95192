package forward

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/internal/rsyslogtest"
	"github.com/bud-ecosystem/budfleet/siem"
)

// The whole path against the real peer: a file is tailed, spooled and sent
// to rsyslog over TLS syslog and RELP; every line arrives.
func TestForwardToRsyslog(t *testing.T) {
	rs := rsyslogtest.Start(t, rsyslogtest.Options{})
	dir := t.TempDir()
	logPath := filepath.Join(dir, "app.log")
	const n = 5000
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		fmt.Fprintf(f, "line %06d hello\n", i)
	}
	f.Close()

	tls := siem.TLSConfig{CAFile: rs.CAFile, CertFile: rs.ClientCertFile, KeyFile: rs.ClientKeyFile}
	cfg := siem.Config{
		Sources: []siem.SourceConfig{{Path: logPath, Tag: "app"}},
		Outputs: []siem.OutputConfig{
			{Name: "tls", Type: siem.OutputSyslog, Address: rs.TLSAddr, Match: "app", TLS: tls},
			{Name: "relp", Type: siem.OutputRELP, Address: rs.RELPAddr, Match: "**", TLS: tls},
		},
	}
	fw, err := New(Options{SpoolPath: filepath.Join(dir, "spool.db"), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Hostname: "node-1"})
	if err != nil {
		t.Fatal(err)
	}
	defer fw.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := fw.Apply(ctx, cfg, 0, "local"); err != nil {
		t.Fatal(err)
	}
	rs.WaitFor(t, 2*n, 60*time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := fw.Status()
		done := len(st.GetOutputs()) == 2
		for _, o := range st.GetOutputs() {
			if o.GetEventsAcknowledged() != n || o.GetSpoolEvents() != 0 {
				done = false
			}
		}
		if done {
			if st.GetSources()[0].GetEventsRead() != n {
				t.Errorf("events read = %d, want %d", st.GetSources()[0].GetEventsRead(), n)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status never settled: %v", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
