// Package vsphere is the vSphere provider plugin (bud-provider-vsphere): it
// clones machines from a template, sizes their CPUs, memory and disk,
// attaches them to a network, hands them GPUs (PCI passthrough or a vGPU
// profile), and injects a cloud-init bootstrap through
// guestinfo.userdata/metadata so that the agent installs and joins the
// fleet on first boot. It powers and deletes the VMs it made, and only
// those: each carries the extraConfig key budfleet.machine.
//
// Every call opens its own vCenter session and closes it, so a rotated
// password_file or a vCenter restart needs nothing from the controller.
package vsphere

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"sync"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/session"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/bud-ecosystem/budfleet/plugins/sdk"
	"github.com/bud-ecosystem/budfleet/version"
)

// keyMachine marks the VMs this provider made (extraConfig, not guestinfo:
// the guest has no need of it); its value is the machine's name.
const keyMachine = "budfleet.machine"

// Provider is the vSphere provider.
type Provider struct {
	mu  sync.Mutex
	cfg *Config
}

var _ sdk.Provider = (*Provider)(nil)

// New returns a provider waiting for its config.
func New() *Provider { return &Provider{} }

func (p *Provider) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: "vsphere", Version: version.Version}, nil
}

func (p *Provider) ValidateConfig(_ context.Context, raw json.RawMessage) error {
	cfg, err := parseConfig(raw)
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.cfg = &cfg
	p.mu.Unlock()
	return nil
}

func (p *Provider) config() (Config, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cfg == nil {
		return Config{}, errors.New("the vSphere provider has no config yet: ValidateConfig comes first")
	}
	return *p.cfg, nil
}

// vcSession is one call's vCenter session and the datacenter's objects.
type vcSession struct {
	cfg    Config
	c      *vim25.Client
	finder *find.Finder
	dc     *object.Datacenter
}

// connect logs in and finds the datacenter; close logs out.
func (p *Provider) connect(ctx context.Context) (*vcSession, func(), error) {
	cfg, err := p.config()
	if err != nil {
		return nil, nil, err
	}
	pw, err := cfg.password()
	if err != nil {
		return nil, nil, err
	}
	sc := soap.NewClient(cfg.url, cfg.Insecure)
	if cfg.CAFile != "" {
		if err := sc.SetRootCAs(cfg.CAFile); err != nil {
			return nil, nil, invalid("ca_file: %v", err)
		}
	}
	c, err := vim25.NewClient(ctx, sc)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to vCenter %s: %w (check url, ca_file, and that vCenter is reachable from the controller)", cfg.url, err)
	}
	sm := session.NewManager(c)
	if err := sm.Login(ctx, url.UserPassword(cfg.Username, pw)); err != nil {
		return nil, nil, fmt.Errorf("log in to vCenter %s as %s: %w (check username and password_file)", cfg.url, cfg.Username, err)
	}
	closeFn := func() { _ = sm.Logout(context.WithoutCancel(ctx)) }
	finder := find.NewFinder(c, false)
	dc, err := finder.Datacenter(ctx, cfg.Datacenter)
	if err != nil {
		closeFn()
		return nil, nil, invalid("datacenter %q: %v", cfg.Datacenter, err)
	}
	finder.SetDatacenter(dc)
	return &vcSession{cfg: cfg, c: c, finder: finder, dc: dc}, closeFn, nil
}

// vmProps are the properties a Machine is made of.
var vmProps = []string{"name", "config.extraConfig", "runtime.powerState", "guest.net", "guest.ipAddress"}

// machine makes a Machine of a VM; ok is false for a VM this provider did
// not make.
func machine(vm mo.VirtualMachine) (sdk.Machine, bool) {
	if vm.Config == nil {
		return sdk.Machine{}, false
	}
	ours := false
	for _, o := range vm.Config.ExtraConfig {
		if ov := o.GetOptionValue(); ov.Key == keyMachine {
			ours = true
		}
	}
	if !ours {
		return sdk.Machine{}, false
	}
	m := sdk.Machine{ProviderID: vm.Self.Value, Name: vm.Name}
	switch vm.Runtime.PowerState {
	case types.VirtualMachinePowerStatePoweredOn:
		m.Power = sdk.PowerOn
	case types.VirtualMachinePowerStatePoweredOff:
		m.Power = sdk.PowerOff
	case types.VirtualMachinePowerStateSuspended:
		m.Power = sdk.PowerOther
	}
	seen := map[string]bool{}
	add := func(ip string) {
		if ip != "" && !seen[ip] {
			seen[ip] = true
			m.Addresses = append(m.Addresses, ip)
		}
	}
	if vm.Guest != nil {
		add(vm.Guest.IpAddress)
		for _, n := range vm.Guest.Net {
			for _, ip := range n.IpAddress {
				add(ip)
			}
		}
	}
	return m, true
}

