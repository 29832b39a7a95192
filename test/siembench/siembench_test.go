// Package siembench compares the agent's SIEM forwarder with rsyslog's own
// forwarder on the same audit.log, into the same rsyslog receiver, over the
// same transport: syslog over TLS with RFC 5425 octet-counted framing.
//
// Run (takes about five minutes with the default 1,000,000 lines and every variant):
//
//	go test ./test/siembench/ -run '^$' -bench ForwardVsRsyslog -benchtime=1x -count=1 -timeout 30m
//
// Without -bench, `go test ./test/siembench/` starts no process and writes
// no file: it only runs TestAuditGen (the line generator, in memory, ~0.1s).
//
// # What one run does
//
//  1. Writes audit.log (BENCH_LINES lines, default 1,000,000) into a temp
//     dir: a mix of the single-record user-space audit types that sshd,
//     sudo, PAM and systemd write (USER_ACCT, CRED_ACQ, USER_START,
//     USER_CMD, CRED_DISP, USER_END, USER_LOGIN, USER_AUTH, SERVICE_START,
//     SERVICE_STOP), 186-345 bytes (270 on average), every line with its own
//     increasing serial. So one line is one event both for format raw and
//     for linux-audit (the grouper returns such records at once), and the
//     event counts of every variant are equal.
//  2. Starts one receiver (internal/rsyslogtest: rsyslogd, imtcp + gtls,
//     mutual TLS, writing received.log) used by every variant in turn, so
//     the receiver costs all of them the same.
//  3. Variants (BENCH_VARIANTS, default all, in this order: raw,
//     linux-audit, rsyslog, rsyslog-da, relp-raw, relp-linux-audit,
//     rsyslog-relp):
//     - raw, linux-audit: the budfleet forwarder (siem/forward, as
//     `bud-agent run` wires it: tail -> syslog output, through the bbolt
//     spool with fsync when the output falls behind, checkpoint stored
//     after the send) in a child process (this test binary re-executed
//     with SIEMBENCH_CHILD set). The child exits once its status shows
//     every event acknowledged and the spool empty. BENCH_NOSYNC=1 turns
//     the spool's fsync off (not what production does). relp-raw and
//     relp-linux-audit: the same with the RELP output (window 16384) into
//     the receiver's imrelp.
//     - rsyslog: a second rsyslogd (own config, work dir and pid file,
//     foreground child) with imfile reading audit.log from its start and
//     omfwd (gtls, x509/certvalid, octet-counted, RFC 5424 template)
//     sending to the receiver, with a LinkedList main and action queue
//     (size BENCH_RSYSLOG_QUEUE, default 100000, dequeue batches of 1024)
//     in memory: what is queued is lost when it is killed.
//     - rsyslog-da: the same with budfleet's durability: disk-assisted
//     queues (queue.filename, fsynced queue files, saved on shutdown) and
//     the imfile state persisted every 1000 lines.
//     - rsyslog-relp: imfile -> omrelp (TLS, openssl, window 16384) into
//     the receiver's imrelp, in-memory queues.
//     Both forwarders' CPU is counted the same way: the whole process,
//     user+sys from its rusage, from start to exit (for rsyslog, the CPU
//     when the receiver had every line is in the notes too).
//  4. Wall time runs from starting the forwarder process until the
//     receiver's received.log holds every line; events/s is lines / wall.
//     The receiver's CPU over the same interval is reported too, and so is
//     the "other load": CPU the host spent on anything else (from
//     /proc/stat), in cores. The receiver, the forwarder and this process
//     share the host's CPUs; on a shared machine other people's builds
//     and tests slow the wall-clock figures (a run with more than 0.25
//     cores of other load is flagged); CPU s per million events and RSS
//     are much less affected.
//
// After each run the receiver's file is read back for that run: every
// generated serial (msg=audit(TIME:SERIAL)) must be there, at least once,
// or the benchmark fails; duplicates are counted in the notes.
//
// BENCH_ROUNDS=N runs all variants N times, interleaved (each with a fresh
// spool or imfile state); the table lists every run and the metrics are
// the medians.
//
// Metrics (b.ReportMetric): PREFIX-events/s, PREFIX-cpu-s/Mevents and
// PREFIX-peak-RSS-MiB with PREFIX budfleet (raw), budfleet-audit,
// rsyslog, rsyslog-da, budfleet-relp, budfleet-relp-audit, rsyslog-relp.
// A markdown table of all variants goes to stdout.
//
// Profiling: BENCH_PROFILE_DIR=/some/dir makes each budfleet child write
// cpu-OUTPUT-FORMAT.pprof and allocs-OUTPUT-FORMAT.pprof there (go tool pprof -top
// the test binary, saved with -o or built with go test -c, and the file).
//
// Other knobs: BENCH_KEEP=1 keeps the temp dir (audit.log, the spools,
// the rsyslog forwarder's config and logs; not the receiver's dir) and
// prints its path.
package siembench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/internal/rsyslogtest"
	"github.com/bud-ecosystem/budfleet/siem"
	"github.com/bud-ecosystem/budfleet/siem/audit"
	"github.com/bud-ecosystem/budfleet/siem/forward"
)

// childEnv holds the JSON childSpec of a forwarder child process.
const childEnv = "SIEMBENCH_CHILD"

