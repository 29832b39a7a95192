package controller

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/controller/store"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
	hostv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/host/v1"
)

// syncBuffer is a log sink several goroutines may write.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func progressMsg(id string, stream agentv1.OutputStream, offset uint64, data string) *agentv1.ConnectRequest {
	return &agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_CommandProgress{CommandProgress: &agentv1.CommandProgress{
		CommandId: id, Stream: stream, Offset: offset, Data: []byte(data),
	}}}
}

const (
	stdout = agentv1.OutputStream_OUTPUT_STREAM_STDOUT
	stderr = agentv1.OutputStream_OUTPUT_STREAM_STDERR
)

func enqueueTask(t *testing.T, e *testEnv, id, node string) {
	t.Helper()
	if err := e.store.EnqueueCommand(t.Context(), store.Command{ID: id, NodeID: node, Kind: "maintenance.task", State: store.CommandDelivered, CreatedAt: base}); err != nil {
		t.Fatal(err)
	}
}

// tailOf returns a command's stored tail, nil when it has none.
func tailOf(t *testing.T, e *testEnv, id string) *store.OutputTail {
	t.Helper()
	c, err := e.store.GetCommand(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	return c.OutputTail
}

// What a running command streams is kept on the command, in order, per
// stream, with the byte counts and when it was last updated; the operator
// API shows it as UTF-8, and a chunk the agent had to skip leaves a mark.
func TestProgressTailKept(t *testing.T) {
	e := newTestServer(t)
	addNode(t, e, "n1")
	enqueueTask(t, e, "c1", "n1")
	stream, wait := connect(t, e, "n1")
	stream.in <- hello("n1")
	stream.next(t, "welcome")
	for _, m := range []*agentv1.ConnectRequest{
		progressMsg("c1", stdout, 0, "line 1\n"),
		progressMsg("c1", stderr, 0, "warn\n"),
		progressMsg("c1", stdout, 7, "line 2\n"),
		progressMsg("c1", stdout, 7, "line 2\n"),       // had already: dropped
		progressMsg("c1", stdout, 10, "e 2\nline 3\n"), // overlaps: the new part is kept
		progressMsg("c1", stdout, 1000, "\xffline 900\n"),
	} {
		stream.in <- m
	}
	want := "line 1\nline 2\nline 3\n[... 979 bytes not received ...]\n\xffline 900\n"
	eventually(t, "the tail stored", func() bool {
		tl := tailOf(t, e, "c1")
		return tl != nil && string(tl.Stdout) == want && tl.StdoutBytes == 1010
	})
	tl := tailOf(t, e, "c1")
	if string(tl.Stderr) != "warn\n" || tl.StderrBytes != 5 || !tl.UpdatedAt.Equal(base) {
		t.Errorf("stored tail %+v", tl)
	}
	resp, err := e.srv.FleetAPI().GetCommand(t.Context(), &fleetv1.GetCommandRequest{Id: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	pt := resp.GetCommand().GetOutputTail()
	if pt.GetStdout() != strings.ToValidUTF8(want, "\uFFFD") || pt.GetStderr() != "warn\n" || pt.GetStdoutBytes() != 1010 || pt.GetUpdatedAt() == nil {
		t.Errorf("API tail %v", pt)
	}

	// The result comes after the last chunks: they are stored beside it.
	stream.in <- progressMsg("c1", stdout, 1010, "done\n")
	stream.in <- &agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_CommandResult{CommandResult: &agentv1.CommandResult{CommandId: "c1", Success: true, Output: map[string]string{"exit_code": "0"}}}}
	eventually(t, "the result", func() bool {
		c, err := e.store.GetCommand(t.Context(), "c1")
		return err == nil && c.State == store.CommandSucceeded
	})
	// Whole the moment the result is stored, not a flush later.
	if tl := tailOf(t, e, "c1"); tl == nil || !strings.HasSuffix(string(tl.Stdout), "line 900\ndone\n") {
		t.Errorf("tail with the result = %+v", tl)
	}
	close(stream.in)
	if err := wait(); err != nil {
		t.Errorf("Connect = %v", err)
	}
	// Commands that stream nothing have no tail.
	addNode(t, e, "n2")
	enqueueTask(t, e, "quiet", "n2")
	if resp, _ := e.srv.FleetAPI().GetCommand(t.Context(), &fleetv1.GetCommandRequest{Id: "quiet"}); resp.GetCommand().GetOutputTail() != nil {
		t.Errorf("a command that streamed nothing shows a tail: %v", resp.GetCommand().GetOutputTail())
	}
}

// However much a command streams, the controller keeps the last 64 KiB of
// each stream and counts the rest.
func TestProgressTailBounded(t *testing.T) {
	e := newTestServer(t)
	addNode(t, e, "n1")
	enqueueTask(t, e, "c1", "n1")
	stream, wait := connect(t, e, "n1")
	stream.in <- hello("n1")
	stream.next(t, "welcome")
	var all strings.Builder
	for i := range 200 {
		chunk := fmt.Sprintf("%04d:%s\n", i, strings.Repeat("x", 1018)) // 1 KiB
		stream.in <- progressMsg("c1", stdout, uint64(all.Len()), chunk)
		all.WriteString(chunk)
	}
	// One chunk larger than the whole tail.
	big := strings.Repeat("y", 100<<10)
	stream.in <- progressMsg("c1", stderr, 0, big)
	eventually(t, "the bounded tail stored", func() bool {
		tl := tailOf(t, e, "c1")
		return tl != nil && tl.StdoutBytes == uint64(all.Len()) && tl.StderrBytes == 100<<10
	})
	tl := tailOf(t, e, "c1")
	if len(tl.Stdout) != progressTailBytes || string(tl.Stdout) != all.String()[all.Len()-progressTailBytes:] {
		t.Errorf("stdout tail %d bytes, want the last %d", len(tl.Stdout), progressTailBytes)
	}
	if len(tl.Stderr) != progressTailBytes {
		t.Errorf("stderr tail %d bytes, want %d", len(tl.Stderr), progressTailBytes)
	}
	close(stream.in)
	_ = wait()
}

// Progress for a command the controller does not know is dropped with one
// log line; progress for another node's command is refused and logged,
// and that command is not touched. Neither ends the session.
func TestProgressUnknownAndForeignCommands(t *testing.T) {
	e := newTestServer(t)
	var log syncBuffer
	e.srv.log = slog.New(slog.NewTextHandler(&log, nil))
	addNode(t, e, "n1")
	addNode(t, e, "n2")
	enqueueTask(t, e, "theirs", "n2")
	enqueueTask(t, e, "mine", "n1")
	stream, wait := connect(t, e, "n1")
	stream.in <- hello("n1")
	stream.next(t, "welcome")
	for i := range 3 {
		stream.in <- progressMsg("nope", stdout, uint64(i), "x")
		stream.in <- progressMsg("theirs", stdout, uint64(i), "x")
	}
	stream.in <- progressMsg("", stdout, 0, "x")
	stream.in <- progressMsg("mine", agentv1.OutputStream_OUTPUT_STREAM_UNSPECIFIED, 0, "x")
	stream.in <- progressMsg("mine", stdout, 0, "ok\n")
	eventually(t, "the node's own command's tail", func() bool {
		tl := tailOf(t, e, "mine")
		return tl != nil && string(tl.Stdout) == "ok\n"
	})
	if tl := tailOf(t, e, "theirs"); tl != nil {
		t.Errorf("another node's command got a tail: %+v", tl)
	}
	l := log.String()
	if n := strings.Count(l, "ignoring progress for an unknown command"); n != 1 || !strings.Contains(l, "command_id=nope") {
		t.Errorf("logged the unknown command %d times, want once:\n%s", n, l)
	}
	if n := strings.Count(l, "refusing progress for another node's command"); n != 1 || !strings.Contains(l, "command_id=theirs") {
		t.Errorf("logged the foreign command %d times, want once:\n%s", n, l)
	}
	if n := strings.Count(l, "without a command id or a known stream"); n != 2 {
		t.Errorf("logged %d malformed chunks, want 2:\n%s", n, l)
	}
	if _, connected := e.srv.nodeLiveness("n1"); !connected {
		t.Error("the session ended")
	}
	close(stream.in)
	if err := wait(); err != nil {
		t.Errorf("Connect = %v", err)
	}
}

// Chunks still unwritten when the session ends are written then; a new
// session (a controller restart, a reconnect) continues the stored tail.
func TestProgressAcrossSessions(t *testing.T) {
	e := newTestServer(t)
	addNode(t, e, "n1")
	enqueueTask(t, e, "c1", "n1")
	stream, wait := connect(t, e, "n1")
	stream.in <- hello("n1")
	stream.next(t, "welcome")
	stream.in <- progressMsg("c1", stdout, 0, "before\n")
	close(stream.in)
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	// Written as the session ends, not a flush interval later.
	eventually(t, "the tail written at the session's end", func() bool {
		tl := tailOf(t, e, "c1")
		return tl != nil && string(tl.Stdout) == "before\n"
	})
	stream, wait = connect(t, e, "n1")
	stream.in <- hello("n1")
	stream.next(t, "welcome")
	stream.in <- progressMsg("c1", stdout, 7, "after\n")
	close(stream.in)
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the second session's tail", func() bool {
		tl := tailOf(t, e, "c1")
		return tl != nil && string(tl.Stdout) == "before\nafter\n" && tl.StdoutBytes == 13
	})
	// A command that had its result before anything streamed keeps none.
	if _, err := e.store.UpdateCommand(t.Context(), "c1", func(c *store.Command) error { c.State = store.CommandFailed; c.OutputTail = nil; return nil }); err != nil {
		t.Fatal(err)
	}
	stream, wait = connect(t, e, "n1")
	stream.in <- hello("n1")
	stream.next(t, "welcome")
	stream.in <- progressMsg("c1", stdout, 13, "late\n")
	close(stream.in)
	_ = wait()
	// Checking that nothing happens: past a flush interval, a tail would
	// have been written by now.
	time.Sleep(progressFlushEvery + 100*time.Millisecond)
	if tl := tailOf(t, e, "c1"); tl != nil {
		t.Errorf("a finished command got a tail: %+v", tl)
	}
}

