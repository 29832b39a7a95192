package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/agent/gpu"
	"github.com/bud-ecosystem/budfleet/agent/inventory"

	"github.com/bud-ecosystem/budfleet/agent/state"
	"github.com/bud-ecosystem/budfleet/command"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	hostv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/host/v1"
)

var base = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// fakeInventory returns a fixed host and counts calls.
type fakeInventory struct {
	mu    sync.Mutex
	host  *hostv1.Inventory
	calls int
}

func (f *fakeInventory) Collect(ctx context.Context) (*hostv1.Inventory, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	return f.host, ctx.Err()
}

// counter is a handler that counts its runs.
type counter struct {
	n      atomic.Int32
	params atomic.Value
	out    map[string]string
	err    error
}

func (c *counter) handle(_ context.Context, params map[string]string) (map[string]string, error) {
	c.n.Add(1)
	c.params.Store(params)
	return c.out, c.err
}

func openState(t *testing.T, dir string) *state.DB {
	t.Helper()
	st, err := state.Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// enrolledState returns a state dir holding an identity (what New needs;
// Execute never dials).
func enrolledState(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "state")
	st := openState(t, dir)
	defer st.Close()
	if err := st.SaveIdentity(state.Identity{NodeID: "node-1", Controller: "127.0.0.1:1", ServerName: "127.0.0.1", KeyPEM: []byte("k"), CertDER: []byte{1}, CADER: []byte{2}}); err != nil {
		t.Fatal(err)
	}
	return dir
}