func TestMain(m *testing.M) {
	if spec := os.Getenv(childEnv); spec != "" {
		os.Exit(runChild(spec))
	}
	flag.Parse()
	if f := flag.Lookup("test.bench"); f == nil || f.Value.String() == "" {
		// No benchmark selected: nothing here starts anything.
		os.Exit(m.Run())
	}
	os.Exit(m.Run())
}

// childSpec tells a child process what to forward.
type childSpec struct {
	LogPath   string `json:"log_path"`
	SpoolPath string `json:"spool_path"`
	Format    string `json:"format"`
	// Output is siem.OutputSyslog or siem.OutputRELP.
	Output   string `json:"output"`
	Addr     string `json:"addr"`
	CAFile   string `json:"ca_file"`
	CertFile string `json:"cert_file"`
	KeyFile  string `json:"key_file"`
	Events   int    `json:"events"`
	NoSync   bool   `json:"no_sync"`
	// ProfileDir, when set, gets cpu-Format.pprof and allocs-Format.pprof.
	ProfileDir string        `json:"profile_dir,omitempty"`
	Timeout    time.Duration `json:"timeout"`
}

// childResult is what a child prints on stdout before it exits.
type childResult struct {
	// AckedAfter is from the child's start until its status showed every
	// event acknowledged and the spool empty.
	AckedAfter time.Duration `json:"acked_after"`
	// SpoolFileBytes is the size of the spool file at that moment.
	SpoolFileBytes int64 `json:"spool_file_bytes"`
	// Peaks of /proc/self/status RssAnon (Go heap, stacks) and RssFile
	// (mostly the spool's mmap), sampled every 50ms; they need not peak
	// together, so they may add up to more than ru_maxrss.
	PeakRssAnon int64 `json:"peak_rss_anon"`
	PeakRssFile int64 `json:"peak_rss_file"`
}

// runChild runs the forwarder as `bud-agent run` does (fsync'd spool unless
// NoSync) until every event is acknowledged, then closes it and exits.
func runChild(specJSON string) int {
	start := time.Now()
	var spec childSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		fmt.Fprintln(os.Stderr, "siembench child:", err)
		return 2
	}
	if spec.ProfileDir != "" {
		f, err := os.Create(filepath.Join(spec.ProfileDir, "cpu-"+spec.Output+"-"+spec.Format+".pprof"))
		if err != nil {
			fmt.Fprintln(os.Stderr, "siembench child:", err)
			return 2
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "siembench child:", err)
			return 2
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
			if af, err := os.Create(filepath.Join(spec.ProfileDir, "allocs-"+spec.Output+"-"+spec.Format+".pprof")); err == nil {
				pprof.Lookup("allocs").WriteTo(af, 0)
				af.Close()
			}
		}()
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	fw, err := forward.New(forward.Options{SpoolPath: spec.SpoolPath, Logger: log, Hostname: "bench-node", NoSync: spec.NoSync})
	if err != nil {
		fmt.Fprintln(os.Stderr, "siembench child:", err)
		return 2
	}
	cfg := siem.Config{
		Sources: []siem.SourceConfig{{Path: spec.LogPath, Tag: "audit", Format: spec.Format}},
		Outputs: []siem.OutputConfig{{
			Name: "siem", Type: spec.Output, Address: spec.Addr, Match: "audit",
			TLS: siem.TLSConfig{CAFile: spec.CAFile, CertFile: spec.CertFile, KeyFile: spec.KeyFile},
		}},
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := fw.Apply(ctx, cfg, 0, "local"); err != nil {
		fmt.Fprintln(os.Stderr, "siembench child: apply:", err)
		return 2
	}
	deadline := start.Add(spec.Timeout)
	var res childResult
	sampled := make(chan struct{})
	stopSampling := make(chan struct{})
	go func() {
		defer close(sampled)
		// Every 50ms, one read: the sampling is charged to the child's CPU.
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			anon, file := procStatus2(os.Getpid(), "RssAnon:", "RssFile:")
			res.PeakRssAnon, res.PeakRssFile = max(res.PeakRssAnon, anon), max(res.PeakRssFile, file)
			select {
			case <-stopSampling:
				return
			case <-t.C:
			}
		}
	}()
	for {
		st := fw.Status()
		if len(st.GetOutputs()) == 1 && len(st.GetSources()) == 1 {
			o, s := st.GetOutputs()[0], st.GetSources()[0]
			if s.GetEventsRead() >= uint64(spec.Events) && o.GetEventsAcknowledged() >= uint64(spec.Events) && o.GetSpoolEvents() == 0 {
				res.AckedAfter = time.Since(start)
				break
			}
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "siembench child: not all %d events acknowledged after %v: %v\n", spec.Events, spec.Timeout, st)
			return 1
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(stopSampling)
	<-sampled
	if fi, err := os.Stat(spec.SpoolPath); err == nil {
		res.SpoolFileBytes = fi.Size()
	}
	if err := fw.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "siembench child: close:", err)
		return 1
	}
	json.NewEncoder(os.Stdout).Encode(res)
	return 0
}

