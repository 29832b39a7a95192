package storetest

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/controller/store"
)

// machineTests are the MachineStore's part of the suite (Run calls them).
var machineTests = []struct {
	name string
	fn   func(t *testing.T, s store.Store)
}{
	{"MachinesCreateGetList", testMachinesCreateGetList},
	{"MachineUpdate", testMachineUpdate},
	{"MachineUpdateConcurrent", testMachineUpdateConcurrent},
	{"MachineDelete", testMachineDelete},
	{"MachineValuesAreCopies", testMachineCopies},
	{"MachineCanceledContext", testMachineCanceled},
}

// NewMachine is a machine with every field set.
func NewMachine(id string, created time.Time) store.Machine {
	return store.Machine{
		ID:         id,
		Provider:   "vsphere",
		ProviderID: "vm-" + id,
		Name:       "worker-" + id,
		Spec:       []byte(`{"cpus":8,"memory_mb":32768}`),
		State:      store.MachineCreated,
		Error:      "a note",
		Addresses:  []string{"10.0.1.20", "fd00::20"},
		Power:      "on",
		Labels:     map[string]string{"budfleet.io/group.gpu_nodes": "true", "gpu_type": "nvidia-a100"},
		TokenID:    "0123456789ab",
		NodeID:     "node-" + id,
		CreatedAt:  created,
		UpdatedAt:  created.Add(time.Minute),
		CreatedBy:  "alice",
	}
}

func testMachinesCreateGetList(t *testing.T, s store.Store) {
	if list, err := s.ListMachines(ctx(t)); err != nil || len(list) != 0 {
		t.Fatalf("ListMachines on an empty store = %v, %v", list, err)
	}
	// Created in neither id nor CreatedAt order; aaa and ccc share a
	// CreatedAt, so the id breaks the tie.
	ms := []store.Machine{
		NewMachine("bbb", Base.Add(2*time.Minute)),
		NewMachine("ccc", Base),
		NewMachine("ddd", Base.Add(time.Minute)),
		NewMachine("aaa", Base),
	}
	// A machine the provider has not answered for yet: only what the
	// controller knows.
	ms[2] = store.Machine{ID: "ddd", Provider: "metal", Name: "gpu-01", State: store.MachineCreating, TokenID: "ba9876543210", CreatedAt: Base.Add(time.Minute), UpdatedAt: Base.Add(time.Minute)}
	for _, m := range ms {
		must(t, s.CreateMachine(ctx(t), m))
	}
	dup := NewMachine("bbb", Base)
	dup.Name = "other"
	if err := s.CreateMachine(ctx(t), dup); !errors.Is(err, store.ErrAlreadyExists) || !strings.Contains(err.Error(), "bbb") {
		t.Errorf("duplicate CreateMachine = %v, want ErrAlreadyExists naming the id", err)
	}
	for _, want := range ms {
		got, err := s.GetMachine(ctx(t), want.ID)
		must(t, err)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("GetMachine(%s) =\n%+v\nwant\n%+v", want.ID, got, want)
		}
	}
	if got, _ := s.GetMachine(ctx(t), "bbb"); got.Name != "worker-bbb" {
		t.Errorf("the duplicate create overwrote the machine: name %q", got.Name)
	}
	_, err := s.GetMachine(ctx(t), "nope")
	notFound(t, "GetMachine(unknown)", err, "nope")

	list, err := s.ListMachines(ctx(t))
	must(t, err)
	var ids []string
	for _, m := range list {
		ids = append(ids, m.ID)
	}
	if want := []string{"aaa", "ccc", "ddd", "bbb"}; !reflect.DeepEqual(ids, want) {
		t.Errorf("ListMachines order = %v, want %v (oldest first, then by id)", ids, want)
	}
}

func testMachineUpdate(t *testing.T, s store.Store) {
	m := NewMachine("m1", Base)
	m.State, m.NodeID = store.MachineCreated, ""
	must(t, s.CreateMachine(ctx(t), m))

	linked, err := s.UpdateMachine(ctx(t), "m1", func(m *store.Machine) error {
		m.State, m.NodeID = store.MachineEnrolled, "n1"
		return nil
	})
	must(t, err)
	if linked.State != store.MachineEnrolled || linked.NodeID != "n1" {
		t.Errorf("UpdateMachine returned %+v", linked)
	}
	if got, _ := s.GetMachine(ctx(t), "m1"); !reflect.DeepEqual(got, linked) {
		t.Errorf("stored machine %+v, want the returned %+v", got, linked)
	}

	// An error from fn is returned as it is and changes nothing, whatever
	// fn did to its argument.
	bad := errors.New("refused")
	_, err = s.UpdateMachine(ctx(t), "m1", func(m *store.Machine) error {
		m.State, m.Labels["x"] = store.MachineDeleting, "y"
		return bad
	})
	if !errors.Is(err, bad) {
		t.Errorf("UpdateMachine with a failing fn = %v, want its error", err)
	}
	if got, _ := s.GetMachine(ctx(t), "m1"); !reflect.DeepEqual(got, linked) {
		t.Errorf("a failed update changed the machine: %+v", got)
	}

	called := false
	_, err = s.UpdateMachine(ctx(t), "nope", func(*store.Machine) error { called = true; return nil })
	notFound(t, "UpdateMachine(unknown)", err, "nope")
	if called {
		t.Error("fn called for an unknown machine")
	}
	if _, err := s.GetMachine(ctx(t), "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UpdateMachine(unknown) created it: %v", err)
	}
	if _, err := s.UpdateMachine(ctx(t), "m1", func(m *store.Machine) error { m.ID = "m2"; return nil }); err == nil {
		t.Error("UpdateMachine accepted a changed id")
	}
	if _, err := s.GetMachine(ctx(t), "m2"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the changed id was stored: %v", err)
	}
}

