package e2e

// Audit-log forwarding end to end: the real bud-agent (enrolled with a real
// controller) tails files of sequence-numbered lines and forwards them to a
// real rsyslogd (internal/rsyslogtest: TLS syslog and RELP over TLS). Each
// test checks, by the seq in every message rsyslog wrote, that nothing was
// lost and that duplicates stay within the at-least-once bound.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/internal/rsyslogtest"
	"github.com/bud-ecosystem/budfleet/siem/output/syslog"
)

// TestSIEMAgentKilledLosesNothing: the agent is SIGKILLed five times while
// a writer appends 20k linux-audit records; every record arrives, and the
// duplicates stay within one batch per kill.
func TestSIEMAgentKilledLosesNothing(t *testing.T) {
	t.Parallel()
	const (
		total = 20000
		kills = 5
		batch = 250
	)
	rs := rsyslogtest.Start(t, rsyslogtest.Options{})
	c := startController(t)
	a := joinAgent(t, c, c.createToken(t), "siem-kill")
	dir := siemTempDir(t, "kill")
	logPath := filepath.Join(dir, "audit.log")
	siemConfigureAgent(t, a, siemSection{
		Sources: []siemSource{{Path: logPath, Tag: "audit", Format: "linux-audit"}},
		Outputs: []siemOutput{{Name: "corp-siem", Type: "relp", Address: rs.RELPAddr, Match: "audit.**", TLS: siemGoodTLS(rs), BatchEvents: batch}},
	})
	w := newSeqLog(t, logPath, "linux-audit", "audit", 40)
	a.start(t)
	// 20k lines in about 5 s.
	stream := streamSeqLog(t, w, total, 80, 20*time.Millisecond)

	for i := range kills {
		// Kill only once this run of the agent has delivered more than the
		// batch it may resend, at a random moment after that: mid-stream,
		// mid-batch.
		before := rs.Count()
		eventually(t, 30*time.Second, func() error {
			if a.proc.exited() {
				return fmt.Errorf("agent exited: %v", a.proc.waitErr)
			}
			if n := rs.Count(); n < before+batch+100 {
				return fmt.Errorf("kill %d: rsyslog has %d lines, waiting for %d", i+1, n, before+batch+100)
			}
			return nil
		})
		time.Sleep(time.Duration(rand.IntN(150)) * time.Millisecond) // a random kill point, not an assertion
		t.Logf("kill %d: %d lines written, %d received", i+1, w.written(), rs.Count())
		a.kill(t)
		a.start(t)
	}
	stream.wait(t, 60*time.Second)
	if w.err != nil {
		t.Fatalf("writer: %v", w.err)
	}
	d := siemWaitAll(t, rs, "audit", byTag("audit"), total, 90*time.Second)
	dups := d.duplicates()
	t.Logf("SIGKILL x%d during %d records: %s (%.2f%%; bound %d = kills x batch_events); resent runs: %v",
		kills, total, d, 100*float64(dups)/total, kills*batch, siemDupRuns(t, rs, byTag("audit")))
	if dups > kills*batch {
		t.Errorf("%d duplicates after %d kills; at-least-once delivery should resend at most one batch (%d) per kill", dups, kills, batch)
	}
	if recs := siemRecords(t, rs); len(recs) > 0 {
		r := recs[0]
		if r.Host != "siem-kill" || r.App != "bud-agent" || r.Input != "relp" {
			t.Errorf("record host=%q app=%q input=%q; want siem-kill, bud-agent, relp", r.Host, r.App, r.Input)
		}
	}
	// The spool is empty once everything is acknowledged.
	eventually(t, 20*time.Second, func() error {
		ns, err := siemNodeStatus(c, a.nodeID)
		if err != nil {
			return err
		}
		o, err := siemOutputStatus(ns, "corp-siem")
		if err != nil {
			return err
		}
		if o.GetSpoolEvents() != 0 || ns.GetState() != "ok" {
			return fmt.Errorf("state %s, spool %d events", ns.GetState(), o.GetSpoolEvents())
		}
		return nil
	})
}

