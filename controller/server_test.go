package controller

import (
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/controller/ca"
	"github.com/bud-ecosystem/budfleet/controller/store/bolt"
)

// base is a fixed UTC instant without a monotonic reading, so times survive
// the JSON round trip through the store unchanged.
var base = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

type testEnv struct {
	srv   *Server
	store *bolt.Store
	ca    *ca.CA
	clock *fakeClock
}

// newTestServer builds a Server over a real store in a temp dir, with a CA
// and a fake clock at base.
func newTestServer(t *testing.T) *testEnv {
	t.Helper()
	st, err := bolt.Open(filepath.Join(t.TempDir(), StoreFile), bolt.Options{LockTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	authority, err := ca.NewCA(base)
	if err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{t: base}
	// Reports are stored as they come (the tests read them back at once);
	// TestReportFloodCoalesced runs the real interval.
	srv, err := New(Options{Store: st, CA: authority, Logger: discardLogger(), Now: clock.Now, ReportInterval: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	return &testEnv{srv: srv, store: st, ca: authority, clock: clock}
}

func TestNewValidatesOptions(t *testing.T) {
	st, err := bolt.Open(filepath.Join(t.TempDir(), StoreFile), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	authority, err := ca.NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		opts   Options
		errHas string
	}{
		{"no store", Options{CA: authority}, "Store"},
		{"no CA", Options{Store: st}, "CA"},
		{"grace equal to interval", Options{Store: st, CA: authority, HeartbeatInterval: time.Second, HeartbeatGrace: time.Second}, "heartbeat grace"},
		{"grace shorter than interval", Options{Store: st, CA: authority, HeartbeatInterval: 5 * time.Second, HeartbeatGrace: time.Second}, "heartbeat grace"},
		{"grace under the default interval", Options{Store: st, CA: authority, HeartbeatGrace: DefaultHeartbeatInterval}, "heartbeat grace"},
		{"cert TTL under a minute", Options{Store: st, CA: authority, AgentCertTTL: 59 * time.Second}, "under a minute"},
		{"negative cert TTL", Options{Store: st, CA: authority, AgentCertTTL: -time.Hour}, "under a minute"},
		{"negative memory release burst", Options{Store: st, CA: authority, MemoryReleaseBurst: -1}, "memory release"},
		{"negative memory release quiet", Options{Store: st, CA: authority, MemoryReleaseQuiet: -time.Second}, "memory release"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Logger = discardLogger()
			_, err := New(tc.opts)
			if err == nil {
				t.Fatal("New accepted bad options")
			}
			if !strings.Contains(err.Error(), tc.errHas) {
				t.Errorf("error %q should mention %q", err, tc.errHas)
			}
		})
	}

	// The boundaries are accepted, and defaults fill the zero values.
	s, err := New(Options{Store: st, CA: authority, Logger: discardLogger(), AgentCertTTL: time.Minute, HeartbeatInterval: 200 * time.Millisecond, HeartbeatGrace: 201 * time.Millisecond})
	if err != nil {
		t.Fatalf("New at the boundaries: %v", err)
	}
	if s.opts.FullInventoryInterval != DefaultFullInventoryInterval {
		t.Errorf("FullInventoryInterval = %s, want the default", s.opts.FullInventoryInterval)
	}
	s, err = New(Options{Store: st, CA: authority, Logger: discardLogger()})
	if err != nil {
		t.Fatalf("New with defaults: %v", err)
	}
	if s.opts.AgentCertTTL != DefaultAgentCertTTL || s.opts.HeartbeatInterval != DefaultHeartbeatInterval || s.opts.HeartbeatGrace != DefaultHeartbeatGrace {
		t.Errorf("defaults not applied: %+v", s.opts)
	}
}

func TestReadyWithinGrace(t *testing.T) {
	e := newTestServer(t)
	if e.srv.ready(time.Time{}) {
		t.Error("a node never seen is ready")
	}
	e.srv.sawHeartbeat("n1")
	last, connected := e.srv.nodeLiveness("n1")
	if !last.Equal(base) || connected {
		t.Fatalf("nodeLiveness = %s, %v", last, connected)
	}
	if !e.srv.ready(last) || e.srv.countReady() != 1 {
		t.Error("a node with a fresh heartbeat is not ready")
	}
	e.clock.Advance(DefaultHeartbeatGrace)
	if e.srv.ready(last) || e.srv.countReady() != 0 {
		t.Error("a node whose last heartbeat is a full grace period old is still ready")
	}
}
