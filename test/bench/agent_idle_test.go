package bench

// BenchmarkAgentIdle measures what an idle bud-agent costs its host: a real
// 'bud-agent run' process on the mock DGX H100 GPU backend (eight GPUs),
// connected to a real controller, doing nothing but heartbeats, inventory
// checks and GPU health sampling. Run once per invocation:
//
//	go test ./test/bench/ -run '^$' -bench AgentIdle -benchtime=1x -count=1
//
// The bud-agent binary is $BUD_BIN_DIR/bud-agent when that is set, else it is
// built into a temp dir. Linux only (reads /proc).

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/client"
	"github.com/bud-ecosystem/budfleet/controller"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

const (
	// idleSettle is how long the agent runs after its first full report
	// before the window opens.
	idleSettle = 3 * time.Second
	// idleWindow is the measured window.
	idleWindow = 15 * time.Second
	// clockTicks is sysconf(_SC_CLK_TCK), the unit of utime and stime in
	// /proc/PID/stat: 100 on every Linux architecture Go supports.
	clockTicks = 100
)

// idleAgentBinary returns $BUD_BIN_DIR/bud-agent or builds one into dir.
func idleAgentBinary(dir string) (string, error) {
	if d := os.Getenv("BUD_BIN_DIR"); d != "" {
		bin := filepath.Join(d, "bud-agent")
		if _, err := os.Stat(bin); err != nil {
			return "", fmt.Errorf("BUD_BIN_DIR: %w", err)
		}
		return bin, nil
	}
	bin := filepath.Join(dir, "bud-agent")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/bud-ecosystem/budfleet/cmd/bud-agent").CombinedOutput(); err != nil {
		return "", fmt.Errorf("build bud-agent: %v\n%s", err, out)
	}
	return bin, nil
}

func BenchmarkAgentIdle(b *testing.B) {
	if runtime.GOOS != "linux" {
		b.Skip("reads /proc")
	}
	bin, err := idleAgentBinary(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	// 1s is far harsher than the 30s default: 30 health samples of eight
	// GPUs in the window instead of at most one. The default case is the
	// baseline a real node runs with.
	b.Run("gpu-health=1s", func(b *testing.B) { benchAgentIdle(b, bin, time.Second) })
	b.Run("gpu-health=30s-default", func(b *testing.B) { benchAgentIdle(b, bin, 0) })
}

var enrolledLine = regexp.MustCompile(`(?m)^enrolled as node ([0-9a-f-]{36})$`)

func benchAgentIdle(b *testing.B, bin string, healthInterval time.Duration) {
	c, err := startController()
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(c.root)
	defer c.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	tok, err := c.mintToken(ctx)
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	stateDir := filepath.Join(dir, "state")
	const host = "bench-gpu-idle"
	out, err := exec.CommandContext(ctx, bin, "join", "--controller", c.addr, "--token", tok, "--state-dir", stateDir, "--hostname", host).CombinedOutput()
	if err != nil {
		b.Fatalf("bud-agent join: %v\n%s", err, out)
	}
	m := enrolledLine.FindSubmatch(out)
	if m == nil {
		b.Fatalf("bud-agent join printed %q; want 'enrolled as node ID'", out)
	}
	nodeID := string(m[1])

	cfg := fmt.Sprintf("hostname: %s\ngpu:\n  backend: mock:dgxh100\n", host)
	if healthInterval > 0 {
		cfg += fmt.Sprintf("  health_interval: %s\n", healthInterval)
	}
	cfgPath := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		b.Fatal(err)
	}
	logPath := filepath.Join(dir, "agent.log")
	logf, err := os.Create(logPath)
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "--state-dir", stateDir, "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	logf.Close()
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	stopped := false
	defer func() {
		if !stopped {
			_ = cmd.Process.Kill()
			<-exited
		}
	}()
	logTail := func() string {
		b, _ := os.ReadFile(logPath)
		if len(b) > 4000 {
			b = b[len(b)-4000:]
		}
		return string(b)
	}

	if err := waitGPUNodeReady(ctx, c, nodeID, exited); err != nil {
		b.Fatalf("%v\nagent log:\n%s", err, logTail())
	}
	time.Sleep(idleSettle)

	pid := cmd.Process.Pid
	cpu0, err := procCPUTicks(pid)
	if err != nil {
		b.Fatal(err)
	}
	ns0, err := procSchedNs(pid)
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	b.ResetTimer()
	time.Sleep(idleWindow)
	cpu1, err := procCPUTicks(pid)
	if err != nil {
		b.Fatal(err)
	}
	ns1, err := procSchedNs(pid)
	wall := time.Since(t0)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	mem, err := procStatusKiB(pid, "VmRSS", "VmHWM")
	if err != nil {
		b.Fatal(err)
	}
	select {
	case <-exited:
		b.Fatalf("bud-agent exited during the window (%v)\n%s", waitErr, logTail())
	default:
	}
	// Still connected and reporting at the end of the window.
	if err := waitGPUNodeReady(ctx, c, nodeID, exited); err != nil {
		b.Fatalf("after the window: %v\nagent log:\n%s", err, logTail())
	}

	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		stopped = true
		if waitErr != nil {
			b.Errorf("bud-agent exited with %v after SIGTERM\n%s", waitErr, logTail())
		}
	case <-time.After(20 * time.Second):
		b.Errorf("bud-agent did not stop within 20s of SIGTERM\n%s", logTail())
	}
	if lines := agentProblems(logPath); len(lines) > 0 {
		b.Logf("agent logged %d WARN/ERROR lines, first ones:\n%s", len(lines), strings.Join(lines[:min(5, len(lines))], "\n"))
	}

	cpuPct := float64(cpu1-cpu0) / clockTicks / wall.Seconds() * 100
	// utime+stime count whole ticks (10ms): an idle agent uses a few in the
	// window, so the schedstat figure (nanoseconds on CPU, summed over the
	// threads) is the finer one.
	schedPct := float64(ns1-ns0) / float64(wall.Nanoseconds()) * 100
	b.ReportMetric(cpuPct, "agent-cpu-%core")
	b.ReportMetric(schedPct, "agent-cpu-%core-schedstat")
	b.ReportMetric(float64(mem["VmRSS"])/1024, "agent-RSS-MiB")
	b.ReportMetric(float64(mem["VmHWM"])/1024, "agent-HWM-MiB")
	interval := healthInterval
	if interval == 0 {
		interval = 30 * time.Second
	}
	b.Logf("gpu.health_interval=%s window=%s cpu=%d ticks (%.3f%% of a core), %.1fms on CPU by schedstat (%.4f%%) VmRSS=%d KiB VmHWM=%d KiB",
		interval, wall.Round(time.Millisecond), cpu1-cpu0, cpuPct, float64(ns1-ns0)/1e6, schedPct, mem["VmRSS"], mem["VmHWM"])
}

