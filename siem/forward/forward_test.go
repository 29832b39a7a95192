package forward

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	siemv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/siem/v1"
	"github.com/bud-ecosystem/budfleet/siem"
	"github.com/bud-ecosystem/budfleet/siem/output"
)

// ---- fake outputs ---------------------------------------------------------

// sink is what one named output delivers to. Every Dial of that output
// returns a conn bound to the same sink, so a re-dial after a failure (or a
// new Forwarder after a restart) keeps writing into it.
type sink struct {
	mu sync.Mutex
	// delivered holds, in order, the events of every batch the SIEM got:
	// those Send returned nil for, and with ackLost those it got before the
	// connection was cut.
	delivered []siem.Event
	// attempts holds every batch Send was given.
	attempts [][]siem.Event
	dials    int
	closes   int

	failN   int   // fail the next failN sends with err
	down    bool  // fail every send with err while set
	err     error // what a failing send returns
	dialErr error // Dial fails with it while set

	okBefore int           // this many sends pass before the gate applies (-1: no gate)
	gate     chan struct{} // while open (not closed), gated sends block on it
	blocked  int           // sends waiting at the gate now
	ackLost  bool          // a send cut by ctx counts as delivered (the ack was lost)
}

func newSink() *sink { return &sink{err: errors.New("connect: connection refused"), okBefore: -1} }

// hold makes sends after the first n block until release.
func (s *sink) hold(n int) {
	s.mu.Lock()
	s.okBefore, s.gate = n, make(chan struct{})
	s.mu.Unlock()
}

func (s *sink) release() {
	s.mu.Lock()
	if s.gate != nil {
		close(s.gate)
		s.gate = nil
	}
	s.okBefore = -1
	s.mu.Unlock()
}

func (s *sink) setDown(d bool) {
	s.mu.Lock()
	s.down = d
	s.mu.Unlock()
}

func (s *sink) lines() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, len(s.delivered))
	for i, ev := range s.delivered {
		out[i] = string(ev.Raw)
	}
	return out
}

func (s *sink) events() []siem.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.delivered)
}

func (s *sink) nAttempts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.attempts)
}

func (s *sink) nBlocked() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.blocked
}

type conn struct {
	s      *sink
	closed bool
}

func (c *conn) Send(ctx context.Context, batch []siem.Event) error {
	s := c.s
	s.mu.Lock()
	if c.closed {
		s.mu.Unlock()
		return errors.New("fake: send on a closed output")
	}
	n := len(s.attempts)
	s.attempts = append(s.attempts, slices.Clone(batch))
	if s.down || s.failN > 0 {
		if s.failN > 0 {
			s.failN--
		}
		err := s.err
		s.mu.Unlock()
		return err
	}
	if gate := s.gate; gate != nil && s.okBefore >= 0 && n >= s.okBefore {
		s.blocked++
		s.mu.Unlock()
		select {
		case <-gate:
			s.mu.Lock()
			s.blocked--
		case <-ctx.Done():
			s.mu.Lock()
			s.blocked--
			if s.ackLost {
				s.delivered = append(s.delivered, batch...)
			}
			s.mu.Unlock()
			return ctx.Err()
		}
	}
	s.delivered = append(s.delivered, batch...)
	s.mu.Unlock()
	return nil
}

func (c *conn) Close() error {
	c.s.mu.Lock()
	c.closed = true
	c.s.closes++
	c.s.mu.Unlock()
	return nil
}

// fakeNet holds the sinks by output name.
type fakeNet struct {
	mu    sync.Mutex
	sinks map[string]*sink
}

func newNet() *fakeNet { return &fakeNet{sinks: map[string]*sink{}} }

func (n *fakeNet) sink(name string) *sink {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := n.sinks[name]
	if s == nil {
		s = newSink()
		n.sinks[name] = s
	}
	return s
}

func (n *fakeNet) dial(o siem.OutputConfig, hostname, appName string) (output.Output, error) {
	s := n.sink(o.Name)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dials++
	if s.dialErr != nil {
		return nil, s.dialErr
	}
	return &conn{s: s}, nil
}

// ---- helpers --------------------------------------------------------------

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newForwarder(t *testing.T, spoolPath string, net *fakeNet) *Forwarder {
	t.Helper()
	return newForwarderOpts(t, Options{SpoolPath: spoolPath, Dial: net.dial})
}

// newForwarderOpts is newForwarder with more options.
func newForwarderOpts(t *testing.T, o Options) *Forwarder {
	t.Helper()
	if o.Logger == nil {
		o.Logger = quietLogger()
	}
	o.Hostname, o.NoSync = "node-1", true
	fw, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fw.Close() })
	return fw
}

func apply(t *testing.T, fw *Forwarder, cfg siem.Config, version uint64) {
	t.Helper()
	if err := fw.Apply(context.Background(), cfg, version, "controller"); err != nil {
		t.Fatalf("Apply: %v", err)
	}
}

func output1(name, match string) siem.OutputConfig {
	return siem.OutputConfig{Name: name, Type: siem.OutputSyslog, Address: "siem.example.com:6514", Match: match}
}

func lineText(i int) string { return fmt.Sprintf("line %06d %s", i, strings.Repeat("x", 40)) }

// appendLines appends lines [from, to) to path.
func appendLines(t *testing.T, path string, from, to int, text func(int) string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for i := from; i < to; i++ {
		b.WriteString(text(i))
		b.WriteByte('\n')
	}
	if _, err := f.WriteString(b.String()); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func appendRaw(t *testing.T, path string, lines ...string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range lines {
		if _, err := f.WriteString(l + "\n"); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
}

func wantLines(from, to int, text func(int) string) []string {
	out := make([]string, 0, to-from)
	for i := from; i < to; i++ {
		out = append(out, text(i))
	}
	return out
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, desc := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s; last: %s", timeout, what, desc)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func outputStatus(st *siemv1.Status, name string) *siemv1.OutputStatus {
	for _, o := range st.GetOutputs() {
		if o.GetName() == name {
			return o
		}
	}
	return nil
}

func sourceStatus(st *siemv1.Status, file string) *siemv1.SourceStatus {
	for _, src := range st.GetSources() {
		if src.GetFile() == file {
			return src
		}
	}
	return nil
}

// waitDelivered waits until s has delivered at least n events.
func waitDelivered(t *testing.T, s *sink, n int, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, fmt.Sprintf("%d events delivered", n), func() (bool, string) {
		got := len(s.lines())
		return got >= n, fmt.Sprintf("%d delivered", got)
	})
}

// waitSettled waits until every output of fw acknowledged acked events and
// its spool queue is empty.
func waitSettled(t *testing.T, fw *Forwarder, acked map[string]uint64) {
	t.Helper()
	eventually(t, 10*time.Second, "status to settle", func() (bool, string) {
		st := fw.Status()
		for name, n := range acked {
			o := outputStatus(st, name)
			if o == nil || o.GetEventsAcknowledged() != n || o.GetSpoolEvents() != 0 || o.GetSpoolBytes() != 0 {
				return false, st.String()
			}
		}
		return true, ""
	})
}

// waitSettledDups waits until output name acknowledged at least n events
// and its spool queue is empty, and returns how many it acknowledged past n.
func waitSettledDups(t *testing.T, fw *Forwarder, name string, n uint64) int {
	t.Helper()
	var acked uint64
	eventually(t, 10*time.Second, "status to settle", func() (bool, string) {
		st := fw.Status()
		o := outputStatus(st, name)
		acked = o.GetEventsAcknowledged()
		return o != nil && acked >= n && o.GetSpoolEvents() == 0 && o.GetSpoolBytes() == 0, st.String()
	})
	return int(acked - n)
}

// dedupe drops the lines seen before, keeping the first of each.
func dedupe(lines []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, l := range lines {
		if !seen[l] {
			seen[l] = true
			out = append(out, l)
		}
	}
	return out
}

func diffLines(t *testing.T, what string, got, want []string) {
	t.Helper()
	if slices.Equal(got, want) {
		return
	}
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			t.Fatalf("%s: %d lines, want %d; first difference at %d: %q, want %q", what, len(got), len(want), i, got[i], want[i])
		}
	}
	t.Fatalf("%s: %d lines, want %d", what, len(got), len(want))
}

