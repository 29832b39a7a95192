package etcd

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

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

// --etcd-ca/--etcd-cert/--etcd-key: mutual TLS to etcd; without the client
// certificate etcd refuses the store.
func TestOpenTLS(t *testing.T) {
	c, files := etcdtest.StartTLS(t, 1)
	s, err := Open(t.Context(), Options{Endpoints: c.Endpoints(), CAFile: files.CA, CertFile: files.ClientCert, KeyFile: files.ClientKey, Prefix: "/tls"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	storetest.EnrollNode(t, s, storetest.NewNode("n1", "h1"))
	if _, err := s.GetNode(t.Context(), "n1"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	if s2, err := Open(ctx, Options{Endpoints: c.Endpoints(), CAFile: files.CA, Prefix: "/tls", DialTimeout: time.Second, RequestTimeout: time.Second}); err == nil {
		s2.Close()
		t.Error("etcd took a client without a certificate")
	}
}
