package e2e

// Helpers for siem_test.go: the agent config's siem: section, files of
// sequence-numbered lines, what rsyslog received, and budctl siem status.

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/bud-ecosystem/budfleet/internal/rsyslogtest"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
	siemv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/siem/v1"
)

// ---------------------------------------------------------------------------
// The siem: section, as documented (written from the test's own types, not
// from siem, so the documented key names are what is tested).

type siemDoc struct {
	SIEM siemSection `yaml:"siem"`
}

type siemSection struct {
	Sources []siemSource `yaml:"sources,omitempty"`
	Outputs []siemOutput `yaml:"outputs,omitempty"`
	Spool   *siemSpool   `yaml:"spool,omitempty"`
}

type siemSource struct {
	Path   string `yaml:"path"`
	Tag    string `yaml:"tag"`
	Format string `yaml:"format,omitempty"`
}

type siemOutput struct {
	Name        string   `yaml:"name"`
	Type        string   `yaml:"type"`
	Address     string   `yaml:"address"`
	Match       string   `yaml:"match,omitempty"`
	TLS         *siemTLS `yaml:"tls,omitempty"`
	BatchEvents int      `yaml:"batch_events,omitempty"`
}

type siemTLS struct {
	CAFile     string `yaml:"ca_file,omitempty"`
	CertFile   string `yaml:"cert_file,omitempty"`
	KeyFile    string `yaml:"key_file,omitempty"`
	ServerName string `yaml:"server_name,omitempty"`
}

type siemSpool struct {
	MaxBytes int64 `yaml:"max_bytes,omitempty"`
}

// siemGoodTLS is mutual TLS that rsyslog accepts.
func siemGoodTLS(rs *rsyslogtest.Server) *siemTLS {
	return &siemTLS{CAFile: rs.CAFile, CertFile: rs.ClientCertFile, KeyFile: rs.ClientKeyFile}
}