// ---- tests ----------------------------------------------------------------

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, tag string
		want         bool
	}{
		{"audit", "audit", true},
		{"audit", "audit.kernel", false},
		{"audit", "app", false},
		{"audit.*", "audit.kernel", true},
		{"audit.*", "audit", false},
		{"audit.*", "audit.kernel.x", false},
		{"audit.**", "audit", true},
		{"audit.**", "audit.x", true},
		{"audit.**", "audit.x.y", true},
		{"audit.**", "auditx", false},
		{"audit.**", "app.audit", false},
		{"*", "audit", true},
		{"*", "audit.kernel", false},
		{"*.kernel", "audit.kernel", true},
		{"*.kernel", "kernel", false},
		{"**", "audit", true},
		{"**", "audit.kernel.x.y", true},
		{"**.kernel", "kernel", true},
		{"**.kernel", "a.b.kernel", true},
		{"**.kernel", "a.kernel.b", false},
		{"a.**.z", "a.z", true},
		{"a.**.z", "a.b.c.z", true},
		{"a.**.z", "a.b.c", false},
		{"*.*", "a.b", true},
		{"*.*", "a", false},
	} {
		if got := siem.Match(tc.pattern, tc.tag); got != tc.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tc.pattern, tc.tag, got, tc.want)
		}
	}
}

func TestNewNeedsSpoolPath(t *testing.T) {
	if _, err := New(Options{}); err == nil {
		t.Fatal("New without SpoolPath succeeded")
	}
}

func TestStatusBeforeApply(t *testing.T) {
	fw := newForwarder(t, filepath.Join(t.TempDir(), "spool.db"), newNet())
	st := fw.Status()
	if st.GetConfigSource() != "none" || st.GetConfigVersion() != 0 || len(st.GetSources())+len(st.GetOutputs()) != 0 {
		t.Errorf("status before Apply = %v", st)
	}
}

// Every line of a raw source reaches the output, in order, once, and the
// status counts them.
func TestRawSourceDeliversInOrder(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "app.log")
	appendLines(t, logPath, 0, 3000, lineText)
	net := newNet()
	fw := newForwarder(t, filepath.Join(dir, "spool.db"), net)
	cfg := siem.Config{
		Sources: []siem.SourceConfig{{Path: logPath, Tag: "app"}},
		Outputs: []siem.OutputConfig{output1("o1", "")},
	}
	apply(t, fw, cfg, 7)
	if v, src := fw.Version(); v != 7 || src != "controller" {
		t.Errorf("Version() = %d %q", v, src)
	}
	s := net.sink("o1")
	waitDelivered(t, s, 3000, 10*time.Second)
	appendLines(t, logPath, 3000, 3500, lineText)
	waitDelivered(t, s, 3500, 10*time.Second)
	waitSettled(t, fw, map[string]uint64{"o1": 3500})

	diffLines(t, "delivered", s.lines(), wantLines(0, 3500, lineText))
	for i, ev := range s.events() {
		if ev.Tag != "app" || ev.Source != logPath || ev.Time.IsZero() || ev.Truncated || ev.Fields != nil {
			t.Fatalf("event %d = %+v", i, ev)
		}
	}
	st := fw.Status()
	if st.GetConfigVersion() != 7 || st.GetConfigSource() != "controller" {
		t.Errorf("status config = %d %q", st.GetConfigVersion(), st.GetConfigSource())
	}
	src := sourceStatus(st, logPath)
	if src == nil || src.GetEventsRead() != 3500 || src.GetBytesRead() != uint64(3500*len(lineText(0))) || src.GetPaused() || src.GetTag() != "app" || src.GetPath() != logPath {
		t.Errorf("source status = %v", src)
	}
	o := outputStatus(st, "o1")
	if !o.GetConnected() || o.GetLastError() != "" || o.GetEventsSent() != 3500 || o.GetDroppedEvents() != 0 || o.GetLagSeconds() != 0 || o.GetType() != siem.OutputSyslog {
		t.Errorf("output status = %v", o)
	}
}

// Long lines are split into Truncated parts counted from 1.
func TestRawSourceSplitsLongLines(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "app.log")
	long := strings.Repeat("a", 600)
	appendRaw(t, logPath, long, "short")
	net := newNet()
	fw := newForwarder(t, filepath.Join(dir, "spool.db"), net)
	apply(t, fw, siem.Config{
		Sources: []siem.SourceConfig{{Path: logPath, Tag: "app", MaxLineBytes: 256}},
		Outputs: []siem.OutputConfig{output1("o1", "")},
	}, 1)
	s := net.sink("o1")
	waitDelivered(t, s, 4, 10*time.Second)
	evs := s.events()
	var joined string
	for i, ev := range evs[:3] {
		if !ev.Truncated || ev.Part != i+1 {
			t.Errorf("piece %d: truncated=%v part=%d", i, ev.Truncated, ev.Part)
		}
		joined += string(ev.Raw)
	}
	if joined != long {
		t.Errorf("pieces join to %d bytes, want the %d byte line", len(joined), len(long))
	}
	if string(evs[3].Raw) != "short" || evs[3].Truncated || evs[3].Part != 0 {
		t.Errorf("line after the long one = %+v", evs[3])
	}
}

