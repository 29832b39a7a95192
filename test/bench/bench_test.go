// Package bench holds benchmarks that run against a real bud-controller
// process: enrollment latency and the controller's memory per connected
// agent.
//
// Run:
//
//	go test ./test/bench/ -run '^$' -bench . -benchtime=1x -count=1
//	go test ./test/bench/ -run '^$' -bench Enroll -benchtime=200x -count=1
//	BENCH_AGENTS=1000 go test ./test/bench/ -run '^$' -bench ConnectedAgentMemory -benchtime=1x
//
// The controller binary is built once by TestMain (only when a benchmark is
// selected); set BUD_BIN_DIR to a directory holding a prebuilt bud-controller
// to skip the build. BUD_BENCH_PPROF=DIR saves the controller's heap and
// goroutine profiles there (BenchmarkConnectedAgentMemory, once connected).
//
// BenchmarkConnectedAgentMemory does its measurement once per invocation
// whatever b.N is: use -benchtime=1x. It starts its own controller process so
// that its baseline is not polluted by other benchmarks.
package bench

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/bud-ecosystem/budfleet/agent"
	"github.com/bud-ecosystem/budfleet/agent/inventory"
	"github.com/bud-ecosystem/budfleet/agent/state"
	"github.com/bud-ecosystem/budfleet/client"
	"github.com/bud-ecosystem/budfleet/controller"
	"github.com/bud-ecosystem/budfleet/internal/etcdtest"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

// controllerBin is the bud-controller binary; set by TestMain.
var controllerBin string

func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.bench"); f == nil || f.Value.String() == "" {
		// No benchmark selected: nothing here needs a binary.
		os.Exit(m.Run())
	}
	os.Exit(runBenchmarks(m))
}

func runBenchmarks(m *testing.M) int {
	if dir := os.Getenv("BUD_BIN_DIR"); dir != "" {
		controllerBin = filepath.Join(dir, "bud-controller")
		if _, err := os.Stat(controllerBin); err != nil {
			fmt.Fprintf(os.Stderr, "BUD_BIN_DIR: %v\n", err)
			return 1
		}
	} else {
		tmp, err := os.MkdirTemp("", "budbench-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(tmp)
		controllerBin = filepath.Join(tmp, "bud-controller")
		cmd := exec.Command("go", "build", "-o", controllerBin, "github.com/bud-ecosystem/budfleet/cmd/bud-controller")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "build bud-controller: %v\n", err)
			return 1
		}
	}
	code := m.Run()
	if shared != nil {
		if lines, k := shared.problems(); k > 0 {
			fmt.Fprintf(os.Stderr, "shared controller logged %d WARN/ERROR lines, first ones:\n%s\n", k, strings.Join(lines, "\n"))
		}
		if err := shared.stop(); err != nil {
			fmt.Fprintf(os.Stderr, "shared controller: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
		os.RemoveAll(shared.root)
	}
	return code
}

// ctrl is a running bud-controller serve process.
type ctrl struct {
	root        string // temp dir holding data/ and the log
	dataDir     string
	addr        string // gRPC
	metricsAddr string
	cmd         *exec.Cmd
	logPath     string
	exited      chan struct{}
	waitErr     error
	stopOnce    sync.Once
	stopErr     error
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// startController inits a fresh data dir and starts serve on free ports,
// returning once /healthz answers.
func startController() (*ctrl, error) {
	root, err := os.MkdirTemp("", "budbench-ctrl-")
	if err != nil {
		return nil, err
	}
	c := &ctrl{root: root, dataDir: filepath.Join(root, "data"), logPath: filepath.Join(root, "controller.log"), exited: make(chan struct{})}
	fail := func(err error) (*ctrl, error) {
		os.RemoveAll(root)
		return nil, err
	}
	if c.addr, err = freeAddr(); err != nil {
		return fail(err)
	}
	if c.metricsAddr, err = freeAddr(); err != nil {
		return fail(err)
	}
	if out, err := exec.Command(controllerBin, "init", "--data-dir", c.dataDir, "--advertise", c.addr).CombinedOutput(); err != nil {
		return fail(fmt.Errorf("bud-controller init: %v\n%s", err, out))
	}
	logf, err := os.Create(c.logPath)
	if err != nil {
		return fail(err)
	}
	defer logf.Close() // the child holds its own copy
	// Every simulated agent dials from 127.0.0.1: the per-source limits
	// meant for a real fleet (one agent per address) are lifted.
	args := append([]string{"serve", "--data-dir", c.dataDir, "--listen", c.addr, "--metrics-listen", c.metricsAddr,
		"--enroll-rate", "100000", "--enroll-burst", "100000", "--max-connections-per-source", "100000"}, extraServe...)
	if os.Getenv("BUD_BENCH_PPROF") != "" {
		args = append(args, "--debug-pprof")
	}
	c.cmd = exec.Command(controllerBin, args...)
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	if err := c.cmd.Start(); err != nil {
		return fail(fmt.Errorf("start bud-controller serve: %w", err))
	}
	go func() { c.waitErr = c.cmd.Wait(); close(c.exited) }()

	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + c.metricsAddr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case <-c.exited:
			return fail(fmt.Errorf("bud-controller serve exited early (%v):\n%s", c.waitErr, c.logTail()))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			c.stop()
			return fail(fmt.Errorf("bud-controller serve not ready after 30s:\n%s", c.logTail()))
		}
	}
	return c, nil
}