func newAgent(t *testing.T, st *state.DB, handlers map[string]Handler) *Agent {
	t.Helper()
	a, err := New(Options{State: st, Inventory: &fakeInventory{}, Logger: discardLogger(), Handlers: handlers, Now: func() time.Time { return base }})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func cmd(id, kind string, params map[string]string) *agentv1.Command {
	return &agentv1.Command{Id: id, Kind: kind, Params: params}
}

func TestExecuteRunsOnceAcrossRedeliveryAndRestart(t *testing.T) {
	dir := enrolledState(t)
	h := &counter{out: map[string]string{"lines": "3"}}
	st := openState(t, dir)
	a := newAgent(t, st, map[string]Handler{"test.echo": h.handle})

	params := map[string]string{"p": "v"}
	rec, err := a.Execute(context.Background(), cmd("c1", "test.echo", params))
	if err != nil {
		t.Fatal(err)
	}
	if h.n.Load() != 1 {
		t.Fatalf("handler ran %d times, want 1", h.n.Load())
	}
	if got := h.params.Load().(map[string]string); !reflect.DeepEqual(got, params) {
		t.Errorf("handler got params %v, want %v", got, params)
	}
	if !rec.Success || rec.Message != "" || !reflect.DeepEqual(rec.Output, h.out) || rec.Deliveries != 1 || !rec.Finished() || !rec.StartedAt.Equal(base) {
		t.Fatalf("first run = %+v", rec)
	}

	// Delivered again over the same session (or after a reconnect).
	again, err := a.Execute(context.Background(), cmd("c1", "test.echo", params))
	if err != nil {
		t.Fatal(err)
	}
	if h.n.Load() != 1 {
		t.Fatalf("redelivered command ran again (handler ran %d times)", h.n.Load())
	}
	if !again.Success || !reflect.DeepEqual(again.Output, h.out) || again.Deliveries != 2 {
		t.Errorf("redelivery = %+v; want the stored result with deliveries 2", again)
	}

	// The agent restarts: new state handle, new Agent.
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st = openState(t, dir)
	defer st.Close()
	h2 := &counter{}
	a = newAgent(t, st, map[string]Handler{"test.echo": h2.handle})
	after, err := a.Execute(context.Background(), cmd("c1", "test.echo", params))
	if err != nil {
		t.Fatal(err)
	}
	if h.n.Load()+h2.n.Load() != 1 {
		t.Fatalf("command ran again after a restart")
	}
	if !after.Success || !reflect.DeepEqual(after.Output, h.out) || after.Deliveries != 3 {
		t.Errorf("delivery after restart = %+v; want the stored result with deliveries 3", after)
	}

	// Another id does run.
	if _, err := a.Execute(context.Background(), cmd("c2", "test.echo", nil)); err != nil {
		t.Fatal(err)
	}
	if h2.n.Load() != 1 {
		t.Errorf("a new command id did not run")
	}
}

func TestExecuteInterruptedIsNotRerun(t *testing.T) {
	dir := enrolledState(t)
	// A crash mid-run leaves a record begun but not finished.
	st := openState(t, dir)
	if _, first, err := st.BeginCommand("c1", "test.slow", base.Add(-time.Minute)); err != nil || !first {
		t.Fatal(first, err)
	}
	st.Close()

	st = openState(t, dir)
	defer st.Close()
	h := &counter{}
	a := newAgent(t, st, map[string]Handler{"test.slow": h.handle})
	rec, err := a.Execute(context.Background(), cmd("c1", "test.slow", nil))
	if err != nil {
		t.Fatal(err)
	}
	if h.n.Load() != 0 {
		t.Fatal("an interrupted command was run again")
	}
	if rec.Success || !strings.HasPrefix(rec.Message, "interrupted") || !rec.Finished() || rec.Deliveries != 2 {
		t.Fatalf("interrupted command = %+v; want failed, \"interrupted...\", finished, deliveries 2", rec)
	}
	stored, err := st.Command("c1")
	if err != nil {
		t.Fatal(err)
	}
	if !stored.Finished() || stored.Success || stored.Message != rec.Message {
		t.Errorf("stored record = %+v; want the interrupted result", stored)
	}
	// Delivered once more: the same report, still not run.
	again, err := a.Execute(context.Background(), cmd("c1", "test.slow", nil))
	if err != nil {
		t.Fatal(err)
	}
	if h.n.Load() != 0 || again.Success || again.Message != rec.Message || !again.FinishedAt.Equal(rec.FinishedAt) || again.Deliveries != 3 {
		t.Errorf("second delivery of an interrupted command = %+v (handler ran %d)", again, h.n.Load())
	}
}

func TestExecuteUnknownKind(t *testing.T) {
	st := openState(t, enrolledState(t))
	defer st.Close()
	h := &counter{}
	a := newAgent(t, st, map[string]Handler{"test.known": h.handle})
	rec, err := a.Execute(context.Background(), cmd("c1", "shell.exec", nil))
	if err != nil {
		t.Fatal(err)
	}
	if h.n.Load() != 0 {
		t.Error("a handler ran for an unknown kind")
	}
	if rec.Success || !strings.Contains(rec.Message, `"shell.exec"`) || !rec.Finished() {
		t.Errorf("unknown kind = %+v; want failed, naming the kind", rec)
	}
	stored, err := st.Command("c1")
	if err != nil || !stored.Finished() || stored.Success {
		t.Errorf("stored = %+v, %v", stored, err)
	}
}

func TestExecuteHandlerError(t *testing.T) {
	st := openState(t, enrolledState(t))
	defer st.Close()
	h := &counter{out: map[string]string{"partial": "yes"}, err: errors.New("disk full")}
	a := newAgent(t, st, map[string]Handler{"test.fail": h.handle})
	rec, err := a.Execute(context.Background(), cmd("c1", "test.fail", nil))
	if err != nil {
		t.Fatalf("a handler error is a result, not an Execute error: %v", err)
	}
	if rec.Success || rec.Message != "disk full" || rec.Output["partial"] != "yes" || !rec.Finished() {
		t.Errorf("failed command = %+v", rec)
	}
	stored, _ := st.Command("c1")
	if stored.Success || stored.Message != "disk full" {
		t.Errorf("stored = %+v", stored)
	}
	// A failed command is not retried on redelivery either.
	if _, err := a.Execute(context.Background(), cmd("c1", "test.fail", nil)); err != nil {
		t.Fatal(err)
	}
	if h.n.Load() != 1 {
		t.Errorf("failed command ran %d times", h.n.Load())
	}
}

func TestExecuteBuiltinInventoryCollect(t *testing.T) {
	st := openState(t, enrolledState(t))
	defer st.Close()
	inv := &fakeInventory{host: &hostv1.Inventory{Hostname: "node-a", MachineId: "m1"}}
	a, err := New(Options{State: st, Inventory: inv, Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := a.Execute(context.Background(), cmd("c1", command.InventoryCollect, nil))
	if err != nil {
		t.Fatal(err)
	}
	if !rec.Success || rec.Output["hostname"] != "node-a" || rec.Output["fingerprint"] != inventory.Fingerprint(inv.host) {
		t.Errorf("inventory.collect = %+v", rec)
	}
	// The snapshot is queued for the session to send now.
	select {
	case h := <-a.inventory.collected:
		if h.Hostname != "node-a" {
			t.Errorf("queued snapshot %+v", h)
		}
	default:
		t.Error("no inventory queued to send")
	}
}

func TestExecuteShutdownGrace(t *testing.T) {
	st := openState(t, enrolledState(t))
	defer st.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // shutdown has begun

	// A command shorter than the stop timeout is not cut short.
	var sawCanceled atomic.Bool
	quick := func(ctx context.Context, _ map[string]string) (map[string]string, error) {
		sawCanceled.Store(ctx.Err() != nil)
		return nil, nil
	}
	// A command that outlives the stop timeout is canceled.
	slow := func(ctx context.Context, _ map[string]string) (map[string]string, error) {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(30 * time.Second):
			return nil, nil
		}
	}
	a, err := New(Options{State: st, Inventory: &fakeInventory{}, Logger: discardLogger(), CommandStopTimeout: 100 * time.Millisecond,
		Handlers: map[string]Handler{"test.quick": quick, "test.slow": slow}})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := a.Execute(ctx, cmd("q", "test.quick", nil))
	if err != nil || !rec.Success || sawCanceled.Load() {
		t.Errorf("quick command during shutdown: %+v %v canceled=%v", rec, err, sawCanceled.Load())
	}
	start := time.Now()
	rec, err = a.Execute(ctx, cmd("s", "test.slow", nil))
	if err != nil {
		t.Fatal(err)
	}
	if rec.Success || !strings.Contains(rec.Message, "context canceled") {
		t.Errorf("slow command during shutdown = %+v; want canceled", rec)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("slow command ran %s past a 100ms stop timeout", d)
	}
}

func TestNewUnenrolled(t *testing.T) {
	st := openState(t, filepath.Join(t.TempDir(), "state"))
	defer st.Close()
	_, err := New(Options{State: st, Logger: discardLogger()})
	if err == nil {
		t.Fatal("New on an unenrolled state succeeded")
	}
	if !strings.Contains(err.Error(), "bud-agent join") {
		t.Errorf("error %q should say to run 'bud-agent join'", err)
	}
	if _, err := New(Options{}); err == nil {
		t.Error("New without a state succeeded")
	}
}

func TestNewDefaults(t *testing.T) {
	st := openState(t, enrolledState(t))
	defer st.Close()
	a, err := New(Options{State: st})
	if err != nil {
		t.Fatal(err)
	}
	if a.NodeID() != "node-1" {
		t.Errorf("NodeID = %q", a.NodeID())
	}
	o := a.opts
	if o.BackoffInitial != time.Second || o.BackoffMax != time.Minute || o.InventoryCheck != time.Minute || o.CommandStopTimeout != 10*time.Second || o.Now == nil || o.Inventory == nil {
		t.Errorf("defaults = %+v", o)
	}
	if _, ok := a.commands.handlers[command.InventoryCollect]; !ok {
		t.Error("no built-in inventory.collect handler")
	}
	// Every kind the controller may queue has a handler.
	for _, k := range command.KindNames() {
		if _, ok := a.commands.handlers[k]; !ok {
			t.Errorf("no handler for command kind %s", k)
		}
	}
}

func TestBackoff(t *testing.T) {
	const samples = 2000
	for _, tc := range []struct{ initial, max time.Duration }{
		{time.Second, time.Minute},
		{50 * time.Millisecond, 3 * time.Second},
		{time.Nanosecond, time.Microsecond},
		{time.Second, time.Second},
		{10 * time.Second, time.Second}, // initial above max: max wins
		{time.Second, 1 << 62},          // a huge cap must not overflow
	} {
		prevMean := 0.0
		capped := false
		for attempt := 0; attempt <= 80; attempt++ {
			ceiling := tc.initial
			for i := 0; i < attempt && ceiling < tc.max; i++ {
				ceiling *= 2
			}
			ceiling = min(ceiling, tc.max)
			var sum float64
			var hi time.Duration
			for range samples {
				d := backoff(tc.initial, tc.max, attempt)
				if d <= 0 || d > ceiling || d > tc.max {
					t.Fatalf("backoff(%s, %s, %d) = %s; want in (0, %s]", tc.initial, tc.max, attempt, d, ceiling)
				}
				sum += float64(d) / samples
				hi = max(hi, d)
			}
			// Full jitter: samples spread over the range, reaching its top half.
			if ceiling > 1000 && hi <= ceiling/2 {
				t.Errorf("backoff(%s, %s, %d): largest of %d samples %s is not in the top half of %s", tc.initial, tc.max, attempt, samples, hi, ceiling)
			}
			mean := sum
			if !capped && ceiling > 1000 && attempt > 0 && mean <= prevMean {
				t.Errorf("backoff(%s, %s, %d): mean %.0fns did not grow from %.0fns", tc.initial, tc.max, attempt, mean, prevMean)
			}
			if ceiling == tc.max {
				capped = true
			}
			prevMean = mean
		}
		if !capped && tc.max < 1<<40 {
			t.Errorf("backoff(%s, %s) never reached the cap in 80 attempts", tc.initial, tc.max)
		}
	}
}

func writeConfig(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadConfig(t *testing.T) {
	c, err := LoadConfig("")
	if err != nil || !reflect.DeepEqual(c, Config{}) {
		t.Fatalf("LoadConfig(\"\") = %+v, %v; want the zero defaults", c, err)
	}
	if c, err := LoadConfig(writeConfig(t, "")); err != nil || !reflect.DeepEqual(c, Config{}) {
		t.Errorf("empty file = %+v, %v", c, err)
	}

	c, err = LoadConfig(writeConfig(t, `
controller: ctrl.example.com:7443
server_name: ctrl.internal
hostname: node-a
reconnect:
  initial: 1s
  max: 2m30s
inventory_interval: 90s
log_level: debug
`))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Controller: "ctrl.example.com:7443", ServerName: "ctrl.internal", Hostname: "node-a",
		Reconnect:         ReconnectConfig{Initial: time.Second, Max: 150 * time.Second},
		InventoryInterval: 90 * time.Second, LogLevel: "debug",
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("LoadConfig = %+v, want %+v", c, want)
	}

	for name, tc := range map[string]struct{ content, errHas string }{
		"unknown key":        {"controller: a:1\nreconect:\n  initial: 1s\n", "reconect"},
		"unknown nested key": {"reconnect:\n  intial: 1s\n", "intial"},
		"bad duration":       {"reconnect:\n  initial: soon\n", "soon"},
		"negative initial":   {"reconnect:\n  initial: -1s\n", "negative"},
		"negative max":       {"reconnect:\n  max: -1s\n", "negative"},
		"negative interval":  {"inventory_interval: -5s\n", "negative"},
		"initial over max":   {"reconnect:\n  initial: 2m\n  max: 1m\n", "reconnect.initial"},
		"interval under 1s":  {"inventory_interval: 500ms\n", "under a second"},
		"not a mapping":      {"- a\n- b\n", ""},
	} {
		path := writeConfig(t, tc.content)
		_, err := LoadConfig(path)
		if err == nil {
			t.Errorf("%s: LoadConfig accepted %q", name, tc.content)
			continue
		}
		if !strings.Contains(err.Error(), tc.errHas) {
			t.Errorf("%s: error %q should mention %q", name, err, tc.errHas)
		}
	}
	if _, err := LoadConfig(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Error("LoadConfig of a missing file succeeded")
	}
}

// An unchanged GPU inventory has an unchanged fingerprint across reads, so
// it is not resent every inventory check.
func TestGPUFingerprintStable(t *testing.T) {
	mem := func() *uint64 { v := uint64(80 << 30); return &v }
	inv := func() gpu.Inventory {
		return gpu.Inventory{Available: true, GPUs: []gpu.GPU{{Index: 0, UUID: "GPU-1", MemoryTotalBytes: mem()}}}
	}
	if fingerprint(inv()) != fingerprint(inv()) {
		t.Fatal("fingerprint differs for equal inventories")
	}
	changed := inv()
	*changed.GPUs[0].MemoryTotalBytes = 1
	if fingerprint(changed) == fingerprint(inv()) {
		t.Fatal("fingerprint ignores a changed field")
	}
}
