package kubetest

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// KubeletLockFile is the machine-wide lock LockKubelet takes.
var KubeletLockFile = filepath.Join(os.TempDir(), "budfleet-real-kubelet.lock")

// LockKubelet makes t the only test on this machine that runs a real
// kubelet, until t ends: a kubelet writes outside the folders it is given
// (its port 10250, the CNI bridge, /run/netns, /var/log/containers, the
// kubepods cgroups), so two at once, from two packages' test binaries or
// two checkouts, would trip over each other. It waits for the lock (an
// flock, so a killed test releases it) up to wait, then fails t.
func LockKubelet(t testing.TB, wait time.Duration) {
	t.Helper()
	f, err := os.OpenFile(KubeletLockFile, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		t.Fatalf("kubetest: kubelet lock: %v", err)
	}
	deadline := time.Now().Add(wait)
	logged := false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if err != syscall.EWOULDBLOCK {
			f.Close()
			t.Fatalf("kubetest: kubelet lock %s: %v", KubeletLockFile, err)
		}
		if time.Now().After(deadline) {
			f.Close()
			t.Fatalf("kubetest: another test has run a real kubelet for over %s (lock %s held)", wait, KubeletLockFile)
		}
		if !logged {
			t.Logf("kubetest: waiting for another test's kubelet to finish (lock %s)", KubeletLockFile)
			logged = true
		}
		time.Sleep(250 * time.Millisecond)
	}
	_ = f.Truncate(0)
	fmt.Fprintf(f, "pid %d: %s\n", os.Getpid(), t.Name())
	t.Cleanup(func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	})
}
