package controller

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bud-ecosystem/budfleet/controller/store"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
	gpuv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/gpu/v1"
)

// gpuReports stores the GPU inventory and health nodes report; the
// labels, taints and problems shown to operators are derived from them.
type gpuReports struct{ srv *Server }

func (*gpuReports) name() string { return "gpu" }

func (m *gpuReports) handlers() []handler {
	return []handler{on(m.handleInventory), on(m.handleHealth)}
}

func (*gpuReports) start(context.Context, *session) error { return nil }

func (m *gpuReports) handleInventory(ctx context.Context, sess *session, msg *agentv1.ConnectRequest_GpuInventory) error {
	if err := checkNodeText(msg.GpuInventory); err != nil {
		m.srv.refusals.note(ctx, "gpu inventory", sess.nodeID, err)
		return nil
	}
	return m.srv.reports.submit(ctx, sess.nodeID, "gpu_inventory", func(ctx context.Context) error {
		if err := m.recordInventory(ctx, sess.nodeID, msg.GpuInventory); err != nil {
			return status.Errorf(codes.Internal, "store GPU inventory: %v", err)
		}
		return nil
	})
}

func (m *gpuReports) handleHealth(ctx context.Context, sess *session, msg *agentv1.ConnectRequest_GpuHealth) error {
	if err := checkNodeText(msg.GpuHealth); err != nil {
		m.srv.refusals.note(ctx, "gpu health", sess.nodeID, err)
		return nil
	}
	return m.srv.reports.submit(ctx, sess.nodeID, "gpu_health", func(ctx context.Context) error {
		if err := m.recordHealth(ctx, sess.nodeID, msg.GpuHealth); err != nil {
			return status.Errorf(codes.Internal, "store GPU health: %v", err)
		}
		return nil
	})
}

func decodeGPUs(n store.Node) (*fleetv1.NodeGpus, error) {
	g := &fleetv1.NodeGpus{}
	if len(n.GPUs) == 0 {
		return g, nil
	}
	if err := proto.Unmarshal(n.GPUs, g); err != nil {
		return nil, fmt.Errorf("node %s: stored GPU state: %w", n.ID, err)
	}
	return g, nil
}

// update applies fn to a node's stored GPU state.
func (m *gpuReports) update(ctx context.Context, nodeID string, fn func(*fleetv1.NodeGpus)) error {
	s := m.srv
	_, err := s.store.UpdateNode(ctx, nodeID, func(n *store.Node) error {
		g, err := decodeGPUs(*n)
		if err != nil {
			g = &fleetv1.NodeGpus{} // a report replaces what cannot be read
		}
		fn(g)
		b, err := proto.Marshal(g)
		if err != nil {
			return err
		}
		n.GPUs = b
		return nil
	})
	return err
}

func (m *gpuReports) recordInventory(ctx context.Context, nodeID string, inv *gpuv1.GpuInventory) error {
	now := timestamppb.New(m.srv.opts.Now())
	return m.update(ctx, nodeID, func(g *fleetv1.NodeGpus) {
		g.Inventory = inv
		g.InventoryUpdatedAt = now
		if n := uint32(len(inv.GetGpus())); n > g.MaxGpuCount {
			g.MaxGpuCount = n
		}
		// Health of GPUs that are gone would read as current otherwise.
		present := map[string]bool{}
		for _, gpu := range inv.GetGpus() {
			present[gpu.GetUuid()] = true
		}
		kept := g.Health[:0]
		for _, h := range g.Health {
			if present[h.GetUuid()] {
				kept = append(kept, h)
			}
		}
		g.Health = kept
	})
}

func (m *gpuReports) recordHealth(ctx context.Context, nodeID string, r *gpuv1.GpuHealthReport) error {
	now := timestamppb.New(m.srv.opts.Now())
	err := m.update(ctx, nodeID, func(g *fleetv1.NodeGpus) {
		g.Health = r.GetGpus()
		g.HealthUpdatedAt = now
	})
	if err == nil {
		m.srv.quarantine.observe(nodeID)
	}
	return err
}

// GPU-facing Kubernetes labels and taint, in the forms NVIDIA's GPU feature
// discovery uses.
const (
	labelGPU         = "nvidia.com/gpu"
	labelGPUNode     = "node.kubernetes.io/gpu"
	labelProduct     = "nvidia.com/gpu.product"
	labelCount       = "nvidia.com/gpu.count"
	labelMemory      = "nvidia.com/gpu.memory"
	labelMIGCapable  = "nvidia.com/mig.capable"
	labelCUDAMajor   = "nvidia.com/cuda.driver.major"
	labelCUDAMinor   = "nvidia.com/cuda.driver.minor"
	labelDriverMajor = "nvidia.com/gpu.driver.major"
)

