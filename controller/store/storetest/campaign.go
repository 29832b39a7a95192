package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/controller/maintenance"
	"github.com/bud-ecosystem/budfleet/controller/store"
)

// NewCampaign is a campaign with most of its fields set: a spec with a
// per-domain limit, a window in a named zone and a task; three nodes, the
// first cordoned and its drain issued, an audit outbox.
func NewCampaign(t *testing.T, id string, created time.Time) store.Campaign {
	t.Helper()
	w, err := maintenance.ParseWindow("Sat-Sun 01:00-05:00, Wed 03:00-04:00 UTC")
	if err != nil {
		t.Fatal(err)
	}
	spec := maintenance.Spec{
		Selector:       map[string]string{"pool": "gpu"},
		MaxUnavailable: 2,
		PerDomain:      &maintenance.DomainLimit{Label: "rack", Max: 1},
		DrainTimeout:   90 * time.Second,
		Task:           "#!/bin/sh\napt-get install -y nvidia-driver-570\n",
		Reboot:         true,
		Window:         w,
		MaxFailures:    2,
	}
	var targets []maintenance.Target
	for i, rack := range []string{"r1", "r1", "r2"} {
		targets = append(targets, maintenance.Target{
			NodeID:  fmt.Sprintf("%s-n%d", id, i),
			K8sNode: fmt.Sprintf("gpu-%d", i),
			Labels:  map[string]string{"pool": "gpu", "rack": rack},
		})
	}
	c, err := maintenance.New(id, "driver 570", spec, targets, created)
	if err != nil {
		t.Fatal(err)
	}
	c.CreatedBy = "alice"
	// One step inside the window moves it on: started, two nodes cordoned
	// (one per rack), audits waiting.
	now := time.Date(2030, 1, 5, 2, 0, 0, 0, time.UTC) // a Saturday
	obs := maintenance.Observations{Now: now, Nodes: map[string]maintenance.NodeObservation{}}
	for _, tg := range targets {
		obs.Nodes[tg.NodeID] = maintenance.NodeObservation{K8sNodeExists: true, K8sReady: true, AgentConnected: true, BootID: "boot-" + tg.NodeID, GPUCount: 8, GPUHealthy: true}
	}
	c, _ = maintenance.Step(c, obs)
	if len(c.Outbox) == 0 || c.State != maintenance.StateRunning {
		t.Fatalf("NewCampaign: the step did not start the campaign: %+v", c)
	}
	return c
}

func testCampaigns(t *testing.T, newStore func(t *testing.T) store.Store) {
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"CreateGetList", testCampaignCreateGetList},
		{"Update", testCampaignUpdate},
		{"UpdateConcurrent", testCampaignUpdateConcurrent},
		{"Delete", testCampaignDelete},
		{"ValuesAreCopies", testCampaignCopies},
		{"CanceledContext", testCampaignCanceled},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore(t)) })
	}
}

