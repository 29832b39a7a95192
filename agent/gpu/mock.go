//go:build cgo

package gpu

// The mock:* backends: go-nvml's DGX mock servers (eight A100-SXM4-40GB,
// H100-SXM5-80GB or H200-SXM5-141GB GPUs) with what they leave out filled
// in with plausible idle values: serials, distinct PCI bus ids, BAR1, power
// limit (400 W A100, 700 W H100/H200), persistence on, 30-45 C, 70-112 W,
// 0% utilisation, no ECC errors, "GpuIdle" clocks, row remapping clean, page
// retirement not supported (as on A100 and later), an NVLink mesh (12 links
// per A100, 18 per H100/H200, spread over the seven peers) and an event set
// for XIDs.
//
// Injected faults. With Options.MockEventsPath set, the backend polls that
// file every 200ms and applies each new line. Lines are JSON objects; "gpu"
// (the index) is required, every other key optional:
//
//	{"gpu":3,"xid":79}                  deliver XID 79 for GPU 3 through the event set
//	{"gpu":7,"lost":true}               GPU 7 falls off the bus: its handle and every call
//	                                    on it answer ERROR_GPU_IS_LOST ("lost":false: back)
//	{"gpu":2,"ecc_volatile_double":1}   set a counter; also ecc_volatile_single,
//	                                    ecc_aggregate_single, ecc_aggregate_double
//	{"gpu":1,"temperature_c":92,"power_w":690}
//	{"gpu":1,"throttle":["HwThermalSlowdown"]}  clock event reasons ([] for idle)
//	{"gpu":0,"remapped_rows_pending":true,"remapping_failed":false}
//
// Blank lines and lines starting with # are skipped; a bad line is logged and
// skipped. Lines already in the file when the backend starts are applied
// (XIDs are held until the agent first reads the GPUs); a file that shrinks
// is read again from its start.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh200"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"github.com/google/uuid"
)

var (
	_ nvml.Interface = (*mockMachine)(nil)
	_ nvml.Device    = (*mockGPU)(nil)
	_ nvml.EventSet  = (*mockEventSet)(nil)
)

// mockPollInterval is how often the fault file is read.
const mockPollInterval = 200 * time.Millisecond

type mockModel struct {
	newServer   func() *server.Server
	busIDs      []string // DGX bus ids, one per GPU
	powerLimitW uint32
	nvlinks     int
	bar1MiB     uint64
	serialBase  uint64
}

var dgxHopperBusIDs = []string{"0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0", "0000:5d:00.0", "0000:9a:00.0", "0000:ab:00.0", "0000:ba:00.0", "0000:db:00.0"}

var mockModels = map[string]mockModel{
	BackendMockDGXA100: {
		newServer:   dgxa100.New,
		busIDs:      []string{"0000:07:00.0", "0000:0f:00.0", "0000:47:00.0", "0000:4e:00.0", "0000:87:00.0", "0000:90:00.0", "0000:b7:00.0", "0000:bd:00.0"},
		powerLimitW: 400, nvlinks: 12, bar1MiB: 65536, serialBase: 1322520000000,
	},
	BackendMockDGXH100: {
		newServer: dgxh100.New, busIDs: dgxHopperBusIDs,
		powerLimitW: 700, nvlinks: 18, bar1MiB: 131072, serialBase: 1654922000000,
	},
	BackendMockDGXH200: {
		newServer: dgxh200.New, busIDs: dgxHopperBusIDs,
		powerLimitW: 700, nvlinks: 18, bar1MiB: 262144, serialBase: 1655024000000,
	},
}

// mockMachine is the nvml.Interface of a mock backend: go-nvml's server with
// the device handles replaced by mockGPUs.
//
// The mockGPU methods read their values directly instead of through the mock
// funcs: go-nvml's mocks record every call's arguments forever, which a
// backend polled for days must not do.
type mockMachine struct {
	*server.Server
	log *slog.Logger

	mu   sync.Mutex // guards the mutable fields of every mockGPU
	gpus []*mockGPU
}

// mockGPU is one mock GPU. The fields below mu are guarded by machine.mu.
type mockGPU struct {
	*server.Device
	m      *mockMachine
	index  int
	serial string
	busID  string
	peers  []string // peer bus id per NVLink
	limitW uint32
	bar1   uint64

	lost         bool
	tempC        uint32
	powerMW      uint32
	ecc          [2][2]uint64 // [MemoryErrorType][EccCounterType]
	remapPending bool
	remapFailed  bool
	clocks       uint64
	sets         []*mockEventSet
	pending      []uint64 // XIDs injected before anything registered
}

