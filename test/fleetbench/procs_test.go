package fleetbench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a child process with its output in a log file.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
	waitErr error
	once    sync.Once
}

func startProc(name, logPath, bin string, args ...string) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child holds its own copy
	if cpus := pinnedCPUs(name); cpus != "" {
		// taskset sets the affinity and then execs, so every thread the
		// program starts inherits it.
		args = append([]string{"-c", cpus, bin}, args...)
		bin = "taskset"
	}
	p := &proc{name: name, cmd: exec.Command(bin, args...), logPath: logPath, exited: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if !serverSide(name) {
		p.cmd.Env = append(os.Environ(), "GOGC="+clientGOGC())
	}
	// Its own process group: a benchmark interrupted by a signal to the
	// terminal's group does not leave the children half-stopped first.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { p.waitErr = p.cmd.Wait(); close(p.exited) }()
	return p, nil
}

// pinnedCPUs is the CPU list (taskset's -c) the process called name runs
// on: BUD_FLEET_SERVER_CPUS for the servers (bud-controller and the
// floor's), BUD_FLEET_CLIENT_CPUS for the agents' side (the simulators and
// the floor's clients); "" leaves it to the scheduler.
func pinnedCPUs(name string) string {
	if serverSide(name) {
		return os.Getenv("BUD_FLEET_SERVER_CPUS")
	}
	return os.Getenv("BUD_FLEET_CLIENT_CPUS")
}

func serverSide(name string) bool { return name == "bud-controller" || name == "floor-server" }

// clientGOGC is the Go GC target of the agents' side, the simulators and
// the floor's clients alike (BUD_FLEET_CLIENT_GOGC, default 400). They
// stand in for thousands of machines, each with its own memory and cores;
// here their collections (and the goroutine stacks each one shrinks, to be
// grown again on the next command) take the CPU the servers are measured
// on: 40 % of the simulators' CPU in P3 at the default of 100. The servers
// keep Go's default.
func clientGOGC() string {
	if v := os.Getenv("BUD_FLEET_CLIENT_GOGC"); v != "" {
		return v
	}
	return "400"
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM and waits up to 30 s, then kills.
func (p *proc) stop() {
	p.once.Do(func() {
		if !p.alive() {
			return
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(30 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
}

func (p *proc) logTail() string {
	b, _ := os.ReadFile(p.logPath)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// procStatus reads the kB fields of /proc/PID/status (VmRSS, RssAnon,
// VmHWM, ...) and Threads.
func procStatus(pid int) (map[string]int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		if n, err := strconv.ParseInt(f[0], 10, 64); err == nil {
			out[k] = n
		}
	}
	return out, nil
}

// cpuTicks is utime+stime of pid in clock ticks (USER_HZ, 100 per second).
func cpuTicks(pid int) (int64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(raw)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st, nil
}

const ticksPerSecond = 100

var httpc = &http.Client{Timeout: 15 * time.Second}

// scrape reads the unlabelled samples of a Prometheus text endpoint.
func scrape(url string) (map[string]float64, error) {
	resp, err := httpc.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, val, ok := strings.Cut(line, " ")
		if !ok || strings.ContainsRune(name, '{') {
			continue
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
			out[name] = v
		}
	}
	return out, sc.Err()
}

// forceGC runs a GC in the process behind metricsAddr through pprof's
// heap?gc=1 and keeps the heap profile in profDir (when set) as name.
func forceGC(metricsAddr, profDir, name string) error {
	resp, err := httpc.Get("http://" + metricsAddr + "/debug/pprof/heap?gc=1")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("heap?gc=1: %s", resp.Status)
	}
	var w io.Writer = io.Discard
	if profDir != "" {
		f, err := os.Create(filepath.Join(profDir, name))
		if err != nil {
			return err
		}
		defer f.Close()
		w = f
	}
	_, err = io.Copy(w, resp.Body)
	return err
}

// cpuProfile keeps a CPU profile of secs seconds in profDir.
func cpuProfile(metricsAddr, profDir, name string, secs int) error {
	return fetchProfile(metricsAddr, profDir, name, "profile", secs)
}

// fetchProfile keeps pprof's kind (profile, trace) of secs seconds in
// profDir/name.
func fetchProfile(metricsAddr, profDir, name, kind string, secs int) error {
	c := &http.Client{Timeout: time.Duration(secs+30) * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://%s/debug/pprof/%s?seconds=%d", metricsAddr, kind, secs))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s: %s: %s", kind, resp.Status, strings.TrimSpace(string(msg)))
	}
	f, err := os.Create(filepath.Join(profDir, name))
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}

// goroutineDump saves the server's goroutines, grouped by stack
// (pprof's debug=1), into profDir/name.
func goroutineDump(metricsAddr, profDir, name string) error {
	resp, err := httpc.Get(fmt.Sprintf("http://%s/debug/pprof/goroutine?debug=1", metricsAddr))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	f, err := os.Create(filepath.Join(profDir, name))
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}

// arrivals follows a count (connected streams) from t0 until it reaches
// want or timeout passes, and returns when it did and how many arrived in
// each second since t0. A count that cannot be read (the server is down)
// reads as 0.
func arrivals(ctx context.Context, t0 time.Time, want int, timeout time.Duration, count func() (float64, error)) (time.Duration, []int, error) {
	var perSec []int // highest count seen by the end of each second
	deadline := t0.Add(timeout)
	last := 0.0
	for {
		v, err := count()
		if err != nil {
			v = 0
		}
		sec := int(time.Since(t0) / time.Second)
		for len(perSec) <= sec {
			perSec = append(perSec, int(last))
		}
		perSec[sec] = int(v)
		last = v
		if int(v) >= want {
			took := time.Since(t0)
			return took, diffs(perSec), nil
		}
		if time.Now().After(deadline) {
			return time.Since(t0), diffs(perSec), fmt.Errorf("%d of %d after %s", int(v), want, timeout)
		}
		select {
		case <-ctx.Done():
			return time.Since(t0), diffs(perSec), ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func diffs(cum []int) []int {
	out := make([]int, len(cum))
	prev := 0
	for i, c := range cum {
		out[i] = c - prev
		prev = c
	}
	return out
}

// histogram prints arrivals per second as rows of a bar chart.
func histogram(per []int) string {
	var b strings.Builder
	peak := 1
	for _, v := range per {
		peak = max(peak, v)
	}
	for i, v := range per {
		bar := 0
		if v > 0 {
			bar = max(1, v*50/peak)
		}
		fmt.Fprintf(&b, "  %3ds %6d %s\n", i, v, strings.Repeat("#", bar))
	}
	return b.String()
}
