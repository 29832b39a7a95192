// Package etcdtest runs a real etcd cluster (the etcd v3.6 binary that
// scripts/ensure-k8s.sh builds from tools/etcd) on loopback for tests: one
// member or several, each a child process that dies with the test.
//
// The binary is $BUD_ETCD when set, else etcd in the cache
// ${XDG_CACHE_HOME:-~/.cache}/budfleet/k8s-*/, else what
// `scripts/ensure-k8s.sh --dir` prints (building it, ~30 s).
package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/internal/freeport"
)

// Member is one etcd process.
type Member struct {
	Name      string
	ClientURL string
	PeerURL   string
	DataDir   string
	LogFile   string
	args      []string
	bin       string
	http      *http.Client

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Cluster is a running etcd cluster.
type Cluster struct {
	Members []*Member
	t       testing.TB
}

// Endpoints lists every member's client URL.
func (c *Cluster) Endpoints() []string {
	var out []string
	for _, m := range c.Members {
		out = append(out, m.ClientURL)
	}
	return out
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// Binary finds the etcd binary (see the package comment).
func Binary() (string, error) {
	binOnce.Do(func() { binPath, binErr = findBinary() })
	return binPath, binErr
}

func findBinary() (string, error) {
	if p := os.Getenv("BUD_ETCD"); p != "" {
		return p, nil
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", err
		}
		cache = filepath.Join(home, ".cache")
	}
	matches, _ := filepath.Glob(filepath.Join(cache, "budfleet", "k8s-*", "etcd"))
	sort.Sort(sort.Reverse(sort.StringSlice(matches)))
	for _, m := range matches {
		if st, err := os.Stat(m); err == nil && st.Mode()&0o111 != 0 {
			return m, nil
		}
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "scripts", "ensure-k8s.sh")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("etcdtest: no etcd binary: set BUD_ETCD or run scripts/ensure-k8s.sh")
		}
		dir = parent
	}
	out, err := exec.Command(filepath.Join(dir, "scripts", "ensure-k8s.sh"), "--dir").Output()
	if err != nil {
		return "", fmt.Errorf("etcdtest: scripts/ensure-k8s.sh --dir: %w", err)
	}
	return filepath.Join(strings.TrimSpace(string(out)), "etcd"), nil
}

// Start runs an n-member cluster in a temp dir and stops it at cleanup.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	return start(t, n, "http", nil, http.DefaultClient)
}

func start(t testing.TB, n int, scheme string, extra []string, hc *http.Client) *Cluster {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	c := &Cluster{t: t}
	var initial []string
	for i := range n {
		m := &Member{
			Name:      "m" + strconv.Itoa(i),
			ClientURL: scheme + "://127.0.0.1:" + strconv.Itoa(freeport.T(t)),
			PeerURL:   "http://127.0.0.1:" + strconv.Itoa(freeport.T(t)),
			DataDir:   filepath.Join(dir, "m"+strconv.Itoa(i)),
			LogFile:   filepath.Join(dir, "m"+strconv.Itoa(i)+".log"),
			bin:       bin,
			http:      hc,
		}
		initial = append(initial, m.Name+"="+m.PeerURL)
		c.Members = append(c.Members, m)
	}
	for _, m := range c.Members {
		m.args = []string{
			"--name=" + m.Name,
			"--data-dir=" + m.DataDir,
			"--listen-client-urls=" + m.ClientURL,
			"--advertise-client-urls=" + m.ClientURL,
			"--listen-peer-urls=" + m.PeerURL,
			"--initial-advertise-peer-urls=" + m.PeerURL,
			"--initial-cluster=" + strings.Join(initial, ","),
			"--initial-cluster-state=new",
			"--initial-cluster-token=etcdtest",
			"--unsafe-no-fsync",
			"--log-level=warn",
			"--heartbeat-interval=50",
			"--election-timeout=500",
		}
		m.args = append(m.args, extra...)
		if err := m.Start(); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, m := range c.Members {
			m.Kill()
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, m := range c.Members {
		if err := m.WaitHealthy(ctx); err != nil {
			log, _ := os.ReadFile(m.LogFile)
			t.Fatalf("%v\n%s", err, log)
		}
	}
	return c
}

// Start (re)starts the member's process on its data dir.
func (m *Member) Start() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	f, err := os.OpenFile(m.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	cmd := exec.Command(m.bin, m.args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start etcd %s: %w", m.Name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	m.cmd, m.done = cmd, done
	return nil
}

// Kill SIGKILLs the member and waits for it.
func (m *Member) Kill() {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.cmd = nil
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-done
}

// WaitHealthy waits until the member answers /health with true.
func (m *Member) WaitHealthy(ctx context.Context) error {
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, m.ClientURL+"/health", nil)
		resp, err := m.http.Do(req)
		if err == nil {
			var buf [256]byte
			k, _ := resp.Body.Read(buf[:])
			resp.Body.Close()
			if strings.Contains(string(buf[:k]), `"health":"true"`) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("etcd %s not healthy: %w (last: %v)", m.Name, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Pid is the member's process id; 0 when it is not running.
func (m *Member) Pid() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return 0
	}
	return m.cmd.Process.Pid
}
