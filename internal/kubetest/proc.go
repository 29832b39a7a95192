package kubetest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// process is one component (etcd, kube-apiserver, ...) run as a child
// process, its stdout and stderr in LogFile.
type process struct {
	name    string
	logFile string
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has been reaped
	err     error         // cmd.Wait's error, set before done is closed
}

// startProcess starts bin with args, stdout and stderr to DIR/logs/NAME.log.
// The process gets its own process group and SIGKILL when this test
// process dies (Pdeathsig), so a test binary that is killed, or that panics
// on -timeout before its Cleanup runs, leaves nothing behind.
func startProcess(dir, name, bin string, args []string) (*process, error) {
	logFile := filepath.Join(dir, "logs", name+".log")
	if err := os.MkdirAll(filepath.Dir(logFile), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the child has its own copy
	fmt.Fprintf(f, "# %s %q\n", bin, args)
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, logFile: logFile, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has ended, and how.
func (p *process) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// kill sends SIGKILL to the process's group and reaps it.
func (p *process) kill() error {
	pid := p.cmd.Process.Pid
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill %s (pid %d): %w", p.name, pid, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(30 * time.Second):
		return fmt.Errorf("%s (pid %d) not reaped 30 s after SIGKILL", p.name, pid)
	}
}

// logTail returns the last max bytes of the process's log.
func (p *process) logTail(max int64) string {
	f, err := os.Open(p.logFile)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err.Error()
	}
	var prefix string
	if st.Size() > max {
		if _, err := f.Seek(st.Size()-max, io.SeekStart); err != nil {
			return err.Error()
		}
		prefix = fmt.Sprintf("[... first %d bytes of %s left out]\n", st.Size()-max, p.logFile)
	}
	var b bytes.Buffer
	_, _ = io.Copy(&b, f)
	return prefix + b.String()
}
