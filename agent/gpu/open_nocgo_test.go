//go:build !cgo

package gpu

import (
	"context"
	"testing"
)

func TestOpenWithoutCgo(t *testing.T) {
	for _, b := range []string{BackendNVML, BackendMockDGXA100, BackendMockDGXH100, BackendMockDGXH200} {
		s, err := Open(b, Options{})
		if err != nil {
			t.Fatal(err)
		}
		inv, err := s.Inventory(context.Background())
		if err != nil || inv.Available || inv.Reason != ReasonNoCgo {
			t.Errorf("%s: %+v %v", b, inv, err)
		}
		s.Close()
	}
}