func TestAppendStream(t *testing.T) {
	for _, tc := range []struct {
		name        string
		tail        string
		end, offset uint64
		data        string
		max         int
		want        string
		wantEnd     uint64
	}{
		{"first", "", 0, 0, "abc", 10, "abc", 3},
		{"next", "abc", 3, 3, "de", 10, "abcde", 5},
		{"duplicate", "abc", 3, 0, "abc", 10, "abc", 3},
		{"overlap", "abc", 3, 2, "cde", 10, "abcde", 5},
		{"gap after a line", "a\n", 2, 5, "z", 100, "a\n[... 3 bytes not received ...]\nz", 6},
		{"gap mid-line", "a", 1, 5, "z", 100, "a\n[... 4 bytes not received ...]\nz", 6},
		{"trimmed", "abcdef", 6, 6, "ghij", 5, "fghij", 10},
		{"chunk over max", "", 0, 0, "0123456789", 4, "6789", 10},
	} {
		got, end := appendStream([]byte(tc.tail), tc.end, tc.offset, []byte(tc.data), tc.max)
		if string(got) != tc.want || end != tc.wantEnd {
			t.Errorf("%s: appendStream = %q, %d; want %q, %d", tc.name, got, end, tc.want, tc.wantEnd)
		}
	}
}

