package sshenroll

import (
	"context"
	"crypto/sha256"
	"errors"
	gonet "net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/bud-ecosystem/budfleet/internal/baremetaltest"
)

// buildFakeAgent builds testdata/fakeagent, a stand-in for bud-agent with
// its flags (the real agent against a real controller is test/e2e's).
func buildFakeAgent(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "bud-agent")
	cmd := exec.Command("go", "build", "-o", bin, "./testdata/fakeagent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build fakeagent: %v\n%s", err, out)
	}
	return bin
}

func target(h *baremetaltest.Host) Target {
	return Target{Name: h.Name, Address: h.Address, Port: h.Port, User: "root", InstallRoot: h.InstallRoot}
}

func agentPid(t *testing.T, h *baremetaltest.Host) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(h.InstallRoot, "run/bud-agent.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if pid == 0 || syscall.Kill(pid, 0) != nil {
		return 0
	}
	return pid
}

func TestEnrollOverSSH(t *testing.T) {
	agentBin := buildFakeAgent(t)
	net := baremetaltest.NewNetwork(t,
		baremetaltest.HostSpec{Name: "worker-01"},
		baremetaltest.HostSpec{Name: "worker-02", Port: 2200},
		baremetaltest.HostSpec{Name: "impostor"},
		baremetaltest.HostSpec{Name: "unlisted"},
		baremetaltest.HostSpec{Name: "refused"},
	)
	w1, w2, impostor, unlisted, refused := net.Hosts[0], net.Hosts[1], net.Hosts[2], net.Hosts[3], net.Hosts[4]
	known := filepath.Join(t.TempDir(), "known_hosts")
	lines := []string{w1.KnownHostsLine(), w2.KnownHostsLine(), impostor.WrongKnownHostsLine(t), refused.KnownHostsLine()}
	if err := os.WriteFile(known, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e, err := New(Options{KnownHostsFile: known, KeyFile: net.ClientKeyFile, AgentBinary: agentBin})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ctl := net.Gateway + ":7443"
	boot := Bootstrap{Controller: ctl, Token: "bud1.pin.id.secret-w1"}

	res, err := e.Enroll(ctx, target(w1), boot)
	if err != nil {
		t.Fatalf("Enroll worker-01: %v", err)
	}
	if res.NodeID != "node-worker-01" || res.Already {
		t.Errorf("result %+v", res)
	}
	root := w1.InstallRoot
	want, _ := os.ReadFile(agentBin)
	got, err := os.ReadFile(filepath.Join(root, "usr/bin/bud-agent"))
	if err != nil || sha256.Sum256(got) != sha256.Sum256(want) {
		t.Errorf("installed agent differs from agent_package (%v)", err)
	}
	joined, _ := os.ReadFile(filepath.Join(root, "var/lib/bud-agent/joined"))
	for _, w := range []string{"controller=" + ctl, "hostname=worker-01", "token=bud1.pin.id.secret-w1", "token_file=/dev/stdin"} {
		if !strings.Contains(string(joined), w) {
			t.Errorf("join got %q, want %q in it", joined, w)
		}
	}
	unit, _ := os.ReadFile(filepath.Join(root, "etc/systemd/system/bud-agent.service"))
	if !strings.Contains(string(unit), "ExecStart="+filepath.Join(root, "usr/bin/bud-agent")+" run --state-dir "+filepath.Join(root, "var/lib/bud-agent")) {
		t.Errorf("unit's ExecStart not under the install root:\n%s", unit)
	}
	verifyUnit(t, filepath.Join(root, "etc/systemd/system/bud-agent.service"))
	if cfg, _ := os.ReadFile(filepath.Join(root, "etc/budfleet/agent.yaml")); string(cfg) != configMarker {
		t.Errorf("agent.yaml = %q", cfg)
	}
	pid := agentPid(t, w1)
	if pid == 0 {
		t.Fatalf("agent not running; files %v", w1.Files())
	}
	if strings.Contains(w1.Log(), "secret-w1") {
		t.Error("the token is in sshd's log")
	}

	// Again: left alone, nothing uploaded, the same agent.
	binInfo, _ := os.Stat(filepath.Join(root, "usr/bin/bud-agent"))
	res, err = e.Enroll(ctx, target(w1), Bootstrap{Controller: ctl, Token: "another"})
	if err != nil || !res.Already || res.NodeID != "node-worker-01" {
		t.Fatalf("second Enroll = %+v, %v", res, err)
	}
	if after, _ := os.Stat(filepath.Join(root, "usr/bin/bud-agent")); !after.ModTime().Equal(binInfo.ModTime()) {
		t.Error("the second Enroll uploaded the agent again")
	}
	if agentPid(t, w1) != pid {
		t.Error("the second Enroll restarted a running agent")
	}
	// An agent that died is started again, still without a new join.
	syscall.Kill(pid, syscall.SIGKILL)
	waitFor(t, func() bool { return agentPid(t, w1) == 0 })
	res, err = e.Enroll(ctx, target(w1), Bootstrap{Controller: ctl, Token: "another"})
	if err != nil || !res.Already {
		t.Fatalf("Enroll after the agent died = %+v, %v", res, err)
	}
	if agentPid(t, w1) == 0 {
		t.Error("the agent was not started again")
	}
	if j, _ := os.ReadFile(filepath.Join(root, "var/lib/bud-agent/joined")); !strings.Contains(string(j), "secret-w1") {
		t.Error("a second join ran")
	}
	// Enrolled with another controller: refused, untouched.
	if _, err := e.Enroll(ctx, target(w1), Bootstrap{Controller: "10.9.9.9:7443", Token: "x"}); !errors.Is(err, ErrEnrolledElsewhere) {
		t.Errorf("Enroll for another controller: %v, want ErrEnrolledElsewhere", err)
	}

	// ansible_port: sshd on 2200, pinned as [addr]:2200.
	if res, err := e.Enroll(ctx, target(w2), Bootstrap{Controller: ctl, Token: "t2"}); err != nil || res.NodeID != "node-worker-02" {
		t.Fatalf("Enroll worker-02 = %+v, %v", res, err)
	}

	// A wrong host key: refused in the key exchange, before the login.
	_, err = e.Enroll(ctx, target(impostor), Bootstrap{Controller: ctl, Token: "t3"})
	if !errors.Is(err, ErrHostKey) || !strings.Contains(err.Error(), "known_hosts "+known+" line 3") {
		t.Errorf("impostor: %v, want ErrHostKey naming known_hosts line 3", err)
	}
	if f := impostor.Files(); len(f) != 0 {
		t.Errorf("files on the impostor: %v", f)
	}
	if l := impostor.Log(); strings.Contains(l, "Accepted") || strings.Contains(l, "Failed publickey") {
		t.Errorf("the impostor saw a login attempt:\n%s", l)
	}
	// A host not in known_hosts at all.
	if _, err = e.Enroll(ctx, target(unlisted), Bootstrap{Controller: ctl, Token: "t4"}); !errors.Is(err, ErrHostKey) || !strings.Contains(err.Error(), "not in known_hosts") {
		t.Errorf("unlisted: %v", err)
	}
	if f := unlisted.Files(); len(f) != 0 {
		t.Errorf("files on the unlisted host: %v", f)
	}

	// A join the controller refuses: an error with its reason, no agent.
	_, err = e.Enroll(ctx, target(refused), Bootstrap{Controller: ctl, Token: "refuse-me"})
	if err == nil || !strings.Contains(err.Error(), "token is used up") {
		t.Errorf("refused join: %v", err)
	}
	if agentPid(t, refused) != 0 {
		t.Error("an agent runs after a refused join")
	}
	if files := refused.Files(); len(files) != 0 {
		t.Errorf("a refused join left %v", files)
	}
	// ssh-agent auth: no key file, the key in an agent.
	ring := agent.NewKeyring()
	keyPEM, _ := os.ReadFile(net.ClientKeyFile)
	raw, err := ssh.ParseRawPrivateKey(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if err := ring.Add(agent.AddedKey{PrivateKey: raw}); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := gonet.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { agent.ServeAgent(ring, c); c.Close() }()
		}
	}()
	viaAgent, err := New(Options{KnownHostsFile: known, AgentSocket: sock, AgentBinary: agentBin})
	if err != nil {
		t.Fatal(err)
	}
	if enrolled, running, id, err := viaAgent.Status(ctx, target(w2)); err != nil || !enrolled || !running || id != "node-worker-02" {
		t.Errorf("Status through ssh-agent = %v %v %q %v", enrolled, running, id, err)
	}
	noAgent, _ := New(Options{KnownHostsFile: known, AgentSocket: filepath.Join(t.TempDir(), "gone.sock")})
	if _, _, _, err := noAgent.Status(ctx, target(w2)); err == nil || !strings.Contains(err.Error(), "SSH_AUTH_SOCK") {
		t.Errorf("Status with the agent gone: %v", err)
	}

	// A wrong user.
	bad := target(w2)
	bad.User = "nobody-here"
	if _, err := e.Enroll(ctx, bad, Bootstrap{Controller: ctl, Token: "x"}); err == nil || !strings.Contains(err.Error(), "authorized_keys") {
		t.Errorf("wrong user: %v", err)
	}

	// Remove: agent stopped, its files gone; again is not an error.
	enrolled, running, id, err := e.Status(ctx, target(w1))
	if err != nil || !enrolled || !running || id != "node-worker-01" {
		t.Errorf("Status = %v %v %q %v", enrolled, running, id, err)
	}
	pid = agentPid(t, w1)
	if err := e.Remove(ctx, target(w1)); err != nil {
		t.Fatal(err)
	}
	if syscall.Kill(pid, 0) == nil {
		waitFor(t, func() bool { return syscall.Kill(pid, 0) != nil || isZombie(pid) })
	}
	if f := w1.Files(); len(f) != 0 {
		t.Errorf("left on the host after Remove: %v", f)
	}
	if err := e.Remove(ctx, target(w1)); err != nil {
		t.Errorf("second Remove: %v", err)
	}
	if enrolled, _, _, err := e.Status(ctx, target(w1)); err != nil || enrolled {
		t.Errorf("Status after Remove = %v, %v", enrolled, err)
	}
	// An operator's own agent.yaml stays.
	own := filepath.Join(w2.InstallRoot, "etc/budfleet/agent.yaml")
	if err := os.WriteFile(own, []byte("log_level: debug\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := e.Remove(ctx, target(w2)); err != nil {
		t.Fatal(err)
	}
	if f := w2.Files(); !slices.Equal(f, []string{"etc/budfleet/agent.yaml"}) {
		t.Errorf("after Remove worker-02 has %v, want only its own agent.yaml", f)
	}
}

func TestNewRefusesBadOptions(t *testing.T) {
	dir := t.TempDir()
	known := filepath.Join(dir, "known_hosts")
	os.WriteFile(known, nil, 0o644)
	notELF := filepath.Join(dir, "agent.sh")
	os.WriteFile(notELF, []byte("#!/bin/sh\n"), 0o755)
	garbage := filepath.Join(dir, "key")
	os.WriteFile(garbage, []byte("not a key"), 0o600)
	for name, tc := range map[string]struct {
		opts Options
		want string
	}{
		"no known_hosts":  {Options{KeyFile: garbage}, "known_hosts is required"},
		"missing file":    {Options{KnownHostsFile: filepath.Join(dir, "nope")}, "known_hosts"},
		"no credentials":  {Options{KnownHostsFile: known}, "no SSH credentials"},
		"bad key":         {Options{KnownHostsFile: known, KeyFile: garbage}, "ssh_key_file"},
		"agent not a bin": {Options{KnownHostsFile: known, AgentSocket: "/nonexistent", AgentBinary: notELF}, "not an ELF binary"},
	} {
		if _, err := New(tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
}

func isZombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && len(b) > i+2 && b[i+2] == 'Z'
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestQuote(t *testing.T) {
	for in, want := range map[string]string{"/a/b": "/a/b", "a b": "'a b'", "it's": `'it'\''s'`, "": "''"} {
		if got := q(in); got != want {
			t.Errorf("q(%q) = %s, want %s", in, got, want)
		}
	}
}

// verifyUnit checks an installed unit with systemd-analyze verify (which
// needs its ExecStart binary to exist: the install root's).
func verifyUnit(t *testing.T, unit string) {
	t.Helper()
	root, err := baremetaltest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("bash", filepath.Join(root, "scripts", "ensure-systemd-analyze.sh")).CombinedOutput(); err != nil {
		t.Fatalf("scripts/ensure-systemd-analyze.sh: %v\n%s", err, out)
	}
	out, err := exec.Command("systemd-analyze", "verify", unit).CombinedOutput()
	// Unknown keys only warn: anything that names the unit counts.
	if err != nil || strings.Contains(string(out), filepath.Base(unit)) {
		t.Errorf("systemd-analyze verify %s: %v\n%s", unit, err, out)
	}
}
