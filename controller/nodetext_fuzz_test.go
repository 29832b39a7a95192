package controller

import (
	"testing"

	"google.golang.org/protobuf/proto"

	gpuv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/gpu/v1"
)

// FuzzCheckNodeText: a GPU inventory in any bytes either fails to decode,
// is refused, or comes out within the caps and printable.
func FuzzCheckNodeText(f *testing.F) {
	seed, _ := proto.Marshal(&gpuv1.GpuInventory{DriverVersion: "550.54", Gpus: []*gpuv1.Gpu{{Uuid: "GPU-1", Product: "H100\x1b[2J"}}})
	f.Add(seed)
	f.Fuzz(func(t *testing.T, b []byte) {
		var inv gpuv1.GpuInventory
		if proto.Unmarshal(b, &inv) != nil {
			return
		}
		if checkNodeText(&inv) != nil {
			return
		}
		if len(inv.GetGpus()) > MaxNodeList {
			t.Fatalf("%d GPUs kept", len(inv.GetGpus()))
		}
		for _, s := range []string{inv.GetDriverVersion(), inv.GetReason(), inv.GetCudaDriverVersion()} {
			if len(s) > MaxNodeString || !printable(s) {
				t.Fatalf("kept %q", s)
			}
		}
		for _, g := range inv.GetGpus() {
			if len(g.GetProduct()) > MaxNodeString || !printable(g.GetProduct()) || !printable(g.GetUuid()) {
				t.Fatalf("kept GPU %v", g)
			}
		}
	})
}
