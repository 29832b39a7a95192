package maintenance

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The reboot command starts in a session of its own (so that it outlives
// the agent it stops), and StartReboot does not wait for it.
func TestStartRebootDetached(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "sid")
	release := filepath.Join(dir, "release")
	done := make(chan error, 1)
	script := "while [ ! -e " + release + " ]; do sleep 0.02; done; cut -d' ' -f6 /proc/$$/stat > " + out
	if err := StartReboot([]string{"/bin/sh", "-c", script}, func(err error) { done <- err }); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("StartReboot waited, or the command ended early: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("reboot command: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the reboot command did not finish")
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	mySID, _ := unix.Getsid(0)
	if sid := strings.TrimSpace(string(b)); sid == "" || sid == strconv.Itoa(mySID) {
		t.Errorf("the reboot command ran in session %q, the agent's (%d)", sid, mySID)
	}
}

func TestCheckRebootCommand(t *testing.T) {
	for _, argv := range [][]string{nil, {}, {""}, {"/nonexistent/reboot-now"}, {"no-such-program-anywhere"}} {
		err := CheckRebootCommand(argv)
		if err == nil || !strings.Contains(err.Error(), "maintenance.reboot_command") {
			t.Errorf("CheckRebootCommand(%q) = %v; want an error naming the setting", argv, err)
		}
		if err := StartReboot(argv, nil); err == nil {
			t.Errorf("StartReboot(%q) started", argv)
		}
	}
	if err := CheckRebootCommand(DefaultRebootCommand[:1]); err != nil && !strings.Contains(err.Error(), "not found") {
		t.Errorf("CheckRebootCommand(systemctl) = %v", err)
	}
	if err := CheckRebootCommand([]string{"sh", "-c", "true"}); err != nil {
		t.Errorf("CheckRebootCommand(sh) = %v", err)
	}
}
