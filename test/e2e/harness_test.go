// Package e2e runs the real bud-controller, bud-agent and budctl binaries as
// processes on 127.0.0.1 and checks the fleet's behaviour from the outside,
// mostly through 'budctl -o json'.
//
// TestMain builds the three binaries once (or uses $BUD_BIN_DIR) and finds
// grpcurl ($GRPCURL, or installs it into a temp GOBIN).
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/bud-ecosystem/budfleet/internal/freeport"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

const grpcurlModule = "github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3"

var (
	repoRoot   string // module root, holds go.mod and proto/
	binDir     string // bud-controller, bud-agent, budctl, bud-provider-vsphere, bud-provider-baremetal
	grpcurlBin string
	// helperDir holds the test helpers built on demand (helperBinary).
	helperDir string
)

// defaultParallel is how many tests run at once unless -parallel is given.
// The tests spend nearly all their time waiting on timers (heartbeats, grace
// periods, certificate lifetimes), not on CPU, so running them all at once
// keeps the package short even on two cores.
const defaultParallel = "16"

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	flag.Parse()
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "test.parallel" })
	if !explicit {
		_ = flag.Set("test.parallel", defaultParallel)
	}

	var err error
	if repoRoot, err = findRepoRoot(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 2
	}
	tmp, err := os.MkdirTemp("", "budfleet-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 2
	}
	defer os.RemoveAll(tmp)

	helperDir = filepath.Join(tmp, "helpers")
	if binDir, err = prepareBinaries(tmp); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 2
	}
	if grpcurlBin, err = prepareGrpcurl(tmp); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 2
	}
	return m.Run()
}

func findRepoRoot() (string, error) {
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

// resolvePath makes p absolute, trying the working directory first and the
// repository root second (the Makefile may hand over repo-relative paths).
func resolvePath(p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	if abs, err := filepath.Abs(p); err == nil {
		if _, err := os.Stat(abs); err == nil {
			return abs
		}
	}
	return filepath.Join(repoRoot, p)
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(os.Getenv("GOROOT"), "bin", "go")
}

func prepareBinaries(tmp string) (string, error) {
	dir := os.Getenv("BUD_BIN_DIR")
	if dir == "" {
		dir = filepath.Join(tmp, "bin")
		cmd := exec.Command(goTool(), "build", "-o", dir+string(filepath.Separator), "./cmd/bud-controller", "./cmd/bud-agent", "./cmd/budctl", "./cmd/bud-provider-vsphere", "./cmd/bud-provider-baremetal")
		cmd.Dir = repoRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("go build: %v\n%s", err, out)
		}
	} else {
		dir = resolvePath(dir)
	}
	for _, b := range []string{"bud-controller", "bud-agent", "budctl", "bud-provider-vsphere", "bud-provider-baremetal"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return "", fmt.Errorf("binary %s: %w (BUD_BIN_DIR=%q)", b, err, os.Getenv("BUD_BIN_DIR"))
		}
	}
	return dir, nil
}

func prepareGrpcurl(tmp string) (string, error) {
	if p := os.Getenv("GRPCURL"); p != "" {
		p = resolvePath(p)
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("GRPCURL=%q: %w", os.Getenv("GRPCURL"), err)
		}
		return p, nil
	}
	gobin := filepath.Join(tmp, "gobin")
	cmd := exec.Command(goTool(), "install", grpcurlModule)
	cmd.Dir = tmp // outside the module: 'go install pkg@version' needs no go.mod
	cmd.Env = append(os.Environ(), "GOBIN="+gobin)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go install %s: %v\n%s", grpcurlModule, err, out)
	}
	return filepath.Join(gobin, "grpcurl"), nil
}

// ---------------------------------------------------------------------------
// Polling

const pollEvery = 100 * time.Millisecond

// poll calls f until it returns nil or timeout has passed; it returns f's
// last error.
func poll(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(pollEvery)
	}
}

// eventually calls f until it returns nil, failing the test with f's last
// error once timeout has passed.
func eventually(t testing.TB, timeout time.Duration, f func() error) {
	t.Helper()
	if err := poll(timeout, f); err != nil {
		t.Fatalf("not true within %s: %v", timeout, err)
	}
}

