// Package rsyslogtest runs a real rsyslogd (Debian's rsyslog 8.2302 with
// the gtls and relp modules) as a SIEM receiver for tests: a TLS syslog
// listener (imtcp, gtls, x509/certvalid, RFC 5425 octet counting) and a
// RELP-over-TLS listener (imrelp, tls.authmode certvalid), both on
// 127.0.0.1 with mutual TLS, writing every message they receive to
// received.log.
//
// Start installs rsyslog when it is missing (scripts/ensure-rsyslog.sh,
// which needs root and apt), generates a CA, a server certificate for
// 127.0.0.1/localhost and a client certificate, and starts rsyslogd in the
// foreground with its own config, pid file and work directory under
// t.TempDir(); t.Cleanup stops it.
//
// # Reading received.log
//
// Each received message is one line:
//
//	INPUT host=HOSTNAME app=APP-NAME msgid=MSGID sd="SD" msg="MSG"
//
// INPUT is "tls" or "relp". HOSTNAME, APP-NAME and MSGID are RFC 5424
// header fields (printable ASCII, no spaces). SD and MSG are rsyslog's
// %structured-data% and %msg% with JSON string escaping (the template's
// "json" option): '"' '\' and '/' are backslash-escaped, control
// characters are \n, \t, \uXXXX..., other bytes (including non-ASCII and
// invalid UTF-8) are written as is. The config turns rsyslog's
// escape-on-receive off (parser.escapeControlCharactersOnReceive="off");
// with it on, rsyslog would rewrite a newline in a message as "#012" (octal
// of the byte after '#') before any template sees it, which cannot be
// undone exactly because the message may itself contain "#012". So a test
// recovers a message exactly with ParseLine (or Server.Records): it undoes
// the JSON escaping and drops the UTF-8 BOM that an RFC 5424 sender puts in
// front of a UTF-8 MSG (rsyslog keeps it in %msg%). SD is the structured
// data as it arrived (RFC 5424 syntax with its own \" \\ \] escapes), to be
// parsed with the sender's parser. rsyslog drops one trailing LF of a
// message (parser.dropTrailingLFOnReception) and cuts messages longer than
// Options.MaxMessageSize.
//
// # rsyslog quirks this config works around
//
//   - imrelp's default TLS library (GnuTLS, librelp 1.11.0) does not enforce
//     tls.authmode="certvalid": a client certificate from an unknown CA or an
//     expired one is logged as invalid and the session still delivers
//     messages. The config loads imrelp with tls.tlslib="openssl", which
//     refuses them (alert "unknown certificate authority", or serverclose
//     for an expired certificate). See Options.RELPTLSLib.
//   - imtcp with gtls checks the client certificate only after the TLS
//     handshake and then just closes the connection (no alert), so a
//     client's handshake succeeds and its first writes may too.
//   - rsyslog's maxMessageSize defaults to 8 KiB; longer messages are cut.
//   - In the foreground rsyslogd writes its own messages to stderr unless
//     processInternalMessages="on"; here they go to InternalLog.
//   - Each instance needs its own pid file (-i) and work directory; after
//     SIGTERM, wait for the process to exit before starting another on the
//     same ports.
package rsyslogtest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/bud-ecosystem/budfleet/internal/freeport"
)

// Options configure Start.
type Options struct {
	// BadTLS also writes the fixtures for bad-TLS tests: a second CA, a
	// client certificate it signed, and an expired client certificate from
	// the right CA (see Fixtures).
	BadTLS bool
	// MaxMessageSize is rsyslog's maxMessageSize and imrelp's maxDataSize
	// in bytes (default 256 KiB; rsyslog's own default, 8 KiB, would cut
	// multi-record audit events).
	MaxMessageSize int
	// RELPTLSLib is imrelp's tls.tlslib: "openssl" (the default) or
	// "gnutls". With gnutls, librelp 1.11.0 (Debian 12) does not enforce
	// tls.authmode="certvalid": it takes messages from clients whose
	// certificate is expired or signed by an unknown CA (it only logs the
	// failed check). Use gnutls only to show that.
	RELPTLSLib string
}