// result is one variant's measurement.
type result struct {
	name        string
	events      int
	wall        time.Duration // start of the process .. receiver has all
	firstRecv   time.Duration // start of the process .. first line received
	cpu         time.Duration // the forwarder process's utime+stime
	peakRSS     int64         // bytes
	receiverCPU time.Duration
	// otherCPU is CPU time the host spent on anything but the forwarder,
	// the receiver and this benchmark process during the run: other
	// people's builds and tests on a shared machine. Much of it makes the
	// wall-clock figures unreliable (the CPU figures hold up better).
	otherCPU time.Duration
	note     string
	// sample is the first line the receiver wrote for this variant.
	sample string
	// startOff is where this variant's lines start in the receiver's file.
	startOff int64
}

func (r result) eventsPerSec() float64 { return float64(r.events) / r.wall.Seconds() }
func (r result) cpuPerMillion() float64 {
	return r.cpu.Seconds() / (float64(r.events) / 1e6)
}
func (r result) rssMiB() float64 { return float64(r.peakRSS) / (1 << 20) }
func (r result) otherCores() float64 {
	return max(0, r.otherCPU.Seconds()/r.wall.Seconds())
}

// hostSample is the host's busy CPU time and this process's own.
type hostSample struct{ busy, self time.Duration }

func sampleHost() hostSample {
	return hostSample{busy: hostBusy(), self: rsyslogtest.CPUTime(os.Getpid())}
}

// others returns the CPU the host spent between a and now on anything
// but this process and the given ones.
func (a hostSample) others(measured ...time.Duration) time.Duration {
	now := sampleHost()
	d := (now.busy - a.busy) - (now.self - a.self)
	for _, m := range measured {
		d -= m
	}
	return d
}

// hostBusy returns the non-idle CPU time of all CPUs from /proc/stat
// (user nice system irq softirq steal; not idle or iowait).
func hostBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var j int64
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		v, _ := strconv.ParseInt(f[i], 10, 64)
		j += v
	}
	return time.Duration(j) * time.Second / 100 // USER_HZ
}

func envInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(strings.ReplaceAll(v, "_", ""))
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

func BenchmarkForwardVsRsyslog(b *testing.B) {
	lines := envInt(b, "BENCH_LINES", 1_000_000)
	queueSize := envInt(b, "BENCH_RSYSLOG_QUEUE", 100_000)
	rounds := envInt(b, "BENCH_ROUNDS", 1)
	variants := strings.Split(os.Getenv("BENCH_VARIANTS"), ",")
	if os.Getenv("BENCH_VARIANTS") == "" {
		variants = allVariants
	}
	for _, v := range variants {
		if !slices.Contains(allVariants, v) {
			b.Fatalf("BENCH_VARIANTS: unknown variant %q (%s)", v, strings.Join(allVariants, ", "))
		}
	}
	var dir string
	if os.Getenv("BENCH_KEEP") != "" {
		var err error
		if dir, err = os.MkdirTemp("", "siembench-"); err != nil {
			b.Fatal(err)
		}
		b.Logf("BENCH_KEEP: files in %s", dir)
	} else {
		dir = b.TempDir()
	}
	profileDir := os.Getenv("BENCH_PROFILE_DIR")
	if profileDir != "" {
		if err := os.MkdirAll(profileDir, 0o755); err != nil {
			b.Fatal(err)
		}
	}

	logPath := filepath.Join(dir, "audit.log")
	size, err := writeAuditLog(logPath, lines)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("audit.log: %d lines, %.1f MiB, %.0f bytes/line on average", lines, float64(size)/(1<<20), float64(size)/float64(lines))

	rs := rsyslogtest.Start(b, rsyslogtest.Options{})
	counter := &lineCounter{path: rs.ReceivedFile}
	timeout := max(3*time.Minute, time.Duration(lines)*time.Second/5000)

	b.ResetTimer()
	var results []result
	byVariant := map[string][]result{}
	for round := 1; round <= rounds; round++ {
		for _, v := range variants {
			var r result
			if mode, ok := strings.CutPrefix(v, "rsyslog"); ok {
				r = runRsyslog(b, rs, counter, dir, logPath, strings.TrimPrefix(mode, "-"), lines, queueSize, timeout)
			} else {
				proto, format := siem.OutputSyslog, v
				if f, ok := strings.CutPrefix(v, "relp-"); ok {
					proto, format = siem.OutputRELP, f
				}
				r = runBudfleet(b, rs, counter, dir, logPath, proto, format, lines, profileDir, timeout)
			}
			r.checkExactlyOnce(b, counter, lines)
			byVariant[v] = append(byVariant[v], r)
			if rounds > 1 {
				r.name += fmt.Sprintf(" (round %d)", round)
			}
			results = append(results, r)
			b.Logf("%s: %.0f events/s, wall %.2fs (first line received after %.2fs), CPU %.2fs (%.2f s/M events), peak RSS %.1f MiB, receiver CPU %.2fs, others on the host %.2f cores",
				r.name, r.eventsPerSec(), r.wall.Seconds(), r.firstRecv.Seconds(), r.cpu.Seconds(), r.cpuPerMillion(), r.rssMiB(), r.receiverCPU.Seconds(), r.otherCores())
			if round == 1 {
				b.Logf("%s: first line the receiver wrote: %s", r.name, r.sample)
			}
			if r.otherCores() > 0.25 {
				b.Logf("%s: WARNING: other processes used %.2f cores of the host during this run; its wall-clock figures are unreliable", r.name, r.otherCores())
			}
		}
	}
	b.StopTimer()

	for _, v := range variants {
		rs := byVariant[v]
		prefix := metricPrefix[v]
		b.ReportMetric(median(rs, result.eventsPerSec), prefix+"-events/s")
		b.ReportMetric(median(rs, result.cpuPerMillion), prefix+"-cpu-s/Mevents")
		b.ReportMetric(median(rs, result.rssMiB), prefix+"-peak-RSS-MiB")
	}
	fmt.Print(markdownTable(results, lines, size))
}

