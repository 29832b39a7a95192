package controller

import (
	"context"
	"fmt"
	"maps"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/bud-ecosystem/budfleet/controller/store"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
	gpuv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/gpu/v1"
)

const (
	gpuTestH100 = "NVIDIA H100 80GB HBM3"
	gpuTestA100 = "NVIDIA A100-SXM4-40GB"
)

// gpuTestInventory is n GPUs of product with memMiB each, as the agent
// reports a DGX: driver 550.54.15, CUDA 12.4, MIG capable but off.
func gpuTestInventory(tag, product string, n int, memMiB uint64) *gpuv1.GpuInventory {
	inv := &gpuv1.GpuInventory{Available: true, DriverVersion: "550.54.15", CudaDriverVersion: "12.4", NvmlVersion: "12.550.54.15"}
	for i := range n {
		inv.Gpus = append(inv.Gpus, &gpuv1.Gpu{
			Index:            uint32(i),
			Uuid:             gpuTestUUID(tag, i),
			Product:          product,
			MemoryTotalBytes: proto.Uint64(memMiB << 20),
			PciBusId:         fmt.Sprintf("0000:%02x:00.0", 0x18+i),
			Mig:              &gpuv1.Mig{},
		})
	}
	return inv
}

func gpuTestUUID(tag string, i int) string { return fmt.Sprintf("GPU-%s-%d", tag, i) }

// gpuTestHealth is a health report with every GPU of inv Healthy except the
// given states by index; an index mapped to UNSPECIFIED is left out.
func gpuTestHealth(inv *gpuv1.GpuInventory, states map[uint32]gpuv1.HealthState) *gpuv1.GpuHealthReport {
	r := &gpuv1.GpuHealthReport{}
	for _, g := range inv.GetGpus() {
		st, ok := states[g.GetIndex()]
		if !ok {
			st = gpuv1.HealthState_HEALTH_STATE_HEALTHY
		}
		if st == gpuv1.HealthState_HEALTH_STATE_UNSPECIFIED {
			continue
		}
		h := &gpuv1.GpuHealth{Uuid: g.GetUuid(), Index: g.GetIndex(), State: st}
		switch st {
		case gpuv1.HealthState_HEALTH_STATE_UNHEALTHY:
			h.Reasons = []string{"XID 79 (GPU has fallen off the bus), last at 2030-01-02T03:04:05Z"}
		case gpuv1.HealthState_HEALTH_STATE_DEGRADED:
			h.Reasons = []string{"row remapping pending: GPU reset needed"}
		}
		r.Gpus = append(r.Gpus, h)
	}
	return r
}

func TestGpuLabelsDGXH100(t *testing.T) {
	inv := gpuTestInventory("h", gpuTestH100, 8, 81920)
	want := map[string]string{
		"nvidia.com/gpu":               "true",
		"node.kubernetes.io/gpu":       "true",
		"nvidia.com/gpu.count":         "8",
		"nvidia.com/gpu.product":       "NVIDIA-H100-80GB-HBM3",
		"nvidia.com/gpu.memory":        "81920",
		"nvidia.com/mig.capable":       "true",
		"nvidia.com/cuda.driver.major": "12",
		"nvidia.com/cuda.driver.minor": "4",
		"nvidia.com/gpu.driver.major":  "550",
	}
	got := gpuLabels(inv)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("gpuLabels(8x H100) =\n%v\nwant\n%v", got, want)
	}
	if err := validateLabels(got); err != nil {
		t.Errorf("derived labels are not valid Kubernetes labels: %v", err)
	}

	// One GPU that is not MIG capable makes the node not MIG capable; no
	// memory reading leaves the memory label out.
	inv.Gpus[5].Mig = nil
	inv.Gpus[0].MemoryTotalBytes = nil
	got = gpuLabels(inv)
	if got["nvidia.com/mig.capable"] != "false" {
		t.Errorf("mig.capable = %q with one GPU not MIG capable, want false", got["nvidia.com/mig.capable"])
	}
	if v, ok := got["nvidia.com/gpu.memory"]; ok {
		t.Errorf("gpu.memory = %q for a GPU without a memory reading, want no label", v)
	}
}

