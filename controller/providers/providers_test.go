package providers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/plugins/sdk"
)

// testPlugin is bud-provider-test, built once for the package's tests.
var testPlugin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "providers-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	testPlugin = filepath.Join(dir, "bud-provider-test")
	build := exec.Command("go", "build", "-o", testPlugin, "github.com/bud-ecosystem/budfleet/internal/providertest/bud-provider-test")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build bud-provider-test:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func sha(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// providersFile writes a providers file whose providers are the test
// plugin, with the given extra YAML per provider.
func providersFile(t *testing.T, entries ...string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("providers:\n")
	for _, e := range entries {
		b.WriteString(e)
	}
	path := filepath.Join(t.TempDir(), "providers.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func entry(t *testing.T, name, extra string) string {
	return fmt.Sprintf("  - name: %s\n    path: %s\n    sha256: %s\n%s", name, testPlugin, sha(t, testPlugin), extra)
}

func newHost(t *testing.T, entries ...string) *Host {
	t.Helper()
	cfgs, err := LoadFile(providersFile(t, entries...))
	if err != nil {
		t.Fatal(err)
	}
	h := New(cfgs, Options{Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil)), MinBackoff: 200 * time.Millisecond})
	t.Cleanup(h.Close)
	return h
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

func provider(t *testing.T, h *Host, name string) *Provider {
	t.Helper()
	p, err := h.Provider(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadFileRefusesBadInput(t *testing.T) {
	good := sha(t, testPlugin)
	dir := t.TempDir()
	notExec := filepath.Join(dir, "not-exec")
	if err := os.WriteFile(notExec, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, file, want string
	}{
		{"unknown key", fmt.Sprintf("providers:\n  - name: a\n    path: %s\n    sha256: %s\n    sha265: x\n", testPlugin, good), "line 5: field sha265 not found"},
		{"unknown top key", "provider:\n  - name: a\n", "field provider not found"},
		{"no sha256", fmt.Sprintf("providers:\n  - name: a\n    path: %s\n", testPlugin), "provider a: sha256 is required"},
		{"short sha256", fmt.Sprintf("providers:\n  - name: a\n    path: %s\n    sha256: abc\n", testPlugin), `sha256 "abc" is not 64 hex digits`},
		{"wrong sha256", fmt.Sprintf("providers:\n  - name: a\n    path: %s\n    sha256: %s\n", testPlugin, strings.Repeat("0", 64)), "has sha256 " + good + ", not the pinned 0000"},
		{"missing binary", fmt.Sprintf("providers:\n  - name: a\n    path: %s/nope\n    sha256: %s\n", dir, good), "plugin binary: open " + dir + "/nope: no such file or directory"},
		{"not executable", fmt.Sprintf("providers:\n  - name: a\n    path: %s\n    sha256: %s\n", notExec, good), "is not an executable file"},
		{"no path", "providers:\n  - name: a\n", "provider a: path is required"},
		{"no name", fmt.Sprintf("providers:\n  - path: %s\n", testPlugin), "provider 1: name is required"},
		{"bad name", "providers:\n  - name: My_VC\n", `name "My_VC": use lower-case`},
		{"twice", fmt.Sprintf("providers:\n  - {name: a, path: %[1]s, sha256: %[2]s}\n  - {name: a, path: %[1]s, sha256: %[2]s}\n", testPlugin, good), "provider a is listed twice"},
		{"empty", "", "the file is empty"},
		{"none", "providers: []\n", "no providers"},
		{"negative timeout", fmt.Sprintf("providers:\n  - {name: a, path: %s, sha256: %s, call_timeout: -1s}\n", testPlugin, good), "must be positive"},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "providers.yaml")
			if err := os.WriteFile(path, []byte(c.file), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadFile(path)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) {
				t.Fatalf("LoadFile = %v, want an error naming the file and saying %q", err, c.want)
			}
		})
	}
}

