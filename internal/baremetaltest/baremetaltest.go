// Package baremetaltest runs the bare-metal provider's real peers for
// tests: SSH "hosts" (Debian's sshd, each in a network namespace of its
// own, with its own host key, sshd_config and install root) and BMCs
// (OpenIPMI's ipmi_sim on loopback).
//
// The hosts hang off a Linux bridge in the test's namespace, on a /24 of
// 10.214.0.0/16 that nothing else on the machine uses; the bridge's own
// address (Network.Gateway) is where a test's controller listens so the
// hosts' agents can reach it. Every name a network makes carries the
// process id (hex), so a later run removes what a killed one left behind
// (namespaces, their processes, bridges). It needs root; Ensure installs
// the packages (scripts/ensure-baremetal.sh).
//
// A network namespace shares the machine's files: each host's
// budfleet_install_root keeps its agent's files apart from the others'.
package baremetaltest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
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

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

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

// Ensure runs scripts/ensure-baremetal.sh once per process.
func Ensure(t testing.TB) {
	t.Helper()
	ensureOnce.Do(func() {
		if os.Geteuid() != 0 {
			ensureErr = errors.New("the bare-metal tests make network namespaces and run sshd: run them as root")
			return
		}
		root, err := RepoRoot()
		if err != nil {
			ensureErr = err
			return
		}
		out, err := exec.Command("bash", filepath.Join(root, "scripts", "ensure-baremetal.sh")).CombinedOutput()
		if err != nil {
			ensureErr = fmt.Errorf("scripts/ensure-baremetal.sh: %v: %s", err, out)
		}
	})
	if ensureErr != nil {
		t.Fatalf("baremetaltest: %v", ensureErr)
	}
}

// Network is a bridge with hosts in namespaces behind it.
type Network struct {
	// Gateway is the bridge's address, reachable from every host.
	Gateway string
	Hosts   []*Host
	// ClientKeyFile is the private key every host's authorized_keys
	// accepts (for root); ClientKey the same as a signer.
	ClientKeyFile string
	ClientKey     ssh.Signer

	t      testing.TB
	dir    string
	tag    string
	bridge string
	subnet int
}

// Host is one SSH host.
type Host struct {
	Name string
	// NS is its network namespace, Address its IP there, Port sshd's.
	NS      string
	Address string
	Port    int
	// InstallRoot is its own root for the agent's files.
	InstallRoot string
	// HostKey is sshd's public host key.
	HostKey ssh.PublicKey
	Dir     string
	SSHDLog string

	cmd  *exec.Cmd
	done chan struct{}
}

// Addr is host:port of its sshd.
func (h *Host) Addr() string { return net.JoinHostPort(h.Address, strconv.Itoa(h.Port)) }

// KnownHostsLine is the known_hosts line that pins the host's real key.
func (h *Host) KnownHostsLine() string {
	return knownhosts.Line([]string{knownhosts.Normalize(h.Addr())}, h.HostKey)
}

// WrongKnownHostsLine pins a key the host does not have.
func (h *Host) WrongKnownHostsLine(t testing.TB) string {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return knownhosts.Line([]string{knownhosts.Normalize(h.Addr())}, k)
}

var seq atomic.Uint32

// HostSpec names a host and its sshd port (22 when 0).
type HostSpec struct {
	Name string
	Port int
}

// NewNetwork makes the bridge and one namespace with a running sshd per
// spec. t.Cleanup takes everything down.
func NewNetwork(t testing.TB, specs ...HostSpec) *Network {
	t.Helper()
	Ensure(t)
	// Test processes of several packages make networks at once: the lock
	// keeps two of them off the same /24 between the pick and the bridge.
	unlock, err := lockFile("/run/budfleet-baremetaltest.lock")
	if err != nil {
		t.Fatalf("baremetaltest: %v", err)
	}
	defer unlock()
	removeStale()
	n := &Network{t: t, dir: t.TempDir()}
	n.tag = fmt.Sprintf("%x%c", os.Getpid(), 'a'+rune(seq.Add(1)%26))
	n.bridge = "bfb" + n.tag
	subnet, err := freeSubnet()
	if err != nil {
		t.Fatalf("baremetaltest: %v", err)
	}
	n.subnet = subnet
	n.Gateway = fmt.Sprintf("10.214.%d.1", subnet)
	t.Cleanup(n.close)
	if err := run("ip", "link", "add", n.bridge, "type", "bridge"); err != nil {
		t.Fatalf("baremetaltest: %v", err)
	}
	for _, args := range [][]string{
		{"addr", "add", n.Gateway + "/24", "dev", n.bridge},
		{"link", "set", n.bridge, "up"},
	} {
		if err := run("ip", args...); err != nil {
			t.Fatalf("baremetaltest: %v", err)
		}
	}
	n.ClientKeyFile, n.ClientKey = writeKey(t, filepath.Join(n.dir, "client_key"))
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil { // sshd's privilege separation directory
		t.Fatalf("baremetaltest: %v", err)
	}
	for i, spec := range specs {
		n.Hosts = append(n.Hosts, n.addHost(i, spec))
	}
	return n
}

