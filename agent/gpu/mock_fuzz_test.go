//go:build cgo

package gpu

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// mockState is what a fault line can change on one GPU.
type mockState struct {
	lost                    bool
	tempC, powerMW          uint32
	ecc                     [2][2]uint64
	remapPending, remapFail bool
	clocks                  uint64
	pending                 []uint64
}

func snapshot(m *mockMachine) []mockState {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []mockState
	for _, g := range m.gpus {
		out = append(out, mockState{g.lost, g.tempC, g.powerMW, g.ecc, g.remapPending, g.remapFailed, g.clocks, append([]uint64(nil), g.pending...)})
	}
	return out
}

func restore(m *mockMachine, s []mockState) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, g := range m.gpus {
		st := s[i]
		g.lost, g.tempC, g.powerMW, g.ecc = st.lost, st.tempC, st.powerMW, st.ecc
		g.remapPending, g.remapFailed, g.clocks, g.pending = st.remapPending, st.remapFail, st.clocks, nil
	}
}

// FuzzMockEventsFile: any bytes in the events file, appended in two writes
// split anywhere, leave the mock GPUs as the same bytes written at once do
// (a line cut across two polls is applied once, whole), never panic, and
// read the file to its end.
func FuzzMockEventsFile(f *testing.F) {
	f.Add([]byte("{\"gpu\":3,\"xid\":79}\n{\"gpu\":7,\"lost\":true}\n"), uint16(9))
	f.Add([]byte("# comment\n\n{\"gpu\":1,\"temperature_c\":92,\"power_w\":690}\n{\"gpu\":1,\"throttle\":[\"HwThermalSlowdown\"]}\n"), uint16(40))
	f.Add([]byte("{\"gpu\":0,\"remapped_rows_pending\":true,\"remapping_failed\":false}\n{\"gpu\":2,\"ecc_volatile_double\":1}"), uint16(3))
	f.Add([]byte("{\"gpu\":-1}\n{\"gpu\":99,\"xid\":1}\n{\"gpu\":0,\"bogus\":1}\n{\"gpu\":0,\"power_w\":1e300}\n{\"gpu\":0,\"throttle\":[\"Nope\"]}\n"), uint16(0))
	// The go-nvml mock servers take a while to build: make the two machines
	// once and put them back to their first state before each input.
	whole, err := newMockMachine(BackendMockDGXH100, "", quietLogger())
	if err != nil {
		f.Fatal(err)
	}
	parts, err := newMockMachine(BackendMockDGXH100, "", quietLogger())
	if err != nil {
		f.Fatal(err)
	}
	first := snapshot(whole)
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte, cut uint16) {
		if len(data) > 64<<10 {
			return
		}
		split := int(cut) % (len(data) + 1)
		restore(whole, first)
		restore(parts, first)
		p1 := filepath.Join(dir, "whole.jsonl")
		if err := os.WriteFile(p1, data, 0o600); err != nil {
			t.Fatal(err)
		}
		fw := &faultFile{path: p1, m: whole}
		fw.poll()

		p2 := filepath.Join(dir, "parts.jsonl")
		if err := os.WriteFile(p2, data[:split], 0o600); err != nil {
			t.Fatal(err)
		}
		fp := &faultFile{path: p2, m: parts}
		fp.poll()
		fh, err := os.OpenFile(p2, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fh.Write(data[split:]); err != nil {
			t.Fatal(err)
		}
		fh.Close()
		fp.poll()

		if fw.off != int64(len(data)) || fp.off != int64(len(data)) {
			t.Fatalf("read to %d and %d of %d bytes", fw.off, fp.off, len(data))
		}
		if string(fw.partial) != string(fp.partial) {
			t.Fatalf("unfinished line %q whole, %q in two writes", fw.partial, fp.partial)
		}
		if a, b := snapshot(whole), snapshot(parts); !reflect.DeepEqual(a, b) {
			t.Fatalf("written at once: %+v\nin two writes split at %d: %+v", a, split, b)
		}
		if len(whole.gpus) != 8 {
			t.Fatalf("%d GPUs after the faults", len(whole.gpus))
		}
	})
}
