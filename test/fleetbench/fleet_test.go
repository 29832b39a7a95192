// Package fleetbench measures one bud-controller process holding a fleet of
// virtual agents (cmd/bud-fleetsim, several processes of them) beside the
// floor, a bare grpc-go mutual-TLS stream server with the same heartbeat,
// measured on the same machine in the same run. Issue 12's P1-P3:
//
//	P1  N agents connected, a heartbeat each every 10 s: controller RSS and
//	    Go heap per agent (after a forced GC, the baseline taken after
//	    enrolment and before connection), goroutines per agent, CPU over a
//	    steady window; each as a ratio to the floor's per stream.
//	P2  SIGKILL and restart of the controller with N agents: the time until
//	    all are back against the floor's reconnect storm, the arrivals per
//	    second (the agents' backoff), and every command queued before the
//	    kill completed exactly once.
//	P3  one command to all N agents (FleetService.CreateCommands,
//	    all_nodes): from the create call to each result stored, p50/p99,
//	    and the CPU per command of each side, beside the floor's.
//
// BenchmarkFleetEtcd is P1 on the etcd store, with etcd's CPU and write
// rate beside the controller's.
//
// Run (make bench-fleet does this):
//
//	make build
//	go test ./test/fleetbench -run '^$' -bench Fleet -benchtime=1x -timeout 40m -v
//
// Environment: BUD_BIN_DIR (bud-controller and bud-fleetsim; built into a
// temp dir when unset), BUD_FLEET_AGENTS (default 10000),
// BUD_FLEET_PER_PROCESS (default 2500), BUD_FLEET_WINDOW (the steady CPU
// window, default 60s), BUD_FLEET_PROFILE_DIR (keep pprof CPU and heap
// profiles there), BUD_FLEET_REPORT (append the figures as a markdown
// table to this file), BUD_FLEET_ONLY=p3 (BenchmarkFleet measures the
// floor's P3 and then P3 alone: no steady window, no P2;
// BenchmarkFleetEtcd is skipped), for working on the fan-out without the
// 20 minutes around it,
// BUD_FLEET_ONLY=p1 (BenchmarkFleet measures the floor and P1 on bbolt:
// no floor restart, no P3, no P2; BenchmarkFleetEtcd is skipped), for
// working on memory per agent, and BUD_FLEET_CONTROLLER_FLAGS (more
// bud-controller serve flags, space-separated, such as
// "--memory-release-burst 0" to measure without the release after the
// connect storm). With BUD_FLEET_PROFILE_DIR, BUD_FLEET_P3_GOROUTINES=1
// also saves the controller's goroutines during P3 (it lengthens P3), and
// BUD_FLEET_P3_TRACE=1 an execution trace of P3 instead of its CPU profile.
// BUD_FLEET_SERVER_CPUS and BUD_FLEET_CLIENT_CPUS (taskset CPU lists, such
// as "0-1" and "2-15") pin the controller and the floor's server to some
// CPUs and the simulators and the floor's clients to others: on a machine
// with cores to spare, a controller of a given size measured without the
// agents' side taking its CPU, as in a fleet, where agents run on their
// own nodes. BUD_FLEET_CLIENT_GOGC (default 400) is the GOGC of the
// agents' side, the simulators and the floor's clients alike; the servers
// keep Go's default.
//
// Memory is read twice, each time after a forced GC: 30 s after the last
// agent connected (the P1 figures) and again after the steady window (the
// "after the window" rows: what heartbeats alone bring RSS back to).
//
// P1 alone at a small scale (about 5 minutes at 2,000 agents):
//
//	BUD_FLEET_ONLY=p1 BUD_FLEET_AGENTS=2000 go test ./test/fleetbench -run '^$' -bench '^BenchmarkFleet$' -benchtime=1x -v
package fleetbench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bud-ecosystem/budfleet/client"
	"github.com/bud-ecosystem/budfleet/command"
	"github.com/bud-ecosystem/budfleet/controller"
	"github.com/bud-ecosystem/budfleet/internal/etcdtest"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
	"github.com/bud-ecosystem/budfleet/test/fleetsim"
)

var controllerBin, simBin string

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runBenchmarks(m))
}

func runBenchmarks(m *testing.M) int {
	// Each agent and floor stream is a socket; the children inherit the
	// raised limit.
	var r syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r) == nil && r.Cur < r.Max {
		r.Cur = r.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r)
	}
	dir := os.Getenv("BUD_BIN_DIR")
	if dir == "" {
		tmp, err := os.MkdirTemp("", "fleetbench-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(tmp)
		for _, pkg := range []string{"cmd/bud-controller", "cmd/bud-fleetsim"} {
			cmd := exec.Command("go", "build", "-o", tmp+"/", "github.com/bud-ecosystem/budfleet/"+pkg)
			cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
			if err := cmd.Run(); err != nil {
				fmt.Fprintf(os.Stderr, "build %s: %v\n", pkg, err)
				return 1
			}
		}
		dir = tmp
	}
	controllerBin, simBin = filepath.Join(dir, "bud-controller"), filepath.Join(dir, "bud-fleetsim")
	for _, p := range []string{controllerBin, simBin} {
		if _, err := os.Stat(p); err != nil {
			fmt.Fprintf(os.Stderr, "BUD_BIN_DIR: %v (run make build)\n", err)
			return 1
		}
	}
	return m.Run()
}

type config struct {
	n, per  int
	window  time.Duration
	settle  time.Duration
	profDir string
	report  string
	procs   int
	hbEvery time.Duration
	// enrollParallel is enrolments at once per simulator process.
	enrollParallel int
	// onlyP3: BUD_FLEET_ONLY=p3; onlyP1: BUD_FLEET_ONLY=p1.
	onlyP3, onlyP1 bool
	// ctlFlags: BUD_FLEET_CONTROLLER_FLAGS.
	ctlFlags []string
}

