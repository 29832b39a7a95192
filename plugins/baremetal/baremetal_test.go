package baremetal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/internal/baremetaltest"
	"github.com/bud-ecosystem/budfleet/plugins/baremetal/bmc"
	"github.com/bud-ecosystem/budfleet/plugins/baremetal/inventory"
	"github.com/bud-ecosystem/budfleet/plugins/baremetal/sshenroll"
	"github.com/bud-ecosystem/budfleet/plugins/sdk"
)

type fixture struct {
	net      *baremetaltest.Network
	bmcs     map[string]*baremetaltest.BMC
	dir      string
	config   Config
	provider sdk.Provider
}

// setup makes three sshd hosts (gpu-01 and worker-01 pinned in
// known_hosts, impostor pinned with a key it does not have), a BMC for
// gpu-01 (login in the credentials file) and one for worker-01 (login in
// its host vars), an inventory listing them, and the provider configured
// over go-plugin's real gRPC transport.
func setup(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{dir: t.TempDir(), bmcs: map[string]*baremetaltest.BMC{}}
	f.net = baremetaltest.NewNetwork(t,
		baremetaltest.HostSpec{Name: "gpu-01"},
		baremetaltest.HostSpec{Name: "worker-01", Port: 2222},
		baremetaltest.HostSpec{Name: "impostor"},
	)
	gpu, worker, impostor := f.net.Hosts[0], f.net.Hosts[1], f.net.Hosts[2]
	f.bmcs["gpu-01"] = baremetaltest.StartBMC(t)
	f.bmcs["worker-01"] = baremetaltest.StartBMC(t)
	agentBin := filepath.Join(f.dir, "bud-agent")
	cmd := exec.Command("go", "build", "-o", agentBin, "./sshenroll/testdata/fakeagent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build fakeagent: %v\n%s", err, out)
	}
	wb := f.bmcs["worker-01"]
	inv := fmt.Sprintf(`all:
  vars:
    ansible_user: root
  children:
    gpu_nodes:
      hosts:
        gpu-01: {ansible_host: %s, gpu_type: nvidia-a100, budfleet_install_root: %s}
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
        impostor: {ansible_host: %s, budfleet_install_root: %s}
`, gpu.Address, gpu.InstallRoot, worker.Address, worker.Port, worker.InstallRoot,
		wb.Address, wb.Port, wb.Username, wb.Password, impostor.Address, impostor.InstallRoot)
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(f.dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	gb := f.bmcs["gpu-01"]
	f.config = Config{
		Inventory:           write("hosts.yml", inv, 0o644),
		KnownHosts:          write("known_hosts", gpu.KnownHostsLine()+"\n"+worker.KnownHostsLine()+"\n"+impostor.WrongKnownHostsLine(t)+"\n", 0o644),
		SSHKeyFile:          f.net.ClientKeyFile,
		IPMICredentialsFile: write("ipmi.yml", fmt.Sprintf("hosts:\n  gpu-01: {address: %s, port: %d, username: %s, password: %s}\n", gb.Address, gb.Port, gb.Username, gb.Password), 0o600),
		AgentPackage:        agentBin,
	}
	fast := bmc.IPMIOptions{Timeout: 300 * time.Millisecond, Retries: 1, Attempts: 2, Backoff: 50 * time.Millisecond}
	f.provider = sdk.TestProvider(t, New(Options{IPMI: fast, AgentSocket: filepath.Join(f.dir, "no-agent.sock")}))
	if err := f.provider.ValidateConfig(context.Background(), f.configJSON(t, nil)); err != nil {
		t.Fatalf("ValidateConfig: %v", err)
	}
	return f
}

func (f *fixture) configJSON(t *testing.T, change func(map[string]any)) json.RawMessage {
	t.Helper()
	b, _ := json.Marshal(f.config)
	var m map[string]any
	json.Unmarshal(b, &m)
	for k, v := range m {
		if v == "" {
			delete(m, k)
		}
	}
	if change != nil {
		change(m)
	}
	b, _ = json.Marshal(m)
	return b
}

