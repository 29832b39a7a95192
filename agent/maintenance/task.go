// Package maintenance is the node side of maintenance campaigns: it runs the
// task script a campaign ships (command kind maintenance.task) and starts
// the reboot (maintenance.reboot).
//
// A task runs as "/bin/sh FILE" from a private temporary directory (0700,
// removed after), in a process group of its own, with a minimal environment,
// a timeout, and a bounded capture of its output that is also streamed
// while it runs. When its time is up, or the agent stops it, the whole group
// gets SIGTERM and then SIGKILL: children and grandchildren included. When
// the shell exits, whatever it left behind in its group is killed too; a
// task that must leave something running starts it outside the group
// (systemd-run, or a service unit).
package maintenance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bud-ecosystem/budfleet/command"
)

// Defaults of a Runner.
const (
	DefaultShell = "/bin/sh"
	// DefaultOutputBytes is how much of each stream's end a result keeps.
	DefaultOutputBytes = 64 << 10
	// DefaultFlushEvery and DefaultChunkBytes pace the streamed output: a
	// chunk at most every 500 ms per stream, sooner when 16 KiB wait.
	DefaultFlushEvery = 500 * time.Millisecond
	DefaultChunkBytes = 16 << 10
	// DefaultKillGrace is how long a stopped task's group has between
	// SIGTERM and SIGKILL.
	DefaultKillGrace = 5 * time.Second
	// Path is the PATH a task runs with.
	Path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// minFlushGap keeps chunks at most ten a second even when a task writes
// without pause; what it writes faster than that is skipped in the stream
// (the offsets show where), not in the result's tail.
const minFlushGap = 100 * time.Millisecond

// pipeDrain bounds the wait for a task's output after its group was
// killed: something that left the group (setsid) may hold the pipes open.
const pipeDrain = 2 * time.Second

// Task is one run of a maintenance script.
type Task struct {
	Script  []byte
	Timeout time.Duration
	// In the task's environment as BUD_COMMAND_ID, BUD_NODE_ID,
	// BUD_NODE_NAME and BUD_CAMPAIGN_ID (empty when unset).
	CommandID  string
	NodeID     string
	NodeName   string
	CampaignID string
}

// Stream names one of a task's outputs.
type Stream int

// The streams.
const (
	Stdout Stream = iota + 1
	Stderr
)

func (s Stream) String() string {
	if s == Stderr {
		return "stderr"
	}
	return "stdout"
}

// Chunk is a piece of a running task's output.
type Chunk struct {
	Stream Stream
	Data   []byte
	// Offset is where Data begins in its stream. A chunk that begins past
	// where the previous one ended follows skipped output.
	Offset uint64
	// Seq counts the task's chunks from 1, across both streams.
	Seq uint64
}

// Output is what a result keeps of one stream.
type Output struct {
	// Tail is the stream's last bytes (Runner.OutputBytes at most).
	Tail []byte
	// Total is how many bytes the task wrote.
	Total uint64
}

// Truncated reports whether Tail lacks the stream's beginning.
func (o Output) Truncated() bool { return o.Total > uint64(len(o.Tail)) }

// Result is how a task ended.
type Result struct {
	// ExitCode is the shell's exit status, -1 when a signal ended it.
	ExitCode int
	// Signal names the signal that ended the shell, if one did.
	Signal   string
	TimedOut bool
	// Stopped: the agent stopped the task (shutdown) before it ended.
	Stopped        bool
	Stdout, Stderr Output
	Duration       time.Duration
}

// Map is the result as command output: exit_code, stdout and stderr (the
// tails, as UTF-8), stdout_bytes and stderr_bytes, stdout_truncated and
// stderr_truncated when the tail lacks the beginning, signal, timed_out and
// stopped when they apply, and duration.
func (r Result) Map() map[string]string {
	m := map[string]string{
		"exit_code": strconv.Itoa(r.ExitCode),
		"duration":  r.Duration.Round(time.Millisecond).String(),
	}
	for _, o := range []struct {
		name string
		out  Output
	}{{"stdout", r.Stdout}, {"stderr", r.Stderr}} {
		m[o.name] = strings.ToValidUTF8(string(o.out.Tail), "\uFFFD")
		m[o.name+"_bytes"] = strconv.FormatUint(o.out.Total, 10)
		if o.out.Truncated() {
			m[o.name+"_truncated"] = "true"
		}
	}
	if r.Signal != "" {
		m["signal"] = r.Signal
	}
	if r.TimedOut {
		m["timed_out"] = "true"
	}
	if r.Stopped {
		m["stopped"] = "true"
	}
	return m
}

// Runner runs tasks. The zero value uses the defaults.
type Runner struct {
	// TempDir is where each task's private directory is made; "" is the
	// system's temporary directory.
	TempDir string
	// Shell runs the script (DefaultShell).
	Shell string
	// OutputBytes is how much of each stream's end is kept
	// (DefaultOutputBytes).
	OutputBytes int
	// FlushEvery and ChunkBytes pace Progress (DefaultFlushEvery,
	// DefaultChunkBytes).
	FlushEvery time.Duration
	ChunkBytes int
	// KillGrace is the wait between SIGTERM and SIGKILL (DefaultKillGrace).
	KillGrace time.Duration
}

func (r *Runner) defaults() Runner {
	c := *r
	if c.Shell == "" {
		c.Shell = DefaultShell
	}
	if c.OutputBytes <= 0 {
		c.OutputBytes = DefaultOutputBytes
	}
	if c.FlushEvery <= 0 {
		c.FlushEvery = DefaultFlushEvery
	}
	if c.ChunkBytes <= 0 {
		c.ChunkBytes = DefaultChunkBytes
	}
	if c.KillGrace <= 0 {
		c.KillGrace = DefaultKillGrace
	}
	return c
}

// Check says why t cannot run, or nil. Run checks it first.
func Check(t Task) error {
	switch {
	case len(t.Script) == 0:
		return errors.New("the task script is empty")
	case len(t.Script) > command.MaxScriptBytes:
		return fmt.Errorf("the task script is %d bytes; the limit is %d (256 KiB); nothing was run: fetch larger payloads from the script", len(t.Script), command.MaxScriptBytes)
	case t.Timeout <= 0:
		return fmt.Errorf("the task timeout %s is not positive", t.Timeout)
	}
	return nil
}

// Run runs t and returns how it ended. progress, when not nil, receives
// the output while the task runs, from one goroutine, every chunk before
// Run returns; it may block, and output meanwhile is skipped in the stream
// rather than holding up the task.
//
// The error is nil only when the script exited 0. It says why otherwise:
// a bad task (nothing run), a failure to start, a non-zero exit, the
// timeout ("timed out after 30m0s"), or ctx ending (the agent stopping).
func (r *Runner) Run(ctx context.Context, t Task, progress func(Chunk)) (Result, error) {
	var res Result
	if err := Check(t); err != nil {
		return res, err
	}
	cfg := r.defaults()
	dir, err := os.MkdirTemp(cfg.TempDir, "bud-task-")
	if err != nil {
		return res, fmt.Errorf("make the task's directory: %w", err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o700); err != nil {
		return res, fmt.Errorf("make the task's directory private: %w", err)
	}
	script := filepath.Join(dir, "task.sh")
	if err := os.WriteFile(script, t.Script, 0o700); err != nil {
		return res, fmt.Errorf("write the task script: %w", err)
	}

	stdout := newCapture(Stdout, cfg.OutputBytes, cfg.ChunkBytes)
	stderr := newCapture(Stderr, cfg.OutputBytes, cfg.ChunkBytes)
	outR, outW, err := os.Pipe()
	if err != nil {
		return res, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return res, err
	}
	cmd := exec.Command(cfg.Shell, script)
	cmd.Dir = "/"
	cmd.Env = []string{
		"PATH=" + Path,
		"BUD_COMMAND_ID=" + t.CommandID,
		"BUD_NODE_ID=" + t.NodeID,
		"BUD_NODE_NAME=" + t.NodeName,
		"BUD_CAMPAIGN_ID=" + t.CampaignID,
	}
	cmd.Stdout, cmd.Stderr = outW, errW // files: the child gets them directly
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	start := time.Now()
	err = cmd.Start()
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return res, fmt.Errorf("start the task: %w", err)
	}
	pgid := cmd.Process.Pid

	var readers sync.WaitGroup
	for _, p := range []struct {
		r *os.File
		c *capture
	}{{outR, stdout}, {errR, stderr}} {
		readers.Add(1)
		go func() {
			defer readers.Done()
			_, _ = io.Copy(p.c, p.r)
		}()
	}
	st := newStreamer(progress, cfg.FlushEvery, stdout, stderr)
	go st.loop()

	tctx, cancel := context.WithTimeout(ctx, t.Timeout)
	defer cancel()
	exited := make(chan struct{})
	var killed atomic.Bool // the timeout or ctx ended the task
	go func() {
		select {
		case <-tctx.Done():
		case <-exited:
			return
		}
		killed.Store(true)
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-time.After(cfg.KillGrace):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
		case <-exited:
		}
	}()
	waitErr := cmd.Wait()
	close(exited)
	res.Duration = time.Since(start)
	// Whatever the shell left in its group goes with it, so that nothing
	// of the task outlives it and its pipes close.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	drained := make(chan struct{})
	go func() { readers.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(pipeDrain):
		// Held open by a process that left the group: stop reading.
		outR.Close()
		errR.Close()
		<-drained
	}
	outR.Close()
	errR.Close()
	st.stop()

	res.Stdout, res.Stderr = stdout.output(), stderr.output()
	res.ExitCode = cmd.ProcessState.ExitCode()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		res.Signal = signalName(ws.Signal())
	}
	var exitErr *exec.ExitError
	if waitErr != nil && !errors.As(waitErr, &exitErr) {
		return res, fmt.Errorf("wait for the task: %w", waitErr)
	}
	switch {
	case killed.Load() && ctx.Err() != nil:
		res.Stopped = true
		return res, fmt.Errorf("stopped after %s: the agent is shutting down; the task's processes were killed", res.Duration.Round(time.Millisecond))
	case killed.Load():
		res.TimedOut = true
		return res, fmt.Errorf("timed out after %s; the task's processes were killed", t.Timeout)
	case res.Signal != "":
		return res, fmt.Errorf("the task was killed by %s", res.Signal)
	case res.ExitCode != 0:
		return res, fmt.Errorf("the task exited with status %d", res.ExitCode)
	}
	return res, nil
}

