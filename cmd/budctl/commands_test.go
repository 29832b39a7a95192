package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bud-ecosystem/budfleet/command"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

var spaces = regexp.MustCompile(` +`)

// A running task shows what it has streamed; a finished one its output,
// one-line values in the table and multi-line ones as blocks.
func TestPrintCommand(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	show := func(c *fleetv1.Command) string {
		var b bytes.Buffer
		tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
		printCommand(tw, &b, c, now)
		_ = tw.Flush()
		// Column widths vary: one space stands for any run of them.
		return spaces.ReplaceAllString(b.String(), " ")
	}
	running := &fleetv1.Command{Id: "c1", Kind: command.MaintenanceTask, State: fleetv1.CommandState_COMMAND_STATE_DELIVERED,
		OutputTail: &fleetv1.CommandOutputTail{Stdout: "step 1\nstep 2\n", StdoutBytes: 100000, Stderr: "warn\n", StderrBytes: 5, UpdatedAt: timestamppb.New(now.Add(-3 * time.Second))}}
	out := show(running)
	for _, want := range []string{"State: delivered", "Streamed: stdout 100000 bytes, stderr 5 bytes, updated 3s ago",
		"Streamed stdout (the last 14 of 100000 bytes):\n step 1\n step 2\n", "Streamed stderr:\n warn\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("running task: no %q in\n%s", want, out)
		}
	}
	done := &fleetv1.Command{Id: "c1", Kind: command.MaintenanceTask, State: fleetv1.CommandState_COMMAND_STATE_FAILED, Message: "the task exited with status 3",
		Output:     map[string]string{"exit_code": "3", "stdout": "a\nb\n", "stderr": "", "stdout_bytes": "4"},
		OutputTail: running.OutputTail}
	out = show(done)
	for _, want := range []string{"Message: the task exited with status 3", "Output exit_code: 3", "Output stdout:\n a\n b\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("finished task: no %q in\n%s", want, out)
		}
	}
	if strings.Contains(out, "Streamed") {
		t.Errorf("a finished task with its output shows the streamed tail too:\n%s", out)
	}
	if strings.Index(out, "Output exit_code") > strings.Index(out, "Output stdout_bytes") {
		t.Errorf("outputs not sorted:\n%s", out)
	}
}

func TestAddScript(t *testing.T) {
	dir := t.TempDir()
	small, big := filepath.Join(dir, "small.sh"), filepath.Join(dir, "big.sh")
	if err := os.WriteFile(small, []byte("echo \xff\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(big, make([]byte, command.MaxScriptBytes+1), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := addScript(map[string]string{command.ParamTimeout: "1m"}, small)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := command.ParseMaintenanceTask(p); err != nil || string(got.Script) != "echo \xff\n" {
		t.Errorf("script param %v: %+v, %v", p, got, err)
	}
	if _, err := addScript(nil, big); err == nil || !strings.Contains(err.Error(), "256 KiB") {
		t.Errorf("too large: %v", err)
	}
	if _, err := addScript(map[string]string{command.ParamScript: "x"}, small); err == nil {
		t.Error("--script with --param script was accepted")
	}
	if _, err := addScript(nil, filepath.Join(dir, "missing.sh")); err == nil {
		t.Error("a missing file was accepted")
	}
}