// The boot id a hello reports is stored on the node, and so is the one in
// an inventory; a malformed one is not. The operator API shows it.
func TestBootIDFromHelloAndInventory(t *testing.T) {
	e := newTestServer(t)
	addNode(t, e, "n1")
	bootID := func() string {
		n, err := e.store.GetNode(t.Context(), "n1")
		if err != nil {
			t.Fatal(err)
		}
		return n.BootID
	}
	session := func(bootID string, msgs ...*agentv1.ConnectRequest) {
		t.Helper()
		stream, wait := connect(t, e, "n1")
		stream.in <- &agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{NodeId: "n1", AgentVersion: "test", BootId: bootID}}}
		stream.next(t, "welcome")
		for _, m := range msgs {
			stream.in <- m
		}
		close(stream.in)
		if err := wait(); err != nil {
			t.Fatalf("Connect = %v", err)
		}
	}
	const b1, b2, b3 = "8d3e1c9a-5f0b-4a61-9c2e-6b7d0f4e2a11", "0f0e0d0c-0b0a-4909-8807-060504030201", "11111111-2222-4333-8444-555555555555"
	session(b1)
	if got := bootID(); got != b1 {
		t.Fatalf("boot id after the hello = %q, want %q", got, b1)
	}
	session("", &agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Inventory{Inventory: &hostv1.Inventory{Hostname: "h-n1", BootId: b2}}})
	if got := bootID(); got != b2 {
		t.Errorf("boot id after the inventory = %q, want %q", got, b2)
	}
	n, err := e.store.GetNode(t.Context(), "n1")
	if err != nil || n.Inventory.GetBootId() != b2 {
		t.Errorf("inventory kept boot id %q, %v", n.Inventory.GetBootId(), err)
	}
	session("not a boot id!\x1b", &agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Inventory{Inventory: &hostv1.Inventory{Hostname: "h-n1", BootId: strings.Repeat("a", 65)}}})
	if got := bootID(); got != b2 {
		t.Errorf("malformed boot ids changed it to %q", got)
	}
	if n, _ := e.store.GetNode(t.Context(), "n1"); n.Inventory.GetBootId() != "" {
		t.Errorf("a malformed boot id was kept in the inventory: %q", n.Inventory.GetBootId())
	}
	session(b3)
	resp, err := e.srv.FleetAPI().GetNode(context.Background(), &fleetv1.GetNodeRequest{Id: "n1"})
	if err != nil || resp.GetNode().GetBootId() != b3 {
		t.Errorf("GetNode boot id = %q, %v; want %q", resp.GetNode().GetBootId(), err, b3)
	}
}