// allVariants are the forwarders BENCH_VARIANTS picks from, in the order
// they run: budfleet's (format, and relp- for RELP instead of TLS syslog)
// and rsyslog's (in-memory queues; -da: disk-assisted queues with imfile
// state persisted; -relp: omrelp).
var allVariants = []string{
	siem.FormatRaw, siem.FormatLinuxAudit, "rsyslog", "rsyslog-da",
	"relp-" + siem.FormatRaw, "relp-" + siem.FormatLinuxAudit, "rsyslog-relp",
}

var metricPrefix = map[string]string{
	siem.FormatRaw: "budfleet", siem.FormatLinuxAudit: "budfleet-audit",
	"rsyslog": "rsyslog", "rsyslog-da": "rsyslog-da",
	"relp-" + siem.FormatRaw: "budfleet-relp", "relp-" + siem.FormatLinuxAudit: "budfleet-relp-audit",
	"rsyslog-relp": "rsyslog-relp",
}

// checkExactlyOnce reads what the receiver wrote for this run (from
// r.startOff on) and checks that it holds every serial of the generated
// log: a missing one fails the benchmark; duplicates are counted in the
// notes (delivery is at-least-once).
func (r *result) checkExactlyOnce(b *testing.B, c *lineCounter, lines int) {
	b.Helper()
	c.count()
	seen, bad, err := serialsIn(c.path, r.startOff, c.off)
	if err != nil {
		b.Fatalf("%s: %v", r.name, err)
	}
	first := newAuditGen().serial + 1
	missing, dups := 0, 0
	for i := range uint64(lines) {
		switch n := seen[first+i]; {
		case n == 0:
			missing++
		case n > 1:
			dups += int(n - 1)
		}
		delete(seen, first+i)
	}
	if missing > 0 || bad > 0 || len(seen) > 0 {
		b.Fatalf("%s: the receiver misses %d of the %d events; %d lines without a serial, %d serials that were never written", r.name, missing, lines, bad, len(seen))
	}
	if dups == 0 {
		r.note = "every event exactly once; " + r.note
	} else {
		r.note = fmt.Sprintf("every event, %d duplicates; ", dups) + r.note
	}
}

// serialsIn counts the audit serials (msg=audit(TIME:SERIAL)) of the
// lines of path between the offsets; bad counts lines without one.
func serialsIn(path string, from, to int64) (map[uint64]uint32, int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(io.NewSectionReader(f, from, to-from))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	seen := map[uint64]uint32{}
	bad := 0
	marker := []byte("msg=audit(")
	for sc.Scan() {
		l := sc.Bytes()
		i := bytes.Index(l, marker)
		if i < 0 {
			bad++
			continue
		}
		stamp := l[i+len(marker):]
		j := bytes.IndexByte(stamp, ':')
		k := bytes.IndexByte(stamp, ')')
		if j < 0 || k < j {
			bad++
			continue
		}
		n, err := strconv.ParseUint(string(stamp[j+1:k]), 10, 64)
		if err != nil {
			bad++
			continue
		}
		seen[n]++
	}
	return seen, bad, sc.Err()
}

// median of f over rs (the lower middle one for an even count).
func median(rs []result, f func(result) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	slices.Sort(v)
	return v[(len(v)-1)/2]
}

func markdownTable(results []result, lines int, size int64) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n%d audit lines (%.0f MiB, %.0f B/line) over TLS syslog (RFC 5425) into one rsyslog receiver:\n\n",
		lines, float64(size)/(1<<20), float64(size)/float64(lines))
	sb.WriteString("| forwarder | events/s | wall s | CPU s | CPU s / M events | peak RSS MiB | receiver CPU s | other load, cores | notes |\n")
	sb.WriteString("|---|--:|--:|--:|--:|--:|--:|--:|---|\n")
	for _, r := range results {
		fmt.Fprintf(&sb, "| %s | %.0f | %.2f | %.2f | %.2f | %.1f | %.2f | %.2f | %s |\n",
			r.name, r.eventsPerSec(), r.wall.Seconds(), r.cpu.Seconds(), r.cpuPerMillion(), r.rssMiB(), r.receiverCPU.Seconds(), r.otherCores(), r.note)
	}
	sb.WriteString("\n")
	return sb.String()
}