func TestLoadFileDefaultsAndRelativePaths(t *testing.T) {
	dir := filepath.Dir(testPlugin)
	path := filepath.Join(dir, "providers.yaml")
	if err := os.WriteFile(path, fmt.Appendf(nil, `providers:
  - name: vc
    path: bud-provider-test
    sha256: %s
    config: {url: "https://vc", nested: {a: [1, 2]}}
  - name: metal
    path: %s
    sha256: %s
    call_timeout: 5s
    agent_package: /srv/bud-agent.deb
`, strings.ToUpper(sha(t, testPlugin)), testPlugin, sha(t, testPlugin)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgs, err := LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if cfgs[0].Path != testPlugin || cfgs[0].CallTimeout != DefaultCallTimeout || cfgs[0].CreateTimeout != DefaultCreateTimeout {
		t.Errorf("vc = %+v", cfgs[0])
	}
	if j, _ := cfgs[0].configJSON(); string(j) != `{"nested":{"a":[1,2]},"url":"https://vc"}` {
		t.Errorf("vc config = %s", j)
	}
	if j, _ := cfgs[1].configJSON(); string(j) != `{}` || cfgs[1].CallTimeout != 5*time.Second || cfgs[1].AgentPackage != "/srv/bud-agent.deb" {
		t.Errorf("metal = %+v, config %s", cfgs[1], j)
	}
}

// A plugin starts at its first call, not before; then it reports its
// version and health.
func TestLazyStart(t *testing.T) {
	h := newHost(t, entry(t, "a", ""))
	if st := h.Status()[0]; st.Health != HealthIdle || st.Running || st.Info.Version != "" {
		t.Fatalf("before any call: %+v", st)
	}
	p := provider(t, h, "a")
	m, err := p.CreateMachine(t.Context(), sdk.MachineSpec{Name: "w1"}, sdk.Bootstrap{ControllerAddress: "ctl:7443", JoinToken: "t"})
	if err != nil || m.ProviderID != "m-1" {
		t.Fatalf("CreateMachine = %+v, %v", m, err)
	}
	st := h.Status()[0]
	if st.Health != HealthHealthy || !st.Running || st.Info != (sdk.Info{Name: "test", Version: "0.0.1-test"}) || st.Restarts != 0 {
		t.Fatalf("after a call: %+v", st)
	}
	if _, err := h.Provider("b"); !errors.Is(err, ErrUnknownProvider) || !strings.Contains(err.Error(), "the providers file names a") {
		t.Fatalf("Provider(b) = %v", err)
	}
}

// A binary changed after the file was read is refused at start by
// go-plugin's checksum, with an error that says what to do.
func TestChangedBinaryRefused(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "bud-provider-test")
	b, err := os.ReadFile(testPlugin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	h := newHost(t, fmt.Sprintf("  - name: a\n    path: %s\n    sha256: %s\n", bin, sha(t, bin)))
	if err := os.WriteFile(bin, append(b, 0), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err = provider(t, h, "a").ListMachines(t.Context())
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "changed since the providers file was read") {
		t.Fatalf("ListMachines with a changed binary = %v", err)
	}
	st := h.Status()[0]
	if st.Health != HealthUnhealthy || st.Running || !strings.Contains(st.LastError, "put the new one in the file") {
		t.Fatalf("status = %+v", st)
	}
}

// A config the plugin refuses is reported as the providers file's, and the
// plugin is not started again before its backoff.
func TestBadConfig(t *testing.T) {
	h := newHost(t, entry(t, "a", "    config: {fail_config: \"url is required: set it to https://VCENTER/sdk\"}\n"))
	p := provider(t, h, "a")
	_, err := p.ListMachines(t.Context())
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "the config of provider a in the providers file: invalid input: url is required") {
		t.Fatalf("ListMachines = %v", err)
	}
	_, err = p.ListMachines(t.Context())
	if !strings.Contains(err.Error(), "provider a is down") || !strings.Contains(err.Error(), "tries again in") {
		t.Fatalf("second ListMachines = %v, want the backoff", err)
	}
	if st := h.Status()[0]; st.Health != HealthUnhealthy || st.Running {
		t.Fatalf("status = %+v", st)
	}
}

// A plugin that panics on a call: the call fails naming the panic, the
// provider is unhealthy, other providers go on, and the next call after
// the backoff restarts it.
func TestPanicRestarts(t *testing.T) {
	h := newHost(t,
		entry(t, "crashy", "    config: {panic_on: [ListMachines]}\n"),
		entry(t, "steady", ""),
	)
	crashy, steady := provider(t, h, "crashy"), provider(t, h, "steady")
	if _, err := steady.ListMachines(t.Context()); err != nil {
		t.Fatal(err)
	}
	_, err := crashy.ListMachines(t.Context())
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "exited during ListMachines: panic: providertest: panic_on ListMachines") {
		t.Fatalf("ListMachines of the panicking plugin = %v", err)
	}
	st := h.Status()[0]
	if st.Health != HealthUnhealthy || st.Running || !strings.Contains(st.LastError, "panic: providertest") {
		t.Fatalf("crashy after the panic: %+v", st)
	}
	if _, err := steady.ListMachines(t.Context()); err != nil {
		t.Fatalf("steady after crashy panicked: %v", err)
	}
	if st := h.Status()[1]; st.Health != HealthHealthy || !st.Running {
		t.Fatalf("steady: %+v", st)
	}
	// Within the backoff: refused at once.
	if _, err := crashy.GetMachine(t.Context(), "m-1"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("GetMachine within the backoff = %v", err)
	}
	time.Sleep(250 * time.Millisecond)
	if _, err := crashy.GetMachine(t.Context(), "m-1"); !errors.Is(err, sdk.ErrNotFound) {
		t.Fatalf("GetMachine after the backoff = %v, want the restarted plugin's not found", err)
	}
	if st := h.Status()[0]; st.Health != HealthHealthy || !st.Running || st.Restarts != 1 {
		t.Fatalf("crashy after its restart: %+v", st)
	}
}