// Streaming costs no goroutine per session: once what a session streamed
// is written no flush timer waits, and the session's state goes with it.
func TestProgressHoldsNoGoroutine(t *testing.T) {
	e := newTestServer(t)
	addNode(t, e, "n1")
	enqueueTask(t, e, "c1", "n1")
	stream, wait := connect(t, e, "n1")
	stream.in <- hello("n1")
	stream.next(t, "welcome")
	for i := range 50 {
		stream.in <- progressMsg("c1", stdout, uint64(i), "x")
	}
	eventually(t, "all 50 bytes stored", func() bool {
		tl := tailOf(t, e, "c1")
		return tl != nil && tl.StdoutBytes == 50
	})
	e.srv.progress.mu.Lock()
	st := e.srv.progress.sessions[e.srv.sessionOf("n1")]
	e.srv.progress.mu.Unlock()
	// Checking that nothing happens: a full flush interval after the last
	// write, a timer re-armed with nothing to write would still be set.
	time.Sleep(progressFlushEvery + 100*time.Millisecond)
	st.mu.Lock()
	pending := st.timer != nil
	st.mu.Unlock()
	if pending {
		t.Error("a flush timer is still pending with nothing to write")
	}
	close(stream.in)
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the session's state dropped", func() bool {
		e.srv.progress.mu.Lock()
		defer e.srv.progress.mu.Unlock()
		return len(e.srv.progress.sessions) == 0
	})
}