// gpuLabels derives the node's Kubernetes labels from its GPU inventory;
// none for a node without GPUs.
func gpuLabels(inv *gpuv1.GpuInventory) map[string]string {
	gpus := inv.GetGpus()
	if len(gpus) == 0 {
		return nil
	}
	l := map[string]string{
		labelGPU:     "true",
		labelGPUNode: "true",
		labelCount:   strconv.Itoa(len(gpus)),
		labelProduct: labelValue(gpus[0].GetProduct()),
	}
	if gpus[0].MemoryTotalBytes != nil {
		l[labelMemory] = strconv.FormatUint(gpus[0].GetMemoryTotalBytes()/(1<<20), 10)
	}
	migCapable := true
	for _, g := range gpus {
		if g.GetMig() == nil {
			migCapable = false
		}
	}
	l[labelMIGCapable] = strconv.FormatBool(migCapable)
	if v := versionParts(inv.GetCudaDriverVersion()); len(v) >= 2 {
		l[labelCUDAMajor], l[labelCUDAMinor] = v[0], v[1]
	}
	if v := versionParts(inv.GetDriverVersion()); len(v) >= 1 {
		l[labelDriverMajor] = v[0]
	}
	return l
}

// versionParts returns the leading numeric parts of a dotted version:
// "12.4.1" -> [12 4 1], "550.54.15-beta" -> [550 54 15].
func versionParts(v string) []string {
	var out []string
	for _, p := range strings.Split(v, ".") {
		n := 0
		for n < len(p) && p[n] >= '0' && p[n] <= '9' {
			n++
		}
		if n == 0 {
			break
		}
		out = append(out, p[:n])
		if n < len(p) {
			break
		}
	}
	return out
}

// labelValue makes a product name a valid label value the way GPU feature
// discovery does: "NVIDIA H100 80GB HBM3" -> "NVIDIA-H100-80GB-HBM3".
func labelValue(product string) string {
	var b strings.Builder
	for _, r := range strings.TrimSpace(product) {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			b.WriteRune(r)
		default:
			b.WriteRune('-')
		}
	}
	v := strings.Trim(b.String(), "-_.")
	if len(v) > 63 {
		v = strings.TrimRight(v[:63], "-_.")
	}
	return v
}

func gpuTaints(inv *gpuv1.GpuInventory) []*fleetv1.Taint {
	if len(inv.GetGpus()) == 0 {
		return nil
	}
	return []*fleetv1.Taint{{Key: labelGPU, Value: "true", Effect: "NoSchedule"}}
}

// gpuProblems lists what an operator should look at: GPUs that disappeared
// and GPUs that are not healthy.
func gpuProblems(g *fleetv1.NodeGpus) []string {
	var out []string
	if have := uint32(len(g.GetInventory().GetGpus())); have < g.GetMaxGpuCount() {
		out = append(out, fmt.Sprintf("gpu-missing: %d of %d GPUs present (did one fall off the bus?)", have, g.GetMaxGpuCount()))
	}
	for _, h := range g.GetHealth() {
		if h.GetState() == gpuv1.HealthState_HEALTH_STATE_UNHEALTHY {
			id := fmt.Sprintf("GPU %d", h.GetIndex())
			if h.GetUuid() != "" {
				id += " (" + h.GetUuid() + ")"
			}
			out = append(out, fmt.Sprintf("gpu-unhealthy: %s: %s", id, strings.Join(h.GetReasons(), "; ")))
		}
	}
	if q := g.GetQuarantine(); q != nil {
		msg := "gpu-quarantine: " + strings.ToLower(strings.TrimPrefix(q.GetState().String(), "QUARANTINE_STATE_"))
		if q.GetError() != "" {
			msg += ": " + q.GetError()
		}
		out = append(out, msg)
	}
	return out
}

func healthByUUID(g *fleetv1.NodeGpus) map[string]*gpuv1.GpuHealth {
	m := map[string]*gpuv1.GpuHealth{}
	for _, h := range g.GetHealth() {
		m[h.GetUuid()] = h
	}
	return m
}

