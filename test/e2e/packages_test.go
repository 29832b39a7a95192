package e2e

import (
	"bytes"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// The paths the bud-agent package owns or makes, as the unit uses them.
const (
	pkgAgentBin    = "/usr/bin/bud-agent"
	pkgAgentState  = "/var/lib/bud-agent"
	pkgAgentConfig = "/etc/budfleet/agent.yaml"
	pkgAgentUnit   = "/lib/systemd/system/bud-agent.service"
)

// buildAgentPackages runs scripts/packages.sh for the bud-agent package of
// this machine's architecture at version and returns its .deb and .rpm.
func buildAgentPackages(t *testing.T, version string) (deb, rpm string) {
	t.Helper()
	out := t.TempDir()
	cmd := exec.Command(filepath.Join(repoRoot, "scripts", "packages.sh"),
		"--arch", runtime.GOARCH, "--out", out, "--version", version, "--only", "bud-agent")
	cmd.Dir = repoRoot
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("scripts/packages.sh: %v\n%s", err, b)
	}
	debs, _ := filepath.Glob(filepath.Join(out, "bud-agent_*.deb"))
	rpms, _ := filepath.Glob(filepath.Join(out, "bud-agent-*.rpm"))
	if len(debs) != 1 || len(rpms) != 1 {
		t.Fatalf("packages.sh made %v and %v; want one .deb and one .rpm", debs, rpms)
	}
	return debs[0], rpms[0]
}

func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	stdout, stderr, err := runCmd(3*time.Minute, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\nstdout: %s\nstderr: %s", name, strings.Join(args, " "), err, stdout, stderr)
	}
	return stdout + stderr
}

// dpkg runs dpkg under scripts/apt-install.sh's lock: the other test
// packages install their peers with apt at the same time, and dpkg fails
// at once when apt holds its lock.
func dpkg(t *testing.T, args ...string) string {
	t.Helper()
	return mustRun(t, "flock", dpkgArgs(args...)...)
}

func dpkgArgs(args ...string) []string {
	return append([]string{"-w", "900", filepath.Join(os.TempDir(), "budfleet-apt.lock"), "dpkg"}, args...)
}

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func wantMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("after install: %v", err)
	}
	if fi.Mode().Perm() != want {
		t.Errorf("%s has mode %o; want %o", path, fi.Mode().Perm(), want)
	}
}

func wantGone(t *testing.T, path, after string) {
	t.Helper()
	if _, err := os.Lstat(path); err == nil {
		t.Errorf("%s is still there after %s", path, after)
	}
}

