package etcd

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/controller/store/storetest"
	"github.com/bud-ecosystem/budfleet/internal/etcdtest"
)

func eventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 15 s: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func openPrefix(t *testing.T, c *etcdtest.Cluster, prefix string) *Store {
	t.Helper()
	s, err := Open(t.Context(), Options{Endpoints: c.Endpoints(), Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Two controllers' Peers: each sees the other's address and presence (not
// its own), a dead one's lease takes both away, stale presence chunks go,
// commands queued through either wake the watch, and one leader at a time
// with a handover when it stops.
func TestPeers(t *testing.T) {
	c := etcdtest.Start(t, 1)
	s := openPrefix(t, c, "/peers")
	ctx := t.Context()
	pa, err := NewPeers(ctx, s, "a", "a:1", 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	pb, err := NewPeers(ctx, s, "b", "b:1", 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pb.Close()
	for _, p := range []*Peers{pa, pb} {
		go p.Follow(ctx)
	}
	eventually(t, "both controllers listed", func() bool { return slices.Equal(pb.Controllers(), []string{"a:1", "b:1"}) })

	seen := map[string]time.Time{}
	at := time.UnixMilli(time.Now().UnixMilli())
	for i := range 4500 {
		seen[fmt.Sprintf("n%04d", i)] = at
	}
	if err := pa.PublishPresence(ctx, seen); err != nil {
		t.Fatal(err)
	}
	eventually(t, "b sees a's 4,500 nodes", func() bool {
		last, ok := pb.Presence("n4499")
		return ok && last.Equal(at)
	})
	if _, ok := pa.Presence("n0001"); ok {
		t.Error("a sees its own presence as another controller's")
	}
	if err := pa.PublishPresence(ctx, map[string]time.Time{"n0001": at}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a's stale chunks gone", func() bool { _, ok := pb.Presence("n4499"); return !ok })
	if _, ok := pb.Presence("n0001"); !ok {
		t.Error("b lost n0001")
	}

	// The queue watch.
	var woken sync.Map
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	go pb.WatchQueued(wctx, func(n string) { woken.Store(n, true) })
	time.Sleep(200 * time.Millisecond)
	n := storetest.NewNode("q1", "h")
	storetest.EnrollNode(t, s, n)
	if err := s.EnqueueCommand(ctx, storetest.Cmd("cq", "q1", store.CommandPending)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the watch saw the queued command", func() bool { _, ok := woken.Load("q1"); return ok })

	// One leader; the next takes over when it stops.
	var leading atomic.Value
	var both atomic.Bool
	run := func(p *Peers, lctx context.Context) {
		_ = p.Lead(lctx, "x", func(ctx context.Context) error {
			if old, _ := leading.Load().(string); old != "" {
				both.Store(true)
			}
			leading.Store(p.ID())
			<-ctx.Done()
			leading.Store("")
			return nil
		})
	}
	actx, acancel := context.WithCancel(ctx)
	go run(pa, actx)
	eventually(t, "a leads", func() bool { v, _ := leading.Load().(string); return v == "a" })
	go run(pb, ctx)
	time.Sleep(500 * time.Millisecond)
	if v, _ := leading.Load().(string); v != "a" {
		t.Fatalf("leader is %q while a still leads", v)
	}
	if l, err := pb.Leader(ctx, "x"); err != nil || l != "a" {
		t.Errorf("Leader = %q, %v", l, err)
	}
	acancel()
	eventually(t, "b leads after a stops", func() bool { v, _ := leading.Load().(string); return v == "b" })
	if both.Load() {
		t.Error("two leaders at once")
	}

	// a dies: its lease, address and presence go.
	pa.Close()
	eventually(t, "a's address and presence gone", func() bool {
		_, ok := pb.Presence("n0001")
		return !ok && slices.Equal(pb.Controllers(), []string{"b:1"})
	})
}

// A snapshot restored into an empty prefix reads back the same; a prefix
// with state is refused without replace.
func TestSnapshotRestore(t *testing.T) {
	c := etcdtest.Start(t, 1)
	src := openPrefix(t, c, "/snap-src")
	ctx := t.Context()
	storetest.EnrollNode(t, src, storetest.NewNode("n1", "h1"))
	if err := src.EnqueueCommand(ctx, storetest.Cmd("c1", "n1", store.CommandPending)); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	m, err := src.Snapshot(ctx, &buf)
	if err != nil {
		t.Fatal(err)
	}
	if m.Revision == 0 || m.Backend != "etcd" {
		t.Errorf("manifest %+v", m)
	}
	dst := openPrefix(t, c, "/snap-dst")
	if _, err := dst.Restore(ctx, buf.Bytes(), false); err != nil {
		t.Fatal(err)
	}
	if _, err := dst.Restore(ctx, buf.Bytes(), false); err == nil {
		t.Error("a second restore into a prefix with state succeeded")
	}
	if _, err := dst.Restore(ctx, buf.Bytes(), true); err != nil {
		t.Errorf("restore with replace: %v", err)
	}
	cmd, err := dst.GetCommand(ctx, "c1")
	if err != nil || cmd.NodeID != "n1" {
		t.Fatalf("restored command: %+v, %v", cmd, err)
	}
	// The queue goes on after the restored sequence.
	if err := dst.EnqueueCommand(ctx, storetest.Cmd("c2", "n1", store.CommandPending)); err != nil {
		t.Fatal(err)
	}
	cs, err := dst.ListCommands(ctx, "n1")
	if err != nil || len(cs) != 2 || cs[0].ID != "c1" || cs[1].ID != "c2" {
		t.Errorf("restored queue: %v, %v", storetest.CommandIDs(cs), err)
	}
}