// ListGpus returns a row per GPU and per MIG device.
func (a *FleetAPI) ListGpus(ctx context.Context, req *fleetv1.ListGpusRequest) (*fleetv1.ListGpusResponse, error) {
	nodes, err := a.s.store.ListNodes(ctx)
	if err != nil {
		return nil, storeErr(err)
	}
	if req.GetNodeId() != "" {
		found := false
		for _, n := range nodes {
			if n.ID == req.GetNodeId() {
				nodes, found = []store.Node{n}, true
				break
			}
		}
		if !found {
			return nil, status.Errorf(codes.NotFound, "node %s: not found", req.GetNodeId())
		}
	}
	product := strings.ToLower(req.GetProduct())
	out := &fleetv1.ListGpusResponse{}
	for _, n := range nodes {
		g, err := decodeGPUs(n)
		if err != nil {
			// One unreadable record should not hide the rest of the fleet;
			// 'nodes get' shows it as a problem.
			a.s.log.WarnContext(ctx, "skipping unreadable GPU state", "node_id", n.ID, "error", err)
			continue
		}
		health := healthByUUID(g)
		for _, gpu := range g.GetInventory().GetGpus() {
			if product != "" && !strings.Contains(strings.ToLower(gpu.GetProduct()), product) {
				continue
			}
			h := health[gpu.GetUuid()]
			state := h.GetState()
			if req.GetUnhealthy() && state != gpuv1.HealthState_HEALTH_STATE_DEGRADED && state != gpuv1.HealthState_HEALTH_STATE_UNHEALTHY {
				continue
			}
			out.Gpus = append(out.Gpus, &fleetv1.GpuRow{
				NodeId: n.ID, Hostname: n.Hostname, Index: gpu.GetIndex(), Uuid: gpu.GetUuid(),
				Product: gpu.GetProduct(), MemoryBytes: gpu.GetMemoryTotalBytes(), Health: state,
				Reasons: h.GetReasons(), PciBusId: gpu.GetPciBusId(),
			})
			for _, m := range gpu.GetMig().GetDevices() {
				out.Gpus = append(out.Gpus, &fleetv1.GpuRow{
					NodeId: n.ID, Hostname: n.Hostname, Index: gpu.GetIndex(), MigIndex: proto.Uint32(m.GetIndex()),
					Uuid: m.GetUuid(), Product: gpu.GetProduct(), MemoryBytes: m.GetMemoryBytes(), Health: state,
					Reasons: h.GetReasons(), PciBusId: gpu.GetPciBusId(), MigProfile: m.GetProfile(),
				})
			}
		}
	}
	// Rows are built whole, then cut: a row is named by its node and its
	// (GPU or MIG) UUID.
	rows, next, err := page(out.Gpus, func(r *fleetv1.GpuRow) string { return r.GetNodeId() + "/" + r.GetUuid() }, func(r *fleetv1.GpuRow) *fleetv1.GpuRow { return r }, req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	return &fleetv1.ListGpusResponse{Gpus: rows, NextPageToken: next}, nil
}

// GetGpuSummary counts GPUs by product and health.
func (a *FleetAPI) GetGpuSummary(ctx context.Context, _ *fleetv1.GetGpuSummaryRequest) (*fleetv1.GetGpuSummaryResponse, error) {
	nodes, err := a.s.store.ListNodes(ctx)
	if err != nil {
		return nil, storeErr(err)
	}
	rows := map[string]*fleetv1.GpuSummaryRow{}
	out := &fleetv1.GetGpuSummaryResponse{}
	for _, n := range nodes {
		g, err := decodeGPUs(n)
		if err != nil {
			a.s.log.WarnContext(ctx, "skipping unreadable GPU state", "node_id", n.ID, "error", err)
			continue
		}
		gpus := g.GetInventory().GetGpus()
		if len(gpus) == 0 {
			out.NodesWithoutGpus++
		} else {
			out.NodesWithGpus++
		}
		if uint32(len(gpus)) < g.GetMaxGpuCount() {
			out.NodesMissingGpus++
		}
		health := healthByUUID(g)
		seen := map[string]bool{}
		for _, gpu := range gpus {
			r := rows[gpu.GetProduct()]
			if r == nil {
				r = &fleetv1.GpuSummaryRow{Product: gpu.GetProduct()}
				rows[gpu.GetProduct()] = r
			}
			if !seen[gpu.GetProduct()] {
				seen[gpu.GetProduct()] = true
				r.Nodes++
			}
			r.Total++
			switch health[gpu.GetUuid()].GetState() {
			case gpuv1.HealthState_HEALTH_STATE_HEALTHY:
				r.Healthy++
			case gpuv1.HealthState_HEALTH_STATE_DEGRADED:
				r.Degraded++
			case gpuv1.HealthState_HEALTH_STATE_UNHEALTHY:
				r.Unhealthy++
			default:
				r.Unknown++
			}
		}
	}
	for _, r := range rows {
		out.Products = append(out.Products, r)
	}
	sort.Slice(out.Products, func(i, j int) bool { return out.Products[i].Product < out.Products[j].Product })
	return out, nil
}
