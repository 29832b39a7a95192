package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/agent/state"
	siemv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/siem/v1"
	"github.com/bud-ecosystem/budfleet/siem"
)

type siemApply struct {
	cfg     siem.Config
	version uint64
	source  string
}

// fakeSIEM is a SIEMForwarder that records what it was given and, like
// forward.Forwarder, refuses configurations that do not validate and keeps
// the running one.
type fakeSIEM struct {
	mu      sync.Mutex
	applied []siemApply
	fail    error           // Apply fails with it while set
	ctx     context.Context // of the last Apply that took
}

func (f *fakeSIEM) Apply(ctx context.Context, cfg siem.Config, version uint64, source string) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	f.applied = append(f.applied, siemApply{cfg, version, source})
	f.ctx = ctx
	return nil
}

// applyCtx is the context the running configuration was applied with: the
// forwarder runs until it ends.
func (f *fakeSIEM) applyCtx() context.Context {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ctx
}

func (f *fakeSIEM) Status() *siemv1.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.applied) == 0 {
		return &siemv1.Status{ConfigSource: "none"}
	}
	cur := f.applied[len(f.applied)-1]
	status := &siemv1.Status{ConfigVersion: cur.version, ConfigSource: cur.source}
	for _, o := range cur.cfg.Outputs {
		status.Outputs = append(status.Outputs, &siemv1.OutputStatus{Name: o.Name, Type: o.Type, Address: o.Address})
	}
	return status
}

func (f *fakeSIEM) applies() []siemApply {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]siemApply(nil), f.applied...)
}

func (f *fakeSIEM) last() siemApply {
	a := f.applies()
	if len(a) == 0 {
		return siemApply{}
	}
	return a[len(a)-1]
}

func siemYAML(output string) []byte {
	return fmt.Appendf(nil, `siem:
  sources:
    - path: /var/log/audit/audit.log
      tag: audit
      format: linux-audit
  outputs:
    - name: %s
      type: syslog
      address: siem.example.com:6514
`, output)
}

func localSIEM() *siem.Config {
	return &siem.Config{
		Sources: []siem.SourceConfig{{Path: "/var/log/local.log", Tag: "local"}},
		Outputs: []siem.OutputConfig{{Name: "local-out", Type: siem.OutputRELP, Address: "local.example.com:2514"}},
	}
}