// stop sends SIGTERM and waits; a controller that does not stop within 20s
// is killed and reported.
func (c *ctrl) stop() error {
	c.stopOnce.Do(func() {
		select {
		case <-c.exited:
		default:
			_ = c.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-c.exited:
			case <-time.After(20 * time.Second):
				_ = c.cmd.Process.Kill()
				<-c.exited
				c.stopErr = fmt.Errorf("bud-controller did not stop within 20s of SIGTERM:\n%s", c.logTail())
				return
			}
		}
		if c.waitErr != nil {
			c.stopErr = fmt.Errorf("bud-controller exited with %v:\n%s", c.waitErr, c.logTail())
		}
	})
	return c.stopErr
}

// problems returns the controller's WARN and ERROR log lines (at most 5)
// and how many there were.
func (c *ctrl) problems() ([]string, int) {
	b, _ := os.ReadFile(c.logPath)
	var out []string
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, `"level":"WARN"`) || strings.Contains(line, `"level":"ERROR"`) {
			n++
			if len(out) < 5 {
				out = append(out, line)
			}
		}
	}
	return out, n
}

func (c *ctrl) logTail() string {
	b, _ := os.ReadFile(c.logPath)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// mintToken creates a join token with unlimited uses through the fleet API,
// as an operator would with budctl.
func (c *ctrl) mintToken(ctx context.Context) (string, error) {
	cfg, err := client.Load(filepath.Join(c.dataDir, controller.AdminConfigFile))
	if err != nil {
		return "", err
	}
	conn, err := client.Dial(cfg)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	resp, err := fleetv1.NewFleetServiceClient(conn).CreateToken(ctx, &fleetv1.CreateTokenRequest{MaxUses: 0, Description: "bench"})
	if err != nil {
		return "", fmt.Errorf("CreateToken: %w", err)
	}
	return resp.GetJoinToken(), nil
}

// metrics scrapes the controller's /metrics and returns the unlabelled
// samples.
func (c *ctrl) metrics() (map[string]float64, error) {
	resp, err := http.Get("http://" + c.metricsAddr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics: %s", resp.Status)
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

// rssKiB reads VmRSS of the controller process.
func (c *ctrl) rssKiB() (int64, error) { return c.statusKiB("VmRSS") }

// anonKiB reads RssAnon: the process's own memory, without the binary's
// pages mapped from the page cache, which move with the cache's state (a
// freshly built binary maps more of itself per fault than one partly
// evicted) and are shared and reclaimable.
func (c *ctrl) anonKiB() (int64, error) { return c.statusKiB("RssAnon") }

func (c *ctrl) statusKiB(field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(rest) // "12345 kB"
			if len(f) >= 1 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no %s in /proc/PID/status", field)
}

var (
	shared     *ctrl
	sharedTok  string
	sharedErr  error
	sharedOnce sync.Once
	hostSeq    atomic.Int64
)

// sharedController is started once and stopped by TestMain, so that the
// b.N ramp of BenchmarkEnroll reuses one process.
func sharedController() (*ctrl, string, error) {
	sharedOnce.Do(func() {
		shared, sharedErr = startController()
		if sharedErr != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		sharedTok, sharedErr = shared.mintToken(ctx)
	})
	return shared, sharedTok, sharedErr
}

// BenchmarkEnroll measures agent.Enroll (key, CSR, TLS handshake pinned to
// the token's CA hash, controller signing and bbolt commits on both sides)
// against a real controller process. Opening and closing the agent state is
// excluded from the timing.
func BenchmarkEnroll(b *testing.B) {
	c, tok, err := sharedController()
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	base := b.TempDir()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		st, err := state.Open(filepath.Join(base, strconv.Itoa(i)), 0)
		if err != nil {
			b.Fatal(err)
		}
		host := fmt.Sprintf("bench-%06d", hostSeq.Add(1))
		b.StartTimer()
		_, err = agent.Enroll(ctx, agent.EnrollOptions{Controller: c.addr, Token: tok, Hostname: host, State: st})
		b.StopTimer()
		if cerr := st.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			b.Fatalf("enroll %d: %v\ncontroller log:\n%s", i, err, c.logTail())
		}
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/enroll")
}

func benchAgents(b *testing.B) int {
	n := 300
	if s := os.Getenv("BENCH_AGENTS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v <= 0 {
			b.Fatalf("BENCH_AGENTS=%q: want a positive integer", s)
		}
		n = v
	}
	return n
}

// BenchmarkConnectedAgentMemory measures what an idle connected agent costs
// the controller process: RSS and Go heap in use, before and after N agents
// (running in this process) hold their sessions. The measurement is done once
// per invocation; run it with -benchtime=1x.
func BenchmarkConnectedAgentMemory(b *testing.B) {
	n := benchAgents(b)
	etcd := startBenchEtcd(b)
	c, err := startController()
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(c.root)
	stopped := false
	defer func() {
		if !stopped {
			_ = c.stop()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	rssReady, err := c.rssKiB()
	if err != nil {
		b.Fatal(err)
	}
	tok, err := c.mintToken(ctx)
	if err != nil {
		b.Fatal(err)
	}

	// Enroll N agents, each with its own state dir, a few at a time.
	base := b.TempDir()
	states := make([]*state.DB, n)
	defer func() {
		for _, st := range states {
			if st != nil {
				st.Close()
			}
		}
	}()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i := range n {
		g.Go(func() error {
			st, err := state.Open(filepath.Join(base, fmt.Sprintf("agent-%04d", i)), 0)
			if err != nil {
				return err
			}
			states[i] = st
			if _, err := agent.Enroll(gctx, agent.EnrollOptions{Controller: c.addr, Token: tok, Hostname: fmt.Sprintf("sim-%03d", i), State: st}); err != nil {
				return fmt.Errorf("enroll agent %d: %w", i, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatalf("%v\ncontroller log:\n%s", err, c.logTail())
	}

	// Let enrollment settle, then take the baseline.
	time.Sleep(3 * time.Second)
	rssBase, err := c.rssKiB()
	if err != nil {
		b.Fatal(err)
	}
	anonBase, err := c.anonKiB()
	if err != nil {
		b.Fatal(err)
	}
	mBase, err := c.metrics()
	if err != nil {
		b.Fatal(err)
	}
	heapBase, ok := mBase["go_memstats_heap_inuse_bytes"]
	if !ok {
		b.Fatal("controller /metrics has no go_memstats_heap_inuse_bytes")
	}
	if v := mBase["bud_controller_connected_agents"]; v != 0 {
		b.Fatalf("bud_controller_connected_agents = %v before any agent runs", v)
	}

	quiet := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelError + 1}))
	agents := make([]*agent.Agent, n)
	for i, st := range states {
		a, err := agent.New(agent.Options{State: st, Inventory: &inventory.Collector{Hostname: fmt.Sprintf("sim-%03d", i)}, Logger: quiet})
		if err != nil {
			b.Fatal(err)
		}
		agents[i] = a
	}

	actx, stopAgents := context.WithCancel(ctx)
	var wg sync.WaitGroup
	runErrs := make(chan error, n)
	stopAll := func() {
		stopAgents()
		wg.Wait()
	}
	defer stopAll()

	start := time.Now()
	for _, a := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.Run(actx); err != nil {
				runErrs <- err
			}
		}()
	}
	var connected float64
	deadline := start.Add(3 * time.Minute)
	for {
		m, err := c.metrics()
		if err != nil {
			b.Fatal(err)
		}
		connected = m["bud_controller_connected_agents"]
		if int(connected) >= n {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("only %v of %d agents connected after 3m\ncontroller log:\n%s", connected, n, c.logTail())
		}
		time.Sleep(10 * time.Millisecond)
	}
	connectAll := time.Since(start)

	time.Sleep(3 * time.Second) // settle; nothing is forced in the controller
	rssConn, err := c.rssKiB()
	if err != nil {
		b.Fatal(err)
	}
	anonConn, err := c.anonKiB()
	if err != nil {
		b.Fatal(err)
	}
	mConn, err := c.metrics()
	if err != nil {
		b.Fatal(err)
	}
	if v := mConn["bud_controller_connected_agents"]; int(v) != n {
		b.Fatalf("bud_controller_connected_agents = %v after settling, want %d (sessions dropped?)\ncontroller log:\n%s", v, n, c.logTail())
	}
	heapConn := mConn["go_memstats_heap_inuse_bytes"]
	if err := c.saveProfiles(fmt.Sprintf("%d", n)); err != nil {
		b.Fatal(err)
	}
	if etcd != nil {
		reportEtcd(b, etcd, c, n)
	}

	// Clean stop: agents first, then the controller.
	stopAll()
	close(runErrs)
	for err := range runErrs {
		b.Errorf("agent Run: %v", err)
	}
	stopped = true
	if err := c.stop(); err != nil {
		b.Error(err)
	}
	if lines, k := c.problems(); k > 0 {
		b.Logf("controller logged %d WARN/ERROR lines, first ones:\n%s", k, strings.Join(lines, "\n"))
	}
	b.StopTimer()

	fn := float64(n)
	b.ReportMetric(float64(rssConn-rssBase)/fn, "KiB/agent")
	b.ReportMetric(float64(anonConn-anonBase)/fn, "anon-KiB/agent")
	b.ReportMetric(float64(rssConn-rssReady)/fn, "KiB/agent-incl-enroll")
	b.ReportMetric((heapConn-heapBase)/1024/fn, "controller-heap-KiB/agent")
	b.ReportMetric(float64(rssConn)/1024, "controller-RSS-MiB")
	b.ReportMetric(float64(rssBase)/1024, "controller-RSS-base-MiB")
	b.ReportMetric((mConn["go_goroutines"]-mBase["go_goroutines"])/fn, "goroutines/agent")
	b.ReportMetric((mConn["go_memstats_stack_inuse_bytes"]-mBase["go_memstats_stack_inuse_bytes"])/1024/fn, "stack-KiB/agent")
	b.ReportMetric((mConn["go_memstats_heap_idle_bytes"]-mConn["go_memstats_heap_released_bytes"]-(mBase["go_memstats_heap_idle_bytes"]-mBase["go_memstats_heap_released_bytes"]))/1024/fn, "heap-idle-KiB/agent")
	b.ReportMetric(float64(connectAll.Microseconds())/1000, "ms/connect-all")
	b.Logf("agents=%d RSS ready=%d KiB, enrolled=%d KiB, connected=%d KiB; heap_inuse base=%.0f connected=%.0f bytes; connect-all=%s",
		n, rssReady, rssBase, rssConn, heapBase, heapConn, connectAll)
}

// extraServe are more flags for 'bud-controller serve' (the etcd store).
var extraServe []string

// saveProfiles writes the controller's heap and goroutine profiles into
// $BUD_BENCH_PPROF (when set; the controller then runs with --debug-pprof)
// as heap-<tag>.pb.gz and goroutine-<tag>.txt, for 'go tool pprof'.
func (c *ctrl) saveProfiles(tag string) error {
	dir := os.Getenv("BUD_BENCH_PPROF")
	if dir == "" {
		return nil
	}
	for _, p := range []struct{ path, file string }{
		{"/debug/pprof/heap?gc=1", "heap-" + tag + ".pb.gz"},
		{"/debug/pprof/goroutine?debug=1", "goroutine-" + tag + ".txt"},
	} {
		resp, err := http.Get("http://" + c.metricsAddr + p.path)
		if err != nil {
			return err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, p.file), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// startBenchEtcd starts a one-member etcd and points the controller at it
// when BUD_BENCH_STORE=etcd; nil otherwise.
func startBenchEtcd(b *testing.B) *etcdtest.Cluster {
	if os.Getenv("BUD_BENCH_STORE") != "etcd" {
		extraServe = nil
		return nil
	}
	e := etcdtest.Start(b, 1)
	extraServe = []string{"--store", "etcd", "--etcd-endpoints", strings.Join(e.Endpoints(), ","), "--etcd-prefix", "/bench"}
	return e
}

// cpuTicks is utime+stime of pid, in clock ticks (1/100 s here).
func cpuTicks(pid int) (int64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st, nil
}

func etcdProposals(e *etcdtest.Cluster) (float64, error) {
	resp, err := http.Get(e.Members[0].ClientURL + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if l := sc.Text(); strings.HasPrefix(l, "etcd_server_proposals_committed_total ") {
			return strconv.ParseFloat(strings.Fields(l)[1], 64)
		}
	}
	return 0, fmt.Errorf("etcd has no etcd_server_proposals_committed_total")
}

// reportEtcd measures, over 20 s of idle connected agents, etcd's write
// rate and CPU beside the controller's.
func reportEtcd(b *testing.B, e *etcdtest.Cluster, c *ctrl, n int) {
	const window = 20 * time.Second
	p0, err := etcdProposals(e)
	if err != nil {
		b.Fatal(err)
	}
	e0, _ := cpuTicks(e.Members[0].Pid())
	c0, _ := cpuTicks(c.cmd.Process.Pid)
	time.Sleep(window)
	p1, err := etcdProposals(e)
	if err != nil {
		b.Fatal(err)
	}
	e1, _ := cpuTicks(e.Members[0].Pid())
	c1, _ := cpuTicks(c.cmd.Process.Pid)
	rate := (p1 - p0) / window.Seconds()
	b.ReportMetric(rate, "etcd_writes/s")
	b.ReportMetric(rate/float64(n), "etcd_writes/s/agent")
	b.ReportMetric(float64(e1-e0)/window.Seconds(), "etcd_cpu_%")
	b.ReportMetric(float64(c1-c0)/window.Seconds(), "controller_cpu_%")
	b.Logf("etcd over %s with %d idle agents: %.2f writes/s (%.5f per agent), etcd CPU %.1f %%, controller CPU %.1f %%", window, n, rate, rate/float64(n), float64(e1-e0)/window.Seconds(), float64(c1-c0)/window.Seconds())
}
