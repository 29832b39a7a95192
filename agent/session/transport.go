package session

import (
	"context"

	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
)

// Transport opens Connect streams to the controller: over gRPC with the
// node's certificate in production (agent/transport.GRPC), in memory in
// tests (agent/transport.Fake). The session never dials anything itself.
type Transport interface {
	// Connect opens one stream; it ends when ctx does.
	Connect(ctx context.Context) (Stream, error)
}

// Stream is one Connect stream, as grpc's client stream behaves: Send and
// Recv may run at the same time on two goroutines, but neither on two; once
// the stream breaks Send fails with io.EOF and Recv says why.
type Stream interface {
	Send(*agentv1.ConnectRequest) error
	Recv() (*agentv1.ConnectResponse, error)
	CloseSend() error
	// Close releases the connection; it is called once, after every use of
	// the stream has returned.
	Close() error
}
