package agent

// maintenance.task and maintenance.reboot over the fake transport: what the
// controller sees on the stream, and that neither runs twice.

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bud-ecosystem/budfleet/agent/maintenance"
	"github.com/bud-ecosystem/budfleet/agent/transport"
	"github.com/bud-ecosystem/budfleet/command"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	hostv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/host/v1"
)

// bootInventory is a fakeInventory that knows a boot id.
type bootInventory struct {
	fakeInventory
	bootID string
}

func (b *bootInventory) BootID() string { return b.bootID }

// identityIn writes node-1's identity (a certificate that parses) into a
// state dir and returns the dir, for tests that restart the agent.
func identityIn(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "state")
	src, _ := identityState(t, time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour))
	id, err := src.Identity()
	if err != nil {
		t.Fatal(err)
	}
	st := openState(t, dir)
	defer st.Close()
	if err := st.SaveIdentity(id); err != nil {
		t.Fatal(err)
	}
	return dir
}

func deliver(t *testing.T, peer *transport.Peer, c *agentv1.Command) {
	t.Helper()
	if err := peer.Send(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Command{Command: c}}); err != nil {
		t.Fatal(err)
	}
}

func lines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(b))
}

func taskCommand(id, script string, extra map[string]string) *agentv1.Command {
	p := command.MaintenanceTaskParams{Script: []byte(script), Timeout: 30 * time.Second, CampaignID: "camp-7"}.Params()
	for k, v := range extra {
		p[k] = v
	}
	return cmd(id, command.MaintenanceTask, p)
}

// A maintenance.task streams its output to the controller while it runs,
// every chunk before the result; the result has the exit code and the
// output's tail, and fails on a non-zero exit. The script sees its node,
// name and campaign. Delivered again (same session, after a reconnect,
// after a restart), it is not run again: the stored result is reported.
func TestSessionMaintenanceTask(t *testing.T) {
	dir := identityIn(t)
	work := t.TempDir()
	runs, release := filepath.Join(work, "runs"), filepath.Join(work, "release")
	script := fmt.Sprintf(`echo run >> %s
echo "node=$BUD_NODE_ID name=$BUD_NODE_NAME campaign=$BUD_CAMPAIGN_ID"
echo working >&2
while [ ! -e %s ]; do sleep 0.02; done
echo finished
exit 3
`, runs, release)
	st := openState(t, dir)
	opts := Options{State: st, Hostname: "gpu-17", Maintenance: &maintenance.Runner{FlushEvery: 20 * time.Millisecond}}
	r := runAgent(t, opts)
	peer := r.session(time.Second, time.Hour)
	deliver(t, peer, taskCommand("t1", script, nil))

	// Streamed while the script still waits.
	var streamed [3]strings.Builder
	var seq uint64
	for !strings.Contains(streamed[agentv1.OutputStream_OUTPUT_STREAM_STDOUT].String(), "campaign=camp-7\n") ||
		!strings.Contains(streamed[agentv1.OutputStream_OUTPUT_STREAM_STDERR].String(), "working\n") {
		m := r.next(peer, "progress", func(m *agentv1.ConnectRequest) bool { return m.GetCommandProgress() != nil || isResult(m) })
		if isResult(m) {
			t.Fatalf("a result before the script finished: %v", m)
		}
		p := m.GetCommandProgress()
		if p.GetCommandId() != "t1" || p.GetSeq() != seq+1 || p.GetOffset() != uint64(streamed[p.GetStream()].Len()) {
			t.Fatalf("progress %v after seq %d; want t1's next chunk, in order", p, seq)
		}
		seq = p.GetSeq()
		streamed[p.GetStream()].Write(p.GetData())
	}
	if got := streamed[agentv1.OutputStream_OUTPUT_STREAM_STDOUT].String(); got != "node=node-1 name=gpu-17 campaign=camp-7\n" {
		t.Errorf("streamed stdout %q", got)
	}
	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var res *agentv1.CommandResult
	for res == nil {
		m := r.next(peer, "the rest and the result", func(m *agentv1.ConnectRequest) bool { return m.GetCommandProgress() != nil || isResult(m) })
		if p := m.GetCommandProgress(); p != nil {
			streamed[p.GetStream()].Write(p.GetData())
			continue
		}
		res = m.GetCommandResult()
	}
	if got := streamed[agentv1.OutputStream_OUTPUT_STREAM_STDOUT].String(); !strings.HasSuffix(got, "finished\n") {
		t.Errorf("the stream ended %q; want every chunk before the result", got)
	}
	out := res.GetOutput()
	if res.GetCommandId() != "t1" || res.GetSuccess() || res.GetMessage() != "the task exited with status 3" || out["exit_code"] != "3" ||
		out["stdout"] != "node=node-1 name=gpu-17 campaign=camp-7\nfinished\n" || out["stderr"] != "working\n" {
		t.Fatalf("result %v", res)
	}

	// Again on the same session, then after a reconnect: the stored result.
	deliver(t, peer, taskCommand("t1", script, nil))
	if again := r.next(peer, "the stored result", isResult).GetCommandResult(); again.GetDeliveries() != 2 || again.GetOutput()["exit_code"] != "3" {
		t.Errorf("redelivery: %v", again)
	}
	peer.End(status.Error(codes.Unavailable, "gone"))
	peer = r.session(time.Second, time.Hour)
	deliver(t, peer, taskCommand("t1", script, nil))
	if again := r.next(peer, "the stored result", isResult).GetCommandResult(); again.GetDeliveries() != 3 || again.GetSuccess() {
		t.Errorf("after a reconnect: %v", again)
	}
	// And after a restart.
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	st.Close()
	st = openState(t, dir)
	defer st.Close()
	r = runAgent(t, Options{State: st, Hostname: "gpu-17"})
	peer = r.session(time.Second, time.Hour)
	deliver(t, peer, taskCommand("t1", script, nil))
	if again := r.next(peer, "the stored result", isResult).GetCommandResult(); again.GetDeliveries() != 4 || again.GetOutput()["exit_code"] != "3" {
		t.Errorf("after a restart: %v", again)
	}
	for _, m := range r.collect(peer, 200*time.Millisecond) {
		if m.GetCommandProgress() != nil {
			t.Errorf("progress from a command that was not run again: %v", m)
		}
	}
	if n := len(lines(t, runs)); n != 1 {
		t.Errorf("the script ran %d times, want once", n)
	}
}

