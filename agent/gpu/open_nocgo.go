//go:build !cgo

package gpu

// Open returns the Source for a backend name (see Backends). This build has
// no cgo, hence no NVML: every backend but "none" reports ReasonNoCgo.
func Open(backend string, opts Options) (Source, error) {
	switch backend {
	case BackendNone:
		return Unavailable(ReasonDisabled), nil
	case BackendNVML, BackendMockDGXA100, BackendMockDGXH100, BackendMockDGXH200:
		return Unavailable(ReasonNoCgo), nil
	default:
		return nil, unknownBackend(backend)
	}
}
