//go:build cgo

package gpu

import "github.com/NVIDIA/go-nvml/pkg/nvml"

// Open returns the Source for a backend name (see Backends): "nvml" reads
// the real driver, "none" reports no GPUs, "mock:dgxa100", "mock:dgxh100" and
// "mock:dgxh200" simulate a DGX with eight GPUs (faults injected through
// Options.MockEventsPath).
func Open(backend string, opts Options) (Source, error) {
	switch backend {
	case BackendNVML:
		return New(nvml.New(), opts), nil
	case BackendNone:
		return Unavailable(ReasonDisabled), nil
	case BackendMockDGXA100, BackendMockDGXH100, BackendMockDGXH200:
		return openMock(backend, opts)
	default:
		return nil, unknownBackend(backend)
	}
}
