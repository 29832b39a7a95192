//go:build cgo

package gpu

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// watched is a device registered for XID events.
type watched struct {
	dev  nvml.Device
	uuid string
}

// startWatcher registers every GPU for XID critical error events and starts
// the goroutine that waits for them. Called once, after a successful Init,
// with initMu held.
func (s *nvmlSource) startWatcher() {
	set, ret := s.lib.EventSetCreate()
	if ok, err := decode(ret); !ok {
		s.log.Warn("NVML events unavailable: XIDs will not be seen", "error", errOrUnsupported(err))
		return
	}
	n, ret := s.lib.DeviceGetCount()
	if _, err := decode(ret); err != nil {
		s.log.Warn("NVML events unavailable: XIDs will not be seen", "error", err)
		set.Free()
		return
	}
	var devs []watched
	for i := 0; i < n; i++ {
		dev, r, err := s.handle(i)
		if err != nil || r.lost {
			s.log.Warn("GPU not watched for XIDs", "gpu", i, "error", err, "lost", r.lost)
			continue
		}
		ok, err := decode(dev.RegisterEvents(nvml.EventTypeXidCriticalError, set))
		if !ok {
			s.log.Warn("GPU not watched for XIDs", "gpu", i, "uuid", r.uuid, "error", errOrUnsupported(err))
			continue
		}
		devs = append(devs, watched{dev: dev, uuid: r.uuid})
	}
	if len(devs) == 0 {
		set.Free()
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.stopWatch = cancel
	s.watchDone = make(chan struct{})
	go s.watch(ctx, set, devs)
}

func errOrUnsupported(err error) error {
	if err == nil {
		return errors.New("not supported")
	}
	return err
}

// watch waits for events until ctx ends, then frees the set.
func (s *nvmlSource) watch(ctx context.Context, set nvml.EventSet, devs []watched) {
	defer close(s.watchDone)
	defer set.Free()
	ms := uint32(s.opts.eventWait / time.Millisecond)
	pause := time.NewTimer(0)
	defer pause.Stop()
	<-pause.C
	for ctx.Err() == nil {
		data, ret := set.Wait(ms)
		switch ret {
		case nvml.SUCCESS:
			s.record(data, devs)
		case nvml.ERROR_TIMEOUT:
		default:
			// A lost GPU can make Wait fail; Health finds lost GPUs
			// itself. Pause so a persistent error does not spin.
			s.logOnce(fmt.Sprintf("wait/%d", ret), "NVML event wait failed", "error", nvmlError{ret})
			pause.Reset(s.opts.eventWait)
			select {
			case <-ctx.Done():
			case <-pause.C:
			}
		}
	}
}

// record keeps an XID event for the GPU it came from: the one with the
// event's UUID or, when NVML cannot tell a lost GPU's UUID, the same handle.
func (s *nvmlSource) record(data nvml.EventData, devs []watched) {
	if data.EventType&nvml.EventTypeXidCriticalError == 0 {
		return
	}
	uuid := ""
	if data.Device != nil {
		if u, ret := data.Device.GetUUID(); ret == nvml.SUCCESS {
			uuid = u
		} else {
			for _, w := range devs {
				if sameHandle(w.dev, data.Device) {
					uuid = w.uuid
					break
				}
			}
		}
	}
	x := XID{Code: data.EventData, At: s.opts.Now()}
	if uuid == "" {
		s.log.Warn("XID from an unknown GPU", "xid", x.Code)
		return
	}
	if s.opts.IgnoredXIDs[x.Code] {
		s.log.Info("XID (application fault, GPU stays healthy)", "uuid", uuid, "xid", x.Code)
	} else {
		s.log.Warn("XID: GPU unhealthy", "uuid", uuid, "xid", x.Code)
	}
	s.mu.Lock()
	l := append(s.xids[uuid], x)
	if len(l) > MaxXIDsPerGPU {
		l = append([]XID(nil), l[len(l)-MaxXIDsPerGPU:]...)
	}
	s.xids[uuid] = l
	s.mu.Unlock()
}

// sameHandle compares device handles, which are comparable for the real
// library (a pointer in a struct) and the mocks (pointers).
func sameHandle(a, b nvml.Device) (same bool) {
	defer func() {
		if recover() != nil {
			same = false
		}
	}()
	return a == b
}
