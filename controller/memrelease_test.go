package controller

import (
	"io"
	"log/slog"
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

func TestStormReleaseAfterQuiet(t *testing.T) {
	r, calls := testStormRelease(t, 3)
	t0 := time.Unix(1_000_000, 0)
	for i := range 3 {
		r.opened(t0.Add(time.Duration(i) * time.Second))
	}
	last := t0.Add(2 * time.Second)
	if r.check(last.Add(4 * time.Second)) {
		t.Fatal("released before the storm had been quiet for 5s")
	}
	if !r.check(last.Add(5 * time.Second)) {
		t.Fatal("no release 5s after the last of 3 opens")
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
	if r.check(last.Add(time.Hour)) {
		t.Fatal("released again with no new opens")
	}
}

func TestStormReleaseNeedsBurst(t *testing.T) {
	r, calls := testStormRelease(t, 3)
	t0 := time.Unix(1_000_000, 0)
	r.opened(t0)
	r.opened(t0)
	if r.check(t0.Add(time.Hour)) || *calls != 0 {
		t.Fatal("released after 2 opens with a burst of 3")
	}
	// Opens add up across quiet spells until a release.
	r.opened(t0.Add(time.Hour))
	if !r.check(t0.Add(time.Hour + 5*time.Second)) {
		t.Fatal("no release after the third open")
	}
}

func TestStormReleaseRateLimited(t *testing.T) {
	r, calls := testStormRelease(t, 1)
	t0 := time.Unix(1_000_000, 0)
	r.opened(t0)
	if !r.check(t0.Add(5 * time.Second)) {
		t.Fatal("first release missing")
	}
	// A second storm soon after: not before the interval (1m) is up.
	r.opened(t0.Add(10 * time.Second))
	if r.check(t0.Add(30 * time.Second)) {
		t.Fatal("released twice within the interval")
	}
	if !r.check(t0.Add(65 * time.Second)) {
		t.Fatal("no release once the interval was up")
	}
	if *calls != 2 {
		t.Fatalf("release called %d times, want 2", *calls)
	}
}

func TestStormReleaseOff(t *testing.T) {
	r, calls := testStormRelease(t, 0)
	t0 := time.Unix(1_000_000, 0)
	for range 1000 {
		r.opened(t0)
	}
	if r.check(t0.Add(time.Hour)) || *calls != 0 {
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
	if !r.check(base.Add(5*time.Second)) || *calls != 1 {
		t.Fatal("a session open did not count towards the release")
	}
}