// An output that fails loses nothing: the events stay spooled and are sent
// again; while it fails the status says why.
func TestOutputFailsThenRecovers(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "app.log")
	appendLines(t, logPath, 0, 200, lineText)
	net := newNet()
	s := net.sink("o1")
	tlsErr := fmt.Errorf("tls: failed to verify certificate: %w", x509.UnknownAuthorityError{})
	s.err = tlsErr
	s.setDown(true)
	fw := newForwarder(t, filepath.Join(dir, "spool.db"), net)
	apply(t, fw, siem.Config{
		Sources: []siem.SourceConfig{{Path: logPath, Tag: "app"}},
		Outputs: []siem.OutputConfig{output1("o1", "")},
	}, 1)

	eventually(t, 10*time.Second, "two failed sends", func() (bool, string) {
		n := s.nAttempts()
		return n >= 2, fmt.Sprintf("%d attempts", n)
	})
	want := output.DescribeTLSError(tlsErr)
	if !strings.Contains(want, "tls.ca_file") {
		t.Fatalf("DescribeTLSError gave no advice: %q", want)
	}
	eventually(t, 5*time.Second, "status to show the failure", func() (bool, string) {
		st := fw.Status()
		o := outputStatus(st, "o1")
		src := sourceStatus(st, logPath)
		return o.GetLastError() == want && !o.GetConnected() && o.GetLastErrorAt() != nil &&
			o.GetSpoolEvents() == 200 && o.GetEventsAcknowledged() == 0 && src.GetEventsRead() == 200, st.String()
	})
	if got := s.lines(); len(got) != 0 {
		t.Fatalf("%d events delivered while the output failed", len(got))
	}

	s.setDown(false)
	waitDelivered(t, s, 200, 15*time.Second)
	waitSettled(t, fw, map[string]uint64{"o1": 200})
	diffLines(t, "delivered", s.lines(), wantLines(0, 200, lineText))

	s.mu.Lock()
	attempts, dials, closes := s.attempts, s.dials, s.closes
	s.mu.Unlock()
	first := 0
	for _, b := range attempts {
		if len(b) > 0 && string(b[0].Raw) == lineText(0) {
			first++
		}
	}
	if first < 3 {
		t.Errorf("the first batch was sent %d times, want at least 3 (two failures, then success)", first)
	}
	// A failed output is closed and dialled again.
	if dials < 3 || closes < 2 {
		t.Errorf("dials = %d, closes = %d after two failures", dials, closes)
	}
	o := outputStatus(fw.Status(), "o1")
	if !o.GetConnected() {
		t.Errorf("output not connected after recovering: %v", o)
	}
}

// Send failing a fixed number of times and a Dial that fails: both are
// retried until they succeed.
func TestOutputDialAndSendFailuresAreRetried(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "app.log")
	appendLines(t, logPath, 0, 50, lineText)
	net := newNet()
	s := net.sink("o1")
	s.dialErr = errors.New("dial tcp: lookup siem.example.com: no such host")
	s.failN = 2
	fw := newForwarder(t, filepath.Join(dir, "spool.db"), net)
	apply(t, fw, siem.Config{
		Sources: []siem.SourceConfig{{Path: logPath, Tag: "app"}},
		Outputs: []siem.OutputConfig{output1("o1", "")},
	}, 1)
	eventually(t, 5*time.Second, "the dial error in the status", func() (bool, string) {
		o := outputStatus(fw.Status(), "o1")
		return strings.Contains(o.GetLastError(), "no such host") && !o.GetConnected(), o.String()
	})
	s.mu.Lock()
	s.dialErr = nil
	s.mu.Unlock()
	waitDelivered(t, s, 50, 15*time.Second)
	waitSettled(t, fw, map[string]uint64{"o1": 50})
	diffLines(t, "delivered", s.lines(), wantLines(0, 50, lineText))
	if n := s.nAttempts(); n != 3 {
		t.Errorf("%d sends, want 3 (two failures, one success)", n)
	}
}

// A restart resumes from the checkpoints and the spool: nothing is lost,
// and only the batch whose acknowledgement was lost is sent twice.
func TestRestartResumes(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "app.log")
	spoolPath := filepath.Join(dir, "spool.db")
	const batch = 100
	appendLines(t, logPath, 0, 5000, lineText)
	cfg := siem.Config{
		Sources: []siem.SourceConfig{{Path: logPath, Tag: "app"}},
		Outputs: []siem.OutputConfig{{Name: "o1", Type: siem.OutputRELP, Address: "siem.example.com:2514", BatchEvents: batch}},
	}

	net1 := newNet()
	s1 := net1.sink("o1")
	s1.hold(3) // three batches pass, the fourth hangs
	s1.ackLost = true
	fw1 := newForwarder(t, spoolPath, net1)
	apply(t, fw1, cfg, 1)
	eventually(t, 10*time.Second, "everything read and a send hanging", func() (bool, string) {
		src := sourceStatus(fw1.Status(), logPath)
		return src.GetEventsRead() == 5000 && s1.nBlocked() == 1, fmt.Sprintf("read %d, blocked %d", src.GetEventsRead(), s1.nBlocked())
	})
	if err := fw1.Close(); err != nil {
		t.Fatal(err)
	}
	before := s1.lines()
	s1.mu.Lock()
	acked := 0
	for _, b := range s1.attempts[:3] {
		acked += len(b)
	}
	lost := len(s1.attempts[3])
	s1.mu.Unlock()
	// 3 acknowledged batches and the one whose ack was lost.
	diffLines(t, "delivered before the restart", before, wantLines(0, acked+lost, lineText))
	if lost == 0 || lost > batch {
		t.Fatalf("the hanging batch has %d events", lost)
	}

	appendLines(t, logPath, 5000, 6000, lineText) // written while down
	net2 := newNet()
	s2 := net2.sink("o1")
	fw2 := newForwarder(t, spoolPath, net2)
	apply(t, fw2, cfg, 1)
	waitDelivered(t, s2, 6000-acked, 15*time.Second)
	waitSettled(t, fw2, map[string]uint64{"o1": uint64(6000 - acked)})
	after := s2.lines()
	// The restarted forwarder resends from the first unacknowledged entry:
	// the lost-ack batch again, then everything else, in order.
	diffLines(t, "delivered after the restart", after, wantLines(acked, 6000, lineText))

	all := append(before, after...)
	seen := map[string]int{}
	dups := 0
	for _, l := range all {
		seen[l]++
		if seen[l] > 1 {
			dups++
		}
	}
	if len(seen) != 6000 {
		t.Errorf("%d distinct lines delivered, want 6000", len(seen))
	}
	if dups > batch {
		t.Errorf("%d duplicates, want at most one batch (%d)", dups, batch)
	}
	// Reading resumed at the checkpoint: only the lines written while down
	// were read again.
	if src := sourceStatus(fw2.Status(), logPath); src.GetEventsRead() != 1000 {
		t.Errorf("after the restart %d lines were read, want the 1000 new ones", src.GetEventsRead())
	}
}

