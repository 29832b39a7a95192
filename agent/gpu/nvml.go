//go:build cgo

package gpu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// errGPULost marks an NVML call that answered ERROR_GPU_IS_LOST.
var errGPULost = errors.New("GPU is lost")

// nvmlError is a failed NVML call.
type nvmlError struct{ ret nvml.Return }

func (e nvmlError) Error() string { return "NVML: " + e.ret.Error() }

func (e nvmlError) Is(target error) bool {
	return target == errGPULost && e.ret == nvml.ERROR_GPU_IS_LOST
}

// decode turns an NVML return into (present, error): SUCCESS is (true, nil);
// NOT_SUPPORTED and FUNCTION_NOT_FOUND are (false, nil), the field is absent;
// anything else is (false, err), and errors.Is(err, errGPULost) tells a GPU
// that fell off the bus.
func decode(ret nvml.Return) (bool, error) {
	switch ret {
	case nvml.SUCCESS:
		return true, nil
	case nvml.ERROR_NOT_SUPPORTED, nvml.ERROR_FUNCTION_NOT_FOUND:
		return false, nil
	default:
		return false, nvmlError{ret}
	}
}

var _ Source = (*nvmlSource)(nil)

// New returns a Source reading lib. NVML is initialised once, on the first
// call; an XID watcher starts with it and stops on Close.
func New(lib nvml.Interface, opts Options) Source {
	o := opts.withDefaults()
	return &nvmlSource{
		lib:     lib,
		opts:    o,
		log:     o.Logger.With("component", "gpu"),
		xids:    map[string][]XID{},
		known:   map[string]int{},
		byIndex: map[int]string{},
		lastGPU: map[string]GPU{},
		logged:  map[string]bool{},
	}
}

type nvmlSource struct {
	lib  nvml.Interface
	opts Options
	log  *slog.Logger

	// opMu is held shared by Inventory and Health, exclusively by Close, so
	// that Shutdown never races a call.
	opMu     sync.RWMutex
	initMu   sync.Mutex
	initDone bool
	initOK   bool
	reason   string
	closed   bool
	// eventReasons: the driver has nvmlDeviceGetCurrentClocksEventReasons
	// (R535+); older ones only the Throttle spelling.
	eventReasons bool
	stopWatch    context.CancelFunc
	watchDone    chan struct{}

	mu      sync.Mutex
	xids    map[string][]XID // by GPU UUID
	known   map[string]int   // every GPU UUID seen -> its last index
	byIndex map[int]string   // index -> UUID, for a handle that is lost
	lastGPU map[string]GPU   // last inventory read of each GPU
	logged  map[string]bool  // problems already logged
}

// start initialises NVML once. It reports whether NVML is usable.
func (s *nvmlSource) start() (bool, error) {
	s.initMu.Lock()
	defer s.initMu.Unlock()
	if s.closed {
		return false, ErrClosed
	}
	if s.initDone {
		return s.initOK, nil
	}
	s.initDone = true
	ret := s.lib.Init()
	switch ret {
	case nvml.SUCCESS:
	case nvml.ERROR_LIBRARY_NOT_FOUND:
		// No other NVML call may follow: with the real library it kills
		// the process.
		s.reason = ReasonNoDriver
		s.log.Info("NVML unavailable", "reason", s.reason)
		return false, nil
	default:
		s.reason = "NVML initialisation failed: " + ret.Error()
		s.log.Warn("NVML unavailable", "reason", s.reason)
		return false, nil
	}
	s.initOK = true
	s.eventReasons = s.lib.Extensions().LookupSymbol("nvmlDeviceGetCurrentClocksEventReasons") == nil
	s.startWatcher()
	return true, nil
}

// Close stops the XID watcher and shuts NVML down (only if Init succeeded).
func (s *nvmlSource) Close() error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	s.initMu.Lock()
	defer s.initMu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if !s.initOK {
		return nil
	}
	if s.stopWatch != nil {
		s.stopWatch()
		<-s.watchDone
	}
	if ok, err := decode(s.lib.Shutdown()); !ok && err != nil {
		return fmt.Errorf("gpu: shutdown: %w", err)
	}
	return nil
}

// logOnce logs a problem the first time it is seen for a key.
func (s *nvmlSource) logOnce(key, msg string, args ...any) {
	s.mu.Lock()
	seen := s.logged[key]
	s.logged[key] = true
	s.mu.Unlock()
	if !seen {
		s.log.Warn(msg, args...)
	}
}