// Server is a running (or stopped) rsyslogd.
type Server struct {
	Fixtures
	// Dir is rsyslog's work directory and holds all the files.
	Dir string
	// ConfFile is the rsyslog config, ReceivedFile the messages received
	// (see the package documentation), InternalLog rsyslog's own messages
	// (why it refused a TLS connection, and so on) and OutFile its stdout
	// and stderr.
	ConfFile     string
	ReceivedFile string
	InternalLog  string
	OutFile      string
	PIDFile      string
	// TLSAddr is the TLS syslog listener, RELPAddr the RELP-over-TLS one.
	TLSAddr  string
	RELPAddr string

	t        testing.TB
	rsyslogd string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}

	countMu  sync.Mutex
	countOff int64
	count    int
}

var (
	ensureOnce sync.Once
	ensureErr  error
)

// RepoRoot returns the directory above the working directory that holds
// go.mod.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// Ensure runs scripts/ensure-rsyslog.sh once per process and returns the
// path of rsyslogd.
func Ensure() (string, error) {
	ensureOnce.Do(func() {
		root, err := RepoRoot()
		if err != nil {
			ensureErr = err
			return
		}
		cmd := exec.Command("bash", filepath.Join(root, "scripts", "ensure-rsyslog.sh"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			ensureErr = fmt.Errorf("scripts/ensure-rsyslog.sh: %v: %s", err, out)
		}
	})
	if ensureErr != nil {
		return "", ensureErr
	}
	if p, err := exec.LookPath("rsyslogd"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/sbin/rsyslogd", "/sbin/rsyslogd"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("rsyslogd not found after scripts/ensure-rsyslog.sh")
}

// Start writes the certificates and config into t.TempDir(), checks the
// config with rsyslogd -N1, starts rsyslogd and waits until both listeners
// accept connections. t.Cleanup stops it.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	rsyslogd, err := Ensure()
	if err != nil {
		t.Fatalf("rsyslogtest: %v", err)
	}
	if opts.MaxMessageSize <= 0 {
		opts.MaxMessageSize = 256 << 10
	}
	if opts.RELPTLSLib == "" {
		opts.RELPTLSLib = "openssl"
	}
	dir := t.TempDir()
	fx, err := WriteFixtures(dir, opts.BadTLS)
	if err != nil {
		t.Fatalf("rsyslogtest: certificates: %v", err)
	}
	s := &Server{
		Fixtures:     fx,
		Dir:          dir,
		ConfFile:     filepath.Join(dir, "rsyslog.conf"),
		ReceivedFile: filepath.Join(dir, "received.log"),
		InternalLog:  filepath.Join(dir, "internal.log"),
		OutFile:      filepath.Join(dir, "rsyslogd.out"),
		PIDFile:      filepath.Join(dir, "rsyslogd.pid"),
		t:            t,
		rsyslogd:     rsyslogd,
	}
	tlsPort, err := freeport.Pick()
	if err != nil {
		t.Fatalf("rsyslogtest: %v", err)
	}
	relpPort, err := freeport.Pick()
	if err != nil {
		t.Fatalf("rsyslogtest: %v", err)
	}
	s.TLSAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(tlsPort))
	s.RELPAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(relpPort))
	if err := os.WriteFile(s.ConfFile, []byte(s.config(tlsPort, relpPort, opts)), 0o644); err != nil {
		t.Fatalf("rsyslogtest: %v", err)
	}
	if out, err := exec.Command(rsyslogd, "-N1", "-f", s.ConfFile).CombinedOutput(); err != nil {
		t.Fatalf("rsyslogtest: rsyslogd -N1 -f %s: %v\n%s", s.ConfFile, err, out)
	}
	t.Cleanup(s.Stop)
	if err := s.start(); err != nil {
		t.Fatalf("rsyslogtest: %v", err)
	}
	return s
}

func (s *Server) config(tlsPort, relpPort int, opts Options) string {
	q := strconv.Quote
	return fmt.Sprintf(`# written by internal/rsyslogtest
global(
  workDirectory=%[1]s
  maxMessageSize="%[2]d"
  parser.escapeControlCharactersOnReceive="off"
  processInternalMessages="on"
  defaultNetstreamDriver="gtls"
  defaultNetstreamDriverCAFile=%[3]s
  defaultNetstreamDriverCertFile=%[4]s
  defaultNetstreamDriverKeyFile=%[5]s
)
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="x509/certvalid" maxSessions="1000")
module(load="imrelp" tls.tlslib=%[10]s)

template(name="received" type="string"
  string="%%inputname%% host=%%hostname%% app=%%app-name%% msgid=%%msgid%% sd=\"%%structured-data:::json%%\" msg=\"%%msg:::json%%\"\n")

ruleset(name="received") {
  action(type="omfile" file=%[6]s template="received")
}

input(type="imtcp" address="127.0.0.1" port="%[7]d" name="tls" ruleset="received")
input(type="imrelp" address="127.0.0.1" port="%[8]d" name="relp" ruleset="received"
  maxDataSize="%[2]d"
  tls="on" tls.cacert=%[3]s tls.mycert=%[4]s tls.myprivkey=%[5]s tls.authmode="certvalid")

# rsyslog's own messages
action(type="omfile" file=%[9]s)
`, q(s.Dir), opts.MaxMessageSize, q(s.CAFile), q(s.ServerCertFile), q(s.ServerKeyFile),
		q(s.ReceivedFile), tlsPort, relpPort, q(s.InternalLog), q(opts.RELPTLSLib))
}

