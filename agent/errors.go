package agent

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bud-ecosystem/budfleet/agent/transport"
)

// describe turns a gRPC error into one that says what went wrong in words,
// without the transport's framing.
func describe(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	return fmt.Errorf("%s: %s", st.Code(), st.Message())
}

// permanent reports whether err means the controller will refuse this node
// until an operator acts, as opposed to a passing fault.
func permanent(err error) bool {
	if errors.Is(err, transport.ErrCertExpired) {
		return true
	}
	switch status.Code(err) {
	case codes.PermissionDenied, codes.Unauthenticated:
		return true
	}
	return false
}
