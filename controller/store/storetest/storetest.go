// Package storetest is the conformance suite of store.Store, in the spirit
// of Vault's physical.ExerciseBackend: every backend's tests call
//
//	storetest.Run(t, func(t *testing.T) store.Store { ... })
//
// and the suite, not a backend, defines what a store does. newStore must
// return a fresh, empty store each time and close it at t's cleanup.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/bud-ecosystem/budfleet/controller/store"
	hostv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/host/v1"
)

// Base is a fixed UTC instant with no monotonic reading, so values survive
// any backend's encoding unchanged and compare with reflect.DeepEqual.
var Base = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// Run runs every conformance test against stores made by newStore.
func Run(t *testing.T, newStore func(t *testing.T) store.Store) {
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"Tokens", testTokens},
		{"RevokeToken", testRevokeToken},
		{"Enroll", testEnroll},
		{"EnrollConcurrentUses", testEnrollConcurrentUses},
		{"Nodes", testNodes},
		{"NodeInventory", testNodeInventory},
		{"UpdateNodeConcurrent", testUpdateNodeConcurrent},
		{"Commands", testCommands},
		{"CommandOrderManyEntries", testCommandOrderManyEntries},
		{"CommandRedelivery", testCommandRedelivery},
		{"UpdateCommandConcurrent", testUpdateCommandConcurrent},
		{"DeleteNodeRemovesCommands", testDeleteNodeRemovesCommands},
		{"CommandOutputTail", testCommandOutputTail},
		{"NodeBootID", testNodeBootID},
		{"ListGetConsistency", testListGetConsistency},
		{"SIEMConfigs", testSIEMConfigs},
		{"ValuesAreCopies", testValuesAreCopies},
		{"CanceledContext", testCanceledContext},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore(t)) })
	}
	for _, tc := range clusterTests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore(t)) })
	}
	for _, tc := range artifactTests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore(t)) })
	}
	t.Run("Campaigns", func(t *testing.T) { testCampaigns(t, newStore) })
	for _, tc := range batchTests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore(t)) })
	}
	for _, tc := range machineTests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore(t)) })
	}
}

func ctx(t *testing.T) context.Context { return t.Context() }

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// notFound checks that err is store.ErrNotFound and names id.
func notFound(t *testing.T, what string, err error, id string) {
	t.Helper()
	if !errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), id) {
		t.Errorf("%s = %v, want ErrNotFound naming %q", what, err, id)
	}
}

// NewNode is a node with every plain field set.
func NewNode(id, host string) store.Node {
	return store.Node{
		ID:            id,
		Hostname:      host,
		MachineID:     "mid-" + id,
		Labels:        map[string]string{"id": id},
		EnrolledAt:    Base,
		CertSerial:    "serial-" + id,
		CertExpiresAt: Base.Add(24 * time.Hour),
	}
}