func newMockMachine(backend, seed string, log *slog.Logger) (*mockMachine, error) {
	model, ok := mockModels[backend]
	if !ok {
		return nil, unknownBackend(backend)
	}
	m := &mockMachine{Server: model.newServer(), log: log}
	n := len(m.Devices)
	for i, d := range m.Devices {
		sd := d.(*server.Device)
		bus := fmt.Sprintf("0000:%02x:00.0", 0x18+i)
		if i < len(model.busIDs) {
			bus = model.busIDs[i]
		}
		sd.PciBusID = bus // so DeviceGetHandleByPciBusId agrees
		if seed != "" {
			// The same simulated machine keeps its GPU UUIDs across agent
			// restarts, as real GPUs do.
			sd.UUID = "GPU-" + uuid.NewSHA1(uuid.NameSpaceOID, fmt.Appendf(nil, "budfleet-mock/%s/%s/%d", seed, backend, i)).String()
		}
		m.gpus = append(m.gpus, &mockGPU{
			Device:  sd,
			m:       m,
			index:   i,
			serial:  strconv.FormatUint(model.serialBase+uint64(i)*1373, 10),
			busID:   bus,
			limitW:  model.powerLimitW,
			bar1:    model.bar1MiB << 20,
			tempC:   31 + uint32(i*5%14),
			powerMW: 70000 + uint32(i)*6000,
			clocks:  0x1, // GpuIdle
		})
	}
	for i, g := range m.gpus {
		if n < 2 {
			break
		}
		for l := 0; l < model.nvlinks; l++ {
			peer := (i + 1 + l%(n-1)) % n
			g.peers = append(g.peers, m.gpus[peer].busID)
		}
	}
	return m, nil
}

func (m *mockMachine) DeviceGetCount() (int, nvml.Return) { return len(m.gpus), nvml.SUCCESS }

