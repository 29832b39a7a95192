package e2e

import (
	"bufio"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
	"go.yaml.in/yaml/v3"

	"github.com/bud-ecosystem/budfleet/internal/kubetest"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
	machinev1 "github.com/bud-ecosystem/budfleet/proto/budfleet/machine/v1"
	maintv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/maint/v1"
	providerv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/provider/v1"
)

var helpers sync.Map // package path -> *helperBuild

type helperBuild struct {
	once sync.Once
	path string
	err  error
}

// helperBinary builds a test helper (a main package of the module) once
// per test process.
func helperBinary(t testing.TB, pkg string) string {
	t.Helper()
	v, _ := helpers.LoadOrStore(pkg, &helperBuild{})
	b := v.(*helperBuild)
	b.once.Do(func() {
		b.path = filepath.Join(helperDir, filepath.Base(pkg))
		cmd := exec.Command(goTool(), "build", "-o", b.path, "./"+pkg)
		cmd.Dir = repoRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

func fileSHA256(t testing.TB, path string) string {
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

// writeFile writes content to name in a new temp dir and returns its path.
func writeFile(t testing.TB, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// simServer is the vcsim helper running as its own process.
type simServer struct {
	url    *url.URL
	caFile string
	user   string
	pwFile string
}

var vcsimLine = regexp.MustCompile(`^vcsim (https://\S+)$`)

func startVCSim(t *testing.T) *simServer {
	t.Helper()
	bin := helperBinary(t, "test/vcsim")
	dir := t.TempDir()
	s := &simServer{caFile: filepath.Join(dir, "vcsim.pem"), user: "svc-budfleet", pwFile: filepath.Join(dir, "password")}
	if err := os.WriteFile(s.pwFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--username", s.user, "--password-file", s.pwFile, "--cert-out", s.caFile)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			line <- sc.Text()
		}
		close(line)
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case l := <-line:
		m := vcsimLine.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("vcsim printed %q", l)
		}
		if s.url, err = url.Parse(m[1]); err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("vcsim did not start within 30s")
	}
	return s
}

// vms reads the simulator's VMs by name, as an independent client.
func (s *simServer) vms(t testing.TB) map[string]mo.VirtualMachine {
	t.Helper()
	ctx := t.Context()
	u := *s.url
	u.User = url.UserPassword(s.user, "s3cret")
	c, err := govmomi.NewClient(ctx, &u, true)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Logout(ctx)
	cv, err := view.NewManager(c.Client).CreateContainerView(ctx, c.ServiceContent.RootFolder, []string{"VirtualMachine"}, true)
	if err != nil {
		t.Fatal(err)
	}
	var vms []mo.VirtualMachine
	if err := cv.Retrieve(ctx, []string{"VirtualMachine"}, []string{"name", "config", "runtime.powerState"}, &vms); err != nil {
		t.Fatal(err)
	}
	out := map[string]mo.VirtualMachine{}
	for _, vm := range vms {
		out[vm.Name] = vm
	}
	return out
}

// vsphereEntry is a providers file entry for the real vSphere plugin
// against s, with changes to its config.
func (s *simServer) vsphereEntry(t testing.TB, name string, changes map[string]string) string {
	cfg := map[string]string{
		"url": s.url.String(), "username": s.user, "password_file": s.pwFile, "ca_file": s.caFile,
		"datacenter": "DC0", "template": "DC0_H0_VM0", "resource_pool": "/DC0/host/DC0_C0/Resources",
		"datastore": "LocalDS_0", "folder": "/DC0/vm", "network": "DC0_DVPG0",
	}
	for k, v := range changes {
		cfg[k] = v
	}
	b, err := yaml.Marshal(map[string]any{"config": cfg})
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(binDir, "bud-provider-vsphere")
	return fmt.Sprintf("  - name: %s\n    path: %s\n    sha256: %s\n    call_timeout: 20s\n    create_timeout: 1m\n%s",
		name, bin, fileSHA256(t, bin), indent(string(b), "    "))
}

func indent(s, by string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i := range lines {
		lines[i] = by + lines[i]
	}
	return strings.Join(lines, "\n") + "\n"
}

func (c *controller) providers(t testing.TB) map[string]*machinev1.Provider {
	t.Helper()
	var resp machinev1.ListProvidersResponse
	if err := c.budctlJSON(&resp, "providers", "list"); err != nil {
		t.Fatal(err)
	}
	out := map[string]*machinev1.Provider{}
	for _, p := range resp.GetProviders() {
		out[p.GetName()] = p
	}
	return out
}

func (c *controller) machines(t testing.TB) []*machinev1.Machine {
	t.Helper()
	var resp machinev1.ListMachinesResponse
	if err := c.budctlJSON(&resp, "machines", "list"); err != nil {
		t.Fatal(err)
	}
	return resp.GetMachines()
}

// userDataOf decodes the cloud-config a VM carries in guestinfo.
func userDataOf(t testing.TB, vm mo.VirtualMachine) (raw string, token string) {
	t.Helper()
	ec := map[string]string{}
	for _, o := range vm.Config.ExtraConfig {
		ov := o.GetOptionValue()
		s, _ := ov.Value.(string)
		ec[ov.Key] = s
	}
	if ec["guestinfo.userdata.encoding"] != "base64" {
		t.Fatalf("VM %s: guestinfo.userdata.encoding = %q", vm.Name, ec["guestinfo.userdata.encoding"])
	}
	b, err := base64.StdEncoding.DecodeString(ec["guestinfo.userdata"])
	if err != nil {
		t.Fatalf("VM %s: guestinfo.userdata: %v", vm.Name, err)
	}
	var doc struct {
		WriteFiles []struct {
			Path    string `yaml:"path"`
			Content string `yaml:"content"`
		} `yaml:"write_files"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil || len(doc.WriteFiles) != 1 || doc.WriteFiles[0].Path != "/etc/budfleet/join-token" {
		t.Fatalf("VM %s: user data is not the expected cloud-config (%v):\n%s", vm.Name, err, b)
	}
	return string(b), strings.TrimSpace(doc.WriteFiles[0].Content)
}

// The real controller hosts the real vSphere plugin against a simulator
// in another process: machines appear with the spec and the guestinfo
// bootstrap, an agent joining with the token from guestinfo is linked to
// its machine and Ready, power works, delete cleans up; a bad password, an
// unknown template and an unreachable vCenter each fail clearly and make
// nothing.
func TestVSphereMachines(t *testing.T) {
	t.Parallel()
	sim := startVCSim(t)
	badPW := writeFile(t, "bad-password", "wrong\n")
	file := writeFile(t, "providers.yaml", "providers:\n"+
		sim.vsphereEntry(t, "vsphere", nil)+
		sim.vsphereEntry(t, "vsphere-badpw", map[string]string{"password_file": badPW})+
		sim.vsphereEntry(t, "vsphere-notemplate", map[string]string{"template": "ubuntu-24.04-nope"})+
		sim.vsphereEntry(t, "vsphere-down", map[string]string{"url": "https://127.0.0.1:1/sdk"}))
	c := startController(t, withServeArgs("--providers", file))
	before := len(sim.vms(t))

	ps := c.providers(t)
	if len(ps) != 4 || ps["vsphere"].GetHealth() != machinev1.ProviderHealth_PROVIDER_HEALTH_IDLE || ps["vsphere"].GetRunning() {
		t.Fatalf("providers before any use: %v", ps)
	}

	spec := writeFile(t, "spec.yaml", "cpus: 4\nmemory_mb: 8192\ndisk_gb: 120\n")
	start := time.Now()
	out := c.mustBudctl(t, "machines", "create", "--provider", "vsphere", "--count", "2", "--name", "k8s-worker", "--spec", spec, "--label", "pool=vm")
	t.Logf("2 machines created in %v", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(out, "k8s-worker-1") || !strings.Contains(out, "k8s-worker-2") {
		t.Fatalf("machines create printed:\n%s", out)
	}
	vms := sim.vms(t)
	if len(vms) != before+2 {
		t.Fatalf("%d VMs after creating 2, had %d", len(vms), before)
	}
	ms := c.machines(t)
	if len(ms) != 2 {
		t.Fatalf("machines list: %v", ms)
	}
	tokens := map[string]string{} // machine name -> join token from guestinfo
	for _, m := range ms {
		vm, ok := vms[m.GetName()]
		if !ok || vm.Self.Value != m.GetProviderId() {
			t.Fatalf("machine %s (%s) has no VM", m.GetName(), m.GetProviderId())
		}
		if vm.Config.Hardware.NumCPU != 4 || vm.Config.Hardware.MemoryMB != 8192 || vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn {
			t.Errorf("VM %s: %d CPUs, %d MB, %s", vm.Name, vm.Config.Hardware.NumCPU, vm.Config.Hardware.MemoryMB, vm.Runtime.PowerState)
		}
		for _, d := range vm.Config.Hardware.Device {
			if disk, ok := d.(*types.VirtualDisk); ok && disk.CapacityInKB != 120<<20 {
				t.Errorf("VM %s: disk of %d KiB, want 120 GiB", vm.Name, disk.CapacityInKB)
			}
		}
		ud, tok := userDataOf(t, vm)
		if !strings.Contains(ud, "bud-agent join --controller '"+c.addr()+"'") {
			t.Errorf("VM %s: user data does not join %s:\n%s", vm.Name, c.addr(), ud)
		}
		_, tokID, _ := tokenParts(t, tok)
		if tokID != m.GetTokenId() || m.GetState() != machinev1.MachineState_MACHINE_STATE_CREATED || m.GetNode() != nil {
			t.Errorf("machine %v: its VM carries token %s", m, tokID)
		}
		tokens[m.GetName()] = tok
	}
	for _, tk := range c.mustListTokens(t) {
		if tk.GetLabels()["budfleet.io/provider"] == "vsphere" && (tk.GetMaxUses() != 1 || tk.GetExpiresAt().AsTime().Sub(tk.GetCreatedAt().AsTime()) != time.Hour || tk.GetLabels()["pool"] != "vm") {
			t.Errorf("machine token %v: want single use, 1h, the --label", tk)
		}
	}
	ps = c.providers(t)
	if p := ps["vsphere"]; p.GetHealth() != machinev1.ProviderHealth_PROVIDER_HEALTH_HEALTHY || !p.GetRunning() || p.GetPlugin() != "vsphere" || p.GetVersion() == "" || p.GetRestarts() != 0 {
		t.Errorf("vsphere after use: %v", p)
	}

	// First boot of k8s-worker-1, played by a real agent with the token
	// from its guestinfo: it joins, and the machine is linked to its node.
	a := joinAgent(t, c, tokens["k8s-worker-1"], "k8s-worker-1")
	a.start(t)
	a.waitReady(t)
	var m1 *machinev1.Machine
	eventually(t, 10*time.Second, func() error {
		for _, m := range c.machines(t) {
			if m.GetName() == "k8s-worker-1" {
				m1 = m
			}
		}
		if m1.GetState() != machinev1.MachineState_MACHINE_STATE_ENROLLED || m1.GetNode().GetId() != a.nodeID || m1.GetNode().GetStatus() != fleetv1.NodeStatus_NODE_STATUS_READY {
			return fmt.Errorf("k8s-worker-1: %v", m1)
		}
		return nil
	})
	if n := c.mustGetNode(t, a.nodeID); n.GetLabels()["budfleet.io/machine"] != m1.GetId() || n.GetLabels()["pool"] != "vm" {
		t.Errorf("node labels %v", n.GetLabels())
	}
	table := c.mustBudctl(t, "machines", "list")
	if !regexp.MustCompile(`k8s-worker-1\s+vsphere\s+vm-\S+\s+enrolled\s+on\s+.*` + a.nodeID + ` \(k8s-worker-1, Ready\)`).MatchString(table) {
		t.Errorf("machines list:\n%s", table)
	}
	// The token is spent: a second use is refused.
	if _, stderr, err := c.newAgent(t, "impostor").join(tokens["k8s-worker-1"]); err == nil || !strings.Contains(stderr, "used up") {
		t.Errorf("second use of a machine's token: %v %s", err, stderr)
	}

	c.mustBudctl(t, "machines", "power", m1.GetId(), "off")
	if st := sim.vms(t)["k8s-worker-1"].Runtime.PowerState; st != types.VirtualMachinePowerStatePoweredOff {
		t.Errorf("after power off: %s", st)
	}
	var got machinev1.GetMachineResponse
	if err := c.budctlJSON(&got, "machines", "get", m1.GetId()); err != nil || got.GetMachine().GetPowerState() != providerv1.PowerState_POWER_STATE_OFF {
		t.Errorf("machines get after power off: %v, %v", &got, err)
	}
	if _, stderr, err := c.budctl("machines", "power", m1.GetId(), "pxe"); err == nil || !strings.Contains(stderr, "do not boot from the network") {
		t.Errorf("power pxe: %v %s", err, stderr)
	}

	// Delete: the VM goes, and so does the node.
	c.mustBudctl(t, "machines", "delete", m1.GetId())
	if _, ok := sim.vms(t)["k8s-worker-1"]; ok {
		t.Error("the VM is still there after machines delete")
	}
	if _, err := c.getNode(a.nodeID); err == nil {
		t.Error("the node is still there after its machine's delete")
	}
	if ms := c.machines(t); len(ms) != 1 || ms[0].GetName() != "k8s-worker-2" {
		t.Errorf("machines after a delete: %v", ms)
	}

	// Bad input and faults: each says what is wrong and makes nothing.
	for _, f := range []struct{ provider, want string }{
		{"vsphere-badpw", "log in to vCenter " + sim.url.String() + " as svc-budfleet"},
		{"vsphere-notemplate", `template "ubuntu-24.04-nope"`},
		{"vsphere-down", "connect to vCenter https://127.0.0.1:1/sdk"},
	} {
		_, stderr, err := c.budctl("machines", "create", "--provider", f.provider)
		if err == nil || !strings.Contains(stderr, f.want) {
			t.Errorf("machines create --provider %s: %v, stderr %q; want %q", f.provider, err, stderr, f.want)
		}
	}
	if n := len(sim.vms(t)); n != before+1 {
		t.Errorf("%d VMs after the failed creates, want %d", n, before+1)
	}
	if ms := c.machines(t); len(ms) != 1 {
		t.Errorf("failed creates left machine records: %v", ms)
	}
	if p := c.providers(t)["vsphere-badpw"]; p.GetHealth() != machinev1.ProviderHealth_PROVIDER_HEALTH_UNHEALTHY || !strings.Contains(p.GetLastError(), "log in to vCenter") {
		t.Errorf("vsphere-badpw: %v", p)
	}
}

func (c *controller) mustListTokens(t testing.TB) []*fleetv1.Token {
	t.Helper()
	ts, err := c.listTokens()
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

// A providers file with a wrong sha256, a missing binary or an unknown key
// keeps the controller from starting, saying which.
func TestProvidersFileRefused(t *testing.T) {
	t.Parallel()
	plugin := helperBinary(t, "internal/providertest/bud-provider-test")
	sum := fileSHA256(t, plugin)
	dataDir := filepath.Join(t.TempDir(), "data")
	initDataDir(t, dataDir, "127.0.0.1:1")
	for _, c := range []struct{ name, file, want string }{
		{"wrong sha256", fmt.Sprintf("providers:\n  - {name: a, path: %s, sha256: %s}\n", plugin, strings.Repeat("ab", 32)), "has sha256 " + sum + ", not the pinned abab"},
		{"missing binary", fmt.Sprintf("providers:\n  - {name: a, path: /nonexistent/bud-provider-x, sha256: %s}\n", sum), "plugin binary: open /nonexistent/bud-provider-x: no such file"},
		{"unknown key", fmt.Sprintf("providers:\n  - name: a\n    path: %s\n    sha256: %s\n    timeout: 5s\n", plugin, sum), "line 5: field timeout not found"},
	} {
		t.Run(c.name, func(t *testing.T) {
			file := writeFile(t, "providers.yaml", c.file)
			_, stderr, err := runCmd(30*time.Second, filepath.Join(binDir, "bud-controller"), "serve", "--data-dir", dataDir, "--listen", "127.0.0.1:0", "--providers", file)
			if err == nil || !strings.Contains(stderr, "--providers: providers file "+file) || !strings.Contains(stderr, c.want) {
				t.Fatalf("serve: %v\nstderr: %s\nwant %q", err, stderr, c.want)
			}
		})
	}
}

// A plugin that panics on a call: the controller logs it, marks the
// provider unhealthy and starts it again at the next call after its
// backoff; one that hangs is cut at its deadline; meanwhile the other
// providers and the API go on. A binary changed after the start is refused.
func TestProviderFaults(t *testing.T) {
	t.Parallel()
	plugin := helperBinary(t, "internal/providertest/bud-provider-test")
	changing := filepath.Join(t.TempDir(), "bud-provider-changing")
	b, err := os.ReadFile(plugin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(changing, b, 0o755); err != nil {
		t.Fatal(err)
	}
	sum := fileSHA256(t, plugin)
	file := writeFile(t, "providers.yaml", fmt.Sprintf(`providers:
  - {name: flaky, path: %[1]s, sha256: %[2]s}
  - {name: stuck, path: %[1]s, sha256: %[2]s, create_timeout: 2s, config: {hang_on: [CreateMachine]}}
  - {name: steady, path: %[1]s, sha256: %[2]s}
  - {name: changing, path: %[3]s, sha256: %[2]s}
`, plugin, sum, changing))
	c := startController(t, withServeArgs("--providers", file))
	if err := os.WriteFile(changing, append(b, 0), 0o755); err != nil {
		t.Fatal(err)
	}

	panicSpec := writeFile(t, "panic.yaml", "panic: true\n")
	_, stderr, err := c.budctl("machines", "create", "--provider", "flaky", "--spec", panicSpec)
	if err == nil || !strings.Contains(stderr, "Unavailable") || !strings.Contains(stderr, "the plugin exited during CreateMachine: panic: providertest: the spec asked for a panic") {
		t.Fatalf("create on a panicking plugin: %v\n%s", err, stderr)
	}
	if err := c.health(); err != nil {
		t.Fatalf("the controller after a plugin's panic: %v", err)
	}
	log := readLog(c.logPath)
	if !strings.Contains(log, "provider plugin crashed") || !strings.Contains(log, "panic: providertest: the spec asked for a panic") {
		t.Errorf("the controller log does not have the crash:\n%s", tail(log, 4096))
	}
	if p := c.providers(t)["flaky"]; p.GetHealth() != machinev1.ProviderHealth_PROVIDER_HEALTH_UNHEALTHY || p.GetRunning() || !strings.Contains(p.GetLastError(), "panic") {
		t.Errorf("flaky after its panic: %v", p)
	}
	c.mustBudctl(t, "machines", "create", "--provider", "steady", "--name", "s1")

	// The hang: the call ends at create_timeout; steady and the API answer
	// meanwhile.
	hung := make(chan error, 1)
	var hungFor time.Duration
	go func() {
		start := time.Now()
		_, stderr, err := c.budctl("machines", "create", "--provider", "stuck")
		hungFor = time.Since(start)
		if err == nil || !strings.Contains(stderr, "DeadlineExceeded") || !strings.Contains(stderr, "CreateMachine did not answer within 2s") {
			err = fmt.Errorf("create on a hanging plugin: %v, %s", err, stderr)
		} else {
			err = nil
		}
		hung <- err
	}()
	eventually(t, 10*time.Second, func() error {
		if !strings.Contains(readLog(c.logPath), "providertest: hanging") {
			return fmt.Errorf("the stuck plugin has not logged its hanging CreateMachine yet")
		}
		return nil
	})
	start := time.Now()
	c.mustBudctl(t, "machines", "create", "--provider", "steady", "--name", "s2")
	c.providers(t)
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Errorf("steady and providers list took %v during the hang", d)
	}
	if err := <-hung; err != nil {
		t.Fatal(err)
	}
	if hungFor > 5*time.Second {
		t.Errorf("the hung create returned after %v, want about its 2s", hungFor)
	}
	if p := c.providers(t)["stuck"]; p.GetHealth() != machinev1.ProviderHealth_PROVIDER_HEALTH_UNHEALTHY || !strings.Contains(p.GetLastError(), "did not answer") {
		t.Errorf("stuck: %v", p)
	}

	// After its backoff the next call starts flaky again.
	eventually(t, 10*time.Second, func() error {
		_, stderr, err := c.budctl("machines", "create", "--provider", "flaky", "--name", "f1")
		if err != nil {
			return fmt.Errorf("%v: %s", err, stderr)
		}
		return nil
	})
	if p := c.providers(t)["flaky"]; p.GetHealth() != machinev1.ProviderHealth_PROVIDER_HEALTH_HEALTHY || !p.GetRunning() || p.GetRestarts() != 1 {
		t.Errorf("flaky after its restart: %v", p)
	}
	if ms := c.machines(t); len(ms) != 3 {
		t.Errorf("machines: %v, want s1, s2, f1", ms)
	}

	// The binary changed since the file was read: refused at its start.
	_, stderr, err = c.budctl("machines", "create", "--provider", "changing")
	if err == nil || !strings.Contains(stderr, "changed since the providers file was read") {
		t.Errorf("create on a changed binary: %v\n%s", err, stderr)
	}
}

// A machine made by a provider whose agent joins with the bootstrap it was
// handed, and whose node then goes into a maintenance campaign: deleting
// it is refused with the campaign named until the campaign ends.
func TestMachineDeleteDuringCampaign(t *testing.T) {
	t.Parallel()
	cp := kubetest.Start(t, kubetest.WithKwok())
	plugin := helperBinary(t, "internal/providertest/bud-provider-test")
	bootDir := t.TempDir()
	file := writeFile(t, "providers.yaml", fmt.Sprintf(`providers:
  - name: local
    path: %s
    sha256: %s
    agent_package: /srv/bud-agent.deb
    config: {bootstrap_dir: %s, labels: {rack: r7}}
`, plugin, fileSHA256(t, plugin), bootDir))
	c := startController(t, withServeArgs("--providers", file))
	kubeconfig := writeFile(t, "kubeconfig", string(cp.Kubeconfig))
	c.mustBudctl(t, "clusters", "add", "dc1", "--kubeconfig", kubeconfig)

	const host = "gpu-01"
	c.mustBudctl(t, "machines", "create", "--provider", "local", "--name", host, "--label", "pool=maint")
	b, err := os.ReadFile(filepath.Join(bootDir, host+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var boot struct{ ControllerAddress, CAPin, JoinToken, AgentPackage string }
	if err := json.Unmarshal(b, &boot); err != nil {
		t.Fatal(err)
	}
	if boot.ControllerAddress != c.addr() || boot.CAPin != c.caHash || boot.AgentPackage != "/srv/bud-agent.deb" {
		t.Fatalf("bootstrap = %+v", boot)
	}
	cp.AddKwokNode(host, nil)
	a := c.newAgent(t, host)
	a.mustJoin(t, boot.JoinToken)
	a.start(t)
	a.waitReady(t)
	m := c.machines(t)[0]
	if m.GetNode().GetId() != a.nodeID {
		t.Fatalf("machine %v, node %s", m, a.nodeID)
	}
	if l := c.mustGetNode(t, a.nodeID).GetLabels(); l["rack"] != "r7" || l["pool"] != "maint" {
		t.Fatalf("node labels %v: want the provider's rack and the --label", l)
	}

	task := writeFile(t, "task.sh", "sleep 3\n")
	id := strings.TrimSpace(c.mustBudctl(t, "maintenance", "start", "--selector", "pool=maint", "--max-unavailable", "1", "--task", task))
	_, stderr, err := c.budctl("machines", "delete", m.GetId())
	if err == nil || !strings.Contains(stderr, "FailedPrecondition") || !strings.Contains(stderr, "in maintenance campaign "+id) || !strings.Contains(stderr, "budctl maintenance abort "+id) {
		t.Fatalf("delete during the campaign: %v\n%s", err, stderr)
	}
	if ms := c.machines(t); len(ms) != 1 || ms[0].GetState() != machinev1.MachineState_MACHINE_STATE_ENROLLED {
		t.Fatalf("the refused delete changed the machine: %v", ms)
	}
	eventually(t, time.Minute, func() error {
		cm, err := c.getCampaign(id)
		if err != nil {
			return err
		}
		if cm.GetState() != maintv1.CampaignState_CAMPAIGN_STATE_COMPLETED {
			return fmt.Errorf("campaign %s", cm.GetState())
		}
		return nil
	})
	c.mustBudctl(t, "machines", "delete", m.GetId())
	if _, err := c.getNode(a.nodeID); err == nil {
		t.Error("the node is still there after its machine's delete")
	}
	if ms := c.machines(t); len(ms) != 0 {
		t.Errorf("machines after the delete: %v", ms)
	}
}
