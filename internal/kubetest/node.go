package kubetest

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A real kubelet on the test machine. It writes outside the folders it is
// given (the CNI bridge, /run/netns, /var/log/containers, the kubepods
// cgroups), so one runs per machine at a time (LockKubelet) and each test
// cleans up after it explicitly (CleanupNode).

// The interface the kubelet's node IP sits on: the kubelet refuses a
// loopback address, and the machine's own must stay out of it.
const (
	nodeLink  = "budk0"
	nodeNetns = "budk-peer"
	// NodeIP is the address AddNodeLink gives this machine, the kubelet's
	// --node-ip.
	NodeIP = "10.213.77.1"
)

func mustRun(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// AddNodeLink makes a veth pair with NodeIP on this side and its peer in
// a network namespace of its own (this kernel has no dummy links), all
// removed when t ends.
func AddNodeLink(t testing.TB) {
	t.Helper()
	_ = exec.Command("ip", "netns", "del", nodeNetns).Run() // a previous run's
	_ = exec.Command("ip", "link", "del", nodeLink).Run()
	mustRun(t, "ip", "netns", "add", nodeNetns)
	t.Cleanup(func() {
		_ = exec.Command("ip", "link", "del", nodeLink).Run()
		_ = exec.Command("ip", "netns", "del", nodeNetns).Run()
	})
	mustRun(t, "ip", "link", "add", nodeLink, "type", "veth", "peer", "name", nodeLink+"p")
	mustRun(t, "ip", "link", "set", nodeLink+"p", "netns", nodeNetns)
	mustRun(t, "ip", "-n", nodeNetns, "link", "set", nodeLink+"p", "up")
	mustRun(t, "ip", "addr", "add", NodeIP+"/24", "dev", nodeLink)
	mustRun(t, "ip", "link", "set", nodeLink, "up")
}

// CleanupNode removes what a kubelet and containerd run under root left
// behind once they are stopped: processes still holding root (container
// shims, containers), mounts under root and the pods' network namespaces,
// the CNI bridge, the kubepods cgroups and the pods' log links.
func CleanupNode(t testing.TB, root string) {
	t.Helper()
	killUnder(t, root)
	for _, m := range mountsUnder(root, "/run/netns/cni-") {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			t.Logf("cleanup: umount %s: %v", m, err)
		}
	}
	if ents, err := filepath.Glob("/run/netns/cni-*"); err == nil {
		for _, e := range ents {
			_ = os.Remove(e)
		}
	}
	_ = exec.Command("ip", "link", "del", "cni0").Run()
	removeCgroups("/sys/fs/cgroup", "kubepods")
	if ents, err := filepath.Glob("/var/log/containers/*"); err == nil {
		for _, e := range ents {
			if dst, err := os.Readlink(e); err == nil && strings.HasPrefix(dst, root) {
				_ = os.Remove(e)
			}
		}
	}
}

// killUnder SIGKILLs every process whose command line or working
// directory names root (containerd's shims carry its socket path), and
// the processes in the cgroups the shims made.
func killUnder(t testing.TB, root string) {
	ents, _ := os.ReadDir("/proc")
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if strings.Contains(string(cmdline), root) {
			t.Logf("cleanup: kill %d %s", pid, strings.ReplaceAll(string(cmdline), "\x00", " "))
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	time.Sleep(200 * time.Millisecond)
}

// mountsUnder lists the mount points under any of the prefixes, deepest
// first.
func mountsUnder(prefixes ...string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := strings.ReplaceAll(fields[4], `\040`, " ")
		for _, p := range prefixes {
			if strings.HasPrefix(mp, p) {
				out = append(out, mp)
				break
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// removeCgroups removes the cgroup directories named name under each
// controller of base, deepest first, killing what is left in them.
func removeCgroups(base, name string) {
	ctrls, _ := os.ReadDir(base)
	for _, c := range ctrls {
		top := filepath.Join(base, c.Name(), name)
		if _, err := os.Stat(top); err != nil {
			continue
		}
		var dirs []string
		_ = filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			if b, err := os.ReadFile(filepath.Join(d, "cgroup.procs")); err == nil {
				for _, f := range strings.Fields(string(b)) {
					if pid, err := strconv.Atoi(f); err == nil {
						_ = syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			}
			_ = os.Remove(d)
		}
	}
}