// The agent checks a task again before it runs anything: one the
// controller should have refused fails with why, and nothing runs; an
// exit 0 succeeds with the exit code, and BUD_NODE_NAME defaults to the
// agent's hostname.
func TestExecuteMaintenanceTask(t *testing.T) {
	st := openState(t, enrolledState(t))
	defer st.Close()
	a, err := New(Options{State: st, Inventory: &fakeInventory{}, Logger: discardLogger(), Hostname: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(t.TempDir(), "ran")
	big := "touch " + marker + "\n#" + strings.Repeat("x", command.MaxScriptBytes) + "\n"
	rec, err := a.Execute(context.Background(), cmd("big", command.MaintenanceTask, map[string]string{command.ParamScript: base64.StdEncoding.EncodeToString([]byte(big))}))
	if err != nil {
		t.Fatal(err)
	}
	if rec.Success || !strings.Contains(rec.Message, "256 KiB") || rec.Output != nil {
		t.Errorf("too large a script: %+v", rec)
	}
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Error("the oversized script ran")
	}
	rec, err = a.Execute(context.Background(), cmd("bad", command.MaintenanceTask, map[string]string{command.ParamScript: "not base64!"}))
	if err != nil || rec.Success || !strings.Contains(rec.Message, "base64") {
		t.Errorf("a script that is not base64: %+v, %v", rec, err)
	}
	rec, err = a.Execute(context.Background(), taskCommand("ok", `echo "$BUD_NODE_NAME"`, nil))
	if err != nil || !rec.Success || rec.Output["exit_code"] != "0" || rec.Output["stdout"] != "node-a\n" || rec.Message != "" {
		t.Errorf("exit 0: %+v, %v", rec, err)
	}
	// node_name wins over the hostname.
	rec, _ = a.Execute(context.Background(), taskCommand("named", `echo "$BUD_NODE_NAME"`, map[string]string{command.ParamNodeName: "k8s-node-3"}))
	if rec.Output["stdout"] != "k8s-node-3\n" {
		t.Errorf("node_name: %+v", rec)
	}
	// A timeout says so.
	rec, _ = a.Execute(context.Background(), taskCommand("slow", "sleep 30", map[string]string{command.ParamTimeout: "200ms"}))
	if rec.Success || rec.Message != "timed out after 200ms; the task's processes were killed" || rec.Output["timed_out"] != "true" {
		t.Errorf("timeout: %+v", rec)
	}
}

// rebootScript writes a stand-in for a reboot: it appends to a file, so a
// test can count reboots.
func rebootScript(t *testing.T) (argv []string, marker string) {
	t.Helper()
	dir := t.TempDir()
	marker = filepath.Join(dir, "reboots")
	script := filepath.Join(dir, "reboot.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho reboot >> "+marker+"\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	return []string{"/bin/sh", script}, marker
}

// maintenance.reboot records and sends "reboot started" (with the boot id
// from before) and only then runs the reboot command. When the agent comes
// back and the command is delivered again, it reports the stored result
// and does not reboot again.
func TestSessionMaintenanceRebootOnce(t *testing.T) {
	dir := identityIn(t)
	argv, marker := rebootScript(t)
	st := openState(t, dir)
	inv := &bootInventory{fakeInventory: fakeInventory{host: &hostv1.Inventory{Hostname: "node-a"}}, bootID: "boot-1"}
	r := runAgent(t, Options{State: st, Inventory: inv, RebootCommand: argv, RebootDelay: 300 * time.Millisecond})
	peer := r.session(time.Second, time.Hour)
	deliver(t, peer, cmd("r1", command.MaintenanceReboot, command.MaintenanceRebootParams{CampaignID: "camp-7"}.Params()))
	res := r.next(peer, "the reboot's result", isResult).GetCommandResult()
	if !res.GetSuccess() || res.GetMessage() != "reboot started" || res.GetOutput()["boot_id"] != "boot-1" || res.GetOutput()["reboot_command"] != strings.Join(argv, " ") {
		t.Fatalf("result %v", res)
	}
	// The result was recorded and sent before the reboot command ran.
	if n := len(lines(t, marker)); n != 0 {
		t.Errorf("the reboot ran before its result was sent (%d runs)", n)
	}
	if rec, err := st.Command("r1"); err != nil || !rec.Finished() || !rec.Success || rec.Message != "reboot started" {
		t.Errorf("record when the result was sent: %+v, %v", rec, err)
	}
	eventually(t, "the reboot command to run", func() bool { return len(lines(t, marker)) == 1 })

	// The node comes back: a new agent process on the same state, with a
	// new boot id; the controller had no result and delivers the command
	// again.
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	st.Close()
	st = openState(t, dir)
	defer st.Close()
	inv = &bootInventory{fakeInventory: fakeInventory{host: &hostv1.Inventory{Hostname: "node-a"}}, bootID: "boot-2"}
	r = runAgent(t, Options{State: st, Inventory: inv, RebootCommand: argv, RebootDelay: time.Millisecond})
	peer, err := r.fake.Accept(r.ctx)
	if err != nil {
		t.Fatal(err)
	}
	hello, err := peer.Recv(r.ctx)
	if err != nil || hello.GetHello().GetBootId() != "boot-2" {
		t.Fatalf("hello after the reboot %v, %v; want the new boot id", hello, err)
	}
	if err := peer.Send(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Welcome{Welcome: &agentv1.Welcome{HeartbeatIntervalMs: 1000}}}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		deliver(t, peer, cmd("r1", command.MaintenanceReboot, command.MaintenanceRebootParams{CampaignID: "camp-7"}.Params()))
		again := r.next(peer, "the stored result", isResult).GetCommandResult()
		if !again.GetSuccess() || again.GetMessage() != "reboot started" || again.GetOutput()["boot_id"] != "boot-1" {
			t.Errorf("redelivery after the reboot: %v", again)
		}
	}
	// Checking that nothing happens: a reboot started by a redelivery would
	// have written the marker again by now (RebootDelay is far shorter).
	time.Sleep(200 * time.Millisecond)
	if n := len(lines(t, marker)); n != 1 {
		t.Errorf("rebooted %d times, want once", n)
	}
	if rec, _ := st.Command("r1"); rec.Deliveries != 3 {
		t.Errorf("record %+v; want 3 deliveries", rec)
	}
}

// A reboot command that cannot run fails the command, and nothing is
// started; a crash between the record and the result (the command begun,
// never finished) does not reboot on redelivery either.
func TestMaintenanceRebootRefusals(t *testing.T) {
	st := openState(t, enrolledState(t))
	defer st.Close()
	a, err := New(Options{State: st, Inventory: &fakeInventory{}, Logger: discardLogger(), RebootCommand: []string{"/nonexistent/reboot"}})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := a.Execute(context.Background(), cmd("r1", command.MaintenanceReboot, nil))
	if err != nil || rec.Success || !strings.Contains(rec.Message, "maintenance.reboot_command") {
		t.Errorf("missing reboot command: %+v, %v", rec, err)
	}
	argv, marker := rebootScript(t)
	if _, first, err := st.BeginCommand("r2", command.MaintenanceReboot, base); err != nil || !first {
		t.Fatal(first, err)
	}
	a, err = New(Options{State: st, Inventory: &fakeInventory{}, Logger: discardLogger(), RebootCommand: argv, RebootDelay: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	rec, err = a.Execute(context.Background(), cmd("r2", command.MaintenanceReboot, nil))
	if err != nil || rec.Success || !strings.HasPrefix(rec.Message, "interrupted") {
		t.Errorf("interrupted reboot: %+v, %v", rec, err)
	}
	rec, err = a.Execute(context.Background(), cmd("r3", command.MaintenanceReboot, map[string]string{command.ParamCampaignID: "bad id"}))
	if err != nil || rec.Success || !strings.Contains(rec.Message, "campaign_id") {
		t.Errorf("bad campaign id: %+v, %v", rec, err)
	}
	// Checking that nothing happens: a reboot run despite the refusals would
	// have written the marker by now (RebootDelay is 1 ms).
	time.Sleep(100 * time.Millisecond)
	if n := len(lines(t, marker)); n != 0 {
		t.Errorf("rebooted %d times", n)
	}
}

// maintenance.reboot_command is read from the config file; an empty one
// is refused.
func TestLoadConfigMaintenance(t *testing.T) {
	c, err := LoadConfig(writeConfig(t, "maintenance:\n  reboot_command: [/usr/bin/kill, -TERM, \"1234\"]\nboot_id_file: /run/fake-boot-id\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Maintenance.RebootCommand; len(got) != 3 || got[0] != "/usr/bin/kill" || got[2] != "1234" || c.BootIDFile != "/run/fake-boot-id" {
		t.Errorf("config %+v", c)
	}
	for name, content := range map[string]string{
		"empty list":    "maintenance:\n  reboot_command: []\n",
		"empty program": "maintenance:\n  reboot_command: [\"\", reboot]\n",
		"unknown key":   "maintenance:\n  reboot_cmd: [reboot]\n",
		"a string":      "maintenance:\n  reboot_command: systemctl reboot\n",
	} {
		if _, err := LoadConfig(writeConfig(t, content)); err == nil {
			t.Errorf("%s: accepted %q", name, content)
		}
	}
	// Unset: the agent runs systemctl reboot.
	st := openState(t, enrolledState(t))
	defer st.Close()
	a, err := New(Options{State: st})
	if err != nil {
		t.Fatal(err)
	}
	if got := a.opts.RebootCommand; strings.Join(got, " ") != "systemctl reboot" {
		t.Errorf("default reboot command %q", got)
	}
}

// An agent shutting down gives a running task CommandStopTimeout, then
// kills it; the result says so.
func TestExecuteMaintenanceTaskShutdown(t *testing.T) {
	st := openState(t, enrolledState(t))
	defer st.Close()
	a, err := New(Options{State: st, Inventory: &fakeInventory{}, Logger: discardLogger(), CommandStopTimeout: 100 * time.Millisecond,
		Maintenance: &maintenance.Runner{KillGrace: 100 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // shutdown has begun
	start := time.Now()
	rec, err := a.Execute(ctx, taskCommand("t1", "echo begun; sleep 30", nil))
	if err != nil {
		t.Fatal(err)
	}
	if rec.Success || !strings.Contains(rec.Message, "the agent is shutting down") || rec.Output["stopped"] != "true" || rec.Output["stdout"] != "begun\n" {
		t.Errorf("task stopped by shutdown: %+v", rec)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %s past a 100ms stop timeout", d)
	}
}