func loadConfig(b *testing.B) config {
	c := config{n: 10000, per: 2500, window: 60 * time.Second, settle: 30 * time.Second, hbEvery: 10 * time.Second, enrollParallel: 16}
	atoi := func(k string, v *int) {
		if s := os.Getenv(k); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n <= 0 {
				b.Fatalf("%s=%q: want a positive integer", k, s)
			}
			*v = n
		}
	}
	atoi("BUD_FLEET_AGENTS", &c.n)
	atoi("BUD_FLEET_PER_PROCESS", &c.per)
	atoi("BUD_FLEET_ENROLL_PARALLEL", &c.enrollParallel)
	if s := os.Getenv("BUD_FLEET_WINDOW"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			b.Fatalf("BUD_FLEET_WINDOW=%q: want a duration", s)
		}
		c.window = d
	}
	c.profDir = os.Getenv("BUD_FLEET_PROFILE_DIR")
	if c.profDir != "" {
		if err := os.MkdirAll(c.profDir, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	c.report = os.Getenv("BUD_FLEET_REPORT")
	switch o := os.Getenv("BUD_FLEET_ONLY"); o {
	case "":
	case "p3":
		c.onlyP3 = true
	case "p1":
		c.onlyP1 = true
	default:
		b.Fatalf("BUD_FLEET_ONLY=%q: want p1, p3 or unset", o)
	}
	c.ctlFlags = strings.Fields(os.Getenv("BUD_FLEET_CONTROLLER_FLAGS"))
	for _, k := range []string{"BUD_FLEET_SERVER_CPUS", "BUD_FLEET_CLIENT_CPUS"} {
		if v := os.Getenv(k); v != "" && strings.Trim(v, "0123456789,-") != "" {
			b.Fatalf("%s=%q: want a CPU list, such as 0-1 or 2,3", k, v)
		}
	}
	if os.Getenv("BUD_FLEET_SERVER_CPUS")+os.Getenv("BUD_FLEET_CLIENT_CPUS") != "" {
		if _, err := exec.LookPath("taskset"); err != nil {
			b.Fatalf("BUD_FLEET_SERVER_CPUS/BUD_FLEET_CLIENT_CPUS need taskset (util-linux): %v", err)
		}
	}
	c.procs = (c.n + c.per - 1) / c.per
	return c
}

// counts splits n over the processes.
func (c config) counts() []int {
	out := make([]int, c.procs)
	for i := range out {
		out[i] = c.n / c.procs
		if i < c.n%c.procs {
			out[i]++
		}
	}
	return out
}

// mem is one process's memory and goroutines at a point.
type mem struct {
	rss, anon, hwm int64 // KiB
	heap, stack    float64
	goroutines     float64
	// metrics is the whole scrape, for the runtime breakdown.
	metrics map[string]float64
}

func readMem(pid int, metricsURL string) (mem, error) {
	st, err := procStatus(pid)
	if err != nil {
		return mem{}, err
	}
	m, err := scrape(metricsURL)
	if err != nil {
		return mem{}, err
	}
	return mem{rss: st["VmRSS"], anon: st["RssAnon"], hwm: st["VmHWM"], heap: m["go_memstats_heap_inuse_bytes"], stack: m["go_memstats_stack_inuse_bytes"], goroutines: m["go_goroutines"], metrics: m}, nil
}

// perConn is what the connected streams cost, per stream.
type perConn struct {
	rssKiB, anonKiB, heapKiB, stackKiB, goroutines float64
}

// runtimeMem is where the runtime's memory went between base and conn, per
// agent: RSS beyond heap in use and stacks is in these.
func runtimeMem(base, conn mem, n int) string {
	var t strings.Builder
	for _, k := range []string{"heap_sys", "heap_idle", "heap_released", "stack_sys", "mspan_sys", "gc_sys", "other_sys", "sys"} {
		name := "go_memstats_" + k + "_bytes"
		fmt.Fprintf(&t, " %s %.1f;", k, (conn.metrics[name]-base.metrics[name])/1024/float64(n))
	}
	return strings.TrimSuffix(t.String(), ";")
}

func per(base, conn mem, n int) perConn {
	f := float64(n)
	return perConn{
		rssKiB:     float64(conn.rss-base.rss) / f,
		anonKiB:    float64(conn.anon-base.anon) / f,
		heapKiB:    (conn.heap - base.heap) / 1024 / f,
		stackKiB:   (conn.stack - base.stack) / 1024 / f,
		goroutines: (conn.goroutines - base.goroutines) / f,
	}
}

// steady is CPU over the window.
type steady struct {
	cpuPct     float64   // % of one core
	beats      float64   // heartbeats the server counted in the window
	msPerBeat  float64   // server CPU ms per heartbeat
	otherCores float64   // what the rest of the machine used meanwhile, in cores
	slices     []float64 // % of one core in each 10 s of the window
}

// machineBusy is the machine's busy jiffies (all CPUs) from /proc/stat.
func machineBusy() int64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	var busy int64
	for i, v := range f[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		busy += n
	}
	return busy
}

func measureSteady(ctx context.Context, pid int, metricsURL, beatsMetric string, window time.Duration) (steady, error) {
	m0, err := scrape(metricsURL)
	if err != nil {
		return steady{}, err
	}
	t0, err := cpuTicks(pid)
	if err != nil {
		return steady{}, err
	}
	busy0, start := machineBusy(), time.Now()
	// CPU per 10 s slice too: a window that still holds the tail of the
	// connect storm shows as a falling series.
	var s steady
	prev, prevAt := t0, start
	for time.Since(start) < window {
		wait := min(10*time.Second, window-time.Since(start))
		select {
		case <-ctx.Done():
			return steady{}, ctx.Err()
		case <-time.After(wait):
		}
		t, err := cpuTicks(pid)
		if err != nil {
			return steady{}, err
		}
		now := time.Now()
		s.slices = append(s.slices, float64(t-prev)/ticksPerSecond/now.Sub(prevAt).Seconds()*100)
		prev, prevAt = t, now
	}
	t1 := prev
	busy1, el := machineBusy(), time.Since(start).Seconds()
	m1, err := scrape(metricsURL)
	if err != nil {
		return steady{}, err
	}
	s.cpuPct, s.beats = float64(t1-t0)/ticksPerSecond/el*100, m1[beatsMetric]-m0[beatsMetric]
	if s.beats > 0 {
		s.msPerBeat = float64(t1-t0) * 1000 / ticksPerSecond / s.beats
	}
	s.otherCores = (float64(busy1-busy0)/ticksPerSecond - float64(t1-t0)/ticksPerSecond) / el
	return s, nil
}

func slicesText(v []float64) string {
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = fmt.Sprintf("%.1f", x)
	}
	return strings.Join(parts, " ")
}

// afterGC keeps the forced GC (a heap of hundreds of MiB and 60,000
// goroutine stacks) out of the CPU window that follows it.
const afterGC = 10 * time.Second

// floorFanout asks the floor server for its P3 and returns the latencies.
func floorFanout(ctx context.Context, maddr string) ([]time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+maddr+"/fanout", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("%s: %s", resp.Status, msg)
	}
	var fan fleetsim.FanoutResult
	if err := json.NewDecoder(resp.Body).Decode(&fan); err != nil {
		return nil, err
	}
	if len(fan.LatencyNS) != fan.Sent || fan.Sent == 0 {
		return nil, fmt.Errorf("%d commands sent, %d answers timed", fan.Sent, len(fan.LatencyNS))
	}
	lat := make([]time.Duration, len(fan.LatencyNS))
	for i, ns := range fan.LatencyNS {
		lat[i] = time.Duration(ns)
	}
	return lat, nil
}

// floorResult is the floor's figures.
type floorResult struct {
	per  perConn
	base mem
	conn mem
	// after is memory after the steady window; perAfter per stream.
	after    mem
	perAfter perConn
	steady   steady
	connect  time.Duration // first connection of all streams
	storm    time.Duration // SIGKILL of the server to all streams back
	arrive   []int
	// p3 is the floor's P3: one command to every stream, from the first
	// send to each answer back at the server; p3Server and p3Clients the
	// CPU its server and its client processes used for it.
	p3                  []time.Duration
	p3Server, p3Clients time.Duration
}

var (
	floorOnce sync.Once
	floorRes  *floorResult
	floorErr  error
)

// floor measures the floor once per test binary: both benchmarks divide
// by the same run's figures.
func floor(b *testing.B, c config) *floorResult {
	floorOnce.Do(func() { floorRes, floorErr = measureFloor(b, c) })
	if floorErr != nil {
		b.Fatalf("floor: %v", floorErr)
	}
	return floorRes
}

