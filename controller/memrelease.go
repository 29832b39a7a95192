package controller

import (
	"context"
	"log/slog"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults for the memory release after a session storm (Options).
const (
	// DefaultMemoryReleaseBurst is how many session opens since the last
	// release make a storm worth releasing after: a few hundred streams
	// leave tens of MiB of free heap behind.
	DefaultMemoryReleaseBurst = 256
	// DefaultMemoryReleaseQuiet is how long session opens must stay at a
	// trickle before the storm counts as over.
	DefaultMemoryReleaseQuiet = 5 * time.Second
	// DefaultMemoryReleaseInterval is the least time between two releases:
	// each is a full GC plus returning every free page, which costs a
	// stop of the world's worth of CPU on a large heap.
	DefaultMemoryReleaseInterval = 5 * time.Minute
)

// The follow-ups after a storm's release: its aftermath (the first reports
// of every new session, queued store writes) goes on allocating after the
// opens have stopped, and the heap regrows towards the GC goal in pages the
// runtime again keeps. For followUpWindow after the storm's release, a
// check that finds at least followUpFree of free, unreturned heap, or of
// heap objects grown since the last release (the aftermath's garbage, free
// once a GC has run), releases again, at most followUps times, followUpGap
// apart. A check that finds less waits for the next: the aftermath's
// garbage is not free until a GC has run, and ending the follow-ups at the
// first small reading left a fleet benchmark's controller holding 365 MiB
// of it 30 s after a storm. A follow-up that returns less than
// followUpFree ends them: the heap grew with live data (an etcd store's
// caches), and every further release would be a full GC for nothing (four
// in a minute doubled the steady CPU of a 10,000-agent controller on etcd).
// A follow-up also waits while the controller is busy (more than
// followUpBusy of a core's CPU since the check before): a release is a full
// GC, and one taken in the middle of a fan-out to 10,000 agents, whose
// allocations had grown the heap, delayed every result by half a second.
const (
	followUps      = 6
	followUpGap    = 10 * time.Second
	followUpWindow = 2 * time.Minute
	followUpFree   = 64 << 20
	followUpBusy   = 0.25
)

// stormRelease gives free heap back to the OS once a burst of session opens
// has settled. A reconnect storm (a controller restart, a network coming
// back) makes every session's TLS, HTTP/2 and gRPC buffers at once, and the
// garbage of the handshakes beside them; the runtime keeps the peak's pages
// and its background scavenger returns them only slowly, so RSS stays at
// the storm's peak long after the fleet is idle again. The storm is a peak,
// not the steady state: once it is over, one debug.FreeOSMemory returns
// what the steady state does not use.
type stormRelease struct {
	burst    int
	quiet    time.Duration
	interval time.Duration
	// release is debug.FreeOSMemory; tests count calls instead.
	release func()
	// heapReleased reads the runtime's released-page total, to report
	// what a release gave back.
	heapReleased func() uint64
	// heapFree reads the free heap the runtime holds and has not
	// returned, and heapObjects the heap its objects (live or not yet
	// collected) take, for the follow-ups.
	heapFree, heapObjects func() uint64
	// cpuTime reads the process's CPU time (user and system), to tell a
	// busy controller from a settled one.
	cpuTime  func() time.Duration
	log      *slog.Logger
	releases prometheus.Counter
	released prometheus.Counter

	mu     sync.Mutex
	opens  int // session opens since the last release
	recent int // session opens since the last check
	// lastBusy is the last check that saw more than a trickle of opens
	// since the one before: a storm's tail of reconnects (sessions
	// replaced, agents on a long backoff) must not hold the release off.
	lastBusy time.Time
	lastRel  time.Time // the last release; zero before the first
	// follow is how many follow-up releases the last storm may still get,
	// until followUpWindow after stormRel, its release; objectsAtRel is
	// heapObjects after the last release.
	follow       int
	stormRel     time.Time
	objectsAtRel uint64
	// lastCheck and cpuAtCheck: the check before and the CPU time then.
	lastCheck  time.Time
	cpuAtCheck time.Duration
}

// trickle is how many opens between two checks (a second apart in run)
// still count as quiet.
func (r *stormRelease) trickle() int { return max(r.burst/16, 1) }

func newStormRelease(burst int, quiet, interval time.Duration, log *slog.Logger, reg prometheus.Registerer) *stormRelease {
	r := &stormRelease{
		burst: burst, quiet: quiet, interval: interval,
		release:      debug.FreeOSMemory,
		heapReleased: heapReleasedBytes,
		heapFree:     heapFreeBytes,
		heapObjects:  heapObjectBytes,
		cpuTime:      processCPU,
		log:          log,
		releases: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bud_controller_memory_releases_total",
			Help: "Times the controller returned its free heap to the OS after a storm of session opens had settled (--memory-release-burst).",
		}),
		released: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bud_controller_memory_released_bytes_total",
			Help: "Heap bytes those releases returned to the OS.",
		}),
	}
	reg.MustRegister(r.releases, r.released)
	return r
}