// TestSIEMReceiverDownSpoolsAndDrains: rsyslog is stopped while the writer
// keeps writing; status shows the output failing and the spool growing;
// after rsyslog restarts the spool drains and nothing is lost.
func TestSIEMReceiverDownSpoolsAndDrains(t *testing.T) {
	t.Parallel()
	rs := rsyslogtest.Start(t, rsyslogtest.Options{})
	c := startController(t)
	a := joinAgent(t, c, c.createToken(t), "siem-down")
	dir := siemTempDir(t, "down")
	logPath := filepath.Join(dir, "app.log")
	siemConfigureAgent(t, a, siemSection{
		Sources: []siemSource{{Path: logPath, Tag: "app", Format: "raw"}},
		Outputs: []siemOutput{{Name: "corp-siem", Type: "relp", Address: rs.RELPAddr, Match: "app", TLS: siemGoodTLS(rs)}},
	})
	w := newSeqLog(t, logPath, "raw", "app", 60)
	a.start(t)
	a.waitReady(t)
	stream := streamSeqLog(t, w, 1<<30, 20, 20*time.Millisecond) // ~1000 lines/s until stopped
	eventually(t, 20*time.Second, func() error {
		if n := rs.Count(); n < 500 {
			return fmt.Errorf("rsyslog has %d lines", n)
		}
		return nil
	})

	rs.Stop()
	var spooled uint64
	eventually(t, 20*time.Second, func() error {
		ns, err := siemNodeStatus(c, a.nodeID)
		if err != nil {
			return err
		}
		o, err := siemOutputStatus(ns, "corp-siem")
		if err != nil {
			return err
		}
		if ns.GetState() != "failing" || o.GetConnected() || o.GetLastError() == "" || o.GetSpoolEvents() == 0 {
			return fmt.Errorf("want state failing, not connected, lastError set, events spooled; got state %s connected %v lastError %q spool %d",
				ns.GetState(), o.GetConnected(), o.GetLastError(), o.GetSpoolEvents())
		}
		spooled = o.GetSpoolEvents()
		t.Logf("rsyslog down: state %s, lastError %q, spool %d events", ns.GetState(), o.GetLastError(), spooled)
		return nil
	})
	eventually(t, 20*time.Second, func() error {
		ns, err := siemNodeStatus(c, a.nodeID)
		if err != nil {
			return err
		}
		o, err := siemOutputStatus(ns, "corp-siem")
		if err != nil {
			return err
		}
		if o.GetSpoolEvents() <= spooled {
			return fmt.Errorf("spool not growing: %d events (was %d)", o.GetSpoolEvents(), spooled)
		}
		if o.GetLagSeconds() <= 0 {
			return fmt.Errorf("lagSeconds %v with %d events spooled", o.GetLagSeconds(), o.GetSpoolEvents())
		}
		return nil
	})

	rs.Restart()
	// Keep writing a little after the restart, then stop.
	target := w.written() + 500
	eventually(t, 20*time.Second, func() error {
		if w.written() < target {
			return fmt.Errorf("writer at %d", w.written())
		}
		return nil
	})
	stream.stop()
	if w.err != nil {
		t.Fatalf("writer: %v", w.err)
	}
	total := w.written()
	d := siemWaitAll(t, rs, "app", byTag("app"), total, 90*time.Second)
	t.Logf("rsyslog stopped and restarted during %d lines: %s", total, d)
	if d.duplicates() > 1000 {
		t.Errorf("%d duplicates; at most one batch (1000) should be resent", d.duplicates())
	}
	eventually(t, 30*time.Second, func() error {
		ns, err := siemNodeStatus(c, a.nodeID)
		if err != nil {
			return err
		}
		o, err := siemOutputStatus(ns, "corp-siem")
		if err != nil {
			return err
		}
		if ns.GetState() != "ok" || !o.GetConnected() || o.GetSpoolEvents() != 0 || o.GetSpoolBytes() != 0 {
			return fmt.Errorf("want state ok, connected, spool empty; got state %s connected %v spool %d events %d bytes",
				ns.GetState(), o.GetConnected(), o.GetSpoolEvents(), o.GetSpoolBytes())
		}
		return nil
	})
}

