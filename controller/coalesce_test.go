package controller

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/controller/ca"
	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/controller/store/bolt"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	gpuv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/gpu/v1"
	hostv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/host/v1"
)

// countingStore counts node writes on a real bolt store.
type countingStore struct {
	*bolt.Store
	nodeWrites atomic.Int64
}

func (c *countingStore) UpdateNode(ctx context.Context, id string, fn func(*store.Node) error) (store.Node, error) {
	c.nodeWrites.Add(1)
	return c.Store.UpdateNode(ctx, id, fn)
}

// A node flooding 500 inventory and 500 GPU reports in a burst costs a
// bounded number of store writes, and what is stored is the last of each.
// (DefaultReportInterval is 2 s; a shorter one keeps the test short.)
func TestReportFloodCoalesced(t *testing.T) {
	st, err := bolt.Open(filepath.Join(t.TempDir(), StoreFile), bolt.Options{LockTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cs := &countingStore{Store: st}
	authority, err := ca.NewCA(base)
	if err != nil {
		t.Fatal(err)
	}
	const interval = 300 * time.Millisecond
	srv, err := New(Options{Store: cs, CA: authority, Logger: discardLogger(), ReportInterval: interval})
	if err != nil {
		t.Fatal(err)
	}
	e := &testEnv{srv: srv, store: st, ca: authority}
	addNode(t, e, "n1")
	sess, err := srv.openSession(t.Context(), "n1", "peer", "test")
	if err != nil {
		t.Fatal(err)
	}

	const n = 500
	start := time.Now()
	for i := range n {
		inv := &hostv1.Inventory{Hostname: "h-n1", Kernel: fmt.Sprintf("6.1.%d", i)}
		if err := srv.handleAgentMessage(sess, &agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Inventory{Inventory: inv}}); err != nil {
			t.Fatal(err)
		}
		g := &gpuv1.GpuInventory{DriverVersion: fmt.Sprintf("550.%d", i)}
		if err := srv.handleAgentMessage(sess, &agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_GpuInventory{GpuInventory: g}}); err != nil {
			t.Fatal(err)
		}
	}
	// The session ends with the last reports still waiting: they are kept.
	srv.closeSession(sess)
	elapsed := time.Since(start)

	want := fmt.Sprintf("6.1.%d", n-1)
	wantDriver := fmt.Sprintf("550.%d", n-1)
	deadline := time.Now().Add(5 * time.Second)
	for {
		node, err := st.GetNode(t.Context(), "n1")
		if err != nil {
			t.Fatal(err)
		}
		g, _ := decodeGPUs(node)
		if node.Inventory.GetKernel() == want && g.GetInventory().GetDriverVersion() == wantDriver {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stored kernel %q, driver %q; want the last reports' %q, %q", node.Inventory.GetKernel(), g.GetInventory().GetDriverVersion(), want, wantDriver)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Per kind: the burst at once, then at most one per interval that the
	// flood lasted, and the last one; plus the session's last-heartbeat
	// write at close.
	bound := 2*(reportBurst+2+int64(elapsed/interval)) + 1
	if w := cs.nodeWrites.Load(); w > bound {
		t.Errorf("%d node writes for %d reports in %s; want at most %d", w, 2*n, elapsed, bound)
	} else {
		t.Logf("%d node writes for %d reports in %s (bound %d)", w, 2*n, elapsed, bound)
	}
}
