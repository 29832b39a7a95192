package e2e

import (
	"os/exec"
	"syscall"
)

// setDeathSignal makes the kernel kill cmd when the test binary dies, so a
// test that times out or panics leaves no daemons behind.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
