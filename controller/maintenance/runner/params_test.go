package runner

import (
	"encoding/base64"
	"reflect"
	"testing"

	"github.com/bud-ecosystem/budfleet/controller/maintenance"
	"github.com/bud-ecosystem/budfleet/controller/store"
)

// The commands go out as the agent's kinds take them: the script in
// base64 (a script need not be UTF-8; parameters are protobuf strings), the
// reboot with the campaign id alone.
func TestCommandParams(t *testing.T) {
	script := "#!/bin/sh\necho \xff\n"
	task := maintenance.EnqueueCommand{ID: "c1/n1/maintenance.task/1", NodeID: "n1", Kind: maintenance.KindTask, Params: map[string]string{
		maintenance.ParamScript: script, maintenance.ParamTimeout: "30m0s", maintenance.ParamCampaignID: "c1", maintenance.ParamNodeName: "gpu-1",
	}}
	got, err := CommandParams(task)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		maintenance.ParamScript: base64.StdEncoding.EncodeToString([]byte(script)), maintenance.ParamTimeout: "30m0s",
		maintenance.ParamCampaignID: "c1", maintenance.ParamNodeName: "gpu-1",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("task params = %v, want %v", got, want)
	}
	if task.Params[maintenance.ParamScript] != script {
		t.Error("CommandParams changed the action's params")
	}
	reboot := maintenance.EnqueueCommand{Kind: maintenance.KindReboot, Params: map[string]string{maintenance.ParamCampaignID: "c1", maintenance.ParamNodeName: "gpu-1"}}
	if got, err := CommandParams(reboot); err != nil || !reflect.DeepEqual(got, map[string]string{maintenance.ParamCampaignID: "c1"}) {
		t.Errorf("reboot params = %v, %v", got, err)
	}
	// What the agent would refuse is refused here.
	for name, a := range map[string]maintenance.EnqueueCommand{
		"empty script":  {Kind: maintenance.KindTask, Params: map[string]string{maintenance.ParamScript: ""}},
		"long timeout":  {Kind: maintenance.KindTask, Params: map[string]string{maintenance.ParamScript: "true", maintenance.ParamTimeout: "48h"}},
		"bad node name": {Kind: maintenance.KindTask, Params: map[string]string{maintenance.ParamScript: "true", maintenance.ParamNodeName: "a b"}},
		"other kind":    {Kind: "inventory.collect"},
	} {
		if _, err := CommandParams(a); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestCommandObservation(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    store.Command
		want maintenance.CommandObservation
	}{
		{"pending", store.Command{State: store.CommandPending}, maintenance.CommandObservation{State: maintenance.CommandPending}},
		{"succeeded", store.Command{State: store.CommandSucceeded, Output: map[string]string{"exit_code": "0", "stderr": "warning\n"}}, maintenance.CommandObservation{State: maintenance.CommandSucceeded}},
		{"failed with stderr", store.Command{State: store.CommandFailed, Message: "exit status 100", Output: map[string]string{"exit_code": "100", "stderr": "Reading package lists...\nE: Unable to locate package foo\n"}},
			maintenance.CommandObservation{State: maintenance.CommandFailed, ExitCode: 100, Message: "exit status 100; stderr: E: Unable to locate package foo"}},
		{"timed out", store.Command{State: store.CommandFailed, Message: "timed out after 30m0s", Output: map[string]string{"exit_code": "-1", "timed_out": "true"}},
			maintenance.CommandObservation{State: maintenance.CommandFailed, ExitCode: -1, Message: "timed out after 30m0s"}},
		{"never ran", store.Command{State: store.CommandFailed, Message: "maintenance.task script is empty"},
			maintenance.CommandObservation{State: maintenance.CommandFailed, Message: "maintenance.task script is empty"}},
	} {
		if got := commandObservation(tc.c); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
	long := store.Command{State: store.CommandFailed, Message: string(make([]byte, 1000))}
	if got := commandObservation(long); len(got.Message) > maxMessage+len("…") {
		t.Errorf("a long message is kept at %d bytes", len(got.Message))
	}
}
