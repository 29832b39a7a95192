package controller

import (
	"io"
	"log/slog"
	rtmetrics "runtime/metrics"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func testStormRelease(t *testing.T, burst int) (*stormRelease, *int) {
	t.Helper()
	r := newStormRelease(burst, 5*time.Second, time.Minute, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	calls := 0
	released := uint64(0)
	r.release = func() { calls++; released += 1 << 20 }
	r.heapReleased = func() uint64 { return released }
	r.heapFree = func() uint64 { return 0 }
	r.heapObjects = func() uint64 { return 0 }
	r.cpuTime = func() time.Duration { return 0 } // idle
	return r, &calls
}

// counterValue reads a counter through a registry of its own, which keeps
// the test off client_model's types.
func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil || len(mfs) != 1 || len(mfs[0].GetMetric()) != 1 {
		t.Fatalf("gather: %v (%d families)", err, len(mfs))
	}
	return mfs[0].GetMetric()[0].GetCounter().GetValue()
}

// clock steps a stormRelease the way run does: one check a second.
type releaseClock struct {
	r   *stormRelease
	now time.Time
}

// open notes n session opens at the current time.
func (c *releaseClock) open(n int) {
	for range n {
		c.r.opened(c.now)
	}
}

// tick advances one second and checks; it reports whether it released.
func (c *releaseClock) tick() bool {
	c.now = c.now.Add(time.Second)
	return c.r.check(c.now)
}

// ticks checks for n seconds and returns how many released.
func (c *releaseClock) ticks(n int) int {
	k := 0
	for range n {
		if c.tick() {
			k++
		}
	}
	return k
}

func TestStormReleaseAfterQuiet(t *testing.T) {
	r, calls := testStormRelease(t, 32) // a trickle is 2 opens a second
	c := &releaseClock{r: r, now: time.Unix(1_000_000, 0)}
	for range 4 {
		c.open(8)
		if c.tick() {
			t.Fatal("released during the storm")
		}
	}
	if n := c.ticks(4); n != 0 {
		t.Fatal("released before the storm had been quiet for 5s")
	}
	if !c.tick() {
		t.Fatal("no release 5s after the storm")
	}
	if *calls != 1 {
		t.Fatalf("release called %d times, want 1", *calls)
	}
	if got := counterValue(t, r.releases); got != 1 {
		t.Fatalf("releases metric %v, want 1", got)
	}
	if got := counterValue(t, r.released); got != 1<<20 {
		t.Fatalf("released bytes metric %v, want %d", got, 1<<20)
	}
	// The storm is spent: quiet on its own releases nothing more.
	if n := c.ticks(3600); n != 0 {
		t.Fatal("released again with no new opens")
	}
}

// A storm's tail of reconnects, a trickle, does not hold the release off;
// more than a trickle does.
func TestStormReleaseIgnoresTrickle(t *testing.T) {
	r, calls := testStormRelease(t, 32)
	c := &releaseClock{r: r, now: time.Unix(1_000_000, 0)}
	c.open(32)
	c.tick()
	for range 3 {
		c.open(3) // more than a trickle
		if c.tick() {
			t.Fatal("released while opens were still coming")
		}
	}
	released := 0
	for range 5 {
		c.open(2) // a trickle
		if c.tick() {
			released++
		}
	}
	if released != 1 || *calls != 1 {
		t.Fatalf("%d releases during a trickle 5s after the storm, want 1", released)
	}
}

func TestStormReleaseNeedsBurst(t *testing.T) {
	r, calls := testStormRelease(t, 3)
	c := &releaseClock{r: r, now: time.Unix(1_000_000, 0)}
	c.open(2)
	if c.ticks(3600) != 0 || *calls != 0 {
		t.Fatal("released after 2 opens with a burst of 3")
	}
	// Opens add up across quiet spells until a release.
	c.open(1)
	if c.ticks(6) != 1 {
		t.Fatal("no release after the third open")
	}
}

func TestStormReleaseRateLimited(t *testing.T) {
	r, calls := testStormRelease(t, 1)
	c := &releaseClock{r: r, now: time.Unix(1_000_000, 0)}
	c.open(5)
	if c.ticks(6) != 1 {
		t.Fatal("first release missing")
	}
	// A second storm soon after: not before the interval (1m) is up.
	c.open(5)
	if c.ticks(30) != 0 {
		t.Fatal("released twice within the interval")
	}
	if c.ticks(30) != 1 {
		t.Fatal("no release once the interval was up")
	}
	if *calls != 2 {
		t.Fatalf("release called %d times, want 2", *calls)
	}
}

func TestStormReleaseOff(t *testing.T) {
	r, calls := testStormRelease(t, 0)
	c := &releaseClock{r: r, now: time.Unix(1_000_000, 0)}
	c.open(1000)
	if c.ticks(3600) != 0 || *calls != 0 {
		t.Fatal("released with the burst set to 0 (off)")
	}
}

// A session open through the server feeds the trigger.
func TestOpenSessionFeedsStormRelease(t *testing.T) {
	e := newTestServer(t)
	r, calls := testStormRelease(t, 1)
	e.srv.memRelease = r
	sess, err := e.srv.openSession(t.Context(), "n1", "", "")
	if err != nil {
		t.Fatal(err)
	}
	defer e.srv.closeSession(sess)
	c := &releaseClock{r: r, now: base}
	if c.ticks(6) != 1 || *calls != 1 {
		t.Fatal("a session open did not count towards the release")
	}
}

// After a storm's release, the heap its aftermath grows back is released
// again while it is large, followUpGap apart and at most followUps times;
// a check that finds it small waits for the next, until followUpWindow
// after the storm's release.
func TestStormReleaseFollowUps(t *testing.T) {
	r, calls := testStormRelease(t, 100)
	free := uint64(followUpFree)
	r.heapFree = func() uint64 { return free }
	// Each release returns what is free.
	var released uint64
	r.release = func() { *calls++; released += free }
	r.heapReleased = func() uint64 { return released }
	c := &releaseClock{r: r, now: time.Unix(1_000_000, 0)}
	gap := int(followUpGap / time.Second)
	// untilRelease ticks until a check releases, failing after limit.
	untilRelease := func(limit int) {
		t.Helper()
		for range limit {
			if c.tick() {
				return
			}
		}
		t.Fatalf("no release in %d s", limit)
	}
	c.open(200)
	untilRelease(10)
	for i := range followUps {
		if n := c.ticks(gap - 1); n != 0 {
			t.Fatalf("follow-up %d: %d releases sooner than %v after the last", i, n, followUpGap)
		}
		if !c.tick() {
			t.Fatalf("follow-up %d: none %v after the last with the free heap large", i, followUpGap)
		}
	}
	if n := c.ticks(10 * gap); n != 0 {
		t.Fatalf("%d releases after the %d follow-ups", n, followUps)
	}
	if *calls != 1+followUps {
		t.Fatalf("release called %d times, want %d", *calls, 1+followUps)
	}

	// A new storm, past the interval: a small heap at the first follow-up
	// checks releases nothing; its aftermath's objects, grown by
	// followUpFree since the release, do, though none of it is free yet.
	c.now = c.now.Add(time.Hour)
	c.open(200)
	untilRelease(10)
	free = followUpFree - 1
	if n := c.ticks(2 * gap); n != 0 {
		t.Fatalf("a follow-up with %d bytes free and no growth", free)
	}
	objects := uint64(followUpFree)
	r.heapObjects = func() uint64 { return objects }
	if !c.tick() {
		t.Fatal("no follow-up with the heap objects grown by followUpFree since the release")
	}
	// The release's own reading is the new base: no growth since.
	if n := c.ticks(2 * gap); n != 0 {
		t.Fatalf("%d follow-ups with the objects unchanged since the last", n)
	}
	// That follow-up returned less than followUpFree (the growth was live
	// heap): it was the last, however much grows or is free after it.
	objects = 4 * followUpFree
	free = followUpFree
	if n := c.ticks(5 * gap); n != 0 {
		t.Fatalf("%d follow-ups after one that returned %d bytes", n, followUpFree-1)
	}
	// A new storm: a follow-up that returns followUpFree leaves the rest;
	// none while the process is busy (half a core), one once it is not.
	c.now = c.now.Add(time.Hour)
	c.open(200)
	var cpu time.Duration
	r.cpuTime = func() time.Duration { return cpu }
	untilRelease(10)
	for range 3 * gap {
		cpu += time.Second / 2
		if c.tick() {
			t.Fatal("a follow-up while the process used half a core")
		}
	}
	if n := c.ticks(2); n != 1 {
		t.Fatalf("%d follow-ups in the first 2 s the process was idle, want 1", n)
	}
	if n := c.ticks(gap); n != 1 {
		t.Fatalf("%d follow-ups %v after the storm's release with the free heap large, want 1", n, followUpGap)
	}
	if n := c.ticks(gap); n != 1 {
		t.Fatalf("%d follow-ups %v after one that returned %d bytes, want 1", n, followUpGap, followUpFree)
	}
	// Past the window, a large free heap releases no more.
	c.now = c.now.Add(followUpWindow)
	objects = 0
	r.heapObjects = func() uint64 { return objects }
	free = followUpFree
	if n := c.ticks(10 * gap); n != 0 {
		t.Fatalf("%d follow-ups past the window", n)
	}
}

// The follow-ups read a runtime metric by name: a Go release that renamed
// it would leave them reading zero and never firing.
func TestHeapFreeMetricExists(t *testing.T) {
	for _, name := range []string{"/memory/classes/heap/free:bytes", "/memory/classes/heap/objects:bytes"} {
		t.Run(name, func(t *testing.T) { heapMetricExists(t, name) })
	}
	if heapObjectBytes() == 0 {
		t.Error("heapObjectBytes read 0")
	}
	if processCPU() <= 0 {
		t.Error("processCPU read no CPU time for a running process")
	}
}

func heapMetricExists(t *testing.T, name string) {
	t.Helper()
	for _, d := range rtmetrics.All() {
		if d.Name == name {
			if d.Kind != rtmetrics.KindUint64 {
				t.Fatalf("%s is of kind %v, not uint64", d.Name, d.Kind)
			}
			return
		}
	}
	t.Fatalf("runtime/metrics has no %s", name)
}