// enabled is false when --memory-release-burst is 0.
func (r *stormRelease) enabled() bool { return r != nil && r.burst > 0 }

// opened notes a session open at now.
func (r *stormRelease) opened(now time.Time) {
	if !r.enabled() {
		return
	}
	r.mu.Lock()
	r.opens++
	r.recent++
	if r.lastBusy.IsZero() {
		r.lastBusy = now
	}
	r.mu.Unlock()
}

// check releases when a storm is over at now: at least burst opens since the
// last release, no check for quiet that saw more than a trickle of opens
// since the one before, and interval since the last release. It reports
// whether it released.
func (r *stormRelease) check(now time.Time) bool {
	if !r.enabled() {
		return false
	}
	r.mu.Lock()
	if r.recent > r.trickle() {
		r.lastBusy = now
	}
	r.recent = 0
	due := r.opens >= r.burst && now.Sub(r.lastBusy) >= r.quiet && (r.lastRel.IsZero() || now.Sub(r.lastRel) >= r.interval)
	opens := r.opens
	followUp := false
	if due {
		r.opens, r.lastRel, r.stormRel, r.follow = 0, now, now, followUps
	} else if r.follow > 0 && now.Sub(r.stormRel) > followUpWindow {
		r.follow = 0
	} else if r.follow > 0 && now.Sub(r.lastRel) >= followUpGap && !r.busy(now) {
		// Read only while follow-ups remain: they are metrics reads.
		grown := uint64(0)
		if o := r.heapObjects(); o > r.objectsAtRel {
			grown = o - r.objectsAtRel
		}
		if r.heapFree() >= followUpFree || grown >= followUpFree {
			r.follow--
			r.lastRel = now
			due, followUp = true, true
		}
	}
	if r.follow > 0 {
		r.noteCPU(now)
	}
	r.mu.Unlock()
	if !due {
		return false
	}
	before := r.heapReleased()
	start := time.Now()
	r.release()
	took := time.Since(start)
	objects := r.heapObjects()
	r.mu.Lock()
	r.objectsAtRel = objects
	r.mu.Unlock()
	var gave uint64
	if after := r.heapReleased(); after > before {
		gave = after - before
	}
	r.releases.Inc()
	r.released.Add(float64(gave))
	if followUp {
		if gave < followUpFree {
			r.mu.Lock()
			r.follow = 0
			r.mu.Unlock()
		}
		r.log.Info("returned free heap to the OS again after a storm: its aftermath had grown the heap", "released_bytes", gave, "took", took.Round(time.Millisecond))
		return true
	}
	r.log.Info("returned free heap to the OS after a storm of session opens", "session_opens", opens, "released_bytes", gave, "took", took.Round(time.Millisecond))
	return true
}

// busy reports whether the process used more than followUpBusy of a core
// since the check before; it needs two checks in a row to tell, so the
// first check of a run counts as busy.
func (r *stormRelease) busy(now time.Time) bool {
	if r.lastCheck.IsZero() || now.Sub(r.lastCheck) > 3*time.Second {
		return true
	}
	used := r.cpuTime() - r.cpuAtCheck
	return used.Seconds() > followUpBusy*now.Sub(r.lastCheck).Seconds()
}

// noteCPU keeps the CPU time at this check for the next one's busy.
func (r *stormRelease) noteCPU(now time.Time) {
	r.lastCheck, r.cpuAtCheck = now, r.cpuTime()
}

// run checks every second until ctx ends; a storm is over seconds after its
// last open, so a second's lag is nothing.
func (r *stormRelease) run(ctx context.Context, now func() time.Time) error {
	if !r.enabled() {
		return nil
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			r.check(now())
		}
	}
}

// heapFreeBytes is the free heap backed by memory that the runtime has not
// returned; runtime/metrics reads it without stopping the world.
func heapFreeBytes() uint64 {
	s := []rtmetrics.Sample{{Name: "/memory/classes/heap/free:bytes"}}
	rtmetrics.Read(s)
	if s[0].Value.Kind() != rtmetrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

// processCPU is the process's user and system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// heapObjectBytes is the heap that objects take, live or not yet collected.
func heapObjectBytes() uint64 {
	s := []rtmetrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	rtmetrics.Read(s)
	if s[0].Value.Kind() != rtmetrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

func heapReleasedBytes() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapReleased
}
