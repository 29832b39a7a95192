package kubelet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"
)

// supervisor runs the node's containerd and kubelet as children of the
// agent where PID 1 is not systemd: each is restarted when it exits (after
// a wait that grows to restartMax), its output appended to a log file,
// and stopped (SIGTERM to its process group, SIGKILL after stopGrace)
// when the agent stops. A child also gets SIGTERM if the agent dies
// without stopping it (Pdeathsig).
type supervisor struct {
	log *slog.Logger

	mu      sync.Mutex
	ctx     context.Context // the agent's; nil until start
	running map[string]*child
	// stopped is closed once every child is stopped after ctx ended.
	stopped chan struct{}
	// path is the children's PATH: the join's own bin directories first,
	// so containerd finds the shim and runc installed beside it.
	path string
}

const (
	restartMin = time.Second
	restartMax = 30 * time.Second
	stopGrace  = 10 * time.Second
)

// child is one supervised program.
type child struct {
	name    string
	argv    []string
	logFile string
	stop    context.CancelFunc
	done    chan struct{}

	mu       sync.Mutex
	pid      int
	starts   int
	lastExit string
}

func newSupervisor(log *slog.Logger) *supervisor {
	return &supervisor{log: log, running: map[string]*child{}, stopped: make(chan struct{})}
}

// start ties the supervisor to the agent's lifetime: when ctx ends every
// child is stopped.
func (s *supervisor) start(ctx context.Context) {
	s.mu.Lock()
	s.ctx = ctx
	s.mu.Unlock()
	context.AfterFunc(ctx, func() {
		s.stopAll()
		close(s.stopped)
	})
}

// wait returns once the children are stopped after the agent's context
// ended; at once when start was never called.
func (s *supervisor) wait() {
	s.mu.Lock()
	started := s.ctx != nil
	s.mu.Unlock()
	if started {
		<-s.stopped
	}
}

// ensure makes name run argv (logging to logFile): started when it is not
// running, restarted when it runs with other arguments, left alone when it
// runs as asked. It reports whether it (re)started it.
func (s *supervisor) ensure(name string, argv []string, logFile string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctx == nil || s.ctx.Err() != nil {
		return false, errors.New("the agent is not running (or stopping): the kubelet module supervises nothing outside Agent.Run")
	}
	if c := s.running[name]; c != nil {
		if slices.Equal(c.argv, argv) {
			return false, nil
		}
		c.stop()
		<-c.done
		delete(s.running, name)
	}
	if err := os.MkdirAll(filepath.Dir(logFile), 0o755); err != nil {
		return false, err
	}
	ctx, cancel := context.WithCancel(s.ctx)
	c := &child{name: name, argv: argv, logFile: logFile, stop: cancel, done: make(chan struct{})}
	s.running[name] = c
	go s.loop(ctx, c)
	return true, nil
}

// stopName stops one child and waits for it.
func (s *supervisor) stopName(name string) {
	s.mu.Lock()
	c := s.running[name]
	delete(s.running, name)
	s.mu.Unlock()
	if c != nil {
		c.stop()
		<-c.done
	}
}

// stopAll stops every child (the kubelet before containerd: it was
// started after it) and waits for them.
func (s *supervisor) stopAll() {
	s.stopName("kubelet")
	s.mu.Lock()
	var rest []*child
	for name, c := range s.running {
		rest = append(rest, c)
		delete(s.running, name)
	}
	s.mu.Unlock()
	for _, c := range rest {
		c.stop()
		<-c.done
	}
}

// status says whether name runs, and its last exit.
func (s *supervisor) status(name string) (running bool, pid, starts int, lastExit string) {
	s.mu.Lock()
	c := s.running[name]
	s.mu.Unlock()
	if c == nil {
		return false, 0, 0, ""
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pid != 0, c.pid, c.starts, c.lastExit
}

func (s *supervisor) loop(ctx context.Context, c *child) {
	defer close(c.done)
	wait := restartMin
	for {
		began := time.Now()
		err := s.runOnce(ctx, c)
		if ctx.Err() != nil {
			return
		}
		c.mu.Lock()
		c.lastExit = fmt.Sprintf("%v at %s", err, time.Now().UTC().Format(time.RFC3339))
		c.mu.Unlock()
		if time.Since(began) > restartMax {
			wait = restartMin // it ran a while: not a crash loop
		}
		s.log.Warn("supervised program exited; restarting", "program", c.name, "error", err, "restart_in", wait, "log", c.logFile)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, restartMax)
	}
}

// runOnce runs the child until it exits or ctx ends (then it is stopped).
func (s *supervisor) runOnce(ctx context.Context, c *child) error {
	f, err := os.OpenFile(c.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	defer f.Close()
	fmt.Fprintf(f, "# %s bud-agent starts %q\n", time.Now().UTC().Format(time.RFC3339), c.argv)
	cmd := exec.Command(c.argv[0], c.argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Dir = "/"
	if s.path != "" {
		cmd.Env = append(os.Environ(), "PATH="+s.path)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return err
	}
	pid := cmd.Process.Pid
	c.mu.Lock()
	c.pid = pid
	c.starts++
	c.mu.Unlock()
	s.log.Info("supervised program started", "program", c.name, "pid", pid, "log", c.logFile)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		c.mu.Lock()
		c.pid = 0
		c.mu.Unlock()
	}()
	select {
	case err := <-exited:
		return err
	case <-ctx.Done():
	}
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case err := <-exited:
		s.log.Info("supervised program stopped", "program", c.name, "pid", pid)
		return err
	case <-time.After(stopGrace):
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	return <-exited
}