// TestSIEMRotationAndTruncation: three files forwarded at once while they
// are written: one rotated by rename+create (with late lines written to the
// renamed file, as auditd and logrotate's create do), one by copytruncate,
// one truncated in place. Nothing is lost.
//
// copytruncate has an inherent window: lines written between the copy and
// the truncate are in neither file, and lines the agent had not read yet
// when the file was truncated are only in the copy, which it does not read.
// The test therefore writes nothing between the copy and the truncate and
// lets the agent catch up before each copytruncate; the same goes for the
// plain truncation.
func TestSIEMRotationAndTruncation(t *testing.T) {
	t.Parallel()
	rs := rsyslogtest.Start(t, rsyslogtest.Options{})
	c := startController(t)
	a := joinAgent(t, c, c.createToken(t), "siem-rotate")
	dir := siemTempDir(t, "rotate")
	renamePath := filepath.Join(dir, "rename.log")
	copyPath := filepath.Join(dir, "copy.log")
	truncPath := filepath.Join(dir, "trunc.log")
	siemConfigureAgent(t, a, siemSection{
		Sources: []siemSource{
			{Path: renamePath, Tag: "rot.rename", Format: "raw"},
			{Path: copyPath, Tag: "rot.copy", Format: "raw"},
			{Path: truncPath, Tag: "rot.trunc", Format: "raw"},
		},
		Outputs: []siemOutput{{Name: "corp-siem", Type: "relp", Address: rs.RELPAddr, Match: "rot.**", TLS: siemGoodTLS(rs)}},
	})
	ren := newSeqLog(t, renamePath, "raw", "rot.rename", 50)
	cp := newSeqLog(t, copyPath, "raw", "rot.copy", 50)
	tr := newSeqLog(t, truncPath, "raw", "rot.trunc", 50)
	for _, l := range []*seqLog{ren, cp, tr} {
		if err := l.write(1000); err != nil { // history from before the agent started
			t.Fatal(err)
		}
	}
	a.start(t)
	// The agent must be following the files before they rotate: on its very
	// first start (no checkpoint) it reads the file at the path from the
	// beginning, not older rotations of it.
	for _, l := range []*seqLog{ren, cp, tr} {
		siemWaitAll(t, rs, l.tag, byTag(l.tag), l.written(), 30*time.Second)
	}

	// rename+create: three rotations while a writer streams.
	renErr := make(chan error, 1)
	go func() {
		var err error
		for r := 0; r < 3 && err == nil; r++ {
			for range 10 {
				if err = ren.write(50); err != nil {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err == nil {
				err = ren.rotateRename(50)
			}
		}
		if err == nil {
			err = ren.write(300)
		}
		renErr <- err
	}()

	// copytruncate and truncation: write, let the agent catch up, rotate,
	// write a burst (smaller than what was there, so the change is seen as
	// a truncation) and go on.
	caughtUp := func(l *seqLog) {
		t.Helper()
		siemWaitAll(t, rs, l.tag, byTag(l.tag), l.written(), 60*time.Second)
	}
	for r := 1; r <= 3; r++ {
		caughtUp(cp)
		if err := cp.copyTruncate(fmt.Sprintf("%s.%d", copyPath, r)); err != nil {
			t.Fatal(err)
		}
		caughtUp(tr)
		if err := tr.truncate(); err != nil {
			t.Fatal(err)
		}
		for _, l := range []*seqLog{cp, tr} {
			if err := l.write(300); err != nil {
				t.Fatal(err)
			}
		}
		for _, l := range []*seqLog{cp, tr} {
			for range 5 {
				if err := l.write(60); err != nil {
					t.Fatal(err)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	if err := <-renErr; err != nil {
		t.Fatalf("rename writer: %v", err)
	}
	for _, l := range []*seqLog{ren, cp, tr} {
		d := siemWaitAll(t, rs, l.tag, byTag(l.tag), l.written(), 60*time.Second)
		t.Logf("%s: %d lines written: %s", l.tag, l.written(), d)
		if d.duplicates() != 0 {
			t.Errorf("%s: %d duplicates without any crash or receiver failure; want none", l.tag, d.duplicates())
		}
	}
}

// TestSIEMTruncatedFileRegrowsBeforeNextPoll: a file is truncated and, before
// the agent's next look at it, written past the offset the agent had read
// to (a busy writer after copytruncate or "truncate -s 0", with lines of
// another length). The follower must see that the file's first bytes
// changed and read it again from the start: every line once, no fragment of
// a line sent as an event, no line sent twice.
func TestSIEMTruncatedFileRegrowsBeforeNextPoll(t *testing.T) {
	t.Parallel()
	rs := rsyslogtest.Start(t, rsyslogtest.Options{})
	c := startController(t)
	a := joinAgent(t, c, c.createToken(t), "siem-regrow")
	dir := siemTempDir(t, "regrow")
	logPath := filepath.Join(dir, "app.log")
	siemConfigureAgent(t, a, siemSection{
		Sources: []siemSource{{Path: logPath, Tag: "app", Format: "raw"}},
		Outputs: []siemOutput{{Name: "corp-siem", Type: "relp", Address: rs.RELPAddr, TLS: siemGoodTLS(rs)}},
	})
	w := newSeqLog(t, logPath, "raw", "app", 50)
	if err := w.write(2000); err != nil {
		t.Fatal(err)
	}
	a.start(t)
	siemWaitAll(t, rs, "app", byTag("app"), 2000, 30*time.Second)
	// Truncate and at once write more than was there, in lines 7 bytes
	// longer, all within one poll interval (200 ms).
	w.pad += "yyyyyyy"
	if err := w.truncateAndWrite(3000); err != nil {
		t.Fatal(err)
	}
	d := siemWaitAll(t, rs, "app", byTag("app"), 5000, 30*time.Second)
	t.Logf("truncated at 2000 lines, then 3000 longer lines at once: %s", d)
	if d.duplicates() != 0 {
		t.Errorf("%d lines sent twice: the follower read the rewritten file at the old offset before it noticed the truncation (runs %v)",
			d.duplicates(), siemDupRuns(t, rs, byTag("app")))
	}
}

// TestSIEMSpoolFullPausesReading: with rsyslog down and the smallest spool
// (1 MiB), the agent fills the spool, then stops reading (source paused,
// state failing, the log says why); the rest waits in the file, and once
// rsyslog is back every line arrives.
func TestSIEMSpoolFullPausesReading(t *testing.T) {
	t.Parallel()
	const total = 12000 // ~3 MB of lines, ~5 MB of spool entries
	rs := rsyslogtest.Start(t, rsyslogtest.Options{})
	rs.Stop()
	c := startController(t)
	a := joinAgent(t, c, c.createToken(t), "siem-full")
	dir := siemTempDir(t, "full")
	logPath := filepath.Join(dir, "app.log")
	siemConfigureAgent(t, a, siemSection{
		Sources: []siemSource{{Path: logPath, Tag: "app", Format: "raw"}},
		Outputs: []siemOutput{{Name: "corp-siem", Type: "relp", Address: rs.RELPAddr, Match: "**", TLS: siemGoodTLS(rs)}},
		Spool:   &siemSpool{MaxBytes: 1 << 20},
	})
	w := newSeqLog(t, logPath, "raw", "app", 220)
	if err := w.write(total); err != nil {
		t.Fatal(err)
	}
	a.start(t)
	a.waitReady(t)

	eventually(t, 30*time.Second, func() error {
		ns, err := siemNodeStatus(c, a.nodeID)
		if err != nil {
			return err
		}
		if len(ns.GetStatus().GetSources()) != 1 {
			return fmt.Errorf("sources: %v", ns.GetStatus().GetSources())
		}
		src := ns.GetStatus().GetSources()[0]
		o, err := siemOutputStatus(ns, "corp-siem")
		if err != nil {
			return err
		}
		if !src.GetPaused() || ns.GetState() != "failing" {
			return fmt.Errorf("want source paused and state failing; got paused %v state %s read %d spool %d bytes",
				src.GetPaused(), ns.GetState(), src.GetEventsRead(), o.GetSpoolBytes())
		}
		if !strings.Contains(src.GetLastError(), "spool full") {
			t.Errorf("source lastError %q; want it to say the spool is full", src.GetLastError())
		}
		if src.GetEventsRead() >= total {
			t.Errorf("source read all %d lines with a 1 MiB spool; it should have paused", src.GetEventsRead())
		}
		if o.GetSpoolBytes() > 1<<20 {
			t.Errorf("spool holds %d bytes, over max_bytes %d", o.GetSpoolBytes(), 1<<20)
		}
		t.Logf("spool full: read %d of %d lines, spool %d events / %d bytes, lastError %q", src.GetEventsRead(), total, o.GetSpoolEvents(), o.GetSpoolBytes(), src.GetLastError())
		return nil
	})
	if !strings.Contains(a.log(), "spool is full") {
		t.Errorf("the agent log does not say the spool is full:\n%s", tail(a.log(), 3000))
	}

	rs.Restart()
	d := siemWaitAll(t, rs, "app", byTag("app"), total, 120*time.Second)
	t.Logf("after the spool filled: %s", d)
	if d.duplicates() > 1000 {
		t.Errorf("%d duplicates; at most one batch (1000) should be resent", d.duplicates())
	}
	eventually(t, 30*time.Second, func() error {
		ns, err := siemNodeStatus(c, a.nodeID)
		if err != nil {
			return err
		}
		src := ns.GetStatus().GetSources()[0]
		o, err := siemOutputStatus(ns, "corp-siem")
		if err != nil {
			return err
		}
		if src.GetPaused() || ns.GetState() != "ok" || o.GetSpoolEvents() != 0 {
			return fmt.Errorf("want not paused, state ok, spool empty; got paused %v state %s spool %d", src.GetPaused(), ns.GetState(), o.GetSpoolEvents())
		}
		return nil
	})
}

// ---------------------------------------------------------------------------
// Real auditd

// auditdLock serialises the real-auditd test across processes: the kernel
// audit daemon slot is machine-wide.
const auditdLock = "/tmp/budfleet-e2e-auditd.lock"

func lockAuditd(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile(auditdLock, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	// Polled without blocking (like kubetest.LockKubelet), so that giving
	// up leaves no goroutine stuck in flock holding the file.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if err != syscall.EWOULDBLOCK {
			f.Close()
			t.Fatalf("lock %s: %v", auditdLock, err)
		}
		if time.Now().After(deadline) {
			f.Close()
			t.Fatalf("another test process held %s (it runs auditd) for 2 minutes", auditdLock)
		}
		time.Sleep(250 * time.Millisecond)
	}
	_ = f.Truncate(0)
	fmt.Fprintf(f, "pid %d: %s\n", os.Getpid(), t.Name())
	t.Cleanup(func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	})
}

// hostAuditLog is the log_file of the host's auditd configuration
// (/etc/audit/auditd.conf), /var/log/audit/audit.log when it names none.
func hostAuditLog() string {
	b, _ := os.ReadFile("/etc/audit/auditd.conf")
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, "=")
		if ok && strings.TrimSpace(k) == "log_file" && strings.TrimSpace(v) != "" {
			return strings.TrimSpace(v)
		}
	}
	return "/var/log/audit/audit.log"
}

// auditStatus returns `auditctl -s` as a map (enabled, pid, ...).
func auditStatus() (map[string]string, error) {
	out, err := exec.Command("auditctl", "-s").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("auditctl -s: %v: %s", err, out)
	}
	st := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) >= 2 {
			st[f[0]] = f[1]
		}
	}
	return st, nil
}