func TestGpuLabelsNone(t *testing.T) {
	for name, inv := range map[string]*gpuv1.GpuInventory{
		"nil":             nil,
		"no NVML":         {Available: false, Reason: "NVIDIA driver not installed (NVML library not found)", Gpus: []*gpuv1.Gpu{}},
		"backend none":    {Available: false, Reason: "GPU backend disabled (--gpu-backend none)"},
		"NVML but no GPU": {Available: true, DriverVersion: "550.54.15", CudaDriverVersion: "12.4"},
	} {
		if got := gpuLabels(inv); got != nil {
			t.Errorf("%s: gpuLabels = %v, want nil", name, got)
		}
		if got := gpuTaints(inv); got != nil {
			t.Errorf("%s: gpuTaints = %v, want nil", name, got)
		}
	}
}

func TestGpuLabelsCudaVersion(t *testing.T) {
	for _, tc := range []struct {
		cuda, driver       string
		major, minor, drv  string // "" = no label
		hasCuda, hasDriver bool
	}{
		{cuda: "12.4", driver: "550.54.15", major: "12", minor: "4", drv: "550", hasCuda: true, hasDriver: true},
		{cuda: "13.0", driver: "580.65.06", major: "13", minor: "0", drv: "580", hasCuda: true, hasDriver: true},
		{cuda: "11.8", driver: "520.61.05", major: "11", minor: "8", drv: "520", hasCuda: true, hasDriver: true},
		{cuda: "", driver: ""},
		{cuda: "12", driver: "550", drv: "550", hasDriver: true}, // a CUDA version needs a minor
		{cuda: "12.4.1", driver: "550.54.15-beta", major: "12", minor: "4", drv: "550", hasCuda: true, hasDriver: true},
		{cuda: "x.y", driver: "v550"},
	} {
		inv := gpuTestInventory("c", gpuTestH100, 1, 81920)
		inv.CudaDriverVersion, inv.DriverVersion = tc.cuda, tc.driver
		l := gpuLabels(inv)
		maj, okMaj := l["nvidia.com/cuda.driver.major"]
		min, okMin := l["nvidia.com/cuda.driver.minor"]
		if okMaj != tc.hasCuda || okMin != tc.hasCuda || maj != tc.major || min != tc.minor {
			t.Errorf("CUDA %q: cuda.driver.major=%q(%v) minor=%q(%v), want %q/%q present=%v", tc.cuda, maj, okMaj, min, okMin, tc.major, tc.minor, tc.hasCuda)
		}
		drv, okDrv := l["nvidia.com/gpu.driver.major"]
		if okDrv != tc.hasDriver || drv != tc.drv {
			t.Errorf("driver %q: gpu.driver.major=%q(%v), want %q present=%v", tc.driver, drv, okDrv, tc.drv, tc.hasDriver)
		}
		if err := validateLabels(l); err != nil {
			t.Errorf("CUDA %q driver %q: %v", tc.cuda, tc.driver, err)
		}
	}
}

