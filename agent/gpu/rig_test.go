//go:build cgo

package gpu

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh200"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
)

// rigModel is one go-nvml mock server and what the test expects of it.
type rigModel struct {
	name      string
	newServer func() *server.Server
	arch      string
	cc        string
	deviceID  string
	limitW    float64
	links     int
	mig1g     string // name of the 1-slice GPU instance profile
}

var rigModels = []rigModel{
	{"dgxa100", dgxa100.New, "Ampere", "8.0", "0x20b010de", 400, 12, "1g.5gb"},
	{"dgxh100", dgxh100.New, "Hopper", "9.0", "0x233010de", 700, 18, "1g.10gb"},
	{"dgxh200", dgxh200.New, "Hopper", "9.0", "0x233310de", 700, 18, "1g.18gb"},
}

// gpuState is what the rig's health funcs answer for one GPU.
type gpuState struct {
	tempC          uint32
	powerMW        uint32
	util           nvml.Utilization
	ecc            [2][2]uint64
	retiredPending bool
	remapPending   bool
	remapFailed    bool
	clocks         uint64
	lost           bool
}

// rig is a go-nvml mock server whose missing funcs the test fills in.
type rig struct {
	t      testing.TB
	model  rigModel
	srv    *server.Server
	devs   []*server.Device
	set    *mock.EventSet
	events chan nvml.EventData

	mu   sync.Mutex
	st   []*gpuState
	migs map[*server.Device][]*mock.Device
}

var rigFixedNow = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func rigOptions() Options {
	return Options{Logger: quietLogger(), Now: func() time.Time { return rigFixedNow }, eventWait: 10 * time.Millisecond}
}

func rigBusID(i int) string { return fmt.Sprintf("0000:%02x:00.0", 0x10+i*0x10) }

func newRig(t testing.TB, m rigModel) *rig {
	t.Helper()
	r := &rig{t: t, model: m, srv: m.newServer(), events: make(chan nvml.EventData, 128), migs: map[*server.Device][]*mock.Device{}}
	r.set = &mock.EventSet{
		WaitFunc: func(ms uint32) (nvml.EventData, nvml.Return) {
			select {
			case e := <-r.events:
				return e, nvml.SUCCESS
			case <-time.After(time.Duration(ms) * time.Millisecond):
				return nvml.EventData{}, nvml.ERROR_TIMEOUT
			}
		},
		FreeFunc: func() nvml.Return { return nvml.SUCCESS },
	}
	r.srv.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) { return r.set, nvml.SUCCESS }
	byIndex := r.srv.DeviceGetHandleByIndexFunc
	r.srv.DeviceGetHandleByIndexFunc = func(i int) (nvml.Device, nvml.Return) {
		if i >= 0 && i < len(r.st) && r.state(i).lost {
			return nil, nvml.ERROR_GPU_IS_LOST
		}
		return byIndex(i)
	}
	for i, d := range r.srv.Devices {
		sd := d.(*server.Device)
		r.devs = append(r.devs, sd)
		r.st = append(r.st, &gpuState{tempC: 35, powerMW: 80000, clocks: 0x1})
		r.fill(i, sd)
	}
	return r
}

// state returns GPU i's state; callers read it under r.mu.
func (r *rig) state(i int) gpuState {
	r.mu.Lock()
	defer r.mu.Unlock()
	return *r.st[i]
}

// set changes GPU i's state.
func (r *rig) update(i int, f func(*gpuState)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f(r.st[i])
}

// lostOr answers GPU_IS_LOST for a lost GPU, else ret.
func (r *rig) lostOr(i int, ret nvml.Return) nvml.Return {
	if r.state(i).lost {
		return nvml.ERROR_GPU_IS_LOST
	}
	return ret
}

