package storetest

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/controller/store"
)

// clusterTests are the ClusterStore's part of the suite (Run calls them).
var clusterTests = []struct {
	name string
	fn   func(t *testing.T, s store.Store)
}{
	{"Clusters", testClusters},
	{"ClusterValuesAreCopies", testClusterValuesAreCopies},
	{"ClusterCanceledContext", testClusterCanceledContext},
}

// NewCluster is a cluster with every field set.
func NewCluster(name string) store.Cluster {
	return store.Cluster{
		Name:            name,
		Kubeconfig:      []byte("apiVersion: v1\nkind: Config\n# " + name + "\n"),
		Server:          "https://" + name + ".example:6443",
		CAFingerprint:   "sha256:" + name,
		Insecure:        true,
		User:            "admin@" + name,
		Auth:            "client certificate CN=admin",
		ServerVersion:   "v1.37.2",
		AuthenticatedAs: "admin",
		AddedAt:         Base,
		AddedBy:         "alice",
	}
}

func testClusters(t *testing.T, s store.Store) {
	if cs, err := s.ListClusters(ctx(t)); err != nil || len(cs) != 0 {
		t.Fatalf("ListClusters on an empty store = %v, %v", cs, err)
	}
	_, err := s.GetCluster(ctx(t), "nope")
	notFound(t, "GetCluster(nope)", err, "nope")
	notFound(t, "DeleteCluster(nope)", s.DeleteCluster(ctx(t), "nope"), "nope")

	// Added out of name order; listed by name.
	b, a, c := NewCluster("b"), NewCluster("a"), NewCluster("c")
	c.Insecure, c.CAFingerprint, c.AddedBy = false, "", ""
	c.AddedAt = Base.Add(time.Hour)
	for _, cl := range []store.Cluster{b, a, c} {
		must(t, s.AddCluster(ctx(t), cl))
	}
	got, err := s.GetCluster(ctx(t), "c")
	if err != nil || !reflect.DeepEqual(got, c) {
		t.Errorf("GetCluster(c) = %+v, %v; want %+v", got, err, c)
	}
	list, err := s.ListClusters(ctx(t))
	must(t, err)
	if !reflect.DeepEqual(list, []store.Cluster{a, b, c}) {
		t.Errorf("ListClusters = %+v, want a, b, c", list)
	}

	// A taken name is refused and the stored cluster kept.
	dup := NewCluster("a")
	dup.Server = "https://other:6443"
	if err := s.AddCluster(ctx(t), dup); !errors.Is(err, store.ErrAlreadyExists) || !strings.Contains(err.Error(), "cluster a") {
		t.Errorf("AddCluster(a) again = %v, want ErrAlreadyExists naming a", err)
	}
	if got, _ := s.GetCluster(ctx(t), "a"); !reflect.DeepEqual(got, a) {
		t.Errorf("after a refused AddCluster, a = %+v; want it unchanged", got)
	}

	must(t, s.DeleteCluster(ctx(t), "b"))
	_, err = s.GetCluster(ctx(t), "b")
	notFound(t, "GetCluster after DeleteCluster", err, "b")
	notFound(t, "DeleteCluster twice", s.DeleteCluster(ctx(t), "b"), "b")
	list, err = s.ListClusters(ctx(t))
	must(t, err)
	if !reflect.DeepEqual(list, []store.Cluster{a, c}) {
		t.Errorf("ListClusters after deleting b = %+v, want a, c", list)
	}
	// The name is free again.
	must(t, s.AddCluster(ctx(t), b))
	if got, err := s.GetCluster(ctx(t), "b"); err != nil || !reflect.DeepEqual(got, b) {
		t.Errorf("GetCluster(b) after adding it again = %+v, %v", got, err)
	}
}

// A store keeps no reference to the kubeconfig it is given or returns.
func testClusterValuesAreCopies(t *testing.T, s store.Store) {
	c := NewCluster("a")
	want := string(c.Kubeconfig)
	must(t, s.AddCluster(ctx(t), c))
	c.Kubeconfig[0] = 'X'
	got, err := s.GetCluster(ctx(t), "a")
	must(t, err)
	if string(got.Kubeconfig) != want {
		t.Errorf("changing the added kubeconfig changed the store: %q", got.Kubeconfig)
	}
	got.Kubeconfig[0] = 'X'
	list, err := s.ListClusters(ctx(t))
	must(t, err)
	if string(list[0].Kubeconfig) != want {
		t.Errorf("changing a returned kubeconfig changed the store: %q", list[0].Kubeconfig)
	}
	list[0].Kubeconfig[0] = 'X'
	if again, _ := s.GetCluster(ctx(t), "a"); string(again.Kubeconfig) != want {
		t.Errorf("changing a listed kubeconfig changed the store: %q", again.Kubeconfig)
	}
}

// A cluster call with a done context fails with its error and changes
// nothing.
func testClusterCanceledContext(t *testing.T, s store.Store) {
	must(t, s.AddCluster(ctx(t), NewCluster("a")))
	before, err := s.ListClusters(ctx(t))
	must(t, err)

	done, cancel := context.WithCancel(ctx(t))
	cancel()
	for name, call := range map[string]func() error{
		"AddCluster":    func() error { return s.AddCluster(done, NewCluster("b")) },
		"GetCluster":    func() error { _, err := s.GetCluster(done, "a"); return err },
		"ListClusters":  func() error { _, err := s.ListClusters(done); return err },
		"DeleteCluster": func() error { return s.DeleteCluster(done, "a") },
	} {
		if err := call(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a canceled context = %v, want context.Canceled", name, err)
		}
	}
	if after, err := s.ListClusters(ctx(t)); err != nil || !reflect.DeepEqual(after, before) {
		t.Errorf("cluster calls with a canceled context changed the store: %+v -> %+v (%v)", before, after, err)
	}
}