func (n *Network) addHost(i int, spec HostSpec) *Host {
	t := n.t
	t.Helper()
	port := spec.Port
	if port == 0 {
		port = 22
	}
	h := &Host{
		Name:    spec.Name,
		NS:      fmt.Sprintf("bfbm-%s-%d", n.tag, i),
		Address: fmt.Sprintf("10.214.%d.%d", n.subnet, i+2),
		Port:    port,
		Dir:     filepath.Join(n.dir, spec.Name),
	}
	h.InstallRoot = filepath.Join(h.Dir, "root")
	h.SSHDLog = filepath.Join(h.Dir, "sshd.log")
	if err := os.MkdirAll(h.InstallRoot, 0o755); err != nil {
		t.Fatal(err)
	}
	veth, peer := fmt.Sprintf("bfv%s%d", n.tag, i), fmt.Sprintf("bfp%s%d", n.tag, i)
	for _, cmd := range [][]string{
		{"netns", "add", h.NS},
		{"link", "add", veth, "type", "veth", "peer", "name", peer},
		{"link", "set", peer, "netns", h.NS},
		{"link", "set", veth, "master", n.bridge},
		{"link", "set", veth, "up"},
		{"-n", h.NS, "link", "set", "lo", "up"},
		{"-n", h.NS, "addr", "add", h.Address + "/24", "dev", peer},
		{"-n", h.NS, "link", "set", peer, "up"},
	} {
		if err := run("ip", cmd...); err != nil {
			t.Fatalf("baremetaltest: host %s: %v", h.Name, err)
		}
	}
	_, hostKey := writeKey(t, filepath.Join(h.Dir, "ssh_host_ed25519_key"))
	h.HostKey = hostKey.PublicKey()
	auth := ssh.MarshalAuthorizedKey(n.ClientKey.PublicKey())
	if err := os.WriteFile(filepath.Join(h.Dir, "authorized_keys"), auth, 0o600); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(h.Dir, "sshd_config")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`# written by internal/baremetaltest for host %s
Port %d
ListenAddress %s
HostKey %s
AuthorizedKeysFile %s
PidFile %s
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
LogLevel VERBOSE
`, h.Name, h.Port, h.Address, filepath.Join(h.Dir, "ssh_host_ed25519_key"), filepath.Join(h.Dir, "authorized_keys"), filepath.Join(h.Dir, "sshd.pid"))), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("/usr/sbin/sshd", "-t", "-f", conf).CombinedOutput(); err != nil {
		t.Fatalf("baremetaltest: sshd -t -f %s: %v\n%s", conf, err, out)
	}
	h.cmd = exec.Command("ip", "netns", "exec", h.NS, "/usr/sbin/sshd", "-D", "-f", conf, "-E", h.SSHDLog)
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := h.cmd.Start(); err != nil {
		t.Fatalf("baremetaltest: start sshd for %s: %v", h.Name, err)
	}
	h.done = make(chan struct{})
	go func() { h.cmd.Wait(); close(h.done) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", h.Addr(), time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-h.done:
			t.Fatalf("baremetaltest: sshd for %s exited: %s\n%s", h.Name, h.cmd.ProcessState, readFile(h.SSHDLog))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("baremetaltest: sshd for %s does not listen on %s: %v\n%s", h.Name, h.Addr(), err, readFile(h.SSHDLog))
		}
		time.Sleep(20 * time.Millisecond)
	}
	return h
}

// Stop stops the host's sshd (its agents keep running).
func (h *Host) Stop() {
	if h.cmd == nil {
		return
	}
	_ = syscall.Kill(-h.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-h.done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-h.cmd.Process.Pid, syscall.SIGKILL)
		<-h.done
	}
	h.cmd = nil
}

// Log returns sshd's log.
func (h *Host) Log() string { return readFile(h.SSHDLog) }

// Files lists the files under the host's install root, relative to it.
func (h *Host) Files() []string {
	var out []string
	_ = filepath.Walk(h.InstallRoot, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			rel, _ := filepath.Rel(h.InstallRoot, p)
			out = append(out, rel)
		}
		return nil
	})
	return out
}

func (n *Network) close() {
	for _, h := range n.Hosts {
		h.Stop()
		killNS(h.NS)
		_ = run("ip", "netns", "del", h.NS)
	}
	_ = run("ip", "link", "del", n.bridge)
}

// killNS kills every process left in namespace ns (agents started over
// SSH, sessions).
func killNS(ns string) {
	out, _ := exec.Command("ip", "netns", "pids", ns).Output()
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// removeStale takes down namespaces and bridges whose process is gone.
func removeStale() {
	alive := func(tag string) bool {
		if len(tag) < 2 {
			return true
		}
		pid, err := strconv.ParseInt(tag[:len(tag)-1], 16, 32)
		if err != nil {
			return true
		}
		return syscall.Kill(int(pid), 0) == nil
	}
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], "bfbm-") {
			continue
		}
		parts := strings.Split(f[0], "-")
		if len(parts) == 3 && !alive(parts[1]) {
			killNS(f[0])
			_ = run("ip", "netns", "del", f[0])
		}
	}
	links, _ := exec.Command("ip", "-o", "link", "show", "type", "bridge").Output()
	for _, line := range strings.Split(string(links), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name := strings.TrimSuffix(f[1], ":")
		if strings.HasPrefix(name, "bfb") && !alive(name[3:]) {
			_ = run("ip", "link", "del", name)
		}
	}
}

// freeSubnet picks X such that no interface has an address in
// 10.214.X.0/24.
func freeSubnet() (int, error) {
	out, err := exec.Command("ip", "-4", "-o", "addr").Output()
	if err != nil {
		return 0, fmt.Errorf("ip -4 addr: %w", err)
	}
	for range 100 {
		x := 1 + mrand.IntN(250)
		if !strings.Contains(string(out), fmt.Sprintf(" 10.214.%d.", x)) {
			return x, nil
		}
	}
	return 0, errors.New("no free /24 in 10.214.0.0/16")
}

// writeKey writes a new ed25519 private key in OpenSSH form (0600).
func writeKey(t testing.TB, file string) (string, ssh.Signer) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return file, signer
}

// lockFile takes an exclusive flock on path.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func readFile(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	if len(b) > 8000 {
		b = b[len(b)-8000:]
	}
	return string(b)
}