func measureFloor(b *testing.B, c config) (*floorResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	root, err := os.MkdirTemp("", "fleetbench-floor-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(root)
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	maddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	pkiDir := filepath.Join(root, "pki")
	if _, err := fleetsim.LoadFloorPKI(pkiDir); err != nil {
		return nil, err
	}
	murl := "http://" + maddr + "/metrics"
	startServer := func() (*proc, error) {
		p, err := startProc("floor-server", filepath.Join(root, "server.log"), simBin, "floor-server", "--listen", addr, "--metrics-listen", maddr, "--pki-dir", pkiDir)
		if err != nil {
			return nil, err
		}
		if err := waitHealthy(ctx, p, "http://"+maddr+"/healthz"); err != nil {
			p.kill()
			return nil, err
		}
		return p, nil
	}
	srv, err := startServer()
	if err != nil {
		return nil, err
	}
	defer func() { srv.stop() }()
	var clients []*proc
	defer func() {
		for _, p := range clients {
			p.stop()
		}
	}()
	streams := func() (float64, error) {
		m, err := scrape(murl)
		return m["floor_streams"], err
	}
	time.Sleep(time.Second)
	r := &floorResult{}
	if err := forceGC(maddr, c.profDir, "floor-heap-base.pb.gz"); err != nil {
		return nil, err
	}
	if r.base, err = readMem(srv.pid(), murl); err != nil {
		return nil, err
	}
	t0 := time.Now()
	for i, k := range c.counts() {
		p, err := startProc(fmt.Sprintf("floor-client-%d", i), filepath.Join(root, fmt.Sprintf("client-%d.log", i)), simBin, "floor-client", "--server", addr, "--pki-dir", pkiDir, "--count", strconv.Itoa(k), "--heartbeat", c.hbEvery.String())
		if err != nil {
			return nil, err
		}
		clients = append(clients, p)
	}
	if r.connect, _, err = arrivals(ctx, t0, c.n, 5*time.Minute, streams); err != nil {
		return nil, fmt.Errorf("floor connect: %w\n%s", err, clients[0].logTail())
	}
	time.Sleep(c.settle)
	if err := forceGC(maddr, c.profDir, "floor-heap-connected.pb.gz"); err != nil {
		return nil, err
	}
	if r.conn, err = readMem(srv.pid(), murl); err != nil {
		return nil, err
	}
	r.per = per(r.base, r.conn, c.n)
	fanout := func() error {
		s0, _ := cpuTicks(srv.pid())
		c0 := procTicks(clients)
		var err error
		if r.p3, err = floorFanout(ctx, maddr); err != nil {
			return fmt.Errorf("floor P3: %w", err)
		}
		s1, _ := cpuTicks(srv.pid())
		r.p3Server = time.Duration(s1-s0) * time.Second / ticksPerSecond
		r.p3Clients = time.Duration(procTicks(clients)-c0) * time.Second / ticksPerSecond
		b.Logf("floor: P3 one command to all %d streams, answers back at the server: p50 %s, p99 %s, max %s; CPU server %s, clients %s", c.n,
			pct(r.p3, 50).Round(time.Millisecond), pct(r.p3, 99).Round(time.Millisecond), pct(r.p3, 100).Round(time.Millisecond), r.p3Server, r.p3Clients)
		return nil
	}
	time.Sleep(afterGC)
	if c.onlyP3 {
		// P3 alone: the floor's P3 beside it, nothing else.
		return r, fanout()
	}
	if r.steady, err = measureSteady(ctx, srv.pid(), murl, "floor_heartbeats_total", c.window); err != nil {
		return nil, err
	}
	if err := forceGC(maddr, c.profDir, "floor-heap-after-window.pb.gz"); err != nil {
		return nil, err
	}
	if r.after, err = readMem(srv.pid(), murl); err != nil {
		return nil, err
	}
	r.perAfter = per(r.base, r.after, c.n)
	if c.onlyP1 {
		b.Logf("floor: %d streams connected in %s; per stream RSS %.1f KiB (RssAnon %.1f), Go heap %.1f KiB, stack %.1f KiB, %.2f goroutines; CPU %.2f%% of a core over %s; after the window RSS %.1f KiB, heap %.1f KiB",
			c.n, r.connect.Round(time.Millisecond), r.per.rssKiB, r.per.anonKiB, r.per.heapKiB, r.per.stackKiB, r.per.goroutines, r.steady.cpuPct, c.window, r.perAfter.rssKiB, r.perAfter.heapKiB)
		return r, nil
	}
	// The floor's P3, on the same streams with their heartbeats running.
	if err := fanout(); err != nil {
		return nil, err
	}
	// The floor's connect storm: its server SIGKILLed and started again;
	// the clients come back on grpc-go's default reconnect backoff.
	tKill := time.Now()
	srv.kill()
	if srv, err = startServer(); err != nil {
		return nil, err
	}
	if r.storm, r.arrive, err = arrivals(ctx, tKill, c.n, 5*time.Minute, streams); err != nil {
		return nil, fmt.Errorf("floor storm: %w", err)
	}
	b.Logf("floor: %d streams connected in %s; per stream RSS %.1f KiB (RssAnon %.1f), Go heap %.1f KiB, stack %.1f KiB, %.2f goroutines; CPU %.2f%% of a core over %s (%.0f heartbeats, %.3f ms each, other load %.2f cores); storm after SIGKILL: all back in %s\n%s",
		c.n, r.connect.Round(time.Millisecond), r.per.rssKiB, r.per.anonKiB, r.per.heapKiB, r.per.stackKiB, r.per.goroutines, r.steady.cpuPct, c.window, r.steady.beats, r.steady.msPerBeat, r.steady.otherCores, r.storm.Round(time.Millisecond), histogram(r.arrive))
	return r, nil
}

func waitHealthy(ctx context.Context, p *proc, url string) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := httpc.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if !p.alive() {
			return fmt.Errorf("%s exited (%v):\n%s", p.name, p.waitErr, p.logTail())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not healthy after 60s:\n%s", p.name, p.logTail())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ctl is a bud-controller serve process and how to start it again.
type ctl struct {
	root, dataDir, addr, maddr string
	args                       []string
	p                          *proc
	restarts                   int
}

func (c *ctl) murl() string { return "http://" + c.maddr + "/metrics" }

func (c *ctl) start(ctx context.Context) error {
	p, err := startProc("bud-controller", filepath.Join(c.root, fmt.Sprintf("controller-%d.log", c.restarts)), controllerBin, c.args...)
	if err != nil {
		return err
	}
	c.restarts++
	c.p = p
	return waitHealthy(ctx, p, "http://"+c.maddr+"/healthz")
}

func (c *ctl) connected() (float64, error) {
	m, err := scrape(c.murl())
	return m["bud_controller_connected_agents"], err
}

func startCtl(ctx context.Context, root string, extra []string) (*ctl, error) {
	c := &ctl{root: root, dataDir: filepath.Join(root, "data")}
	var err error
	if c.addr, err = freeAddr(); err != nil {
		return nil, err
	}
	if c.maddr, err = freeAddr(); err != nil {
		return nil, err
	}
	if out, err := exec.Command(controllerBin, "init", "--data-dir", c.dataDir, "--advertise", c.addr).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("bud-controller init: %v\n%s", err, out)
	}
	// The limits are raised so that N agents from one loopback address
	// are let in; everything else is the defaults.
	c.args = append([]string{"serve", "--data-dir", c.dataDir, "--listen", c.addr, "--metrics-listen", c.maddr, "--debug-pprof",
		"--max-connections", "30000", "--max-connections-per-source", "30000", "--enroll-rate", "100000", "--enroll-burst", "100000"}, extra...)
	return c, c.start(ctx)
}

func (c *ctl) fleet(ctx context.Context) (fleetv1.FleetServiceClient, func(), error) {
	cfg, err := client.Load(filepath.Join(c.dataDir, controller.AdminConfigFile))
	if err != nil {
		return nil, nil, err
	}
	conn, err := client.Dial(cfg)
	if err != nil {
		return nil, nil, err
	}
	return fleetv1.NewFleetServiceClient(conn), func() { conn.Close() }, nil
}

// sim is one bud-fleetsim agents process.
type sim struct {
	p       *proc
	control string
	count   int
}

func (s *sim) get(path string, v any) error {
	resp, err := httpc.Get("http://" + s.control + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

func (s *sim) post(path string) error {
	// /start answers after starting its agents, which all dial at once:
	// with the machine's load at 25 that answer took longer than httpc's
	// 15 s.
	c := &http.Client{Timeout: 2 * time.Minute}
	resp, err := c.Post("http://"+s.control+path, "text/plain", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST %s: %s", path, resp.Status)
	}
	return nil
}

// fleetResult is the controller's figures.
type fleetResult struct {
	store     string
	enroll    time.Duration
	base      mem
	conn      mem
	per       perConn
	after     mem // after the steady window, after a forced GC
	perAfter  perConn
	connect   time.Duration
	steady    steady
	simRSSKiB float64 // per agent, the simulator processes
	simCPUPct float64 // the simulator processes over the window, % of a core
	etcd      *etcdSteady

	p3        string // why P3 was not measured, "" when it was
	p3Lat     []time.Duration
	p3Deliver []time.Duration
	p3x       p3Extra

	p2       string
	storm    time.Duration
	arrive   []int
	p2Queued int
	p2HWM    int64
	p2Notes  []string
}

type etcdSteady struct {
	cpuPct, writesPerSec float64
}

func BenchmarkFleet(b *testing.B) {
	c := loadConfig(b)
	if c.onlyP3 {
		fl := floor(b, c)
		r := runFleet(b, c, "bolt", true)
		b.StopTimer()
		reportP3(b, c, fl, r)
		return
	}
	fl := floor(b, c)
	r := runFleet(b, c, "bolt", !c.onlyP1)
	b.StopTimer()
	reportFleet(b, c, fl, r)
}

func BenchmarkFleetEtcd(b *testing.B) {
	c := loadConfig(b)
	if c.onlyP3 || c.onlyP1 {
		b.Skip("BUD_FLEET_ONLY asks for the bbolt benchmark alone")
	}
	fl := floor(b, c)
	r := runFleet(b, c, "etcd", false)
	b.StopTimer()
	reportFleet(b, c, fl, r)
}

func runFleet(b *testing.B, c config, store string, p2p3 bool) *fleetResult {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	root := b.TempDir()
	r := &fleetResult{store: store}
	var extra []string
	var etcd *etcdtest.Cluster
	if store == "etcd" {
		etcd = etcdtest.Start(b, 1)
		extra = []string{"--store", "etcd", "--etcd-endpoints", strings.Join(etcd.Endpoints(), ","), "--etcd-prefix", "/fleetbench"}
	}
	extra = append(extra, c.ctlFlags...)
	ct, err := startCtl(ctx, root, extra)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { ct.p.stop() }()
	fc, closeFleet, err := ct.fleet(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer closeFleet()
	tok, err := fc.CreateToken(ctx, &fleetv1.CreateTokenRequest{MaxUses: 0, Description: "fleetbench"})
	if err != nil {
		b.Fatal(err)
	}

	// Enrol the fleet once; the identities stay in the simulators' memory.
	var sims []*sim
	defer func() {
		for _, s := range sims {
			s.p.stop()
		}
	}()
	tEnroll := time.Now()
	for i, k := range c.counts() {
		control, err := freeAddr()
		if err != nil {
			b.Fatal(err)
		}
		p, err := startProc(fmt.Sprintf("sim-%d", i), filepath.Join(root, fmt.Sprintf("sim-%d.log", i)), simBin, "agents", "--log-level", "error",
			"--controller", ct.addr, "--token", tok.GetJoinToken(), "--count", strconv.Itoa(k), "--name-prefix", fmt.Sprintf("sim%d-", i), "--control", control, "--enroll-parallel", strconv.Itoa(c.enrollParallel))
		if err != nil {
			b.Fatal(err)
		}
		sims = append(sims, &sim{p: p, control: control, count: k})
	}
	if c.profDir != "" {
		go func() {
			if err := cpuProfile(ct.maddr, c.profDir, store+"-cpu-enroll.pb.gz", 10); err != nil {
				b.Logf("CPU profile of enrolment: %v", err)
			}
		}()
	}
	simEnroll0 := simTicks(sims)
	ctlEnroll0, _ := cpuTicks(ct.p.pid())
	for _, s := range sims {
		for {
			var st fleetsim.Stats
			err := s.get("/stats", &st)
			if err == nil && st.EnrollError != "" {
				b.Fatalf("%s: %s\ncontroller:\n%s", s.p.name, st.EnrollError, ct.p.logTail())
			}
			if err == nil && int(st.Enrolled) == s.count {
				break
			}
			if !s.p.alive() {
				b.Fatalf("%s exited:\n%s", s.p.name, s.p.logTail())
			}
			if time.Since(tEnroll) > 15*time.Minute {
				b.Fatalf("%s: enrolment not done after 15m", s.p.name)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	r.enroll = time.Since(tEnroll)
	ctlEnroll1, _ := cpuTicks(ct.p.pid())
	b.Logf("%s: %d agents enrolled in %s (%.0f/s); CPU per enrolment: controller %.2f ms, simulator %.2f ms", store, c.n, r.enroll.Round(time.Millisecond), float64(c.n)/r.enroll.Seconds(),
		float64(ctlEnroll1-ctlEnroll0)*1000/ticksPerSecond/float64(c.n), float64(simTicks(sims)-simEnroll0)*1000/ticksPerSecond/float64(c.n))

	// Baseline: enrolled, none connected, after a forced GC.
	time.Sleep(3 * time.Second)
	if err := forceGC(ct.maddr, c.profDir, store+"-heap-base.pb.gz"); err != nil {
		b.Fatal(err)
	}
	if r.base, err = readMem(ct.p.pid(), ct.murl()); err != nil {
		b.Fatal(err)
	}
	simBase := simMem(sims)

	t0 := time.Now()
	for _, s := range sims {
		if err := s.post("/start"); err != nil {
			b.Fatal(err)
		}
	}
	if r.connect, _, err = arrivals(ctx, t0, c.n, 5*time.Minute, ct.connected); err != nil {
		b.Fatalf("connect: %v\ncontroller:\n%s", err, ct.p.logTail())
	}
	time.Sleep(c.settle)
	if err := forceGC(ct.maddr, c.profDir, store+"-heap-connected.pb.gz"); err != nil {
		b.Fatal(err)
	}
	if r.conn, err = readMem(ct.p.pid(), ct.murl()); err != nil {
		b.Fatal(err)
	}
	r.per = per(r.base, r.conn, c.n)
	r.simRSSKiB = float64(simMem(sims)-simBase) / float64(c.n)
	if n, _ := ct.connected(); int(n) != c.n {
		b.Fatalf("%v of %d agents connected after settling (sessions dropped?)\n%s", n, c.n, ct.p.logTail())
	}

	if c.onlyP3 {
		if c.profDir != "" {
			// Heap profiles after a forced GC either side of P3: their
			// alloc_space difference is what P3 allocated
			// (go tool pprof -sample_index=alloc_space -diff_base BEFORE AFTER).
			if err := forceGC(ct.maddr, c.profDir, store+"-heap-before-p3.pb.gz"); err != nil {
				b.Logf("heap profile before P3: %v", err)
			}
		}
		prof := make(chan struct{})
		if c.profDir != "" {
			// Begun with the fan-out: it covers P3 and a little after.
			go func() {
				defer close(prof)
				if os.Getenv("BUD_FLEET_P3_TRACE") != "" {
					// An execution trace instead: where goroutines waited
					// to run (go tool trace -pprof=sched).
					if err := fetchProfile(ct.maddr, c.profDir, store+"-trace-p3.out", "trace", 6); err != nil {
						b.Logf("trace of P3: %v", err)
					}
					return
				}
				// 4 s covers P3 here; the listing after it waits for the
				// profiles, so they hold P3 and the idle after it only.
				var wg sync.WaitGroup
				for i, s := range sims {
					wg.Add(1)
					go func() {
						defer wg.Done()
						if err := fetchProfile(s.control, c.profDir, fmt.Sprintf("%s-cpu-p3-sim%d.pb.gz", store, i), "profile", 4); err != nil {
							b.Logf("CPU profile of simulator %d in P3: %v", i, err)
						}
					}()
				}
				if err := cpuProfile(ct.maddr, c.profDir, store+"-cpu-p3.pb.gz", 4); err != nil {
					b.Logf("CPU profile of P3: %v", err)
				}
				wg.Wait()
			}()
		}
		if c.profDir != "" && os.Getenv("BUD_FLEET_P3_GOROUTINES") != "" {
			// Where the controller's goroutines wait, a second apart: a
			// result queued behind a store write shows there. Opt-in: a
			// dump of 50,000 goroutines stops the world and takes seconds
			// on a loaded machine, so it lengthens P3 and its labels are
			// when each was asked for, not when it was taken.
			go func() {
				for i := 1; i <= 4; i++ {
					time.Sleep(time.Second)
					if err := goroutineDump(ct.maddr, c.profDir, fmt.Sprintf("%s-goroutines-p3-%ds.txt", store, i)); err != nil {
						b.Logf("goroutines during P3: %v", err)
					}
				}
			}()
		}
		if c.profDir == "" {
			close(prof)
		}
		r.p3Lat, r.p3Deliver, r.p3x, r.p3 = fanOut(ctx, b, fc, ct, sims, c.n, func() {
			<-prof
			if c.profDir != "" {
				if err := forceGC(ct.maddr, c.profDir, store+"-heap-after-p3.pb.gz"); err != nil {
					b.Logf("heap profile after P3: %v", err)
				}
			}
		})
		return r
	}
	time.Sleep(afterGC)
	var e0 etcdSnap
	if etcd != nil {
		e0 = etcdSnapshot(b, etcd)
	}
	sim0 := simTicks(sims)
	profDone := make(chan struct{})
	if c.profDir != "" {
		// During the window, as it is measured: the profiler's own cost is
		// a few per cent of what it samples.
		go func() {
			defer close(profDone)
			if err := cpuProfile(ct.maddr, c.profDir, store+"-cpu-steady.pb.gz", int(min(30*time.Second, c.window)/time.Second)); err != nil {
				b.Logf("CPU profile: %v", err)
			}
		}()
	} else {
		close(profDone)
	}
	if r.steady, err = measureSteady(ctx, ct.p.pid(), ct.murl(), "bud_controller_heartbeats_total", c.window); err != nil {
		b.Fatal(err)
	}
	r.simCPUPct = float64(simTicks(sims)-sim0) / ticksPerSecond / c.window.Seconds() * 100
	if etcd != nil {
		e1 := etcdSnapshot(b, etcd)
		el := e1.at.Sub(e0.at).Seconds()
		r.etcd = &etcdSteady{cpuPct: float64(e1.ticks-e0.ticks) / ticksPerSecond / el * 100, writesPerSec: (e1.proposals - e0.proposals) / el}
	}
	<-profDone
	if err := forceGC(ct.maddr, c.profDir, store+"-heap-after-window.pb.gz"); err != nil {
		b.Fatal(err)
	}
	if r.after, err = readMem(ct.p.pid(), ct.murl()); err != nil {
		b.Fatal(err)
	}
	r.perAfter = per(r.base, r.after, c.n)
	if !p2p3 {
		return r
	}

	// P3: one command to every agent.
	r.p3Lat, r.p3Deliver, r.p3x, r.p3 = fanOut(ctx, b, fc, ct, sims, c.n, nil)

	// P2: commands queued, then the controller SIGKILLed and restarted.
	r.p2 = killAndRestart(ctx, b, ct, fc, sims, c, r)
	return r
}

type etcdSnap struct {
	at        time.Time
	ticks     int64
	proposals float64
}

func etcdSnapshot(b *testing.B, e *etcdtest.Cluster) etcdSnap {
	m, err := scrape(e.Members[0].ClientURL + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	t, err := cpuTicks(e.Members[0].Pid())
	if err != nil {
		b.Fatal(err)
	}
	return etcdSnap{at: time.Now(), ticks: t, proposals: m["etcd_server_proposals_committed_total"]}
}

func simMem(sims []*sim) int64 {
	var sum int64
	for _, s := range sims {
		if st, err := procStatus(s.p.pid()); err == nil {
			sum += st["VmRSS"]
		}
	}
	return sum
}

// simGCCycles is the GC cycles the simulators completed, together.
func simGCCycles(sims []*sim) (uint64, error) {
	var sum uint64
	for _, s := range sims {
		var st fleetsim.Stats
		if err := s.get("/stats", &st); err != nil {
			return 0, err
		}
		sum += st.GCCycles
	}
	return sum, nil
}

func simTicks(sims []*sim) int64 {
	ps := make([]*proc, len(sims))
	for i, s := range sims {
		ps[i] = s.p
	}
	return procTicks(ps)
}

// procTicks is the CPU ticks the processes used, together.
func procTicks(ps []*proc) int64 {
	var sum int64
	for _, p := range ps {
		if t, err := cpuTicks(p.pid()); err == nil {
			sum += t
		}
	}
	return sum
}

// p3Extra is what P3 measures beside the latencies the store and the
// simulators give.
type p3Extra struct {
	// stored: create to each result stored, from the controller's
	// "command finished" log line, written once the result's store write
	// has returned (finished_at, in p3Lat, is the agent's clock when its
	// handler returned: it does not see a result queued behind a store
	// write).
	stored []time.Duration
	// received: create to each result off its agent's stream at the
	// controller (the same line's received_at), before its store write:
	// the floor's measure, an answer back at the server.
	received []time.Duration
	// marks: the controller's "recorded command deliveries" lines, each
	// a delivery-mark write: when it began after the create call, its
	// marks and how long it took.
	marks []string
	// created: how long the create call took (the commands are stored,
	// and their sends begun, when it returns).
	created time.Duration
	// CPU the controller and the simulators used from the create call
	// until the batch was finished (polled every 100 ms).
	ctlCPU, simCPU time.Duration
	// simGC: GC cycles the simulators ran over the same span (-1: not
	// read).
	simGC int64
	// The controller's GC cycles and bytes allocated over the same span,
	// from its /metrics (-1: not read).
	gcCycles, allocBytes float64
}

// fanOut sends one inventory.collect to all nodes and returns, per
// command, create-to-result-stored (the store's finished_at) and
// create-to-delivery (the simulator's first receipt). why is set when the
// controller does not offer the fan-out. beforeList, when set, runs once
// the batch is finished, before the harness lists it.
func fanOut(ctx context.Context, b *testing.B, fc fleetv1.FleetServiceClient, ct *ctl, sims []*sim, n int, beforeList func()) (lat, deliver []time.Duration, x p3Extra, why string) {
	x.gcCycles, x.allocBytes, x.simGC = -1, -1, -1
	m0, merr := scrape(ct.murl())
	ctl0, _ := cpuTicks(ct.p.pid())
	sim0 := simTicks(sims)
	simGC0, simGCErr := simGCCycles(sims)
	t0 := time.Now()
	resp, err := fc.CreateCommands(ctx, &fleetv1.CreateCommandsRequest{Kind: command.InventoryCollect, AllNodes: true})
	x.created = time.Since(t0)
	if status.Code(err) == codes.Unimplemented {
		return nil, nil, x, "CreateCommands is Unimplemented on this controller"
	}
	if err != nil {
		b.Fatalf("CreateCommands: %v", err)
	}
	if int(resp.GetCount()) != n {
		b.Fatalf("CreateCommands queued %d commands, want %d", resp.GetCount(), n)
	}
	if err := waitBatch(ctx, fc, resp.GetBatchId(), n, 3*time.Minute); err != nil {
		b.Fatalf("P3: %v", err)
	}
	ctl1, _ := cpuTicks(ct.p.pid())
	x.ctlCPU = time.Duration(ctl1-ctl0) * time.Second / ticksPerSecond
	x.simCPU = time.Duration(simTicks(sims)-sim0) * time.Second / ticksPerSecond
	x.simGC = -1
	if gc1, err := simGCCycles(sims); err == nil && simGCErr == nil {
		x.simGC = int64(gc1 - simGC0)
	}
	if m1, err := scrape(ct.murl()); err == nil && merr == nil {
		x.gcCycles = m1["go_gc_duration_seconds_count"] - m0["go_gc_duration_seconds_count"]
		x.allocBytes = m1["go_memstats_alloc_bytes_total"] - m0["go_memstats_alloc_bytes_total"]
	}
	if beforeList != nil {
		beforeList()
	}
	cmds, err := listBatch(ctx, fc, resp.GetBatchId())
	if err != nil {
		b.Fatal(err)
	}
	ids := map[string]bool{}
	for _, cm := range cmds {
		if cm.GetState() != fleetv1.CommandState_COMMAND_STATE_SUCCEEDED {
			b.Errorf("P3 command %s on %s: %s %s", cm.GetId(), cm.GetNodeId(), cm.GetState(), cm.GetMessage())
			continue
		}
		ids[cm.GetId()] = true
		lat = append(lat, cm.GetFinishedAt().AsTime().Sub(t0))
	}
	for _, s := range sims {
		var seen fleetsim.Commands
		if err := s.get("/commands", &seen); err != nil {
			b.Fatal(err)
		}
		for _, cs := range seen.Commands {
			if ids[cs.ID] {
				deliver = append(deliver, time.Unix(0, cs.FirstDelivery).Sub(t0))
			}
		}
	}
	if x.stored, x.received, x.marks, err = storedTimes(ct.p.logPath, t0, ids); err != nil {
		b.Logf("P3: result-stored times from the controller's log: %v", err)
	}
	return lat, deliver, x, ""
}

// storedTimes reads the controller's log for when each of ids had its
// result stored, and its delivery-mark writes since t0.
func storedTimes(logPath string, t0 time.Time, ids map[string]bool) (stored, received []time.Duration, marks []string, err error) {
	f, err := os.Open(logPath)
	if err != nil {
		return nil, nil, nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		finished := bytes.Contains(line, []byte(`"msg":"command finished"`))
		marked := bytes.Contains(line, []byte(`"msg":"recorded command deliveries"`))
		if !finished && !marked {
			continue
		}
		var e struct {
			Time     time.Time `json:"time"`
			Received time.Time `json:"received_at"`
			ID       string    `json:"command_id"`
			Commands int       `json:"commands"`
			Took     string    `json:"took"`
		}
		if json.Unmarshal(line, &e) != nil || e.Time.Before(t0) {
			continue
		}
		switch {
		case finished && ids[e.ID]:
			stored = append(stored, e.Time.Sub(t0))
			if !e.Received.IsZero() {
				received = append(received, e.Received.Sub(t0))
			}
		case marked:
			marks = append(marks, fmt.Sprintf("%d marks written at +%s in %s", e.Commands, e.Time.Sub(t0).Round(time.Millisecond), e.Took))
		}
	}
	if err := sc.Err(); err != nil {
		return stored, received, marks, err
	}
	if len(stored) != len(ids) {
		return stored, received, marks, fmt.Errorf("found %d of %d results in the log", len(stored), len(ids))
	}
	return stored, received, marks, nil
}

// per100ms counts ds in 100 ms slices: "0.8-0.9s 1234" for each slice that
// holds any, a stall showing as a gap or a tail.
func per100ms(ds []time.Duration) string {
	counts := map[int]int{}
	last := 0
	for _, d := range ds {
		i := int(d / (100 * time.Millisecond))
		counts[i]++
		last = max(last, i)
	}
	var parts []string
	for i := 0; i <= last; i++ {
		parts = append(parts, fmt.Sprintf("%.1f-%.1fs %d", float64(i)/10, float64(i+1)/10, counts[i]))
	}
	return strings.Join(parts, ", ")
}

func waitBatch(ctx context.Context, fc fleetv1.FleetServiceClient, batch string, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		st, err := fc.GetCommandBatch(ctx, &fleetv1.GetCommandBatchRequest{BatchId: batch})
		if err == nil && int(st.GetSucceeded()+st.GetFailed()) >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("batch %s not finished after %s: %v (err %v)", batch, timeout, st, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func listBatch(ctx context.Context, fc fleetv1.FleetServiceClient, batch string) ([]*fleetv1.Command, error) {
	var out []*fleetv1.Command
	tok := ""
	for {
		resp, err := fc.ListCommands(ctx, &fleetv1.ListCommandsRequest{BatchId: batch, PageSize: 1000, PageToken: tok})
		if err != nil {
			return nil, fmt.Errorf("ListCommands(batch %s): %w", batch, err)
		}
		out = append(out, resp.GetCommands()...)
		if tok = resp.GetNextPageToken(); tok == "" {
			return out, nil
		}
	}
}

// killAndRestart queues one command per node, SIGKILLs the controller at
// once, starts it again on the same data, and follows the agents back.
func killAndRestart(ctx context.Context, b *testing.B, ct *ctl, fc fleetv1.FleetServiceClient, sims []*sim, c config, r *fleetResult) string {
	resp, err := fc.CreateCommands(ctx, &fleetv1.CreateCommandsRequest{Kind: command.InventoryCollect, AllNodes: true})
	if status.Code(err) == codes.Unimplemented {
		// Queue them one by one instead.
		var nodes []string
		tok := ""
		for {
			lr, err := fc.ListNodes(ctx, &fleetv1.ListNodesRequest{PageSize: 1000, PageToken: tok})
			if err != nil {
				b.Fatal(err)
			}
			for _, nd := range lr.GetNodes() {
				nodes = append(nodes, nd.GetId())
			}
			if tok = lr.GetNextPageToken(); tok == "" {
				break
			}
		}
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(16)
		for _, id := range nodes {
			g.Go(func() error {
				_, err := fc.CreateCommand(gctx, &fleetv1.CreateCommandRequest{NodeId: id, Kind: command.InventoryCollect})
				return err
			})
		}
		if err := g.Wait(); err != nil {
			b.Fatalf("CreateCommand: %v", err)
		}
		r.p2Notes = append(r.p2Notes, fmt.Sprintf("queued with %d CreateCommand calls (CreateCommands is Unimplemented here)", len(nodes)))
		resp = nil
	} else if err != nil {
		b.Fatalf("CreateCommands: %v", err)
	}
	st, _ := procStatus(ct.p.pid())
	r.p2HWM = st["VmHWM"]
	tKill := time.Now()
	ct.p.kill()
	if err := ct.start(ctx); err != nil {
		b.Fatalf("restart: %v", err)
	}
	var aerr error
	r.storm, r.arrive, aerr = arrivals(ctx, tKill, c.n, 5*time.Minute, ct.connected)
	if aerr != nil {
		b.Errorf("P2: not all agents back: %v", aerr)
	}
	// Every command queued before the kill completes, each exactly once.
	fc2, closeFc2, err := ct.fleet(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer closeFc2()
	var cmds []*fleetv1.Command
	deadline := time.Now().Add(3 * time.Minute)
	for {
		cmds, err = allCommands(ctx, fc2, resp.GetBatchId())
		if err != nil {
			b.Fatal(err)
		}
		pending := 0
		for _, cm := range cmds {
			if s := cm.GetState(); s != fleetv1.CommandState_COMMAND_STATE_SUCCEEDED && s != fleetv1.CommandState_COMMAND_STATE_FAILED {
				pending++
			}
		}
		if pending == 0 {
			break
		}
		if time.Now().After(deadline) {
			b.Errorf("P2: %d of %d commands not finished 3m after the restart", pending, len(cmds))
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	r.p2Queued = len(cmds)
	byID := map[string]*fleetv1.Command{}
	for _, cm := range cmds {
		byID[cm.GetId()] = cm
		if cm.GetState() != fleetv1.CommandState_COMMAND_STATE_SUCCEEDED {
			b.Errorf("P2 command %s on %s: %s %s", cm.GetId(), cm.GetNodeId(), cm.GetState(), cm.GetMessage())
		}
	}
	runsOver, unseen, redelivered := 0, len(byID), 0
	for _, s := range sims {
		if !s.p.alive() {
			b.Errorf("%s died: %s", s.p.name, s.p.logTail())
			continue
		}
		var seen fleetsim.Commands
		if err := s.get("/commands", &seen); err != nil {
			b.Fatal(err)
		}
		for _, cs := range seen.Commands {
			if cm := byID[cs.ID]; cm != nil {
				if cm.GetNodeId() != cs.Node {
					b.Errorf("command %s for %s reached %s", cs.ID, cm.GetNodeId(), cs.Node)
				}
				if cs.Results > 0 {
					unseen--
				}
				if cs.Deliveries > 1 {
					redelivered++
				}
			}
		}
		for _, a := range seen.Agents {
			if int(a.Runs) != a.Distinct {
				runsOver++
				if runsOver <= 5 {
					b.Errorf("agent %s ran its command handler %d times for %d distinct commands", a.Node, a.Runs, a.Distinct)
				}
			}
		}
	}
	if unseen > 0 {
		b.Errorf("P2: %d queued commands never had a result sent by their agent", unseen)
	}
	if runsOver > 0 {
		b.Errorf("P2: %d agents ran a command more than once", runsOver)
	}
	if !ct.p.alive() {
		b.Errorf("the restarted controller exited: %v", ct.p.waitErr)
	}
	r.p2Notes = append(r.p2Notes, fmt.Sprintf("%d commands queued before the kill, all succeeded, each ran once (%d delivered twice: in flight at the kill, deduplicated by the agent)", len(byID), redelivered))
	if st, err := procStatus(ct.p.pid()); err == nil {
		r.p2Notes = append(r.p2Notes, fmt.Sprintf("peak RSS before the kill %d MiB, after the restart %d MiB; no OOM (the controller and every simulator alive)", r.p2HWM/1024, st["VmHWM"]/1024))
	}
	return ""
}

// allCommands is the batch's commands, or every command when batch is "".
func allCommands(ctx context.Context, fc fleetv1.FleetServiceClient, batch string) ([]*fleetv1.Command, error) {
	if batch != "" {
		return listBatch(ctx, fc, batch)
	}
	var out []*fleetv1.Command
	tok := ""
	for {
		resp, err := fc.ListCommands(ctx, &fleetv1.ListCommandsRequest{PageSize: 1000, PageToken: tok})
		if err != nil {
			return nil, err
		}
		out = append(out, resp.GetCommands()...)
		if tok = resp.GetNextPageToken(); tok == "" {
			return out, nil
		}
	}
}

func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

func ratio(a, b float64) string {
	if b == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

func reportFleet(b *testing.B, c config, fl *floorResult, r *fleetResult) {
	load, _ := os.ReadFile("/proc/loadavg")
	host, _ := os.Hostname()
	var t strings.Builder
	fmt.Fprintf(&t, "\nfleet benchmark, store %s, %d agents in %d processes, heartbeat %s, window %s; machine %s, %d CPUs, loadavg %s",
		r.store, c.n, c.procs, c.hbEvery, c.window, host, numCPU(), strings.TrimSpace(string(load)))
	fmt.Fprint(&t, pinning())
	fmt.Fprintf(&t, "\n| figure | floor | budfleet | ratio | target |\n| --- | --: | --: | --: | --- |\n")
	row := func(name string, f, v float64, unit, target string) {
		fmt.Fprintf(&t, "| %s | %.1f %s | %.1f %s | %s | %s |\n", name, f, unit, v, unit, ratio(v, f), target)
	}
	row("P1 RSS per agent (after forced GC)", fl.per.rssKiB, r.per.rssKiB, "KiB", "<= 1.5x")
	row("P1 RssAnon per agent", fl.per.anonKiB, r.per.anonKiB, "KiB", "")
	row("P1 Go heap in use per agent", fl.per.heapKiB, r.per.heapKiB, "KiB", "")
	row("P1 goroutine stack per agent", fl.per.stackKiB, r.per.stackKiB, "KiB", "")
	row("P1 goroutines per agent", fl.per.goroutines, r.per.goroutines, "", "")
	row("P1 RSS per agent after the window (forced GC)", fl.perAfter.rssKiB, r.perAfter.rssKiB, "KiB", "")
	row("P1 RssAnon per agent after the window", fl.perAfter.anonKiB, r.perAfter.anonKiB, "KiB", "")
	row("P1 Go heap per agent after the window", fl.perAfter.heapKiB, r.perAfter.heapKiB, "KiB", "")
	row("P1 steady CPU (% of one core)", fl.steady.cpuPct, r.steady.cpuPct, "%", "<= 1.5x")
	row("P1 CPU per heartbeat", fl.steady.msPerBeat, r.steady.msPerBeat, "ms", "")
	row("P1 connect all (first time)", fl.connect.Seconds(), r.connect.Seconds(), "s", "")
	if r.p2 == "" && r.storm > 0 {
		row("P2 SIGKILL + restart to all back", fl.storm.Seconds(), r.storm.Seconds(), "s", "<= 2.3x")
	}
	if r.p3 == "" && len(r.p3Lat) > 0 {
		floorP3, ratio := "", ""
		if len(fl.p3) > 0 {
			floorP3 = fmt.Sprintf("%s / %s / %s", pct(fl.p3, 50).Round(time.Millisecond), pct(fl.p3, 99).Round(time.Millisecond), pct(fl.p3, 100).Round(time.Millisecond))
			ratio = fmt.Sprintf("%.2fx (p99)", pct(r.p3Lat, 99).Seconds()/pct(fl.p3, 99).Seconds())
		}
		fmt.Fprintf(&t, "| P3 one command to all, create to result stored: p50 / p99 / max | %s | %s / %s / %s | %s | p99 <= 1 s |\n", floorP3,
			pct(r.p3Lat, 50).Round(time.Millisecond), pct(r.p3Lat, 99).Round(time.Millisecond), pct(r.p3Lat, 100).Round(time.Millisecond), ratio)
		fmt.Fprintf(&t, "| P3 create to delivered at the agent: p50 / p99 | | %s / %s | | |\n", pct(r.p3Deliver, 50).Round(time.Millisecond), pct(r.p3Deliver, 99).Round(time.Millisecond))
		if x := r.p3x.stored; len(x) > 0 {
			ratio := ""
			if len(fl.p3) > 0 {
				ratio = fmt.Sprintf("%.2fx (p99)", pct(x, 99).Seconds()/pct(fl.p3, 99).Seconds())
			}
			fmt.Fprintf(&t, "| P3 create to result stored, controller log: p50 / p99 / max | | %s / %s / %s | %s | |\n", pct(x, 50).Round(time.Millisecond), pct(x, 99).Round(time.Millisecond), pct(x, 100).Round(time.Millisecond), ratio)
		}
		if x := r.p3x.received; len(x) > 0 {
			ratio := ""
			if len(fl.p3) > 0 {
				ratio = fmt.Sprintf("%.2fx (p99)", pct(x, 99).Seconds()/pct(fl.p3, 99).Seconds())
			}
			fmt.Fprintf(&t, "| P3 create to result received at the controller (floor: answer at its server), controller log: p50 / p99 / max | | %s / %s / %s | %s | |\n", pct(x, 50).Round(time.Millisecond), pct(x, 99).Round(time.Millisecond), pct(x, 100).Round(time.Millisecond), ratio)
		}
		if n := len(r.p3Lat); n > 0 && len(fl.p3) > 0 {
			fmt.Fprintf(&t, "\nP3 CPU per command: controller %.0f µs, simulators %.0f µs; floor server %.0f µs, clients %.0f µs\n",
				float64(r.p3x.ctlCPU.Microseconds())/float64(n), float64(r.p3x.simCPU.Microseconds())/float64(n),
				float64(fl.p3Server.Microseconds())/float64(c.n), float64(fl.p3Clients.Microseconds())/float64(c.n))
		}
	}
	if len(c.ctlFlags) > 0 {
		fmt.Fprintf(&t, "\ncontroller flags added: %s", strings.Join(c.ctlFlags, " "))
	}
	fmt.Fprintf(&t, "\nruntime memory per agent, KiB (connected - enrolled): controller%s; floor%s", runtimeMem(r.base, r.conn, c.n), runtimeMem(fl.base, fl.conn, c.n))
	fmt.Fprintf(&t, "\nafter the window: controller%s; floor%s", runtimeMem(r.base, r.after, c.n), runtimeMem(fl.base, fl.after, c.n))
	fmt.Fprintf(&t, "\ncontroller memory releases after the connect storm: %.0f (%.1f MiB returned)", r.after.metrics["bud_controller_memory_releases_total"], r.after.metrics["bud_controller_memory_released_bytes_total"]/(1<<20))
	fmt.Fprintf(&t, "\ncontroller RSS %d MiB connected (%d MiB enrolled, none connected); Go heap %.0f MiB; enrolment %s (%.0f/s)",
		r.conn.rss/1024, r.base.rss/1024, r.conn.heap/(1<<20), r.enroll.Round(time.Second), float64(c.n)/r.enroll.Seconds())
	fmt.Fprintf(&t, "\nCPU per 10 s of the window, %% of a core: floor %s; controller %s", slicesText(fl.steady.slices), slicesText(r.steady.slices))
	fmt.Fprintf(&t, "\nsteady window: controller %.0f heartbeats (%.0f/s), rest of the machine %.2f cores busy (floor window: %.2f); simulators %.1f KiB RSS and %.3f%% CPU per agent",
		r.steady.beats, r.steady.beats/c.window.Seconds(), r.steady.otherCores, fl.steady.otherCores, r.simRSSKiB, r.simCPUPct/float64(c.n))
	if r.etcd != nil {
		fmt.Fprintf(&t, "\netcd beside the controller over the window: etcd CPU %.2f%% of a core, %.2f writes/s (%.5f per agent per s); controller %.2f%%",
			r.etcd.cpuPct, r.etcd.writesPerSec, r.etcd.writesPerSec/float64(c.n), r.steady.cpuPct)
	}
	if r.p3 != "" {
		fmt.Fprintf(&t, "\nP3 not measured: %s", r.p3)
	}
	if r.storm > 0 {
		fmt.Fprintf(&t, "\nP2 arrivals per second after the SIGKILL (controller):\n%s", histogram(r.arrive))
		fmt.Fprintf(&t, "floor arrivals per second after its SIGKILL:\n%s", histogram(fl.arrive))
		for _, n := range r.p2Notes {
			fmt.Fprintf(&t, "P2: %s\n", n)
		}
	}
	b.Log(t.String())
	if c.report != "" {
		if f, err := os.OpenFile(c.report, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
			_, _ = f.WriteString(t.String() + "\n")
			f.Close()
		}
	}
	b.ReportMetric(r.per.rssKiB, "KiB/agent")
	b.ReportMetric(r.per.rssKiB/fl.per.rssKiB, "RSS-x-floor")
	b.ReportMetric(r.per.heapKiB, "heap-KiB/agent")
	b.ReportMetric(r.per.goroutines, "goroutines/agent")
	b.ReportMetric(r.steady.cpuPct, "cpu-%")
	b.ReportMetric(r.steady.cpuPct/fl.steady.cpuPct, "cpu-x-floor")
	if r.storm > 0 {
		b.ReportMetric(r.storm.Seconds(), "s/restart-storm")
		b.ReportMetric(r.storm.Seconds()/fl.storm.Seconds(), "storm-x-floor")
	}
	if len(r.p3Lat) > 0 {
		b.ReportMetric(float64(pct(r.p3Lat, 99).Milliseconds()), "p3-p99-ms")
	}
	if r.etcd != nil {
		b.ReportMetric(r.etcd.cpuPct, "etcd-cpu-%")
		b.ReportMetric(r.etcd.writesPerSec, "etcd-writes/s")
	}
}

// reportP3 is reportFleet for BUD_FLEET_ONLY=p3.
func reportP3(b *testing.B, c config, fl *floorResult, r *fleetResult) {
	load, _ := os.ReadFile("/proc/loadavg")
	host, _ := os.Hostname()
	var t strings.Builder
	fmt.Fprintf(&t, "\nfleet benchmark, P3 alone, store %s, %d agents in %d processes; machine %s, %d CPUs, loadavg %s",
		r.store, c.n, c.procs, host, numCPU(), strings.TrimSpace(string(load)))
	fmt.Fprint(&t, pinning())
	if r.p3 != "" {
		fmt.Fprintf(&t, "\nP3 not measured: %s", r.p3)
	} else {
		fmt.Fprintf(&t, "\nP3 create to result stored: p50 %s, p99 %s, max %s (target p99 <= 1 s)",
			pct(r.p3Lat, 50).Round(time.Millisecond), pct(r.p3Lat, 99).Round(time.Millisecond), pct(r.p3Lat, 100).Round(time.Millisecond))
		fmt.Fprintf(&t, "\nP3 create to delivered at the agent: p50 %s, p99 %s, max %s",
			pct(r.p3Deliver, 50).Round(time.Millisecond), pct(r.p3Deliver, 99).Round(time.Millisecond), pct(r.p3Deliver, 100).Round(time.Millisecond))
		writeP3Extra(&t, r.p3x, len(r.p3Lat))
		writeFloorP3(&t, fl, c.n)
	}
	b.Log(t.String())
	if c.report != "" {
		if f, err := os.OpenFile(c.report, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
			_, _ = f.WriteString(t.String() + "\n")
			f.Close()
		}
	}
	if len(r.p3Lat) > 0 {
		b.ReportMetric(float64(pct(r.p3Lat, 99).Milliseconds()), "p3-p99-ms")
	}
}

// writeFloorP3 adds the floor's P3, measured in the same run.
func writeFloorP3(t *strings.Builder, fl *floorResult, n int) {
	if fl == nil || len(fl.p3) == 0 {
		return
	}
	fmt.Fprintf(t, "\nfloor P3 (same run), first send to answer at its server: p50 %s, p99 %s, max %s; CPU server %s (%.0f µs/command), clients %s (%.0f µs/command)",
		pct(fl.p3, 50).Round(time.Millisecond), pct(fl.p3, 99).Round(time.Millisecond), pct(fl.p3, 100).Round(time.Millisecond),
		fl.p3Server, float64(fl.p3Server.Microseconds())/float64(n), fl.p3Clients, float64(fl.p3Clients.Microseconds())/float64(n))
}

// writeP3Extra adds the controller-side figures of P3.
func writeP3Extra(t *strings.Builder, x p3Extra, n int) {
	fmt.Fprintf(t, "\nP3 create call returned after %s", x.created.Round(time.Millisecond))
	if len(x.stored) > 0 {
		fmt.Fprintf(t, "\nP3 create to result stored (controller log): p50 %s, p99 %s, max %s",
			pct(x.stored, 50).Round(time.Millisecond), pct(x.stored, 99).Round(time.Millisecond), pct(x.stored, 100).Round(time.Millisecond))
		fmt.Fprintf(t, "\nP3 results stored per 100 ms: %s", per100ms(x.stored))
	}
	if len(x.received) > 0 {
		fmt.Fprintf(t, "\nP3 create to result received at the controller (controller log): p50 %s, p99 %s, max %s",
			pct(x.received, 50).Round(time.Millisecond), pct(x.received, 99).Round(time.Millisecond), pct(x.received, 100).Round(time.Millisecond))
	}
	for _, m := range x.marks {
		fmt.Fprintf(t, "\nP3 delivery marks: %s", m)
	}
	if n > 0 {
		fmt.Fprintf(t, "\nP3 CPU from the create call to the batch finished: controller %s (%.0f µs/command), simulators %s (%.0f µs/command)",
			x.ctlCPU, float64(x.ctlCPU.Microseconds())/float64(n), x.simCPU, float64(x.simCPU.Microseconds())/float64(n))
		if x.gcCycles >= 0 {
			fmt.Fprintf(t, "\nP3 controller allocations over the same span: %.0f KiB per command, %.0f GC cycles", x.allocBytes/1024/float64(n), x.gcCycles)
		}
		if x.simGC >= 0 {
			fmt.Fprintf(t, "\nP3 simulators' GC cycles over the same span: %d", x.simGC)
		}
	}
}

// pinning says where the servers and the clients ran, when pinned.
func pinning() string {
	sv, cl := os.Getenv("BUD_FLEET_SERVER_CPUS"), os.Getenv("BUD_FLEET_CLIENT_CPUS")
	if sv == "" && cl == "" {
		return ""
	}
	or := func(v string) string {
		if v == "" {
			return "any"
		}
		return v
	}
	return fmt.Sprintf("\nCPUs: controller and floor server on %s, simulators and floor clients on %s", or(sv), or(cl))
}

func numCPU() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(b), "processor\t:")
}
