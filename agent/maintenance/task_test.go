package maintenance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/command"
)

func task(script string, timeout time.Duration) Task {
	return Task{Script: []byte(script), Timeout: timeout, CommandID: "cmd-1", NodeID: "node-1", NodeName: "gpu-17", CampaignID: "camp-9"}
}

// chunks collects what a task streams.
type chunks struct {
	mu  sync.Mutex
	all []Chunk
	// seen gets every chunk's data as it arrives.
	seen chan string
}

func newChunks() *chunks { return &chunks{seen: make(chan string, 1024)} }

func (c *chunks) add(ch Chunk) {
	c.mu.Lock()
	c.all = append(c.all, Chunk{Stream: ch.Stream, Data: bytes.Clone(ch.Data), Offset: ch.Offset, Seq: ch.Seq})
	c.mu.Unlock()
	select {
	case c.seen <- string(ch.Data):
	default:
	}
}

// stream reassembles one stream, failing on a chunk out of order.
func (c *chunks) stream(t *testing.T, s Stream) string {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	var b strings.Builder
	var next, seq uint64
	for _, ch := range c.all {
		if ch.Seq != seq+1 {
			t.Errorf("chunk seq %d after %d; want them counted from 1 across streams", ch.Seq, seq)
		}
		seq = ch.Seq
		if ch.Stream != s {
			continue
		}
		if ch.Offset < next {
			t.Errorf("%s chunk at offset %d overlaps what came before (up to %d)", s, ch.Offset, next)
		}
		if ch.Offset > next {
			fmt.Fprintf(&b, "[skipped %d]", ch.Offset-next)
		}
		b.Write(ch.Data)
		next = ch.Offset + uint64(len(ch.Data))
	}
	return b.String()
}

// gone reports whether pid no longer runs (a zombie counts as gone).
func gone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// pid (comm) S ...: the state follows the last ')'.
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && i+2 < len(b) && b[i+2] == 'Z'
}