// runBudfleet forwards audit.log with the budfleet forwarder in a child
// process and measures it.
func runBudfleet(b *testing.B, rs *rsyslogtest.Server, counter *lineCounter, dir, logPath, proto, format string, lines int, profileDir string, timeout time.Duration) result {
	b.Helper()
	// A fresh spool (and checkpoint) for every run.
	work, err := os.MkdirTemp(dir, "budfleet-"+proto+"-"+format+"-")
	if err != nil {
		b.Fatal(err)
	}
	addr := rs.TLSAddr
	if proto == siem.OutputRELP {
		addr = rs.RELPAddr
	}
	spec := childSpec{
		LogPath: logPath, SpoolPath: filepath.Join(work, "spool.db"), Format: format, Output: proto,
		Addr: addr, CAFile: rs.CAFile, CertFile: rs.ClientCertFile, KeyFile: rs.ClientKeyFile,
		Events: lines, NoSync: os.Getenv("BENCH_NOSYNC") == "1", ProfileDir: profileDir, Timeout: timeout,
	}
	specJSON, _ := json.Marshal(spec)
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	var stdout bytes.Buffer
	stderrPath := filepath.Join(work, "child.stderr")
	stderr, err := os.Create(stderrPath)
	if err != nil {
		b.Fatal(err)
	}
	defer stderr.Close()
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), childEnv+"="+string(specJSON))
	cmd.Stdout, cmd.Stderr = &stdout, stderr
	base := counter.count()
	baseOff := counter.off
	rcpu0 := rs.CPUTime()
	host0 := sampleHost()
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	first, wall, err := waitReceived(counter, base, lines, start, timeout, exited)
	rcpu := rs.CPUTime() - rcpu0
	other := host0.others(rcpu, rsyslogtest.CPUTime(cmd.Process.Pid))
	if err != nil {
		cmd.Process.Kill()
		<-exited
		b.Fatalf("budfleet %s: %v\nchild stderr:\n%s\nreceiver log:\n%s", format, err, tailFile(stderrPath), rs.Log())
	}
	var werr error
	select {
	case werr = <-exited:
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		werr = <-exited
		b.Fatalf("budfleet %s: child did not exit a minute after the receiver had every line\n%s", format, tailFile(stderrPath))
	}
	if werr != nil {
		b.Fatalf("budfleet %s: child: %v\n%s", format, werr, tailFile(stderrPath))
	}
	ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		b.Fatal("no rusage for the child")
	}
	var res childResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		b.Fatalf("budfleet %s: child's result %q: %v", format, stdout.String(), err)
	}
	sync := "spool fsync on"
	if spec.NoSync {
		sync = "spool fsync OFF"
	}
	name := "budfleet " + format
	if proto == siem.OutputRELP {
		name = "budfleet RELP " + format
	}
	return result{
		name:        name,
		startOff:    baseOff,
		events:      lines,
		wall:        wall,
		firstRecv:   first,
		cpu:         time.Duration(ru.Utime.Nano() + ru.Stime.Nano()),
		peakRSS:     ru.Maxrss << 10,
		receiverCPU: rcpu,
		otherCPU:    other,
		sample:      counter.lineAt(baseOff),
		note: fmt.Sprintf("child process, CPU from its rusage (user+sys, start to exit), %s; first line received after %.2fs; all acked after %.2fs; spool file %.0f MiB; peak RssAnon %.0f MiB, RssFile %.0f MiB",
			sync, first.Seconds(), res.AckedAfter.Seconds(), float64(res.SpoolFileBytes)/(1<<20), float64(res.PeakRssAnon)/(1<<20), float64(res.PeakRssFile)/(1<<20)),
	}
}