func (r *rig) fill(i int, d *server.Device) {
	m := r.model
	d.PciBusID = rigBusID(i)
	n := len(r.srv.Devices)

	// Wrap the funcs the server sets so a lost GPU answers GPU_IS_LOST.
	uuid, name, brand, arch, cc, mem, mig := d.GetUUIDFunc, d.GetNameFunc, d.GetBrandFunc, d.GetArchitectureFunc, d.GetCudaComputeCapabilityFunc, d.GetMemoryInfoFunc, d.GetMigModeFunc
	d.GetUUIDFunc = func() (string, nvml.Return) { v, ret := uuid(); return v, r.lostOr(i, ret) }
	d.GetNameFunc = func() (string, nvml.Return) { v, ret := name(); return v, r.lostOr(i, ret) }
	d.GetBrandFunc = func() (nvml.BrandType, nvml.Return) { v, ret := brand(); return v, r.lostOr(i, ret) }
	d.GetArchitectureFunc = func() (nvml.DeviceArchitecture, nvml.Return) { v, ret := arch(); return v, r.lostOr(i, ret) }
	d.GetCudaComputeCapabilityFunc = func() (int, int, nvml.Return) { a, b, ret := cc(); return a, b, r.lostOr(i, ret) }
	d.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) { v, ret := mem(); return v, r.lostOr(i, ret) }
	d.GetMigModeFunc = func() (int, int, nvml.Return) { a, b, ret := mig(); return a, b, r.lostOr(i, ret) }

	d.GetSerialFunc = func() (string, nvml.Return) {
		return fmt.Sprintf("16549220%05d", i), r.lostOr(i, nvml.SUCCESS)
	}
	d.GetBAR1MemoryInfoFunc = func() (nvml.BAR1Memory, nvml.Return) {
		return nvml.BAR1Memory{Bar1Total: 128 << 30}, r.lostOr(i, nvml.SUCCESS)
	}
	d.GetPciInfoFunc = func() (nvml.PciInfo, nvml.Return) {
		return pciInfo(d.PciBusID, d.Config.PciDeviceId), r.lostOr(i, nvml.SUCCESS)
	}
	d.GetPersistenceModeFunc = func() (nvml.EnableState, nvml.Return) {
		return nvml.FEATURE_ENABLED, r.lostOr(i, nvml.SUCCESS)
	}
	d.GetPowerManagementLimitFunc = func() (uint32, nvml.Return) {
		return uint32(m.limitW * 1000), r.lostOr(i, nvml.SUCCESS)
	}
	d.GetNvLinkStateFunc = func(l int) (nvml.EnableState, nvml.Return) {
		if l >= m.links {
			return 0, nvml.ERROR_INVALID_ARGUMENT
		}
		return nvml.FEATURE_ENABLED, r.lostOr(i, nvml.SUCCESS)
	}
	d.GetNvLinkRemotePciInfoFunc = func(l int) (nvml.PciInfo, nvml.Return) {
		peer := (i + 1 + l%(n-1)) % n
		return pciInfo(rigBusID(peer), d.Config.PciDeviceId), r.lostOr(i, nvml.SUCCESS)
	}
	d.GetTemperatureFunc = func(s nvml.TemperatureSensors) (uint32, nvml.Return) {
		st := r.state(i)
		return st.tempC, r.lostOr(i, nvml.SUCCESS)
	}
	d.GetPowerUsageFunc = func() (uint32, nvml.Return) { return r.state(i).powerMW, r.lostOr(i, nvml.SUCCESS) }
	d.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) {
		return r.state(i).util, r.lostOr(i, nvml.SUCCESS)
	}
	d.GetTotalEccErrorsFunc = func(t nvml.MemoryErrorType, c nvml.EccCounterType) (uint64, nvml.Return) {
		return r.state(i).ecc[t][c], r.lostOr(i, nvml.SUCCESS)
	}
	d.GetRetiredPagesPendingStatusFunc = func() (nvml.EnableState, nvml.Return) {
		if r.state(i).retiredPending {
			return nvml.FEATURE_ENABLED, r.lostOr(i, nvml.SUCCESS)
		}
		return nvml.FEATURE_DISABLED, r.lostOr(i, nvml.SUCCESS)
	}
	d.GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) {
		st := r.state(i)
		return 0, 0, st.remapPending, st.remapFailed, r.lostOr(i, nvml.SUCCESS)
	}
	d.GetCurrentClocksEventReasonsFunc = func() (uint64, nvml.Return) {
		return r.state(i).clocks, r.lostOr(i, nvml.SUCCESS)
	}
	d.GetCurrentClocksThrottleReasonsFunc = d.GetCurrentClocksEventReasonsFunc
	d.RegisterEventsFunc = func(types uint64, set nvml.EventSet) nvml.Return { return r.lostOr(i, nvml.SUCCESS) }

	// MIG device handles: the mock creates GPU and compute instances but
	// has no funcs to reach them from a MIG device; createMIG builds those.
	d.GetMaxMigDeviceCountFunc = func() (int, nvml.Return) { return 7, r.lostOr(i, nvml.SUCCESS) }
	d.GetMigDeviceHandleByIndexFunc = func(idx int) (nvml.Device, nvml.Return) {
		r.mu.Lock()
		defer r.mu.Unlock()
		if idx < 0 || idx >= 7 {
			return nil, nvml.ERROR_INVALID_ARGUMENT
		}
		if idx >= len(r.migs[d]) {
			return nil, nvml.ERROR_NOT_FOUND
		}
		return r.migs[d][idx], nvml.SUCCESS
	}
	d.GetGpuInstanceByIdFunc = func(id int) (nvml.GpuInstance, nvml.Return) {
		d.RLock()
		defer d.RUnlock()
		for gi := range d.GpuInstances {
			if int(gi.Info.Id) == id {
				return gi, nvml.SUCCESS
			}
		}
		return nil, nvml.ERROR_NOT_FOUND
	}
}