// reader reads one GPU, remembering whether NVML lost it.
type reader struct {
	s     *nvmlSource
	index int
	uuid  string
	lost  bool
}

// ok decodes ret for op: true when the value is present. A lost GPU sets
// r.lost; other errors are logged once and leave the field absent.
func (r *reader) ok(op string, ret nvml.Return) bool {
	present, err := decode(ret)
	if err != nil {
		if errors.Is(err, errGPULost) {
			r.lost = true
		} else {
			r.s.logOnce(fmt.Sprintf("%d/%s/%d", r.index, op, ret), "NVML call failed; field left out",
				"gpu", r.index, "uuid", r.uuid, "call", op, "error", err)
		}
	}
	return present
}

// handle returns the device at index i, with its UUID, or lost=true.
func (s *nvmlSource) handle(i int) (nvml.Device, *reader, error) {
	r := &reader{s: s, index: i}
	dev, ret := s.lib.DeviceGetHandleByIndex(i)
	if _, err := decode(ret); err != nil {
		if errors.Is(err, errGPULost) {
			r.lost = true
			s.mu.Lock()
			r.uuid = s.byIndex[i]
			s.mu.Unlock()
			return nil, r, nil
		}
		return nil, r, fmt.Errorf("gpu %d: handle: %w", i, err)
	}
	uuid, ret := dev.GetUUID()
	if r.ok("GetUUID", ret) {
		r.uuid = uuid
		s.mu.Lock()
		s.known[uuid] = i
		s.byIndex[i] = uuid
		s.mu.Unlock()
	} else if r.lost {
		s.mu.Lock()
		r.uuid = s.byIndex[i]
		s.mu.Unlock()
	}
	return dev, r, nil
}

// missing returns the UUIDs (and last indexes) seen before but not in seen.
func (s *nvmlSource) missing(seen map[string]bool) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for u := range s.known {
		if !seen[u] {
			out = append(out, u)
		}
	}
	sort.Slice(out, func(a, b int) bool { return s.known[out[a]] < s.known[out[b]] })
	return out
}

// Inventory reads the node's and every GPU's static facts. A GPU NVML has
// lost keeps the facts last read for it; one never read is left out.
func (s *nvmlSource) Inventory(ctx context.Context) (Inventory, error) {
	s.opMu.RLock()
	defer s.opMu.RUnlock()
	ok, err := s.start()
	if err != nil {
		return Inventory{}, err
	}
	if !ok {
		return Inventory{Available: false, Reason: s.reason, GPUs: []GPU{}}, nil
	}
	inv := Inventory{Available: true, GPUs: []GPU{}}
	sys := &reader{s: s, index: -1}
	if v, ret := s.lib.SystemGetDriverVersion(); sys.ok("SystemGetDriverVersion", ret) {
		inv.DriverVersion = v
	}
	if v, ret := s.lib.SystemGetCudaDriverVersion(); sys.ok("SystemGetCudaDriverVersion", ret) {
		inv.CUDADriverVersion = fmt.Sprintf("%d.%d", v/1000, (v%1000)/10)
	}
	if v, ret := s.lib.SystemGetNVMLVersion(); sys.ok("SystemGetNVMLVersion", ret) {
		inv.NVMLVersion = v
	}
	n, ret := s.lib.DeviceGetCount()
	if _, err := decode(ret); err != nil {
		return inv, fmt.Errorf("gpu: device count: %w", err)
	}
	seen := map[string]bool{}
	var errs []error
	for i := 0; i < n; i++ {
		if err := ctx.Err(); err != nil {
			return inv, err
		}
		dev, r, err := s.handle(i)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if r.uuid != "" {
			seen[r.uuid] = true
		}
		var g GPU
		if !r.lost {
			g = s.readGPU(dev, r)
		}
		if r.lost {
			s.mu.Lock()
			last, had := s.lastGPU[r.uuid]
			s.mu.Unlock()
			if !had {
				s.logOnce("lost-unknown/"+fmt.Sprint(i), "GPU lost before it was ever read; left out of inventory", "gpu", i)
				continue
			}
			g = last
			g.Index = i
		} else {
			s.mu.Lock()
			s.lastGPU[g.UUID] = g
			s.mu.Unlock()
		}
		inv.GPUs = append(inv.GPUs, g)
	}
	for _, u := range s.missing(seen) {
		s.mu.Lock()
		g, had := s.lastGPU[u]
		s.mu.Unlock()
		if had {
			inv.GPUs = append(inv.GPUs, g)
		}
	}
	return inv, errors.Join(errs...)
}