func TestGpuLabelValue(t *testing.T) {
	long := strings.Repeat("a", 62) + " b" + strings.Repeat("c", 20)
	for _, tc := range []struct{ in, want string }{
		{"NVIDIA H100 80GB HBM3", "NVIDIA-H100-80GB-HBM3"},
		{"NVIDIA H200 141GB HBM3e", "NVIDIA-H200-141GB-HBM3e"},
		{"NVIDIA A100-SXM4-40GB", "NVIDIA-A100-SXM4-40GB"},
		{"  NVIDIA L4  ", "NVIDIA-L4"},
		{"Tesla V100/PCIe 32GB", "Tesla-V100-PCIe-32GB"},
		{"NVIDIA H100 (PCIe)", "NVIDIA-H100--PCIe"},
		{"GeForce RTX™ 4090", "GeForce-RTX--4090"},
		{"Quadro_RTX.8000", "Quadro_RTX.8000"},
		{"-._x._-", "x"},
		{"H100.", "H100"},
		{"H100 !", "H100"},
		{"", ""},
		{"ü", ""},
		{strings.Repeat("x", 63), strings.Repeat("x", 63)},
		{strings.Repeat("x", 64), strings.Repeat("x", 63)},
		{strings.Repeat("y", 100), strings.Repeat("y", 63)},
		// Cut at 63 ends on the '-' from the space: trimmed again.
		{long, strings.Repeat("a", 62)},
		{strings.Repeat("a", 61) + "._zz", strings.Repeat("a", 61)},
	} {
		got := labelValue(tc.in)
		if got != tc.want {
			t.Errorf("labelValue(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if !labelValueRe.MatchString(got) {
			t.Errorf("labelValue(%q) = %q is not a valid Kubernetes label value", tc.in, got)
		}
	}
}

func TestGpuTaints(t *testing.T) {
	got := gpuTaints(gpuTestInventory("t", gpuTestH100, 8, 81920))
	want := []*fleetv1.Taint{{Key: "nvidia.com/gpu", Value: "true", Effect: "NoSchedule"}}
	if len(got) != 1 || !proto.Equal(got[0], want[0]) {
		t.Errorf("gpuTaints(8x H100) = %v, want %v", got, want)
	}
}

func TestGpuProblems(t *testing.T) {
	inv := gpuTestInventory("p", gpuTestH100, 8, 81920)
	healthy := &fleetv1.NodeGpus{Inventory: inv, MaxGpuCount: 8, Health: gpuTestHealth(inv, nil).GetGpus()}
	if p := gpuProblems(healthy); len(p) != 0 {
		t.Errorf("healthy node: problems %q, want none", p)
	}
	if p := gpuProblems(&fleetv1.NodeGpus{}); len(p) != 0 {
		t.Errorf("node without GPUs: problems %q, want none", p)
	}

	// A count drop: 8 seen before, 7 now.
	seven := gpuTestInventory("p", gpuTestH100, 7, 81920)
	p := gpuProblems(&fleetv1.NodeGpus{Inventory: seven, MaxGpuCount: 8, Health: gpuTestHealth(seven, nil).GetGpus()})
	if len(p) != 1 || !strings.HasPrefix(p[0], "gpu-missing") || !strings.Contains(p[0], "7 of 8") {
		t.Errorf("7 of 8 GPUs: problems %q, want one gpu-missing problem naming 7 of 8", p)
	}
	// All gone (driver broke) is a count drop too.
	p = gpuProblems(&fleetv1.NodeGpus{Inventory: &gpuv1.GpuInventory{Available: false, Reason: "NVIDIA driver not installed"}, MaxGpuCount: 8})
	if len(p) != 1 || !strings.HasPrefix(p[0], "gpu-missing") || !strings.Contains(p[0], "0 of 8") {
		t.Errorf("0 of 8 GPUs: problems %q, want one gpu-missing problem", p)
	}

	// Unhealthy GPU 3 is a problem; Degraded GPU 5 and a GPU without a
	// health sample (6) are not.
	g := &fleetv1.NodeGpus{Inventory: inv, MaxGpuCount: 8, Health: gpuTestHealth(inv, map[uint32]gpuv1.HealthState{
		3: gpuv1.HealthState_HEALTH_STATE_UNHEALTHY,
		5: gpuv1.HealthState_HEALTH_STATE_DEGRADED,
		6: gpuv1.HealthState_HEALTH_STATE_UNSPECIFIED,
	}).GetGpus()}
	p = gpuProblems(g)
	if len(p) != 1 || !strings.HasPrefix(p[0], "gpu-unhealthy") || !strings.Contains(p[0], "GPU 3") ||
		!strings.Contains(p[0], gpuTestUUID("p", 3)) || !strings.Contains(p[0], "XID 79") {
		t.Errorf("GPU 3 unhealthy: problems %q, want one gpu-unhealthy problem naming GPU 3, its UUID and the reason", p)
	}

	// Both at once: the count drop first.
	g.Inventory = seven
	p = gpuProblems(g)
	if len(p) != 2 || !strings.HasPrefix(p[0], "gpu-missing") || !strings.HasPrefix(p[1], "gpu-unhealthy") {
		t.Errorf("7 of 8 and GPU 3 unhealthy: problems %q", p)
	}
}

func gpuTestState(t *testing.T, e *testEnv, id string) *fleetv1.NodeGpus {
	t.Helper()
	n, err := e.store.GetNode(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	g, err := decodeGPUs(n)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func TestGpuRecordInventory(t *testing.T) {
	e := newTestServer(t)
	gpus := &gpuReports{srv: e.srv}
	addNode(t, e, "n1")
	uuids := func(hs []*gpuv1.GpuHealth) []string {
		var out []string
		for _, h := range hs {
			out = append(out, h.GetUuid())
		}
		return out
	}

	inv8 := gpuTestInventory("r", gpuTestH100, 8, 81920)
	if err := gpus.recordInventory(t.Context(), "n1", inv8); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Second)
	if err := gpus.recordHealth(t.Context(), "n1", gpuTestHealth(inv8, map[uint32]gpuv1.HealthState{7: gpuv1.HealthState_HEALTH_STATE_UNHEALTHY})); err != nil {
		t.Fatal(err)
	}
	g := gpuTestState(t, e, "n1")
	if g.GetMaxGpuCount() != 8 || len(g.GetInventory().GetGpus()) != 8 || len(g.GetHealth()) != 8 {
		t.Fatalf("after 8 GPUs: max %d, %d GPUs, %d health", g.GetMaxGpuCount(), len(g.GetInventory().GetGpus()), len(g.GetHealth()))
	}
	if !g.GetInventoryUpdatedAt().AsTime().Equal(base) || !g.GetHealthUpdatedAt().AsTime().Equal(base.Add(time.Second)) {
		t.Errorf("inventory updated %v, health updated %v; want the clock's times", g.GetInventoryUpdatedAt().AsTime(), g.GetHealthUpdatedAt().AsTime())
	}

	// GPU 7 falls off: 7 reported. The max stays 8 and GPU 7's health goes.
	inv7 := gpuTestInventory("r", gpuTestH100, 7, 81920)
	e.clock.Advance(time.Second)
	if err := gpus.recordInventory(t.Context(), "n1", inv7); err != nil {
		t.Fatal(err)
	}
	g = gpuTestState(t, e, "n1")
	if g.GetMaxGpuCount() != 8 {
		t.Errorf("max GPU count %d after dropping to 7, want 8", g.GetMaxGpuCount())
	}
	want := []string{}
	for i := range 7 {
		want = append(want, gpuTestUUID("r", i))
	}
	if got := uuids(g.GetHealth()); !reflect.DeepEqual(got, want) {
		t.Errorf("health kept for %v, want %v (GPU 7's pruned)", got, want)
	}
	if !g.GetInventoryUpdatedAt().AsTime().Equal(base.Add(2 * time.Second)) {
		t.Errorf("inventory updated %v", g.GetInventoryUpdatedAt().AsTime())
	}
	resp, err := e.srv.FleetAPI().GetNode(context.Background(), &fleetv1.GetNodeRequest{Id: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	n := resp.GetNode()
	if p := n.GetProblems(); len(p) != 1 || !strings.HasPrefix(p[0], "gpu-missing") {
		t.Errorf("GetNode problems %q, want gpu-missing", p)
	}
	if n.GetKubernetesLabels()["nvidia.com/gpu.count"] != "7" || len(n.GetProposedTaints()) != 1 || n.GetGpus().GetMaxGpuCount() != 8 {
		t.Errorf("GetNode labels %v taints %v gpus.maxGpuCount %d", n.GetKubernetesLabels(), n.GetProposedTaints(), n.GetGpus().GetMaxGpuCount())
	}

	// A different set of 2 GPUs: max stays 8, no health is left over.
	other := gpuTestInventory("other", gpuTestA100, 2, 40960)
	if err := gpus.recordInventory(t.Context(), "n1", other); err != nil {
		t.Fatal(err)
	}
	g = gpuTestState(t, e, "n1")
	if g.GetMaxGpuCount() != 8 || len(g.GetHealth()) != 0 {
		t.Errorf("after 2 other GPUs: max %d, health %v", g.GetMaxGpuCount(), uuids(g.GetHealth()))
	}
	// More than ever before raises the max.
	if err := gpus.recordInventory(t.Context(), "n1", gpuTestInventory("big", gpuTestH100, 16, 81920)); err != nil {
		t.Fatal(err)
	}
	if g = gpuTestState(t, e, "n1"); g.GetMaxGpuCount() != 16 {
		t.Errorf("max GPU count %d after 16 GPUs, want 16", g.GetMaxGpuCount())
	}

	// A node that never reported GPUs shows none and no labels.
	addNode(t, e, "n2")
	resp, err = e.srv.FleetAPI().GetNode(context.Background(), &fleetv1.GetNodeRequest{Id: "n2"})
	if err != nil {
		t.Fatal(err)
	}
	if n := resp.GetNode(); n.GetGpus() != nil || n.GetKubernetesLabels() != nil || n.GetProposedTaints() != nil || n.GetProblems() != nil {
		t.Errorf("node without a GPU report: gpus %v labels %v taints %v problems %v", n.GetGpus(), n.GetKubernetesLabels(), n.GetProposedTaints(), n.GetProblems())
	}
	if err := gpus.recordInventory(t.Context(), "missing", inv8); err == nil {
		t.Error("recordGPUInventory for an unknown node succeeded")
	}
}

// gpuTestFleet stores:
//
//	n1 "a-dgx"   8x H100: 3 Unhealthy, 5 Degraded, 6 no sample, rest Healthy
//	n2 "b-a100"  2x A100, MIG on GPU 0 with two devices; GPU 0 Degraded
//	n3 "c-cpu"   --gpu-backend none
//	n4 "d-new"   never reported GPUs
//	n5 "e-dgx"   7x H100 of 8 seen before, all Healthy
func gpuTestFleet(t *testing.T) *testEnv {
	t.Helper()
	e := newTestServer(t)
	for _, id := range []string{"n1", "n2", "n3", "n4", "n5"} {
		addNode(t, e, id)
	}
	gpus := &gpuReports{srv: e.srv}
	hosts := map[string]string{"n1": "a-dgx", "n2": "b-a100", "n3": "c-cpu", "n4": "d-new", "n5": "e-dgx"}
	for id, h := range hosts {
		if _, err := e.store.UpdateNode(t.Context(), id, func(n *store.Node) error { n.Hostname = h; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	record := func(id string, inv *gpuv1.GpuInventory, states map[uint32]gpuv1.HealthState) {
		t.Helper()
		if err := gpus.recordInventory(t.Context(), id, inv); err != nil {
			t.Fatal(err)
		}
		if err := gpus.recordHealth(t.Context(), id, gpuTestHealth(inv, states)); err != nil {
			t.Fatal(err)
		}
	}
	record("n1", gpuTestInventory("n1", gpuTestH100, 8, 81920), map[uint32]gpuv1.HealthState{
		3: gpuv1.HealthState_HEALTH_STATE_UNHEALTHY,
		5: gpuv1.HealthState_HEALTH_STATE_DEGRADED,
		6: gpuv1.HealthState_HEALTH_STATE_UNSPECIFIED,
	})
	a100 := gpuTestInventory("n2", gpuTestA100, 2, 40960)
	a100.Gpus[0].Mig = &gpuv1.Mig{Enabled: true, Devices: []*gpuv1.MigDevice{
		{Index: 0, Uuid: "MIG-n2-0-0", Profile: "3g.20gb", MemoryBytes: 20 << 30},
		{Index: 1, Uuid: "MIG-n2-0-1", Profile: "1g.5gb", MemoryBytes: 5 << 30},
	}}
	record("n2", a100, map[uint32]gpuv1.HealthState{0: gpuv1.HealthState_HEALTH_STATE_DEGRADED})
	record("n3", &gpuv1.GpuInventory{Available: false, Reason: "GPU backend disabled (--gpu-backend none)"}, nil)
	record("n5", gpuTestInventory("n5", gpuTestH100, 8, 81920), nil)
	record("n5", gpuTestInventory("n5", gpuTestH100, 7, 81920), nil)
	return e
}

type gpuRowKey struct {
	node string
	idx  uint32
	mig  int // -1: the GPU itself
}

func gpuRowKeys(rows []*fleetv1.GpuRow) []gpuRowKey {
	out := []gpuRowKey{}
	for _, r := range rows {
		k := gpuRowKey{node: r.GetNodeId(), idx: r.GetIndex(), mig: -1}
		if r.MigIndex != nil {
			k.mig = int(r.GetMigIndex())
		}
		out = append(out, k)
	}
	return out
}

func gpuKeys(node string, idx ...uint32) []gpuRowKey {
	out := []gpuRowKey{}
	for _, i := range idx {
		out = append(out, gpuRowKey{node: node, idx: i, mig: -1})
	}
	return out
}

func TestListGpus(t *testing.T) {
	e := gpuTestFleet(t)
	api := e.srv.FleetAPI()
	list := func(req *fleetv1.ListGpusRequest) []*fleetv1.GpuRow {
		t.Helper()
		resp, err := api.ListGpus(context.Background(), req)
		if err != nil {
			t.Fatalf("ListGpus(%v): %v", req, err)
		}
		return resp.GetGpus()
	}
	n2rows := append(gpuKeys("n2", 0), gpuRowKey{"n2", 0, 0}, gpuRowKey{"n2", 0, 1}, gpuRowKey{"n2", 1, -1})
	n1rows := gpuKeys("n1", 0, 1, 2, 3, 4, 5, 6, 7)
	n5rows := gpuKeys("n5", 0, 1, 2, 3, 4, 5, 6)
	all := append(append(append([]gpuRowKey{}, n1rows...), n2rows...), n5rows...)

	if got := gpuRowKeys(list(&fleetv1.ListGpusRequest{})); !reflect.DeepEqual(got, all) {
		t.Errorf("ListGpus() rows\n%v\nwant (by hostname, GPU, MIG device)\n%v", got, all)
	}

	// --node
	if got := gpuRowKeys(list(&fleetv1.ListGpusRequest{NodeId: "n2"})); !reflect.DeepEqual(got, n2rows) {
		t.Errorf("--node n2: %v, want %v", got, n2rows)
	}
	if got := list(&fleetv1.ListGpusRequest{NodeId: "n3"}); len(got) != 0 {
		t.Errorf("--node n3 (no GPUs): %d rows", len(got))
	}
	if _, err := api.ListGpus(context.Background(), &fleetv1.ListGpusRequest{NodeId: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("--node nope: %v, want NotFound", err)
	}

	// --product: case-insensitive substring.
	for _, tc := range []struct {
		product string
		want    []gpuRowKey
	}{
		{"h100", append(append([]gpuRowKey{}, n1rows...), n5rows...)},
		{"H100 80GB", append(append([]gpuRowKey{}, n1rows...), n5rows...)},
		{"a100-sxm4", n2rows},
		{"nvidia", all},
		{"H200", []gpuRowKey{}},
	} {
		if got := gpuRowKeys(list(&fleetv1.ListGpusRequest{Product: tc.product})); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("--product %q: %v, want %v", tc.product, got, tc.want)
		}
	}

	// --unhealthy: Degraded and Unhealthy only (not Healthy, not unknown);
	// a sick GPU's MIG devices come along.
	want := append(gpuKeys("n1", 3, 5), gpuRowKey{"n2", 0, -1}, gpuRowKey{"n2", 0, 0}, gpuRowKey{"n2", 0, 1})
	rows := list(&fleetv1.ListGpusRequest{Unhealthy: true})
	if got := gpuRowKeys(rows); !reflect.DeepEqual(got, want) {
		t.Errorf("--unhealthy: %v, want %v", got, want)
	}
	for _, r := range rows {
		if r.GetHealth() != gpuv1.HealthState_HEALTH_STATE_DEGRADED && r.GetHealth() != gpuv1.HealthState_HEALTH_STATE_UNHEALTHY {
			t.Errorf("--unhealthy row %v has health %s", r, r.GetHealth())
		}
		if len(r.GetReasons()) == 0 {
			t.Errorf("--unhealthy row %s/%d has no reasons", r.GetNodeId(), r.GetIndex())
		}
	}
	// Filters combine.
	if got := gpuRowKeys(list(&fleetv1.ListGpusRequest{Unhealthy: true, Product: "H100", NodeId: "n1"})); !reflect.DeepEqual(got, gpuKeys("n1", 3, 5)) {
		t.Errorf("--unhealthy --product H100 --node n1: %v", got)
	}
	if got := list(&fleetv1.ListGpusRequest{Unhealthy: true, NodeId: "n5"}); len(got) != 0 {
		t.Errorf("--unhealthy --node n5 (all Healthy): %d rows", len(got))
	}

	// Row contents.
	rows = list(&fleetv1.ListGpusRequest{NodeId: "n1"})
	r3 := rows[3]
	if r3.GetHostname() != "a-dgx" || r3.GetUuid() != gpuTestUUID("n1", 3) || r3.GetProduct() != gpuTestH100 ||
		r3.GetMemoryBytes() != 81920<<20 || r3.GetHealth() != gpuv1.HealthState_HEALTH_STATE_UNHEALTHY ||
		r3.GetPciBusId() != "0000:1b:00.0" || r3.MigIndex != nil || r3.GetMigProfile() != "" ||
		len(r3.GetReasons()) != 1 || !strings.Contains(r3.GetReasons()[0], "XID 79") {
		t.Errorf("n1 GPU 3 row = %v", r3)
	}
	if h := rows[6].GetHealth(); h != gpuv1.HealthState_HEALTH_STATE_UNSPECIFIED {
		t.Errorf("GPU without a health sample: health %s, want UNSPECIFIED", h)
	}
	rows = list(&fleetv1.ListGpusRequest{NodeId: "n2"})
	m1 := rows[2]
	if m1.GetIndex() != 0 || m1.MigIndex == nil || m1.GetMigIndex() != 1 || m1.GetUuid() != "MIG-n2-0-1" ||
		m1.GetMigProfile() != "1g.5gb" || m1.GetMemoryBytes() != 5<<30 || m1.GetProduct() != gpuTestA100 ||
		m1.GetHealth() != gpuv1.HealthState_HEALTH_STATE_DEGRADED || m1.GetHostname() != "b-a100" || m1.GetPciBusId() != "0000:18:00.0" {
		t.Errorf("n2 GPU 0 MIG 1 row = %v", m1)
	}
	if p := rows[0]; p.GetUuid() != gpuTestUUID("n2", 0) || p.MigIndex != nil || p.GetMemoryBytes() != 40960<<20 {
		t.Errorf("n2 GPU 0 row = %v", p)
	}
}

func TestGetGpuSummary(t *testing.T) {
	e := gpuTestFleet(t)
	resp, err := e.srv.FleetAPI().GetGpuSummary(context.Background(), &fleetv1.GetGpuSummaryRequest{})
	if err != nil {
		t.Fatal(err)
	}
	want := &fleetv1.GetGpuSummaryResponse{
		Products: []*fleetv1.GpuSummaryRow{
			// MIG devices are not counted as GPUs.
			{Product: gpuTestA100, Total: 2, Healthy: 1, Degraded: 1, Nodes: 1},
			{Product: gpuTestH100, Total: 15, Healthy: 12, Degraded: 1, Unhealthy: 1, Unknown: 1, Nodes: 2},
		},
		NodesWithGpus:    3, // n1, n2, n5
		NodesWithoutGpus: 2, // n3 (none), n4 (never reported)
		NodesMissingGpus: 1, // n5
	}
	if !proto.Equal(resp, want) {
		t.Errorf("GetGpuSummary =\n%v\nwant\n%v", resp, want)
	}

	// An empty fleet.
	empty := newTestServer(t)
	resp, err = empty.srv.FleetAPI().GetGpuSummary(context.Background(), &fleetv1.GetGpuSummaryRequest{})
	if err != nil || !proto.Equal(resp, &fleetv1.GetGpuSummaryResponse{}) {
		t.Errorf("empty fleet: %v, %v", resp, err)
	}
}

// The labels of every node in the test fleet are valid Kubernetes labels.
func TestGpuNodeLabelsValid(t *testing.T) {
	e := gpuTestFleet(t)
	resp, err := e.srv.FleetAPI().ListNodes(context.Background(), &fleetv1.ListNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	withLabels := map[string]bool{}
	for _, n := range resp.GetNodes() {
		if err := validateLabels(n.GetKubernetesLabels()); err != nil {
			t.Errorf("node %s: %v", n.GetId(), err)
		}
		if len(n.GetKubernetesLabels()) > 0 {
			withLabels[n.GetId()] = true
		}
	}
	if want := map[string]bool{"n1": true, "n2": true, "n5": true}; !maps.Equal(withLabels, want) {
		t.Errorf("nodes with labels %v, want %v", withLabels, want)
	}
}