func siemYAML(t *testing.T, sec siemSection) []byte {
	t.Helper()
	b, err := yaml.Marshal(siemDoc{SIEM: sec})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// siemWriteFile writes sec as a document with a top-level siem: key, for
// budctl siem apply -f or bud-controller --siem-config.
func siemWriteFile(t *testing.T, path string, sec siemSection) string {
	t.Helper()
	if err := os.WriteFile(path, siemYAML(t, sec), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// siemConfigureAgent appends a siem: section to the config file the
// harness wrote for a (hostname, reconnect, inventory_interval).
func siemConfigureAgent(t *testing.T, a *agent, sec siemSection) {
	t.Helper()
	b, err := os.ReadFile(a.configPath)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 0 && b[len(b)-1] != '\n' {
		b = append(b, '\n')
	}
	b = append(b, siemYAML(t, sec)...)
	if err := os.WriteFile(a.configPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// ---------------------------------------------------------------------------
// Files of sequence-numbered lines.

// seqLog appends numbered lines to a file the way a logging daemon does
// (O_APPEND), and can rotate it.
type seqLog struct {
	path   string
	format string // "raw" or "linux-audit"
	tag    string
	pad    string

	mu   sync.Mutex
	f    *os.File
	next int
	err  error
}

func newSeqLog(t *testing.T, path, format, tag string, padBytes int) *seqLog {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	l := &seqLog{path: path, format: format, tag: tag, f: f, pad: strings.Repeat("x", padBytes)}
	t.Cleanup(func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.f != nil {
			l.f.Close()
			l.f = nil
		}
	})
	return l
}

func (l *seqLog) line(seq int) string {
	if l.format == "linux-audit" {
		now := time.Now()
		return fmt.Sprintf("type=USER_ACCT msg=audit(%d.%03d:%d): pid=1 uid=0 auid=0 ses=1 msg='op=test seq=%06d pad=%s res=success'\n",
			now.Unix(), now.Nanosecond()/1e6, seq+1, seq, l.pad)
	}
	return fmt.Sprintf("seq=%06d tag=%s pad=%s\n", seq, l.tag, l.pad)
}

// write appends n lines in one write(2).
func (l *seqLog) write(n int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.writeLocked(l.f, n)
}

func (l *seqLog) writeLocked(f *os.File, n int) error {
	if l.err != nil {
		return l.err
	}
	var b strings.Builder
	for range n {
		b.WriteString(l.line(l.next))
		l.next++
	}
	if _, err := f.WriteString(b.String()); err != nil {
		l.err = err
	}
	return l.err
}

// written is how many lines were written so far.
func (l *seqLog) written() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.next
}

// rotateRename rotates like logrotate's "create" (or auditd): older
// rotations shift (.1 -> .2 ...), the file is renamed to .1, the writer
// still writes late lines into the renamed file (it has it open), and only
// then creates a new file at the path and writes there.
func (l *seqLog) rotateRename(lateLines int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := 8; i >= 1; i-- {
		from := fmt.Sprintf("%s.%d", l.path, i)
		if _, err := os.Stat(from); err == nil {
			if err := os.Rename(from, fmt.Sprintf("%s.%d", l.path, i+1)); err != nil {
				return err
			}
		}
	}
	if err := os.Rename(l.path, l.path+".1"); err != nil {
		return err
	}
	if err := l.writeLocked(l.f, lateLines); err != nil {
		return err
	}
	nf, err := os.OpenFile(l.path, os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	l.f.Close()
	l.f = nf
	return nil
}

// copyTruncate rotates like logrotate's copytruncate: the file is copied
// to copy, then truncated in place; the writer keeps its descriptor
// (O_APPEND, so it writes at the new end). Nothing is written between the
// copy and the truncate: lines written there would be in neither file, the
// inherent window of copytruncate.
func (l *seqLog) copyTruncate(copyPath string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, err := os.ReadFile(l.path)
	if err != nil {
		return err
	}
	if err := os.WriteFile(copyPath, b, 0o600); err != nil {
		return err
	}
	return os.Truncate(l.path, 0)
}

// truncateAndWrite empties the file in place and at once (the lines are
// formatted first) writes n lines into it.
func (l *seqLog) truncateAndWrite(n int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	for range n {
		b.WriteString(l.line(l.next))
		l.next++
	}
	data := []byte(b.String())
	if err := l.f.Truncate(0); err != nil {
		return err
	}
	_, err := l.f.Write(data)
	return err
}

// truncate empties the file in place.
func (l *seqLog) truncate() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return os.Truncate(l.path, 0)
}

// seqStream appends lines from a goroutine until total lines are written
// or it is stopped.
type seqStream struct {
	stopc chan struct{}
	done  chan struct{}
	once  sync.Once
}

func streamSeqLog(t *testing.T, l *seqLog, total, chunk int, every time.Duration) *seqStream {
	s := &seqStream{stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			n := min(chunk, total-l.written())
			if n <= 0 {
				return
			}
			if l.write(n) != nil {
				return
			}
			select {
			case <-s.stopc:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(s.stop)
	return s
}

// stop ends the stream and waits for it.
func (s *seqStream) stop() {
	s.once.Do(func() { close(s.stopc) })
	<-s.done
}

// wait waits until the stream wrote everything (or was stopped).
func (s *seqStream) wait(t *testing.T, timeout time.Duration) {
	t.Helper()
	select {
	case <-s.done:
	case <-time.After(timeout):
		t.Fatalf("the writer did not finish within %s", timeout)
	}
}

// ---------------------------------------------------------------------------
// What rsyslog received.

var siemSeqRe = regexp.MustCompile(`seq=(\d{6})`)

// siemDelivery counts what arrived for one selection of records.
type siemDelivery struct {
	counts  map[int]int // seq -> times received
	records int
	junk    []string // selected records without a seq
}

// siemRecords parses the complete lines of rsyslog's received.log. (The
// Server's Records also parses a last line rsyslog is still writing and
// then fails the test.)
func siemRecords(t *testing.T, rs *rsyslogtest.Server) []rsyslogtest.Record {
	t.Helper()
	b, err := os.ReadFile(rs.ReceivedFile)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[:i]
	} else {
		return nil
	}
	var recs []rsyslogtest.Record
	for i, l := range strings.Split(string(b), "\n") {
		r, err := rsyslogtest.ParseLine(l)
		if err != nil {
			t.Fatalf("received.log line %d: %v: %q", i+1, err, l)
		}
		recs = append(recs, r)
	}
	return recs
}

func siemCollect(t *testing.T, rs *rsyslogtest.Server, keep func(rsyslogtest.Record) bool) siemDelivery {
	t.Helper()
	d := siemDelivery{counts: map[int]int{}}
	for _, r := range siemRecords(t, rs) {
		if !keep(r) {
			continue
		}
		d.records++
		m := siemSeqRe.FindSubmatch(r.Msg)
		if m == nil {
			d.junk = append(d.junk, r.RawLine)
			continue
		}
		seq, _ := strconv.Atoi(string(m[1]))
		d.counts[seq]++
	}
	return d
}

func byTag(tag string) func(rsyslogtest.Record) bool {
	return func(r rsyslogtest.Record) bool { return r.MsgID == tag }
}

func byTagInput(tag, input string) func(rsyslogtest.Record) bool {
	return func(r rsyslogtest.Record) bool { return r.MsgID == tag && r.Input == input }
}

// siemDupRuns describes the resent records in arrival order: the lengths
// of the runs of consecutive seqs that arrived a second time.
func siemDupRuns(t *testing.T, rs *rsyslogtest.Server, keep func(rsyslogtest.Record) bool) []int {
	t.Helper()
	seen := map[int]bool{}
	var runs []int
	prev := -2
	for _, r := range siemRecords(t, rs) {
		if !keep(r) {
			continue
		}
		m := siemSeqRe.FindSubmatch(r.Msg)
		if m == nil {
			continue
		}
		seq, _ := strconv.Atoi(string(m[1]))
		if !seen[seq] {
			seen[seq] = true
			prev = -2
			continue
		}
		if seq == prev+1 && len(runs) > 0 {
			runs[len(runs)-1]++
		} else {
			runs = append(runs, 1)
		}
		prev = seq
	}
	return runs
}

// missing lists the seqs of [0, n) that did not arrive.
func (d siemDelivery) missing(n int) []int {
	var out []int
	for i := range n {
		if d.counts[i] == 0 {
			out = append(out, i)
		}
	}
	return out
}

// unexpected lists arrived seqs outside [0, n).
func (d siemDelivery) unexpected(n int) []int {
	var out []int
	for s := range d.counts {
		if s < 0 || s >= n {
			out = append(out, s)
		}
	}
	sort.Ints(out)
	return out
}

// duplicates is how many records repeated a seq already received.
func (d siemDelivery) duplicates() int {
	dups := 0
	for _, c := range d.counts {
		dups += c - 1
	}
	return dups
}

func (d siemDelivery) String() string {
	return fmt.Sprintf("%d records, %d distinct seqs, %d duplicates, %d without a seq", d.records, len(d.counts), d.duplicates(), len(d.junk))
}

func firstN(xs []int, n int) []int {
	if len(xs) > n {
		return xs[:n]
	}
	return xs
}

// siemWaitAll waits until every seq of [0, n) selected by keep arrived and
// checks nothing else did; it returns what arrived.
func siemWaitAll(t *testing.T, rs *rsyslogtest.Server, what string, keep func(rsyslogtest.Record) bool, n int, timeout time.Duration) siemDelivery {
	t.Helper()
	var d siemDelivery
	err := poll(timeout, func() error {
		if c := rs.Count(); c < n {
			return fmt.Errorf("%s: rsyslog has %d lines in all, fewer than the %d expected", what, c, n)
		}
		d = siemCollect(t, rs, keep)
		if miss := d.missing(n); len(miss) > 0 {
			return fmt.Errorf("%s: %d of %d seqs missing (first: %v); %s", what, len(miss), n, firstN(miss, 10), d)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("not delivered within %s: %v\nrsyslog's log:\n%s", timeout, err, rs.Log())
	}
	if u := d.unexpected(n); len(u) > 0 {
		t.Errorf("%s: seqs that were never written arrived: %v", what, firstN(u, 10))
	}
	if len(d.junk) > 0 {
		t.Errorf("%s: %d records without a seq (corrupted lines?), first: %q", what, len(d.junk), d.junk[0])
	}
	return d
}

// ---------------------------------------------------------------------------
// budctl siem status

func siemStatusAll(c *controller) ([]*fleetv1.NodeSiemStatus, error) {
	var resp fleetv1.GetSiemStatusResponse
	if err := c.budctlJSON(&resp, "siem", "status"); err != nil {
		return nil, err
	}
	return resp.GetNodes(), nil
}

func siemNodeStatus(c *controller, nodeID string) (*fleetv1.NodeSiemStatus, error) {
	var resp fleetv1.GetSiemStatusResponse
	if err := c.budctlJSON(&resp, "siem", "status", "--node", nodeID); err != nil {
		return nil, err
	}
	if len(resp.GetNodes()) != 1 || resp.GetNodes()[0].GetNodeId() != nodeID {
		return nil, fmt.Errorf("siem status --node %s: got %v", nodeID, resp.GetNodes())
	}
	return resp.GetNodes()[0], nil
}

func siemOutputStatus(ns *fleetv1.NodeSiemStatus, name string) (*siemv1.OutputStatus, error) {
	for _, o := range ns.GetStatus().GetOutputs() {
		if o.GetName() == name {
			return o, nil
		}
	}
	return nil, fmt.Errorf("node %s reports no output %q (status: %v)", ns.GetNodeId(), name, ns.GetStatus())
}

// siemApply runs budctl siem apply -f file [args] -o json.
func siemApply(t *testing.T, c *controller, file string, args ...string) *fleetv1.ApplySiemConfigResponse {
	t.Helper()
	var resp fleetv1.ApplySiemConfigResponse
	if err := c.budctlJSON(&resp, append([]string{"siem", "apply", "-f", file}, args...)...); err != nil {
		t.Fatal(err)
	}
	if resp.GetVersion() == 0 {
		t.Fatalf("siem apply returned version 0")
	}
	return &resp
}

// siemTempDir is a short per-test directory (file names go into logs).
func siemTempDir(t *testing.T, name string) string {
	t.Helper()
	d := filepath.Join(t.TempDir(), name)
	if err := os.MkdirAll(d, 0o700); err != nil {
		t.Fatal(err)
	}
	return d
}
