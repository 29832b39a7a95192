package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
	gpuv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/gpu/v1"
)

// The GPU tests run 'bud-agent run' with the mock:dgxh100 backend (go-nvml's
// DGX H100 mock: eight "NVIDIA H100 80GB HBM3") and inject faults through
// the mock's events file, sampling health every second.

const (
	gpuH100Product = "NVIDIA H100 80GB HBM3"
	gpuH200Product = "NVIDIA H200 141GB HBM3e"
	// gpuHealthInterval is the agents' gpu.health_interval here.
	gpuHealthInterval = time.Second
	// gpuChangeWithin is how soon an injected fault must show in budctl:
	// the mock polls its events file every 200ms, the agent samples health
	// every gpuHealthInterval and sends a change at once.
	gpuChangeWithin = 3 * time.Second
)

var gpuUUIDRe = regexp.MustCompile(`^GPU-[0-9a-f-]+$`)

// gpuConfigure adds a gpu: section to the agent's config file.
func gpuConfigure(t *testing.T, a *agent, backend, eventsPath string) {
	t.Helper()
	f, err := os.OpenFile(a.configPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg := fmt.Sprintf("gpu:\n  health_interval: %s\n", gpuHealthInterval)
	if backend != "" {
		cfg += fmt.Sprintf("  backend: %q\n", backend)
	}
	if eventsPath != "" {
		cfg += fmt.Sprintf("  mock_events_path: %q\n", eventsPath)
	}
	if _, err := f.WriteString(cfg); err != nil {
		t.Fatal(err)
	}
}

// gpuInject appends fault lines to a mock events file.
func gpuInject(t *testing.T, path string, lines ...string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, l := range lines {
		if _, err := f.WriteString(l + "\n"); err != nil {
			t.Fatal(err)
		}
	}
}

func (c *controller) gpuList(args ...string) ([]*fleetv1.GpuRow, error) {
	var resp fleetv1.ListGpusResponse
	err := c.budctlJSON(&resp, append([]string{"gpus", "list"}, args...)...)
	return resp.GetGpus(), err
}

func (c *controller) gpuSummary() (*fleetv1.GetGpuSummaryResponse, error) {
	var resp fleetv1.GetGpuSummaryResponse
	err := c.budctlJSON(&resp, "gpus", "summary")
	return &resp, err
}

func gpuUUIDs(rows []*fleetv1.GpuRow) []string {
	var out []string
	for _, r := range rows {
		out = append(out, r.GetUuid())
	}
	return out
}

func gpuRowsString(rows []*fleetv1.GpuRow) string {
	var b strings.Builder
	for _, r := range rows {
		fmt.Fprintf(&b, "\n  %s gpu %d %s %s %s %q", r.GetNodeId(), r.GetIndex(), r.GetUuid(), r.GetProduct(), r.GetHealth(), r.GetReasons())
	}
	return b.String()
}

// gpuCheck8 checks the eight mock H100s of node id, all with health want.
func gpuCheck8(rows []*fleetv1.GpuRow, id string, want gpuv1.HealthState) error {
	if len(rows) != 8 {
		return fmt.Errorf("%d GPUs listed, want 8:%s", len(rows), gpuRowsString(rows))
	}
	seen := map[string]bool{}
	for i, r := range rows {
		switch {
		case r.GetNodeId() != id:
			return fmt.Errorf("row %d: node %s, want %s", i, r.GetNodeId(), id)
		case r.GetIndex() != uint32(i) || r.MigIndex != nil:
			return fmt.Errorf("row %d: GPU %d (MIG %v), want GPU %d", i, r.GetIndex(), r.MigIndex, i)
		case r.GetProduct() != gpuH100Product:
			return fmt.Errorf("GPU %d: product %q, want %q", i, r.GetProduct(), gpuH100Product)
		case !gpuUUIDRe.MatchString(r.GetUuid()):
			return fmt.Errorf("GPU %d: UUID %q does not match %s", i, r.GetUuid(), gpuUUIDRe)
		case seen[r.GetUuid()]:
			return fmt.Errorf("GPU %d: UUID %s listed twice", i, r.GetUuid())
		case r.GetHealth() != want:
			return fmt.Errorf("GPU %d: health %s %q, want %s", i, r.GetHealth(), r.GetReasons(), want)
		case r.GetMemoryBytes() != 80<<30:
			return fmt.Errorf("GPU %d: memory %d bytes, want 80 GiB", i, r.GetMemoryBytes())
		}
		seen[r.GetUuid()] = true
	}
	return nil
}

// gpuReportedSince waits until the node's GPU inventory was stored after t0
// (a new session's report) and check passes.
func gpuReportedSince(t *testing.T, c *controller, id string, t0 time.Time, timeout time.Duration, check func(*fleetv1.Node) error) *fleetv1.Node {
	t.Helper()
	var n *fleetv1.Node
	eventually(t, timeout, func() error {
		var err error
		if n, err = c.getNode(id); err != nil {
			return err
		}
		if at := n.GetGpus().GetInventoryUpdatedAt(); at == nil || at.AsTime().Before(t0) {
			return fmt.Errorf("no GPU inventory stored since %s (last %v)", t0.Format(time.RFC3339Nano), at.AsTime())
		}
		return check(n)
	})
	return n
}

// TestGPUMockDGXH100 runs an agent on the mock DGX H100 and injects faults:
// inventory, labels and taint; an XID that makes GPU 3 Unhealthy and one
// that is ignored; a restart that keeps the UUIDs; a GPU that falls off the
// bus, stays gone across a restart (the count drop) and comes back.
func TestGPUMockDGXH100(t *testing.T) {
	t.Parallel()
	c := startController(t)
	tok := c.createToken(t)
	events := filepath.Join(t.TempDir(), "gpu-events.jsonl")
	gpuInject(t, events, "# injected faults")

	a := joinAgent(t, c, tok, "gpu-dgx-h100")
	gpuConfigure(t, a, "mock:dgxh100", events)
	a.start(t)
	a.waitReady(t)

	// Inventory: eight healthy H100s.
	var rows []*fleetv1.GpuRow
	eventually(t, 10*time.Second, func() error {
		var err error
		if rows, err = c.gpuList(); err != nil {
			return err
		}
		return gpuCheck8(rows, a.nodeID, gpuv1.HealthState_HEALTH_STATE_HEALTHY)
	})
	uuids := gpuUUIDs(rows)

	n := c.mustGetNode(t, a.nodeID)
	inv := n.GetGpus().GetInventory()
	if !inv.GetAvailable() || inv.GetReason() != "" || inv.GetCudaDriverVersion() != "12.4" || inv.GetDriverVersion() == "" {
		t.Errorf("gpus.inventory: available %v reason %q driver %q CUDA %q", inv.GetAvailable(), inv.GetReason(), inv.GetDriverVersion(), inv.GetCudaDriverVersion())
	}
	if m := n.GetGpus().GetMaxGpuCount(); m != 8 {
		t.Errorf("gpus.maxGpuCount = %d, want 8", m)
	}
	labels := n.GetKubernetesLabels()
	for k, v := range map[string]string{
		"nvidia.com/gpu":               "true",
		"node.kubernetes.io/gpu":       "true",
		"nvidia.com/gpu.count":         "8",
		"nvidia.com/gpu.product":       "NVIDIA-H100-80GB-HBM3",
		"nvidia.com/gpu.memory":        "81920",
		"nvidia.com/mig.capable":       "true", // H100 SXM5: MIG capable, off
		"nvidia.com/cuda.driver.major": "12",
		"nvidia.com/cuda.driver.minor": "4",
	} {
		if got, ok := labels[k]; !ok || got != v {
			t.Errorf("kubernetesLabels[%s] = %q (present %v), want %q; labels %v", k, got, ok, v, labels)
		}
	}
	if tt := n.GetProposedTaints(); len(tt) != 1 || tt[0].GetKey() != "nvidia.com/gpu" || tt[0].GetValue() != "true" || tt[0].GetEffect() != "NoSchedule" {
		t.Errorf("proposedTaints = %v, want [nvidia.com/gpu=true:NoSchedule]", tt)
	}
	if p := n.GetProblems(); len(p) != 0 {
		t.Errorf("problems %q on a healthy node", p)
	}

	// XID 79 on GPU 3: Unhealthy within a health interval and some slack.
	injected := time.Now()
	gpuInject(t, events, `{"gpu":3,"xid":79}`)
	eventually(t, gpuChangeWithin, func() error {
		bad, err := c.gpuList("--unhealthy")
		if err != nil {
			return err
		}
		if len(bad) != 1 || bad[0].GetIndex() != 3 || bad[0].GetUuid() != uuids[3] || bad[0].GetHealth() != gpuv1.HealthState_HEALTH_STATE_UNHEALTHY {
			return fmt.Errorf("gpus list --unhealthy:%s\nwant GPU 3 alone, UNHEALTHY", gpuRowsString(bad))
		}
		if r := strings.Join(bad[0].GetReasons(), "; "); !strings.Contains(r, "79") {
			return fmt.Errorf("GPU 3 reasons %q do not mention XID 79", r)
		}
		return nil
	})
	t.Logf("XID 79 seen by budctl %s after injection", time.Since(injected).Round(10*time.Millisecond))

	var node *fleetv1.Node
	for _, x := range c.mustListNodes(t) {
		if x.GetId() == a.nodeID {
			node = x
		}
	}
	if p := strings.Join(node.GetProblems(), "\n"); !strings.Contains(p, "unhealthy") || !strings.Contains(p, "GPU 3") {
		t.Errorf("nodes list: problems %q, want one for unhealthy GPU 3", node.GetProblems())
	}
	sum, err := c.gpuSummary()
	if err != nil {
		t.Fatal(err)
	}
	if ps := sum.GetProducts(); len(ps) != 1 || ps[0].GetProduct() != gpuH100Product || ps[0].GetTotal() != 8 ||
		ps[0].GetHealthy() != 7 || ps[0].GetUnhealthy() != 1 || ps[0].GetDegraded() != 0 || ps[0].GetUnknown() != 0 || ps[0].GetNodes() != 1 {
		t.Errorf("gpus summary products = %v, want H100: 8 GPUs, 7 healthy, 1 unhealthy, 1 node", ps)
	}
	if sum.GetNodesWithGpus() != 1 || sum.GetNodesWithoutGpus() != 0 || sum.GetNodesMissingGpus() != 0 {
		t.Errorf("gpus summary nodes with %d without %d missing %d, want 1/0/0", sum.GetNodesWithGpus(), sum.GetNodesWithoutGpus(), sum.GetNodesMissingGpus())
	}

	// XID 13 (an application fault) on GPU 5: recorded, GPU 5 stays Healthy.
	gpuInject(t, events, `{"gpu":5,"xid":13}`)
	eventually(t, gpuChangeWithin, func() error {
		n, err := c.getNode(a.nodeID)
		if err != nil {
			return err
		}
		for _, h := range n.GetGpus().GetHealth() {
			if h.GetIndex() != 5 {
				continue
			}
			for _, x := range h.GetXids() {
				if x.GetCode() == 13 {
					if h.GetState() != gpuv1.HealthState_HEALTH_STATE_HEALTHY || len(h.GetReasons()) != 0 {
						t.Fatalf("GPU 5 after ignored XID 13: %s %q, want HEALTHY with no reasons", h.GetState(), h.GetReasons())
					}
					return nil
				}
			}
			return fmt.Errorf("GPU 5 xids %v: no 13 yet", h.GetXids())
		}
		return fmt.Errorf("no health for GPU 5")
	})
	if bad, err := c.gpuList("--unhealthy"); err != nil || len(bad) != 1 || bad[0].GetIndex() != 3 {
		t.Errorf("gpus list --unhealthy after XID 13 on GPU 5:%s (%v); want GPU 3 alone", gpuRowsString(bad), err)
	}
	if r, err := c.gpuList("--node", a.nodeID, "--product", "h100"); err != nil || len(r) != 8 || r[5].GetHealth() != gpuv1.HealthState_HEALTH_STATE_HEALTHY {
		t.Errorf("gpus list --node --product h100:%s (%v); want 8 with GPU 5 HEALTHY", gpuRowsString(r), err)
	}

	// Restart with no faults: the same eight UUIDs (the mock is seeded by
	// machine id and hostname), all Healthy again (XIDs are per agent run).
	a.stop(t)
	if err := os.WriteFile(events, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	a.start(t)
	gpuReportedSince(t, c, a.nodeID, restarted, 15*time.Second, func(*fleetv1.Node) error {
		r, err := c.gpuList()
		if err != nil {
			return err
		}
		if err := gpuCheck8(r, a.nodeID, gpuv1.HealthState_HEALTH_STATE_HEALTHY); err != nil {
			return err
		}
		if got := gpuUUIDs(r); !slices.Equal(got, uuids) {
			t.Fatalf("UUIDs after restart\n%v\nwant the same as before\n%v", got, uuids)
		}
		return nil
	})

	// GPU 7 falls off the bus: Unhealthy, still listed from its last facts.
	injected = time.Now()
	gpuInject(t, events, `{"gpu":7,"lost":true}`)
	eventually(t, gpuChangeWithin, func() error {
		bad, err := c.gpuList("--unhealthy")
		if err != nil {
			return err
		}
		if len(bad) != 1 || bad[0].GetIndex() != 7 || bad[0].GetUuid() != uuids[7] || bad[0].GetHealth() != gpuv1.HealthState_HEALTH_STATE_UNHEALTHY {
			return fmt.Errorf("gpus list --unhealthy:%s\nwant GPU 7 alone, UNHEALTHY", gpuRowsString(bad))
		}
		if r := strings.Join(bad[0].GetReasons(), "; "); !strings.Contains(r, "fell off the bus") {
			return fmt.Errorf("GPU 7 reasons %q do not say it fell off the bus", r)
		}
		return nil
	})
	t.Logf("lost GPU 7 seen by budctl %s after injection", time.Since(injected).Round(10*time.Millisecond))
	if r, err := c.gpuList(); err != nil || len(r) != 8 {
		t.Errorf("gpus list with GPU 7 lost:%s (%v); want all 8 (the lost one from its last facts)", gpuRowsString(r), err)
	}

	// Restart while GPU 7 is still gone: the new run never sees it, so the
	// node reports 7 of the 8 GPUs it had: the count-drop problem.
	a.stop(t)
	restarted = time.Now()
	a.start(t)
	n = gpuReportedSince(t, c, a.nodeID, restarted, 15*time.Second, func(n *fleetv1.Node) error {
		if k := len(n.GetGpus().GetInventory().GetGpus()); k != 7 {
			return fmt.Errorf("%d GPUs in the inventory, want 7", k)
		}
		return nil
	})
	if m := n.GetGpus().GetMaxGpuCount(); m != 8 {
		t.Errorf("gpus.maxGpuCount = %d after the drop, want 8", m)
	}
	if got := n.GetKubernetesLabels()["nvidia.com/gpu.count"]; got != "7" {
		t.Errorf("nvidia.com/gpu.count = %q, want 7", got)
	}
	if p := strings.Join(n.GetProblems(), "\n"); !strings.Contains(p, "gpu-missing") || !strings.Contains(p, "7 of 8") {
		t.Errorf("problems %q, want gpu-missing 7 of 8", n.GetProblems())
	}
	if r, err := c.gpuList(); err != nil || !slices.Equal(gpuUUIDs(r), uuids[:7]) {
		t.Errorf("gpus list after the drop:%s (%v); want GPUs 0-6 with their UUIDs", gpuRowsString(r), err)
	}
	if sum, err := c.gpuSummary(); err != nil || sum.GetNodesMissingGpus() != 1 || len(sum.GetProducts()) != 1 || sum.GetProducts()[0].GetTotal() != 7 {
		t.Errorf("gpus summary after the drop: %v (%v); want 7 H100s and 1 node missing GPUs", sum, err)
	}

	// GPU 7 comes back: 8 again, the problem clears.
	gpuInject(t, events, `{"gpu":7,"lost":false}`)
	eventually(t, 5*time.Second, func() error {
		n, err := c.getNode(a.nodeID)
		if err != nil {
			return err
		}
		if k := len(n.GetGpus().GetInventory().GetGpus()); k != 8 {
			return fmt.Errorf("%d GPUs in the inventory, want 8", k)
		}
		if p := n.GetProblems(); len(p) != 0 {
			return fmt.Errorf("problems %q", p)
		}
		r, err := c.gpuList()
		if err != nil {
			return err
		}
		if err := gpuCheck8(r, a.nodeID, gpuv1.HealthState_HEALTH_STATE_HEALTHY); err != nil {
			return err
		}
		if !slices.Equal(gpuUUIDs(r), uuids) {
			return fmt.Errorf("UUIDs %v, want %v", gpuUUIDs(r), uuids)
		}
		return nil
	})
	a.stop(t)
}

// TestGPUNoGPUs: agents without GPUs (--gpu-backend none, and the default
// nvml backend on a machine without the NVIDIA driver) report none, with a
// reason, and get no GPU labels, taint or problems.
func TestGPUNoGPUs(t *testing.T) {
	t.Parallel()
	c := startController(t)
	tok := c.createToken(t)
	none := joinAgent(t, c, tok, "gpu-none")
	none.start(t, "--gpu-backend", "none")
	nvml := joinAgent(t, c, tok, "gpu-nvml")
	gpuConfigure(t, nvml, "", "") // default backend: nvml
	nvml.start(t)
	none.waitReady(t)
	nvml.waitReady(t)

	check := func(a *agent, wantReason string) *fleetv1.Node {
		t.Helper()
		var n *fleetv1.Node
		eventually(t, 10*time.Second, func() error {
			var err error
			if n, err = c.getNode(a.nodeID); err != nil {
				return err
			}
			if n.GetGpus().GetInventory() == nil {
				return fmt.Errorf("node %s: no GPU inventory yet", a.hostname)
			}
			return nil
		})
		inv := n.GetGpus().GetInventory()
		if inv.GetAvailable() && inv.GetReason() == "" && len(inv.GetGpus()) > 0 && wantReason != "" && a == nvml {
			t.Logf("%s: NVML found %d GPUs on this machine; not checking the no-driver reason", a.hostname, len(inv.GetGpus()))
			return nil
		}
		if inv.GetAvailable() || len(inv.GetGpus()) != 0 || !strings.Contains(inv.GetReason(), wantReason) {
			t.Errorf("%s: gpus.inventory available %v, %d GPUs, reason %q; want unavailable, none, reason containing %q", a.hostname, inv.GetAvailable(), len(inv.GetGpus()), inv.GetReason(), wantReason)
		}
		if l, tt, p := n.GetKubernetesLabels(), n.GetProposedTaints(), n.GetProblems(); len(l) != 0 || len(tt) != 0 || len(p) != 0 {
			t.Errorf("%s: labels %v taints %v problems %q; want none", a.hostname, l, tt, p)
		}
		return n
	}
	check(none, "--gpu-backend none")
	nodriver := check(nvml, "NVIDIA driver not installed") != nil

	if r, err := c.gpuList(); err != nil || (nodriver && len(r) != 0) {
		t.Errorf("gpus list:%s (%v); want no GPUs", gpuRowsString(r), err)
	}
	if _, err := c.gpuList("--node", "00000000-0000-0000-0000-000000000000"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("gpus list --node <unknown>: %v, want not found", err)
	}
	if sum, err := c.gpuSummary(); err != nil {
		t.Error(err)
	} else if nodriver && (sum.GetNodesWithoutGpus() != 2 || sum.GetNodesWithGpus() != 0 || len(sum.GetProducts()) != 0) {
		t.Errorf("gpus summary = %v, want 2 nodes without GPUs and no products", sum)
	}
}

// gpuAgentOutput is 'bud-agent gpus -o json'.
type gpuAgentOutput struct {
	Inventory struct {
		Available         bool   `json:"available"`
		Reason            string `json:"reason"`
		CUDADriverVersion string `json:"cuda_driver_version"`
		GPUs              []struct {
			Index   int    `json:"index"`
			UUID    string `json:"uuid"`
			Product string `json:"product"`
		} `json:"gpus"`
	} `json:"inventory"`
	Health []struct {
		UUID  string `json:"uuid"`
		Index int    `json:"index"`
		State string `json:"state"`
	} `json:"health"`
}

func gpuAgentJSON(t *testing.T, args ...string) gpuAgentOutput {
	t.Helper()
	stdout, stderr, err := runCmd(30*time.Second, filepath.Join(binDir, "bud-agent"), append([]string{"gpus"}, args...)...)
	if err != nil {
		t.Fatalf("bud-agent gpus %s: %v (want exit 0)\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, stdout, stderr)
	}
	var out gpuAgentOutput
	dec := json.NewDecoder(strings.NewReader(stdout))
	if err := dec.Decode(&out); err != nil {
		t.Fatalf("bud-agent gpus %s: not JSON: %v\n%s", strings.Join(args, " "), err, stdout)
	}
	return out
}

// TestGPUAgentCommand: 'bud-agent gpus' without a controller.
func TestGPUAgentCommand(t *testing.T) {
	t.Parallel()
	t.Run("mock:dgxh200", func(t *testing.T) {
		t.Parallel()
		out := gpuAgentJSON(t, "--gpu-backend", "mock:dgxh200", "-o", "json")
		inv := out.Inventory
		if !inv.Available || inv.Reason != "" || len(inv.GPUs) != 8 {
			t.Fatalf("inventory available %v reason %q, %d GPUs; want 8 available", inv.Available, inv.Reason, len(inv.GPUs))
		}
		seen := map[string]bool{}
		for i, g := range inv.GPUs {
			if g.Index != i || g.Product != gpuH200Product || !gpuUUIDRe.MatchString(g.UUID) || seen[g.UUID] {
				t.Errorf("GPU %d: index %d product %q UUID %q (duplicate %v)", i, g.Index, g.Product, g.UUID, seen[g.UUID])
			}
			seen[g.UUID] = true
		}
		if len(out.Health) != 8 {
			t.Fatalf("%d health samples, want 8", len(out.Health))
		}
		for i, h := range out.Health {
			if h.Index != i || h.UUID != inv.GPUs[i].UUID || h.State != "Healthy" {
				t.Errorf("health %d: %+v, want GPU %d %s Healthy", i, h, i, inv.GPUs[i].UUID)
			}
		}
		// Seeded by machine id and hostname: the same UUIDs every run.
		again := gpuAgentJSON(t, "--gpu-backend", "mock:dgxh200", "-o", "json")
		for i, g := range again.Inventory.GPUs {
			if i < len(inv.GPUs) && g.UUID != inv.GPUs[i].UUID {
				t.Errorf("GPU %d UUID %s on the second run, %s on the first", i, g.UUID, inv.GPUs[i].UUID)
			}
		}
	})
	t.Run("nvml", func(t *testing.T) {
		t.Parallel()
		out := gpuAgentJSON(t, "--gpu-backend", "nvml", "-o", "json")
		inv := out.Inventory
		if inv.Available && len(inv.GPUs) > 0 {
			t.Skipf("NVML found %d GPUs on this machine; the no-driver case needs a machine without the NVIDIA driver", len(inv.GPUs))
		}
		if inv.Available || len(inv.GPUs) != 0 || !strings.Contains(inv.Reason, "NVIDIA driver not installed") {
			t.Errorf("inventory available %v, %d GPUs, reason %q; want unavailable with the NVIDIA driver not installed", inv.Available, len(inv.GPUs), inv.Reason)
		}
		if len(out.Health) != 0 {
			t.Errorf("%d health samples without NVML, want none", len(out.Health))
		}
	})
	t.Run("unknown backend", func(t *testing.T) {
		t.Parallel()
		stdout, stderr, err := runCmd(30*time.Second, filepath.Join(binDir, "bud-agent"), "gpus", "--gpu-backend", "mock:dgx1", "-o", "json")
		if err == nil {
			t.Fatalf("bud-agent gpus --gpu-backend mock:dgx1 exited 0\nstdout: %s", stdout)
		}
		if !strings.Contains(stderr, "mock:dgx1") || !strings.Contains(stderr, "mock:dgxh100") {
			t.Errorf("stderr %q should name the bad backend and the valid ones", stderr)
		}
	})
}
