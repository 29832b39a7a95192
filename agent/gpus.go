package agent

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bud-ecosystem/budfleet/agent/gpu"
	"github.com/bud-ecosystem/budfleet/agent/session"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	gpuv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/gpu/v1"
)

// GPUSource reads GPU inventory and health (agent/gpu in production).
type GPUSource interface {
	Inventory(ctx context.Context) (gpu.Inventory, error)
	Health(ctx context.Context) ([]gpu.Health, error)
}

// gpuReporter reports GPU inventory at the start of a session and when it
// changes, and health on its own interval, sending a change at once.
type gpuReporter struct {
	source      GPUSource
	check       time.Duration
	healthEvery time.Duration
	now         func() time.Time
	log         *slog.Logger
}

func (*gpuReporter) Name() string                { return "gpu" }
func (*gpuReporter) Handlers() []session.Handler { return nil }

// Run never shares a goroutine with the heartbeat: a slow NVML call delays
// only this loop.
func (m *gpuReporter) Run(ctx context.Context, s *session.Session) error {
	fullEvery := s.Welcome().FullInventoryInterval
	invTick := time.NewTicker(m.check)
	defer invTick.Stop()
	healthTick := time.NewTicker(m.healthEvery)
	defer healthTick.Stop()
	var lastInv, lastHealth string
	var lastFull time.Time
	sendInventory := func() error {
		inv, err := m.source.Inventory(ctx)
		if err != nil {
			m.log.Warn("read GPU inventory", "error", err, "gpus_read", len(inv.GPUs))
			// What could be read is still worth reporting: without it the
			// controller cannot notice a GPU going missing.
			if len(inv.GPUs) == 0 {
				return nil
			}
		}
		fp := fingerprint(inv)
		if fp == lastInv && m.now().Sub(lastFull) < fullEvery {
			return nil
		}
		if err := s.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_GpuInventory{GpuInventory: gpuInventoryToProto(inv)}}); err != nil {
			return err
		}
		if fp != lastInv && lastInv != "" {
			m.log.Info("GPU inventory changed", "gpus", len(inv.GPUs), "available", inv.Available)
		}
		lastInv, lastFull = fp, m.now()
		lastHealth = "" // resend health with a new inventory
		return nil
	}
	sendHealth := func() error {
		hs, err := m.source.Health(ctx)
		if err != nil {
			m.log.Warn("sample GPU health", "error", err)
			return nil
		}
		key := healthKey(hs)
		if key == lastHealth {
			return nil
		}
		if err := s.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_GpuHealth{GpuHealth: gpuHealthToProto(hs)}}); err != nil {
			return err
		}
		if lastHealth != "" {
			m.log.Info("GPU health changed", "health", key)
		}
		lastHealth = key
		return nil
	}
	if sendInventory() != nil || sendHealth() != nil {
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-invTick.C:
			if sendInventory() != nil || sendHealth() != nil {
				return nil
			}
		case <-healthTick.C:
			if sendHealth() != nil {
				return nil
			}
		}
	}
}

// fingerprint identifies an inventory's content. It hashes the encoded
// message: printing it would include the addresses behind its optional
// fields, which differ on every read, and resend an unchanged inventory.
func fingerprint(inv gpu.Inventory) string {
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(gpuInventoryToProto(inv))
	sum := sha256.Sum256(b)
	return string(sum[:])
}

// healthKey is what makes a health report worth sending at once: verdicts,
// reasons and XIDs, not the sensor readings that move every sample.
func healthKey(hs []gpu.Health) string {
	var b strings.Builder
	for _, h := range hs {
		fmt.Fprintf(&b, "%s=%s[%s]x%d;", h.UUID, h.State, strings.Join(h.Reasons, ","), len(h.XIDs))
	}
	return b.String()
}

func gpuInventoryToProto(inv gpu.Inventory) *gpuv1.GpuInventory {
	p := &gpuv1.GpuInventory{
		Available:         inv.Available,
		Reason:            inv.Reason,
		DriverVersion:     inv.DriverVersion,
		CudaDriverVersion: inv.CUDADriverVersion,
		NvmlVersion:       inv.NVMLVersion,
	}
	for _, g := range inv.GPUs {
		pg := &gpuv1.Gpu{
			Index:             uint32(g.Index),
			Uuid:              g.UUID,
			Serial:            g.Serial,
			Product:           g.Product,
			Brand:             g.Brand,
			Architecture:      g.Architecture,
			ComputeCapability: g.ComputeCapability,
			MemoryTotalBytes:  g.MemoryTotalBytes,
			Bar1TotalBytes:    g.BAR1TotalBytes,
			PciBusId:          g.PCIBusID,
			PciDeviceId:       g.PCIDeviceID,
			PersistenceMode:   g.PersistenceMode,
			PowerLimitWatts:   g.PowerLimitWatts,
		}
		if g.MIG != nil {
			pg.Mig = &gpuv1.Mig{Enabled: g.MIG.Enabled}
			for _, m := range g.MIG.Devices {
				pg.Mig.Devices = append(pg.Mig.Devices, &gpuv1.MigDevice{Index: uint32(m.Index), Uuid: m.UUID, Profile: m.Profile, MemoryBytes: m.MemoryBytes})
			}
		}
		for _, l := range g.NVLinks {
			pg.Nvlinks = append(pg.Nvlinks, &gpuv1.NvLink{Link: uint32(l.Link), PeerPciBusId: l.PeerPCIBusID})
		}
		p.Gpus = append(p.Gpus, pg)
	}
	return p
}

var healthStates = map[gpu.State]gpuv1.HealthState{
	gpu.Healthy:   gpuv1.HealthState_HEALTH_STATE_HEALTHY,
	gpu.Degraded:  gpuv1.HealthState_HEALTH_STATE_DEGRADED,
	gpu.Unhealthy: gpuv1.HealthState_HEALTH_STATE_UNHEALTHY,
}

func gpuHealthToProto(hs []gpu.Health) *gpuv1.GpuHealthReport {
	r := &gpuv1.GpuHealthReport{}
	for _, h := range hs {
		ph := &gpuv1.GpuHealth{
			Uuid:                     h.UUID,
			Index:                    uint32(h.Index),
			State:                    healthStates[h.State],
			Reasons:                  h.Reasons,
			TemperatureC:             h.TemperatureC,
			PowerDrawWatts:           h.PowerDrawWatts,
			UtilizationGpuPercent:    h.UtilizationGPU,
			UtilizationMemoryPercent: h.UtilizationMemory,
			EccVolatileSingleBit:     h.ECCVolatileSingle,
			EccVolatileDoubleBit:     h.ECCVolatileDouble,
			EccAggregateSingleBit:    h.ECCAggregateSingle,
			EccAggregateDoubleBit:    h.ECCAggregateDouble,
			RetiredPagesPending:      h.RetiredPagesPending,
			RemappedRowsPending:      h.RemappedRowsPending,
			RemappingFailed:          h.RemappingFailed,
			ThrottleReasons:          h.ThrottleReasons,
		}
		if !h.SampledAt.IsZero() {
			ph.SampledAt = timestamppb.New(h.SampledAt)
		}
		for _, x := range h.XIDs {
			ph.Xids = append(ph.Xids, &gpuv1.Xid{Code: x.Code, At: timestamppb.New(x.At)})
		}
		r.Gpus = append(r.Gpus, ph)
	}
	return r
}