func spoolFullConfig(logPath string, drop bool) siem.Config {
	return siem.Config{
		Sources: []siem.SourceConfig{{Path: logPath, Tag: "app"}},
		Outputs: []siem.OutputConfig{output1("o1", "")},
		Spool:   siem.SpoolConfig{MaxBytes: 1 << 20, DropOldest: drop},
	}
}

func bigLine(i int) string { return fmt.Sprintf("line %06d %s", i, strings.Repeat("y", 300)) }

// With the spool full and drop_oldest off, reading pauses; the lines wait
// in the file and all arrive once the output recovers.
func TestSpoolFullPausesSources(t *testing.T) {
	t.Parallel()
	const n = 6000 // about 3 MiB of spool entries: three times the cap
	dir := t.TempDir()
	logPath := filepath.Join(dir, "app.log")
	appendLines(t, logPath, 0, n, bigLine)
	net := newNet()
	s := net.sink("o1")
	s.hold(0)
	fw := newForwarder(t, filepath.Join(dir, "spool.db"), net)
	apply(t, fw, spoolFullConfig(logPath, false), 1)

	eventually(t, 10*time.Second, "the source to pause", func() (bool, string) {
		src := sourceStatus(fw.Status(), logPath)
		return src.GetPaused() && strings.Contains(src.GetLastError(), "spool full"), src.String()
	})
	st := fw.Status()
	src, o := sourceStatus(st, logPath), outputStatus(st, "o1")
	if src.GetEventsRead() == 0 || src.GetEventsRead() >= n {
		t.Errorf("paused after reading %d of %d lines", src.GetEventsRead(), n)
	}
	if o.GetSpoolBytes() > 1<<20 || o.GetSpoolBytes() < 1<<19 {
		t.Errorf("spool holds %d bytes with a 1 MiB cap", o.GetSpoolBytes())
	}
	if o.GetDroppedEvents() != 0 {
		t.Errorf("%d events dropped without drop_oldest", o.GetDroppedEvents())
	}

	s.release()
	eventually(t, 30*time.Second, "every line delivered", func() (bool, string) {
		d := len(dedupe(s.lines()))
		return d >= n, fmt.Sprintf("%d distinct lines delivered", d)
	})
	// The batch that hung went to the output directly; when it stalled
	// the source spooled it too (direct.go), so once released it arrives
	// twice: at most one output batch of duplicates.
	dups := waitSettledDups(t, fw, "o1", n)
	diffLines(t, "delivered, without the resent batch", dedupe(s.lines()), wantLines(0, n, bigLine))
	if dups > siem.DefaultBatchEvents {
		t.Errorf("%d duplicates, want at most one batch (%d)", dups, siem.DefaultBatchEvents)
	}
	src = sourceStatus(fw.Status(), logPath)
	if src.GetPaused() || src.GetEventsRead() != n {
		t.Errorf("after recovery: %v", src)
	}
}

// With drop_oldest, reading goes on while the output is down and the
// oldest events are dropped and counted.
func TestSpoolFullDropOldest(t *testing.T) {
	t.Parallel()
	const n = 6000
	dir := t.TempDir()
	logPath := filepath.Join(dir, "app.log")
	appendLines(t, logPath, 0, n, bigLine)
	net := newNet()
	s := net.sink("o1")
	s.hold(0)
	fw := newForwarder(t, filepath.Join(dir, "spool.db"), net)
	apply(t, fw, spoolFullConfig(logPath, true), 1)

	eventually(t, 15*time.Second, "every line read", func() (bool, string) {
		st := fw.Status()
		src := sourceStatus(st, logPath)
		return src.GetEventsRead() == n && outputStatus(st, "o1").GetDroppedEvents() > 0, st.String()
	})
	st := fw.Status()
	if src := sourceStatus(st, logPath); src.GetPaused() {
		t.Errorf("source paused with drop_oldest: %v", src)
	}
	dropped := outputStatus(st, "o1").GetDroppedEvents()
	if o := outputStatus(st, "o1"); o.GetSpoolBytes() > 1<<20 {
		t.Errorf("spool holds %d bytes with a 1 MiB cap", o.GetSpoolBytes())
	}

	s.release()
	eventually(t, 15*time.Second, "the spool to drain", func() (bool, string) {
		o := outputStatus(fw.Status(), "o1")
		return o.GetSpoolEvents() == 0 && o.GetEventsAcknowledged() > 0, o.String()
	})
	got := s.lines()
	if len(got) >= n {
		t.Errorf("%d lines delivered although %d were dropped", len(got), dropped)
	}
	if got[len(got)-1] != bigLine(n-1) {
		t.Errorf("the newest line was not delivered last: %.20q", got[len(got)-1])
	}
	// What was delivered is in order, whatever was dropped in between.
	prev := ""
	for _, l := range got {
		if l <= prev {
			t.Fatalf("out of order: %.12q after %.12q", l, prev)
		}
		prev = l
	}
}