// EnrollNode enrolls n with a fresh unlimited token "tok-<id>".
func EnrollNode(t *testing.T, s store.Store, n store.Node) {
	t.Helper()
	tid := "tok-" + n.ID
	if err := s.CreateToken(ctx(t), store.Token{ID: tid, CreatedAt: Base, ExpiresAt: Base.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	n.TokenID = tid
	if _, err := s.Enroll(ctx(t), tid, func(store.Token) error { return nil }, n); err != nil {
		t.Fatalf("Enroll(%s): %v", n.ID, err)
	}
}

// Cmd is a command for node in state.
func Cmd(id, node string, state store.CommandState) store.Command {
	return store.Command{ID: id, NodeID: node, Kind: "exec", State: state, CreatedAt: Base, Params: map[string]string{"id": id}}
}

// CommandIDs lists the ids of cs, never nil.
func CommandIDs(cs []store.Command) []string {
	ids := []string{}
	for _, c := range cs {
		ids = append(ids, c.ID)
	}
	return ids
}

// NodesEqual compares nodes field by field, the inventory as a message.
func NodesEqual(a, b store.Node) bool {
	ai, bi := a.Inventory, b.Inventory
	a.Inventory, b.Inventory = nil, nil
	return reflect.DeepEqual(a, b) && proto.Equal(ai, bi)
}

func usable(now time.Time) func(store.Token) error {
	return func(t store.Token) error { return t.Usable(now) }
}

func testTokens(t *testing.T, s store.Store) {
	if list, err := s.ListTokens(ctx(t)); err != nil || len(list) != 0 {
		t.Fatalf("ListTokens on empty store = %v, %v", list, err)
	}

	// Created in an order that is neither id order nor CreatedAt order;
	// ddd and aaa share a CreatedAt, so the id breaks the tie.
	toks := []store.Token{
		{ID: "bbb", SecretHash: "h2", CreatedAt: Base.Add(2 * time.Minute), ExpiresAt: Base.Add(time.Hour), MaxUses: 1},
		{ID: "ccc", SecretHash: "h3", CreatedAt: Base, ExpiresAt: Base.Add(time.Hour), Labels: map[string]string{"zone": "a"}, Description: "first"},
		{ID: "ddd", SecretHash: "h4", CreatedAt: Base.Add(time.Minute), ExpiresAt: Base.Add(time.Hour), RevokedAt: Base.Add(time.Second)},
		{ID: "aaa", SecretHash: "h1", CreatedAt: Base.Add(time.Minute), ExpiresAt: Base.Add(2 * time.Hour), Uses: 4},
	}
	for _, tok := range toks {
		if err := s.CreateToken(ctx(t), tok); err != nil {
			t.Fatalf("CreateToken(%s): %v", tok.ID, err)
		}
	}

	dup := toks[0]
	dup.SecretHash = "other"
	if err := s.CreateToken(ctx(t), dup); !errors.Is(err, store.ErrAlreadyExists) || !strings.Contains(err.Error(), "bbb") {
		t.Errorf("duplicate CreateToken = %v, want ErrAlreadyExists naming the id", err)
	}
	if got, err := s.GetToken(ctx(t), "bbb"); err != nil || got.SecretHash != "h2" {
		t.Errorf("duplicate create overwrote the token: %+v, %v", got, err)
	}

	for _, want := range toks {
		got, err := s.GetToken(ctx(t), want.ID)
		if err != nil {
			t.Fatalf("GetToken(%s): %v", want.ID, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("GetToken(%s) = %+v, want %+v", want.ID, got, want)
		}
	}
	_, err := s.GetToken(ctx(t), "nope")
	notFound(t, "GetToken(unknown)", err, "nope")

	list, err := s.ListTokens(ctx(t))
	must(t, err)
	var ids []string
	for _, tok := range list {
		ids = append(ids, tok.ID)
	}
	if want := []string{"ccc", "aaa", "ddd", "bbb"}; !reflect.DeepEqual(ids, want) {
		t.Errorf("ListTokens order = %v, want %v (oldest first, then by id)", ids, want)
	}
}

func testRevokeToken(t *testing.T, s store.Store) {
	tok := store.Token{ID: "t1", CreatedAt: Base, ExpiresAt: Base.Add(time.Hour)}
	must(t, s.CreateToken(ctx(t), tok))
	first := Base.Add(time.Minute)
	got, err := s.RevokeToken(ctx(t), "t1", first)
	must(t, err)
	if !got.Revoked() || !got.RevokedAt.Equal(first) {
		t.Errorf("RevokeToken = %+v, want RevokedAt %v", got, first)
	}
	got, err = s.RevokeToken(ctx(t), "t1", first.Add(time.Hour))
	must(t, err)
	if !got.RevokedAt.Equal(first) {
		t.Errorf("second RevokeToken returned RevokedAt %v, want first %v", got.RevokedAt, first)
	}
	stored, err := s.GetToken(ctx(t), "t1")
	must(t, err)
	if !stored.RevokedAt.Equal(first) {
		t.Errorf("stored RevokedAt = %v, want %v", stored.RevokedAt, first)
	}
	want := tok
	want.RevokedAt = first
	if !reflect.DeepEqual(stored, want) {
		t.Errorf("revoking changed more than RevokedAt: %+v, want %+v", stored, want)
	}
	if err := stored.Usable(Base); !errors.Is(err, store.ErrTokenInvalid) {
		t.Errorf("revoked token Usable = %v", err)
	}
	_, err = s.RevokeToken(ctx(t), "nope", first)
	notFound(t, "RevokeToken(unknown)", err, "nope")
	if _, err := s.GetToken(ctx(t), "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RevokeToken(unknown) created a token: %v", err)
	}
}

func testEnroll(t *testing.T, s store.Store) {
	tok := store.Token{ID: "tok", SecretHash: "hash", CreatedAt: Base, ExpiresAt: Base.Add(time.Hour), MaxUses: 2}
	must(t, s.CreateToken(ctx(t), tok))
	n1 := NewNode("n1", "host1")
	n1.TokenID = "tok"

	assertUses := func(t *testing.T, id string, want uint32) {
		t.Helper()
		got, err := s.GetToken(ctx(t), id)
		must(t, err)
		if got.Uses != want {
			t.Errorf("token %s Uses = %d, want %d", id, got.Uses, want)
		}
	}
	assertAbsent := func(t *testing.T, id string) {
		t.Helper()
		if _, err := s.GetNode(ctx(t), id); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("GetNode(%s) = %v, want ErrNotFound", id, err)
		}
	}

	t.Run("failed check changes nothing", func(t *testing.T) {
		bad := errors.New("secret mismatch")
		var seen store.Token
		_, err := s.Enroll(ctx(t), "tok", func(t store.Token) error { seen = t; return bad }, n1)
		if !errors.Is(err, bad) {
			t.Fatalf("Enroll = %v, want the check's error", err)
		}
		if !reflect.DeepEqual(seen, tok) {
			t.Errorf("check saw %+v, want the stored token %+v", seen, tok)
		}
		assertUses(t, "tok", 0)
		assertAbsent(t, "n1")
	})

	t.Run("unknown token", func(t *testing.T) {
		called := false
		_, err := s.Enroll(ctx(t), "missing", func(store.Token) error { called = true; return nil }, n1)
		if !errors.Is(err, store.ErrTokenInvalid) {
			t.Errorf("Enroll(unknown) = %v, want ErrTokenInvalid", err)
		}
		// Worded like a wrong secret so that token ids cannot be probed.
		if err != nil && strings.Contains(err.Error(), "missing") {
			t.Errorf("Enroll(unknown) = %q reveals that the token id does not exist", err)
		}
		if called {
			t.Error("check called for an unknown token")
		}
		assertAbsent(t, "n1")
		if _, err := s.GetToken(ctx(t), "missing"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Enroll(unknown) created the token: %v", err)
		}
	})

	t.Run("success", func(t *testing.T) {
		got, err := s.Enroll(ctx(t), "tok", usable(Base), n1)
		if err != nil {
			t.Fatalf("Enroll: %v", err)
		}
		if got.Uses != 1 || got.ID != "tok" {
			t.Errorf("Enroll returned %+v, want tok with 1 use", got)
		}
		assertUses(t, "tok", 1)
		n, err := s.GetNode(ctx(t), "n1")
		must(t, err)
		// A token without labels leaves the node's own.
		if !NodesEqual(n, n1) {
			t.Errorf("stored node = %+v, want %+v", n, n1)
		}
	})

	t.Run("duplicate node id rolls back the token use", func(t *testing.T) {
		dup := NewNode("n1", "impostor")
		_, err := s.Enroll(ctx(t), "tok", usable(Base), dup)
		if !errors.Is(err, store.ErrAlreadyExists) || !strings.Contains(err.Error(), "n1") {
			t.Fatalf("Enroll(duplicate node) = %v, want ErrAlreadyExists naming the node", err)
		}
		assertUses(t, "tok", 1)
		n, err := s.GetNode(ctx(t), "n1")
		if err != nil || n.Hostname != "host1" {
			t.Errorf("existing node changed: %+v, %v", n, err)
		}
	})

	t.Run("max uses across enrolls", func(t *testing.T) {
		if _, err := s.Enroll(ctx(t), "tok", usable(Base), NewNode("n2", "host2")); err != nil {
			t.Fatalf("second use: %v", err)
		}
		assertUses(t, "tok", 2)
		_, err := s.Enroll(ctx(t), "tok", usable(Base), NewNode("n3", "host3"))
		if !errors.Is(err, store.ErrTokenInvalid) || !strings.Contains(err.Error(), "used up") {
			t.Errorf("third use = %v, want ErrTokenInvalid (used up)", err)
		}
		assertUses(t, "tok", 2)
		assertAbsent(t, "n3")
	})

	t.Run("expired token", func(t *testing.T) {
		must(t, s.CreateToken(ctx(t), store.Token{ID: "old", CreatedAt: Base, ExpiresAt: Base}))
		if _, err := s.Enroll(ctx(t), "old", usable(Base), NewNode("n4", "host4")); !errors.Is(err, store.ErrTokenInvalid) || !strings.Contains(err.Error(), "expired") {
			t.Errorf("Enroll(expired) = %v, want ErrTokenInvalid (expired)", err)
		}
		assertUses(t, "old", 0)
		assertAbsent(t, "n4")
	})

	t.Run("revoked token", func(t *testing.T) {
		must(t, s.CreateToken(ctx(t), store.Token{ID: "rev", CreatedAt: Base, ExpiresAt: Base.Add(time.Hour)}))
		if _, err := s.RevokeToken(ctx(t), "rev", Base); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Enroll(ctx(t), "rev", usable(Base), NewNode("n5", "host5")); !errors.Is(err, store.ErrTokenInvalid) || !strings.Contains(err.Error(), "revoked") {
			t.Errorf("Enroll(revoked) = %v, want ErrTokenInvalid (revoked)", err)
		}
		assertUses(t, "rev", 0)
		assertAbsent(t, "n5")
	})

	t.Run("token labels go to the node", func(t *testing.T) {
		labels := map[string]string{"rack": "r1", "role": "gpu"}
		must(t, s.CreateToken(ctx(t), store.Token{ID: "lab", CreatedAt: Base, ExpiresAt: Base.Add(time.Hour), Labels: labels}))
		n := NewNode("n6", "host6")
		n.TokenID = "lab"
		got, err := s.Enroll(ctx(t), "lab", usable(Base), n)
		must(t, err)
		if !reflect.DeepEqual(got.Labels, labels) {
			t.Errorf("Enroll returned token labels %v", got.Labels)
		}
		stored, err := s.GetNode(ctx(t), "n6")
		must(t, err)
		if !reflect.DeepEqual(stored.Labels, labels) {
			t.Errorf("node labels = %v, want the token's %v", stored.Labels, labels)
		}
	})
}

// N enrollments race for a token with M uses: exactly M win.
func testEnrollConcurrentUses(t *testing.T, s store.Store) {
	const n, m = 24, 7
	must(t, s.CreateToken(ctx(t), store.Token{ID: "tok", CreatedAt: Base, ExpiresAt: Base.Add(time.Hour), MaxUses: m}))
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			node := NewNode(fmt.Sprintf("n%02d", i), fmt.Sprintf("h%02d", i))
			node.TokenID = "tok"
			_, errs[i] = s.Enroll(ctx(t), "tok", usable(Base), node)
		}()
	}
	wg.Wait()
	won := 0
	for i, err := range errs {
		switch {
		case err == nil:
			won++
		case errors.Is(err, store.ErrTokenInvalid):
		default:
			t.Errorf("enrollment %d: %v, want nil or ErrTokenInvalid", i, err)
		}
	}
	if won != m {
		t.Errorf("%d enrollments succeeded, want exactly %d", won, m)
	}
	tok, err := s.GetToken(ctx(t), "tok")
	must(t, err)
	if tok.Uses != m {
		t.Errorf("token Uses = %d, want %d", tok.Uses, m)
	}
	nodes, err := s.ListNodes(ctx(t))
	must(t, err)
	if len(nodes) != m {
		t.Errorf("%d nodes stored, want %d", len(nodes), m)
	}
	for i, err := range errs {
		_, gerr := s.GetNode(ctx(t), fmt.Sprintf("n%02d", i))
		if (err == nil) != (gerr == nil) {
			t.Errorf("enrollment %d returned %v but GetNode says %v", i, err, gerr)
		}
	}
}