// startTimeout bounds the wait for rsyslogd to listen.
const startTimeout = 90 * time.Second

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return nil
	}
	out, err := os.OpenFile(s.OutFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.rsyslogd, "-n", "-f", s.ConfFile, "-i", s.PIDFile)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		out.Close()
		return fmt.Errorf("start rsyslogd: %w", err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		out.Close()
		close(done)
	}()
	s.cmd, s.done = cmd, done

	// rsyslogd loads its TLS and RELP modules before it listens; on a
	// loaded 2-core machine that has taken over 15 s. The wait only runs
	// out when something is wrong, so it can be generous.
	deadline := time.Now().Add(startTimeout)
	for _, addr := range []string{s.TLSAddr, s.RELPAddr} {
		for {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-done:
				s.cmd = nil
				return fmt.Errorf("rsyslogd exited before listening on %s: %s\n%s", addr, cmd.ProcessState, s.tail(s.OutFile))
			default:
			}
			if time.Now().After(deadline) {
				s.stopLocked()
				return fmt.Errorf("rsyslogd did not listen on %s within %s\n%s\n%s", addr, startTimeout, s.tail(s.OutFile), s.tail(s.InternalLog))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

// Stop stops rsyslogd (SIGTERM, then SIGKILL after 15 s) and waits for it
// to exit. Stopping a stopped Server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked()
}

func (s *Server) stopLocked() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(15 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
}

// Restart stops rsyslogd if it runs and starts it again on the same ports,
// appending to the same received.log.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	if err := s.start(); err != nil {
		s.t.Fatalf("rsyslogtest: restart: %v", err)
	}
}

// Running reports whether rsyslogd runs.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd != nil
}

// Received returns the lines of received.log (see the package
// documentation for their format).
func (s *Server) Received() []string {
	b, err := os.ReadFile(s.ReceivedFile)
	if err != nil {
		return nil
	}
	// rsyslog may be writing the last line right now: only whole lines count.
	i := bytes.LastIndexByte(b, '\n')
	if i < 0 {
		return nil
	}
	return strings.Split(string(b[:i]), "\n")
}

// Records returns the received messages parsed with ParseLine; it fails
// the test on a line that does not parse.
func (s *Server) Records(t testing.TB) []Record {
	t.Helper()
	lines := s.Received()
	recs := make([]Record, 0, len(lines))
	for i, l := range lines {
		r, err := ParseLine(l)
		if err != nil {
			t.Fatalf("rsyslogtest: received.log line %d: %v: %q", i+1, err, l)
		}
		recs = append(recs, r)
	}
	return recs
}