// TestSIEMRealAuditd: a real auditd writes the audit log (a watch rule on a
// temp file with a unique key); the agent parses it (linux-audit) and sends
// it over TLS syslog; rsyslog gets the events with their fields in the
// structured data.
func TestSIEMRealAuditd(t *testing.T) {
	t.Parallel()
	root := repoRoot
	if out, err := exec.Command("bash", filepath.Join(root, "scripts", "ensure-auditd.sh")).CombinedOutput(); err != nil {
		t.Fatalf("scripts/ensure-auditd.sh: %v\n%s", err, out)
	}
	lockAuditd(t)
	st, err := auditStatus()
	if err != nil {
		t.Fatalf("kernel audit is not usable here (this test needs root with CAP_AUDIT_CONTROL): %v", err)
	}
	// A host that runs its own auditd keeps it: the test then forwards
	// that daemon's log instead of starting one (which would take the
	// kernel's audit stream away from it).
	hostAuditd := 0
	if pid, _ := strconv.Atoi(st["pid"]); pid != 0 {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			hostAuditd = pid
		}
	}
	wasEnabled := st["enabled"]

	rs := rsyslogtest.Start(t, rsyslogtest.Options{})
	c := startController(t)
	a := joinAgent(t, c, c.createToken(t), "siem-auditd")
	dir := siemTempDir(t, "auditd")
	auditLog := filepath.Join(dir, "audit.log")
	if hostAuditd != 0 {
		auditLog = hostAuditLog()
		t.Logf("the host runs auditd (pid %d): forwarding its log %s", hostAuditd, auditLog)
	}
	siemConfigureAgent(t, a, siemSection{
		Sources: []siemSource{{Path: auditLog, Tag: "audit", Format: "linux-audit"}},
		Outputs: []siemOutput{{Name: "corp-siem", Type: "syslog", Address: rs.TLSAddr, Match: "audit.**", TLS: siemGoodTLS(rs)}},
	})
	if hostAuditd == 0 {
		startOwnAuditd(t, dir, auditLog, wasEnabled)
	} else if st["enabled"] == "0" {
		t.Fatalf("the host's auditd (pid %d) runs with auditing disabled (auditctl -s: enabled 0); the test will not turn it on for it", hostAuditd)
	}
	runAuditdChecks(t, a, rs, dir, auditLog)
}

// startOwnAuditd runs an auditd of the test's own, writing auditLog, until
// the test ends, and puts the kernel's enabled flag back.
func startOwnAuditd(t *testing.T, dir, auditLog, wasEnabled string) {
	t.Helper()
	plugins := filepath.Join(dir, "plugins.d")
	if err := os.Mkdir(plugins, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`local_events = yes
write_logs = yes
log_file = %s
log_format = ENRICHED
flush = INCREMENTAL_ASYNC
freq = 1
max_log_file = 0
max_log_file_action = IGNORE
space_left = 2
space_left_action = IGNORE
admin_space_left = 1
admin_space_left_action = IGNORE
disk_full_action = IGNORE
disk_error_action = IGNORE
plugin_dir = %s
end_of_event_timeout = 2
q_depth = 2000
overflow_action = IGNORE
`, auditLog, plugins)
	if err := os.WriteFile(filepath.Join(dir, "auditd.conf"), []byte(conf), 0o640); err != nil {
		t.Fatal(err)
	}

	auditdLog := filepath.Join(dir, "auditd.out")
	dumpLogOnFailure(t, "auditd", auditdLog)
	auditd := startProc(t, t, "auditd", auditdLog, "auditd", "-n", "-c", dir)
	t.Cleanup(func() {
		if !auditd.exited() {
			_ = auditd.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-auditd.done:
			case <-time.After(10 * time.Second):
				t.Errorf("auditd did not exit within 10s of SIGTERM")
			}
		}
		if wasEnabled == "0" {
			if out, err := exec.Command("auditctl", "-e", "0").CombinedOutput(); err != nil {
				t.Errorf("auditctl -e 0: %v: %s", err, out)
			}
		}
	})
	eventually(t, 15*time.Second, func() error {
		if auditd.exited() {
			return fmt.Errorf("auditd exited: %v\n%s", auditd.waitErr, readLog(auditdLog))
		}
		st, err := auditStatus()
		if err != nil {
			return err
		}
		if st["pid"] != strconv.Itoa(auditd.cmd.Process.Pid) || st["enabled"] == "0" {
			return fmt.Errorf("kernel audit status %v; want enabled with pid %d", st, auditd.cmd.Process.Pid)
		}
		if _, err := os.Stat(auditLog); err != nil {
			return err
		}
		return nil
	})
}

