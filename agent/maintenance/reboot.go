package maintenance

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
)

// DefaultRebootCommand is what maintenance.reboot runs unless the agent's
// configuration says otherwise (maintenance.reboot_command).
var DefaultRebootCommand = []string{"systemctl", "reboot"}

// CheckRebootCommand says why argv cannot be started, or nil: it names a
// program that exists and is executable.
func CheckRebootCommand(argv []string) error {
	if len(argv) == 0 || argv[0] == "" {
		return errors.New("no reboot command is configured (maintenance.reboot_command)")
	}
	if _, err := exec.LookPath(argv[0]); err != nil {
		return fmt.Errorf("reboot command %q: %w (check maintenance.reboot_command)", argv[0], err)
	}
	return nil
}

// StartReboot starts argv detached from the agent: in a session of its
// own, its output to the agent's stderr (the journal), so that it outlives
// the agent it stops. It does not wait for the reboot; done, when not nil,
// receives how the command exited, if the agent is still there to hear it.
func StartReboot(argv []string, done func(error)) error {
	if err := CheckRebootCommand(argv); err != nil {
		return err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the reboot command: %w", err)
	}
	go func() {
		err := cmd.Wait()
		if done != nil {
			done(err)
		}
	}()
	return nil
}
