package vsphere_test

import (
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/bud-ecosystem/budfleet/plugins/sdk"
	"github.com/bud-ecosystem/budfleet/plugins/vsphere"
)

// vcsim is a govmomi simulator (VPX: datacenter DC0, cluster DC0_C0,
// datastore LocalDS_0, network "VM Network", VMs DC0_H0_VM0...) served over
// TLS on loopback with a real password.
type vcsim struct {
	srv    *simulator.Server
	caFile string
	config map[string]any
}

func newVCSim(t *testing.T) *vcsim {
	t.Helper()
	m := simulator.VPX()
	if err := m.Create(); err != nil {
		t.Fatal(err)
	}
	m.Service.TLS = new(tls.Config)
	m.Service.Listen = &url.URL{Host: "127.0.0.1:0", User: url.UserPassword("svc-budfleet", "s3cret")}
	srv := m.Service.NewServer()
	t.Cleanup(func() { srv.Close(); m.Remove() })
	caFile, err := srv.CertificateFile()
	if err != nil {
		t.Fatal(err)
	}
	pwFile := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pwFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return &vcsim{srv: srv, caFile: caFile, config: map[string]any{
		"url":           "https://" + srv.URL.Host + "/sdk",
		"username":      "svc-budfleet",
		"password_file": pwFile,
		"ca_file":       caFile,
		"datacenter":    "DC0",
		"template":      "DC0_H0_VM0",
		"resource_pool": "/DC0/host/DC0_C0/Resources",
		"datastore":     "LocalDS_0",
		"folder":        "/DC0/vm",
		"network":       "DC0_DVPG0",
	}}
}

// provider is the vSphere provider behind the SDK's real gRPC adapters,
// configured with cfg.
func (v *vcsim) provider(t *testing.T, cfg map[string]any) sdk.Provider {
	t.Helper()
	p := sdk.TestProvider(t, vsphere.New())
	raw, _ := json.Marshal(cfg)
	if err := p.ValidateConfig(t.Context(), raw); err != nil {
		t.Fatal(err)
	}
	return p
}

func (v *vcsim) with(changes map[string]any) map[string]any {
	out := map[string]any{}
	for k, val := range v.config {
		out[k] = val
	}
	for k, val := range changes {
		if val == nil {
			delete(out, k)
		} else {
			out[k] = val
		}
	}
	return out
}

// vms reads every VM of the simulator, as an independent client sees them.
func (v *vcsim) vms(t *testing.T) map[string]mo.VirtualMachine {
	t.Helper()
	ctx := t.Context()
	c, err := govmomi.NewClient(ctx, v.srv.URL, true)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Logout(ctx)
	cv, err := view.NewManager(c.Client).CreateContainerView(ctx, c.ServiceContent.RootFolder, []string{"VirtualMachine"}, true)
	if err != nil {
		t.Fatal(err)
	}
	var vms []mo.VirtualMachine
	if err := cv.Retrieve(ctx, []string{"VirtualMachine"}, []string{"name", "config", "runtime.powerState", "resourcePool", "datastore"}, &vms); err != nil {
		t.Fatal(err)
	}
	out := map[string]mo.VirtualMachine{}
	for _, vm := range vms {
		out[vm.Name] = vm
	}
	return out
}

func extraConfig(vm mo.VirtualMachine) map[string]string {
	out := map[string]string{}
	for _, o := range vm.Config.ExtraConfig {
		ov := o.GetOptionValue()
		s, _ := ov.Value.(string)
		out[ov.Key] = s
	}
	return out
}

var boot = sdk.Bootstrap{
	ControllerAddress: "ctl.dc1.example:7443",
	CAPin:             "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
	JoinToken:         "bud1.9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08.0123456789ab.secret",
	AgentPackage:      "https://repo.dc1.example/bud-agent_1.0_amd64.deb",
}