func newSIEMAgent(t *testing.T, st *state.DB, fwd SIEMForwarder, local *siem.Config) *Agent {
	t.Helper()
	opts := Options{State: st, Inventory: &fakeInventory{}, Logger: discardLogger(), Now: func() time.Time { return base }, LocalSIEM: local}
	if fwd != nil {
		opts.SIEM = fwd
	}
	a, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func push(version uint64, yaml []byte) *siemv1.ConfigPush {
	return &siemv1.ConfigPush{Version: version, Yaml: yaml}
}

func TestSIEMStartsWithLocalConfig(t *testing.T) {
	st := openState(t, enrolledState(t))
	defer st.Close()
	fwd := &fakeSIEM{}
	a := newSIEMAgent(t, st, fwd, localSIEM())
	a.siem.start(context.Background())
	got := fwd.applies()
	if len(got) != 1 || got[0].version != 0 || got[0].source != "local" || got[0].cfg.Outputs[0].Name != "local-out" {
		t.Fatalf("applied %+v, want the local config as version 0", got)
	}
	s := a.siem.status()
	if s.GetConfigSource() != "local" || s.GetConfigVersion() != 0 || s.GetConfigError() != "" {
		t.Errorf("status = %v", s)
	}
}

func TestSIEMNoLocalConfig(t *testing.T) {
	st := openState(t, enrolledState(t))
	defer st.Close()
	fwd := &fakeSIEM{}
	a := newSIEMAgent(t, st, fwd, &siem.Config{})
	a.siem.start(context.Background())
	if n := len(fwd.applies()); n != 0 {
		t.Errorf("an empty local config was applied (%d applies)", n)
	}
	if s := a.siem.status(); s.GetConfigSource() != "none" || s.GetConfigError() != "" {
		t.Errorf("status = %v", s)
	}
}

func TestSIEMLocalConfigRefused(t *testing.T) {
	st := openState(t, enrolledState(t))
	defer st.Close()
	local := localSIEM()
	local.Outputs[0].Type = "kafka"
	a := newSIEMAgent(t, st, &fakeSIEM{}, local)
	a.siem.start(context.Background())
	if e := a.siem.status().GetConfigError(); !strings.Contains(e, "local siem config") || !strings.Contains(e, "kafka") {
		t.Errorf("config error = %q", e)
	}
}

// A push is applied at once, reported, and stored for the next start.
func TestSIEMPushAppliesAndPersists(t *testing.T) {
	st := openState(t, enrolledState(t))
	defer st.Close()
	fwd := &fakeSIEM{}
	a := newSIEMAgent(t, st, fwd, localSIEM())
	ctx := context.Background()
	a.siem.start(ctx)

	a.siem.applyPush(ctx, push(5, siemYAML("soc")))
	last := fwd.last()
	if last.version != 5 || last.source != "controller" || len(last.cfg.Outputs) != 1 || last.cfg.Outputs[0].Name != "soc" || last.cfg.Sources[0].Format != siem.FormatLinuxAudit {
		t.Fatalf("applied %+v", last)
	}
	pc, ok, err := st.PushedSIEM()
	if err != nil || !ok || pc.Version != 5 || string(pc.YAML) != string(siemYAML("soc")) {
		t.Errorf("PushedSIEM = %+v %v %v", pc, ok, err)
	}
	s := a.siem.status()
	if s.GetConfigVersion() != 5 || s.GetConfigSource() != "controller" || s.GetConfigError() != "" || s.GetOutputs()[0].GetName() != "soc" {
		t.Errorf("status = %v", s)
	}
	// The status is a copy: setting the error does not touch the forwarder's.
	s.ConfigError = "x"
	if fwd.Status().GetConfigError() != "" {
		t.Error("siemStatus returned the forwarder's own message")
	}
}

// The same version pushed again (every reconnect may push it) is applied
// once.
func TestSIEMSameVersionAppliedOnce(t *testing.T) {
	st := openState(t, enrolledState(t))
	defer st.Close()
	fwd := &fakeSIEM{}
	a := newSIEMAgent(t, st, fwd, nil)
	ctx := context.Background()
	a.siem.start(ctx)
	for range 3 {
		a.siem.applyPush(ctx, push(2, siemYAML("soc")))
	}
	if got := fwd.applies(); len(got) != 1 {
		t.Fatalf("%d applies of the same version, want 1", len(got))
	}
	a.siem.applyPush(ctx, push(3, siemYAML("soc2")))
	a.siem.applyPush(ctx, push(3, siemYAML("soc2")))
	if got := fwd.applies(); len(got) != 2 || got[1].version != 3 {
		t.Fatalf("applies = %+v, want versions 2 and 3", got)
	}
}

// A push the agent cannot use is reported in the status; the running
// configuration and the stored one stay.
func TestSIEMBadPushKeepsOldConfig(t *testing.T) {
	st := openState(t, enrolledState(t))
	defer st.Close()
	fwd := &fakeSIEM{}
	a := newSIEMAgent(t, st, fwd, localSIEM())
	ctx := context.Background()
	a.siem.start(ctx)
	a.siem.applyPush(ctx, push(5, siemYAML("soc")))

	for name, tc := range map[string]struct {
		yaml []byte
		want string
	}{
		"not YAML":       {[]byte("siem: [\n"), "yaml"},
		"invalid output": {siemYAML("BAD NAME"), "siem.outputs[0]: name"},
		"unknown key":    {[]byte("sources: []\noutputz: []\n"), "outputz"},
		"empty":          {nil, "empty"},
	} {
		a.siem.applyPush(ctx, push(6, tc.yaml))
		s := a.siem.status()
		if e := s.GetConfigError(); !strings.Contains(e, "version 6") || !strings.Contains(e, tc.want) {
			t.Errorf("%s: config error %q should name version 6 and %q", name, e, tc.want)
		}
		if s.GetConfigVersion() != 5 || s.GetConfigSource() != "controller" {
			t.Errorf("%s: status after a refused push = %v, want version 5 still running", name, s)
		}
		if pc, _, _ := st.PushedSIEM(); pc.Version != 5 {
			t.Errorf("%s: stored version %d after a refused push, want 5", name, pc.Version)
		}
	}
	if got := fwd.applies(); len(got) != 2 {
		t.Errorf("%d applies, want 2 (local, version 5)", len(got))
	}

	// The forwarder itself refusing (spool cannot be opened, ...) is the same.
	fwd.mu.Lock()
	fwd.fail = errors.New("open SIEM spool: disk full")
	fwd.mu.Unlock()
	a.siem.applyPush(ctx, push(7, siemYAML("soc7")))
	if e := a.siem.status().GetConfigError(); !strings.Contains(e, "version 7") || !strings.Contains(e, "disk full") {
		t.Errorf("config error = %q", e)
	}
	if pc, _, _ := st.PushedSIEM(); pc.Version != 5 {
		t.Errorf("stored version %d after the forwarder refused, want 5", pc.Version)
	}

	// A good push clears the error.
	fwd.mu.Lock()
	fwd.fail = nil
	fwd.mu.Unlock()
	a.siem.applyPush(ctx, push(8, siemYAML("soc8")))
	if s := a.siem.status(); s.GetConfigError() != "" || s.GetConfigVersion() != 8 {
		t.Errorf("status after a good push = %v", s)
	}
	if pc, _, _ := st.PushedSIEM(); pc.Version != 8 {
		t.Errorf("stored version %d, want 8", pc.Version)
	}
}

// After a restart the agent runs the controller's last configuration, not
// its local one.
func TestSIEMRestartAppliesPushedConfig(t *testing.T) {
	dir := enrolledState(t)
	st := openState(t, dir)
	fwd := &fakeSIEM{}
	a := newSIEMAgent(t, st, fwd, localSIEM())
	ctx := context.Background()
	a.siem.start(ctx)
	a.siem.applyPush(ctx, push(4, siemYAML("soc")))
	a.siem.applyPush(ctx, push(5, []byte("garbage: ["))) // refused, not stored
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	st2 := openState(t, dir)
	defer st2.Close()
	fwd2 := &fakeSIEM{}
	a2 := newSIEMAgent(t, st2, fwd2, localSIEM())
	a2.siem.start(ctx)
	got := fwd2.applies()
	if len(got) != 1 || got[0].version != 4 || got[0].source != "controller" || got[0].cfg.Outputs[0].Name != "soc" {
		t.Fatalf("after the restart applied %+v, want only the pushed version 4", got)
	}
	if s := a2.siem.status(); s.GetConfigVersion() != 4 || s.GetConfigSource() != "controller" || s.GetConfigError() != "" {
		t.Errorf("status = %v", s)
	}
	// The controller pushing the same version on reconnect changes nothing.
	a2.siem.applyPush(ctx, push(4, siemYAML("soc")))
	if n := len(fwd2.applies()); n != 1 {
		t.Errorf("%d applies after the same version was pushed again", n)
	}
}

// A stored configuration this build refuses falls back to the local one and
// says so.
func TestSIEMStoredConfigRefusedFallsBackToLocal(t *testing.T) {
	st := openState(t, enrolledState(t))
	defer st.Close()
	if err := st.SavePushedSIEM(state.PushedConfig{Version: 9, YAML: []byte("sources: []\noutputs: []\nnew_option: 1\n")}); err != nil {
		t.Fatal(err)
	}
	fwd := &fakeSIEM{}
	a := newSIEMAgent(t, st, fwd, localSIEM())
	a.siem.start(context.Background())
	if last := fwd.last(); last.source != "local" {
		t.Fatalf("applied %+v, want the local config", last)
	}
	if e := a.siem.status().GetConfigError(); !strings.Contains(e, "version 9") || !strings.Contains(e, "new_option") {
		t.Errorf("config error = %q", e)
	}
}

func TestSIEMWithoutForwarder(t *testing.T) {
	st := openState(t, enrolledState(t))
	defer st.Close()
	a := newSIEMAgent(t, st, nil, localSIEM())
	ctx := context.Background()
	a.siem.start(ctx)
	a.siem.applyPush(ctx, push(1, siemYAML("soc")))
	if _, ok, _ := st.PushedSIEM(); ok {
		t.Error("a push was stored by an agent without forwarding")
	}
	if s := a.siem.status(); s != nil {
		t.Errorf("status = %v, want none", s)
	}
}

// Heartbeats read the status while pushes are applied.
func TestSIEMStatusConcurrentWithPushes(t *testing.T) {
	st := openState(t, enrolledState(t))
	defer st.Close()
	fwd := &fakeSIEM{}
	a := newSIEMAgent(t, st, fwd, nil)
	ctx := context.Background()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for v := uint64(1); v <= 20; v++ {
			y := siemYAML("soc")
			if v%3 == 0 {
				y = []byte("bad: [")
			}
			a.siem.applyPush(ctx, push(v, y))
		}
	}()
	for range 200 {
		a.siem.status()
	}
	wg.Wait()
	if s := a.siem.status(); s.GetConfigVersion() != 20 || s.GetConfigError() != "" {
		t.Errorf("final status = %v", s)
	}
}

// Pushes can overtake each other: an older version arriving after a newer
// one is ignored, and the newer one stays stored for the next start.
func TestSIEMOlderPushIgnored(t *testing.T) {
	st := openState(t, enrolledState(t))
	defer st.Close()
	fwd := &fakeSIEM{}
	a := newSIEMAgent(t, st, fwd, nil)
	ctx := context.Background()
	a.siem.start(ctx)
	a.siem.applyPush(ctx, push(6, siemYAML("new")))
	a.siem.applyPush(ctx, push(5, siemYAML("old")))
	if got := fwd.applies(); len(got) != 1 || got[0].version != 6 {
		t.Fatalf("applies = %+v, want only version 6", got)
	}
	if pc, ok, err := st.PushedSIEM(); err != nil || !ok || pc.Version != 6 {
		t.Fatalf("stored push = %+v %v %v, want version 6", pc, ok, err)
	}
}