// waitGPUNodeReady waits until the node is Ready and connected and has
// reported eight GPUs with health.
func waitGPUNodeReady(ctx context.Context, c *ctrl, nodeID string, exited <-chan struct{}) error {
	cfg, err := client.Load(filepath.Join(c.dataDir, controller.AdminConfigFile))
	if err != nil {
		return err
	}
	conn, err := client.Dial(cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	fleet := fleetv1.NewFleetServiceClient(conn)
	deadline := time.Now().Add(30 * time.Second)
	last := errors.New("not asked yet")
	for {
		select {
		case <-exited:
			return errors.New("bud-agent exited")
		default:
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := fleet.GetNode(rctx, &fleetv1.GetNodeRequest{Id: nodeID})
		cancel()
		n := resp.GetNode()
		switch {
		case err != nil:
			last = err
		case n.GetStatus() != fleetv1.NodeStatus_NODE_STATUS_READY || !n.GetConnected():
			last = fmt.Errorf("node %s: status %s connected %v", nodeID, n.GetStatus(), n.GetConnected())
		case len(n.GetGpus().GetInventory().GetGpus()) != 8 || len(n.GetGpus().GetHealth()) != 8:
			last = fmt.Errorf("node %s: %d GPUs, %d health samples; want 8 and 8", nodeID, len(n.GetGpus().GetInventory().GetGpus()), len(n.GetGpus().GetHealth()))
		default:
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node not ready with GPUs within 30s: %w", last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// procCPUTicks returns utime+stime of pid in clock ticks.
func procCPUTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces;
	// the fields after it start with state (field 3).
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3; utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields after the name", pid, len(f))
	}
	utime, err := strconv.ParseInt(f[11], 10, 64)
	if err != nil {
		return 0, err
	}
	stime, err := strconv.ParseInt(f[12], 10, 64)
	if err != nil {
		return 0, err
	}
	return utime + stime, nil
}

// procSchedNs returns the nanoseconds pid's threads have spent on a CPU
// (the first field of /proc/PID/task/TID/schedstat, summed). A thread that
// exits in between takes its time with it; Go rarely ends threads.
func procSchedNs(pid int) (int64, error) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil {
		return 0, err
	}
	if len(tasks) == 0 {
		return 0, fmt.Errorf("/proc/%d/task: no schedstat (kernel without CONFIG_SCHEDSTATS?)", pid)
	}
	var sum int64
	for _, p := range tasks {
		b, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			continue // the thread ended
		}
		if err != nil {
			return 0, err
		}
		f := strings.Fields(string(b))
		if len(f) < 1 {
			return 0, fmt.Errorf("%s: %q", p, b)
		}
		v, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", p, err)
		}
		sum += v
	}
	return sum, nil
}

// procStatusKiB reads "Key: N kB" lines of /proc/PID/status.
func procStatusKiB(pid int, keys ...string) (map[string]int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		for _, want := range keys {
			if k == want {
				fs := strings.Fields(rest)
				if len(fs) < 1 {
					return nil, fmt.Errorf("/proc/%d/status: %q", pid, sc.Text())
				}
				v, err := strconv.ParseInt(fs[0], 10, 64)
				if err != nil {
					return nil, err
				}
				out[k] = v
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	for _, k := range keys {
		if _, ok := out[k]; !ok {
			return nil, fmt.Errorf("/proc/%d/status has no %s", pid, k)
		}
	}
	return out, nil
}

// agentProblems returns the agent's WARN and ERROR log lines.
func agentProblems(path string) []string {
	b, _ := os.ReadFile(path)
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") ||
			strings.Contains(line, `"level":"WARN"`) || strings.Contains(line, `"level":"ERROR"`) {
			out = append(out, line)
		}
	}
	return out
}