// A machine is a clone of the template with the spec's CPUs, memory and
// disk on the configured network, placed in the pool, datastore and folder,
// with the bootstrap in guestinfo, powered on.
func TestCreateMachine(t *testing.T) {
	v := newVCSim(t)
	p := v.provider(t, v.config)
	before := len(v.vms(t))
	m, err := p.CreateMachine(t.Context(), sdk.MachineSpec{Name: "k8s-worker-1", Options: json.RawMessage(`{"cpus": 4}`)}, boot)
	if err != nil {
		t.Fatal(err)
	}
	if m.Name != "k8s-worker-1" || !strings.HasPrefix(m.ProviderID, "vm-") || m.Power != sdk.PowerOn {
		t.Fatalf("machine = %+v", m)
	}
	vms := v.vms(t)
	if len(vms) != before+1 {
		t.Fatalf("%d VMs after one create, had %d", len(vms), before)
	}
	vm := vms["k8s-worker-1"]
	if vm.Self.Value != m.ProviderID || vm.Config.Hardware.NumCPU != 4 || vm.Config.Hardware.MemoryMB != vsphere.DefaultMemoryMB || vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn {
		t.Errorf("VM: id %s, %d CPUs, %d MB, %s", vm.Self.Value, vm.Config.Hardware.NumCPU, vm.Config.Hardware.MemoryMB, vm.Runtime.PowerState)
	}
	var disk *types.VirtualDisk
	var nicNetwork string
	for _, d := range vm.Config.Hardware.Device {
		switch d := d.(type) {
		case *types.VirtualDisk:
			disk = d
		case types.BaseVirtualEthernetCard:
			if b, ok := d.GetVirtualEthernetCard().Backing.(*types.VirtualEthernetCardDistributedVirtualPortBackingInfo); ok {
				nicNetwork = b.Port.PortgroupKey
			}
		}
	}
	if disk == nil || disk.CapacityInKB != int64(vsphere.DefaultDiskGB)<<20 {
		t.Errorf("disk = %+v, want %d GiB", disk, vsphere.DefaultDiskGB)
	}
	if nicNetwork == "" {
		t.Error("the network card is not on the DC0_DVPG0 port group")
	}
	if vm.ResourcePool == nil || len(vm.Datastore) != 1 {
		t.Errorf("placement: pool %v, datastores %v", vm.ResourcePool, vm.Datastore)
	}
	ec := extraConfig(vm)
	if ec["guestinfo.userdata.encoding"] != "base64" || ec["guestinfo.metadata.encoding"] != "base64" || ec["budfleet.machine"] != "k8s-worker-1" {
		t.Errorf("extraConfig = %v", ec)
	}
	ud, err := base64.StdEncoding.DecodeString(ec["guestinfo.userdata"])
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"#cloud-config\n", boot.JoinToken, "path: /etc/budfleet/join-token", "permissions: \"0600\"",
		"curl -fsSL --retry 5 -o '/var/tmp/bud-agent_1.0_amd64.deb' '" + boot.AgentPackage + "'",
		"dpkg -i '/var/tmp/bud-agent_1.0_amd64.deb'",
		"bud-agent join --controller 'ctl.dc1.example:7443' --token-file /etc/budfleet/join-token --hostname 'k8s-worker-1'",
		"systemctl enable --now bud-agent"} {
		if !strings.Contains(string(ud), want) {
			t.Errorf("user data lacks %q:\n%s", want, ud)
		}
	}
	md, _ := base64.StdEncoding.DecodeString(ec["guestinfo.metadata"])
	if !strings.Contains(string(md), "local-hostname: k8s-worker-1") || !strings.Contains(string(md), "instance-id: k8s-worker-1") {
		t.Errorf("metadata = %s", md)
	}

	// Listed (and only budfleet's VMs are), and got by id.
	list, err := p.ListMachines(t.Context())
	if err != nil || len(list) != 1 || list[0].ProviderID != m.ProviderID {
		t.Fatalf("ListMachines = %+v, %v", list, err)
	}
	if got, err := p.GetMachine(t.Context(), m.ProviderID); err != nil || got.Name != "k8s-worker-1" {
		t.Fatalf("GetMachine = %+v, %v", got, err)
	}
	// The same name again is refused, and nothing is made.
	if _, err := p.CreateMachine(t.Context(), sdk.MachineSpec{Name: "k8s-worker-1"}, boot); !errors.Is(err, sdk.ErrInvalid) || !strings.Contains(err.Error(), "already in folder") {
		t.Fatalf("a taken name = %v", err)
	}
	if n := len(v.vms(t)); n != before+1 {
		t.Errorf("%d VMs after a refused create", n)
	}
}

