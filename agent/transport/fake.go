package transport

import (
	"context"
	"io"
	"sync"

	"github.com/bud-ecosystem/budfleet/agent/session"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
)

// Fake is an in-memory Transport for tests: each Connect opens a stream
// whose other end, a Peer, the test takes from Accept and plays the
// controller on.
type Fake struct {
	peers chan *Peer

	mu      sync.Mutex
	refuse  []error
	connect int
}

var _ session.Transport = (*Fake)(nil)

// NewFake returns a Fake with no stream open.
func NewFake() *Fake { return &Fake{peers: make(chan *Peer, 16)} }

// Refuse makes the next Connect calls fail with errs, one each, as a dial
// or a handshake the controller refused would.
func (f *Fake) Refuse(errs ...error) {
	f.mu.Lock()
	f.refuse = append(f.refuse, errs...)
	f.mu.Unlock()
}

// Connects counts Connect calls, refused ones included.
func (f *Fake) Connects() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.connect
}

// Connect opens a stream and queues its Peer for Accept.
func (f *Fake) Connect(ctx context.Context) (session.Stream, error) {
	f.mu.Lock()
	f.connect++
	if len(f.refuse) > 0 {
		err := f.refuse[0]
		f.refuse = f.refuse[1:]
		f.mu.Unlock()
		return nil, err
	}
	f.mu.Unlock()
	p := &Peer{ctx: ctx, closed: make(chan struct{})}
	p.up.init()
	p.down.init()
	select {
	case f.peers <- p:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return fakeStream{p}, nil
}

// Accept returns the controller's end of the next stream.
func (f *Fake) Accept(ctx context.Context) (*Peer, error) {
	select {
	case p := <-f.peers:
		return p, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Peer is the controller's end of a fake stream.
type Peer struct {
	ctx  context.Context // the agent's session
	up   queue[*agentv1.ConnectRequest]
	down queue[*agentv1.ConnectResponse]

	closeOnce sync.Once
	closed    chan struct{}
}

// Recv returns the agent's next message, io.EOF once the agent closed its
// side and everything before was read, or ctx's error.
func (p *Peer) Recv(ctx context.Context) (*agentv1.ConnectRequest, error) {
	return p.up.pop(ctx)
}

// Send queues m for the agent; it fails once the stream has ended.
func (p *Peer) Send(m *agentv1.ConnectResponse) error { return p.down.push(m) }

// End ends the stream from the controller's side, as a handler returning
// err does: the agent's Recv returns err (io.EOF for nil), its Send io.EOF.
func (p *Peer) End(err error) {
	if err == nil {
		err = io.EOF
	}
	p.down.end(err)
	p.up.end(io.EOF)
}

// Context is the agent's session context: it is done once the agent has
// given the session up.
func (p *Peer) Context() context.Context { return p.ctx }

// Closed is closed once the agent has released the stream (Close).
func (p *Peer) Closed() <-chan struct{} { return p.closed }

// fakeStream is the agent's end.
type fakeStream struct{ p *Peer }

func (s fakeStream) Send(m *agentv1.ConnectRequest) error {
	if s.p.ctx.Err() != nil {
		return io.EOF
	}
	if err := s.p.up.push(m); err != nil {
		return io.EOF
	}
	return nil
}

// Recv fails with the context's error once the session ends, as grpc's
// does.
func (s fakeStream) Recv() (*agentv1.ConnectResponse, error) {
	return s.p.down.pop(s.p.ctx)
}

func (s fakeStream) CloseSend() error {
	s.p.up.end(io.EOF)
	return nil
}

func (s fakeStream) Close() error {
	s.p.closeOnce.Do(func() { close(s.p.closed) })
	return nil
}

// queue is one direction of a stream: unbounded, like the network buffers
// a test does not want to size, and ended once with an error.
type queue[T any] struct {
	mu    sync.Mutex
	items []T
	err   error         // set once the sender is done
	ready chan struct{} // signalled on every change
}

func (q *queue[T]) init() { q.ready = make(chan struct{}, 1) }

func (q *queue[T]) signal() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

func (q *queue[T]) push(v T) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.err != nil {
		return q.err
	}
	q.items = append(q.items, v)
	q.signal()
	return nil
}

func (q *queue[T]) end(err error) {
	q.mu.Lock()
	if q.err == nil {
		q.err = err
	}
	q.mu.Unlock()
	q.signal()
}

// pop waits for the next item, the end of the queue, or the end of ctx.
func (q *queue[T]) pop(ctx context.Context) (T, error) {
	for {
		q.mu.Lock()
		if len(q.items) > 0 {
			v := q.items[0]
			q.items = q.items[1:]
			q.mu.Unlock()
			return v, nil
		}
		err := q.err
		q.mu.Unlock()
		if err != nil {
			var zero T
			return zero, err
		}
		select {
		case <-q.ready:
		case <-ctx.Done():
			var zero T
			return zero, ctx.Err()
		}
	}
}
