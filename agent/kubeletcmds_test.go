package agent

import (
	"strings"
	"testing"

	"github.com/bud-ecosystem/budfleet/agent/kubelet"
	"github.com/bud-ecosystem/budfleet/command"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
)

func TestLoadConfigKubelet(t *testing.T) {
	c, err := LoadConfig(writeConfig(t, "kubelet:\n  root: /srv/node\n  node_ip: 10.0.0.7\n  supervise: agent\n  configuration:\n    maxPods: 20\n    evictionHard: {memory.available: 50Mi}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Kubelet.Root != "/srv/node" || c.Kubelet.NodeIP != "10.0.0.7" || c.Kubelet.Supervise != "agent" || c.Kubelet.Configuration["maxPods"] != 20 {
		t.Errorf("config %+v", c.Kubelet)
	}
	for name, content := range map[string]string{
		"relative root":       "kubelet:\n  root: srv\n",
		"bad node ip":         "kubelet:\n  node_ip: ten\n",
		"bad supervise":       "kubelet:\n  supervise: runit\n",
		"unknown key":         "kubelet:\n  rooot: /\n",
		"unknown kubelet key": "kubelet:\n  configuration:\n    maxPodz: 1\n",
	} {
		if _, err := LoadConfig(writeConfig(t, content)); err == nil {
			t.Errorf("%s: accepted %q", name, content)
		}
	}
}

// A kubelet.join whose spec is bad fails before the node is touched, with
// the phase failed in its output.
func TestExecuteKubeletJoinBadSpec(t *testing.T) {
	st := openState(t, enrolledState(t))
	defer st.Close()
	a, err := New(Options{State: st, Inventory: &fakeInventory{}, Logger: discardLogger(), Kubelet: kubelet.Options{Root: t.TempDir()}})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := a.Execute(t.Context(), &agentv1.Command{Id: "j1", Kind: command.KubeletJoin, Params: map[string]string{command.ParamJoinSpec: `{"cluster":"k1"}`}})
	if err != nil {
		t.Fatal(err)
	}
	if rec.Success || rec.Output[command.OutputJoinPhase] != command.JoinFailed || !strings.Contains(rec.Message, "want an https:// URL") {
		t.Errorf("record %+v", rec)
	}
}