func readPID(t *testing.T, path string) int {
	t.Helper()
	var pid int
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if err == nil && strings.HasSuffix(string(b), "\n") {
			if pid, err = strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				return pid
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no pid in %s: %q %v", path, b, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waitGone(t *testing.T, pid int, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !gone(pid) {
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("%s (pid %d) still runs after the task ended", what, pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A script that exits 0 succeeds; its output, exit code and byte counts
// are in the result, and it ran from a private directory that is gone
// afterwards.
func TestRunExitZero(t *testing.T) {
	tmp := t.TempDir()
	r := &Runner{TempDir: tmp}
	res, err := r.Run(t.Context(), task(`echo "hello from $(basename "$0")"
stat -c %a "$(dirname "$0")"
echo warning >&2
`, 10*time.Second), nil)
	if err != nil {
		t.Fatalf("Run = %v", err)
	}
	if res.ExitCode != 0 || res.TimedOut || res.Signal != "" || res.Stopped {
		t.Errorf("result %+v", res)
	}
	if got := string(res.Stdout.Tail); got != "hello from task.sh\n700\n" {
		t.Errorf("stdout %q; want the script's output, with its directory 0700", got)
	}
	if string(res.Stderr.Tail) != "warning\n" || res.Stderr.Total != 8 || res.Stderr.Truncated() {
		t.Errorf("stderr %+v", res.Stderr)
	}
	m := res.Map()
	if m["exit_code"] != "0" || m["stdout"] != "hello from task.sh\n700\n" || m["stderr"] != "warning\n" || m["stdout_bytes"] != "23" || m["stderr_bytes"] != "8" || m["duration"] == "" {
		t.Errorf("output map %v", m)
	}
	for _, k := range []string{"stdout_truncated", "stderr_truncated", "timed_out", "signal", "stopped"} {
		if _, ok := m[k]; ok {
			t.Errorf("output map has %s: %v", k, m)
		}
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("the task's directory was left behind: %v", left)
	}
}

// A non-zero exit fails the task with the exit code in the result.
func TestRunExitThree(t *testing.T) {
	res, err := (&Runner{}).Run(t.Context(), task("echo partial; echo 'disk not found' >&2; exit 3", 10*time.Second), nil)
	if err == nil || err.Error() != "the task exited with status 3" {
		t.Fatalf("Run = %v; want the exit status", err)
	}
	if res.ExitCode != 3 || res.Map()["exit_code"] != "3" || string(res.Stdout.Tail) != "partial\n" || string(res.Stderr.Tail) != "disk not found\n" {
		t.Errorf("result %+v", res)
	}
	// A shell killed by a signal has no exit status; the signal is named.
	res, err = (&Runner{}).Run(t.Context(), task("kill -KILL $$", 10*time.Second), nil)
	if err == nil || !strings.Contains(err.Error(), "SIGKILL") || res.ExitCode != -1 || res.Signal != "SIGKILL" || res.Map()["signal"] != "SIGKILL" {
		t.Errorf("killed shell: %+v, %v", res, err)
	}
}

// The task sees BUD_NODE_ID, BUD_NODE_NAME, BUD_CAMPAIGN_ID (and
// BUD_COMMAND_ID) and a minimal PATH, and nothing of the agent's own
// environment.
func TestRunEnvironment(t *testing.T) {
	t.Setenv("BUD_AGENT_SECRET", "leak")
	res, err := (&Runner{}).Run(t.Context(), task(`echo "id=$BUD_NODE_ID name=$BUD_NODE_NAME campaign=$BUD_CAMPAIGN_ID command=$BUD_COMMAND_ID"
echo "path=$PATH"
echo "secret=${BUD_AGENT_SECRET:-none} home=${HOME:-none} pwd=$(pwd)"
`, 10*time.Second), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := "id=node-1 name=gpu-17 campaign=camp-9 command=cmd-1\npath=" + Path + "\nsecret=none home=none pwd=/\n"
	if got := string(res.Stdout.Tail); got != want {
		t.Errorf("stdout\n%s\nwant\n%s", got, want)
	}
}

// Only the end of a long output is kept, and the result says so.
func TestRunOutputTruncationKeepsTail(t *testing.T) {
	res, err := (&Runner{OutputBytes: 1000}).Run(t.Context(), task(`i=0; while [ $i -lt 500 ]; do echo "line $i"; i=$((i+1)); done
echo short >&2`, 10*time.Second), nil)
	if err != nil {
		t.Fatal(err)
	}
	var full strings.Builder
	for i := range 500 {
		fmt.Fprintf(&full, "line %d\n", i)
	}
	want := full.String()[full.Len()-1000:]
	if string(res.Stdout.Tail) != want {
		t.Errorf("stdout tail = %q...; want the last 1000 bytes", res.Stdout.Tail[:40])
	}
	if !res.Stdout.Truncated() || res.Stdout.Total != uint64(full.Len()) {
		t.Errorf("stdout %d bytes of %d, truncated %v", len(res.Stdout.Tail), res.Stdout.Total, res.Stdout.Truncated())
	}
	m := res.Map()
	if m["stdout_truncated"] != "true" || m["stdout_bytes"] != strconv.Itoa(full.Len()) || !strings.HasSuffix(m["stdout"], "line 499\n") {
		t.Errorf("output map: truncated %q, bytes %q", m["stdout_truncated"], m["stdout_bytes"])
	}
	if _, ok := m["stderr_truncated"]; ok || m["stderr"] != "short\n" {
		t.Errorf("stderr in the map: %q truncated=%q", m["stderr"], m["stderr_truncated"])
	}
	// Bytes that are not UTF-8 reach the map as replacement characters.
	res, err = (&Runner{}).Run(t.Context(), task(`printf 'ok \377\376 end\n'`, 10*time.Second), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Map()["stdout"]; got != "ok \uFFFD end\n" {
		t.Errorf("invalid UTF-8 became %q", got)
	}
}

// On timeout the whole process group goes: the shell and a grandchild that
// both ignore SIGTERM die by SIGKILL after the grace, and the result says
// "timed out after".
func TestRunTimeoutKillsProcessGroup(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "grandchild.pid")
	script := fmt.Sprintf(`trap '' TERM
( sleep 300 & echo $! > %s; wait ) &
echo started
wait
`, pidFile)
	r := &Runner{KillGrace: 300 * time.Millisecond}
	start := time.Now()
	res, err := r.Run(t.Context(), task(script, 500*time.Millisecond), nil)
	took := time.Since(start)
	if err == nil || err.Error() != "timed out after 500ms; the task's processes were killed" {
		t.Fatalf("Run = %v; want timed out after 500ms", err)
	}
	if !res.TimedOut || res.ExitCode != -1 || res.Signal != "SIGKILL" || res.Map()["timed_out"] != "true" || string(res.Stdout.Tail) != "started\n" {
		t.Errorf("result %+v", res)
	}
	if took < 800*time.Millisecond || took > 5*time.Second {
		t.Errorf("Run took %s; want the 500ms timeout plus the 300ms grace", took)
	}
	waitGone(t, readPID(t, pidFile), "the grandchild sleep")
}

// What a task leaves running in its group when it exits is killed, and Run
// does not wait for it to close the output.
func TestRunKillsLeftovers(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "bg.pid")
	start := time.Now()
	res, err := (&Runner{}).Run(t.Context(), task(fmt.Sprintf("sleep 300 &\necho $! > %s\necho done\n", pidFile), 30*time.Second), nil)
	if err != nil || string(res.Stdout.Tail) != "done\n" {
		t.Fatalf("Run = %+v, %v", res, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Run took %s: it waited for the background sleep", d)
	}
	waitGone(t, readPID(t, pidFile), "the background sleep")
}

// A script over 256 KiB is refused with a clear error and nothing runs; an
// empty script or a bad timeout too.
func TestRunRefusesBadTasks(t *testing.T) {
	tmp := t.TempDir()
	marker := filepath.Join(tmp, "ran")
	big := "touch " + marker + "\n#" + strings.Repeat("x", command.MaxScriptBytes) + "\n"
	r := &Runner{TempDir: tmp}
	for name, tc := range map[string]struct {
		t    Task
		want string
	}{
		"too large":    {task(big, time.Minute), "the limit is 262144 (256 KiB); nothing was run"},
		"empty":        {task("", time.Minute), "empty"},
		"no timeout":   {task("touch "+marker, 0), "timeout"},
		"neg. timeout": {task("touch "+marker, -time.Second), "timeout"},
	} {
		called := false
		_, err := r.Run(t.Context(), tc.t, func(Chunk) { called = true })
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Run = %v; want an error with %q", name, err, tc.want)
		}
		if err := Check(tc.t); err == nil {
			t.Errorf("%s: Check accepted it", name)
		}
		if called {
			t.Errorf("%s: progress was called", name)
		}
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("a refused task left %v (ran, or wrote its script)", left)
	}
	// Exactly the limit is fine.
	ok := task("exit 0\n#"+strings.Repeat("x", command.MaxScriptBytes-len("exit 0\n#")), time.Minute)
	if _, err := r.Run(t.Context(), ok, nil); err != nil {
		t.Errorf("a script of exactly 256 KiB: %v", err)
	}
}

// Shutdown mid-task: the task's group is killed, the result says the agent
// stopped it, and what it wrote until then is kept.
func TestRunShutdownMidTask(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	got := newChunks()
	done := make(chan struct{})
	var res Result
	var err error
	go func() {
		defer close(done)
		res, err = (&Runner{KillGrace: 200 * time.Millisecond, FlushEvery: 50 * time.Millisecond}).Run(ctx,
			task(fmt.Sprintf("sleep 300 &\necho $! > %s\necho working\nwait\n", pidFile), time.Hour), got.add)
	}()
	select {
	case s := <-got.seen:
		if s != "working\n" {
			t.Fatalf("first chunk %q", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no output streamed while the task ran")
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if err == nil || !strings.Contains(err.Error(), "the agent is shutting down") {
		t.Errorf("Run = %v; want it stopped by the shutdown", err)
	}
	if !res.Stopped || res.TimedOut || string(res.Stdout.Tail) != "working\n" || res.Map()["stopped"] != "true" {
		t.Errorf("result %+v", res)
	}
	waitGone(t, readPID(t, pidFile), "the task's sleep")
}

// Output is streamed while the task runs, paced, in order, each chunk
// saying where it begins; every chunk is handed over before Run returns.
func TestRunStreamsProgress(t *testing.T) {
	got := newChunks()
	done := make(chan error, 1)
	release := filepath.Join(t.TempDir(), "release")
	go func() {
		_, err := (&Runner{FlushEvery: 50 * time.Millisecond}).Run(t.Context(), task(fmt.Sprintf(`echo one
echo err-one >&2
while [ ! -e %s ]; do sleep 0.02; done
echo two`, release), 30*time.Second), got.add)
		done <- err
	}()
	seen := ""
	for !strings.Contains(seen, "one\n") || !strings.Contains(seen, "err-one\n") {
		select {
		case s := <-got.seen:
			seen += s
		case <-time.After(10 * time.Second):
			t.Fatalf("streamed %q while running; want both streams' first lines", seen)
		}
	}
	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if out := got.stream(t, Stdout); out != "one\ntwo\n" {
		t.Errorf("stdout as streamed %q", out)
	}
	if out := got.stream(t, Stderr); out != "err-one\n" {
		t.Errorf("stderr as streamed %q", out)
	}
}

// A task that writes faster than the stream is paced gets chunks of at
// most ChunkBytes, a bounded number of them, with the skipped part shown
// by the offsets; the result's tail is whole.
func TestRunProgressBounded(t *testing.T) {
	got := newChunks()
	r := &Runner{ChunkBytes: 1024, FlushEvery: 50 * time.Millisecond, OutputBytes: 4096}
	// 1.2 MB over a second or so, in bursts of 20 kB.
	res, err := r.Run(t.Context(), task(`for i in $(seq 1 60); do head -c 20000 /dev/zero | tr '\0' 'x'; sleep 0.01; done; echo; echo end`, 30*time.Second), got.add)
	if err != nil {
		t.Fatal(err)
	}
	got.mu.Lock()
	n := len(got.all)
	var sent int
	for _, ch := range got.all {
		if len(ch.Data) > 1024 {
			t.Errorf("a chunk of %d bytes; the limit is 1024", len(ch.Data))
		}
		sent += len(ch.Data)
	}
	got.mu.Unlock()
	// Ten flushes a second at most, each at most a chunk per stream.
	if limit := int(res.Duration/minFlushGap) + 2; n > limit {
		t.Errorf("%d chunks in %s; want at most %d", n, res.Duration, limit)
	}
	if sent >= 1200000 {
		t.Errorf("all %d bytes were streamed; the stream should have skipped", sent)
	}
	s := got.stream(t, Stdout)
	if !strings.HasSuffix(s, "x\nend\n") {
		t.Errorf("the stream does not end with the output's end: ...%q", s[max(0, len(s)-20):])
	}
	if res.Stdout.Total != 1200005 || !strings.HasSuffix(string(res.Stdout.Tail), "xx\nend\n") || len(res.Stdout.Tail) != 4096 {
		t.Errorf("result stdout: %d bytes of %d", len(res.Stdout.Tail), res.Stdout.Total)
	}
}