// linux-audit groups the records of one event; the checkpoint stays before
// an event that is still open, so a restart in the middle of one delivers it
// whole, once.
func TestLinuxAuditGroupsAndNeverSkipsAnOpenEvent(t *testing.T) {
	const (
		aSyscall = `type=SYSCALL msg=audit(1795958082.876:8): arch=c000003e syscall=257 success=yes exit=3 a0=ffffff9c a1=7ffd1a2b3c4d a2=0 a3=0 items=1 ppid=1 pid=42 auid=4294967295 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=4294967295 comm="bash" exe="/usr/bin/bash" subj=unconfined key="fleet-test"`
		aCwd     = `type=CWD msg=audit(1795958082.876:8): cwd="/root"`
		aPath    = `type=PATH msg=audit(1795958082.876:8): item=0 name="/etc/shadow" inode=1234 dev=08:01 mode=0100640 ouid=0 ogid=42 rdev=00:00 nametype=NORMAL`
		aTitle   = `type=PROCTITLE msg=audit(1795958082.876:8): proctitle=2F7573722F62696E2F62617368002D6300636174202F6574632F736861646F77`
		aEOE     = `type=EOE msg=audit(1795958082.876:8): `

		bSyscall = `type=SYSCALL msg=audit(1795958082.880:9): arch=c000003e syscall=59 success=yes exit=0 a0=55d0 a1=55d1 a2=55d2 a3=0 items=2 ppid=42 pid=43 auid=1000 uid=1000 gid=1000 euid=1000 suid=1000 fsuid=1000 egid=1000 sgid=1000 fsgid=1000 tty=pts0 ses=3 comm="ls" exe="/usr/bin/ls" subj=unconfined key="exec-watch"`
		bExecve  = `type=EXECVE msg=audit(1795958082.880:9): argc=2 a0="ls" a1="-la"`
		bPath    = `type=PATH msg=audit(1795958082.880:9): item=0 name="/usr/bin/ls" inode=99 dev=08:01 mode=0100755 ouid=0 ogid=0 rdev=00:00 nametype=NORMAL`
		bEOE     = `type=EOE msg=audit(1795958082.880:9): `
	)
	dir := t.TempDir()
	logPath := filepath.Join(dir, "audit.log")
	spoolPath := filepath.Join(dir, "spool.db")
	cfg := siem.Config{
		Sources: []siem.SourceConfig{{Path: logPath, Tag: "audit", Format: siem.FormatLinuxAudit}},
		Outputs: []siem.OutputConfig{output1("sec", "audit.**")},
	}
	// Event 8 whole, event 9 half written.
	appendRaw(t, logPath, aSyscall, aCwd, aPath, aTitle, aEOE, bSyscall, bExecve)

	net1 := newNet()
	s1 := net1.sink("sec")
	// The grouper must not give up on event 9 (and send it as it is)
	// before the stop, however slow the machine: it waits an hour here.
	fw1 := newForwarderOpts(t, Options{SpoolPath: spoolPath, Dial: net1.dial, AuditMaxWait: time.Hour})
	apply(t, fw1, cfg, 1)
	waitDelivered(t, s1, 1, 5*time.Second)
	waitSettled(t, fw1, map[string]uint64{"sec": 1})
	if err := fw1.Close(); err != nil {
		t.Fatal(err)
	}
	first := s1.events()
	if len(first) != 1 {
		t.Fatalf("%d events before the restart, want 1 (event 9 is open): %q", len(first), s1.lines())
	}
	a := first[0]
	if want := strings.Join([]string{aSyscall, aCwd, aPath, aTitle, aEOE}, "\n"); string(a.Raw) != want {
		t.Errorf("event 8 raw = %q, want %q", a.Raw, want)
	}
	for k, v := range map[string]string{"serial": "8", "type": "SYSCALL", "types": "SYSCALL,CWD,PATH,PROCTITLE", "key": "fleet-test", "exe": "/usr/bin/bash", "cwd": "/root"} {
		if a.Fields.Get(k) != v {
			t.Errorf("event 8 field %s = %q, want %q", k, a.Fields.Get(k), v)
		}
	}
	if a.Tag != "audit" || a.Source != logPath || !a.Time.Equal(time.Unix(1795958082, 876e6)) {
		t.Errorf("event 8 = tag %q source %q time %v", a.Tag, a.Source, a.Time)
	}

	// The rest of event 9 is written while the forwarder is down.
	appendRaw(t, logPath, bPath, bEOE)
	net2 := newNet()
	s2 := net2.sink("sec")
	fw2 := newForwarder(t, spoolPath, net2)
	apply(t, fw2, cfg, 1)
	waitDelivered(t, s2, 1, 5*time.Second)
	waitSettled(t, fw2, map[string]uint64{"sec": 1})
	src2 := sourceStatus(fw2.Status(), logPath)
	// Closing ends every send: whatever else would follow is in by then.
	if err := fw2.Close(); err != nil {
		t.Fatal(err)
	}
	second := s2.events()
	if len(second) != 1 {
		t.Fatalf("%d events after the restart, want 1: %q", len(second), s2.lines())
	}
	b := second[0]
	if want := strings.Join([]string{bSyscall, bExecve, bPath, bEOE}, "\n"); string(b.Raw) != want {
		t.Errorf("event 9 raw = %q, want the whole event %q", b.Raw, want)
	}
	for k, v := range map[string]string{"serial": "9", "type": "SYSCALL", "types": "SYSCALL,EXECVE,PATH", "key": "exec-watch", "uid": "1000"} {
		if b.Fields.Get(k) != v {
			t.Errorf("event 9 field %s = %q, want %q", k, b.Fields.Get(k), v)
		}
	}
	if src2.GetEventsRead() != 1 {
		t.Errorf("after the restart %d events were read, want 1 (event 8 must not be read again)", src2.GetEventsRead())
	}
}

// A line that is not an audit record is forwarded on its own.
func TestLinuxAuditUnparsedLine(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "audit.log")
	appendRaw(t, logPath, "not an audit record")
	net := newNet()
	fw := newForwarder(t, filepath.Join(dir, "spool.db"), net)
	apply(t, fw, siem.Config{
		Sources: []siem.SourceConfig{{Path: logPath, Tag: "audit", Format: siem.FormatLinuxAudit}},
		Outputs: []siem.OutputConfig{output1("sec", "")},
	}, 1)
	s := net.sink("sec")
	waitDelivered(t, s, 1, 5*time.Second)
	ev := s.events()[0]
	if string(ev.Raw) != "not an audit record" || ev.Fields.Get("type") != "UNPARSED" {
		t.Errorf("event = %+v", ev)
	}
}

// Each output gets the sources its match pattern selects.
func TestOutputsMatchTags(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{"audit.kernel": "kernel.log", "audit": "audit.log", "app": "app.log", "app.web": "web.log"}
	var sources []siem.SourceConfig
	for _, tag := range []string{"audit.kernel", "audit", "app", "app.web"} {
		p := filepath.Join(dir, files[tag])
		appendLines(t, p, 0, 20, func(i int) string { return fmt.Sprintf("%s %02d", tag, i) })
		sources = append(sources, siem.SourceConfig{Path: p, Tag: tag})
	}
	net := newNet()
	fw := newForwarder(t, filepath.Join(dir, "spool.db"), net)
	apply(t, fw, siem.Config{
		Sources: sources,
		Outputs: []siem.OutputConfig{
			output1("sec", "audit.**"),
			output1("ops", "app"),
			output1("web", "*.web"),
			output1("one", "*"),
			output1("all", "**"),
			output1("none", "db.*"),
		},
	}, 1)
	want := map[string][]string{
		"sec":  {"audit.kernel", "audit"},
		"ops":  {"app"},
		"web":  {"app.web"},
		"one":  {"audit", "app"},
		"all":  {"audit.kernel", "audit", "app", "app.web"},
		"none": nil,
	}
	for name, tags := range want {
		waitDelivered(t, net.sink(name), 20*len(tags), 10*time.Second)
	}
	acked := map[string]uint64{}
	for name, tags := range want {
		acked[name] = uint64(20 * len(tags))
	}
	waitSettled(t, fw, acked)
	for name, tags := range want {
		byTag := map[string][]string{}
		for _, ev := range net.sink(name).events() {
			byTag[ev.Tag] = append(byTag[ev.Tag], string(ev.Raw))
		}
		if len(byTag) != len(tags) {
			t.Errorf("output %s got tags %v, want %v", name, keys(byTag), tags)
		}
		for _, tag := range tags {
			diffLines(t, name+"/"+tag, byTag[tag], wantLines(0, 20, func(i int) string { return fmt.Sprintf("%s %02d", tag, i) }))
		}
	}
	if d := net.sink("none"); d.nAttempts() != 0 {
		t.Errorf("an output nothing matches was sent %d batches", d.nAttempts())
	}
}