// runAuditdChecks watches a temp file with a unique key, starts the agent,
// touches the file and checks rsyslog's copies of the events.
func runAuditdChecks(t *testing.T, a *agent, rs *rsyslogtest.Server, dir, auditLog string) {
	t.Helper()
	watched := filepath.Join(dir, "watched")
	if err := os.WriteFile(watched, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	key := fmt.Sprintf("budfleet-e2e-%08x", rand.Uint32())
	if out, err := exec.Command("auditctl", "-w", watched, "-p", "wa", "-k", key).CombinedOutput(); err != nil {
		t.Fatalf("auditctl -w: the kernel refused the audit rule (needs CAP_AUDIT_CONTROL): %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("auditctl", "-W", watched, "-p", "wa", "-k", key).CombinedOutput(); err != nil {
			t.Errorf("auditctl -W (delete our rule): %v: %s", err, out)
		}
	})

	a.start(t)
	const touches = 3
	for range touches {
		if out, err := exec.Command("touch", watched).CombinedOutput(); err != nil {
			t.Fatalf("touch: %v: %s", err, out)
		}
	}

	type auditEvent struct {
		raw    string
		params map[string]string
	}
	var events []auditEvent
	eventually(t, 30*time.Second, func() error {
		events = events[:0]
		for _, r := range siemRecords(t, rs) {
			if r.MsgID != "audit" {
				continue
			}
			sd, err := syslog.ParseStructuredData([]byte(r.SD))
			if err != nil {
				return fmt.Errorf("structured data %q: %v", r.SD, err)
			}
			p := map[string]string{}
			for _, e := range sd {
				if e.ID != syslog.DefaultSDID {
					continue
				}
				for _, kv := range e.Params {
					p[kv.Name] = kv.Value
				}
			}
			if p["key"] == key && p["comm"] == "touch" {
				events = append(events, auditEvent{raw: r.RawLine, params: p})
			}
		}
		if len(events) < touches {
			return fmt.Errorf("%d events of touch with key %s in rsyslog (of %d records); want %d\naudit.log:\n%s",
				len(events), key, rs.Count(), touches, tail(readLog(auditLog), 3000))
		}
		return nil
	})
	for _, e := range events {
		p := e.params
		if p["type"] != "SYSCALL" || !strings.Contains(p["types"], "SYSCALL") || !strings.Contains(p["types"], "PATH") {
			t.Errorf("type %q types %q; want type SYSCALL and types with SYSCALL and PATH: %s", p["type"], p["types"], e.raw)
		}
		if p["exe"] != "/usr/bin/touch" || p["success"] != "yes" || p["syscall"] == "" || p["serial"] == "" {
			t.Errorf("exe %q success %q syscall %q serial %q; want /usr/bin/touch, yes, set, set: %s", p["exe"], p["success"], p["syscall"], p["serial"], e.raw)
		}
	}
	if len(events) > 0 {
		t.Logf("%d audit events with key %s; one: %s", len(events), key, events[0].raw)
	}
}

// ---------------------------------------------------------------------------
// Bad TLS, fixed by a pushed configuration

