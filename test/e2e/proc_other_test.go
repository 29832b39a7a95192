//go:build !linux

package e2e

import "os/exec"

// setDeathSignal is a no-op where the kernel cannot tie a child's life to
// its parent; t.Cleanup still kills every daemon a test started.
func setDeathSignal(*exec.Cmd) {}