func testNodes(t *testing.T, s store.Store) {
	if list, err := s.ListNodes(ctx(t)); err != nil || len(list) != 0 {
		t.Fatalf("ListNodes on empty store = %v, %v", list, err)
	}
	// Ids sort differently from hostnames.
	for _, n := range []store.Node{NewNode("z1", "alpha"), NewNode("a1", "beta"), NewNode("m1", "alpha"), NewNode("b2", "Alpha")} {
		EnrollNode(t, s, n)
	}
	list, err := s.ListNodes(ctx(t))
	must(t, err)
	var got []string
	for _, n := range list {
		got = append(got, n.Hostname+"/"+n.ID)
	}
	if want := []string{"Alpha/b2", "alpha/m1", "alpha/z1", "beta/a1"}; !reflect.DeepEqual(got, want) {
		t.Errorf("ListNodes = %v, want %v (by hostname, then id)", got, want)
	}

	n, err := s.GetNode(ctx(t), "m1")
	if err != nil || n.Hostname != "alpha" || n.TokenID != "tok-m1" {
		t.Errorf("GetNode(m1) = %+v, %v", n, err)
	}
	_, err = s.GetNode(ctx(t), "nope")
	notFound(t, "GetNode(unknown)", err, "nope")

	hb := Base.Add(time.Minute)
	inv := &hostv1.Inventory{Hostname: "alpha", CpuCores: 8, IpAddresses: []string{"10.0.0.1"}}
	upd, err := s.UpdateNode(ctx(t), "m1", func(n *store.Node) error {
		n.LastHeartbeat = hb
		n.Inventory = inv
		return nil
	})
	must(t, err)
	if !upd.LastHeartbeat.Equal(hb) || !proto.Equal(upd.Inventory, inv) {
		t.Errorf("UpdateNode returned %+v", upd)
	}
	stored, _ := s.GetNode(ctx(t), "m1")
	if !NodesEqual(stored, upd) {
		t.Errorf("stored node %+v != returned %+v", stored, upd)
	}

	bad := errors.New("nope")
	if _, err := s.UpdateNode(ctx(t), "m1", func(n *store.Node) error { n.Hostname = "changed"; n.Labels["x"] = "y"; return bad }); !errors.Is(err, bad) {
		t.Errorf("UpdateNode with failing fn = %v, want fn's error", err)
	}
	if again, _ := s.GetNode(ctx(t), "m1"); !NodesEqual(again, stored) {
		t.Errorf("failed UpdateNode was saved: %+v", again)
	}
	called := false
	_, err = s.UpdateNode(ctx(t), "nope", func(*store.Node) error { called = true; return nil })
	notFound(t, "UpdateNode(unknown)", err, "nope")
	if called {
		t.Error("UpdateNode called fn for an unknown node")
	}
	if _, err := s.GetNode(ctx(t), "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Error("UpdateNode(unknown) created a node")
	}

	// A node without a command queue can be deleted.
	if err := s.DeleteNode(ctx(t), "a1"); err != nil {
		t.Fatalf("DeleteNode(a1): %v", err)
	}
	if _, err := s.GetNode(ctx(t), "a1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetNode after delete = %v", err)
	}
	notFound(t, "second DeleteNode", s.DeleteNode(ctx(t), "a1"), "a1")
	if list, _ := s.ListNodes(ctx(t)); len(list) != 3 {
		t.Errorf("ListNodes after delete has %d nodes, want 3", len(list))
	}
}