func testCampaignCreateGetList(t *testing.T, s store.Store) {
	if list, err := s.ListCampaigns(ctx(t)); err != nil || len(list) != 0 {
		t.Fatalf("ListCampaigns on an empty store = %v, %v", list, err)
	}
	// Created in an order that is neither id nor CreatedAt order; aaa and
	// ccc share a CreatedAt, so the id breaks the tie.
	cs := []store.Campaign{
		NewCampaign(t, "bbb", Base.Add(2*time.Minute)),
		NewCampaign(t, "ccc", Base),
		NewCampaign(t, "ddd", Base.Add(time.Minute)),
		NewCampaign(t, "aaa", Base),
	}
	for _, c := range cs {
		must(t, s.CreateCampaign(ctx(t), c))
	}
	dup := cs[0]
	dup.Name = "other"
	if err := s.CreateCampaign(ctx(t), dup); !errors.Is(err, store.ErrAlreadyExists) || !strings.Contains(err.Error(), "bbb") {
		t.Errorf("duplicate CreateCampaign = %v, want ErrAlreadyExists naming the id", err)
	}
	for _, want := range cs {
		got, err := s.GetCampaign(ctx(t), want.ID)
		must(t, err)
		// Every field survives, the window's parsed form and the outbox
		// included.
		if !reflect.DeepEqual(got, want) {
			t.Errorf("GetCampaign(%s) =\n%+v\nwant\n%+v", want.ID, got, want)
		}
	}
	if got, _ := s.GetCampaign(ctx(t), "bbb"); got.Name != "driver 570" {
		t.Errorf("the duplicate create overwrote the campaign: name %q", got.Name)
	}
	if w := cs[0].Spec.Window; !w.Open(time.Date(2030, 1, 5, 2, 0, 0, 0, time.UTC)) {
		t.Fatal("the test window should be open on Saturday 02:00")
	}
	got, _ := s.GetCampaign(ctx(t), "bbb")
	if got.Spec.Window.Open(time.Date(2030, 1, 7, 2, 0, 0, 0, time.UTC)) || !got.Spec.Window.Open(time.Date(2030, 1, 9, 3, 30, 0, 0, time.UTC)) {
		t.Errorf("the stored window %q lost its meaning", got.Spec.Window)
	}
	_, err := s.GetCampaign(ctx(t), "nope")
	notFound(t, "GetCampaign(unknown)", err, "nope")

	list, err := s.ListCampaigns(ctx(t))
	must(t, err)
	var ids []string
	for _, c := range list {
		ids = append(ids, c.ID)
	}
	if want := []string{"aaa", "ccc", "ddd", "bbb"}; !reflect.DeepEqual(ids, want) {
		t.Errorf("ListCampaigns order = %v, want %v (oldest first, then by id)", ids, want)
	}
}

func testCampaignUpdate(t *testing.T, s store.Store) {
	c := NewCampaign(t, "c1", Base)
	must(t, s.CreateCampaign(ctx(t), c))

	paused, err := s.UpdateCampaign(ctx(t), "c1", func(c *store.Campaign) error {
		p, err := c.Pause("alice", Base.Add(time.Hour))
		*c = p
		return err
	})
	must(t, err)
	if paused.State != maintenance.StatePaused {
		t.Errorf("UpdateCampaign returned state %s, want paused", paused.State)
	}
	if got, _ := s.GetCampaign(ctx(t), "c1"); !reflect.DeepEqual(got, paused) {
		t.Errorf("stored campaign %+v, want the returned %+v", got, paused)
	}

	// An error from fn is returned as it is and changes nothing, whatever
	// fn did to its argument.
	bad := errors.New("refused")
	_, err = s.UpdateCampaign(ctx(t), "c1", func(c *store.Campaign) error {
		c.State = maintenance.StateAborting
		c.Nodes[0].Step = maintenance.StepDone
		return bad
	})
	if !errors.Is(err, bad) {
		t.Errorf("UpdateCampaign with a failing fn = %v, want its error", err)
	}
	if got, _ := s.GetCampaign(ctx(t), "c1"); !reflect.DeepEqual(got, paused) {
		t.Errorf("a failed update changed the campaign: %+v", got)
	}

	called := false
	_, err = s.UpdateCampaign(ctx(t), "nope", func(*store.Campaign) error { called = true; return nil })
	notFound(t, "UpdateCampaign(unknown)", err, "nope")
	if called {
		t.Error("fn called for an unknown campaign")
	}
	if _, err := s.GetCampaign(ctx(t), "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UpdateCampaign(unknown) created it: %v", err)
	}

	// fn may not move the campaign to another id.
	if _, err := s.UpdateCampaign(ctx(t), "c1", func(c *store.Campaign) error { c.ID = "c2"; return nil }); err == nil {
		t.Error("UpdateCampaign accepted a changed id")
	}
	if _, err := s.GetCampaign(ctx(t), "c2"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the changed id was stored: %v", err)
	}
	if got, _ := s.GetCampaign(ctx(t), "c1"); !reflect.DeepEqual(got, paused) {
		t.Errorf("the refused id change changed the campaign: %+v", got)
	}
}

// Concurrent updates are serialised: none is lost.
func testCampaignUpdateConcurrent(t *testing.T, s store.Store) {
	must(t, s.CreateCampaign(ctx(t), NewCampaign(t, "c1", Base)))
	const n = 20
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			if _, err := s.UpdateCampaign(ctx(t), "c1", func(c *store.Campaign) error { c.AuditSeq++; return nil }); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	got, err := s.GetCampaign(ctx(t), "c1")
	must(t, err)
	if want := NewCampaign(t, "c1", Base).AuditSeq + n; got.AuditSeq != want {
		t.Errorf("AuditSeq = %d after %d concurrent increments, want %d", got.AuditSeq, n, want)
	}
}