// runRsyslog forwards audit.log with a second rsyslogd (imfile -> omfwd)
// and measures it.
//
// mode "" is omfwd with in-memory queues; "da" the same with the
// durability budfleet has: disk-assisted main and action queues (spilled
// to disk past their memory part, fsynced, saved on shutdown) and the
// imfile state persisted every 1000 lines; "relp" is omrelp (TLS, window
// 16384 like budfleet's) with in-memory queues.
func runRsyslog(b *testing.B, rs *rsyslogtest.Server, counter *lineCounter, dir, logPath, mode string, lines, queueSize int, timeout time.Duration) result {
	b.Helper()
	rsyslogd, err := rsyslogtest.Ensure()
	if err != nil {
		b.Fatal(err)
	}
	// A fresh work dir (and imfile state) for every run.
	work, err := os.MkdirTemp(dir, "rsyslog-fwd-")
	if err != nil {
		b.Fatal(err)
	}
	_, port, _ := strings.Cut(rs.TLSAddr, ":")
	q := strconv.Quote
	queue := func(name string) string {
		base := fmt.Sprintf(`queue.type="LinkedList" queue.size="%d" queue.dequeueBatchSize="1024"`, queueSize)
		if mode != "da" {
			return base
		}
		return base + fmt.Sprintf(` queue.filename=%s queue.saveOnShutdown="on" queue.syncqueuefiles="on" queue.checkpointInterval="1000" queue.maxDiskSpace="2g"`, q(name))
	}
	action := fmt.Sprintf(`action(type="omfwd" target="127.0.0.1" port=%s protocol="tcp"
    streamDriver="gtls" streamDriverMode="1" streamDriverAuthMode="x509/certvalid"
    tcp_framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format"
    %s
    action.resumeRetryCount="-1")`, q(port), queue("fwd"))
	modules := `module(load="imfile" mode="inotify")`
	if mode == "relp" {
		_, rport, _ := strings.Cut(rs.RELPAddr, ":")
		modules += "\nmodule(load=\"omrelp\" tls.tlslib=\"openssl\")"
		action = fmt.Sprintf(`action(type="omrelp" target="127.0.0.1" port=%s windowSize="16384"
    tls="on" tls.cacert=%s tls.mycert=%s tls.myprivkey=%s tls.authmode="certvalid"
    template="RSYSLOG_SyslogProtocol23Format"
    %s
    action.resumeRetryCount="-1")`, q(rport), q(rs.CAFile), q(rs.ClientCertFile), q(rs.ClientKeyFile), queue("fwd"))
	}
	persist := ""
	if mode == "da" {
		persist = ` persistStateInterval="1000"`
	}
	conf := fmt.Sprintf(`# siembench: rsyslog's own forwarder, imfile -> omfwd (TLS, octet-counted)
global(
  workDirectory=%[1]s
  maxMessageSize="256k"
  processInternalMessages="on"
  localHostname="bench-node"
  defaultNetstreamDriver="gtls"
  defaultNetstreamDriverCAFile=%[2]s
  defaultNetstreamDriverCertFile=%[3]s
  defaultNetstreamDriverKeyFile=%[4]s
)
main_queue(%[7]s)
%[5]s

ruleset(name="fwd") {
  %[9]s
}

input(type="imfile" file=%[6]s tag="audit" ruleset="fwd" readMode="0" freshStartTail="off"%[10]s)

# rsyslog's own messages
action(type="omfile" file=%[8]s)
`, q(work), q(rs.CAFile), q(rs.ClientCertFile), q(rs.ClientKeyFile), modules, q(logPath), queue("main"), q(filepath.Join(work, "internal.log")), action, persist)
	confFile := filepath.Join(work, "rsyslog.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o644); err != nil {
		b.Fatal(err)
	}
	if out, err := exec.Command(rsyslogd, "-N1", "-f", confFile).CombinedOutput(); err != nil {
		b.Fatalf("rsyslogd -N1 -f %s: %v\n%s", confFile, err, out)
	}
	outPath := filepath.Join(work, "rsyslogd.out")
	out, err := os.Create(outPath)
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command(rsyslogd, "-n", "-f", confFile, "-i", filepath.Join(work, "rsyslogd.pid"))
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	base := counter.count()
	baseOff := counter.off
	rcpu0 := rs.CPUTime()
	host0 := sampleHost()
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	first, wall, err := waitReceived(counter, base, lines, start, timeout, exited)
	// Sample before stopping: shutdown costs are not forwarding.
	cpu := rsyslogtest.CPUTime(cmd.Process.Pid)
	hwm := vmHWM(cmd.Process.Pid)
	rcpu := rs.CPUTime() - rcpu0
	other := host0.others(rcpu, cpu)
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
	if err != nil {
		b.Fatalf("rsyslog forwarder: %v\nits log:\n%s\n%s\nreceiver log:\n%s", err, tailFile(filepath.Join(work, "internal.log")), tailFile(outPath), rs.Log())
	}
	var ruCPU time.Duration
	var ruRSS int64
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		ruCPU = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		ruRSS = ru.Maxrss << 10
	}
	if hwm == 0 {
		hwm = ruRSS
	}
	name, what := "rsyslog", fmt.Sprintf("imfile -> omfwd gtls, in-memory LinkedList queues of %d", queueSize)
	switch mode {
	case "da":
		name, what = "rsyslog, disk-assisted", fmt.Sprintf("imfile (state persisted every 1000 lines) -> omfwd gtls, disk-assisted LinkedList queues of %d (fsynced queue files, saved on shutdown)", queueSize)
	case "relp":
		name, what = "rsyslog omrelp", fmt.Sprintf("imfile -> omrelp (openssl, window 16384), in-memory LinkedList queues of %d", queueSize)
	}
	if ruCPU == 0 {
		ruCPU = cpu
	}
	return result{
		name:        name,
		startOff:    baseOff,
		events:      lines,
		wall:        wall,
		firstRecv:   first,
		cpu:         ruCPU,
		peakRSS:     hwm,
		receiverCPU: rcpu,
		otherCPU:    other,
		sample:      counter.lineAt(baseOff),
		note: fmt.Sprintf("rsyslogd 8.2302 %s; CPU from its rusage (user+sys, start to exit, as for budfleet; %.2fs when the receiver had every line); first line received after %.2fs",
			what, cpu.Seconds(), first.Seconds()),
	}
}