// Every inventory field survives the store, and an update that does not
// touch the inventory keeps it.
func testNodeInventory(t *testing.T, s store.Store) {
	EnrollNode(t, s, NewNode("n1", "h1"))
	inv := &hostv1.Inventory{Hostname: "h1", MachineId: "m", Os: "Debian 12", Kernel: "6.1", Architecture: "amd64", CpuModel: "Xeon", CpuCores: 8,
		MemoryBytes: 16 << 30, IpAddresses: []string{"10.0.0.1", "2001:db8::1"}, AgentVersion: "v0.1.0"}
	at := Base.Add(time.Minute)
	_, err := s.UpdateNode(ctx(t), "n1", func(n *store.Node) error {
		n.Inventory, n.InventoryUpdateAt, n.GPUs = inv, at, []byte{1, 2, 3}
		return nil
	})
	must(t, err)
	_, err = s.UpdateNode(ctx(t), "n1", func(n *store.Node) error {
		if !proto.Equal(n.Inventory, inv) {
			return fmt.Errorf("fn saw inventory %v, want %v", n.Inventory, inv)
		}
		n.LastHeartbeat = at
		return nil
	})
	must(t, err)
	n, err := s.GetNode(ctx(t), "n1")
	must(t, err)
	if !proto.Equal(n.Inventory, inv) || !n.InventoryUpdateAt.Equal(at) || !reflect.DeepEqual(n.GPUs, []byte{1, 2, 3}) || !n.LastHeartbeat.Equal(at) {
		t.Errorf("node = %+v, want the inventory, GPUs and heartbeat kept", n)
	}
	// Clearing it works too.
	_, err = s.UpdateNode(ctx(t), "n1", func(n *store.Node) error { n.Inventory = nil; return nil })
	must(t, err)
	if n, _ := s.GetNode(ctx(t), "n1"); n.Inventory != nil {
		t.Errorf("cleared inventory came back: %v", n.Inventory)
	}
}

// A node's boot id is kept and replaced like its other fields.
func testNodeBootID(t *testing.T, s store.Store) {
	EnrollNode(t, s, NewNode("n1", "h1"))
	if n, _ := s.GetNode(ctx(t), "n1"); n.BootID != "" {
		t.Errorf("a new node has boot id %q", n.BootID)
	}
	for _, id := range []string{"8d3e1c9a-5f0b-4a61-9c2e-6b7d0f4e2a11", "0f0e0d0c-0b0a-4909-8807-060504030201"} {
		upd, err := s.UpdateNode(ctx(t), "n1", func(n *store.Node) error { n.BootID = id; return nil })
		must(t, err)
		got, err := s.GetNode(ctx(t), "n1")
		must(t, err)
		if upd.BootID != id || got.BootID != id || !NodesEqual(got, upd) {
			t.Errorf("boot id after setting %s: returned %q, stored %q", id, upd.BootID, got.BootID)
		}
	}
	ns, err := s.ListNodes(ctx(t))
	must(t, err)
	if len(ns) != 1 || ns[0].BootID != "0f0e0d0c-0b0a-4909-8807-060504030201" {
		t.Errorf("ListNodes = %+v", ns)
	}
}