func testCampaignDelete(t *testing.T, s store.Store) {
	must(t, s.CreateCampaign(ctx(t), NewCampaign(t, "c1", Base)))
	must(t, s.CreateCampaign(ctx(t), NewCampaign(t, "c2", Base)))
	must(t, s.DeleteCampaign(ctx(t), "c1"))
	_, err := s.GetCampaign(ctx(t), "c1")
	notFound(t, "GetCampaign(deleted)", err, "c1")
	notFound(t, "DeleteCampaign(deleted)", s.DeleteCampaign(ctx(t), "c1"), "c1")
	list, err := s.ListCampaigns(ctx(t))
	must(t, err)
	if len(list) != 1 || list[0].ID != "c2" {
		t.Errorf("ListCampaigns after delete = %v, want c2 alone", list)
	}
	// The id may be used again.
	must(t, s.CreateCampaign(ctx(t), NewCampaign(t, "c1", Base)))
}

func testCampaignCopies(t *testing.T, s store.Store) {
	c := NewCampaign(t, "c1", Base)
	must(t, s.CreateCampaign(ctx(t), c))
	c.Spec.Selector["pool"] = "changed"
	c.Nodes[0].Step = maintenance.StepFailed
	got, err := s.GetCampaign(ctx(t), "c1")
	must(t, err)
	if got.Spec.Selector["pool"] != "gpu" || got.Nodes[0].Step == maintenance.StepFailed {
		t.Errorf("changing the created campaign changed the store: %+v", got)
	}
	got.Spec.Selector["pool"] = "changed"
	got.Nodes[0].Step = maintenance.StepFailed
	got.Outbox[0].What = "changed"
	if again, _ := s.GetCampaign(ctx(t), "c1"); again.Spec.Selector["pool"] != "gpu" || again.Nodes[0].Step == maintenance.StepFailed || again.Outbox[0].What == "changed" {
		t.Errorf("changing a returned campaign changed the store: %+v", again)
	}
	list, err := s.ListCampaigns(ctx(t))
	must(t, err)
	list[0].Nodes[0].Step = maintenance.StepFailed
	if again, _ := s.GetCampaign(ctx(t), "c1"); again.Nodes[0].Step == maintenance.StepFailed {
		t.Error("changing a listed campaign changed the store")
	}
	var kept *store.Campaign
	_, err = s.UpdateCampaign(ctx(t), "c1", func(c *store.Campaign) error { kept = c; c.Name = "renamed"; return nil })
	must(t, err)
	kept.Name = "after"
	if again, _ := s.GetCampaign(ctx(t), "c1"); again.Name != "renamed" {
		t.Errorf("changing fn's argument after the update changed the store: name %q", again.Name)
	}
}

func testCampaignCanceled(t *testing.T, s store.Store) {
	c := NewCampaign(t, "c1", Base)
	must(t, s.CreateCampaign(ctx(t), c))
	done, cancel := context.WithCancel(ctx(t))
	cancel()
	called := false
	for name, call := range map[string]func() error{
		"CreateCampaign": func() error { return s.CreateCampaign(done, NewCampaign(t, "c2", Base)) },
		"GetCampaign":    func() error { _, err := s.GetCampaign(done, "c1"); return err },
		"ListCampaigns":  func() error { _, err := s.ListCampaigns(done); return err },
		"UpdateCampaign": func() error {
			_, err := s.UpdateCampaign(done, "c1", func(c *store.Campaign) error { called = true; c.Name = "x"; return nil })
			return err
		},
		"DeleteCampaign": func() error { return s.DeleteCampaign(done, "c1") },
	} {
		if err := call(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a canceled context = %v, want context.Canceled", name, err)
		}
	}
	if called {
		t.Error("an update func ran under a canceled context")
	}
	list, err := s.ListCampaigns(ctx(t))
	must(t, err)
	if len(list) != 1 || !reflect.DeepEqual(list[0], c) {
		t.Errorf("calls with a canceled context changed the campaigns: %+v", list)
	}
}
