package gpu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"
)

// Backend names accepted by Open (the agent's --gpu-backend flag).
const (
	BackendNVML        = "nvml"
	BackendNone        = "none"
	BackendMockDGXA100 = "mock:dgxa100"
	BackendMockDGXH100 = "mock:dgxh100"
	BackendMockDGXH200 = "mock:dgxh200"
)

// Backends lists the backend names Open accepts.
func Backends() []string {
	return []string{BackendNVML, BackendNone, BackendMockDGXA100, BackendMockDGXH100, BackendMockDGXH200}
}

// Reasons reported in Inventory.Reason when no GPU data can be read.
const (
	ReasonNoDriver = "NVIDIA driver not installed (NVML library not found)"
	ReasonDisabled = "GPU backend disabled (--gpu-backend none)"
	ReasonNoCgo    = "bud-agent was built without cgo: NVML unavailable"
)

// ErrClosed is returned by a Source used after Close.
var ErrClosed = errors.New("gpu: source closed")

// DefaultIgnoredXIDs are the XIDs that do not make a GPU unhealthy: they are
// raised by application faults (the offending process is killed, the GPU is
// fine), as in NVIDIA's k8s-device-plugin. Every other XID makes the GPU
// Unhealthy.
//
//	13  graphics engine exception      31  GPU memory page fault
//	43  GPU stopped processing         45  preemptive cleanup
//	68  NVDEC0 exception               109 context switch timeout
var DefaultIgnoredXIDs = map[uint64]bool{13: true, 31: true, 43: true, 45: true, 68: true, 109: true}

// DefaultAggregateSingleBitDegraded is the lifetime count of corrected
// (single-bit) ECC errors from which a GPU is Degraded. Corrected errors are
// harmless one by one; a lifetime count in the thousands points at failing
// memory worth draining the GPU for (NVIDIA raises XID 92 for a high rate).
const DefaultAggregateSingleBitDegraded = 1000

// MaxXIDsPerGPU is how many XID events are kept per GPU (the newest).
const MaxXIDsPerGPU = 32

// Options tune a Source. The zero value is usable.
type Options struct {
	// IgnoredXIDs are XIDs that leave a GPU Healthy (they are still listed
	// in Health.XIDs). nil means DefaultIgnoredXIDs; an empty map ignores none.
	IgnoredXIDs map[uint64]bool
	// VolatileDoubleBitUnhealthy: a GPU with more uncorrected (double-bit)
	// ECC errors since the last driver load than this is Unhealthy. Default
	// 0: any uncorrected error.
	VolatileDoubleBitUnhealthy uint64
	// AggregateSingleBitDegraded: a GPU with at least this many corrected
	// ECC errors over its lifetime is Degraded. 0 means
	// DefaultAggregateSingleBitDegraded.
	AggregateSingleBitDegraded uint64
	// Logger receives NVML problems; nil means slog.Default().
	Logger *slog.Logger
	// Now stamps samples and XIDs; nil means time.Now.
	Now func() time.Time
	// MockEventsPath is a file of injected faults that the mock:* backends
	// poll; see the format in mock.go. Ignored by the other backends.
	MockEventsPath string
	// MockSeed makes the mock:* backends' GPU UUIDs stable: the same seed
	// (the agent passes its machine id and hostname) gives the same UUIDs.
	// Empty means random UUIDs.
	MockSeed string

	// eventWait is how long one wait for NVML events blocks (500ms); tests
	// shorten it so Close returns quickly.
	eventWait time.Duration
}