// readGPU reads one GPU's static facts; r.lost tells a GPU lost meanwhile.
func (s *nvmlSource) readGPU(dev nvml.Device, r *reader) GPU {
	g := GPU{Index: r.index, UUID: r.uuid}
	if v, ret := dev.GetSerial(); r.ok("GetSerial", ret) {
		g.Serial = v
	}
	if v, ret := dev.GetName(); r.ok("GetName", ret) {
		g.Product = v
	}
	if v, ret := dev.GetBrand(); r.ok("GetBrand", ret) {
		g.Brand = brandName(v)
	}
	if v, ret := dev.GetArchitecture(); r.ok("GetArchitecture", ret) {
		g.Architecture = archName(v)
	}
	if major, minor, ret := dev.GetCudaComputeCapability(); r.ok("GetCudaComputeCapability", ret) {
		g.ComputeCapability = fmt.Sprintf("%d.%d", major, minor)
	}
	if r.lost {
		return g
	}
	var total uint64
	if v, ret := dev.GetMemoryInfo(); r.ok("GetMemoryInfo", ret) {
		total = v.Total
		g.MemoryTotalBytes = &total
	}
	if v, ret := dev.GetBAR1MemoryInfo(); r.ok("GetBAR1MemoryInfo", ret) {
		b := v.Bar1Total
		g.BAR1TotalBytes = &b
	}
	if v, ret := dev.GetPciInfo(); r.ok("GetPciInfo", ret) {
		g.PCIBusID = busID(v)
		g.PCIDeviceID = fmt.Sprintf("0x%08x", v.PciDeviceId)
	}
	if v, ret := dev.GetPersistenceMode(); r.ok("GetPersistenceMode", ret) {
		b := v == nvml.FEATURE_ENABLED
		g.PersistenceMode = &b
	}
	if v, ret := dev.GetPowerManagementLimit(); r.ok("GetPowerManagementLimit", ret) {
		w := float64(v) / 1000
		g.PowerLimitWatts = &w
	}
	if r.lost {
		return g
	}
	g.MIG = s.readMIG(dev, r, total)
	g.NVLinks = s.readNVLinks(dev, r)
	return g
}

// readNVLinks lists the active NVLinks. INVALID_ARGUMENT ends the links the
// GPU has; NOT_SUPPORTED on link 0 means no NVLink at all.
func (s *nvmlSource) readNVLinks(dev nvml.Device, r *reader) []NVLink {
	var out []NVLink
	for l := 0; l < nvml.NVLINK_MAX_LINKS && !r.lost; l++ {
		st, ret := dev.GetNvLinkState(l)
		if ret == nvml.ERROR_INVALID_ARGUMENT || (ret == nvml.ERROR_NOT_SUPPORTED && l == 0) {
			break
		}
		if !r.ok("GetNvLinkState", ret) || st != nvml.FEATURE_ENABLED {
			continue
		}
		link := NVLink{Link: l}
		if p, ret := dev.GetNvLinkRemotePciInfo(l); r.ok("GetNvLinkRemotePciInfo", ret) {
			link.PeerPCIBusID = busID(p)
		}
		out = append(out, link)
	}
	return out
}

// readMIG reads MIG mode and devices; nil when the GPU is not MIG capable.
func (s *nvmlSource) readMIG(dev nvml.Device, r *reader, total uint64) *MIG {
	cur, _, ret := dev.GetMigMode()
	if !r.ok("GetMigMode", ret) {
		return nil
	}
	m := &MIG{Enabled: cur == nvml.DEVICE_MIG_ENABLE}
	if !m.Enabled {
		return m
	}
	max, ret := dev.GetMaxMigDeviceCount()
	if !r.ok("GetMaxMigDeviceCount", ret) {
		return m
	}
	for i := 0; i < max && !r.lost; i++ {
		md, ret := dev.GetMigDeviceHandleByIndex(i)
		if ret == nvml.ERROR_NOT_FOUND || ret == nvml.ERROR_INVALID_ARGUMENT {
			continue // empty slot
		}
		if !r.ok("GetMigDeviceHandleByIndex", ret) {
			continue
		}
		d := MIGDevice{Index: i}
		if v, ret := md.GetUUID(); r.ok("MIG GetUUID", ret) {
			d.UUID = v
		}
		if v, ret := md.GetMemoryInfo(); r.ok("MIG GetMemoryInfo", ret) {
			d.MemoryBytes = v.Total
		}
		var profMB uint64
		d.Profile, profMB = migProfile(dev, md, r, total)
		if d.MemoryBytes == 0 {
			d.MemoryBytes = profMB << 20
		}
		m.Devices = append(m.Devices, d)
	}
	return m
}