// A plugin that hangs: the call ends at its deadline, other calls of the
// same plugin and other providers are answered meanwhile.
func TestHangTimesOut(t *testing.T) {
	h := newHost(t,
		entry(t, "stuck", "    call_timeout: 500ms\n    config: {hang_on: [GetMachine]}\n"),
		entry(t, "steady", ""),
	)
	stuck, steady := provider(t, h, "stuck"), provider(t, h, "steady")
	if _, err := stuck.ListMachines(t.Context()); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var hangErr error
	var took time.Duration
	wg.Go(func() {
		start := time.Now()
		_, hangErr = stuck.GetMachine(t.Context(), "m-1")
		took = time.Since(start)
	})
	time.Sleep(100 * time.Millisecond)
	for _, p := range []*Provider{steady, stuck} {
		start := time.Now()
		if _, err := p.ListMachines(t.Context()); err != nil || time.Since(start) > 300*time.Millisecond {
			t.Errorf("%s ListMachines during the hang: %v after %v", p.Name(), err, time.Since(start))
		}
	}
	wg.Wait()
	if !errors.Is(hangErr, context.DeadlineExceeded) || !strings.Contains(hangErr.Error(), "GetMachine did not answer within 500ms") {
		t.Fatalf("hung GetMachine = %v", hangErr)
	}
	if took < 500*time.Millisecond || took > 2*time.Second {
		t.Errorf("the hung call returned after %v, want its 500ms deadline", took)
	}
	if st := h.Status()[0]; st.Health != HealthUnhealthy || !strings.Contains(st.LastError, "did not answer") {
		t.Fatalf("stuck: %+v", st)
	}
}

// A plugin that dies between calls (killed) is started again by the next
// call, which succeeds; the death is in its status.
func TestKilledWhileIdle(t *testing.T) {
	h := newHost(t, entry(t, "a", ""))
	p := provider(t, h, "a")
	if _, err := p.ListMachines(t.Context()); err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	pid := p.client.ReattachConfig().Pid
	p.mu.Unlock()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for h.Status()[0].Running && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := p.ListMachines(t.Context()); err != nil {
		t.Fatalf("ListMachines after the plugin was killed: %v", err)
	}
	st := h.Status()[0]
	if st.Health != HealthHealthy || !st.Running || st.Restarts != 1 || !strings.Contains(st.LastError, "exited between calls") {
		t.Fatalf("after the restart: %+v", st)
	}
}