// TestAgentPackage installs the built bud-agent .deb on this machine with
// dpkg, where PID 1 is not systemd: the agent joins a real controller with
// the installed binary and state dir and runs as the unit would; a
// reinstall over it and an upgrade to a newer package keep the node's
// identity and the operator's config; a remove keeps both; a purge takes
// them. It lists the .rpm with rpm -qpl. Everything is removed at the end.
func TestAgentPackage(t *testing.T) {
	// No other test uses the paths it installs.
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Fatal("dpkg -i needs root: run the tests as root")
	}
	if _, err := exec.LookPath("dpkg"); err != nil {
		t.Fatal("no dpkg on this machine: the packages are tested on Debian")
	}
	if out, err := exec.Command("dpkg-query", "-W", "-f=${Status}", "bud-agent").Output(); err == nil && strings.Contains(string(out), "installed") {
		t.Fatalf("bud-agent is installed on this machine (%s); the test would replace it: run it where budfleet is not installed", out)
	}
	if _, err := os.Stat(pkgAgentState); err == nil {
		t.Fatalf("%s exists; the test would take over a real node's identity: run it where budfleet is not installed", pkgAgentState)
	}
	if out, err := exec.Command("bash", filepath.Join(repoRoot, "scripts", "ensure-rpm.sh")).CombinedOutput(); err != nil {
		t.Fatalf("scripts/ensure-rpm.sh: %v\n%s", err, out)
	}
	deb1, rpm1 := buildAgentPackages(t, "v1.0.0")
	deb2, _ := buildAgentPackages(t, "v1.0.1")
	t.Cleanup(func() {
		if out, err := exec.Command("flock", dpkgArgs("--purge", "bud-agent")...).CombinedOutput(); err != nil {
			t.Errorf("cleanup: dpkg --purge bud-agent: %v\n%s", err, out)
		}
		os.RemoveAll(pkgAgentState)
	})

	t.Run("rpm", func(t *testing.T) {
		list := mustRun(t, "rpm", "-qpl", rpm1)
		for _, p := range []string{pkgAgentBin, "/usr/lib/systemd/system/bud-agent.service", pkgAgentConfig, pkgAgentState} {
			if !strings.Contains(list, p+"\n") {
				t.Errorf("rpm -qpl lists no %s:\n%s", p, list)
			}
		}
		if cfg := mustRun(t, "rpm", "-qpc", rpm1); !strings.Contains(cfg, pkgAgentConfig) {
			t.Errorf("rpm -qpc: %s is not a config file:\n%s", pkgAgentConfig, cfg)
		}
		if scripts := mustRun(t, "rpm", "-qp", "--scripts", rpm1); !strings.Contains(scripts, "/run/systemd/system") {
			t.Errorf("rpm -qp --scripts: the scripts do not check for systemd:\n%s", scripts)
		}
	})

	c := startController(t)
	tok := c.createToken(t)
	a := c.newAgent(t, "pkg-node")
	a.stateDir, a.configPath = pkgAgentState, pkgAgentConfig
	runInstalled := func(t *testing.T, wantVersion string) {
		t.Helper()
		if v := strings.TrimSpace(mustRun(t, pkgAgentBin, "version")); v != wantVersion {
			t.Fatalf("%s version = %q; want %q", pkgAgentBin, v, wantVersion)
		}
		a.proc = startProc(t, t, "bud-agent (installed)", a.logPath, pkgAgentBin, a.runArgs()...)
		a.waitReady(t)
		a.stop(t)
	}

	dpkg(t, "-i", deb1)
	wantMode(t, pkgAgentState, 0o700)
	wantMode(t, pkgAgentConfig, 0o600)
	wantMode(t, pkgAgentBin, 0o755)
	wantMode(t, pkgAgentUnit, 0o644)
	stdout, stderr, err := runCmd(time.Minute, pkgAgentBin, "join", "--controller", c.addr(), "--token", tok, "--hostname", a.hostname)
	if err != nil {
		t.Fatalf("bud-agent join (installed, default state dir): %v\n%s%s", err, stdout, stderr)
	}
	m := enrolledRe.FindStringSubmatch(stdout)
	if m == nil {
		t.Fatalf("bud-agent join printed %q", stdout)
	}
	a.nodeID = m[1]
	// The operator's edit, which no upgrade may undo.
	cfg, err := os.ReadFile(pkgAgentConfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg = append(cfg, "hostname: pkg-node\nreconnect: {initial: 100ms, max: 1s}\n"...)
	if err := os.WriteFile(pkgAgentConfig, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	runInstalled(t, "v1.0.0")
	identity := fileSum(t, filepath.Join(pkgAgentState, "agent.db"))

	keeps := func(t *testing.T, after string) {
		t.Helper()
		if fileSum(t, filepath.Join(pkgAgentState, "agent.db")) != identity {
			t.Errorf("%s: agent.db changed", after)
		}
		got, err := os.ReadFile(pkgAgentConfig)
		if err != nil || !bytes.Equal(got, cfg) {
			t.Errorf("%s: %s is not the operator's (%v):\n%s", after, pkgAgentConfig, err, got)
		}
		if st := mustRun(t, pkgAgentBin, "status"); !strings.Contains(st, "node_id: "+a.nodeID) {
			t.Errorf("%s: bud-agent status is not node %s:\n%s", after, a.nodeID, st)
		}
	}
	t.Run("reinstall", func(t *testing.T) {
		dpkg(t, "-i", deb1)
		keeps(t, "dpkg -i over the install")
		wantMode(t, pkgAgentState, 0o700)
	})
	t.Run("upgrade", func(t *testing.T) {
		dpkg(t, "-i", deb2)
		keeps(t, "an upgrade to 1.0.1")
		runInstalled(t, "v1.0.1")
		// The run writes the database (its certificate, records): what
		// the next steps must keep is what it left.
		identity = fileSum(t, filepath.Join(pkgAgentState, "agent.db"))
	})
	t.Run("remove", func(t *testing.T) {
		dpkg(t, "-r", "bud-agent")
		wantGone(t, pkgAgentBin, "dpkg -r")
		wantGone(t, pkgAgentUnit, "dpkg -r")
		dpkg(t, "-i", deb2)
		keeps(t, "dpkg -r and a new install")
	})
	t.Run("purge", func(t *testing.T) {
		// What an agent.upgrade keeps beside the binary goes too.
		if err := os.WriteFile(pkgAgentBin+".prev", []byte("kept"), 0o755); err != nil {
			t.Fatal(err)
		}
		dpkg(t, "--purge", "bud-agent")
		for _, p := range []string{pkgAgentBin, pkgAgentBin + ".prev", pkgAgentUnit, pkgAgentState, pkgAgentConfig, "/etc/budfleet"} {
			wantGone(t, p, "dpkg --purge")
		}
	})
}