// migProfile names a MIG device's profile as nvidia-smi does ("1g.10gb",
// "1c.2g.20gb", "1g.10gb+me"), and returns the GPU instance's memory in MiB.
// "" when NVML will not say (reading instances needs root).
func migProfile(parent, md nvml.Device, r *reader, total uint64) (string, uint64) {
	giID, ret := md.GetGpuInstanceId()
	if !r.ok("MIG GetGpuInstanceId", ret) {
		return "", 0
	}
	ciID, ret := md.GetComputeInstanceId()
	if !r.ok("MIG GetComputeInstanceId", ret) {
		return "", 0
	}
	gi, ret := parent.GetGpuInstanceById(giID)
	if !r.ok("GetGpuInstanceById", ret) {
		return "", 0
	}
	giInfo, ret := gi.GetInfo()
	if !r.ok("GpuInstance GetInfo", ret) {
		return "", 0
	}
	var (
		giProf nvml.GpuInstanceProfileInfo
		giIdx  = -1
	)
	for p := 0; p < nvml.GPU_INSTANCE_PROFILE_COUNT; p++ {
		info, ret := parent.GetGpuInstanceProfileInfo(p)
		if ret != nvml.SUCCESS {
			continue
		}
		if info.Id == giInfo.ProfileId {
			giProf, giIdx = info, p
			break
		}
	}
	if giIdx < 0 {
		return "", 0
	}
	ciSlices := giProf.SliceCount
	if ci, ret := gi.GetComputeInstanceById(ciID); r.ok("GetComputeInstanceById", ret) {
		if ciInfo, ret := ci.GetInfo(); r.ok("ComputeInstance GetInfo", ret) {
			for c := 0; c < nvml.COMPUTE_INSTANCE_PROFILE_COUNT; c++ {
				info, ret := gi.GetComputeInstanceProfileInfo(c, nvml.COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
				if ret == nvml.SUCCESS && info.Id == ciInfo.ProfileId {
					ciSlices = info.SliceCount
					break
				}
			}
		}
	}
	return migProfileName(giIdx, giProf.SliceCount, ciSlices, giProf.MemorySizeMB, total), giProf.MemorySizeMB
}

// migProfileName builds "<C>c.<G>g.<N>gb[+attr]" ("<C>c." only when the
// compute instance is smaller than the GPU instance). N is the instance's
// share of device memory, rounded to eighths, times the device's memory in
// GiB: what nvidia-smi prints. nvidia-smi rounds the share up; rounding to
// the nearest gives the same names on real boards (whose instances are a
// little under their eighths) and on go-nvml's mocks (whose H200 instances
// are a little over).
func migProfileName(giIdx int, giSlices, ciSlices uint32, memMB, totalBytes uint64) string {
	gb := (memMB + 1023) / 1024
	if totalBytes > 0 {
		const gib = 1 << 30
		eighths := float64(memMB<<20) / float64(totalBytes) * 8
		r := float64(int64(eighths + 0.5))
		if r < 1 {
			r = 1
		}
		totalGB := float64((totalBytes + gib - 1) / gib)
		gb = uint64(r/8*totalGB + 0.5)
	}
	var attr string
	switch giIdx {
	case nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1, nvml.GPU_INSTANCE_PROFILE_2_SLICE_REV1:
		attr = "+me"
	case nvml.GPU_INSTANCE_PROFILE_1_SLICE_ALL_ME, nvml.GPU_INSTANCE_PROFILE_2_SLICE_ALL_ME:
		attr = "+me.all"
	case nvml.GPU_INSTANCE_PROFILE_1_SLICE_NO_ME, nvml.GPU_INSTANCE_PROFILE_2_SLICE_NO_ME:
		attr = "-me"
	case nvml.GPU_INSTANCE_PROFILE_1_SLICE_GFX, nvml.GPU_INSTANCE_PROFILE_2_SLICE_GFX,
		nvml.GPU_INSTANCE_PROFILE_3_SLICE_GFX, nvml.GPU_INSTANCE_PROFILE_4_SLICE_GFX:
		attr = "+gfx"
	}
	if ciSlices != 0 && ciSlices < giSlices {
		return fmt.Sprintf("%dc.%dg.%dgb%s", ciSlices, giSlices, gb, attr)
	}
	return fmt.Sprintf("%dg.%dgb%s", giSlices, gb, attr)
}

// Health samples every GPU. GPUs seen before that NVML lost or no longer
// lists are reported Unhealthy. With no NVML it returns nothing.
func (s *nvmlSource) Health(ctx context.Context) ([]Health, error) {
	s.opMu.RLock()
	defer s.opMu.RUnlock()
	ok, err := s.start()
	if err != nil || !ok {
		return nil, err
	}
	n, ret := s.lib.DeviceGetCount()
	if _, err := decode(ret); err != nil {
		return nil, fmt.Errorf("gpu: device count: %w", err)
	}
	now := s.opts.Now()
	out := make([]Health, 0, n)
	seen := make(map[string]bool, n)
	for i := 0; i < n; i++ {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		dev, r, err := s.handle(i)
		var h Health
		switch {
		case err != nil:
			h = Health{Index: i, State: Unhealthy, Reasons: []string{"NVML cannot reach the GPU: " + err.Error()}, SampledAt: now}
		case r.lost:
			h = s.lostHealth(i, r.uuid, "NVML: GPU is lost", now)
		default:
			h = s.sample(dev, r, now)
		}
		if r.uuid != "" {
			seen[r.uuid] = true
		}
		out = append(out, h)
	}
	for _, u := range s.missing(seen) {
		s.mu.Lock()
		idx := s.known[u]
		s.mu.Unlock()
		out = append(out, s.lostHealth(idx, u, "no longer listed by NVML", now))
	}
	return out, nil
}

func (s *nvmlSource) lostHealth(i int, uuid, why string, now time.Time) Health {
	h := Health{Index: i, UUID: uuid, SampledAt: now, XIDs: s.xidsOf(uuid)}
	_, reasons := Evaluate(h, s.opts)
	h.State = Unhealthy
	h.Reasons = append([]string{"GPU fell off the bus (" + why + ")"}, reasons...)
	return h
}

func (s *nvmlSource) xidsOf(uuid string) []XID {
	if uuid == "" {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	x := s.xids[uuid]
	if len(x) == 0 {
		return nil
	}
	return append([]XID(nil), x...)
}

// sample reads one GPU's health counters and judges them.
func (s *nvmlSource) sample(dev nvml.Device, r *reader, now time.Time) Health {
	h := Health{Index: r.index, UUID: r.uuid, SampledAt: now}
	if v, ret := dev.GetTemperature(nvml.TEMPERATURE_GPU); r.ok("GetTemperature", ret) {
		h.TemperatureC = &v
	}
	if v, ret := dev.GetPowerUsage(); r.ok("GetPowerUsage", ret) {
		w := float64(v) / 1000
		h.PowerDrawWatts = &w
	}
	if v, ret := dev.GetUtilizationRates(); r.ok("GetUtilizationRates", ret) {
		g, m := v.Gpu, v.Memory
		h.UtilizationGPU, h.UtilizationMemory = &g, &m
	}
	ecc := func(op string, t nvml.MemoryErrorType, c nvml.EccCounterType) *uint64 {
		if r.lost {
			return nil
		}
		if v, ret := dev.GetTotalEccErrors(t, c); r.ok(op, ret) {
			return &v
		}
		return nil
	}
	h.ECCVolatileSingle = ecc("GetTotalEccErrors volatile corrected", nvml.MEMORY_ERROR_TYPE_CORRECTED, nvml.VOLATILE_ECC)
	h.ECCVolatileDouble = ecc("GetTotalEccErrors volatile uncorrected", nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.VOLATILE_ECC)
	h.ECCAggregateSingle = ecc("GetTotalEccErrors aggregate corrected", nvml.MEMORY_ERROR_TYPE_CORRECTED, nvml.AGGREGATE_ECC)
	h.ECCAggregateDouble = ecc("GetTotalEccErrors aggregate uncorrected", nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.AGGREGATE_ECC)
	if !r.lost {
		if v, ret := dev.GetRetiredPagesPendingStatus(); r.ok("GetRetiredPagesPendingStatus", ret) {
			b := v == nvml.FEATURE_ENABLED
			h.RetiredPagesPending = &b
		}
	}
	if !r.lost {
		if _, _, pending, failed, ret := dev.GetRemappedRows(); r.ok("GetRemappedRows", ret) {
			h.RemappedRowsPending, h.RemappingFailed = &pending, &failed
		}
	}
	if !r.lost {
		var mask uint64
		var ret nvml.Return
		if s.eventReasons {
			mask, ret = dev.GetCurrentClocksEventReasons()
		} else {
			mask, ret = dev.GetCurrentClocksThrottleReasons()
		}
		if r.ok("GetCurrentClocksEventReasons", ret) {
			h.ThrottleReasons = throttleNames(mask)
		}
	}
	if r.lost {
		return s.lostHealth(r.index, r.uuid, "NVML: GPU is lost", now)
	}
	h.XIDs = s.xidsOf(r.uuid)
	h.State, h.Reasons = Evaluate(h, s.opts)
	return h
}

// brandName spells NVML's brand as nvidia-smi's "Product Brand".
func brandName(b nvml.BrandType) string {
	switch b {
	case nvml.BRAND_QUADRO:
		return "Quadro"
	case nvml.BRAND_TESLA:
		return "Tesla"
	case nvml.BRAND_NVS:
		return "NVS"
	case nvml.BRAND_GRID:
		return "GRID"
	case nvml.BRAND_GEFORCE:
		return "GeForce"
	case nvml.BRAND_TITAN:
		return "Titan"
	case nvml.BRAND_NVIDIA_VAPPS:
		return "NVIDIA Virtual Applications"
	case nvml.BRAND_NVIDIA_VPC:
		return "NVIDIA Virtual PC"
	case nvml.BRAND_NVIDIA_VCS:
		return "NVIDIA Virtual Compute Server"
	case nvml.BRAND_NVIDIA_VWS:
		return "NVIDIA RTX Virtual Workstation"
	case nvml.BRAND_NVIDIA_CLOUD_GAMING:
		return "NVIDIA Cloud Gaming"
	case nvml.BRAND_QUADRO_RTX:
		return "Quadro RTX"
	case nvml.BRAND_NVIDIA_RTX:
		return "NVIDIA RTX"
	case nvml.BRAND_NVIDIA:
		return "NVIDIA"
	case nvml.BRAND_GEFORCE_RTX:
		return "GeForce RTX"
	case nvml.BRAND_TITAN_RTX:
		return "Titan RTX"
	case nvml.BRAND_UNKNOWN:
		return "Unknown"
	default:
		return fmt.Sprintf("Brand(%d)", int(b))
	}
}

// archName names NVML's architecture.
func archName(a nvml.DeviceArchitecture) string {
	switch a {
	case nvml.DEVICE_ARCH_KEPLER:
		return "Kepler"
	case nvml.DEVICE_ARCH_MAXWELL:
		return "Maxwell"
	case nvml.DEVICE_ARCH_PASCAL:
		return "Pascal"
	case nvml.DEVICE_ARCH_VOLTA:
		return "Volta"
	case nvml.DEVICE_ARCH_TURING:
		return "Turing"
	case nvml.DEVICE_ARCH_AMPERE:
		return "Ampere"
	case nvml.DEVICE_ARCH_ADA:
		return "Ada Lovelace"
	case nvml.DEVICE_ARCH_HOPPER:
		return "Hopper"
	case nvml.DEVICE_ARCH_BLACKWELL:
		return "Blackwell"
	case nvml.DEVICE_ARCH_RUBIN:
		return "Rubin"
	case nvml.DEVICE_ARCH_UNKNOWN:
		return "Unknown"
	default:
		return fmt.Sprintf("Architecture(%d)", uint32(a))
	}
}

// busID is PciInfo's bus id ("00000000:18:00.0") as a string.
func busID(p nvml.PciInfo) string {
	var b strings.Builder
	for _, c := range p.BusId {
		if c == 0 {
			break
		}
		b.WriteByte(byte(c))
	}
	return b.String()
}
