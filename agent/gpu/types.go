// Package gpu reads NVIDIA GPU inventory and health through NVML. It is the
// only cgo package of the agent: the rest of the agent sees the plain types
// below, never NVML's.
package gpu

import (
	"context"
	"time"
)

// Inventory is what a node has, read once and again on change.
type Inventory struct {
	// Available is false when there is no usable NVML; Reason says why
	// (e.g. "NVIDIA driver not installed (NVML library not found)").
	Available         bool   `json:"available"`
	Reason            string `json:"reason,omitempty"`
	DriverVersion     string `json:"driver_version,omitempty"`
	CUDADriverVersion string `json:"cuda_driver_version,omitempty"` // "12.4"
	NVMLVersion       string `json:"nvml_version,omitempty"`
	GPUs              []GPU  `json:"gpus"`
}

// GPU is one physical GPU. Pointer fields are nil when the GPU does not
// support them (NVML answered NOT_SUPPORTED), never zero-filled.
type GPU struct {
	Index             int      `json:"index"`
	UUID              string   `json:"uuid"`
	Serial            string   `json:"serial,omitempty"`
	Product           string   `json:"product"`
	Brand             string   `json:"brand,omitempty"`
	Architecture      string   `json:"architecture,omitempty"`       // "Hopper"
	ComputeCapability string   `json:"compute_capability,omitempty"` // "9.0"
	MemoryTotalBytes  *uint64  `json:"memory_total_bytes,omitempty"`
	BAR1TotalBytes    *uint64  `json:"bar1_total_bytes,omitempty"`
	PCIBusID          string   `json:"pci_bus_id,omitempty"`
	PCIDeviceID       string   `json:"pci_device_id,omitempty"` // "0x233010de"
	PersistenceMode   *bool    `json:"persistence_mode,omitempty"`
	PowerLimitWatts   *float64 `json:"power_limit_watts,omitempty"`
	MIG               *MIG     `json:"mig,omitempty"` // nil: not MIG capable
	NVLinks           []NVLink `json:"nvlinks,omitempty"`
}

// MIG is a GPU's MIG mode and devices.
type MIG struct {
	Enabled bool        `json:"enabled"`
	Devices []MIGDevice `json:"devices,omitempty"`
}

// MIGDevice is one MIG instance.
type MIGDevice struct {
	Index       int    `json:"index"`
	UUID        string `json:"uuid"`
	Profile     string `json:"profile"` // "1g.10gb"
	MemoryBytes uint64 `json:"memory_bytes"`
}

// NVLink is one active link.
type NVLink struct {
	Link         int    `json:"link"`
	PeerPCIBusID string `json:"peer_pci_bus_id"`
}

// State is a GPU's health verdict.
type State string

// Health states.
const (
	Healthy   State = "Healthy"
	Degraded  State = "Degraded"
	Unhealthy State = "Unhealthy"
)

// Health is one sample of a GPU's health. Pointer fields are nil when not
// supported.
type Health struct {
	UUID                string    `json:"uuid"`
	Index               int       `json:"index"`
	State               State     `json:"state"`
	Reasons             []string  `json:"reasons,omitempty"`
	TemperatureC        *uint32   `json:"temperature_c,omitempty"`
	PowerDrawWatts      *float64  `json:"power_draw_watts,omitempty"`
	UtilizationGPU      *uint32   `json:"utilization_gpu_percent,omitempty"`
	UtilizationMemory   *uint32   `json:"utilization_memory_percent,omitempty"`
	ECCVolatileSingle   *uint64   `json:"ecc_volatile_single_bit,omitempty"`
	ECCVolatileDouble   *uint64   `json:"ecc_volatile_double_bit,omitempty"`
	ECCAggregateSingle  *uint64   `json:"ecc_aggregate_single_bit,omitempty"`
	ECCAggregateDouble  *uint64   `json:"ecc_aggregate_double_bit,omitempty"`
	RetiredPagesPending *bool     `json:"retired_pages_pending,omitempty"`
	RemappedRowsPending *bool     `json:"remapped_rows_pending,omitempty"`
	RemappingFailed     *bool     `json:"remapping_failed,omitempty"`
	ThrottleReasons     []string  `json:"throttle_reasons,omitempty"`
	XIDs                []XID     `json:"xids,omitempty"` // seen since the agent started
	SampledAt           time.Time `json:"sampled_at"`
}

// XID is one XID error event.
type XID struct {
	Code uint64    `json:"code"`
	At   time.Time `json:"at"`
}

// Source is what the agent needs from a GPU backend.
type Source interface {
	// Inventory reads the static facts. With no NVML it returns an
	// Inventory with Available false and the reason, and no error.
	Inventory(ctx context.Context) (Inventory, error)
	// Health samples every GPU.
	Health(ctx context.Context) ([]Health, error)
	// Close releases NVML.
	Close() error
}