func signalName(s syscall.Signal) string {
	if name := unix.SignalName(s); name != "" {
		return name
	}
	return s.String()
}

// capture keeps a stream's tail for the result and what has not been
// streamed yet.
type capture struct {
	stream Stream
	max    int
	chunk  int

	mu    sync.Mutex
	tail  []byte // the last max bytes, in a buffer of up to 2*max
	total uint64
	// pending is what was written since the last chunk, at most chunk
	// bytes (the newest); pendingOff is where it begins in the stream.
	pending    []byte
	pendingOff uint64
	// full is signalled when pending reaches chunk bytes.
	full chan struct{}
}

func newCapture(s Stream, max, chunk int) *capture {
	return &capture{stream: s, max: max, chunk: chunk, full: make(chan struct{}, 1)}
}

func (c *capture) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tail = append(c.tail, p...)
	if len(c.tail) > 2*c.max {
		c.tail = append(c.tail[:0], c.tail[len(c.tail)-c.max:]...)
	}
	if len(c.pending) == 0 {
		c.pendingOff = c.total
	}
	c.total += uint64(len(p))
	c.pending = append(c.pending, p...)
	if over := len(c.pending) - c.chunk; over > 0 {
		c.pending = append(c.pending[:0], c.pending[over:]...)
		c.pendingOff += uint64(over)
	}
	if len(c.pending) >= c.chunk {
		select {
		case c.full <- struct{}{}:
		default:
		}
	}
	return len(p), nil
}