// Concurrent updates are serialised: none is lost.
func testMachineUpdateConcurrent(t *testing.T, s store.Store) {
	m := NewMachine("m1", Base)
	m.Addresses = nil
	must(t, s.CreateMachine(ctx(t), m))
	const n = 20
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			if _, err := s.UpdateMachine(ctx(t), "m1", func(m *store.Machine) error {
				m.Addresses = append(m.Addresses, "x")
				return nil
			}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	got, err := s.GetMachine(ctx(t), "m1")
	must(t, err)
	if len(got.Addresses) != n {
		t.Errorf("%d addresses after %d concurrent appends", len(got.Addresses), n)
	}
}

func testMachineDelete(t *testing.T, s store.Store) {
	must(t, s.CreateMachine(ctx(t), NewMachine("m1", Base)))
	must(t, s.CreateMachine(ctx(t), NewMachine("m2", Base)))
	must(t, s.DeleteMachine(ctx(t), "m1"))
	_, err := s.GetMachine(ctx(t), "m1")
	notFound(t, "GetMachine(deleted)", err, "m1")
	notFound(t, "DeleteMachine(deleted)", s.DeleteMachine(ctx(t), "m1"), "m1")
	list, err := s.ListMachines(ctx(t))
	must(t, err)
	if len(list) != 1 || list[0].ID != "m2" {
		t.Errorf("ListMachines after delete = %v, want m2 alone", list)
	}
	// The id may be used again.
	must(t, s.CreateMachine(ctx(t), NewMachine("m1", Base)))
}

func testMachineCopies(t *testing.T, s store.Store) {
	m := NewMachine("m1", Base)
	must(t, s.CreateMachine(ctx(t), m))
	m.Labels["gpu_type"], m.Addresses[0], m.Spec[0] = "changed", "changed", 'X'
	got, err := s.GetMachine(ctx(t), "m1")
	must(t, err)
	if !reflect.DeepEqual(got, NewMachine("m1", Base)) {
		t.Errorf("changing the created machine changed the store: %+v", got)
	}
	got.Labels["gpu_type"], got.Addresses[0], got.Spec[0] = "changed", "changed", 'X'
	if again, _ := s.GetMachine(ctx(t), "m1"); !reflect.DeepEqual(again, NewMachine("m1", Base)) {
		t.Errorf("changing a returned machine changed the store: %+v", again)
	}
	list, err := s.ListMachines(ctx(t))
	must(t, err)
	list[0].Labels["gpu_type"] = "changed"
	if again, _ := s.GetMachine(ctx(t), "m1"); again.Labels["gpu_type"] != "nvidia-a100" {
		t.Error("changing a listed machine changed the store")
	}
	var kept *store.Machine
	_, err = s.UpdateMachine(ctx(t), "m1", func(m *store.Machine) error { kept = m; m.Name = "renamed"; return nil })
	must(t, err)
	kept.Name = "after"
	if again, _ := s.GetMachine(ctx(t), "m1"); again.Name != "renamed" {
		t.Errorf("changing fn's argument after the update changed the store: name %q", again.Name)
	}
}

func testMachineCanceled(t *testing.T, s store.Store) {
	m := NewMachine("m1", Base)
	must(t, s.CreateMachine(ctx(t), m))
	done, cancel := context.WithCancel(ctx(t))
	cancel()
	called := false
	for name, call := range map[string]func() error{
		"CreateMachine": func() error { return s.CreateMachine(done, NewMachine("m2", Base)) },
		"GetMachine":    func() error { _, err := s.GetMachine(done, "m1"); return err },
		"ListMachines":  func() error { _, err := s.ListMachines(done); return err },
		"UpdateMachine": func() error {
			_, err := s.UpdateMachine(done, "m1", func(m *store.Machine) error { called = true; m.Name = "x"; return nil })
			return err
		},
		"DeleteMachine": func() error { return s.DeleteMachine(done, "m1") },
	} {
		if err := call(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a canceled context = %v, want context.Canceled", name, err)
		}
	}
	if called {
		t.Error("an update func ran under a canceled context")
	}
	list, err := s.ListMachines(ctx(t))
	must(t, err)
	if len(list) != 1 || !reflect.DeepEqual(list[0], m) {
		t.Errorf("calls with a canceled context changed the machines: %+v", list)
	}
}