// consistently calls f for d and fails the test the first time it returns
// an error.
func consistently(t testing.TB, d time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		if err := f(); err != nil {
			t.Fatalf("stopped holding: %v", err)
		}
		if time.Now().After(deadline) {
			return
		}
		time.Sleep(pollEvery)
	}
}

// ---------------------------------------------------------------------------
// Ports

// freePort is internal/freeport's pick, the one every harness uses.
func freePort(t testing.TB) int { return freeport.T(t) }

// ---------------------------------------------------------------------------
// Processes

// proc is a daemon started by a test; it is killed when the test ends.
type proc struct {
	name    string
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
}

// startProc starts bin with its stdout and stderr appended to logPath. The
// process is killed when owner ends: the test that made the controller or
// agent, which may outlive the subtest that (re)starts it.
func startProc(t, owner testing.TB, name, logPath, bin string, args ...string) *proc {
	t.Helper()
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "=== %s start: %s %s\n", time.Now().Format(time.RFC3339Nano), filepath.Base(bin), strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	setDeathSignal(cmd)
	err = cmd.Start()
	f.Close() // the child holds its own descriptor
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	owner.Cleanup(func() {
		if !p.exited() {
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signal sends sig and waits for the process to exit; it returns the exit
// status.
func (p *proc) signal(t testing.TB, sig syscall.Signal, timeout time.Duration) error {
	t.Helper()
	if p.exited() {
		t.Fatalf("%s exited before it was sent %s: %v", p.name, sig, p.waitErr)
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %s: %v", p.name, err)
	}
	select {
	case <-p.done:
		return p.waitErr
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("%s did not exit within %s of %s", p.name, timeout, sig)
		return nil
	}
}

// stop sends SIGTERM and expects a clean exit.
func (p *proc) stop(t testing.TB) {
	t.Helper()
	if err := p.signal(t, syscall.SIGTERM, 20*time.Second); err != nil {
		t.Errorf("%s exited with %v after SIGTERM; want a clean exit", p.name, err)
	}
}

// kill sends SIGKILL and waits for the process to go.
func (p *proc) kill(t testing.TB) {
	t.Helper()
	_ = p.signal(t, syscall.SIGKILL, 10*time.Second)
}

// runCmd runs a short-lived command and returns its stdout and stderr.
func runCmd(timeout time.Duration, bin string, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	setDeathSignal(cmd)
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s %s: timed out after %s", filepath.Base(bin), strings.Join(args, " "), timeout)
	}
	return stdout.String(), stderr.String(), err
}

// dumpLogOnFailure registers a cleanup that prints the tail of a log file
// when the test failed. Register it before starting the process: cleanups run
// last-in first-out, so the log is read after the process was killed.
func dumpLogOnFailure(t testing.TB, name, path string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		b, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			return // never started
		}
		if err != nil {
			t.Logf("--- %s log: %v", name, err)
			return
		}
		const max = 24 << 10
		if len(b) > max {
			b = append([]byte("...\n"), b[len(b)-max:]...)
		}
		t.Logf("--- %s log (%s):\n%s", name, path, b)
	})
}