func keys(m map[string][]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// An invalid configuration is refused and the running one goes on.
func TestApplyInvalidKeepsRunning(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "app.log")
	appendLines(t, logPath, 0, 10, lineText)
	net := newNet()
	fw := newForwarder(t, filepath.Join(dir, "spool.db"), net)
	good := siem.Config{
		Sources: []siem.SourceConfig{{Path: logPath, Tag: "app"}},
		Outputs: []siem.OutputConfig{output1("o1", "")},
	}
	apply(t, fw, good, 3)
	s := net.sink("o1")
	waitDelivered(t, s, 10, 5*time.Second)

	for name, bad := range map[string]siem.Config{
		"bad output type": {Sources: good.Sources, Outputs: []siem.OutputConfig{{Name: "o2", Type: "kafka", Address: "k:9092"}}},
		"no outputs":      {Sources: good.Sources},
		"relative path":   {Sources: []siem.SourceConfig{{Path: "app.log", Tag: "app"}}, Outputs: good.Outputs},
		"small spool":     {Sources: good.Sources, Outputs: good.Outputs, Spool: siem.SpoolConfig{MaxBytes: 1000}},
	} {
		if err := fw.Apply(context.Background(), bad, 4, "controller"); err == nil {
			t.Errorf("%s: Apply accepted it", name)
		}
	}
	if v, src := fw.Version(); v != 3 || src != "controller" {
		t.Errorf("after refusals Version() = %d %q, want 3", v, src)
	}
	appendLines(t, logPath, 10, 20, lineText)
	waitDelivered(t, s, 20, 5*time.Second)
	diffLines(t, "delivered", s.lines(), wantLines(0, 20, lineText))
	if st := fw.Status(); st.GetConfigVersion() != 3 || len(st.GetOutputs()) != 1 {
		t.Errorf("status after refusals = %v", st)
	}
}

// Apply swaps the configuration in place: new sources and outputs run,
// removed ones stop, and events spooled for an output that stays are kept
// (also when the spool is reopened with new limits).
func TestApplySwapsConfiguration(t *testing.T) {
	dir := t.TempDir()
	app, web := filepath.Join(dir, "app.log"), filepath.Join(dir, "web.log")
	appendLines(t, app, 0, 50, lineText)
	net := newNet()
	keep, gone, added := net.sink("keep"), net.sink("gone"), net.sink("added")
	keep.hold(0) // backlog stays in the spool across the swap
	fw := newForwarder(t, filepath.Join(dir, "spool.db"), net)
	apply(t, fw, siem.Config{
		Sources: []siem.SourceConfig{{Path: app, Tag: "app"}},
		Outputs: []siem.OutputConfig{output1("keep", ""), output1("gone", "")},
	}, 1)
	waitDelivered(t, gone, 50, 5*time.Second)
	eventually(t, 5*time.Second, "the backlog of keep", func() (bool, string) {
		o := outputStatus(fw.Status(), "keep")
		return o.GetSpoolEvents() == 50, o.String()
	})

	appendLines(t, web, 0, 30, func(i int) string { return fmt.Sprintf("web %02d", i) })
	apply(t, fw, siem.Config{
		Sources: []siem.SourceConfig{{Path: app, Tag: "app"}, {Path: web, Tag: "web"}},
		Outputs: []siem.OutputConfig{output1("keep", "app"), output1("added", "web")},
		Spool:   siem.SpoolConfig{MaxBytes: 64 << 20},
	}, 2)
	st := fw.Status()
	if st.GetConfigVersion() != 2 || len(st.GetOutputs()) != 2 || outputStatus(st, "gone") != nil {
		t.Errorf("status after the swap = %v", st)
	}
	waitDelivered(t, added, 30, 5*time.Second)
	keep.release()
	appendLines(t, app, 50, 60, lineText)
	waitDelivered(t, keep, 60, 10*time.Second)
	waitSettled(t, fw, map[string]uint64{"keep": 60, "added": 30})
	diffLines(t, "keep", keep.lines(), wantLines(0, 60, lineText))
	diffLines(t, "added", added.lines(), wantLines(0, 30, func(i int) string { return fmt.Sprintf("web %02d", i) }))
	diffLines(t, "gone (removed output)", gone.lines(), wantLines(0, 50, lineText))
	if src := sourceStatus(fw.Status(), web); src.GetTag() != "web" || src.GetEventsRead() != 30 {
		t.Errorf("new source status = %v", src)
	}
}

// A glob source follows files that appear after it started.
func TestGlobPicksUpNewFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	logDir := filepath.Join(dir, "logs")
	if err := os.Mkdir(logDir, 0o700); err != nil {
		t.Fatal(err)
	}
	a, b := filepath.Join(logDir, "a.log"), filepath.Join(logDir, "b.log")
	appendRaw(t, a, "a1", "a2")
	appendRaw(t, filepath.Join(logDir, "ignored.txt"), "nope")
	net := newNet()
	fw := newForwarder(t, filepath.Join(dir, "spool.db"), net)
	apply(t, fw, siem.Config{
		Sources: []siem.SourceConfig{{Path: filepath.Join(logDir, "*.log"), Tag: "app"}},
		Outputs: []siem.OutputConfig{output1("o1", "")},
	}, 1)
	s := net.sink("o1")
	waitDelivered(t, s, 2, 5*time.Second)
	appendRaw(t, b, "b1")
	appendRaw(t, a, "a3")
	// The glob is rescanned every globRescan.
	waitDelivered(t, s, 4, globRescan+5*time.Second)
	got := s.lines()
	slices.Sort(got)
	if !slices.Equal(got, []string{"a1", "a2", "a3", "b1"}) {
		t.Errorf("delivered %q", got)
	}
	st := fw.Status()
	if len(st.GetSources()) != 2 || sourceStatus(st, b).GetPath() != filepath.Join(logDir, "*.log") {
		t.Errorf("sources = %v", st.GetSources())
	}
}

// ---- known bugs -----------------------------------------------------------

// forward.go openSpool assigns f.spool without f.mu while Status reads it
// under f.mu: an Apply that changes the spool limits races with a
// heartbeat's Status (go test -race reports it).
func TestStatusDuringSpoolReopenRace(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "app.log")
	appendLines(t, logPath, 0, 10, lineText)
	fw := newForwarder(t, filepath.Join(dir, "spool.db"), newNet())
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				fw.Status()
			}
		}
	}()
	for i := range 10 {
		apply(t, fw, siem.Config{
			Sources: []siem.SourceConfig{{Path: logPath, Tag: "app"}},
			Outputs: []siem.OutputConfig{output1("o1", "")},
			Spool:   siem.SpoolConfig{MaxBytes: int64(2+i%2) << 20},
		}, uint64(i+1))
	}
	close(stop)
	wg.Wait()
}