// TestSIEMBadTLSExplainedThenFixedByPush: outputs with a CA that did not
// sign rsyslog's certificate, an expired client certificate and no client
// certificate, over both TLS syslog and RELP. Status explains each; nothing
// is acknowledged or received. A corrected configuration pushed with budctl
// siem apply is applied without a restart and everything arrives.
func TestSIEMBadTLSExplainedThenFixedByPush(t *testing.T) {
	t.Parallel()
	rs := rsyslogtest.Start(t, rsyslogtest.Options{BadTLS: true})
	c := startController(t)
	a := joinAgent(t, c, c.createToken(t), "siem-badtls")
	dir := siemTempDir(t, "badtls")

	type badCase struct {
		tag      string
		tls      *siemTLS
		keywords []string // what the error must say
	}
	cases := []badCase{
		{"badca", &siemTLS{CAFile: rs.OtherCAFile, CertFile: rs.ClientCertFile, KeyFile: rs.ClientKeyFile}, []string{"unknown CA", "ca_file"}},
		{"expired", &siemTLS{CAFile: rs.CAFile, CertFile: rs.ExpiredClientCertFile, KeyFile: rs.ExpiredClientKeyFile}, []string{"expired", "cert_file"}},
		{"nocert", &siemTLS{CAFile: rs.CAFile}, []string{"client certificate", "cert_file"}},
	}
	types := map[string]string{"syslog": rs.TLSAddr, "relp": rs.RELPAddr}
	build := func(fixed bool) siemSection {
		var sec siemSection
		for _, bc := range cases {
			sec.Sources = append(sec.Sources, siemSource{Path: filepath.Join(dir, bc.tag+".log"), Tag: bc.tag, Format: "raw"})
			for _, typ := range []string{"syslog", "relp"} {
				tls := bc.tls
				if fixed {
					tls = siemGoodTLS(rs)
				}
				sec.Outputs = append(sec.Outputs, siemOutput{Name: bc.tag + "-" + typ, Type: typ, Address: types[typ], Match: bc.tag, TLS: tls})
			}
		}
		return sec
	}
	siemConfigureAgent(t, a, build(false))
	logs := map[string]*seqLog{}
	for _, bc := range cases {
		logs[bc.tag] = newSeqLog(t, filepath.Join(dir, bc.tag+".log"), "raw", bc.tag, 30)
		if err := logs[bc.tag].write(300); err != nil {
			t.Fatal(err)
		}
	}
	a.start(t)
	a.waitReady(t)

	eventually(t, 30*time.Second, func() error {
		ns, err := siemNodeStatus(c, a.nodeID)
		if err != nil {
			return err
		}
		if ns.GetState() != "failing" {
			return fmt.Errorf("state %q, want failing", ns.GetState())
		}
		var problems []string
		for _, bc := range cases {
			for _, typ := range []string{"syslog", "relp"} {
				o, err := siemOutputStatus(ns, bc.tag+"-"+typ)
				if err != nil {
					return err
				}
				for _, kw := range bc.keywords {
					if !strings.Contains(o.GetLastError(), kw) {
						problems = append(problems, fmt.Sprintf("%s: lastError %q does not say %q", o.GetName(), o.GetLastError(), kw))
					}
				}
			}
		}
		if len(problems) > 0 {
			return errors.New(strings.Join(problems, "\n"))
		}
		for _, o := range ns.GetStatus().GetOutputs() {
			t.Logf("%s: %s", o.GetName(), o.GetLastError())
		}
		return nil
	})
	// While the TLS settings are wrong nothing is acknowledged and rsyslog
	// takes nothing.
	more := func() {
		for _, l := range logs {
			if err := l.write(100); err != nil {
				t.Fatal(err)
			}
		}
	}
	more()
	consistently(t, 2*time.Second, func() error {
		if n := rs.Count(); n != 0 {
			return fmt.Errorf("rsyslog received %d messages over bad TLS:\n%s", n, strings.Join(rs.Received()[:min(n, 5)], "\n"))
		}
		ns, err := siemNodeStatus(c, a.nodeID)
		if err != nil {
			return err
		}
		for _, o := range ns.GetStatus().GetOutputs() {
			if o.GetEventsAcknowledged() != 0 || o.GetConnected() {
				return fmt.Errorf("%s: eventsAcknowledged %d connected %v over bad TLS", o.GetName(), o.GetEventsAcknowledged(), o.GetConnected())
			}
		}
		return nil
	})

	// The fix, pushed by the controller.
	good := siemWriteFile(t, filepath.Join(dir, "good.yaml"), build(true))
	resp := siemApply(t, c, good)
	if len(resp.GetNodeIds()) != 1 || resp.GetNodeIds()[0] != a.nodeID {
		t.Errorf("apply selected nodes %v, want [%s]", resp.GetNodeIds(), a.nodeID)
	}
	more()
	for _, bc := range cases {
		for _, input := range []string{"tls", "relp"} {
			d := siemWaitAll(t, rs, bc.tag+" via "+input, byTagInput(bc.tag, input), logs[bc.tag].written(), 60*time.Second)
			if d.duplicates() != 0 {
				t.Errorf("%s via %s: %s; want no duplicates", bc.tag, input, d)
			}
		}
	}
	eventually(t, 20*time.Second, func() error {
		ns, err := siemNodeStatus(c, a.nodeID)
		if err != nil {
			return err
		}
		st := ns.GetStatus()
		if st.GetConfigSource() != "controller" || st.GetConfigVersion() != resp.GetVersion() || ns.GetDesiredConfigVersion() != resp.GetVersion() {
			return fmt.Errorf("config %s v%d (desired v%d); want controller v%d", st.GetConfigSource(), st.GetConfigVersion(), ns.GetDesiredConfigVersion(), resp.GetVersion())
		}
		if ns.GetState() != "ok" || st.GetConfigError() != "" {
			return fmt.Errorf("state %s configError %q; want ok", ns.GetState(), st.GetConfigError())
		}
		for _, o := range st.GetOutputs() {
			if o.GetSpoolEvents() != 0 || !o.GetConnected() {
				return fmt.Errorf("%s: spool %d connected %v", o.GetName(), o.GetSpoolEvents(), o.GetConnected())
			}
		}
		return nil
	})
	if a.proc.exited() {
		t.Errorf("the agent exited; the pushed configuration must apply without a restart")
	}
	if n := strings.Count(a.log(), " start: bud-agent run "); n != 1 {
		t.Errorf("the agent was started %d times; want once", n)
	}

	// The pushed configuration is kept: after a restart the agent runs it,
	// not the bad local one.
	a.stop(t)
	a.start(t)
	more()
	for _, bc := range cases {
		siemWaitAll(t, rs, bc.tag+" via relp after a restart", byTagInput(bc.tag, "relp"), logs[bc.tag].written(), 60*time.Second)
	}
	eventually(t, 20*time.Second, func() error {
		ns, err := siemNodeStatus(c, a.nodeID)
		if err != nil {
			return err
		}
		if st := ns.GetStatus(); st.GetConfigSource() != "controller" || st.GetConfigVersion() != resp.GetVersion() || ns.GetState() != "ok" {
			return fmt.Errorf("after a restart: config %s v%d state %s; want controller v%d ok", st.GetConfigSource(), st.GetConfigVersion(), ns.GetState(), resp.GetVersion())
		}
		return nil
	})
}