// take returns what waits to be streamed and where it begins.
func (c *capture) take() ([]byte, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.pending) == 0 {
		return nil, 0
	}
	data := c.pending
	c.pending = nil
	return data, c.pendingOff
}

func (c *capture) output() Output {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.tail
	if len(t) > c.max {
		t = t[len(t)-c.max:]
	}
	return Output{Tail: append([]byte(nil), t...), Total: c.total}
}

// streamer hands the captures' new output to progress, paced.
type streamer struct {
	progress func(Chunk)
	every    time.Duration
	caps     []*capture
	seq      uint64
	done     chan struct{}
	stopped  chan struct{}
}

func newStreamer(progress func(Chunk), every time.Duration, caps ...*capture) *streamer {
	return &streamer{progress: progress, every: every, caps: caps, done: make(chan struct{}), stopped: make(chan struct{})}
}

func (s *streamer) loop() {
	defer close(s.stopped)
	t := time.NewTimer(s.every)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-s.done:
			s.flush()
			return
		case <-t.C:
		case <-s.caps[0].full:
		case <-s.caps[1].full:
		}
		if gap := minFlushGap - time.Since(last); gap > 0 {
			select {
			case <-s.done:
				s.flush()
				return
			case <-time.After(gap):
			}
		}
		s.flush()
		last = time.Now()
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(s.every)
	}
}

func (s *streamer) flush() {
	for _, c := range s.caps {
		data, off := c.take()
		if len(data) == 0 || s.progress == nil {
			continue
		}
		s.seq++
		s.progress(Chunk{Stream: c.stream, Data: data, Offset: off, Seq: s.seq})
	}
}

// stop sends what is left and waits for the last chunk to be handed over.
func (s *streamer) stop() {
	close(s.done)
	<-s.stopped
}