// GPUs: whole devices by PCI passthrough and a vGPU profile; their VM has
// all its memory reserved.
func TestCreateMachineWithGPUs(t *testing.T) {
	v := newVCSim(t)
	p := v.provider(t, v.with(map[string]any{"cpus": 16, "memory_mb": 65536, "disk_gb": 100}))
	_, err := p.CreateMachine(t.Context(), sdk.MachineSpec{Name: "gpu-1", Options: json.RawMessage(`{
		"memory_mb": 131072,
		"pci_passthrough": [{"id": "0000:3b:00.0", "device_id": "0x20b5", "vendor_id": "0x10de", "system_id": "5f0c9c3e"}],
		"vgpu_profile": "grid_a100-40c"}`)}, boot)
	if err != nil {
		t.Fatal(err)
	}
	vm := v.vms(t)["gpu-1"]
	if vm.Config.Hardware.NumCPU != 16 || vm.Config.Hardware.MemoryMB != 131072 {
		t.Errorf("%d CPUs, %d MB", vm.Config.Hardware.NumCPU, vm.Config.Hardware.MemoryMB)
	}
	var pci, vgpu bool
	for _, d := range vm.Config.Hardware.Device {
		if d, ok := d.(*types.VirtualPCIPassthrough); ok {
			switch b := d.Backing.(type) {
			case *types.VirtualPCIPassthroughDeviceBackingInfo:
				pci = b.Id == "0000:3b:00.0" && b.DeviceId == "0x20b5" && b.VendorId == 0x10de && b.SystemId == "5f0c9c3e"
			case *types.VirtualPCIPassthroughVmiopBackingInfo:
				vgpu = b.Vgpu == "grid_a100-40c"
			}
		}
	}
	if !pci || !vgpu {
		t.Errorf("passthrough device %v, vGPU %v", pci, vgpu)
	}
	if r := vm.Config.MemoryReservationLockedToMax; r == nil || !*r {
		t.Error("memory is not reserved for the passthrough devices")
	}
}

func TestDeleteAndPower(t *testing.T) {
	v := newVCSim(t)
	p := v.provider(t, v.config)
	before := len(v.vms(t))
	m, err := p.CreateMachine(t.Context(), sdk.MachineSpec{Name: "w1"}, boot)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		action sdk.PowerAction
		want   sdk.PowerState
	}{{sdk.PowerActionOff, sdk.PowerOff}, {sdk.PowerActionOff, sdk.PowerOff}, {sdk.PowerActionOn, sdk.PowerOn}, {sdk.PowerActionReset, sdk.PowerOn}} {
		got, err := p.Power(t.Context(), m.ProviderID, c.action)
		if err != nil || got.Power != c.want {
			t.Fatalf("Power(%s) = %+v, %v", c.action, got, err)
		}
	}
	if _, err := p.Power(t.Context(), m.ProviderID, sdk.PowerActionPXE); !errors.Is(err, sdk.ErrUnsupported) {
		t.Fatalf("Power(pxe) = %v", err)
	}
	if err := p.DeleteMachine(t.Context(), m.ProviderID); err != nil {
		t.Fatal(err)
	}
	if _, ok := v.vms(t)["w1"]; ok || len(v.vms(t)) != before {
		t.Fatal("the VM is still there after its delete")
	}
	if err := p.DeleteMachine(t.Context(), m.ProviderID); err != nil {
		t.Fatalf("deleting a deleted machine = %v", err)
	}
	if _, err := p.GetMachine(t.Context(), m.ProviderID); !errors.Is(err, sdk.ErrNotFound) {
		t.Fatalf("GetMachine after delete = %v", err)
	}
	// A VM budfleet did not make is not its to power or delete.
	other := v.vms(t)["DC0_H0_VM0"].Self.Value
	if _, err := p.Power(t.Context(), other, sdk.PowerActionOff); !errors.Is(err, sdk.ErrNotFound) || !strings.Contains(err.Error(), "not made by budfleet") {
		t.Fatalf("Power of another VM = %v", err)
	}
	if err := p.DeleteMachine(t.Context(), other); err != nil {
		t.Fatal(err)
	}
	if _, ok := v.vms(t)["DC0_H0_VM0"]; !ok {
		t.Fatal("DeleteMachine removed a VM budfleet did not make")
	}
}