// Two sources whose paths match the same file (a glob and a path) follow it
// twice from the same checkpoint key: every line is sent twice.
func TestOverlappingSourcesDeliverOnce(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "app.log")
	appendLines(t, logPath, 0, 100, lineText)
	cfg := siem.Config{
		Sources: []siem.SourceConfig{{Path: logPath, Tag: "app"}, {Path: filepath.Join(dir, "*.log"), Tag: "app"}},
		Outputs: []siem.OutputConfig{output1("o1", "")},
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("the overlap is valid (the forwarder follows the file once): %v", err)
	}
	net := newNet()
	var logged syncBuffer
	fw := newForwarderOpts(t, Options{SpoolPath: filepath.Join(dir, "spool.db"), Dial: net.dial, Logger: slog.New(slog.NewTextHandler(&logged, nil))})
	apply(t, fw, cfg, 1)
	s := net.sink("o1")
	waitDelivered(t, s, 100, 5*time.Second)
	// The second source has decided once it says it leaves the file to
	// the first; after Close nothing more can arrive.
	eventually(t, 5*time.Second, "the second source to leave the file to the first", func() (bool, string) {
		return strings.Contains(logged.String(), "file matched by more than one source"), logged.String()
	})
	waitSettled(t, fw, map[string]uint64{"o1": 100})
	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(s.lines()); n != 100 {
		t.Errorf("%d lines delivered, want 100", n)
	}
}

// syncBuffer is a bytes.Buffer for a logger used from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// An event larger than the spool could never be appended (the source would
// retry for ever, showing neither a pause nor an error), so a max_line_bytes
// over 1/16 of spool.max_bytes is refused when the configuration is
// applied, and the configuration already running keeps forwarding. The
// 1 MiB line then arrives split into pieces the spool can hold.
func TestEventLargerThanSpoolIsRefused(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "app.log")
	appendRaw(t, logPath, strings.Repeat("z", 1<<20), "after")
	net := newNet()
	fw := newForwarder(t, filepath.Join(dir, "spool.db"), net)
	cfg := siem.Config{
		Sources: []siem.SourceConfig{{Path: logPath, Tag: "app", MaxLineBytes: 2 << 20}},
		Outputs: []siem.OutputConfig{output1("o1", "")},
		Spool:   siem.SpoolConfig{MaxBytes: 1 << 20},
	}
	err := fw.Apply(context.Background(), cfg, 1, "controller")
	if err == nil || !strings.Contains(err.Error(), "max_line_bytes") {
		t.Fatalf("Apply of a max_line_bytes past 1/16 of the spool: %v, want a refusal naming max_line_bytes", err)
	}
	if v, _ := fw.Version(); v != 0 {
		t.Fatalf("Version() = %d after a refused Apply", v)
	}
	ok := cfg
	ok.Sources = []siem.SourceConfig{{Path: logPath, Tag: "app", MaxLineBytes: 64 << 10}}
	apply(t, fw, ok, 2)
	s := net.sink("o1")
	waitDelivered(t, s, 1<<20/(64<<10)+1, 10*time.Second)
	got := s.events()
	var joined strings.Builder
	for _, ev := range got[:len(got)-1] {
		if !ev.Truncated || len(ev.Raw) > 64<<10 {
			t.Fatalf("piece of %d bytes, truncated %v", len(ev.Raw), ev.Truncated)
		}
		joined.Write(ev.Raw)
	}
	if joined.String() != strings.Repeat("z", 1<<20) || string(got[len(got)-1].Raw) != "after" {
		t.Fatalf("the pieces do not make the line (%d bytes), or the next line is %q", joined.Len(), got[len(got)-1].Raw)
	}
}

// The backlog of an output removed (or renamed) by a new configuration
// moves to the outputs that match its events, in order; what no output
// matches is dropped. Nothing stays stranded in the spool.
func TestRemovedOutputBacklogMoves(t *testing.T) {
	dir := t.TempDir()
	app, db := filepath.Join(dir, "app.log"), filepath.Join(dir, "db.log")
	appendLines(t, app, 0, 100, lineText)
	appendLines(t, db, 0, 20, func(i int) string { return fmt.Sprintf("db %02d", i) })
	net := newNet()
	net.sink("old").setDown(true)
	fw := newForwarder(t, filepath.Join(dir, "spool.db"), net)
	sources := []siem.SourceConfig{{Path: app, Tag: "app"}, {Path: db, Tag: "db"}}
	apply(t, fw, siem.Config{Sources: sources, Outputs: []siem.OutputConfig{output1("old", "")}}, 1)
	eventually(t, 5*time.Second, "backlog", func() (bool, string) {
		o := outputStatus(fw.Status(), "old")
		return o.GetSpoolEvents() == 120, o.String()
	})
	// "renamed" takes over app; nothing matches db any more.
	apply(t, fw, siem.Config{Sources: sources, Outputs: []siem.OutputConfig{output1("renamed", "app")}}, 2)
	appendLines(t, app, 100, 110, lineText)
	s := net.sink("renamed")
	waitDelivered(t, s, 110, 5*time.Second)
	waitSettled(t, fw, map[string]uint64{"renamed": 110})
	diffLines(t, "renamed", s.lines(), wantLines(0, 110, lineText))
	if spooled := fw.spool.Stats(); spooled.Bytes != 0 || spooled.Entries != 0 {
		t.Errorf("spool still holds %d bytes (%d entries): %v", spooled.Bytes, spooled.Entries, spooled.Queues)
	}
	if q := fw.spool.Stats().Queues["old"]; q.Dropped != 20 {
		t.Errorf("%d db events counted as dropped, want 20", q.Dropped)
	}
}

// When one of two outputs that both received every event is removed, its
// backlog is moved into the other, which already had (and may have sent)
// its own copy of each: every event of the backlog is sent there twice.
func TestRemovedOutputBacklogNotDuplicatedIntoSurvivor(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "app.log")
	appendLines(t, logPath, 0, 100, lineText)
	net := newNet()
	net.sink("down").setDown(true)
	fw := newForwarder(t, filepath.Join(dir, "spool.db"), net)
	src := []siem.SourceConfig{{Path: logPath, Tag: "app"}}
	apply(t, fw, siem.Config{Sources: src, Outputs: []siem.OutputConfig{output1("down", ""), output1("up", "")}}, 1)
	up := net.sink("up")
	waitDelivered(t, up, 100, 5*time.Second)
	eventually(t, 5*time.Second, "backlog of down", func() (bool, string) {
		o := outputStatus(fw.Status(), "down")
		return o.GetSpoolEvents() == 100, o.String()
	})
	apply(t, fw, siem.Config{Sources: src, Outputs: []siem.OutputConfig{output1("up", "")}}, 2)
	// The backlog is moved (or not) by Apply itself; whatever it moved
	// would be sent at once: wait for the spool to settle, then stop.
	eventually(t, 5*time.Second, "the spool to settle", func() (bool, string) {
		st := fw.Status()
		return outputStatus(st, "up").GetSpoolEvents() == 0, st.String()
	})
	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(up.lines()); n != 100 {
		t.Errorf("output up got %d events, want its 100 (the removed output's backlog was copied into it)", n)
	}
}

