package controller

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bud-ecosystem/budfleet/controller/store"
)

func TestStoreErrCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want codes.Code
	}{
		{fmt.Errorf("node n1: %w", store.ErrNotFound), codes.NotFound},
		{fmt.Errorf("token t: %w", store.ErrAlreadyExists), codes.AlreadyExists},
		{fmt.Errorf("controller store: %w", context.Canceled), codes.Canceled},
		{fmt.Errorf("controller store: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{errors.New("disk on fire"), codes.Internal},
	} {
		if got := status.Code(storeErr(tc.err)); got != tc.want {
			t.Errorf("storeErr(%v) = %s, want %s", tc.err, got, tc.want)
		}
	}
}