// What is wrong is said, and nothing is made.
func TestCreateMachineErrors(t *testing.T) {
	v := newVCSim(t)
	before := len(v.vms(t))
	badPW := filepath.Join(t.TempDir(), "bad")
	if err := os.WriteFile(badPW, []byte("wrong"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name     string
		cfg      map[string]any
		spec     string
		sentinel error
		want     string
	}{
		{"bad password", v.with(map[string]any{"password_file": badPW}), "", nil, "log in to vCenter https://" + v.srv.URL.Host + "/sdk as svc-budfleet"},
		{"unknown template", v.with(map[string]any{"template": "ubuntu-nope"}), "", sdk.ErrInvalid, `template "ubuntu-nope"`},
		{"unknown network", v.with(map[string]any{"network": "nope-net"}), "", sdk.ErrInvalid, `network "nope-net"`},
		{"unknown pool", v.with(map[string]any{"resource_pool": "/DC0/host/nope/Resources"}), "", sdk.ErrInvalid, `resource_pool "/DC0/host/nope/Resources"`},
		{"unreachable", v.with(map[string]any{"url": "https://127.0.0.1:1/sdk"}), "", nil, "connect to vCenter https://127.0.0.1:1/sdk"},
		{"unverified TLS", v.with(map[string]any{"ca_file": nil}), "", nil, "certificate"},
		{"bad spec key", v.config, `{"cpu": 4}`, sdk.ErrInvalid, `unknown field "cpu"`},
		{"small disk", v.config, `{"disk_gb": 0}`, sdk.ErrInvalid, "disk_gb 0"},
		{"bad vendor", v.config, `{"pci_passthrough": [{"id": "0000:3b:00.0", "device_id": "0x20b5", "vendor_id": "nvidia"}]}`, sdk.ErrInvalid, "16-bit hex"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := v.provider(t, c.cfg)
			_, err := p.CreateMachine(t.Context(), sdk.MachineSpec{Name: "w-" + strings.ReplaceAll(c.name, " ", "-"), Options: json.RawMessage(c.spec)}, boot)
			if err == nil || !strings.Contains(err.Error(), c.want) || (c.sentinel != nil && !errors.Is(err, c.sentinel)) {
				t.Fatalf("CreateMachine = %v, want an error saying %q", err, c.want)
			}
			if n := len(v.vms(t)); n != before {
				t.Fatalf("%d VMs after a failed create, had %d", n, before)
			}
		})
	}
	// insecure: true skips the check, as asked.
	p := v.provider(t, v.with(map[string]any{"ca_file": nil, "insecure": true}))
	if _, err := p.ListMachines(t.Context()); err != nil {
		t.Fatalf("ListMachines with insecure: true = %v", err)
	}
}

func TestValidateConfig(t *testing.T) {
	v := newVCSim(t)
	p := sdk.TestProvider(t, vsphere.New())
	for _, c := range []struct {
		cfg  map[string]any
		want string
	}{
		{v.with(map[string]any{"passwd_file": "x"}), `unknown field "passwd_file"`},
		{v.with(map[string]any{"url": nil, "template": nil}), "needs url, template"},
		{v.with(map[string]any{"url": "http://vc/sdk"}), "over https only"},
		{v.with(map[string]any{"insecure": true}), "exclude each other"},
		{v.with(map[string]any{"password_file": "/nonexistent"}), "password_file: open /nonexistent"},
		{v.with(map[string]any{"ca_file": "/etc/hostname"}), "holds no PEM certificate"},
		{v.with(map[string]any{"memory_mb": 1000001}), "memory_mb 1000001"},
	} {
		raw, _ := json.Marshal(c.cfg)
		err := p.ValidateConfig(t.Context(), raw)
		if !errors.Is(err, sdk.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ValidateConfig(%v) = %v, want %q", c.cfg, err, c.want)
		}
	}
	if info, err := p.Info(t.Context()); err != nil || info.Name != "vsphere" {
		t.Fatalf("Info = %+v, %v", info, err)
	}
}