func (o Options) withDefaults() Options {
	if o.IgnoredXIDs == nil {
		o.IgnoredXIDs = DefaultIgnoredXIDs
	}
	if o.AggregateSingleBitDegraded == 0 {
		o.AggregateSingleBitDegraded = DefaultAggregateSingleBitDegraded
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.eventWait <= 0 {
		o.eventWait = 500 * time.Millisecond
	}
	return o
}

// Clock event ("throttle") reason names, as NVML's bitmask bits.
const (
	ThrottleGpuIdle                   = "GpuIdle"
	ThrottleApplicationsClocksSetting = "ApplicationsClocksSetting"
	ThrottleSwPowerCap                = "SwPowerCap"
	ThrottleHwSlowdown                = "HwSlowdown"
	ThrottleSyncBoost                 = "SyncBoost"
	ThrottleSwThermalSlowdown         = "SwThermalSlowdown"
	ThrottleHwThermalSlowdown         = "HwThermalSlowdown"
	ThrottleHwPowerBrakeSlowdown      = "HwPowerBrakeSlowdown"
	ThrottleDisplayClockSetting       = "DisplayClockSetting"
	ThrottleBoardLimit                = "BoardLimit"
	ThrottleReliability               = "Reliability"
)

// throttleBits maps NVML's nvmlClocksEventReason bits to names, in bit order.
var throttleBits = []struct {
	bit  uint64
	name string
}{
	{0x1, ThrottleGpuIdle},
	{0x2, ThrottleApplicationsClocksSetting},
	{0x4, ThrottleSwPowerCap},
	{0x8, ThrottleHwSlowdown},
	{0x10, ThrottleSyncBoost},
	{0x20, ThrottleSwThermalSlowdown},
	{0x40, ThrottleHwThermalSlowdown},
	{0x80, ThrottleHwPowerBrakeSlowdown},
	{0x100, ThrottleDisplayClockSetting},
	{0x200, ThrottleBoardLimit},
	{0x400, ThrottleReliability},
}

// throttleNames turns a clock event reason bitmask into names; unknown bits
// become "Unknown(0x...)". nil for 0.
func throttleNames(mask uint64) []string {
	if mask == 0 {
		return nil
	}
	var out []string
	for _, b := range throttleBits {
		if mask&b.bit != 0 {
			out = append(out, b.name)
			mask &^= b.bit
		}
	}
	if mask != 0 {
		out = append(out, fmt.Sprintf("Unknown(%#x)", mask))
	}
	return out
}

// throttleMask is the inverse of throttleNames (for injected faults).
func throttleMask(names []string) (uint64, error) {
	var m uint64
	for _, n := range names {
		found := false
		for _, b := range throttleBits {
			if b.name == n {
				m |= b.bit
				found = true
				break
			}
		}
		if !found {
			return 0, fmt.Errorf("unknown throttle reason %q", n)
		}
	}
	return m, nil
}

// degradingThrottles slow the GPU for a hardware or thermal reason. SwPowerCap
// (running at the power limit under load) and GpuIdle are normal.
var degradingThrottles = map[string]string{
	ThrottleHwSlowdown:           "hardware slowdown",
	ThrottleHwThermalSlowdown:    "hardware thermal slowdown",
	ThrottleHwPowerBrakeSlowdown: "hardware power brake slowdown",
	ThrottleSwThermalSlowdown:    "thermal slowdown",
}

// xidNames describes the XIDs worth naming in a reason.
var xidNames = map[uint64]string{
	13:  "graphics engine exception",
	31:  "GPU memory page fault",
	32:  "invalid or corrupted push buffer stream",
	38:  "driver firmware error",
	43:  "GPU stopped processing",
	45:  "preemptive cleanup",
	48:  "double-bit ECC error",
	61:  "internal micro-controller breakpoint",
	62:  "internal micro-controller halt",
	63:  "ECC page retirement or row remapping event",
	64:  "ECC page retirement or row remapper recording failure",
	68:  "NVDEC0 exception",
	69:  "graphics engine class error",
	74:  "NVLink error",
	79:  "GPU has fallen off the bus",
	92:  "high single-bit ECC error rate",
	94:  "contained ECC error",
	95:  "uncontained ECC error",
	109: "context switch timeout",
	119: "GSP RPC timeout",
	120: "GSP error",
	121: "C2C link error",
	140: "unrecovered ECC error",
}

// Evaluate is the health verdict for one sample. It is pure: the same sample
// and options always give the same answer. Reasons are sorted worst first.
//
// Unhealthy: an XID not in IgnoredXIDs; more volatile double-bit ECC errors
// than VolatileDoubleBitUnhealthy; row remapping failed.
// Degraded: a row remap or page retirement pending (the GPU needs a reset to
// take the bad memory out of service, but still works); aggregate single-bit
// ECC errors >= AggregateSingleBitDegraded; a hardware or thermal clock
// slowdown. Ignored XIDs give no reason. A GPU NVML has lost is judged by the
// sampler (Unhealthy, "GPU fell off the bus"), not here.
func Evaluate(h Health, o Options) (State, []string) {
	o = o.withDefaults()
	var bad, warn []string

	// One reason per distinct XID code, newest occurrence.
	last := map[uint64]XID{}
	count := map[uint64]int{}
	for _, x := range h.XIDs {
		if o.IgnoredXIDs[x.Code] {
			continue
		}
		count[x.Code]++
		if l, ok := last[x.Code]; !ok || !x.At.Before(l.At) {
			last[x.Code] = x
		}
	}
	codes := make([]uint64, 0, len(last))
	for c := range last {
		codes = append(codes, c)
	}
	sort.Slice(codes, func(i, j int) bool { return codes[i] < codes[j] })
	for _, c := range codes {
		r := fmt.Sprintf("XID %d", c)
		if n, ok := xidNames[c]; ok {
			r += " (" + n + ")"
		}
		if count[c] > 1 {
			r += fmt.Sprintf(" x%d", count[c])
		}
		r += ", last at " + last[c].At.UTC().Format(time.RFC3339)
		bad = append(bad, r)
	}

	if v := h.ECCVolatileDouble; v != nil && *v > o.VolatileDoubleBitUnhealthy {
		bad = append(bad, fmt.Sprintf("%d uncorrected (double-bit) ECC errors since driver load", *v))
	}
	if h.RemappingFailed != nil && *h.RemappingFailed {
		bad = append(bad, "row remapping failed: memory cannot be repaired")
	}
	if h.RemappedRowsPending != nil && *h.RemappedRowsPending {
		warn = append(warn, "row remapping pending: GPU reset needed")
	}
	if h.RetiredPagesPending != nil && *h.RetiredPagesPending {
		warn = append(warn, "page retirement pending: GPU reset needed")
	}
	if v := h.ECCAggregateSingle; v != nil && *v >= o.AggregateSingleBitDegraded {
		warn = append(warn, fmt.Sprintf("%d corrected (single-bit) ECC errors over the GPU's life (threshold %d)", *v, o.AggregateSingleBitDegraded))
	}
	for _, t := range h.ThrottleReasons {
		if d, ok := degradingThrottles[t]; ok {
			warn = append(warn, "clocks throttled: "+d+" ("+t+")")
		}
	}

	switch {
	case len(bad) > 0:
		return Unhealthy, append(bad, warn...)
	case len(warn) > 0:
		return Degraded, warn
	default:
		return Healthy, nil
	}
}

// unavailable is a Source with no GPUs and a reason.
type unavailable struct{ reason string }

// Unavailable returns a Source that reports Available false with reason.
func Unavailable(reason string) Source { return unavailable{reason: reason} }

func (u unavailable) Inventory(ctx context.Context) (Inventory, error) {
	if err := ctx.Err(); err != nil {
		return Inventory{}, err
	}
	return Inventory{Available: false, Reason: u.reason, GPUs: []GPU{}}, nil
}

func (u unavailable) Health(ctx context.Context) ([]Health, error) { return nil, ctx.Err() }

func (u unavailable) Close() error { return nil }

func unknownBackend(name string) error {
	return fmt.Errorf("gpu: unknown backend %q (valid: %s)", name, strings.Join(Backends(), ", "))
}