// TestSIEMPushedConfigRenamingOutputKeepsBacklog: while the SIEM is
// unreachable the spool fills (1 MiB) for output "old"; the operator pushes
// a configuration whose output has another name ("corp-siem") and works.
// The events read while "old" failed must not be stranded in a queue no
// output sends, and the stranded bytes must not keep the spool full: the
// backlog and every later line arrive.
func TestSIEMPushedConfigRenamingOutputKeepsBacklog(t *testing.T) {
	t.Parallel()
	const backlog = 6000
	rs := rsyslogtest.Start(t, rsyslogtest.Options{})
	c := startController(t)
	a := joinAgent(t, c, c.createToken(t), "siem-rename-output")
	dir := siemTempDir(t, "renout")
	logPath := filepath.Join(dir, "app.log")
	dead := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	siemConfigureAgent(t, a, siemSection{
		Sources: []siemSource{{Path: logPath, Tag: "app", Format: "raw"}},
		Outputs: []siemOutput{{Name: "old", Type: "relp", Address: dead, TLS: siemGoodTLS(rs)}},
		Spool:   &siemSpool{MaxBytes: 1 << 20},
	})
	w := newSeqLog(t, logPath, "raw", "app", 220)
	if err := w.write(backlog); err != nil {
		t.Fatal(err)
	}
	a.start(t)
	a.waitReady(t)
	eventually(t, 30*time.Second, func() error {
		ns, err := siemNodeStatus(c, a.nodeID)
		if err != nil {
			return err
		}
		if srcs := ns.GetStatus().GetSources(); len(srcs) != 1 || !srcs[0].GetPaused() {
			return fmt.Errorf("want the source paused on a full spool; status %v", ns.GetStatus())
		}
		return nil
	})

	good := siemWriteFile(t, filepath.Join(dir, "good.yaml"), siemSection{
		Sources: []siemSource{{Path: logPath, Tag: "app", Format: "raw"}},
		Outputs: []siemOutput{{Name: "corp-siem", Type: "relp", Address: rs.RELPAddr, TLS: siemGoodTLS(rs)}},
		Spool:   &siemSpool{MaxBytes: 1 << 20},
	})
	v := siemApply(t, c, good).GetVersion()
	if err := w.write(100); err != nil {
		t.Fatal(err)
	}
	err := poll(30*time.Second, func() error {
		d := siemCollect(t, rs, byTag("app"))
		if miss := d.missing(w.written()); len(miss) > 0 {
			return fmt.Errorf("%d of %d lines missing (first %v); %s", len(miss), w.written(), firstN(miss, 5), d)
		}
		return nil
	})
	ns, serr := siemNodeStatus(c, a.nodeID)
	if serr != nil {
		t.Fatal(serr)
	}
	if err != nil {
		t.Errorf("after pushing v%d, which renamed the output: %v\nstatus: state %s, sources %v, outputs %v",
			v, err, ns.GetState(), ns.GetStatus().GetSources(), ns.GetStatus().GetOutputs())
	}
}

// ---------------------------------------------------------------------------
// Fleet-managed configuration

