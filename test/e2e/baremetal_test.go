package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/internal/baremetaltest"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
	machinev1 "github.com/bud-ecosystem/budfleet/proto/budfleet/machine/v1"
	providerv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/provider/v1"
)

// TestBareMetalProvider: the real controller hosts the real
// bud-provider-baremetal, which enrolls sshd "hosts" in network
// namespaces listed in an Ansible inventory with the real agent; they
// become Ready fleet nodes linked to their machines (the agents dial the
// controller on the bridge's address). A host whose key is not the one
// known_hosts pins is refused with nothing installed. Power goes through
// ipmi_sim BMCs with budctl machines power; a delete takes the agent off
// its host.
func TestBareMetalProvider(t *testing.T) {
	net := baremetaltest.NewNetwork(t,
		baremetaltest.HostSpec{Name: "gpu-01"},
		baremetaltest.HostSpec{Name: "impostor"},
		baremetaltest.HostSpec{Name: "worker-01", Port: 2222},
		baremetaltest.HostSpec{Name: "worker-02"},
	)
	gpu, impostor, w1, w2 := net.Hosts[0], net.Hosts[1], net.Hosts[2], net.Hosts[3]
	bmcGPU, bmcW1 := baremetaltest.StartBMC(t), baremetaltest.StartBMC(t)
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// The guide's inventory, pointed at the namespaces: the BMC of gpu-01
	// from the credentials file, worker-01's from its host vars.
	inventory := write("hosts.yml", fmt.Sprintf(`all:
  children:
    k8s_workers:
      hosts:
        worker-01:
          ansible_host: %s
          ansible_port: %d
          budfleet_install_root: %s
          ipmi_address: %s
          ipmi_port: %d
          ipmi_username: %s
          ipmi_password: %s
        worker-02: {ansible_host: %s, budfleet_install_root: %s}
        impostor: {ansible_host: %s, budfleet_install_root: %s}
    gpu_nodes:
      hosts:
        gpu-01: {ansible_host: %s, gpu_type: nvidia-a100, budfleet_install_root: %s}
`, w1.Address, w1.Port, w1.InstallRoot, bmcW1.Address, bmcW1.Port, bmcW1.Username, bmcW1.Password,
		w2.Address, w2.InstallRoot, impostor.Address, impostor.InstallRoot, gpu.Address, gpu.InstallRoot), 0o644)
	knownHosts := write("known_hosts", strings.Join([]string{gpu.KnownHostsLine(), impostor.WrongKnownHostsLine(t), w1.KnownHostsLine(), w2.KnownHostsLine()}, "\n")+"\n", 0o644)
	creds := write("ipmi.yml", fmt.Sprintf("hosts:\n  gpu-01: {address: %s, port: %d, username: %s, password: %s}\n",
		bmcGPU.Address, bmcGPU.Port, bmcGPU.Username, bmcGPU.Password), 0o600)
	plugin := filepath.Join(binDir, "bud-provider-baremetal")
	sum := fileSHA256(t, plugin)
	providers := write("providers.yml", fmt.Sprintf(`providers:
  - name: metal
    path: %s
    sha256: %s
    config:
      inventory: %s
      known_hosts: %s
      ssh_key_file: %s
      ipmi_credentials_file: %s
      agent_package: %s
`, plugin, sum, inventory, knownHosts, net.ClientKeyFile, creds, filepath.Join(binDir, "bud-agent")), 0o644)

	c := startController(t, withListenHost(net.Gateway), withServeArgs("--providers", providers))

	// gpu-01 by name (the plugin starts at this first call).
	start := time.Now()
	out, stderr, err := c.budctlLong(3*time.Minute, "machines", "create", "--provider", "metal", "--name", "gpu-01")
	if err != nil {
		t.Fatalf("machines create gpu-01: %v\n%s%s", err, out, stderr)
	}
	t.Logf("gpu-01 enrolled over SSH in %v, the plugin's start included", time.Since(start).Round(10*time.Millisecond))
	// Two more, whichever are free: the impostor is skipped (its key), so
	// worker-01 and worker-02.
	start = time.Now()
	out, stderr, err = c.budctlLong(3*time.Minute, "machines", "create", "--provider", "metal", "--count", "2", "--name", "w")
	if err != nil {
		t.Fatalf("machines create --count 2: %v\n%s%s", err, out, stderr)
	}
	t.Logf("two hosts enrolled over SSH in %v (gpu-01 probed and left, the impostor probed and refused)", time.Since(start).Round(10*time.Millisecond))
	created := time.Now()
	// The impostor by name: refused before anything is sent.
	out, stderr, err = c.budctlLong(time.Minute, "machines", "create", "--provider", "metal", "--name", "impostor")
	if err == nil || !strings.Contains(stderr, "host key not trusted") || !strings.Contains(stderr, "known_hosts "+knownHosts+" line 2") {
		t.Errorf("machines create impostor: %v\nstdout: %s\nstderr: %s", err, out, stderr)
	}
	if files := impostor.Files(); len(files) != 0 {
		t.Errorf("files on the impostor: %v", files)
	}
	if l := impostor.Log(); strings.Contains(l, "Accepted") || strings.Contains(l, "Failed publickey") {
		t.Errorf("the impostor saw a login:\n%s", l)
	}

	// Every enrolled host is a Ready node linked to its machine.
	byHost := map[string]*machinev1.Machine{}
	eventually(t, 60*time.Second, func() error {
		var resp machinev1.ListMachinesResponse
		if err := c.budctlJSON(&resp, "machines", "list"); err != nil {
			return err
		}
		if len(resp.GetMachines()) != 3 {
			return fmt.Errorf("%d machines, want 3: %v", len(resp.GetMachines()), resp.GetMachines())
		}
		for _, m := range resp.GetMachines() {
			n := m.GetNode()
			if n.GetId() == "" || n.GetStatus() != fleetv1.NodeStatus_NODE_STATUS_READY || !n.GetConnected() {
				return fmt.Errorf("machine %s (%s): node %v", m.GetName(), m.GetProviderId(), n)
			}
			if n.GetHostname() != m.GetProviderId() {
				return fmt.Errorf("machine %s: node hostname %q, want %q", m.GetName(), n.GetHostname(), m.GetProviderId())
			}
			byHost[m.GetProviderId()] = m
		}
		return nil
	})
	t.Logf("all three Ready and linked %v after the last create returned", time.Since(created).Round(10*time.Millisecond))
	for _, h := range []string{"gpu-01", "worker-01", "worker-02"} {
		if byHost[h] == nil {
			t.Fatalf("no machine for %s: %v", h, byHost)
		}
	}
	if m := byHost["gpu-01"]; m.GetLabels()["budfleet.io/group.gpu_nodes"] != "true" || m.GetLabels()["gpu_type"] != "nvidia-a100" {
		t.Errorf("gpu-01 machine labels %v", m.GetLabels())
	}
	node := c.mustGetNode(t, byHost["gpu-01"].GetNode().GetId())
	if node.GetLabels()["budfleet.io/group.gpu_nodes"] != "true" || node.GetLabels()["gpu_type"] != "nvidia-a100" {
		t.Errorf("gpu-01 node labels %v", node.GetLabels())
	}

	// Power through the BMCs.
	for host, sim := range map[string]*baremetaltest.BMC{"gpu-01": bmcGPU, "worker-01": bmcW1} {
		id := byHost[host].GetId()
		for _, step := range []struct {
			action, want string
			state        providerv1.PowerState
		}{
			{"on", "on", providerv1.PowerState_POWER_STATE_ON},
			{"reset", "on", providerv1.PowerState_POWER_STATE_ON},
			{"off", "off", providerv1.PowerState_POWER_STATE_OFF},
		} {
			c.mustBudctl(t, "machines", "power", id, step.action)
			if sim.Power() != step.want {
				t.Errorf("%s after power %s: the BMC is %s", host, step.action, sim.Power())
			}
			var got machinev1.GetMachineResponse
			if err := c.budctlJSON(&got, "machines", "get", id); err != nil {
				t.Fatal(err)
			}
			if got.GetMachine().GetPowerState() != step.state {
				t.Errorf("%s after power %s: machines get says %s (%s)", host, step.action, got.GetMachine().GetPowerState(), got.GetProviderError())
			}
		}
	}
	c.mustBudctl(t, "machines", "power", byHost["gpu-01"].GetId(), "pxe")
	if bmcGPU.BootDevice() != "pxe" || bmcGPU.Power() != "on" {
		t.Errorf("after pxe: boot device %q, power %s", bmcGPU.BootDevice(), bmcGPU.Power())
	}
	if _, stderr, err := c.budctl("machines", "power", byHost["worker-02"].GetId(), "on"); err == nil || !strings.Contains(stderr, "no BMC") {
		t.Errorf("power of a host without a BMC: %v: %s", err, stderr)
	}

	// A BMC that stopped answering is said to be so, not "off".
	bmcW1.Stop()
	if _, stderr, err := c.budctl("machines", "power", byHost["worker-01"].GetId(), "on"); err == nil || !strings.Contains(stderr, "BMC not answering") {
		t.Errorf("power with the BMC down: %v: %s", err, stderr)
	}
	// gpu-01 again, by name (the controller refuses a second machine of
	// that name) and through the spec (the provider finds the host
	// enrolled and leaves it alone): refused, still one machine for it.
	if _, stderr, err := c.budctlLong(time.Minute, "machines", "create", "--provider", "metal", "--name", "gpu-01"); err == nil || !strings.Contains(stderr, "already has a machine named gpu-01") {
		t.Errorf("machines create gpu-01 again: %v: %s", err, stderr)
	}
	spec := write("spec.yml", "host: gpu-01\n", 0o644)
	if _, stderr, err := c.budctlLong(time.Minute, "machines", "create", "--provider", "metal", "--name", "again", "--spec", spec); err == nil || !strings.Contains(stderr, "host gpu-01 is already enrolled") {
		t.Errorf("machines create --spec {host: gpu-01}: %v: %s", err, stderr)
	}

	// Delete worker-02: its agent leaves the host.
	if out, stderr, err := c.budctlLong(time.Minute, "machines", "delete", byHost["worker-02"].GetId()); err != nil {
		t.Fatalf("machines delete: %v\n%s%s", err, out, stderr)
	}
	if files := w2.Files(); len(files) != 0 {
		t.Errorf("left on worker-02: %v", files)
	}
	eventually(t, 20*time.Second, func() error {
		var resp machinev1.ListMachinesResponse
		if err := c.budctlJSON(&resp, "machines", "list"); err != nil {
			return err
		}
		if len(resp.GetMachines()) != 2 {
			return fmt.Errorf("%d machines after the delete, want 2", len(resp.GetMachines()))
		}
		return nil
	})
}