// createMIG enables MIG on GPU i and creates a GPU instance of giProfile
// with one compute instance of ciProfile, and the MIG device handle NVML
// would list for it. It returns the MIG device's UUID.
func (r *rig) createMIG(i, giProfile, ciProfile int) string {
	r.t.Helper()
	d := r.devs[i]
	if ret, _ := d.SetMigMode(nvml.DEVICE_MIG_ENABLE); ret != nvml.SUCCESS {
		r.t.Fatalf("SetMigMode: %v", ret)
	}
	giInfo, ret := d.GetGpuInstanceProfileInfo(giProfile)
	if ret != nvml.SUCCESS {
		r.t.Fatalf("GetGpuInstanceProfileInfo(%d): %v", giProfile, ret)
	}
	gi, ret := d.CreateGpuInstance(&giInfo)
	if ret != nvml.SUCCESS {
		r.t.Fatalf("CreateGpuInstance: %v", ret)
	}
	ciInfo, ret := gi.GetComputeInstanceProfileInfo(ciProfile, nvml.COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
	if ret != nvml.SUCCESS {
		r.t.Fatalf("GetComputeInstanceProfileInfo(%d): %v", ciProfile, ret)
	}
	ci, ret := gi.CreateComputeInstance(&ciInfo)
	if ret != nvml.SUCCESS {
		r.t.Fatalf("CreateComputeInstance: %v", ret)
	}
	sgi := gi.(*server.GpuInstance)
	sgi.GetComputeInstanceByIdFunc = func(id int) (nvml.ComputeInstance, nvml.Return) {
		sgi.RLock()
		defer sgi.RUnlock()
		for c := range sgi.ComputeInstances {
			if int(c.Info.Id) == id {
				return c, nvml.SUCCESS
			}
		}
		return nil, nvml.ERROR_NOT_FOUND
	}
	giID, ciID := int(sgi.Info.Id), int(ci.(*server.ComputeInstance).Info.Id)
	uuid := fmt.Sprintf("MIG-%s-%d-%d", d.UUID[4:], giID, ciID)
	md := &mock.Device{
		GetUUIDFunc: func() (string, nvml.Return) { return uuid, nvml.SUCCESS },
		GetMemoryInfoFunc: func() (nvml.Memory, nvml.Return) {
			return nvml.Memory{Total: giInfo.MemorySizeMB << 20}, nvml.SUCCESS
		},
		GetGpuInstanceIdFunc:                   func() (int, nvml.Return) { return giID, nvml.SUCCESS },
		GetComputeInstanceIdFunc:               func() (int, nvml.Return) { return ciID, nvml.SUCCESS },
		GetDeviceHandleFromMigDeviceHandleFunc: func() (nvml.Device, nvml.Return) { return d, nvml.SUCCESS },
		IsMigDeviceHandleFunc:                  func() (bool, nvml.Return) { return true, nvml.SUCCESS },
	}
	r.mu.Lock()
	r.migs[d] = append(r.migs[d], md)
	r.mu.Unlock()
	return uuid
}

// xid delivers an XID event from GPU i through the event set.
func (r *rig) xid(i int, code uint64) {
	r.events <- nvml.EventData{Device: r.devs[i], EventType: nvml.EventTypeXidCriticalError, EventData: code}
}

// healthOf returns GPU i's entry of hs.
func healthOf(t *testing.T, hs []Health, uuid string) Health {
	t.Helper()
	for _, h := range hs {
		if h.UUID == uuid {
			return h
		}
	}
	t.Fatalf("no health for %s in %d entries", uuid, len(hs))
	return Health{}
}

// waitHealth polls Health until ok accepts GPU uuid's entry.
func waitHealth(t *testing.T, s Source, uuid string, ok func(Health) bool) Health {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		hs, err := s.Health(context.Background())
		if err != nil {
			t.Fatalf("Health: %v", err)
		}
		h := healthOf(t, hs, uuid)
		if ok(h) {
			return h
		}
		if time.Now().After(deadline) {
			t.Fatalf("GPU %s never got there: %+v", uuid, h)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func sortedCopy(s []string) []string {
	c := append([]string(nil), s...)
	sort.Strings(c)
	return c
}