// waitReceived waits until the receiver has base+n lines and returns when
// the first and the last arrived, relative to start. It fails when the
// forwarder process exits first or after timeout.
func waitReceived(c *lineCounter, base, n int, start time.Time, timeout time.Duration, exited chan error) (first, wall time.Duration, err error) {
	deadline := start.Add(timeout)
	var exitedAt time.Time
	for {
		got := c.count() - base
		now := time.Now()
		if got > 0 && first == 0 {
			first = now.Sub(start)
		}
		if got >= n {
			return first, now.Sub(start), nil
		}
		select {
		case werr := <-exited:
			exited <- werr // for the caller
			if werr != nil {
				return first, 0, fmt.Errorf("the forwarder exited (%v) with %d of %d lines received", werr, c.count()-base, n)
			}
			// A forwarder that exits once everything is sent can be ahead
			// of the receiver writing its file.
			if exitedAt.IsZero() {
				exitedAt = now
			} else if now.Sub(exitedAt) > 10*time.Second {
				return first, 0, fmt.Errorf("the forwarder exited with %d of %d lines received 10s later", c.count()-base, n)
			}
		default:
		}
		if now.After(deadline) {
			return first, 0, fmt.Errorf("%d of %d lines received after %v", got, n, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// lineCounter counts the lines of a growing file, reading only what was
// appended since the last call, with one buffer (rsyslogtest.Server.Count
// allocates 1 MiB per call, which would load the CPUs being measured).
type lineCounter struct {
	path string
	off  int64
	n    int
	buf  []byte
	f    *os.File
}

// lineAt returns the line that starts at byte off (for showing what the
// receiver got).
func (c *lineCounter) lineAt(off int64) string {
	f, err := os.Open(c.path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	n, _ := f.ReadAt(buf, off)
	l, _, _ := bytes.Cut(buf[:n], []byte("\n"))
	return string(l)
}

func (c *lineCounter) count() int {
	if c.f == nil {
		f, err := os.Open(c.path)
		if err != nil {
			return c.n
		}
		c.f = f
		c.buf = make([]byte, 4<<20)
	}
	for {
		k, err := c.f.ReadAt(c.buf, c.off)
		c.off += int64(k)
		c.n += bytes.Count(c.buf[:k], []byte("\n"))
		if err != nil || k == 0 {
			return c.n
		}
	}
}

// vmHWM returns the peak resident set size of pid from /proc (0 if it
// cannot be read).
func vmHWM(pid int) int64 { return procStatus(pid, "VmHWM:") }

// procStatus returns a "NAME: N kB" field of /proc/PID/status in bytes (0
// if it cannot be read).
func procStatus(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field); ok {
			f := strings.Fields(v)
			if len(f) >= 1 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

// procStatus2 returns two "NAME: N kB" fields of /proc/PID/status in
// bytes, from one read.
func procStatus2(pid int, f1, f2 string) (v1, v2 int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		for i, field := range [2]string{f1, f2} {
			if v, ok := strings.CutPrefix(l, field); ok {
				if f := strings.Fields(v); len(f) >= 1 {
					kb, _ := strconv.ParseInt(f[0], 10, 64)
					if i == 0 {
						v1 = kb << 10
					} else {
						v2 = kb << 10
					}
				}
			}
		}
	}
	return v1, v2
}

func tailFile(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// writeAuditLog writes n single-record user-space audit lines with
// increasing serials and timestamps (deterministic) and returns the file's
// size.
func writeAuditLog(path string, n int) (int64, error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	g := newAuditGen()
	var line []byte
	for range n {
		line = g.next(line[:0])
		w.Write(line)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return 0, err
	}
	return fi.Size(), f.Close()
}

type auditGen struct {
	rng    *rand.Rand
	serial uint64
	ms     int64 // audit time in milliseconds
}

func newAuditGen() *auditGen {
	return &auditGen{rng: rand.New(rand.NewPCG(1, 2)), serial: 48_213, ms: 1_795_958_100_000}
}

var (
	accounts  = []string{"root", "ops", "deploy", "alice", "bob", "ml-train", "svc-backup", "jenkins"}
	exes      = []string{"/usr/sbin/sshd", "/usr/bin/sudo", "/usr/sbin/cron", "/usr/bin/su", "/usr/lib/systemd/systemd"}
	terminals = []string{"ssh", "/dev/pts/0", "/dev/pts/1", "/dev/pts/3", "cron", "sshd"}
	units     = []string{"nvidia-persistenced", "systemd-tmpfiles-clean", "apt-daily", "logrotate", "bud-agent", "user@1000", "dcgm-exporter"}
	cmds      = []string{"6E76696469612D736D69", "73797374656D63746C20726573746172742062756420616765", "6361742F6574632F736861646F77", "6A6F75726E616C63746C202D75206275642D6167656E74"}
)

// next appends one line: a mix weighted like a busy multi-user node (PAM
// sessions from sshd, sudo and cron, plus systemd services).
func (g *auditGen) next(dst []byte) []byte {
	g.serial++
	g.ms += int64(g.rng.IntN(3))
	r := g.rng
	pid := 1000 + r.IntN(400000)
	uid := []int{0, 1000, 1001, 1002, 0}[r.IntN(5)]
	auid := uid
	if r.IntN(4) == 0 {
		auid = 4294967295
	}
	ses := r.IntN(9000) + 1
	if auid == 4294967295 {
		ses = 4294967295
	}
	acct := accounts[r.IntN(len(accounts))]
	exe := exes[r.IntN(len(exes))]
	term := terminals[r.IntN(len(terminals))]
	addr := fmt.Sprintf("10.%d.%d.%d", r.IntN(256), r.IntN(256), 1+r.IntN(254))
	res := "success"
	if r.IntN(20) == 0 {
		res = "failed"
	}
	stamp := fmt.Sprintf("msg=audit(%d.%03d:%d):", g.ms/1000, g.ms%1000, g.serial)
	head := fmt.Sprintf("%s pid=%d uid=%d auid=%d ses=%d subj=unconfined", stamp, pid, uid, auid, ses)
	var s string
	switch k := r.IntN(20); {
	case k < 4:
		s = fmt.Sprintf("type=USER_ACCT %s msg='op=PAM:accounting grantors=pam_permit,pam_unix,pam_faillock acct=%q exe=%q hostname=%s addr=%s terminal=%s res=%s'",
			head, acct, exe, addr, addr, term, res)
	case k < 7:
		s = fmt.Sprintf("type=CRED_ACQ %s msg='op=PAM:setcred grantors=pam_permit,pam_env,pam_unix acct=%q exe=%q hostname=%s addr=%s terminal=%s res=%s'",
			head, acct, exe, addr, addr, term, res)
	case k < 10:
		s = fmt.Sprintf("type=USER_START %s msg='op=PAM:session_open grantors=pam_selinux,pam_loginuid,pam_keyinit,pam_limits,pam_systemd,pam_unix acct=%q exe=%q hostname=%s addr=%s terminal=%s res=%s'",
			head, acct, exe, addr, addr, term, res)
	case k < 12:
		s = fmt.Sprintf("type=USER_CMD %s msg='cwd=\"/home/%s\" cmd=%s exe=\"/usr/bin/sudo\" terminal=%s res=%s'",
			head, acct, cmds[r.IntN(len(cmds))], term, res)
	case k < 14:
		s = fmt.Sprintf("type=CRED_DISP %s msg='op=PAM:setcred grantors=pam_permit,pam_env,pam_unix acct=%q exe=%q hostname=%s addr=%s terminal=%s res=%s'",
			head, acct, exe, addr, addr, term, res)
	case k < 16:
		s = fmt.Sprintf("type=USER_END %s msg='op=PAM:session_close grantors=pam_selinux,pam_loginuid,pam_keyinit,pam_limits,pam_systemd,pam_unix acct=%q exe=%q hostname=%s addr=%s terminal=%s res=%s'",
			head, acct, exe, addr, addr, term, res)
	case k < 17:
		s = fmt.Sprintf("type=USER_LOGIN %s msg='op=login id=%d exe=\"/usr/sbin/sshd\" hostname=%s addr=%s terminal=/dev/pts/%d res=%s'",
			head, uid, addr, addr, r.IntN(8), res)
	case k < 18:
		s = fmt.Sprintf("type=USER_AUTH %s msg='op=PAM:authentication grantors=pam_faillock,pam_unix acct=%q exe=\"/usr/sbin/sshd\" hostname=%s addr=%s terminal=ssh res=%s'",
			head, acct, addr, addr, res)
	case k < 19:
		s = fmt.Sprintf("type=SERVICE_START msg=audit(%d.%03d:%d): pid=1 uid=0 auid=4294967295 ses=4294967295 subj=unconfined msg='unit=%s comm=\"systemd\" exe=\"/usr/lib/systemd/systemd\" hostname=? addr=? terminal=? res=%s'",
			g.ms/1000, g.ms%1000, g.serial, units[r.IntN(len(units))], res)
	default:
		s = fmt.Sprintf("type=SERVICE_STOP msg=audit(%d.%03d:%d): pid=1 uid=0 auid=4294967295 ses=4294967295 subj=unconfined msg='unit=%s comm=\"systemd\" exe=\"/usr/lib/systemd/systemd\" hostname=? addr=? terminal=? res=%s'",
			g.ms/1000, g.ms%1000, g.serial, units[r.IntN(len(units))], res)
	}
	dst = append(dst, s...)
	return append(dst, '\n')
}

// TestAuditGen checks the generated lines: sizes, serials, and that the
// linux-audit parser makes one event of each (cheap; runs without -bench).
func TestAuditGen(t *testing.T) {
	g := newAuditGen()
	var minLen, maxLen, total int
	minLen = 1 << 30
	var prev uint64
	gr := audit.NewGrouper(audit.GrouperOptions{})
	now := time.Now()
	const n = 20000
	for i := range n {
		l := g.next(nil)
		if gs := gr.Add(l[:len(l)-1], now); len(gs) != 1 || gr.Open() != 0 || gs[0].Records[0].Type == audit.TypeUnparsed {
			t.Fatalf("line %d: the grouper returned %d groups (%d open), want one event per line: %q", i, len(gs), gr.Open(), l)
		}
		if l[len(l)-1] != '\n' || bytes.Count(l, []byte("\n")) != 1 {
			t.Fatalf("line %d: %q", i, l)
		}
		minLen, maxLen, total = min(minLen, len(l)), max(maxLen, len(l)), total+len(l)
		_, rest, _ := bytes.Cut(l, []byte("msg=audit("))
		stamp, _, _ := bytes.Cut(rest, []byte("):"))
		_, ser, _ := bytes.Cut(stamp, []byte(":"))
		s, err := strconv.ParseUint(string(ser), 10, 64)
		if err != nil || s <= prev {
			t.Fatalf("line %d: serial %q after %d", i, ser, prev)
		}
		prev = s
	}
	t.Logf("lines %d..%d bytes, %d on average", minLen, maxLen, total/n)
	if minLen < 150 || maxLen > 350 {
		t.Errorf("line sizes %d..%d, want about 200-300", minLen, maxLen)
	}
}