func (p *Provider) ListMachines(ctx context.Context) ([]sdk.Machine, error) {
	s, closeFn, err := p.connect(ctx)
	if err != nil {
		return nil, err
	}
	defer closeFn()
	v, err := view.NewManager(s.c).CreateContainerView(ctx, s.dc.Reference(), []string{"VirtualMachine"}, true)
	if err != nil {
		return nil, err
	}
	defer func() { _ = v.Destroy(context.WithoutCancel(ctx)) }()
	var vms []mo.VirtualMachine
	if err := v.Retrieve(ctx, []string{"VirtualMachine"}, vmProps, &vms); err != nil {
		return nil, fmt.Errorf("list the VMs of datacenter %s: %w", s.cfg.Datacenter, err)
	}
	var out []sdk.Machine
	for _, vm := range vms {
		if m, ok := machine(vm); ok {
			out = append(out, m)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// get returns the VM with providerID, which must be one this provider made.
func (s *vcSession) get(ctx context.Context, providerID string) (*object.VirtualMachine, sdk.Machine, error) {
	ref := types.ManagedObjectReference{Type: "VirtualMachine", Value: providerID}
	var vm mo.VirtualMachine
	if err := property.DefaultCollector(s.c).RetrieveOne(ctx, ref, vmProps, &vm); err != nil {
		if fault.Is(err, &types.ManagedObjectNotFound{}) {
			return nil, sdk.Machine{}, fmt.Errorf("%w: no VM %s in vCenter %s", sdk.ErrNotFound, providerID, s.cfg.url.Host)
		}
		return nil, sdk.Machine{}, fmt.Errorf("read VM %s: %w", providerID, err)
	}
	m, ok := machine(vm)
	if !ok {
		return nil, sdk.Machine{}, fmt.Errorf("%w: VM %s (%s) was not made by budfleet", sdk.ErrNotFound, providerID, vm.Name)
	}
	return object.NewVirtualMachine(s.c, ref), m, nil
}

func (p *Provider) GetMachine(ctx context.Context, providerID string) (sdk.Machine, error) {
	s, closeFn, err := p.connect(ctx)
	if err != nil {
		return sdk.Machine{}, err
	}
	defer closeFn()
	_, m, err := s.get(ctx, providerID)
	return m, err
}

func (p *Provider) DeleteMachine(ctx context.Context, providerID string) error {
	s, closeFn, err := p.connect(ctx)
	if err != nil {
		return err
	}
	defer closeFn()
	vm, m, err := s.get(ctx, providerID)
	if errors.Is(err, sdk.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return destroy(ctx, vm, m.Power == sdk.PowerOn)
}

// destroy powers a VM off when it is on, then deletes it and its disks.
func destroy(ctx context.Context, vm *object.VirtualMachine, on bool) error {
	if on {
		if err := wait(ctx, vm.PowerOff); err != nil && !fault.Is(err, &types.InvalidPowerState{}) {
			return fmt.Errorf("power off VM %s: %w", vm.Reference().Value, err)
		}
	}
	if err := wait(ctx, vm.Destroy); err != nil {
		return fmt.Errorf("destroy VM %s: %w", vm.Reference().Value, err)
	}
	return nil
}

func wait(ctx context.Context, start func(context.Context) (*object.Task, error)) error {
	task, err := start(ctx)
	if err != nil {
		return err
	}
	return task.Wait(ctx)
}

func (p *Provider) Power(ctx context.Context, providerID string, action sdk.PowerAction) (sdk.Machine, error) {
	if action == sdk.PowerActionPXE {
		return sdk.Machine{}, fmt.Errorf("%w: vSphere machines are cloned from a template and do not boot from the network on request; use reset", sdk.ErrUnsupported)
	}
	s, closeFn, err := p.connect(ctx)
	if err != nil {
		return sdk.Machine{}, err
	}
	defer closeFn()
	vm, _, err := s.get(ctx, providerID)
	if err != nil {
		return sdk.Machine{}, err
	}
	op := map[sdk.PowerAction]func(context.Context) (*object.Task, error){
		sdk.PowerActionOn:    vm.PowerOn,
		sdk.PowerActionOff:   vm.PowerOff,
		sdk.PowerActionReset: vm.Reset,
	}[action]
	if op == nil {
		return sdk.Machine{}, fmt.Errorf("%w: power action %q", sdk.ErrInvalid, action)
	}
	// Powering on a VM that is on, or off one that is off, is done.
	if err := wait(ctx, op); err != nil && !fault.Is(err, &types.InvalidPowerState{}) {
		return sdk.Machine{}, fmt.Errorf("power %s VM %s: %w", action, providerID, err)
	}
	_, m, err := s.get(ctx, providerID)
	return m, err
}

func (p *Provider) CreateMachine(ctx context.Context, ms sdk.MachineSpec, boot sdk.Bootstrap) (sdk.Machine, error) {
	cfg, err := p.config()
	if err != nil {
		return sdk.Machine{}, err
	}
	spec, err := cfg.spec(ms.Options)
	if err != nil {
		return sdk.Machine{}, err
	}
	extra, err := guestInfo(ms.Name, boot)
	if err != nil {
		return sdk.Machine{}, err
	}
	extra[keyMachine] = ms.Name
	s, closeFn, err := p.connect(ctx)
	if err != nil {
		return sdk.Machine{}, err
	}
	defer closeFn()
	place, err := s.placement(ctx)
	if err != nil {
		return sdk.Machine{}, err
	}
	if existing, err := s.finder.VirtualMachine(ctx, place.folder.InventoryPath+"/"+ms.Name); err == nil {
		return sdk.Machine{}, invalid("a VM named %s is already in folder %s (%s): pick another name", ms.Name, place.folder.InventoryPath, existing.Reference().Value)
	}
	devices, err := place.template.Device(ctx)
	if err != nil {
		return sdk.Machine{}, fmt.Errorf("read the devices of template %s: %w", s.cfg.Template, err)
	}
	change, err := s.deviceChanges(ctx, devices, spec)
	if err != nil {
		return sdk.Machine{}, err
	}
	pool, ds := place.pool.Reference(), place.datastore.Reference()
	task, err := place.template.Clone(ctx, place.folder, ms.Name, types.VirtualMachineCloneSpec{
		Location: types.VirtualMachineRelocateSpec{Pool: &pool, Datastore: &ds},
	})
	if err != nil {
		return sdk.Machine{}, fmt.Errorf("clone template %s: %w", s.cfg.Template, err)
	}
	info, err := task.WaitForResult(ctx)
	if err != nil {
		return sdk.Machine{}, fmt.Errorf("clone template %s as %s: %w", s.cfg.Template, ms.Name, err)
	}
	vm := object.NewVirtualMachine(s.c, info.Result.(types.ManagedObjectReference))
	// From here a failure leaves no VM behind: the clone goes.
	if err := configure(ctx, vm, spec, change, extra); err != nil {
		if derr := destroy(context.WithoutCancel(ctx), vm, false); derr != nil {
			return sdk.Machine{}, fmt.Errorf("%w; and the clone %s could not be removed: %v", err, vm.Reference().Value, derr)
		}
		return sdk.Machine{}, err
	}
	_, m, err := s.get(ctx, vm.Reference().Value)
	return m, err
}

// configure sizes the clone, gives it its devices and bootstrap, and
// powers it on.
func configure(ctx context.Context, vm *object.VirtualMachine, spec Spec, change []types.BaseVirtualDeviceConfigSpec, extra map[string]string) error {
	cs := types.VirtualMachineConfigSpec{
		NumCPUs:      int32(spec.CPUs),
		MemoryMB:     int64(spec.MemoryMB),
		DeviceChange: change,
	}
	keys := make([]string, 0, len(extra))
	for k := range extra {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		cs.ExtraConfig = append(cs.ExtraConfig, &types.OptionValue{Key: k, Value: extra[k]})
	}
	if len(spec.PCIPassthrough) > 0 || spec.VGPUProfile != "" {
		// vSphere powers on a VM with a passthrough device only with all
		// its memory reserved.
		locked := true
		cs.MemoryReservationLockedToMax = &locked
	}
	if err := wait(ctx, func(ctx context.Context) (*object.Task, error) { return vm.Reconfigure(ctx, cs) }); err != nil {
		return fmt.Errorf("configure VM %s: %w", vm.Reference().Value, err)
	}
	if err := wait(ctx, vm.PowerOn); err != nil {
		return fmt.Errorf("power on VM %s: %w", vm.Reference().Value, err)
	}
	return nil
}

type placement struct {
	template  *object.VirtualMachine
	folder    *object.Folder
	pool      *object.ResourcePool
	datastore *object.Datastore
}

// placement finds what the config names; what is not found is the
// config's to change, so it is ErrInvalid and nothing is made.
func (s *vcSession) placement(ctx context.Context) (placement, error) {
	var pl placement
	var err error
	if pl.template, err = s.finder.VirtualMachine(ctx, s.cfg.Template); err != nil {
		return pl, invalid("template %q: %v (set template to a VM or template of datacenter %s)", s.cfg.Template, err, s.cfg.Datacenter)
	}
	if s.cfg.Folder == "" {
		pl.folder, err = s.finder.DefaultFolder(ctx)
	} else {
		pl.folder, err = s.finder.Folder(ctx, s.cfg.Folder)
	}
	if err != nil {
		return pl, invalid("folder %q: %v", s.cfg.Folder, err)
	}
	if s.cfg.ResourcePool == "" {
		pl.pool, err = s.finder.DefaultResourcePool(ctx)
	} else {
		pl.pool, err = s.finder.ResourcePool(ctx, s.cfg.ResourcePool)
	}
	if err != nil {
		return pl, invalid("resource_pool %q: %v", s.cfg.ResourcePool, err)
	}
	if s.cfg.Datastore == "" {
		pl.datastore, err = s.finder.DefaultDatastore(ctx)
	} else {
		pl.datastore, err = s.finder.Datastore(ctx, s.cfg.Datastore)
	}
	if err != nil {
		return pl, invalid("datastore %q: %v", s.cfg.Datastore, err)
	}
	return pl, nil
}

// deviceChanges grows the template's first disk to the spec's size, puts
// its first network card (or a new vmxnet3) on the configured network, and
// adds the GPUs.
func (s *vcSession) deviceChanges(ctx context.Context, devices object.VirtualDeviceList, spec Spec) ([]types.BaseVirtualDeviceConfigSpec, error) {
	var change []types.BaseVirtualDeviceConfigSpec
	disks := devices.SelectByType((*types.VirtualDisk)(nil))
	if len(disks) == 0 {
		return nil, invalid("template %s has no disk", s.cfg.Template)
	}
	disk := disks[0].(*types.VirtualDisk)
	want := int64(spec.DiskGB) << 20 // KiB
	if want < disk.CapacityInKB {
		return nil, invalid("disk_gb %d is smaller than the template's disk (%d GiB): disks only grow", spec.DiskGB, disk.CapacityInKB>>20)
	}
	disk.CapacityInKB, disk.CapacityInBytes = want, want<<10
	change = append(change, &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationEdit, Device: disk})

	if s.cfg.Network != "" {
		net, err := s.finder.Network(ctx, s.cfg.Network)
		if err != nil {
			return nil, invalid("network %q: %v", s.cfg.Network, err)
		}
		backing, err := net.EthernetCardBackingInfo(ctx)
		if err != nil {
			return nil, fmt.Errorf("network %s: %w", s.cfg.Network, err)
		}
		if nics := devices.SelectByType((*types.VirtualEthernetCard)(nil)); len(nics) > 0 {
			nic := nics[0]
			nic.GetVirtualDevice().Backing = backing
			change = append(change, &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationEdit, Device: nic})
		} else {
			nic, err := object.EthernetCardTypes().CreateEthernetCard("vmxnet3", backing)
			if err != nil {
				return nil, err
			}
			change = append(change, &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd, Device: nic})
		}
	}

	key := int32(-100)
	for _, d := range spec.PCIPassthrough {
		vendor, _ := vendorID(d.VendorID) // checked by Spec.check
		key--
		change = append(change, &types.VirtualDeviceConfigSpec{
			Operation: types.VirtualDeviceConfigSpecOperationAdd,
			Device: &types.VirtualPCIPassthrough{VirtualDevice: types.VirtualDevice{
				Key: key,
				Backing: &types.VirtualPCIPassthroughDeviceBackingInfo{
					Id: d.ID, DeviceId: d.DeviceID, SystemId: d.SystemID, VendorId: vendor,
				},
			}},
		})
	}
	if spec.VGPUProfile != "" {
		key--
		change = append(change, &types.VirtualDeviceConfigSpec{
			Operation: types.VirtualDeviceConfigSpecOperationAdd,
			Device: &types.VirtualPCIPassthrough{VirtualDevice: types.VirtualDevice{
				Key:     key,
				Backing: &types.VirtualPCIPassthroughVmiopBackingInfo{Vgpu: spec.VGPUProfile},
			}},
		})
	}
	return change, nil
}
