package etcd

import (
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/controller/store/storetest"
	"github.com/bud-ecosystem/budfleet/internal/etcdtest"
)

var prefixes atomic.Int64

// TestConformance runs the store suite against a real one-member etcd,
// each test under a prefix of its own.
func TestConformance(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := Open(t.Context(), Options{
			Endpoints: cluster.Endpoints(),
			Prefix:    "/conformance/" + strconv.FormatInt(prefixes.Add(1), 10),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}