// Count returns the number of complete lines in received.log, reading
// only what was appended since the last call.
func (s *Server) Count() int {
	s.countMu.Lock()
	defer s.countMu.Unlock()
	f, err := os.Open(s.ReceivedFile)
	if err != nil {
		return s.count
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for {
		n, err := f.ReadAt(buf, s.countOff)
		s.countOff += int64(n)
		s.count += bytes.Count(buf[:n], []byte("\n"))
		if err != nil || n == 0 {
			return s.count
		}
	}
}

// WaitFor waits until received.log has at least n lines and returns them;
// it fails the test after timeout.
func (s *Server) WaitFor(t testing.TB, n int, timeout time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c := s.Count()
		if c >= n {
			return s.Received()
		}
		if time.Now().After(deadline) {
			t.Fatalf("rsyslogtest: %d of %d messages received after %v\nrsyslog's log:\n%s", c, n, timeout, s.tail(s.InternalLog))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Log returns the end of rsyslog's own log (its reasons for refusing
// connections), for test failure messages.
func (s *Server) Log() string { return s.tail(s.InternalLog) }

func (s *Server) tail(file string) string {
	b, err := os.ReadFile(file)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// Record is one parsed line of received.log.
type Record struct {
	Input   string // "tls" or "relp"
	Host    string
	App     string
	MsgID   string
	SD      string // structured data as received, RFC 5424 syntax
	Msg     []byte // the message, exactly as sent, without the UTF-8 BOM
	BOM     bool   // MSG started with the UTF-8 BOM
	RawLine string
}

// ParseLine parses a line of received.log (see the package
// documentation).
func ParseLine(line string) (Record, error) {
	r := Record{RawLine: line}
	rest := line
	next := func(prefix string) (string, error) {
		if !strings.HasPrefix(rest, prefix) {
			return "", fmt.Errorf("expected %q", prefix)
		}
		rest = rest[len(prefix):]
		i := strings.IndexByte(rest, ' ')
		if i < 0 {
			return "", fmt.Errorf("no space after %q", prefix)
		}
		v := rest[:i]
		rest = rest[i+1:]
		return v, nil
	}
	var err error
	if r.Input, err = next(""); err != nil {
		return r, err
	}
	if r.Host, err = next("host="); err != nil {
		return r, err
	}
	if r.App, err = next("app="); err != nil {
		return r, err
	}
	if r.MsgID, err = next("msgid="); err != nil {
		return r, err
	}
	if !strings.HasPrefix(rest, `sd="`) {
		return r, errors.New(`expected sd="`)
	}
	sd, n, err := unquoteJSON(rest[len(`sd="`):])
	if err != nil {
		return r, fmt.Errorf("sd: %w", err)
	}
	r.SD = string(sd)
	rest = rest[len(`sd="`)+n:]
	if !strings.HasPrefix(rest, ` msg="`) {
		return r, errors.New(`expected msg="`)
	}
	msg, n, err := unquoteJSON(rest[len(` msg="`):])
	if err != nil {
		return r, fmt.Errorf("msg: %w", err)
	}
	if rest[len(` msg="`)+n:] != "" {
		return r, errors.New("text after msg")
	}
	if bytes.HasPrefix(msg, []byte("\xEF\xBB\xBF")) {
		r.BOM = true
		msg = msg[3:]
	}
	r.Msg = msg
	return r, nil
}

// unquoteJSON undoes JSON string escaping up to the closing quote and
// returns the bytes and how much of s it used (closing quote included).
// Unlike encoding/json it keeps bytes that are not UTF-8.
func unquoteJSON(s string) ([]byte, int, error) {
	var out []byte
	for i := 0; i < len(s); {
		c := s[i]
		switch c {
		case '"':
			return out, i + 1, nil
		case '\\':
			if i+1 >= len(s) {
				return nil, 0, errors.New("unterminated escape")
			}
			e := s[i+1]
			i += 2
			switch e {
			case '"', '\\', '/':
				out = append(out, e)
			case 'b':
				out = append(out, '\b')
			case 'f':
				out = append(out, '\f')
			case 'n':
				out = append(out, '\n')
			case 'r':
				out = append(out, '\r')
			case 't':
				out = append(out, '\t')
			case 'u':
				r, n, err := hex4(s[i:])
				if err != nil {
					return nil, 0, err
				}
				i += n
				if utf16.IsSurrogate(r) && strings.HasPrefix(s[i:], `\u`) {
					if r2, n2, err := hex4(s[i+2:]); err == nil {
						if d := utf16.DecodeRune(r, r2); d != utf8.RuneError {
							r = d
							i += 2 + n2
						}
					}
				}
				out = utf8.AppendRune(out, r)
			default:
				return nil, 0, fmt.Errorf("unknown escape \\%c", e)
			}
		default:
			out = append(out, c)
			i++
		}
	}
	return nil, 0, errors.New("unterminated string")
}

func hex4(s string) (rune, int, error) {
	if len(s) < 4 {
		return 0, 0, errors.New("short \\u escape")
	}
	v, err := strconv.ParseUint(s[:4], 16, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("bad \\u escape %q", s[:4])
	}
	return rune(v), 4, nil
}

// CPUTime returns the user+system CPU time process pid has used so far
// (Linux /proc; 0 when it cannot be read). For benchmarks.
func CPUTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command (which is in parentheses and may hold
	// spaces): state is field 3, utime 14, stime 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const clkTck = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / clkTck
}

// CPUTime returns the CPU time rsyslogd has used since it was (re)started.
func (s *Server) CPUTime() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	return CPUTime(s.cmd.Process.Pid)
}