// Concurrent read-modify-write updates of one node lose nothing.
func testUpdateNodeConcurrent(t *testing.T, s store.Store) {
	EnrollNode(t, s, NewNode("n1", "h1"))
	const workers, each = 8, 10
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				if _, err := s.UpdateNode(ctx(t), "n1", func(n *store.Node) error {
					c, _ := strconv.Atoi(n.Labels["count"])
					n.Labels["count"] = strconv.Itoa(c + 1)
					return nil
				}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	n, err := s.GetNode(ctx(t), "n1")
	must(t, err)
	if got, want := n.Labels["count"], strconv.Itoa(workers*each); got != want {
		t.Errorf("count = %s after %d concurrent updates", got, workers*each)
	}
}

func testCommands(t *testing.T, s store.Store) {
	EnrollNode(t, s, NewNode("n-b", "hb"))
	EnrollNode(t, s, NewNode("n-a", "ha"))

	err := s.EnqueueCommand(ctx(t), Cmd("x", "ghost", store.CommandPending))
	notFound(t, "EnqueueCommand(unknown node)", err, "ghost")
	if _, err := s.GetCommand(ctx(t), "x"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("rejected command was stored: %v", err)
	}
	if cs, err := s.ListCommands(ctx(t), "ghost"); err != nil || len(cs) != 0 {
		t.Errorf("ListCommands(unknown) = %v, %v", cs, err)
	}
	if cs, err := s.PendingCommands(ctx(t), "ghost"); err != nil || len(cs) != 0 {
		t.Errorf("PendingCommands(unknown) = %v, %v", cs, err)
	}
	if cs, err := s.PendingCommands(ctx(t), "n-a"); err != nil || len(cs) != 0 {
		t.Errorf("PendingCommands(empty) = %v, %v", cs, err)
	}
	if cs, err := s.ListCommands(ctx(t), ""); err != nil || len(cs) != 0 {
		t.Errorf("ListCommands(all) on no commands = %v, %v", cs, err)
	}

	// Ids deliberately not in sorted order.
	queueB := []store.Command{
		Cmd("b3", "n-b", store.CommandPending),
		Cmd("b1", "n-b", store.CommandSucceeded),
		Cmd("b2", "n-b", store.CommandDelivered),
		Cmd("b0", "n-b", store.CommandFailed),
		Cmd("b9", "n-b", store.CommandPending),
	}
	queueA := []store.Command{Cmd("a2", "n-a", store.CommandPending), Cmd("a1", "n-a", store.CommandPending)}
	// Interleave the two queues.
	for i := 0; i < len(queueB); i++ {
		must(t, s.EnqueueCommand(ctx(t), queueB[i]))
		if i < len(queueA) {
			must(t, s.EnqueueCommand(ctx(t), queueA[i]))
		}
	}

	err = s.EnqueueCommand(ctx(t), Cmd("b1", "n-a", store.CommandPending))
	if !errors.Is(err, store.ErrAlreadyExists) || !strings.Contains(err.Error(), "b1") {
		t.Errorf("duplicate command id on another node = %v, want ErrAlreadyExists naming it", err)
	}
	if c, _ := s.GetCommand(ctx(t), "b1"); c.NodeID != "n-b" {
		t.Errorf("duplicate enqueue changed b1: %+v", c)
	}
	if cs, _ := s.ListCommands(ctx(t), "n-a"); !reflect.DeepEqual(CommandIDs(cs), CommandIDs(queueA)) {
		t.Errorf("duplicate enqueue changed n-a's queue: %v", CommandIDs(cs))
	}

	got, err := s.ListCommands(ctx(t), "n-b")
	must(t, err)
	if !reflect.DeepEqual(got, queueB) {
		t.Errorf("ListCommands(n-b) = %v, want %v", CommandIDs(got), CommandIDs(queueB))
	}
	pend, err := s.PendingCommands(ctx(t), "n-b")
	must(t, err)
	if want := []string{"b3", "b2", "b9"}; !reflect.DeepEqual(CommandIDs(pend), want) {
		t.Errorf("PendingCommands(n-b) = %v, want %v", CommandIDs(pend), want)
	}

	// All nodes: by node id, each node's in queue order.
	all, err := s.ListCommands(ctx(t), "")
	must(t, err)
	if want := append(CommandIDs(queueA), CommandIDs(queueB)...); !reflect.DeepEqual(CommandIDs(all), want) {
		t.Errorf("ListCommands(\"\") = %v, want %v (by node id, then queue order)", CommandIDs(all), want)
	}

	c, err := s.GetCommand(ctx(t), "b2")
	if err != nil || !reflect.DeepEqual(c, queueB[2]) {
		t.Errorf("GetCommand(b2) = %+v, %v", c, err)
	}
	_, err = s.GetCommand(ctx(t), "nope")
	notFound(t, "GetCommand(unknown)", err, "nope")

	fin := Base.Add(time.Minute)
	upd, err := s.UpdateCommand(ctx(t), "b3", func(c *store.Command) error {
		c.State = store.CommandSucceeded
		c.FinishedAt = fin
		c.Deliveries++
		c.Output = map[string]string{"rc": "0"}
		return nil
	})
	must(t, err)
	if upd.State != store.CommandSucceeded || upd.Deliveries != 1 || !upd.FinishedAt.Equal(fin) {
		t.Errorf("UpdateCommand returned %+v", upd)
	}
	if c, _ := s.GetCommand(ctx(t), "b3"); !reflect.DeepEqual(c, upd) {
		t.Errorf("stored %+v, returned %+v", c, upd)
	}
	bad := errors.New("bad")
	before, _ := s.GetCommand(ctx(t), "b9")
	if _, err := s.UpdateCommand(ctx(t), "b9", func(c *store.Command) error { c.State = store.CommandFailed; return bad }); !errors.Is(err, bad) {
		t.Errorf("UpdateCommand with failing fn = %v", err)
	}
	if after, _ := s.GetCommand(ctx(t), "b9"); !reflect.DeepEqual(after, before) {
		t.Errorf("failed UpdateCommand was saved: %+v", after)
	}
	called := false
	_, err = s.UpdateCommand(ctx(t), "nope", func(*store.Command) error { called = true; return nil })
	notFound(t, "UpdateCommand(unknown)", err, "nope")
	if called {
		t.Error("UpdateCommand called fn for an unknown command")
	}
	pend, _ = s.PendingCommands(ctx(t), "n-b")
	if want := []string{"b2", "b9"}; !reflect.DeepEqual(CommandIDs(pend), want) {
		t.Errorf("PendingCommands after update = %v, want %v", CommandIDs(pend), want)
	}
	// The updated command keeps its place in the queue.
	got, _ = s.ListCommands(ctx(t), "n-b")
	if want := CommandIDs(queueB); !reflect.DeepEqual(CommandIDs(got), want) {
		t.Errorf("queue order after update = %v, want %v", CommandIDs(got), want)
	}
}

// Queue order holds past any small-key boundary (a bbolt key of one byte,
// an etcd revision width...).
func testCommandOrderManyEntries(t *testing.T, s store.Store) {
	EnrollNode(t, s, NewNode("n1", "h1"))
	const n = 300
	var want []string
	for i := n; i > 0; i-- {
		id := fmt.Sprintf("c%03d", i)
		want = append(want, id)
		must(t, s.EnqueueCommand(ctx(t), Cmd(id, "n1", store.CommandPending)))
	}
	got, err := s.ListCommands(ctx(t), "n1")
	must(t, err)
	if !reflect.DeepEqual(CommandIDs(got), want) {
		t.Errorf("order of %d commands not preserved", n)
	}
	pend, err := s.PendingCommands(ctx(t), "n1")
	must(t, err)
	if !reflect.DeepEqual(CommandIDs(pend), want) {
		t.Errorf("pending order of %d commands not preserved", n)
	}
}

// At-least-once delivery as the controller's session does it: a command is
// pending until a result is recorded; one delivered but unfinished comes
// back when the node reconnects; a finished one never does.
func testCommandRedelivery(t *testing.T, s store.Store) {
	EnrollNode(t, s, NewNode("n1", "h1"))
	for _, id := range []string{"c1", "c2", "c3"} {
		must(t, s.EnqueueCommand(ctx(t), Cmd(id, "n1", store.CommandPending)))
	}
	deliver := func(t *testing.T) []string {
		t.Helper()
		pend, err := s.PendingCommands(ctx(t), "n1")
		must(t, err)
		for _, c := range pend {
			if _, err := s.UpdateCommand(ctx(t), c.ID, func(c *store.Command) error {
				c.Deliveries++
				c.DeliveredAt = Base
				if c.State == store.CommandPending {
					c.State = store.CommandDelivered
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}
		return CommandIDs(pend)
	}
	finish := func(t *testing.T, id string, st store.CommandState) {
		t.Helper()
		if _, err := s.UpdateCommand(ctx(t), id, func(c *store.Command) error {
			c.State, c.FinishedAt = st, Base.Add(time.Minute)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}

	if got := deliver(t); !reflect.DeepEqual(got, []string{"c1", "c2", "c3"}) {
		t.Fatalf("first delivery = %v", got)
	}
	finish(t, "c2", store.CommandSucceeded)
	// The node reconnects: what has no result comes again, in order.
	if got := deliver(t); !reflect.DeepEqual(got, []string{"c1", "c3"}) {
		t.Errorf("after a reconnect = %v, want [c1 c3]", got)
	}
	finish(t, "c1", store.CommandFailed)
	must(t, s.EnqueueCommand(ctx(t), Cmd("c4", "n1", store.CommandPending)))
	if got := deliver(t); !reflect.DeepEqual(got, []string{"c3", "c4"}) {
		t.Errorf("after another reconnect = %v, want [c3 c4]", got)
	}
	finish(t, "c3", store.CommandSucceeded)
	finish(t, "c4", store.CommandSucceeded)
	if got := deliver(t); len(got) != 0 {
		t.Errorf("finished commands delivered again: %v", got)
	}
	for id, want := range map[string]uint32{"c1": 2, "c2": 1, "c3": 3, "c4": 1} {
		c, err := s.GetCommand(ctx(t), id)
		must(t, err)
		if c.Deliveries != want || !c.State.Done() {
			t.Errorf("%s: %d deliveries, state %s; want %d, done", id, c.Deliveries, c.State, want)
		}
	}
	// Everything stays listed, in queue order.
	all, _ := s.ListCommands(ctx(t), "n1")
	if got := CommandIDs(all); !reflect.DeepEqual(got, []string{"c1", "c2", "c3", "c4"}) {
		t.Errorf("ListCommands = %v", got)
	}
}

// Concurrent updates of one command lose nothing.
func testUpdateCommandConcurrent(t *testing.T, s store.Store) {
	EnrollNode(t, s, NewNode("n1", "h1"))
	must(t, s.EnqueueCommand(ctx(t), Cmd("c1", "n1", store.CommandPending)))
	const workers, each = 8, 10
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				if _, err := s.UpdateCommand(ctx(t), "c1", func(c *store.Command) error { c.Deliveries++; return nil }); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	c, err := s.GetCommand(ctx(t), "c1")
	must(t, err)
	if c.Deliveries != workers*each {
		t.Errorf("Deliveries = %d after %d concurrent updates", c.Deliveries, workers*each)
	}
}

func testDeleteNodeRemovesCommands(t *testing.T, s store.Store) {
	EnrollNode(t, s, NewNode("n1", "h1"))
	EnrollNode(t, s, NewNode("n2", "h2"))
	for _, c := range []store.Command{Cmd("c1", "n1", store.CommandPending), Cmd("c2", "n1", store.CommandSucceeded), Cmd("c3", "n2", store.CommandPending)} {
		must(t, s.EnqueueCommand(ctx(t), c))
	}
	must(t, s.DeleteNode(ctx(t), "n1"))
	if _, err := s.GetNode(ctx(t), "n1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetNode after DeleteNode = %v", err)
	}
	for _, id := range []string{"c1", "c2"} {
		_, err := s.GetCommand(ctx(t), id)
		notFound(t, "GetCommand("+id+") after DeleteNode", err, id)
		_, err = s.UpdateCommand(ctx(t), id, func(*store.Command) error { return nil })
		notFound(t, "UpdateCommand("+id+") after DeleteNode", err, id)
	}
	if cs, err := s.ListCommands(ctx(t), "n1"); err != nil || len(cs) != 0 {
		t.Errorf("ListCommands(n1) after delete = %v, %v", cs, err)
	}
	if cs, err := s.PendingCommands(ctx(t), "n1"); err != nil || len(cs) != 0 {
		t.Errorf("PendingCommands(n1) after delete = %v, %v", cs, err)
	}
	if cs, err := s.ListCommands(ctx(t), ""); err != nil || !reflect.DeepEqual(CommandIDs(cs), []string{"c3"}) {
		t.Errorf("ListCommands(\"\") after delete = %v, %v; want only c3", CommandIDs(cs), err)
	}
	if c, err := s.GetCommand(ctx(t), "c3"); err != nil || c.NodeID != "n2" {
		t.Errorf("other node's command: %+v, %v", c, err)
	}

	// The freed command id can be used again, and a re-enrolled node with
	// the same id starts with an empty queue.
	if err := s.EnqueueCommand(ctx(t), Cmd("c1", "n2", store.CommandPending)); err != nil {
		t.Errorf("reusing a deleted node's command id: %v", err)
	}
	err := s.EnqueueCommand(ctx(t), Cmd("cx", "n1", store.CommandPending))
	notFound(t, "EnqueueCommand for deleted node", err, "n1")
	n1 := NewNode("n1", "h1")
	n1.TokenID = "tok-n1"
	if _, err := s.Enroll(ctx(t), "tok-n1", func(store.Token) error { return nil }, n1); err != nil {
		t.Fatal(err)
	}
	if cs, _ := s.ListCommands(ctx(t), "n1"); len(cs) != 0 {
		t.Errorf("re-enrolled node inherited commands %v", CommandIDs(cs))
	}
}

// What a List returns is what Get returns for each of its items.
func testListGetConsistency(t *testing.T, s store.Store) {
	for i, host := range []string{"c", "a", "b"} {
		n := NewNode(fmt.Sprintf("n%d", i), host)
		EnrollNode(t, s, n)
		_, err := s.UpdateNode(ctx(t), n.ID, func(n *store.Node) error {
			n.Inventory = &hostv1.Inventory{Hostname: host, CpuCores: uint32(i + 1)}
			n.GPUs = []byte{byte(i)}
			return nil
		})
		must(t, err)
		for j := range 3 {
			c := Cmd(fmt.Sprintf("c%d-%d", i, j), n.ID, store.CommandPending)
			c.Output = map[string]string{"j": strconv.Itoa(j)}
			must(t, s.EnqueueCommand(ctx(t), c))
		}
	}
	_, err := s.RevokeToken(ctx(t), "tok-n1", Base)
	must(t, err)

	tokens, err := s.ListTokens(ctx(t))
	must(t, err)
	if len(tokens) != 3 {
		t.Errorf("ListTokens returned %d, want 3", len(tokens))
	}
	for _, want := range tokens {
		got, err := s.GetToken(ctx(t), want.ID)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("GetToken(%s) = %+v, %v; ListTokens has %+v", want.ID, got, err, want)
		}
	}
	nodes, err := s.ListNodes(ctx(t))
	must(t, err)
	if len(nodes) != 3 {
		t.Errorf("ListNodes returned %d, want 3", len(nodes))
	}
	for _, want := range nodes {
		got, err := s.GetNode(ctx(t), want.ID)
		if err != nil || !NodesEqual(got, want) {
			t.Errorf("GetNode(%s) = %+v, %v; ListNodes has %+v", want.ID, got, err, want)
		}
	}
	cmds, err := s.ListCommands(ctx(t), "")
	must(t, err)
	if len(cmds) != 9 {
		t.Errorf("ListCommands returned %d, want 9", len(cmds))
	}
	perNode := 0
	for _, n := range nodes {
		cs, err := s.ListCommands(ctx(t), n.ID)
		must(t, err)
		perNode += len(cs)
		pend, err := s.PendingCommands(ctx(t), n.ID)
		must(t, err)
		if !reflect.DeepEqual(pend, cs) {
			t.Errorf("PendingCommands(%s) = %v, ListCommands = %v (all pending)", n.ID, CommandIDs(pend), CommandIDs(cs))
		}
	}
	if perNode != len(cmds) {
		t.Errorf("per-node lists hold %d commands, the full list %d", perNode, len(cmds))
	}
	for _, want := range cmds {
		got, err := s.GetCommand(ctx(t), want.ID)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("GetCommand(%s) = %+v, %v; ListCommands has %+v", want.ID, got, err, want)
		}
	}
}

func testSIEMConfigs(t *testing.T, s store.Store) {
	if _, ok, err := s.SIEMConfigFor(ctx(t), nil); err != nil || ok {
		t.Errorf("SIEMConfigFor on an empty store = %v, %v", ok, err)
	}
	add := func(yaml string, sel map[string]string) store.SIEMConfig {
		t.Helper()
		c, err := s.AddSIEMConfig(ctx(t), store.SIEMConfig{Version: 999, YAML: []byte(yaml), Selector: sel, CreatedAt: Base, CreatedBy: "op"})
		must(t, err)
		return c
	}
	all := add("all", nil)
	r1 := add("rack r1", map[string]string{"rack": "r1"})
	gpu := add("gpu in r1", map[string]string{"rack": "r1", "role": "gpu"})
	r2 := add("rack r2", map[string]string{"rack": "r2"})
	var last uint64
	for _, c := range []store.SIEMConfig{all, r1, gpu, r2} {
		if c.Version == 0 || c.Version <= last || c.Version == 999 {
			t.Errorf("versions %d after %d: want above 0, increasing, chosen by the store", c.Version, last)
		}
		last = c.Version
	}
	for _, tc := range []struct {
		labels map[string]string
		want   store.SIEMConfig
	}{
		{nil, all},
		{map[string]string{"rack": "r3"}, all},
		{map[string]string{"rack": "r1"}, r1},
		{map[string]string{"rack": "r1", "role": "gpu", "x": "y"}, gpu},
		{map[string]string{"rack": "r1", "role": "cpu"}, r1},
		{map[string]string{"rack": "r2", "role": "gpu"}, r2},
	} {
		got, ok, err := s.SIEMConfigFor(ctx(t), tc.labels)
		if err != nil || !ok || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("SIEMConfigFor(%v) = %+v %v %v, want %+v", tc.labels, got, ok, err, tc.want)
		}
	}
	// A newer catch-all wins over every older, narrower one.
	newest := add("all again", map[string]string{})
	if got, ok, _ := s.SIEMConfigFor(ctx(t), map[string]string{"rack": "r1", "role": "gpu"}); !ok || got.Version != newest.Version {
		t.Errorf("SIEMConfigFor after a newer catch-all = version %d, want %d", got.Version, newest.Version)
	}
}

// A store keeps no reference to what it is given or returns.
func testValuesAreCopies(t *testing.T, s store.Store) {
	tok := store.Token{ID: "t", CreatedAt: Base, ExpiresAt: Base.Add(time.Hour), Labels: map[string]string{"a": "1"}}
	must(t, s.CreateToken(ctx(t), tok))
	tok.Labels["a"] = "changed"
	got, err := s.GetToken(ctx(t), "t")
	must(t, err)
	if got.Labels["a"] != "1" {
		t.Errorf("changing the created token changed the store: %v", got.Labels)
	}
	got.Labels["a"] = "changed"
	if again, _ := s.GetToken(ctx(t), "t"); again.Labels["a"] != "1" {
		t.Errorf("changing a returned token changed the store: %v", again.Labels)
	}

	EnrollNode(t, s, NewNode("n1", "h1"))
	inv := &hostv1.Inventory{Hostname: "h1", IpAddresses: []string{"10.0.0.1"}}
	_, err = s.UpdateNode(ctx(t), "n1", func(n *store.Node) error { n.Inventory = inv; return nil })
	must(t, err)
	inv.IpAddresses[0] = "changed"
	n, err := s.GetNode(ctx(t), "n1")
	must(t, err)
	if n.Inventory.GetIpAddresses()[0] != "10.0.0.1" {
		t.Errorf("changing the saved inventory changed the store: %v", n.Inventory)
	}
	n.Labels["id"] = "changed"
	n.Inventory.Hostname = "changed"
	if again, _ := s.GetNode(ctx(t), "n1"); again.Labels["id"] != "n1" || again.Inventory.GetHostname() != "h1" {
		t.Errorf("changing a returned node changed the store: %+v", again)
	}

	c := Cmd("c1", "n1", store.CommandPending)
	must(t, s.EnqueueCommand(ctx(t), c))
	c.Params["id"] = "changed"
	cs, err := s.ListCommands(ctx(t), "n1")
	must(t, err)
	if cs[0].Params["id"] != "c1" {
		t.Errorf("changing the queued command changed the store: %v", cs[0].Params)
	}
	cs[0].Params["id"] = "changed"
	if again, _ := s.GetCommand(ctx(t), "c1"); again.Params["id"] != "c1" {
		t.Errorf("changing a listed command changed the store: %v", again.Params)
	}

	yaml := []byte("sources: []")
	_, err = s.AddSIEMConfig(ctx(t), store.SIEMConfig{YAML: yaml})
	must(t, err)
	yaml[0] = 'X'
	if sc, _, _ := s.SIEMConfigFor(ctx(t), nil); string(sc.YAML) != "sources: []" {
		t.Errorf("changing the added configuration changed the store: %q", sc.YAML)
	}
}

// A running command's output tail is kept with the command, replaced by
// each update, kept beside the result, and is the caller's copy: bytes
// that are not UTF-8 survive unchanged.
func testCommandOutputTail(t *testing.T, s store.Store) {
	EnrollNode(t, s, NewNode("n1", "h1"))
	must(t, s.EnqueueCommand(ctx(t), Cmd("c1", "n1", store.CommandDelivered)))
	if c, _ := s.GetCommand(ctx(t), "c1"); c.OutputTail != nil {
		t.Errorf("a new command has an output tail: %+v", c.OutputTail)
	}
	tail := &store.OutputTail{Stdout: []byte("step 1\n\xff\xfe"), Stderr: []byte("warn\n"), StdoutBytes: 1 << 20, StderrBytes: 5, UpdatedAt: Base.Add(time.Second)}
	upd, err := s.UpdateCommand(ctx(t), "c1", func(c *store.Command) error { c.OutputTail = tail; return nil })
	must(t, err)
	got, err := s.GetCommand(ctx(t), "c1")
	must(t, err)
	if !reflect.DeepEqual(got, upd) {
		t.Errorf("GetCommand = %+v; UpdateCommand returned %+v", got, upd)
	}
	tail.Stdout[0] = 'X'
	got, err = s.GetCommand(ctx(t), "c1")
	must(t, err)
	want := store.OutputTail{Stdout: []byte("step 1\n\xff\xfe"), Stderr: []byte("warn\n"), StdoutBytes: 1 << 20, StderrBytes: 5, UpdatedAt: Base.Add(time.Second)}
	if got.OutputTail == nil || !reflect.DeepEqual(*got.OutputTail, want) {
		t.Fatalf("stored tail = %+v; want %+v", got.OutputTail, want)
	}
	got.OutputTail.Stderr[0] = 'X'
	if again, _ := s.GetCommand(ctx(t), "c1"); !reflect.DeepEqual(*again.OutputTail, want) {
		t.Errorf("changing a returned tail changed the store: %+v", again.OutputTail)
	}
	// Each update replaces it; the result is stored beside it.
	_, err = s.UpdateCommand(ctx(t), "c1", func(c *store.Command) error {
		c.OutputTail.Stdout = append(c.OutputTail.Stdout, "step 2\n"...)
		c.OutputTail.StdoutBytes += 7
		c.State = store.CommandSucceeded
		c.Output = map[string]string{"exit_code": "0"}
		return nil
	})
	must(t, err)
	cs, err := s.ListCommands(ctx(t), "n1")
	must(t, err)
	if len(cs) != 1 || cs[0].OutputTail == nil || string(cs[0].OutputTail.Stdout) != "step 1\n\xff\xfestep 2\n" || cs[0].OutputTail.StdoutBytes != 1<<20+7 ||
		cs[0].State != store.CommandSucceeded || cs[0].Output["exit_code"] != "0" {
		t.Errorf("after the result: %+v", cs)
	}
	// Clearing it works too.
	_, err = s.UpdateCommand(ctx(t), "c1", func(c *store.Command) error { c.OutputTail = nil; return nil })
	must(t, err)
	if c, _ := s.GetCommand(ctx(t), "c1"); c.OutputTail != nil {
		t.Errorf("cleared tail came back: %+v", c.OutputTail)
	}
}

// A call with a done context fails with its error and changes nothing.
func testCanceledContext(t *testing.T, s store.Store) {
	EnrollNode(t, s, NewNode("n1", "h1"))
	must(t, s.EnqueueCommand(ctx(t), Cmd("c1", "n1", store.CommandPending)))
	must(t, s.CreateToken(ctx(t), store.Token{ID: "t", CreatedAt: Base, ExpiresAt: Base.Add(time.Hour)}))
	_, err := s.AddSIEMConfig(ctx(t), store.SIEMConfig{YAML: []byte("a")})
	must(t, err)
	snapshot := func() string {
		toks, err := s.ListTokens(ctx(t))
		must(t, err)
		nodes, err := s.ListNodes(ctx(t))
		must(t, err)
		cmds, err := s.ListCommands(ctx(t), "")
		must(t, err)
		sc, _, err := s.SIEMConfigFor(ctx(t), nil)
		must(t, err)
		for i := range nodes {
			nodes[i].Inventory = nil // none set; keeps %v stable
		}
		return fmt.Sprintf("%+v\n%+v\n%+v\n%+v", toks, nodes, cmds, sc)
	}
	before := snapshot()

	done, cancel := context.WithCancel(ctx(t))
	cancel()
	called := false
	fn := func(any) error { called = true; return nil }
	n2 := NewNode("n2", "h2")
	for name, call := range map[string]func() error{
		"CreateToken": func() error {
			return s.CreateToken(done, store.Token{ID: "t2", CreatedAt: Base, ExpiresAt: Base.Add(time.Hour)})
		},
		"GetToken":    func() error { _, err := s.GetToken(done, "t"); return err },
		"ListTokens":  func() error { _, err := s.ListTokens(done); return err },
		"RevokeToken": func() error { _, err := s.RevokeToken(done, "t", Base); return err },
		"Enroll": func() error {
			_, err := s.Enroll(done, "t", func(t store.Token) error { return fn(t) }, n2)
			return err
		},
		"GetNode":   func() error { _, err := s.GetNode(done, "n1"); return err },
		"ListNodes": func() error { _, err := s.ListNodes(done); return err },
		"UpdateNode": func() error {
			_, err := s.UpdateNode(done, "n1", func(n *store.Node) error { n.Hostname = "x"; return fn(n) })
			return err
		},
		"DeleteNode":      func() error { return s.DeleteNode(done, "n1") },
		"EnqueueCommand":  func() error { return s.EnqueueCommand(done, Cmd("c2", "n1", store.CommandPending)) },
		"PendingCommands": func() error { _, err := s.PendingCommands(done, "n1"); return err },
		"ListCommands":    func() error { _, err := s.ListCommands(done, ""); return err },
		"GetCommand":      func() error { _, err := s.GetCommand(done, "c1"); return err },
		"UpdateCommand": func() error {
			_, err := s.UpdateCommand(done, "c1", func(c *store.Command) error { c.State = store.CommandFailed; return fn(c) })
			return err
		},
		"AddSIEMConfig": func() error { _, err := s.AddSIEMConfig(done, store.SIEMConfig{YAML: []byte("b")}); return err },
		"SIEMConfigFor": func() error { _, _, err := s.SIEMConfigFor(done, nil); return err },
	} {
		if err := call(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a canceled context = %v, want context.Canceled", name, err)
		}
	}
	if called {
		t.Error("an update func ran under a canceled context")
	}
	if after := snapshot(); after != before {
		t.Errorf("calls with a canceled context changed the store:\nbefore %s\nafter  %s", before, after)
	}
}