func readLog(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// ---------------------------------------------------------------------------
// Controller

type controllerConfig struct {
	heartbeatInterval string
	heartbeatGrace    string
	extra             []string
	// host is the address the controller listens on and agents dial
	// (127.0.0.1 unless withListenHost).
	host string
}

type controllerOption func(*controllerConfig)

// withListenHost serves on ip instead of 127.0.0.1 (and puts it in the
// server certificate): the address of a bridge that hosts in network
// namespaces reach.
func withListenHost(ip string) controllerOption {
	return func(c *controllerConfig) { c.host = ip }
}

// withServeArgs adds flags to 'bud-controller serve'.
func withServeArgs(args ...string) controllerOption {
	return func(c *controllerConfig) { c.extra = append(c.extra, args...) }
}

// withHeartbeat sets --heartbeat-interval and --heartbeat-grace.
func withHeartbeat(interval, grace string) controllerOption {
	return func(c *controllerConfig) { c.heartbeatInterval, c.heartbeatGrace = interval, grace }
}

type controller struct {
	owner       testing.TB
	cfg         controllerConfig
	dataDir     string
	adminConfig string
	logPath     string
	port        int
	metricsPort int
	caPEM       []byte
	caHash      string
	proc        *proc
}

var caHashLine = regexp.MustCompile(`CA hash:\s+sha256:([0-9a-f]{64})`)

// initDataDir runs 'bud-controller init' and returns the CA hash it prints.
func initDataDir(t testing.TB, dataDir, advertise string, extra ...string) string {
	t.Helper()
	args := append([]string{"init", "--data-dir", dataDir, "--advertise", advertise}, extra...)
	stdout, stderr, err := runCmd(30*time.Second, filepath.Join(binDir, "bud-controller"), args...)
	if err != nil {
		t.Fatalf("bud-controller init: %v\n%s%s", err, stdout, stderr)
	}
	m := caHashLine.FindStringSubmatch(stdout)
	if m == nil {
		t.Fatalf("bud-controller init printed no CA hash:\n%s", stdout)
	}
	return m[1]
}

// startController inits a data dir and serves it on free ports, waiting until
// the controller answers health checks.
func startController(t testing.TB, opts ...controllerOption) *controller {
	t.Helper()
	cfg := controllerConfig{heartbeatInterval: "500ms", heartbeatGrace: "2s", host: "127.0.0.1"}
	for _, o := range opts {
		o(&cfg)
	}
	dir := t.TempDir()
	c := &controller{
		owner:       t,
		cfg:         cfg,
		dataDir:     filepath.Join(dir, "data"),
		logPath:     filepath.Join(dir, "controller.log"),
		port:        freePort(t),
		metricsPort: freePort(t),
	}
	c.adminConfig = filepath.Join(c.dataDir, "admin.budctl.yaml")
	dumpLogOnFailure(t, "controller", c.logPath)
	var initArgs []string
	if cfg.host != "127.0.0.1" {
		initArgs = []string{"--server-name", cfg.host}
	}
	c.caHash = initDataDir(t, c.dataDir, c.addr(), initArgs...)
	var err error
	if c.caPEM, err = os.ReadFile(filepath.Join(c.dataDir, "ca.crt")); err != nil {
		t.Fatal(err)
	}
	for attempt := 1; ; attempt++ {
		err := c.tryStart(t)
		if err == nil {
			return c
		}
		// Another process may have taken a port between the check and the
		// bind; try fresh ones.
		if attempt < 4 && strings.Contains(err.Error(), "address already in use") {
			c.port, c.metricsPort = freePort(t), freePort(t)
			c.setServer(t, c.addr())
			continue
		}
		t.Fatal(err)
	}
}

func (c *controller) addr() string { return net.JoinHostPort(c.cfg.host, strconv.Itoa(c.port)) }

// setServer rewrites the server: line of the admin budctl config.
func (c *controller) setServer(t testing.TB, addr string) {
	t.Helper()
	b, err := os.ReadFile(c.adminConfig)
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^server: .*$`)
	if !re.Match(b) {
		t.Fatalf("%s has no server: line", c.adminConfig)
	}
	if err := os.WriteFile(c.adminConfig, re.ReplaceAll(b, []byte("server: "+addr)), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (c *controller) serveArgs() []string {
	args := []string{"serve", "--data-dir", c.dataDir,
		"--listen", c.addr(), "--metrics-listen", fmt.Sprintf("127.0.0.1:%d", c.metricsPort),
		"--heartbeat-interval", c.cfg.heartbeatInterval, "--heartbeat-grace", c.cfg.heartbeatGrace}
	return append(args, c.cfg.extra...)
}

func (c *controller) tryStart(t testing.TB) error {
	t.Helper()
	c.proc = startProc(t, c.owner, "bud-controller", c.logPath, filepath.Join(binDir, "bud-controller"), c.serveArgs()...)
	deadline := time.Now().Add(20 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		if c.proc.exited() {
			return fmt.Errorf("bud-controller serve exited (%v) before it was ready:\n%s", c.proc.waitErr, tail(readLog(c.logPath), 4096))
		}
		if last = c.health(); last == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("bud-controller not ready within 20s: %v", last)
}

// restart starts the controller again on the same data dir and port.
func (c *controller) restart(t testing.TB) {
	t.Helper()
	if c.proc != nil && !c.proc.exited() {
		t.Fatal("restart: the controller is still running")
	}
	if err := c.tryStart(t); err != nil {
		t.Fatal(err)
	}
}

func (c *controller) stop(t testing.TB) { t.Helper(); c.proc.stop(t) }
func (c *controller) kill(t testing.TB) { t.Helper(); c.proc.kill(t) }

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// caOnlyTLS trusts the controller CA and presents no client certificate.
func (c *controller) caOnlyTLS() *tls.Config {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.caPEM)
	return &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, ServerName: "127.0.0.1"}
}

// dialNoCert opens a gRPC connection that trusts the CA but has no client
// certificate: what an agent has before it enrolls.
func (c *controller) dialNoCert(t testing.TB) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(c.addr(), grpc.WithTransportCredentials(credentials.NewTLS(c.caOnlyTLS())))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// health runs a gRPC health check without a client certificate.
func (c *controller) health() error {
	conn, err := grpc.NewClient(c.addr(), grpc.WithTransportCredentials(credentials.NewTLS(c.caOnlyTLS())))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("health: %s", resp.GetStatus())
	}
	return nil
}

// metrics returns the controller's Prometheus exposition.
func (c *controller) metrics(t testing.TB) string {
	t.Helper()
	cl := &http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", c.metricsPort))
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("metrics: %s %v", resp.Status, err)
	}
	return string(b)
}

// metricSamples returns the sample lines of one metric family.
func metricSamples(exposition, name string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(exposition))
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, name+"{") || strings.HasPrefix(l, name+" ") {
			out = append(out, l)
		}
	}
	return out
}

// ---------------------------------------------------------------------------
// budctl

// budctl runs budctl with the admin config.
func (c *controller) budctl(args ...string) (stdout, stderr string, err error) {
	return runBudctl(c.adminConfig, args...)
}

func runBudctl(config string, args ...string) (string, string, error) {
	return runCmd(30*time.Second, filepath.Join(binDir, "budctl"), append([]string{"--config", config, "--timeout", "10s"}, args...)...)
}

// mustBudctl runs budctl and fails the test if it fails.
func (c *controller) mustBudctl(t testing.TB, args ...string) string {
	t.Helper()
	stdout, stderr, err := c.budctl(args...)
	if err != nil {
		t.Fatalf("budctl %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, stdout, stderr)
	}
	return stdout
}

// budctlJSON runs budctl with -o json and decodes its output into msg.
func (c *controller) budctlJSON(msg proto.Message, args ...string) error {
	stdout, stderr, err := c.budctl(append(args, "-o", "json")...)
	if err != nil {
		return fmt.Errorf("budctl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr))
	}
	if err := protojson.Unmarshal([]byte(stdout), msg); err != nil {
		return fmt.Errorf("budctl %s -o json: output is not a %T: %v\n%s", strings.Join(args, " "), msg, err, stdout)
	}
	return nil
}

func (c *controller) listNodes() ([]*fleetv1.Node, error) {
	var resp fleetv1.ListNodesResponse
	err := c.budctlJSON(&resp, "nodes", "list")
	return resp.GetNodes(), err
}

func (c *controller) mustListNodes(t testing.TB) []*fleetv1.Node {
	t.Helper()
	ns, err := c.listNodes()
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

func (c *controller) getNode(id string) (*fleetv1.Node, error) {
	var resp fleetv1.GetNodeResponse
	err := c.budctlJSON(&resp, "nodes", "get", id)
	return resp.GetNode(), err
}

func (c *controller) mustGetNode(t testing.TB, id string) *fleetv1.Node {
	t.Helper()
	n, err := c.getNode(id)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (c *controller) listTokens() ([]*fleetv1.Token, error) {
	var resp fleetv1.ListTokensResponse
	err := c.budctlJSON(&resp, "tokens", "list")
	return resp.GetTokens(), err
}

// tokenUses returns the uses of every token by id.
func (c *controller) tokenUses(t testing.TB) map[string]uint32 {
	t.Helper()
	ts, err := c.listTokens()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint32{}
	for _, tk := range ts {
		out[tk.GetId()] = tk.GetUses()
	}
	return out
}

func (c *controller) getCommand(id string) (*fleetv1.Command, error) {
	var resp fleetv1.GetCommandResponse
	err := c.budctlJSON(&resp, "commands", "get", id)
	return resp.GetCommand(), err
}

var tokenRe = regexp.MustCompile(`^bud1\.[0-9a-f]{64}\.[0-9a-f]{12}\.[0-9a-f]{32}$`)

// createToken runs 'budctl tokens create' and returns the join token, which
// must be all that is printed on stdout.
//
// budctl's tokens are single-use by default; the tests that join several
// agents with one token get an unlimited one unless they pass --uses.
func (c *controller) createToken(t testing.TB, args ...string) string {
	t.Helper()
	if !slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--uses") }) {
		args = append(args, "--uses", "0")
	}
	stdout := c.mustBudctl(t, append([]string{"tokens", "create"}, args...)...)
	tok := strings.TrimSuffix(stdout, "\n")
	if strings.Contains(tok, "\n") || !tokenRe.MatchString(tok) {
		t.Fatalf("tokens create printed %q; want only a join token on one line", stdout)
	}
	return tok
}

// tokenParts splits a join token into CA hash, id and secret.
func tokenParts(t testing.TB, tok string) (caHash, id, secret string) {
	t.Helper()
	p := strings.Split(tok, ".")
	if len(p) != 4 {
		t.Fatalf("token %q has %d parts", tok, len(p))
	}
	return p[1], p[2], p[3]
}

// ---------------------------------------------------------------------------
// Agents

type agent struct {
	owner      testing.TB
	c          *controller
	hostname   string
	stateDir   string
	configPath string
	logPath    string
	nodeID     string
	proc       *proc
}

// permissiveSIEMAllow lets pushed SIEM configurations read the tests'
// temp files and send to their loopback receivers (plain http HEC too);
// the agent's state directory stays refused. TestSIEMAllowlist* replace it.
const permissiveSIEMAllow = "siem_allow: {source_prefixes: [/], file_prefixes: [/], schemes: [syslog, relp, https, http], allow_plain_http: true}\n"

// newAgent prepares a state dir, a log and a config file for one agent.
func (c *controller) newAgent(t testing.TB, hostname string) *agent {
	t.Helper()
	dir := t.TempDir()
	a := &agent{
		owner:      t,
		c:          c,
		hostname:   hostname,
		stateDir:   filepath.Join(dir, "state"),
		configPath: filepath.Join(dir, "agent.yaml"),
		logPath:    filepath.Join(dir, "agent.log"),
	}
	// The hostname is set in the config: 'bud-agent run' reports the
	// machine's own hostname otherwise, and every agent here runs on the
	// same machine.
	cfg := fmt.Sprintf("hostname: %s\nreconnect: {initial: 100ms, max: 1s}\ninventory_interval: 1s\n%s", hostname, permissiveSIEMAllow)
	if err := os.WriteFile(a.configPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	dumpLogOnFailure(t, "agent "+hostname, a.logPath)
	return a
}

// join runs 'bud-agent join' for this agent's state dir.
func (a *agent) join(token string) (stdout, stderr string, err error) {
	return runCmd(60*time.Second, filepath.Join(binDir, "bud-agent"), "join",
		"--controller", a.c.addr(), "--token", token, "--state-dir", a.stateDir, "--hostname", a.hostname)
}

var enrolledRe = regexp.MustCompile(`(?m)^enrolled as node ([0-9a-f-]{36})$`)

// mustJoin joins and records the node id.
func (a *agent) mustJoin(t testing.TB, token string) string {
	t.Helper()
	stdout, stderr, err := a.join(token)
	if err != nil {
		t.Fatalf("bud-agent join: %v\nstdout: %s\nstderr: %s", err, stdout, stderr)
	}
	m := enrolledRe.FindStringSubmatch(stdout)
	if m == nil {
		t.Fatalf("bud-agent join printed %q; want 'enrolled as node ID'", stdout)
	}
	a.nodeID = m[1]
	return a.nodeID
}

// joinAgent makes an agent and enrolls it with token.
func joinAgent(t testing.TB, c *controller, token, hostname string) *agent {
	t.Helper()
	a := c.newAgent(t, hostname)
	a.mustJoin(t, token)
	return a
}

func (a *agent) runArgs(extra ...string) []string {
	return append([]string{"run", "--state-dir", a.stateDir, "--config", a.configPath}, extra...)
}

// start runs 'bud-agent run'.
func (a *agent) start(t testing.TB, extra ...string) {
	t.Helper()
	if a.proc != nil && !a.proc.exited() {
		t.Fatalf("agent %s is already running", a.hostname)
	}
	a.proc = startProc(t, a.owner, "bud-agent "+a.hostname, a.logPath, filepath.Join(binDir, "bud-agent"), a.runArgs(extra...)...)
}

func (a *agent) stop(t testing.TB) { t.Helper(); a.proc.stop(t) }
func (a *agent) kill(t testing.TB) { t.Helper(); a.proc.kill(t) }

func (a *agent) log() string { return readLog(a.logPath) }

// readyErr says why the agent's node is not Ready and connected, or nil.
func (a *agent) readyErr() error {
	if a.proc != nil && a.proc.exited() {
		return fmt.Errorf("agent %s exited: %v\n%s", a.hostname, a.proc.waitErr, tail(a.log(), 2048))
	}
	n, err := a.c.getNode(a.nodeID)
	if err != nil {
		return err
	}
	if n.GetStatus() != fleetv1.NodeStatus_NODE_STATUS_READY || !n.GetConnected() {
		return fmt.Errorf("node %s (%s): status %s, connected %v", a.nodeID, a.hostname, n.GetStatus(), n.GetConnected())
	}
	return nil
}

// waitReady waits until the agent's node is Ready and connected.
func (a *agent) waitReady(t testing.TB) {
	t.Helper()
	if err := poll(20*time.Second, a.readyErr); err != nil {
		a.fatalNotReady(t, "within 20s", err)
	}
}

// fatalNotReady fails the test for an agent that did not get Ready. If the
// agent is still running, it is made to dump its goroutines (SIGQUIT) into
// its log first.
func (a *agent) fatalNotReady(t testing.TB, when string, err error) {
	t.Helper()
	if a.proc == nil || a.proc.exited() {
		t.Fatalf("agent %s not Ready %s: %v", a.hostname, when, err)
	}
	_ = a.proc.signal(t, syscall.SIGQUIT, 10*time.Second)
	t.Fatalf("agent %s not Ready %s (goroutine dump in its log): %v", a.hostname, when, err)
}

// waitDisconnected waits until the controller has seen the session end.
func (a *agent) waitDisconnected(t testing.TB) {
	t.Helper()
	eventually(t, 10*time.Second, func() error {
		n, err := a.c.getNode(a.nodeID)
		if err != nil {
			return err
		}
		if n.GetConnected() {
			return fmt.Errorf("node %s still connected", a.nodeID)
		}
		return nil
	})
}

// ---------------------------------------------------------------------------
// Misc

// writePEMFiles writes the CA, certificate and key of a budctl config to
// files for grpcurl.
func writePEMFiles(t testing.TB, dir, ca, cert, key string) (caPath, certPath, keyPath string) {
	t.Helper()
	caPath, certPath, keyPath = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	for p, s := range map[string]string{caPath: ca, certPath: cert, keyPath: key} {
		if b, _ := pem.Decode([]byte(s)); b == nil {
			t.Fatalf("%s: not PEM", filepath.Base(p))
		}
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return caPath, certPath, keyPath
}

// grpcurl runs grpcurl.
func grpcurl(args ...string) (stdout, stderr string, err error) {
	return runCmd(30*time.Second, grpcurlBin, append([]string{"-max-time", "10"}, args...)...)
}