// budctlLong runs budctl with a longer --timeout than budctl() gives, for
// calls that enroll hosts.
func (c *controller) budctlLong(timeout time.Duration, args ...string) (string, string, error) {
	return runCmd(timeout+10*time.Second, filepath.Join(binDir, "budctl"), append([]string{"--config", c.adminConfig, "--timeout", timeout.String()}, args...)...)
}

// TestBareMetalProviderBadInventory: an inventory with a syntax error and
// one with a host without an address keep the provider from starting; the
// operator sees why (file and line) from budctl, and nothing is made.
func TestBareMetalProviderBadInventory(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	broken := write("broken.yml", "all:\n  children:\n    gpu_nodes:\n      hosts:\n        gpu-01: {ansible_host: 10.0.1.30\n", 0o644)
	noAddr := write("noaddr.yml", "all:\n  children:\n    k8s_workers:\n      hosts:\n        worker-01: {ansible_user: admin}\n", 0o644)
	known := write("known_hosts", "", 0o644)
	key := write("key", "", 0o600)
	plugin := filepath.Join(binDir, "bud-provider-baremetal")
	sum := fileSHA256(t, plugin)
	var b strings.Builder
	b.WriteString("providers:\n")
	for _, p := range []struct{ name, inv string }{{"broken", broken}, {"noaddr", noAddr}} {
		fmt.Fprintf(&b, "  - name: %s\n    path: %s\n    sha256: %s\n    config: {inventory: %s, known_hosts: %s, ssh_key_file: %s, agent_package: %s}\n",
			p.name, plugin, sum, p.inv, known, key, filepath.Join(binDir, "bud-agent"))
	}
	c := startController(t, withServeArgs("--providers", write("providers.yml", b.String(), 0o644)))

	for name, want := range map[string]string{
		"broken": broken + " line 5: YAML syntax error",
		"noaddr": noAddr + " line 5: host worker-01 has no address: set ansible_host",
	} {
		_, stderr, err := c.budctlLong(time.Minute, "machines", "create", "--provider", name)
		if err == nil || !strings.Contains(stderr, want) {
			t.Errorf("machines create --provider %s: %v: %s\nwant %q", name, err, stderr, want)
		}
	}
	var resp machinev1.ListProvidersResponse
	if err := c.budctlJSON(&resp, "providers", "list"); err != nil {
		t.Fatal(err)
	}
	for _, p := range resp.GetProviders() {
		if p.GetHealth() != machinev1.ProviderHealth_PROVIDER_HEALTH_UNHEALTHY || !strings.Contains(p.GetLastError(), "line") {
			t.Errorf("provider %s: %s, last error %q", p.GetName(), p.GetHealth(), p.GetLastError())
		}
	}
	var machines machinev1.ListMachinesResponse
	if err := c.budctlJSON(&machines, "machines", "list"); err != nil || len(machines.GetMachines()) != 0 {
		t.Errorf("machines after the refusals: %v, %v", machines.GetMachines(), err)
	}
}