func TestProviderOverSSHAndIPMI(t *testing.T) {
	f := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	p := f.provider
	gpu, worker, impostor := f.net.Hosts[0], f.net.Hosts[1], f.net.Hosts[2]

	info, err := p.Info(ctx)
	if err != nil || info.Name != "baremetal" {
		t.Fatalf("Info = %+v, %v", info, err)
	}
	ms, err := p.ListMachines(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 3 || ms[0].ProviderID != "gpu-01" || ms[0].Addresses[0] != gpu.Address {
		t.Fatalf("ListMachines = %+v", ms)
	}
	if want := map[string]string{"budfleet.io/group.gpu_nodes": "true", "gpu_type": "nvidia-a100"}; !reflect.DeepEqual(ms[0].Labels, want) {
		t.Errorf("gpu-01 labels %v, want %v", ms[0].Labels, want)
	}

	boot := sdk.Bootstrap{ControllerAddress: f.net.Gateway + ":7443", JoinToken: "bud1.a.b.c"}
	// By name.
	m, err := p.CreateMachine(ctx, sdk.MachineSpec{Name: "gpu-01"}, boot)
	if err != nil || m.ProviderID != "gpu-01" {
		t.Fatalf("CreateMachine gpu-01 = %+v, %v", m, err)
	}
	if _, err := os.Stat(filepath.Join(gpu.InstallRoot, "var/lib/bud-agent/enrollment")); err != nil {
		t.Errorf("gpu-01 not enrolled: %v", err)
	}
	// Again: left alone, and an error, so that the controller keeps one
	// record of the host.
	if _, err := p.CreateMachine(ctx, sdk.MachineSpec{Name: "gpu-01"}, boot); err == nil || !strings.Contains(err.Error(), "already enrolled (node node-gpu-01) and was left alone") {
		t.Errorf("CreateMachine gpu-01 again: %v", err)
	}
	// The next free host, of a group: the impostor is refused (its key),
	// so worker-01 is the one.
	m, err = p.CreateMachine(ctx, sdk.MachineSpec{Name: "baremetal", Options: json.RawMessage(`{"group":"k8s_workers"}`)}, boot)
	if err != nil || m.ProviderID != "worker-01" || m.Name != "worker-01" {
		t.Fatalf("CreateMachine next free worker = %+v, %v", m, err)
	}
	// None left: a clear error naming the skipped impostor.
	_, err = p.CreateMachine(ctx, sdk.MachineSpec{Name: "baremetal"}, boot)
	if err == nil || !strings.Contains(err.Error(), "no host in the inventory is free") || !strings.Contains(err.Error(), "impostor") {
		t.Errorf("CreateMachine with every host taken: %v", err)
	}
	// The impostor by name: refused, nothing on it.
	_, err = p.CreateMachine(ctx, sdk.MachineSpec{Name: "x", Options: json.RawMessage(`{"host":"impostor"}`)}, boot)
	if err == nil || !strings.Contains(err.Error(), "host key not trusted") {
		t.Errorf("CreateMachine impostor: %v", err)
	}
	if files := impostor.Files(); len(files) != 0 {
		t.Errorf("files on the impostor: %v", files)
	}
	for name, spec := range map[string]sdk.MachineSpec{
		"unknown spec key": {Name: "x", Options: json.RawMessage(`{"hots":"gpu-01"}`)},
		"unknown host":     {Name: "x", Options: json.RawMessage(`{"host":"nope"}`)},
	} {
		if _, err := p.CreateMachine(ctx, spec, boot); !errors.Is(err, sdk.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	if _, err := p.CreateMachine(ctx, sdk.MachineSpec{Name: "gpu-01"}, sdk.Bootstrap{ControllerAddress: "x:1", JoinToken: "t", AgentPackage: "https://example.invalid/agent"}); !errors.Is(err, sdk.ErrUnsupported) {
		t.Errorf("a URL agent package: %v, want ErrUnsupported", err)
	}

	// Power through IPMI: gpu-01's BMC from the credentials file,
	// worker-01's from its host vars.
	for _, host := range []string{"gpu-01", "worker-01"} {
		sim := f.bmcs[host]
		m, err := p.GetMachine(ctx, host)
		if err != nil || m.Power != sdk.PowerOff {
			t.Fatalf("%s: GetMachine = %+v, %v; want off", host, m, err)
		}
		if m, err = p.Power(ctx, host, sdk.PowerActionOn); err != nil || m.Power != sdk.PowerOn || sim.Power() != "on" {
			t.Fatalf("%s: power on = %+v, %v; simulator %s", host, m, err, sim.Power())
		}
		if m, err = p.Power(ctx, host, sdk.PowerActionReset); err != nil || m.Power != sdk.PowerOn {
			t.Fatalf("%s: reset = %+v, %v", host, m, err)
		}
		if m, err = p.Power(ctx, host, sdk.PowerActionOff); err != nil || m.Power != sdk.PowerOff || sim.Power() != "off" {
			t.Fatalf("%s: power off = %+v, %v; simulator %s", host, m, err, sim.Power())
		}
	}
	// pxe: a one-time network boot, then on (it was off).
	sim := f.bmcs["gpu-01"]
	if m, err = p.Power(ctx, "gpu-01", sdk.PowerActionPXE); err != nil || m.Power != sdk.PowerOn || sim.BootDevice() != "pxe" {
		t.Fatalf("pxe = %+v, %v; boot device %q", m, err, sim.BootDevice())
	}
	if out, err := sim.Ipmitool("chassis", "bootparam", "get", "5"); err != nil || !strings.Contains(out, "Force PXE") {
		t.Errorf("ipmitool bootparam: %q, %v", out, err)
	}
	if _, err := p.Power(ctx, "impostor", sdk.PowerActionOn); !errors.Is(err, sdk.ErrUnsupported) {
		t.Errorf("power of a host without a BMC: %v, want ErrUnsupported", err)
	}
	if _, err := p.Power(ctx, "nope", sdk.PowerActionOn); !errors.Is(err, sdk.ErrNotFound) {
		t.Errorf("power of an unknown host: %v, want ErrNotFound", err)
	}
	// A BMC that stopped answering: power fails saying so; get still
	// answers, power unknown.
	f.bmcs["worker-01"].Stop()
	if _, err := p.Power(ctx, "worker-01", sdk.PowerActionOn); err == nil || !strings.Contains(err.Error(), "BMC not answering") {
		t.Errorf("power with the BMC down: %v", err)
	}
	if m, err := p.GetMachine(ctx, "worker-01"); err != nil || m.Power != sdk.PowerUnknown {
		t.Errorf("get with the BMC down = %+v, %v", m, err)
	}
	if _, err := p.GetMachine(ctx, "nope"); !errors.Is(err, sdk.ErrNotFound) {
		t.Errorf("GetMachine(nope): %v", err)
	}

	// Delete: the agent and its files leave the host.
	if err := p.DeleteMachine(ctx, "worker-01"); err != nil {
		t.Fatal(err)
	}
	if files := worker.Files(); len(files) != 0 {
		t.Errorf("left on worker-01: %v", files)
	}
	if err := p.DeleteMachine(ctx, "not-in-inventory"); err != nil {
		t.Errorf("delete of a host gone from the inventory: %v", err)
	}
	// And worker-01 is free again.
	if m, err := p.CreateMachine(ctx, sdk.MachineSpec{Name: "baremetal"}, boot); err != nil || m.ProviderID != "worker-01" {
		t.Errorf("CreateMachine after the delete = %+v, %v", m, err)
	}
}

func TestValidateConfigRefusesBadConfig(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	broken := filepath.Join(f.dir, "broken.yml")
	os.WriteFile(broken, []byte("all:\n  hosts:\n    a: {ansible_host: 1.2.3.4\n"), 0o644)
	noAddr := filepath.Join(f.dir, "noaddr.yml")
	os.WriteFile(noAddr, []byte("all:\n  hosts:\n    a:\n"), 0o644)
	for name, tc := range map[string]struct {
		change func(map[string]any)
		want   string
	}{
		"unknown key":       {func(m map[string]any) { m["inventroy"] = "/x" }, "inventroy"},
		"no inventory":      {func(m map[string]any) { delete(m, "inventory") }, "inventory is required"},
		"relative path":     {func(m map[string]any) { m["inventory"] = "hosts.yml" }, "absolute path"},
		"syntax error":      {func(m map[string]any) { m["inventory"] = broken }, "broken.yml line"},
		"host with no addr": {func(m map[string]any) { m["inventory"] = noAddr }, "host a has no address"},
		"no known_hosts":    {func(m map[string]any) { m["known_hosts"] = filepath.Join(f.dir, "none") }, "known_hosts"},
		"no agent":          {func(m map[string]any) { m["agent_package"] = filepath.Join(f.dir, "none") }, "agent_package"},
		"no ssh key":        {func(m map[string]any) { delete(m, "ssh_key_file") }, ""},
	} {
		err := f.provider.ValidateConfig(ctx, f.configJSON(t, tc.change))
		if name == "no ssh key" {
			// With SSH_AUTH_SOCK set the agent may come up later: accepted
			// now, refused at the first dial.
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
			continue
		}
		if !errors.Is(err, sdk.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrInvalid with %q", name, err, tc.want)
		}
	}
}

func TestTargetFromHostVars(t *testing.T) {
	h := func(vars map[string]any) inventory.Host {
		return inventory.Host{Name: "n1", Address: "10.0.0.1", Port: 2200, User: "admin", Vars: vars}
	}
	got, err := target(h(map[string]any{"ansible_become": "yes", "budfleet_install_root": "/srv/n1", "ansible_ssh_private_key_file": "/k"}))
	want := sshenroll.Target{Name: "n1", Address: "10.0.0.1", Port: 2200, User: "admin", Become: true, InstallRoot: "/srv/n1", KeyFile: "/k"}
	if err != nil || got != want {
		t.Errorf("target = %+v, %v; want %+v", got, err, want)
	}
	for name, vars := range map[string]map[string]any{
		"local connection":      {"ansible_connection": "local"},
		"become with su":        {"ansible_become": true, "ansible_become_method": "su"},
		"relative install root": {"budfleet_install_root": "srv/n1"},
	} {
		if _, err := target(h(vars)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