// TestSIEMFleetConfigSelectorAndValidation: a configuration applied with
// --selector rack=r1 reaches only the r1 node (the r2 node keeps its local
// one); invalid configurations are refused with a clear error and change
// nothing; status lists failing nodes first.
func TestSIEMFleetConfigSelectorAndValidation(t *testing.T) {
	t.Parallel()
	rs := rsyslogtest.Start(t, rsyslogtest.Options{})
	c := startController(t)
	dir := siemTempDir(t, "fleet")
	r1 := joinAgent(t, c, c.createToken(t, "--label", "rack=r1"), "siem-r1")
	r2 := joinAgent(t, c, c.createToken(t, "--label", "rack=r2"), "siem-r2")
	localLog := filepath.Join(dir, "local.log")
	siemConfigureAgent(t, r1, siemSection{
		Sources: []siemSource{{Path: localLog, Tag: "local", Format: "raw"}},
		Outputs: []siemOutput{{Name: "local-siem", Type: "relp", Address: rs.RELPAddr, TLS: siemGoodTLS(rs)}},
	})
	// r2's local output points at a port nothing listens on: failing.
	deadAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	siemConfigureAgent(t, r2, siemSection{
		Sources: []siemSource{{Path: localLog, Tag: "local", Format: "raw"}},
		Outputs: []siemOutput{{Name: "local-siem", Type: "relp", Address: deadAddr, TLS: siemGoodTLS(rs)}},
	})
	local := newSeqLog(t, localLog, "raw", "local", 20)
	if err := local.write(100); err != nil {
		t.Fatal(err)
	}
	r1.start(t)
	r2.start(t)
	r1.waitReady(t)
	r2.waitReady(t)
	siemWaitAll(t, rs, "local from r1", func(r rsyslogtest.Record) bool { return r.MsgID == "local" && r.Host == "siem-r1" }, 100, 30*time.Second)

	fleetLog := filepath.Join(dir, "fleet.log")
	fleet := newSeqLog(t, fleetLog, "raw", "fleet", 20)
	if err := fleet.write(200); err != nil {
		t.Fatal(err)
	}
	good := siemWriteFile(t, filepath.Join(dir, "good.yaml"), siemSection{
		Sources: []siemSource{{Path: fleetLog, Tag: "fleet", Format: "raw"}},
		Outputs: []siemOutput{{Name: "fleet-siem", Type: "relp", Address: rs.RELPAddr, Match: "fleet", TLS: siemGoodTLS(rs)}},
	})
	resp := siemApply(t, c, good, "--selector", "rack=r1")
	if len(resp.GetNodeIds()) != 1 || resp.GetNodeIds()[0] != r1.nodeID {
		t.Errorf("apply --selector rack=r1 selected %v; want only r1 (%s)", resp.GetNodeIds(), r1.nodeID)
	}
	v := resp.GetVersion()
	siemWaitAll(t, rs, "fleet", byTag("fleet"), 200, 30*time.Second)
	for _, r := range siemRecords(t, rs) {
		if r.MsgID == "fleet" && r.Host != "siem-r1" {
			t.Errorf("a fleet record came from %q; the configuration selected only siem-r1: %s", r.Host, r.RawLine)
			break
		}
	}

	checkNodes := func() error {
		s1, err := siemNodeStatus(c, r1.nodeID)
		if err != nil {
			return err
		}
		s2, err := siemNodeStatus(c, r2.nodeID)
		if err != nil {
			return err
		}
		if st := s1.GetStatus(); st.GetConfigSource() != "controller" || st.GetConfigVersion() != v || s1.GetDesiredConfigVersion() != v || s1.GetState() != "ok" {
			return fmt.Errorf("r1: config %s v%d desired v%d state %s; want controller v%d, ok", st.GetConfigSource(), st.GetConfigVersion(), s1.GetDesiredConfigVersion(), s1.GetState(), v)
		}
		if _, err := siemOutputStatus(s1, "fleet-siem"); err != nil {
			return err
		}
		st2 := s2.GetStatus()
		if st2.GetConfigSource() != "local" || st2.GetConfigVersion() != 0 || s2.GetDesiredConfigVersion() != 0 {
			return fmt.Errorf("r2: config %s v%d desired v%d; want its local config", st2.GetConfigSource(), st2.GetConfigVersion(), s2.GetDesiredConfigVersion())
		}
		o2, err := siemOutputStatus(s2, "local-siem")
		if err != nil {
			return err
		}
		if o2.GetAddress() != deadAddr || s2.GetState() != "failing" || o2.GetLastError() == "" {
			return fmt.Errorf("r2: output %s state %s lastError %q; want %s failing", o2.GetAddress(), s2.GetState(), o2.GetLastError(), deadAddr)
		}
		return nil
	}
	eventually(t, 20*time.Second, checkNodes)

	// Failing nodes first.
	all, err := siemStatusAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 || all[0].GetNodeId() != r2.nodeID || all[0].GetState() != "failing" || all[1].GetState() != "ok" {
		var got []string
		for _, n := range all {
			got = append(got, n.GetHostname()+"="+n.GetState())
		}
		t.Errorf("siem status lists %v; want the failing siem-r2 first, then siem-r1 ok", got)
	}
	table := c.mustBudctl(t, "siem", "status")
	if i1, i2 := strings.Index(table, "siem-r1"), strings.Index(table, "siem-r2"); i1 < 0 || i2 < 0 || i2 > i1 {
		t.Errorf("siem status table does not list siem-r2 (failing) before siem-r1:\n%s", table)
	}

	// Invalid configurations: refused, nothing stored, nothing changes.
	bad := []struct {
		name, yaml string
		want       []string
	}{
		{"unknown-key", fmt.Sprintf("siem:\n  sources:\n    - {path: %s, tag: fleet}\n  outputs:\n    - {name: x, type: relp, address: %s}\n  bogus_key: 1\n", fleetLog, rs.RELPAddr),
			[]string{"bogus_key", "nothing was stored"}},
		{"unknown-key-bare-section", fmt.Sprintf("sources:\n  - {path: %s, tag: fleet}\noutputs:\n  - {name: x, type: relp, address: %s}\nbogus_key: 1\n", fleetLog, rs.RELPAddr),
			[]string{"bogus_key", "nothing was stored"}},
		{"bad-output-type", fmt.Sprintf("siem:\n  sources:\n    - {path: %s, tag: fleet}\n  outputs:\n    - {name: x, type: kafka, address: %s}\n", fleetLog, rs.RELPAddr),
			[]string{`"kafka"`, "syslog, relp or splunk_hec", "nothing was stored"}},
	}
	for _, b := range bad {
		p := filepath.Join(dir, b.name+".yaml")
		if err := os.WriteFile(p, []byte(b.yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		stdout, stderr, err := c.budctl("siem", "apply", "-f", p)
		if err == nil {
			t.Errorf("siem apply %s succeeded (%s); want it refused", b.name, stdout)
			continue
		}
		for _, w := range b.want {
			if !strings.Contains(stderr, w) {
				t.Errorf("siem apply %s: stderr %q does not say %q", b.name, stderr, w)
			}
		}
	}
	// Still the same versions everywhere (a heartbeat or two later).
	consistently(t, 1500*time.Millisecond, checkNodes)
	// And nothing was stored: the next configuration gets the next version.
	resp2 := siemApply(t, c, good, "--selector", "rack=r1")
	if resp2.GetVersion() != v+1 {
		t.Errorf("after refused configurations the next version is %d; want %d (nothing stored)", resp2.GetVersion(), v+1)
	}
}

// ---------------------------------------------------------------------------
// The controller's own audit log

// TestSIEMControllerAuditEvents: a controller run with --siem-config
// forwards its audit log (operator actions) over RELP.
func TestSIEMControllerAuditEvents(t *testing.T) {
	t.Parallel()
	rs := rsyslogtest.Start(t, rsyslogtest.Options{})
	cfg := siemWriteFile(t, filepath.Join(siemTempDir(t, "ctl"), "siem.yaml"), siemSection{
		Outputs: []siemOutput{{Name: "soc", Type: "relp", Address: rs.RELPAddr, Match: "budfleet.**", TLS: siemGoodTLS(rs)}},
	})
	c := startController(t, withServeArgs("--siem-config", cfg))
	tok := c.createToken(t, "--label", "rack=audit")
	_, tokenID, _ := tokenParts(t, tok)
	a := joinAgent(t, c, tok, "siem-ctl-audit")
	c.mustBudctl(t, "nodes", "delete", a.nodeID)

	type entry struct {
		Action  string `json:"action"`
		TokenID string `json:"token_id"`
		NodeID  string `json:"node_id"`
	}
	eventually(t, 30*time.Second, func() error {
		var created, deleted bool
		for _, r := range siemRecords(t, rs) {
			if r.MsgID != "budfleet.audit" {
				continue
			}
			if r.App != "bud-controller" {
				return fmt.Errorf("audit record from app %q, want bud-controller: %s", r.App, r.RawLine)
			}
			var e entry
			if err := json.Unmarshal(bytes.TrimSpace(r.Msg), &e); err != nil {
				return fmt.Errorf("audit record is not a JSON line: %v: %s", err, r.RawLine)
			}
			switch {
			case e.Action == "token.create" && e.TokenID == tokenID:
				created = true
			case e.Action == "node.delete" && e.NodeID == a.nodeID:
				deleted = true
			}
		}
		if !created || !deleted {
			return fmt.Errorf("token.create of %s seen %v, node.delete of %s seen %v; rsyslog has %d records\n%s",
				tokenID, created, a.nodeID, deleted, rs.Count(), strings.Join(rs.Received(), "\n"))
		}
		return nil
	})
}