func (m *mockMachine) DeviceGetHandleByIndex(i int) (nvml.Device, nvml.Return) {
	if i < 0 || i >= len(m.gpus) {
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	g := m.gpus[i]
	if g.gone() {
		return nil, nvml.ERROR_GPU_IS_LOST
	}
	return g, nvml.SUCCESS
}

func (m *mockMachine) DeviceGetHandleByUUID(uuid string) (nvml.Device, nvml.Return) {
	for _, g := range m.gpus {
		if g.UUID == uuid {
			return m.DeviceGetHandleByIndex(g.index)
		}
	}
	return nil, nvml.ERROR_NOT_FOUND
}

func (m *mockMachine) DeviceGetHandleByPciBusId(bus string) (nvml.Device, nvml.Return) {
	for _, g := range m.gpus {
		if g.busID == bus {
			return m.DeviceGetHandleByIndex(g.index)
		}
	}
	return nil, nvml.ERROR_NOT_FOUND
}

func (m *mockMachine) EventSetCreate() (nvml.EventSet, nvml.Return) {
	return &mockEventSet{EventSet: &mock.EventSet{}, ch: make(chan nvml.EventData, 64), done: make(chan struct{})}, nvml.SUCCESS
}

func (g *mockGPU) gone() bool {
	g.m.mu.Lock()
	defer g.m.mu.Unlock()
	return g.lost
}

// read runs f under the machine lock unless the GPU is lost.
func (g *mockGPU) read(f func()) nvml.Return {
	g.m.mu.Lock()
	defer g.m.mu.Unlock()
	if g.lost {
		return nvml.ERROR_GPU_IS_LOST
	}
	f()
	return nvml.SUCCESS
}

func (g *mockGPU) GetUUID() (string, nvml.Return) { return g.UUID, g.read(func() {}) }
func (g *mockGPU) GetName() (string, nvml.Return) { return g.Config.Name, g.read(func() {}) }
func (g *mockGPU) GetIndex() (int, nvml.Return)   { return g.index, g.read(func() {}) }
func (g *mockGPU) GetMinorNumber() (int, nvml.Return) {
	return g.Minor, g.read(func() {})
}
func (g *mockGPU) GetSerial() (string, nvml.Return) { return g.serial, g.read(func() {}) }
func (g *mockGPU) GetBrand() (nvml.BrandType, nvml.Return) {
	return g.Config.Brand, g.read(func() {})
}
func (g *mockGPU) GetArchitecture() (nvml.DeviceArchitecture, nvml.Return) {
	return g.Config.Architecture, g.read(func() {})
}
func (g *mockGPU) GetCudaComputeCapability() (int, int, nvml.Return) {
	return g.Config.CudaMajor, g.Config.CudaMinor, g.read(func() {})
}
func (g *mockGPU) GetMemoryInfo() (nvml.Memory, nvml.Return) {
	return g.MemoryInfo, g.read(func() {})
}
func (g *mockGPU) GetBAR1MemoryInfo() (nvml.BAR1Memory, nvml.Return) {
	return nvml.BAR1Memory{Bar1Total: g.bar1, Bar1Free: g.bar1 - 32<<20, Bar1Used: 32 << 20}, g.read(func() {})
}
func (g *mockGPU) GetPciInfo() (nvml.PciInfo, nvml.Return) {
	return pciInfo(g.busID, g.Config.PciDeviceId), g.read(func() {})
}
func (g *mockGPU) GetPersistenceMode() (nvml.EnableState, nvml.Return) {
	return nvml.FEATURE_ENABLED, g.read(func() {})
}
func (g *mockGPU) GetPowerManagementLimit() (uint32, nvml.Return) {
	return g.limitW * 1000, g.read(func() {})
}

func (g *mockGPU) GetMigMode() (int, int, nvml.Return) {
	if g.gone() {
		return 0, 0, nvml.ERROR_GPU_IS_LOST
	}
	g.Device.RLock()
	defer g.Device.RUnlock()
	return g.MigMode, g.MigMode, nvml.SUCCESS
}

// GetMaxMigDeviceCount: the backend never creates MIG devices.
func (g *mockGPU) GetMaxMigDeviceCount() (int, nvml.Return) { return 0, g.read(func() {}) }

func (g *mockGPU) GetNvLinkState(link int) (nvml.EnableState, nvml.Return) {
	if link < 0 || link >= len(g.peers) {
		return nvml.FEATURE_DISABLED, nvml.ERROR_INVALID_ARGUMENT
	}
	return nvml.FEATURE_ENABLED, g.read(func() {})
}

func (g *mockGPU) GetNvLinkRemotePciInfo(link int) (nvml.PciInfo, nvml.Return) {
	if link < 0 || link >= len(g.peers) {
		return nvml.PciInfo{}, nvml.ERROR_INVALID_ARGUMENT
	}
	return pciInfo(g.peers[link], g.Config.PciDeviceId), g.read(func() {})
}

func (g *mockGPU) GetTemperature(sensor nvml.TemperatureSensors) (uint32, nvml.Return) {
	if sensor != nvml.TEMPERATURE_GPU {
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	var v uint32
	return v, g.read(func() { v = g.tempC })
}

func (g *mockGPU) GetPowerUsage() (uint32, nvml.Return) {
	var v uint32
	return v, g.read(func() { v = g.powerMW })
}

func (g *mockGPU) GetUtilizationRates() (nvml.Utilization, nvml.Return) {
	return nvml.Utilization{}, g.read(func() {})
}

func (g *mockGPU) GetTotalEccErrors(t nvml.MemoryErrorType, c nvml.EccCounterType) (uint64, nvml.Return) {
	if t >= nvml.MEMORY_ERROR_TYPE_COUNT || c >= nvml.ECC_COUNTER_TYPE_COUNT {
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	var v uint64
	return v, g.read(func() { v = g.ecc[t][c] })
}

// GetRetiredPagesPendingStatus: A100 and later remap rows instead.
func (g *mockGPU) GetRetiredPagesPendingStatus() (nvml.EnableState, nvml.Return) {
	if g.gone() {
		return 0, nvml.ERROR_GPU_IS_LOST
	}
	return 0, nvml.ERROR_NOT_SUPPORTED
}

func (g *mockGPU) GetRemappedRows() (int, int, bool, bool, nvml.Return) {
	var pending, failed bool
	ret := g.read(func() { pending, failed = g.remapPending, g.remapFailed })
	return 0, 0, pending, failed, ret
}

func (g *mockGPU) GetCurrentClocksEventReasons() (uint64, nvml.Return) {
	var v uint64
	return v, g.read(func() { v = g.clocks })
}

func (g *mockGPU) GetCurrentClocksThrottleReasons() (uint64, nvml.Return) {
	return g.GetCurrentClocksEventReasons()
}

func (g *mockGPU) RegisterEvents(types uint64, set nvml.EventSet) nvml.Return {
	es, ok := set.(*mockEventSet)
	if !ok {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	if types&^uint64(nvml.EventTypeXidCriticalError) != 0 {
		return nvml.ERROR_NOT_SUPPORTED
	}
	var pending []uint64
	ret := g.read(func() {
		g.sets = append(g.sets, es)
		pending, g.pending = g.pending, nil
	})
	for _, code := range pending {
		es.deliver(nvml.EventData{Device: g, EventType: nvml.EventTypeXidCriticalError, EventData: code})
	}
	return ret
}

// xid delivers an XID event to every set the GPU is registered with, or
// keeps it for the first registration (so a fault file written before the
// agent starts works; real NVML would drop it).
func (g *mockGPU) xid(code uint64) {
	g.m.mu.Lock()
	sets := append([]*mockEventSet(nil), g.sets...)
	if len(sets) == 0 && len(g.pending) < MaxXIDsPerGPU {
		g.pending = append(g.pending, code)
	}
	g.m.mu.Unlock()
	for _, s := range sets {
		s.deliver(nvml.EventData{Device: g, EventType: nvml.EventTypeXidCriticalError, EventData: code})
	}
}

func pciInfo(bus string, deviceID uint32) nvml.PciInfo {
	p := nvml.PciInfo{PciDeviceId: deviceID}
	for i := 0; i < len(bus) && i < len(p.BusId)-1; i++ {
		p.BusId[i] = int8(bus[i])
	}
	for i := 0; i < len(bus) && i < len(p.BusIdLegacy)-1; i++ {
		p.BusIdLegacy[i] = int8(bus[i])
	}
	var dom, b, d, f uint32
	if _, err := fmt.Sscanf(bus, "%x:%x:%x.%x", &dom, &b, &d, &f); err == nil {
		p.Domain, p.Bus, p.Device = dom, b, d
	}
	return p
}

// mockEventSet is an nvml.EventSet fed by injected faults.
type mockEventSet struct {
	*mock.EventSet // the methods NVML's XID path does not use
	ch             chan nvml.EventData
	done           chan struct{}
	once           sync.Once
}

func (e *mockEventSet) Wait(timeoutMs uint32) (nvml.EventData, nvml.Return) {
	select {
	case d := <-e.ch:
		return d, nvml.SUCCESS
	default:
	}
	t := time.NewTimer(time.Duration(timeoutMs) * time.Millisecond)
	defer t.Stop()
	select {
	case d := <-e.ch:
		return d, nvml.SUCCESS
	case <-t.C:
		return nvml.EventData{}, nvml.ERROR_TIMEOUT
	case <-e.done:
		return nvml.EventData{}, nvml.ERROR_UNINITIALIZED
	}
}

func (e *mockEventSet) Free() nvml.Return {
	e.once.Do(func() { close(e.done) })
	return nvml.SUCCESS
}

func (e *mockEventSet) deliver(d nvml.EventData) {
	select {
	case <-e.done:
	case e.ch <- d:
	default: // full: NVML drops events too
	}
}

// mockFault is one line of the fault file.
type mockFault struct {
	GPU                 *int      `json:"gpu"`
	XID                 *uint64   `json:"xid"`
	Lost                *bool     `json:"lost"`
	ECCVolatileSingle   *uint64   `json:"ecc_volatile_single"`
	ECCVolatileDouble   *uint64   `json:"ecc_volatile_double"`
	ECCAggregateSingle  *uint64   `json:"ecc_aggregate_single"`
	ECCAggregateDouble  *uint64   `json:"ecc_aggregate_double"`
	TemperatureC        *uint32   `json:"temperature_c"`
	PowerW              *float64  `json:"power_w"`
	Throttle            *[]string `json:"throttle"`
	RemappedRowsPending *bool     `json:"remapped_rows_pending"`
	RemappingFailed     *bool     `json:"remapping_failed"`
}

// apply applies one fault line.
func (m *mockMachine) apply(line []byte) error {
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	var f mockFault
	if err := dec.Decode(&f); err != nil {
		return err
	}
	if f.GPU == nil {
		return errors.New(`"gpu" is required`)
	}
	if *f.GPU < 0 || *f.GPU >= len(m.gpus) {
		return fmt.Errorf("no GPU %d (have %d)", *f.GPU, len(m.gpus))
	}
	var clocks uint64
	if f.Throttle != nil {
		var err error
		if clocks, err = throttleMask(*f.Throttle); err != nil {
			return err
		}
		if clocks == 0 {
			clocks = 0x1 // idle
		}
	}
	g := m.gpus[*f.GPU]
	m.mu.Lock()
	set := func(dst *uint64, v *uint64) {
		if v != nil {
			*dst = *v
		}
	}
	set(&g.ecc[nvml.MEMORY_ERROR_TYPE_CORRECTED][nvml.VOLATILE_ECC], f.ECCVolatileSingle)
	set(&g.ecc[nvml.MEMORY_ERROR_TYPE_UNCORRECTED][nvml.VOLATILE_ECC], f.ECCVolatileDouble)
	set(&g.ecc[nvml.MEMORY_ERROR_TYPE_CORRECTED][nvml.AGGREGATE_ECC], f.ECCAggregateSingle)
	set(&g.ecc[nvml.MEMORY_ERROR_TYPE_UNCORRECTED][nvml.AGGREGATE_ECC], f.ECCAggregateDouble)
	if f.TemperatureC != nil {
		g.tempC = *f.TemperatureC
	}
	if f.PowerW != nil && *f.PowerW >= 0 {
		g.powerMW = uint32(*f.PowerW * 1000)
	}
	if f.Throttle != nil {
		g.clocks = clocks
	}
	if f.RemappedRowsPending != nil {
		g.remapPending = *f.RemappedRowsPending
	}
	if f.RemappingFailed != nil {
		g.remapFailed = *f.RemappingFailed
	}
	if f.Lost != nil {
		g.lost = *f.Lost
	}
	m.mu.Unlock()
	if f.XID != nil {
		g.xid(*f.XID)
	}
	return nil
}

// faultFile follows a fault file from offset off.
type faultFile struct {
	path    string
	off     int64
	partial []byte
	m       *mockMachine
	warned  bool
}

// poll applies the complete lines appended since the last poll.
func (f *faultFile) poll() {
	fh, err := os.Open(f.path)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) && !f.warned {
			f.m.log.Warn("mock GPU fault file unreadable", "path", f.path, "error", err)
			f.warned = true
		}
		return
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil {
		return
	}
	if fi.Size() < f.off { // truncated: start over
		f.off, f.partial = 0, nil
	}
	if fi.Size() == f.off {
		return
	}
	if _, err := fh.Seek(f.off, io.SeekStart); err != nil {
		return
	}
	buf, err := io.ReadAll(io.LimitReader(fh, fi.Size()-f.off))
	f.off += int64(len(buf))
	data := append(f.partial, buf...)
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}
		line := bytes.TrimSpace(data[:i])
		data = data[i+1:]
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		if err := f.m.apply(line); err != nil {
			f.m.log.Warn("mock GPU fault skipped", "line", string(line), "error", err)
		} else {
			f.m.log.Info("mock GPU fault applied", "line", string(line))
		}
	}
	f.partial = append([]byte(nil), data...)
	if len(f.partial) > 0 {
		// Tests wait for this to know a half-written line was read.
		f.m.log.Debug("mock GPU fault line incomplete; held until its newline", "bytes", len(f.partial))
	}
	if err != nil {
		f.m.log.Warn("mock GPU fault file read failed", "path", f.path, "error", err)
	}
}

// mockSource is a mock backend's Source: it also stops the fault poller.
type mockSource struct {
	Source
	machine *mockMachine
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
}

func (s *mockSource) Close() error {
	s.once.Do(func() {
		if s.stop != nil {
			close(s.stop)
			<-s.done
		}
	})
	return s.Source.Close()
}

func openMock(backend string, opts Options) (Source, error) {
	o := opts.withDefaults()
	m, err := newMockMachine(backend, o.MockSeed, o.Logger.With("component", "gpu", "backend", backend))
	if err != nil {
		return nil, err
	}
	s := &mockSource{Source: New(m, opts), machine: m}
	if path := strings.TrimSpace(opts.MockEventsPath); path != "" {
		s.stop, s.done = make(chan struct{}), make(chan struct{})
		ff := &faultFile{path: path, m: m}
		go func() {
			defer close(s.done)
			t := time.NewTicker(mockPollInterval)
			defer t.Stop()
			for {
				ff.poll()
				select {
				case <-s.stop:
					return
				case <-t.C:
				}
			}
		}()
	}
	return s, nil
}
