package controller

import (
	"context"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/bud-ecosystem/budfleet/controller/store"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
	siemv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/siem/v1"
)

const siemTestYAML = `siem:
  sources:
    - path: /var/log/audit/audit.log
      tag: audit
      format: linux-audit
  outputs:
    - name: soc
      type: syslog
      address: siem.example.com:6514
      match: "audit.**"
`

// siemTestNode stores a node with labels.
func siemTestNode(t *testing.T, e *testEnv, id string, labels map[string]string) {
	t.Helper()
	addNode(t, e, id)
	if _, err := e.store.UpdateNode(t.Context(), id, func(n *store.Node) error {
		n.Labels = labels
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func siemApply(t *testing.T, e *testEnv, yaml string, selector map[string]string) *fleetv1.ApplySiemConfigResponse {
	t.Helper()
	ctx := context.WithValue(context.Background(), identityKey{}, Identity{Name: "alice", Role: "admin"})
	resp, err := e.srv.FleetAPI().ApplySiemConfig(ctx, &fleetv1.ApplySiemConfigRequest{Yaml: []byte(yaml), Selector: selector})
	if err != nil {
		t.Fatalf("ApplySiemConfig: %v", err)
	}
	return resp
}

func siemDesired(t *testing.T, e *testEnv, id string) (uint64, bool) {
	t.Helper()
	n, err := e.store.GetNode(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	c, ok, err := e.store.SIEMConfigFor(t.Context(), n.Labels)
	if err != nil {
		t.Fatal(err)
	}
	return c.Version, ok
}

// siemPushes drains the pushes queued on sess.
func siemPushes(sess *session) []*siemv1.ConfigPush {
	var out []*siemv1.ConfigPush
	for {
		select {
		case m := <-sess.out:
			if p := m.GetSiemConfig(); p != nil {
				out = append(out, p)
			}
		default:
			return out
		}
	}
}

func siemHeartbeat(t *testing.T, e *testEnv, sess *session, st *siemv1.Status) {
	t.Helper()
	if err := e.srv.handleAgentMessage(sess, &agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Heartbeat{Heartbeat: &agentv1.Heartbeat{Seq: 1, Siem: st}}}); err != nil {
		t.Fatal(err)
	}
}

func TestApplySiemConfigRefusesBadConfig(t *testing.T) {
	e := newTestServer(t)
	siemTestNode(t, e, "n1", map[string]string{"rack": "r1"})
	api := e.srv.FleetAPI()
	for _, tc := range []struct {
		name     string
		req      *fleetv1.ApplySiemConfigRequest
		contains []string
	}{
		{"not YAML", &fleetv1.ApplySiemConfigRequest{Yaml: []byte("siem: [\n")}, []string{"invalid SIEM configuration", "nothing was stored"}},
		{"empty", &fleetv1.ApplySiemConfigRequest{}, []string{"empty"}},
		{"bad output type", &fleetv1.ApplySiemConfigRequest{Yaml: []byte(strings.Replace(siemTestYAML, "type: syslog", "type: kafka", 1))},
			[]string{"siem.outputs[0]: type", "kafka", "nothing was stored"}},
		{"two problems", &fleetv1.ApplySiemConfigRequest{Yaml: []byte(strings.NewReplacer("type: syslog", "type: kafka", "tag: audit", "tag: 'a b'").Replace(siemTestYAML))},
			[]string{"siem.outputs[0]: type", "siem.sources[0]: tag"}},
		{"unknown key", &fleetv1.ApplySiemConfigRequest{Yaml: []byte("sources: []\noutputs: []\nsinks: []\n")}, []string{"sinks"}},
		{"no outputs", &fleetv1.ApplySiemConfigRequest{Yaml: []byte("sources:\n  - path: /a\n    tag: a\n")}, []string{"no outputs"}},
		{"too large", &fleetv1.ApplySiemConfigRequest{Yaml: []byte(siemTestYAML + "#" + strings.Repeat("x", 256<<10) + "\n")}, []string{"256 KiB"}},
		{"bad selector key", &fleetv1.ApplySiemConfigRequest{Yaml: []byte(siemTestYAML), Selector: map[string]string{"bad key!": "x"}}, []string{"selector", "bad key!"}},
		{"bad selector value", &fleetv1.ApplySiemConfigRequest{Yaml: []byte(siemTestYAML), Selector: map[string]string{"rack": "not valid/"}}, []string{"selector", "rack"}},
	} {
		_, err := api.ApplySiemConfig(context.Background(), tc.req)
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", tc.name, err)
			continue
		}
		msg := status.Convert(err).Message()
		for _, w := range tc.contains {
			if !strings.Contains(msg, w) {
				t.Errorf("%s: message %q does not mention %q", tc.name, msg, w)
			}
		}
		for _, labels := range []map[string]string{nil, {"rack": "r1"}, {"rack": "x"}} {
			if c, ok, err := e.store.SIEMConfigFor(t.Context(), labels); err != nil || ok {
				t.Fatalf("%s: a configuration was stored: %+v %v", tc.name, c, err)
			}
		}
	}
	// The next good one gets version 1: refusals used no version.
	if resp := siemApply(t, e, siemTestYAML, nil); resp.GetVersion() != 1 || !slices.Equal(resp.GetNodeIds(), []string{"n1"}) {
		t.Errorf("first good apply = %v", resp)
	}
}

// The newest configuration whose selector matches a node's labels is the
// node's.
func TestApplySiemConfigSelectsByLabels(t *testing.T) {
	e := newTestServer(t)
	siemTestNode(t, e, "n1", map[string]string{"rack": "r1", "role": "gpu"})
	siemTestNode(t, e, "n2", map[string]string{"rack": "r2", "role": "gpu"})
	siemTestNode(t, e, "n3", nil)

	nodes := func(r *fleetv1.ApplySiemConfigResponse) []string { return slices.Sorted(slices.Values(r.GetNodeIds())) }
	r1 := siemApply(t, e, siemTestYAML, nil)
	if r1.GetVersion() != 1 || !slices.Equal(nodes(r1), []string{"n1", "n2", "n3"}) {
		t.Errorf("apply to all = %v", r1)
	}
	r2 := siemApply(t, e, siemTestYAML, map[string]string{"rack": "r1"})
	if r2.GetVersion() != 2 || !slices.Equal(nodes(r2), []string{"n1"}) {
		t.Errorf("apply to rack r1 = %v", r2)
	}
	r3 := siemApply(t, e, siemTestYAML, map[string]string{"rack": "r2", "role": "cpu"})
	if r3.GetVersion() != 3 || len(r3.GetNodeIds()) != 0 {
		t.Errorf("apply to no node = %v", r3)
	}
	r4 := siemApply(t, e, siemTestYAML, map[string]string{"role": "gpu"})
	if r4.GetVersion() != 4 || !slices.Equal(nodes(r4), []string{"n1", "n2"}) {
		t.Errorf("apply to role gpu = %v", r4)
	}
	for id, want := range map[string]uint64{"n1": 4, "n2": 4, "n3": 1} {
		if v, ok := siemDesired(t, e, id); !ok || v != want {
			t.Errorf("%s runs version %d (%v), want %d", id, v, ok, want)
		}
	}
	c, _, _ := e.store.SIEMConfigFor(t.Context(), map[string]string{"role": "gpu"})
	if c.CreatedBy != "alice" || !c.CreatedAt.Equal(base) || string(c.YAML) != siemTestYAML || c.Selector["role"] != "gpu" {
		t.Errorf("stored config = %+v", c)
	}
	// The status reports what each node should run.
	st, err := e.srv.FleetAPI().GetSiemStatus(context.Background(), &fleetv1.GetSiemStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range st.GetNodes() {
		want := map[string]uint64{"n1": 4, "n2": 4, "n3": 1}[n.GetNodeId()]
		if n.GetDesiredConfigVersion() != want || n.GetState() != "unknown" {
			t.Errorf("%s: desired %d state %q, want %d unknown", n.GetNodeId(), n.GetDesiredConfigVersion(), n.GetState(), want)
		}
	}
}

// A connected node is sent its configuration unless it reported running
// that version.
func TestPushSiemOnlyWhenNotRunning(t *testing.T) {
	e := newTestServer(t)
	siemTestNode(t, e, "n1", map[string]string{"rack": "r1"})
	siemTestNode(t, e, "n2", map[string]string{"rack": "r2"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s1, _ := e.srv.openSession(ctx, "n1", "10.0.0.1:1", "test")
	s2, _ := e.srv.openSession(ctx, "n2", "10.0.0.2:1", "test")
	defer e.srv.closeSession(s1)
	defer e.srv.closeSession(s2)

	// No configuration yet: nothing to push.
	e.srv.siem.push(s1, true)
	if p := siemPushes(s1); len(p) != 0 {
		t.Fatalf("pushed %v with no configuration", p)
	}

	siemApply(t, e, siemTestYAML, map[string]string{"rack": "r1"})
	p := siemPushes(s1)
	if len(p) != 1 || p[0].GetVersion() != 1 || string(p[0].GetYaml()) != siemTestYAML {
		t.Fatalf("n1 got %v, want version 1", p)
	}
	if p := siemPushes(s2); len(p) != 0 {
		t.Fatalf("n2 (not selected) got %v", p)
	}

	// Not reported yet (a reconnect): pushed again.
	e.srv.siem.push(s1, true)
	if p := siemPushes(s1); len(p) != 1 {
		t.Errorf("reconnect before any report: %d pushes, want 1", len(p))
	}
	// Running the local configuration: pushed.
	siemHeartbeat(t, e, s1, &siemv1.Status{ConfigVersion: 0, ConfigSource: "local"})
	e.srv.siem.push(s1, true)
	if p := siemPushes(s1); len(p) != 1 {
		t.Errorf("node on its local config: %d pushes, want 1", len(p))
	}
	// Running version 1 from a controller: not pushed.
	siemHeartbeat(t, e, s1, &siemv1.Status{ConfigVersion: 1, ConfigSource: "controller"})
	e.srv.siem.push(s1, true)
	if p := siemPushes(s1); len(p) != 0 {
		t.Errorf("node already on version 1 got %v", p)
	}
	// A heartbeat without a SIEM status keeps the last report.
	siemHeartbeat(t, e, s1, nil)
	e.srv.siem.push(s1, true)
	if p := siemPushes(s1); len(p) != 0 {
		t.Errorf("after a heartbeat without status: %v", p)
	}

	// A newer configuration for n1 is pushed at once; one for nobody is not.
	siemApply(t, e, siemTestYAML, map[string]string{"rack": "nowhere"})
	if p := siemPushes(s1); len(p) != 0 {
		t.Errorf("a config for no node was pushed to n1: %v", p)
	}
	siemApply(t, e, strings.Replace(siemTestYAML, "name: soc", "name: soc2", 1), nil)
	p1, p2 := siemPushes(s1), siemPushes(s2)
	if len(p1) != 1 || p1[0].GetVersion() != 3 || !strings.Contains(string(p1[0].GetYaml()), "soc2") {
		t.Errorf("n1 got %v, want version 3", p1)
	}
	if len(p2) != 1 || p2[0].GetVersion() != 3 {
		t.Errorf("n2 got %v, want version 3", p2)
	}
	// A node that reports the version but as its local source gets it.
	siemHeartbeat(t, e, s2, &siemv1.Status{ConfigVersion: 3, ConfigSource: "local"})
	e.srv.siem.push(s2, true)
	if p := siemPushes(s2); len(p) != 1 {
		t.Errorf("version 3 from a local source: %d pushes, want 1", len(p))
	}
}

func TestSiemState(t *testing.T) {
	ok := &siemv1.OutputStatus{Name: "o", Connected: true}
	src := &siemv1.SourceStatus{Path: "/a"}
	ctrl := func(v uint64, outs []*siemv1.OutputStatus, srcs []*siemv1.SourceStatus) *siemv1.Status {
		return &siemv1.Status{ConfigVersion: v, ConfigSource: "controller", Outputs: outs, Sources: srcs}
	}
	withErr := func(s *siemv1.Status, e string) *siemv1.Status {
		s = proto.Clone(s).(*siemv1.Status)
		s.ConfigError = e
		return s
	}
	for _, tc := range []struct {
		name       string
		st         *siemv1.Status
		desired    uint64
		hasDesired bool
		want       string
	}{
		{"nothing", nil, 0, false, "no-config"},
		{"never reported", nil, 3, true, "unknown"},
		{"local config, controller has one", &siemv1.Status{ConfigSource: "local", Outputs: []*siemv1.OutputStatus{ok}}, 3, true, "pending"},
		{"older version", ctrl(2, []*siemv1.OutputStatus{ok}, nil), 3, true, "pending"},
		{"newer version refused", withErr(ctrl(2, []*siemv1.OutputStatus{ok}, nil), "configuration version 3 refused"), 3, true, "failing"},
		{"local, push refused", withErr(&siemv1.Status{ConfigSource: "local"}, "refused"), 3, true, "failing"},
		{"running, healthy", ctrl(3, []*siemv1.OutputStatus{ok}, []*siemv1.SourceStatus{src}), 3, true, "ok"},
		{"running, nothing configured", ctrl(3, nil, nil), 3, true, "no-config"},
		{"local only, healthy", &siemv1.Status{ConfigSource: "local", Outputs: []*siemv1.OutputStatus{ok}}, 0, false, "ok"},
		{"local only, empty", &siemv1.Status{ConfigSource: "none"}, 0, false, "no-config"},
		{"output failing", ctrl(3, []*siemv1.OutputStatus{{LastError: "refused", Connected: false}}, nil), 3, true, "failing"},
		{"output recovered", ctrl(3, []*siemv1.OutputStatus{{LastError: "refused", Connected: true}}, nil), 3, true, "ok"},
		{"output not connected yet", ctrl(3, []*siemv1.OutputStatus{{}}, nil), 3, true, "ok"},
		{"lagging", ctrl(3, []*siemv1.OutputStatus{ok, {Connected: true, LagSeconds: 61}}, nil), 3, true, "lagging"},
		{"lag at the threshold", ctrl(3, []*siemv1.OutputStatus{{Connected: true, LagSeconds: 60}}, nil), 3, true, "ok"},
		{"lagging and failing", ctrl(3, []*siemv1.OutputStatus{{Connected: true, LagSeconds: 600}, {LastError: "x"}}, nil), 3, true, "failing"},
		{"source paused", ctrl(3, []*siemv1.OutputStatus{ok}, []*siemv1.SourceStatus{src, {Paused: true}}), 3, true, "failing"},
		{"source paused and lagging", ctrl(3, []*siemv1.OutputStatus{{Connected: true, LagSeconds: 600}}, []*siemv1.SourceStatus{{Paused: true}}), 3, true, "failing"},
		{"no desired, controller status", ctrl(1, []*siemv1.OutputStatus{{LastError: "x"}}, nil), 0, false, "failing"},
	} {
		if got := siemState(tc.st, tc.desired, tc.hasDesired); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

// GetSiemStatus lists the worst first: failing, lagging, pending, unknown,
// ok, no-config.
func TestGetSiemStatusOrder(t *testing.T) {
	e := newTestServer(t)
	on := map[string]string{"siem": "on"}
	// Node ids sort the other way round from their states.
	for _, id := range []string{"a-ok", "b-nocfg", "c-unknown", "d-pending", "e-lagging", "f-failing", "g-failing"} {
		labels := on
		if id == "b-nocfg" {
			labels = nil
		}
		siemTestNode(t, e, id, labels)
	}
	siemApply(t, e, siemTestYAML, on)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reports := map[string]*siemv1.Status{
		"a-ok":      {ConfigVersion: 1, ConfigSource: "controller", Outputs: []*siemv1.OutputStatus{{Name: "soc", Connected: true}}},
		"d-pending": {ConfigSource: "local", Outputs: []*siemv1.OutputStatus{{Name: "x", Connected: true}}},
		"e-lagging": {ConfigVersion: 1, ConfigSource: "controller", Outputs: []*siemv1.OutputStatus{{Name: "soc", Connected: true, LagSeconds: 300}}},
		"f-failing": {ConfigVersion: 1, ConfigSource: "controller", Outputs: []*siemv1.OutputStatus{{Name: "soc", LastError: "server certificate expired"}}},
		"g-failing": {ConfigVersion: 1, ConfigSource: "controller", Sources: []*siemv1.SourceStatus{{Path: "/a", Paused: true}}, Outputs: []*siemv1.OutputStatus{{Name: "soc", Connected: true}}},
	}
	for id, st := range reports {
		sess, _ := e.srv.openSession(ctx, id, "peer", "test")
		siemHeartbeat(t, e, sess, st)
		e.srv.closeSession(sess)
	}
	resp, err := e.srv.FleetAPI().GetSiemStatus(context.Background(), &fleetv1.GetSiemStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, n := range resp.GetNodes() {
		got = append(got, n.GetNodeId()+"="+n.GetState())
		if n.GetHostname() != "h-"+n.GetNodeId() {
			t.Errorf("%s: hostname %q", n.GetNodeId(), n.GetHostname())
		}
		wantDesired := uint64(1)
		if n.GetNodeId() == "b-nocfg" {
			wantDesired = 0
		}
		if n.GetDesiredConfigVersion() != wantDesired {
			t.Errorf("%s: desired %d, want %d", n.GetNodeId(), n.GetDesiredConfigVersion(), wantDesired)
		}
		rep, reported := reports[n.GetNodeId()]
		if reported != (n.GetReportedAt() != nil) || reported && !n.GetReportedAt().AsTime().Equal(base) {
			t.Errorf("%s: reported_at %v", n.GetNodeId(), n.GetReportedAt())
		}
		if reported && !proto.Equal(rep, n.GetStatus()) || !reported && n.GetStatus() != nil {
			t.Errorf("%s: status %v, want %v", n.GetNodeId(), n.GetStatus(), rep)
		}
	}
	want := []string{"f-failing=failing", "g-failing=failing", "e-lagging=lagging", "d-pending=pending", "c-unknown=unknown", "a-ok=ok", "b-nocfg=no-config"}
	if !slices.Equal(got, want) {
		t.Errorf("order = %v\nwant %v", got, want)
	}

	one, err := e.srv.FleetAPI().GetSiemStatus(context.Background(), &fleetv1.GetSiemStatusRequest{NodeId: "e-lagging"})
	if err != nil || len(one.GetNodes()) != 1 || one.GetNodes()[0].GetState() != "lagging" {
		t.Errorf("GetSiemStatus(e-lagging) = %v, %v", one, err)
	}
	if _, err := e.srv.FleetAPI().GetSiemStatus(context.Background(), &fleetv1.GetSiemStatusRequest{NodeId: "missing"}); status.Code(err) != codes.NotFound {
		t.Errorf("GetSiemStatus(missing) = %v, want NotFound", err)
	}

	// A deleted node's report is forgotten.
	if _, err := e.srv.FleetAPI().DeleteNode(context.Background(), &fleetv1.DeleteNodeRequest{Id: "f-failing"}); err != nil {
		t.Fatal(err)
	}
	e.srv.siem.mu.Lock()
	_, kept := e.srv.siem.reports["f-failing"]
	e.srv.siem.mu.Unlock()
	if kept {
		t.Error("the SIEM report of a deleted node was kept")
	}
}

// A node without a controller configuration whose local configuration was
// refused reports ConfigError, but siemState ignores it unless the node has
// a desired configuration: the node shows as "no-config", not "failing".
func TestSiemStateLocalConfigError(t *testing.T) {
	st := &siemv1.Status{ConfigSource: "none", ConfigError: "local siem config: siem.outputs[0]: type \"kafka\" must be ..."}
	if got := siemState(st, 0, false); got != "failing" {
		t.Errorf("siemState = %q, want failing", got)
	}
}