// New spool limits apply in place: the spool is never reopened, so the
// running configuration is never left without one.
func TestApplyNewSpoolLimitsKeepsForwarding(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "app.log")
	spoolPath := filepath.Join(dir, "spool.db")
	appendLines(t, logPath, 0, 10, lineText)
	net := newNet()
	fw := newForwarder(t, spoolPath, net)
	cfg := siem.Config{Sources: []siem.SourceConfig{{Path: logPath, Tag: "app"}}, Outputs: []siem.OutputConfig{output1("o1", "")}}
	apply(t, fw, cfg, 1)
	s := net.sink("o1")
	waitDelivered(t, s, 10, 5*time.Second)
	bigger := cfg
	bigger.Spool.MaxBytes = 8 << 20
	if err := fw.Apply(context.Background(), bigger, 2, "controller"); err != nil {
		t.Fatalf("Apply with new spool limits: %v", err)
	}
	if v, _ := fw.Version(); v != 2 {
		t.Fatalf("Version() = %d after Apply of version 2", v)
	}
	appendLines(t, logPath, 10, 20, lineText)
	eventually(t, 5*time.Second, "version 1 to go on forwarding", func() (bool, string) {
		n := len(s.lines())
		return n == 20, fmt.Sprintf("%d delivered", n)
	})
}

// The linux-audit checkpoint only moves when no event is open. Under steady
// traffic some event is always open (kernel records such as AVC wait 2s for
// an EOE that may never come), so the checkpoint stays where the traffic
// began and a restart sends everything since again: far more than one
// batch of duplicates.
// The checkpoint follows the oldest open event, so after a restart only the
// events completed within the grouper's MaxWait (2 s) of it are sent again,
// not everything since the traffic began.
func TestAuditCheckpointAdvancesUnderSteadyTraffic(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "audit.log")
	spoolPath := filepath.Join(dir, "spool.db")
	cfg := siem.Config{
		Sources: []siem.SourceConfig{{Path: logPath, Tag: "audit", Format: siem.FormatLinuxAudit}},
		Outputs: []siem.OutputConfig{{Name: "sec", Type: siem.OutputSyslog, Address: "s:1", BatchEvents: 1}},
	}
	event := func(serial int) []string {
		stamp := fmt.Sprintf("msg=audit(1795958000.%03d:%d):", serial%1000, serial)
		return []string{
			"type=SYSCALL " + stamp + ` arch=c000003e syscall=59 success=yes exit=0 pid=1 uid=0 auid=0 comm="x" exe="/x" key="k"`,
			"type=EOE " + stamp + " ",
		}
	}
	avc := func(serial int) string {
		return fmt.Sprintf("type=AVC msg=audit(1795958000.%03d:%d): avc:  denied  { read } for  pid=1 comm=\"cat\"", serial%1000, serial)
	}
	net1 := newNet()
	fw1 := newForwarder(t, spoolPath, net1)
	apply(t, fw1, cfg, 1)
	const rounds = 20 // 5 s of traffic, an AVC open at every moment
	for i := range rounds {
		appendRaw(t, logPath, append(event(1000+2*i), avc(1001+2*i))...)
		time.Sleep(250 * time.Millisecond)
	}
	syscalls := func(s *sink) int {
		n := 0
		for _, ev := range s.events() {
			if ev.Fields.Get("type") == "SYSCALL" {
				n++
			}
		}
		return n
	}
	eventually(t, 5*time.Second, "the complete events", func() (bool, string) {
		n := syscalls(net1.sink("sec"))
		return n == rounds, fmt.Sprintf("%d", n)
	})
	fw1.Close()

	net2 := newNet()
	fw2 := newForwarder(t, spoolPath, net2)
	apply(t, fw2, cfg, 1)
	// The last AVC is the file's last line: once it arrived (MaxWait
	// after it was read), everything resent is in.
	lastAVC := fmt.Sprintf(":%d):", 1001+2*(rounds-1))
	eventually(t, 10*time.Second, "the last AVC after the restart", func() (bool, string) {
		for _, l := range net2.sink("sec").lines() {
			if strings.Contains(l, lastAVC) {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d events", len(net2.sink("sec").lines()))
	})
	// 2 s of rounds at 4 a second, plus one batch.
	if n := syscalls(net2.sink("sec")); n > 9 {
		t.Errorf("%d of %d complete events were sent again after a restart; at most those of the last MaxWait (8) and one batch may be", n, rounds)
	}
}

// An event the spool accepts on its own (at most spool.max_bytes) is
// spooled and delivered even when its copies for several outputs make a
// batch larger than the spool: the batch is split, never the event dropped.
// Here one audit event is about 300 KB, more than 1/8 of a 1 MiB spool, and
// its four copies (one per output) are more than the whole spool.
func TestEventOverAnEighthOfTheSpoolIsDelivered(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "audit.log")
	const stamp = "msg=audit(1795958082.876:77):"
	lines := []string{"type=SYSCALL " + stamp + ` arch=c000003e syscall=59 success=yes exit=0 pid=7 uid=0 auid=0 comm="x" exe="/x" key="big"`}
	for i := range 6 {
		lines = append(lines, fmt.Sprintf(`type=EXECVE %s argc=1 a%d="%s"`, stamp, i, strings.Repeat("w", 50_000)))
	}
	lines = append(lines, "type=EOE "+stamp+" ")
	appendRaw(t, logPath, lines...)
	want := strings.Join(lines, "\n")

	net := newNet()
	fw := newForwarder(t, filepath.Join(dir, "spool.db"), net)
	names := []string{"o1", "o2", "o3", "o4"}
	cfg := siem.Config{
		Sources: []siem.SourceConfig{{Path: logPath, Tag: "audit", Format: siem.FormatLinuxAudit}},
		Spool:   siem.SpoolConfig{MaxBytes: 1 << 20},
	}
	for _, n := range names {
		cfg.Outputs = append(cfg.Outputs, output1(n, ""))
	}
	apply(t, fw, cfg, 1)
	for _, n := range names {
		s := net.sink(n)
		eventually(t, 10*time.Second, "the big event delivered to "+n, func() (bool, string) {
			src := sourceStatus(fw.Status(), logPath)
			return len(s.lines()) == 1, src.String()
		})
		if got := s.lines()[0]; got != want {
			t.Errorf("%s got an event of %d bytes, want the whole %d", n, len(got), len(want))
		}
	}
	if src := sourceStatus(fw.Status(), logPath); src.GetLastError() != "" {
		t.Errorf("source reports %q", src.GetLastError())
	}
}
