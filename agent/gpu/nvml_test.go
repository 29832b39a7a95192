//go:build cgo

package gpu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
)

func TestInventoryEveryModel(t *testing.T) {
	for _, m := range rigModels {
		t.Run(m.name, func(t *testing.T) {
			r := newRig(t, m)
			s := New(r.srv, rigOptions())
			defer s.Close()
			inv, err := s.Inventory(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if !inv.Available || inv.Reason != "" {
				t.Fatalf("available=%v reason=%q", inv.Available, inv.Reason)
			}
			if inv.DriverVersion != "550.54.15" || inv.CUDADriverVersion != "12.4" || inv.NVMLVersion != "12.550.54.15" {
				t.Errorf("versions: %q %q %q", inv.DriverVersion, inv.CUDADriverVersion, inv.NVMLVersion)
			}
			if len(inv.GPUs) != 8 {
				t.Fatalf("%d GPUs", len(inv.GPUs))
			}
			buses := map[string]bool{}
			for i, g := range inv.GPUs {
				d := r.devs[i]
				if g.Index != i || g.UUID != d.UUID || !strings.HasPrefix(g.UUID, "GPU-") {
					t.Errorf("gpu %d: index %d uuid %q, want %q", i, g.Index, g.UUID, d.UUID)
				}
				if g.Serial != fmt.Sprintf("16549220%05d", i) {
					t.Errorf("gpu %d serial %q", i, g.Serial)
				}
				if g.Product != d.Config.Name || g.Brand != "NVIDIA" || g.Architecture != m.arch || g.ComputeCapability != m.cc {
					t.Errorf("gpu %d: %q %q %q %q", i, g.Product, g.Brand, g.Architecture, g.ComputeCapability)
				}
				if g.MemoryTotalBytes == nil || *g.MemoryTotalBytes != d.Config.MemoryMB<<20 {
					t.Errorf("gpu %d memory %v", i, g.MemoryTotalBytes)
				}
				if g.BAR1TotalBytes == nil || *g.BAR1TotalBytes != 128<<30 {
					t.Errorf("gpu %d BAR1 %v", i, g.BAR1TotalBytes)
				}
				if g.PCIBusID != rigBusID(i) || g.PCIDeviceID != m.deviceID {
					t.Errorf("gpu %d pci %q %q", i, g.PCIBusID, g.PCIDeviceID)
				}
				buses[g.PCIBusID] = true
				if g.PersistenceMode == nil || !*g.PersistenceMode {
					t.Errorf("gpu %d persistence %v", i, g.PersistenceMode)
				}
				if g.PowerLimitWatts == nil || *g.PowerLimitWatts != m.limitW {
					t.Errorf("gpu %d power limit %v", i, g.PowerLimitWatts)
				}
				if g.MIG == nil || g.MIG.Enabled || len(g.MIG.Devices) != 0 {
					t.Errorf("gpu %d MIG %+v", i, g.MIG)
				}
				if len(g.NVLinks) != m.links {
					t.Fatalf("gpu %d: %d NVLinks, want %d", i, len(g.NVLinks), m.links)
				}
				peers := map[string]bool{}
				for l, link := range g.NVLinks {
					if link.Link != l || link.PeerPCIBusID == g.PCIBusID || link.PeerPCIBusID == "" {
						t.Errorf("gpu %d link %+v", i, link)
					}
					peers[link.PeerPCIBusID] = true
				}
				if len(peers) != 7 {
					t.Errorf("gpu %d links reach %d peers, want 7", i, len(peers))
				}
			}
			if len(buses) != 8 {
				t.Errorf("bus ids not distinct: %v", buses)
			}
			if _, err := json.Marshal(inv); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestHealthEveryModel(t *testing.T) {
	for _, m := range rigModels {
		t.Run(m.name, func(t *testing.T) {
			r := newRig(t, m)
			r.update(2, func(st *gpuState) {
				st.tempC, st.powerMW, st.util = 41, 123456, nvml.Utilization{Gpu: 97, Memory: 55}
				st.ecc[nvml.MEMORY_ERROR_TYPE_CORRECTED][nvml.VOLATILE_ECC] = 3
				st.ecc[nvml.MEMORY_ERROR_TYPE_CORRECTED][nvml.AGGREGATE_ECC] = 7
				st.ecc[nvml.MEMORY_ERROR_TYPE_UNCORRECTED][nvml.AGGREGATE_ECC] = 1
				st.clocks = 0x4 // SwPowerCap: normal under load
			})
			s := New(r.srv, rigOptions())
			defer s.Close()
			hs, err := s.Health(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(hs) != 8 {
				t.Fatalf("%d entries", len(hs))
			}
			for i, h := range hs {
				if h.Index != i || h.UUID != r.devs[i].UUID || h.State != Healthy || len(h.Reasons) != 0 || !h.SampledAt.Equal(rigFixedNow) {
					t.Errorf("gpu %d: %+v", i, h)
				}
				if h.RemappedRowsPending == nil || h.RemappingFailed == nil || h.RetiredPagesPending == nil {
					t.Errorf("gpu %d: remap/retire absent", i)
				}
			}
			h := hs[2]
			if *h.TemperatureC != 41 || *h.PowerDrawWatts != 123.456 || *h.UtilizationGPU != 97 || *h.UtilizationMemory != 55 {
				t.Errorf("gauges: %d %v %d %d", *h.TemperatureC, *h.PowerDrawWatts, *h.UtilizationGPU, *h.UtilizationMemory)
			}
			if *h.ECCVolatileSingle != 3 || *h.ECCVolatileDouble != 0 || *h.ECCAggregateSingle != 7 || *h.ECCAggregateDouble != 1 {
				t.Errorf("ecc: %d %d %d %d", *h.ECCVolatileSingle, *h.ECCVolatileDouble, *h.ECCAggregateSingle, *h.ECCAggregateDouble)
			}
			if fmt.Sprint(h.ThrottleReasons) != "[SwPowerCap]" || fmt.Sprint(hs[0].ThrottleReasons) != "[GpuIdle]" {
				t.Errorf("throttle: %v %v", h.ThrottleReasons, hs[0].ThrottleReasons)
			}
		})
	}
}

func TestMIGDevices(t *testing.T) {
	for _, m := range rigModels {
		t.Run(m.name, func(t *testing.T) {
			r := newRig(t, m)
			u0 := r.createMIG(0, nvml.GPU_INSTANCE_PROFILE_1_SLICE, nvml.COMPUTE_INSTANCE_PROFILE_1_SLICE)
			u1 := r.createMIG(0, nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1, nvml.COMPUTE_INSTANCE_PROFILE_1_SLICE)
			u2 := r.createMIG(0, nvml.GPU_INSTANCE_PROFILE_3_SLICE, nvml.COMPUTE_INSTANCE_PROFILE_1_SLICE)
			u3 := r.createMIG(0, nvml.GPU_INSTANCE_PROFILE_7_SLICE, nvml.COMPUTE_INSTANCE_PROFILE_7_SLICE)
			s := New(r.srv, rigOptions())
			defer s.Close()
			inv, err := s.Inventory(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			mig := inv.GPUs[0].MIG
			if mig == nil || !mig.Enabled || len(mig.Devices) != 4 {
				t.Fatalf("MIG: %+v", mig)
			}
			gb := map[string][3]string{ // 1-slice+me, 1c.3g, 7g
				"dgxa100": {"1g.5gb+me", "1c.3g.20gb", "7g.40gb"},
				"dgxh100": {"1g.10gb+me", "1c.3g.40gb", "7g.80gb"},
				"dgxh200": {"1g.18gb+me", "1c.3g.71gb", "7g.141gb"},
			}[m.name]
			want := []MIGDevice{
				{0, u0, m.mig1g, profileMB(r, 0, nvml.GPU_INSTANCE_PROFILE_1_SLICE) << 20},
				{1, u1, gb[0], profileMB(r, 0, nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1) << 20},
				{2, u2, gb[1], profileMB(r, 0, nvml.GPU_INSTANCE_PROFILE_3_SLICE) << 20},
				{3, u3, gb[2], profileMB(r, 0, nvml.GPU_INSTANCE_PROFILE_7_SLICE) << 20},
			}
			for i, w := range want {
				if mig.Devices[i] != w {
					t.Errorf("MIG device %d: %+v, want %+v", i, mig.Devices[i], w)
				}
			}
			if inv.GPUs[1].MIG == nil || inv.GPUs[1].MIG.Enabled {
				t.Errorf("GPU 1 MIG: %+v", inv.GPUs[1].MIG)
			}
		})
	}
}

func profileMB(r *rig, i, p int) uint64 {
	info, _ := r.devs[i].GetGpuInstanceProfileInfo(p)
	return info.MemorySizeMB
}

func TestMIGProfileNameRealBoards(t *testing.T) {
	const mib = 1 << 20
	cases := []struct {
		total, mem uint64
		g, c       uint32
		want       string
	}{
		{40960 * mib, 4864, 1, 1, "1g.5gb"},   // A100-40GB
		{81920 * mib, 9856, 1, 1, "1g.10gb"},  // A100-80GB
		{81920 * mib, 80384, 7, 7, "7g.80gb"}, // A100-80GB
		{81559 * mib, 40192, 4, 4, "4g.40gb"}, // H100-80GB, driver-reported total
		{143771 * mib, 16896, 1, 1, "1g.18gb"},
		{143771 * mib, 71936, 3, 2, "2c.3g.71gb"},
		{24576 * mib, 5836, 1, 1, "1g.6gb"}, // A30
	}
	for _, c := range cases {
		if got := migProfileName(nvml.GPU_INSTANCE_PROFILE_1_SLICE, c.g, c.c, c.mem, c.total); got != c.want {
			t.Errorf("%d MiB of %d MiB: %q, want %q", c.mem, c.total/mib, got, c.want)
		}
	}
}

func TestXIDClasses(t *testing.T) {
	r := newRig(t, rigModels[1])
	s := New(r.srv, rigOptions())
	defer s.Close()
	if _, err := s.Health(context.Background()); err != nil { // starts the watcher
		t.Fatal(err)
	}
	for code := range DefaultIgnoredXIDs {
		t.Run(fmt.Sprintf("ignored-%d", code), func(t *testing.T) {
			r.xid(1, code)
			h := waitHealth(t, s, r.devs[1].UUID, func(h Health) bool { return hasXID(h, code) })
			if h.State != Healthy || len(h.Reasons) != 0 {
				t.Errorf("XID %d: %s %v", code, h.State, h.Reasons)
			}
		})
	}
	for i, code := range []uint64{48, 63, 74, 79, 94, 95, 119} {
		t.Run(fmt.Sprintf("critical-%d", code), func(t *testing.T) {
			gpu := 2 + i%6
			r.xid(gpu, code)
			h := waitHealth(t, s, r.devs[gpu].UUID, func(h Health) bool { return hasXID(h, code) })
			if h.State != Unhealthy || !strings.Contains(strings.Join(h.Reasons, ";"), fmt.Sprintf("XID %d ", code)) {
				t.Errorf("XID %d: %s %v", code, h.State, h.Reasons)
			}
		})
	}
	hs, _ := s.Health(context.Background())
	if h := healthOf(t, hs, r.devs[0].UUID); h.State != Healthy || len(h.XIDs) != 0 {
		t.Errorf("GPU 0 got someone else's XIDs: %+v", h)
	}
	if h := healthOf(t, hs, r.devs[1].UUID); h.State != Healthy || len(h.XIDs) != len(DefaultIgnoredXIDs) {
		t.Errorf("GPU 1: %s, %d XIDs", h.State, len(h.XIDs))
	}
}

func hasXID(h Health, code uint64) bool {
	for _, x := range h.XIDs {
		if x.Code == code {
			return true
		}
	}
	return false
}

func TestXIDsCapped(t *testing.T) {
	r := newRig(t, rigModels[1])
	s := New(r.srv, rigOptions())
	defer s.Close()
	if _, err := s.Health(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < MaxXIDsPerGPU+8; i++ {
		r.xid(4, uint64(1000+i))
	}
	last := uint64(1000 + MaxXIDsPerGPU + 7)
	h := waitHealth(t, s, r.devs[4].UUID, func(h Health) bool { return hasXID(h, last) })
	if len(h.XIDs) != MaxXIDsPerGPU || h.XIDs[0].Code != 1008 {
		t.Errorf("%d XIDs, oldest %d", len(h.XIDs), h.XIDs[0].Code)
	}
}

func TestECCThresholds(t *testing.T) {
	r := newRig(t, rigModels[0])
	s := New(r.srv, Options{Logger: quietLogger(), AggregateSingleBitDegraded: 50})
	defer s.Close()
	r.update(0, func(st *gpuState) { st.ecc[nvml.MEMORY_ERROR_TYPE_UNCORRECTED][nvml.VOLATILE_ECC] = 1 })
	r.update(1, func(st *gpuState) { st.ecc[nvml.MEMORY_ERROR_TYPE_CORRECTED][nvml.AGGREGATE_ECC] = 49 })
	r.update(2, func(st *gpuState) { st.ecc[nvml.MEMORY_ERROR_TYPE_CORRECTED][nvml.AGGREGATE_ECC] = 50 })
	r.update(3, func(st *gpuState) { st.remapPending = true })
	r.update(4, func(st *gpuState) { st.remapFailed = true })
	r.update(5, func(st *gpuState) { st.clocks = 0x40 | 0x4 }) // HwThermalSlowdown + SwPowerCap
	r.update(6, func(st *gpuState) { st.retiredPending = true })
	hs, err := s.Health(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []State{Unhealthy, Healthy, Degraded, Degraded, Unhealthy, Degraded, Degraded, Healthy}
	for i, h := range hs {
		if h.State != want[i] {
			t.Errorf("gpu %d: %s %v, want %s", i, h.State, h.Reasons, want[i])
		}
	}
	if !strings.Contains(hs[0].Reasons[0], "double-bit") || !strings.Contains(hs[3].Reasons[0], "reset needed") ||
		!strings.Contains(hs[5].Reasons[0], "HwThermalSlowdown") {
		t.Errorf("reasons: %v / %v / %v", hs[0].Reasons, hs[3].Reasons, hs[5].Reasons)
	}
}

func TestGPULost(t *testing.T) {
	r := newRig(t, rigModels[1])
	s := New(r.srv, rigOptions())
	defer s.Close()
	ctx := context.Background()
	before, err := s.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lost := r.devs[7].UUID
	r.update(7, func(st *gpuState) { st.lost = true })
	r.xid(7, 79) // its UUID can no longer be read: attributed by handle
	h := waitHealth(t, s, lost, func(h Health) bool { return hasXID(h, 79) })
	if h.State != Unhealthy || h.Index != 7 || !strings.Contains(h.Reasons[0], "fell off the bus") ||
		!strings.Contains(strings.Join(h.Reasons, ";"), "XID 79") {
		t.Errorf("lost GPU: %+v", h)
	}
	hs, _ := s.Health(ctx)
	if len(hs) != 8 || hs[6].State != Healthy {
		t.Errorf("others: %d entries, gpu 6 %s", len(hs), hs[6].State)
	}
	inv, err := s.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.GPUs) != 8 || inv.GPUs[7].UUID != lost || inv.GPUs[7].Serial != before.GPUs[7].Serial {
		t.Errorf("inventory of a lost GPU: %+v", inv.GPUs[7])
	}
	// Lost in the middle of a sample (handle fine, calls fail).
	r.update(7, func(st *gpuState) { st.lost = false })
	dev7 := r.devs[7]
	temp := dev7.GetTemperatureFunc
	dev7.GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) { return 0, nvml.ERROR_GPU_IS_LOST }
	defer func() { dev7.GetTemperatureFunc = temp }()
	hs, _ = s.Health(ctx)
	if hs[7].State != Unhealthy || hs[7].UUID != lost || hs[7].TemperatureC != nil {
		t.Errorf("lost mid-sample: %+v", hs[7])
	}
}

func TestGPUDisappears(t *testing.T) {
	r := newRig(t, rigModels[2])
	s := New(r.srv, rigOptions())
	defer s.Close()
	ctx := context.Background()
	if _, err := s.Inventory(ctx); err != nil {
		t.Fatal(err)
	}
	gone := r.devs[7].UUID
	r.srv.DeviceGetCountFunc = func() (int, nvml.Return) { return 7, nvml.SUCCESS }
	hs, err := s.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(hs) != 8 {
		t.Fatalf("%d entries", len(hs))
	}
	h := healthOf(t, hs, gone)
	if h.State != Unhealthy || h.Index != 7 || !strings.Contains(h.Reasons[0], "no longer listed") {
		t.Errorf("vanished GPU: %+v", h)
	}
	inv, _ := s.Inventory(ctx)
	if len(inv.GPUs) != 8 || inv.GPUs[7].UUID != gone {
		t.Errorf("inventory keeps the vanished GPU: %d GPUs", len(inv.GPUs))
	}
}

func TestNVMLAbsent(t *testing.T) {
	lib := &mock.Interface{InitFunc: func() nvml.Return { return nvml.ERROR_LIBRARY_NOT_FOUND }}
	s := New(lib, rigOptions())
	ctx := context.Background()
	for k := 0; k < 2; k++ {
		inv, err := s.Inventory(ctx)
		if err != nil || inv.Available || inv.Reason != ReasonNoDriver || inv.GPUs == nil || len(inv.GPUs) != 0 {
			t.Fatalf("inventory %+v, %v", inv, err)
		}
		hs, err := s.Health(ctx)
		if err != nil || len(hs) != 0 {
			t.Fatalf("health %v, %v", hs, err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(lib.InitCalls()); n != 1 {
		t.Errorf("Init called %d times", n)
	}
	// Nothing else may be called after a failed Init (the real library
	// would kill the process); a nil func of the mock panics besides.
	others := map[string]int{
		"DeviceGetCount":         len(lib.DeviceGetCountCalls()),
		"DeviceGetHandleByIndex": len(lib.DeviceGetHandleByIndexCalls()),
		"SystemGetDriverVersion": len(lib.SystemGetDriverVersionCalls()),
		"EventSetCreate":         len(lib.EventSetCreateCalls()),
		"Extensions":             len(lib.ExtensionsCalls()),
		"Shutdown":               len(lib.ShutdownCalls()),
		"ErrorString":            len(lib.ErrorStringCalls()),
	}
	for name, n := range others {
		if n != 0 {
			t.Errorf("%s called %d times after a failed Init", name, n)
		}
	}
}

func TestNVMLInitFails(t *testing.T) {
	lib := &mock.Interface{InitFunc: func() nvml.Return { return nvml.ERROR_DRIVER_NOT_LOADED }}
	s := New(lib, rigOptions())
	inv, err := s.Inventory(context.Background())
	if err != nil || inv.Available || !strings.Contains(inv.Reason, nvml.ERROR_DRIVER_NOT_LOADED.Error()) {
		t.Fatalf("%+v %v", inv, err)
	}
	s.Close()
	if len(lib.DeviceGetCountCalls())+len(lib.ShutdownCalls()) != 0 {
		t.Error("NVML called after a failed Init")
	}
}

func TestInitOnceAndClose(t *testing.T) {
	r := newRig(t, rigModels[1])
	s := New(r.srv, rigOptions())
	ctx := context.Background()
	for k := 0; k < 3; k++ {
		if _, err := s.Inventory(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Health(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(r.srv.InitCalls()); n != 1 {
		t.Errorf("Init called %d times", n)
	}
	if n := len(r.devs[3].RegisterEventsCalls()); n != 1 || r.devs[3].RegisterEventsCalls()[0].V != nvml.EventTypeXidCriticalError {
		t.Errorf("RegisterEvents: %+v", r.devs[3].RegisterEventsCalls())
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if len(r.srv.ShutdownCalls()) != 1 || len(r.set.FreeCalls()) != 1 {
		t.Errorf("shutdown %d, free %d", len(r.srv.ShutdownCalls()), len(r.set.FreeCalls()))
	}
	if _, err := s.Inventory(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: %v", err)
	}
	if _, err := s.Health(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: %v", err)
	}
}

func TestContextCancelled(t *testing.T) {
	r := newRig(t, rigModels[0])
	s := New(r.srv, rigOptions())
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Inventory(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("inventory: %v", err)
	}
	if _, err := s.Health(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("health: %v", err)
	}
}

func TestNotSupportedIsAbsent(t *testing.T) {
	r := newRig(t, rigModels[1])
	ns := nvml.ERROR_NOT_SUPPORTED
	for _, d := range r.devs {
		d.GetSerialFunc = func() (string, nvml.Return) { return "", ns }
		d.GetBAR1MemoryInfoFunc = func() (nvml.BAR1Memory, nvml.Return) { return nvml.BAR1Memory{}, ns }
		d.GetPowerManagementLimitFunc = func() (uint32, nvml.Return) { return 0, ns }
		d.GetPersistenceModeFunc = func() (nvml.EnableState, nvml.Return) { return 0, ns }
		d.GetMigModeFunc = func() (int, int, nvml.Return) { return 0, 0, ns }
		d.GetNvLinkStateFunc = func(int) (nvml.EnableState, nvml.Return) { return 0, ns }
		d.GetTotalEccErrorsFunc = func(nvml.MemoryErrorType, nvml.EccCounterType) (uint64, nvml.Return) { return 0, ns }
		d.GetRetiredPagesPendingStatusFunc = func() (nvml.EnableState, nvml.Return) { return 0, ns }
		d.GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) { return 0, 0, false, false, ns }
		d.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{}, ns }
		d.GetPowerUsageFunc = func() (uint32, nvml.Return) { return 0, nvml.ERROR_FUNCTION_NOT_FOUND }
		d.GetCurrentClocksEventReasonsFunc = func() (uint64, nvml.Return) { return 0, ns }
		d.RegisterEventsFunc = func(uint64, nvml.EventSet) nvml.Return { return ns }
	}
	s := New(r.srv, rigOptions())
	ctx := context.Background()
	inv, err := s.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range inv.GPUs {
		if g.Serial != "" || g.BAR1TotalBytes != nil || g.PowerLimitWatts != nil || g.PersistenceMode != nil || g.MIG != nil || g.NVLinks != nil {
			t.Errorf("gpu %d: %+v", g.Index, g)
		}
		if g.MemoryTotalBytes == nil || g.Product == "" {
			t.Errorf("gpu %d lost supported fields", g.Index)
		}
	}
	if n := len(r.devs[0].GetNvLinkStateCalls()); n != 1 {
		t.Errorf("GetNvLinkState called %d times on a GPU without NVLink", n)
	}
	b, _ := json.Marshal(inv.GPUs[0])
	for _, k := range []string{"serial", "bar1", "power_limit", "persistence", "mig", "nvlinks"} {
		if strings.Contains(string(b), k) {
			t.Errorf("JSON has %s: %s", k, b)
		}
	}
	hs, err := s.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hs {
		if h.ECCVolatileSingle != nil || h.ECCVolatileDouble != nil || h.ECCAggregateSingle != nil || h.ECCAggregateDouble != nil ||
			h.RetiredPagesPending != nil || h.RemappedRowsPending != nil || h.RemappingFailed != nil ||
			h.UtilizationGPU != nil || h.PowerDrawWatts != nil || h.ThrottleReasons != nil || h.State != Healthy {
			t.Errorf("gpu %d: %+v", h.Index, h)
		}
		if h.TemperatureC == nil {
			t.Errorf("gpu %d lost temperature", h.Index)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(r.set.FreeCalls()); n != 1 {
		t.Errorf("event set freed %d times with no device registered", n)
	}
}

func TestFieldErrorLeavesFieldOut(t *testing.T) {
	r := newRig(t, rigModels[0])
	r.devs[1].GetSerialFunc = func() (string, nvml.Return) { return "", nvml.ERROR_NO_PERMISSION }
	s := New(r.srv, rigOptions())
	defer s.Close()
	inv, err := s.Inventory(context.Background())
	if err != nil || inv.GPUs[1].Serial != "" || inv.GPUs[2].Serial == "" {
		t.Fatalf("%v %+v", err, inv.GPUs[1])
	}
}

func TestOldDriverThrottleReasons(t *testing.T) {
	r := newRig(t, rigModels[0])
	r.srv.LookupSymbolFunc = func(string) error { return errors.New("no such symbol") }
	for _, d := range r.devs {
		d.GetCurrentClocksEventReasonsFunc = nil // would panic
		d.GetCurrentClocksThrottleReasonsFunc = func() (uint64, nvml.Return) { return 0x8, nvml.SUCCESS }
	}
	s := New(r.srv, rigOptions())
	defer s.Close()
	hs, err := s.Health(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if hs[0].State != Degraded || fmt.Sprint(hs[0].ThrottleReasons) != "[HwSlowdown]" {
		t.Errorf("%+v", hs[0])
	}
}

// BenchmarkSweep is one full Inventory and Health of a DGX H100 (8 GPUs).
func BenchmarkSweep(b *testing.B) {
	r := newRig(b, rigModels[1])
	s := New(r.srv, rigOptions())
	defer s.Close()
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := s.Inventory(ctx); err != nil {
			b.Fatal(err)
		}
		if _, err := s.Health(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// TestRealNVML opens the real library: without a driver it must report why
// (and not crash); with one, read every GPU.
func TestRealNVML(t *testing.T) {
	s, err := Open(BackendNVML, Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	}()
	ctx := context.Background()
	inv, err := s.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !inv.Available {
		if inv.Reason == "" {
			t.Fatal("unavailable without a reason")
		}
		t.Logf("no NVML here: %s", inv.Reason)
		return
	}
	b, _ := json.MarshalIndent(inv, "", "  ")
	t.Logf("inventory: %s", b)
	if len(inv.GPUs) == 0 || inv.GPUs[0].UUID == "" || inv.DriverVersion == "" {
		t.Errorf("thin inventory")
	}
	hs, err := s.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = json.MarshalIndent(hs, "", "  ")
	t.Logf("health: %s", b)
	if len(hs) != len(inv.GPUs) {
		t.Errorf("%d health entries for %d GPUs", len(hs), len(inv.GPUs))
	}
}
