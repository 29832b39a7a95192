//go:build cgo

package gpu

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestMockBackends(t *testing.T) {
	cases := []struct {
		backend, arch, cc, deviceID string
		limitW                      float64
		links                       int
	}{
		{BackendMockDGXA100, "Ampere", "8.0", "0x20b010de", 400, 12},
		{BackendMockDGXH100, "Hopper", "9.0", "0x233010de", 700, 18},
		{BackendMockDGXH200, "Hopper", "9.0", "0x233310de", 700, 18},
	}
	for _, c := range cases {
		t.Run(c.backend, func(t *testing.T) {
			s, err := Open(c.backend, rigOptions())
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			ctx := context.Background()
			inv, err := s.Inventory(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !inv.Available || len(inv.GPUs) != 8 || inv.CUDADriverVersion != "12.4" || inv.DriverVersion == "" {
				t.Fatalf("%+v", inv)
			}
			buses, serials := map[string]bool{}, map[string]bool{}
			for _, g := range inv.GPUs {
				buses[g.PCIBusID], serials[g.Serial] = true, true
				if g.Architecture != c.arch || g.ComputeCapability != c.cc || g.PCIDeviceID != c.deviceID || g.Brand != "NVIDIA" {
					t.Errorf("gpu %d: %+v", g.Index, g)
				}
				if g.PowerLimitWatts == nil || *g.PowerLimitWatts != c.limitW || g.PersistenceMode == nil || !*g.PersistenceMode {
					t.Errorf("gpu %d power/persistence", g.Index)
				}
				if g.BAR1TotalBytes == nil || g.MemoryTotalBytes == nil || g.MIG == nil || g.MIG.Enabled {
					t.Errorf("gpu %d memory/MIG", g.Index)
				}
				if len(g.NVLinks) != c.links {
					t.Errorf("gpu %d: %d links", g.Index, len(g.NVLinks))
				}
				for _, l := range g.NVLinks {
					if l.PeerPCIBusID == g.PCIBusID || !strings.HasPrefix(l.PeerPCIBusID, "0000:") {
						t.Errorf("gpu %d link %+v", g.Index, l)
					}
				}
			}
			if len(buses) != 8 || len(serials) != 8 || !buses["0000:07:00.0"] && !buses["0000:18:00.0"] {
				t.Errorf("buses %v serials %v", buses, serials)
			}
			hs, err := s.Health(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, h := range hs {
				if h.State != Healthy || len(h.Reasons) != 0 {
					t.Errorf("gpu %d: %s %v", h.Index, h.State, h.Reasons)
				}
				if *h.TemperatureC < 30 || *h.TemperatureC > 45 || *h.PowerDrawWatts < 70 || *h.PowerDrawWatts > 120 ||
					*h.UtilizationGPU != 0 || *h.ECCVolatileDouble != 0 || *h.ECCAggregateSingle != 0 ||
					h.RetiredPagesPending != nil || *h.RemappedRowsPending || *h.RemappingFailed {
					t.Errorf("gpu %d implausible: %+v", h.Index, h)
				}
			}
		})
	}
}

func TestMockEventsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "faults.jsonl")
	if err := os.WriteFile(path, []byte("# demo faults\n{\"gpu\":1,\"xid\":13}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	opts := rigOptions()
	opts.MockEventsPath = path
	logs := &lockedBuffer{}
	opts.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := Open(BackendMockDGXH100, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	inv, err := s.Inventory(ctx) // starts NVML and the XID watcher
	if err != nil {
		t.Fatal(err)
	}
	uuid := func(i int) string { return inv.GPUs[i].UUID }
	appendLine := func(line string) {
		t.Helper()
		f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteString(line); err != nil {
			t.Fatal(err)
		}
	}
	// The line already there is delivered once NVML watches.
	h := waitHealth(t, s, uuid(1), func(h Health) bool { return hasXID(h, 13) })
	if h.State != Healthy {
		t.Errorf("ignored XID: %s %v", h.State, h.Reasons)
	}

	appendLine(`{"gpu":3,"xid":79}` + "\n" + `not json` + "\n" + `{"gpu":99,"xid":1}` + "\n" + `{"gpu":4,"bogus":1}` + "\n")
	h = waitHealth(t, s, uuid(3), func(h Health) bool { return h.State == Unhealthy })
	if !strings.Contains(h.Reasons[0], "XID 79") {
		t.Errorf("XID 79: %v", h.Reasons)
	}

	// A line written in two pieces is applied once whole.
	appendLine(`{"gpu":2,"ecc_vola`)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "mock GPU fault line incomplete") {
		if time.Now().After(deadline) {
			t.Fatal("the poller did not read the first piece of the line")
		}
		time.Sleep(10 * time.Millisecond)
	}
	appendLine(`tile_double":1}` + "\n")
	h = waitHealth(t, s, uuid(2), func(h Health) bool { return h.State == Unhealthy })
	if *h.ECCVolatileDouble != 1 || !strings.Contains(h.Reasons[0], "double-bit") {
		t.Errorf("ECC: %+v", h)
	}

	appendLine(`{"gpu":5,"throttle":["HwThermalSlowdown"],"temperature_c":93}` + "\n")
	h = waitHealth(t, s, uuid(5), func(h Health) bool { return h.State == Degraded })
	if *h.TemperatureC != 93 {
		t.Errorf("temperature %d", *h.TemperatureC)
	}

	appendLine(`{"gpu":7,"lost":true}` + "\n")
	h = waitHealth(t, s, uuid(7), func(h Health) bool { return h.State == Unhealthy })
	if !strings.Contains(h.Reasons[0], "fell off the bus") || h.TemperatureC != nil {
		t.Errorf("lost: %+v", h)
	}
	inv2, err := s.Inventory(ctx)
	if err != nil || len(inv2.GPUs) != 8 || inv2.GPUs[7].UUID != uuid(7) {
		t.Errorf("inventory after loss: %v %d", err, len(inv2.GPUs))
	}
	hs, _ := s.Health(ctx)
	for _, i := range []int{0, 4, 6} {
		if hs[i].State != Healthy {
			t.Errorf("gpu %d: %s %v", i, hs[i].State, hs[i].Reasons)
		}
	}

	appendLine(`{"gpu":7,"lost":false}` + "\n")
	waitHealth(t, s, uuid(7), func(h Health) bool { return h.State == Healthy })
}

func TestMockEventsFileTruncated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "faults.jsonl")
	m, err := newMockMachine(BackendMockDGXA100, "", quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	ff := &faultFile{path: path, m: m}
	ff.poll() // no file yet: nothing
	os.WriteFile(path, []byte(`{"gpu":0,"temperature_c":50}`+"\n"+`{"gpu":0,"temperature_c":60}`+"\n"), 0o600)
	ff.poll()
	if v, _ := m.gpus[0].GetTemperature(0); v != 60 {
		t.Fatalf("temperature %d", v)
	}
	os.WriteFile(path, []byte(`{"gpu":0,"temperature_c":40}`+"\n"), 0o600) // shorter: start over
	ff.poll()
	if v, _ := m.gpus[0].GetTemperature(0); v != 40 {
		t.Fatalf("after truncation: %d", v)
	}
}

// BenchmarkSweepMockBackend is BenchmarkSweep on the mock:dgxh100 backend.
func BenchmarkSweepMockBackend(b *testing.B) {
	s, err := Open(BackendMockDGXH100, rigOptions())
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Inventory(ctx); err != nil {
			b.Fatal(err)
		}
		if _, err := s.Health(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// lockedBuffer is a log sink the poller goroutine writes while the test
// reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
